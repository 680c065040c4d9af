//! Coverage-guided fuzzing of the decoder: the first input byte picks a descriptor (recursive
//! ones included), the rest is one record. Checks: no panic, no hang (libFuzzer `-timeout`),
//! bounded memory (`-rss_limit_mb`), and a refused record adds no row and leaves its
//! neighbours exactly as they decode alone.
//!
//! Run from the repository root:
//! `cargo fuzz run decode -- -max_total_time=600 -rss_limit_mb=2048 -timeout=10`
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use arrow::array::RecordBatch;
use libfuzzer_sys::fuzz_target;
use protolake::decode::{DecodeOptions, Decoder, Pool};

struct Target {
    decoder: Decoder,
    neighbour: &'static [u8],
    neighbour_alone: RecordBatch,
}

const TARGETS: [(&str, &str, Option<u32>, &[u8]); 4] = [
    (
        "mapping3.proto",
        "pl.test.Everything",
        None,
        &[0x12, 0x05, 0x08, 0x01, 0x12, 0x01, 0x78, 0x22, 0x02, 0x01, 0x02, 0x62, 0x05, 0x0a, 0x01, 0x61, 0x10, 0x01],
    ),
    ("mapping2.proto", "pl.test2.P2", None, &[0x08, 0x01, 0x12, 0x01, 0x6e]),
    ("recursive.proto", "pl.rec.Person", Some(3), &[0x0a, 0x01, 0x61, 0x12, 0x03, 0x0a, 0x01, 0x62]),
    ("recursive.proto", "pl.rec.A", Some(2), &[0x0a, 0x01, 0x61, 0x12, 0x02, 0x08, 0x05]),
];

fn targets() -> &'static Mutex<Vec<Target>> {
    static T: OnceLock<Mutex<Vec<Target>>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/protos");
        let built = TARGETS
            .iter()
            .map(|(file, message, depth, neighbour)| {
                let set = protox::compile([file], [&dir]).expect("fixture compiles");
                let pool = Pool::from_prost(&set).expect("pool");
                let options = DecodeOptions { recursion_depth: *depth };
                let mut decoder = Decoder::new(&pool, message, &options).expect("plans");
                decoder.decode(neighbour).expect("neighbour is valid");
                let neighbour_alone = decoder.flush().expect("flush");
                Target { decoder, neighbour, neighbour_alone }
            })
            .collect();
        Mutex::new(built)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, record)) = data.split_first() else { return };
    let mut all = targets().lock().unwrap_or_else(|e| e.into_inner());
    let t = &mut all[which as usize % TARGETS.len()];
    t.decoder.decode(t.neighbour).expect("neighbour decodes");
    let result = t.decoder.decode(record);
    t.decoder.decode(t.neighbour).expect("neighbour decodes after it");
    let batch = t.decoder.flush().expect("flush");
    let expected_rows = if result.is_ok() { 3 } else { 2 };
    assert_eq!(batch.num_rows(), expected_rows);
    assert_eq!(batch.slice(0, 1), t.neighbour_alone);
    assert_eq!(batch.slice(expected_rows - 1, 1), t.neighbour_alone);
    if let Err(e) = result {
        assert!(!e.to_string().is_empty());
    }
});
