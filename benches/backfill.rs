//! Backfill benchmark: N flat 8-field ~150-byte events in a varint-delimited file → a local Delta
//! table (zstd level 1), through the same code path as `protolake backfill`.
//!
//! Run: `cargo bench --bench backfill` (options: `-- --records N`, default 10,000,000;
//! `--plain id,url` to write those columns without dictionary encoding).
//! Prints rows/s (and per core), input MB/s, output bytes per row and peak RSS.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use prost::Message;
use protolake::backfill::{self, BackfillSpec, NoProgress};
use protolake::config::{EventTime, FlushPolicy, ParquetOptions, TimeUnit};
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::source::file::write_delimited;

mod common;

use common::{arg, cpu_seconds, flat_event, peak_rss_mib};

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn main() {
    let n = arg("--records", 10_000_000);
    let work = tempfile::tempdir().expect("temp dir");
    let input = work.path().join("events.pb");
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input).unwrap());
        for i in 0..n {
            let e = flat_event(i, n);
            write_delimited(&mut out, &e.encode_to_vec()).unwrap();
        }
        out.flush().unwrap();
    }
    let input_bytes = std::fs::metadata(&input).unwrap().len();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let fds = protox::compile(["protolake/examples/v1/events.proto"], [dir]).expect("proto compiles");
    let pool = Pool::from_prost(&fds).unwrap();
    let decoder = Decoder::new(&pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let location = work.path().join("table").display().to_string();
    let spec = BackfillSpec {
        decoder,
        validator: None,
        contract: None,
        location: location.as_str().into(),
        dlq_location: format!("{location}_dlq").into(),
        event_time: Some(EventTime { field: "ts_ms".into(), unit: Some(TimeUnit::Milliseconds) }),
        flush: FlushPolicy::default(),
        parquet: ParquetOptions { zstd_level: 1, plain_columns: plain_columns(), ..ParquetOptions::default() },
        max_record_bytes: 1 << 20,
        inputs: vec![input],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let report = runtime.block_on(backfill::run(spec, &NoProgress)).expect("backfill");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(report.rows, n as u64);
    let out_bytes = dir_size(Path::new(&location));
    println!(
        "backfill of {n} flat events ({:.0} bytes each on the wire), zstd level 1:",
        input_bytes as f64 / n as f64
    );
    println!("  wall {secs:.1} s, CPU {cpu:.1} s ({:.2} cores busy)", cpu / secs);
    println!("  {:.2} M rows/s wall, {:.2} M rows/s per CPU-second", n as f64 / secs / 1e6, n as f64 / cpu / 1e6);
    println!("  {:.0} MB/s of protobuf in", input_bytes as f64 / secs / 1e6);
    println!(
        "  output {:.1} MB, {:.1} bytes/row, {} commits",
        out_bytes as f64 / 1e6,
        out_bytes as f64 / n as f64,
        report.commits
    );
    println!("  peak RSS {:.0} MiB", peak_rss_mib());
}

/// `--plain id,url` writes those columns without dictionary encoding.
fn plain_columns() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--plain")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}
