//! Decode benchmark: ns/record for the same wire bytes turned into Arrow record batches by
//! (a) protolake's descriptor-driven decoder, (b) prost-generated structs appended to Arrow
//! builders, (c) prost-reflect `DynamicMessage` appended to Arrow builders.
//!
//! Run: `cargo bench --bench decode` (options: `-- --records N --rounds R`).
//! Every approach decodes the same records in batches of 8192 rows; the figure is the median
//! round over all records, with the fastest round beside it.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::SchemaRef;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use protolake::decode::{DecodeOptions, Decoder, Pool};

mod common;

use common::{arg, flat_event, peak_rss_mib, FlatEvent};

const BATCH: usize = 8192;

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(int32, tag = "2")]
    quantity: i32,
    #[prost(double, tag = "3")]
    unit_price: f64,
    #[prost(string, repeated, tag = "4")]
    labels: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Address {
    #[prost(string, tag = "1")]
    city: String,
    #[prost(string, tag = "2")]
    country: String,
    #[prost(string, optional, tag = "3")]
    postcode: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Order {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(message, optional, tag = "2")]
    placed_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "3")]
    ship_to: Option<Address>,
    #[prost(message, repeated, tag = "4")]
    lines: Vec<Line>,
    #[prost(map = "string, string", tag = "5")]
    attributes: std::collections::HashMap<String, String>,
    #[prost(int64, repeated, tag = "6")]
    coupon_ids: Vec<i64>,
}

fn orders(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            Order {
                order_id: format!("order-{i:010}"),
                placed_at: Some(prost_types::Timestamp { seconds: 1_763_683_200 + i as i64, nanos: 5_000 }),
                ship_to: Some(Address {
                    city: "Berlin".into(),
                    country: "DE".into(),
                    postcode: (i % 2 == 0).then(|| "10115".into()),
                }),
                lines: (0..3)
                    .map(|l| Line {
                        sku: format!("SKU-{:05}", (i + l) % 50_000),
                        quantity: (l + 1) as i32,
                        unit_price: 9.99 + l as f64,
                        labels: vec!["gift".into(), format!("lot-{}", l)],
                    })
                    .collect(),
                attributes: [("channel".to_string(), "web".to_string()), ("promo".to_string(), format!("p{}", i % 7))]
                    .into(),
                coupon_ids: vec![i as i64, 7, 1_000_000 + i as i64],
            }
            .encode_to_vec()
        })
        .collect()
}

// --- (b) prost structs → Arrow builders ------------------------------------------------------

struct FlatBuilders {
    schema: SchemaRef,
    ts: Int64Builder,
    id: StringBuilder,
    event_type: StringBuilder,
    url: StringBuilder,
    slot: Int32Builder,
    price: Float64Builder,
    viewable: BooleanBuilder,
    country: StringBuilder,
}

impl FlatBuilders {
    fn new(schema: SchemaRef) -> Self {
        FlatBuilders {
            schema,
            ts: Int64Builder::with_capacity(BATCH),
            id: StringBuilder::with_capacity(BATCH, BATCH * 36),
            event_type: StringBuilder::with_capacity(BATCH, BATCH * 10),
            url: StringBuilder::with_capacity(BATCH, BATCH * 72),
            slot: Int32Builder::with_capacity(BATCH),
            price: Float64Builder::with_capacity(BATCH),
            viewable: BooleanBuilder::with_capacity(BATCH),
            country: StringBuilder::with_capacity(BATCH, BATCH * 2),
        }
    }

    fn append(&mut self, e: &FlatEvent) {
        self.ts.append_value(e.ts_ms);
        self.id.append_value(&e.id);
        self.event_type.append_value(&e.event_type);
        self.url.append_value(&e.url);
        self.slot.append_value(e.slot);
        self.price.append_value(e.price);
        self.viewable.append_value(e.viewable);
        self.country.append_value(&e.country);
    }

    fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.slot.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.viewable.finish()),
            Arc::new(self.country.finish()),
        ];
        RecordBatch::try_new(self.schema.clone(), columns).expect("schema matches")
    }
}

// --- (c) prost-reflect DynamicMessage → Arrow builders ----------------------------------------

fn reflect_flat(desc: &MessageDescriptor, records: &[Vec<u8>], b: &mut FlatBuilders) -> usize {
    let fields: Vec<_> = (1..=8).map(|n| desc.get_field(n).expect("field")).collect();
    let mut rows = 0;
    for chunk in records.chunks(BATCH) {
        for bytes in chunk {
            let m = DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("valid");
            let get = |i: usize| m.get_field(&fields[i]);
            b.ts.append_value(get(0).as_i64().unwrap_or(0));
            b.id.append_value(get(1).as_str().unwrap_or(""));
            b.event_type.append_value(get(2).as_str().unwrap_or(""));
            b.url.append_value(get(3).as_str().unwrap_or(""));
            b.slot.append_value(get(4).as_i32().unwrap_or(0));
            b.price.append_value(get(5).as_f64().unwrap_or(0.0));
            b.viewable.append_value(get(6).as_bool().unwrap_or(false));
            b.country.append_value(get(7).as_str().unwrap_or(""));
        }
        rows += black_box(b.finish()).num_rows();
    }
    rows
}

/// A generic DynamicMessage walk (what a reflection-based sink has to do for nested data):
/// counts leaf values into a checksum so the work cannot be optimised away.
fn reflect_walk(v: &Value) -> u64 {
    match v {
        Value::Message(m) => m.fields().map(|(_, v)| reflect_walk(v)).sum(),
        Value::List(items) => items.iter().map(reflect_walk).sum(),
        Value::Map(map) => map.values().map(reflect_walk).sum::<u64>() + map.len() as u64,
        Value::String(s) => s.len() as u64,
        Value::I64(x) => *x as u64,
        Value::I32(x) => *x as u64,
        Value::F64(x) => *x as u64,
        _ => 1,
    }
}

// --- harness --------------------------------------------------------------------------------

struct Figures {
    median_ns: f64,
    min_ns: f64,
}

/// Runs the approaches in interleaved rounds (a, b, c, a, b, c, …) so that whatever else the
/// machine does slows them alike; returns each one's figures.
fn measure_interleaved(rounds: usize, records: usize, approaches: &mut [&mut dyn FnMut() -> usize]) -> Vec<Figures> {
    for f in approaches.iter_mut() {
        assert_eq!(f(), records, "warm-up round decodes every record");
    }
    let mut samples = vec![Vec::with_capacity(rounds); approaches.len()];
    for _ in 0..rounds {
        for (i, f) in approaches.iter_mut().enumerate() {
            let start = Instant::now();
            let rows = f();
            let ns = start.elapsed().as_nanos() as f64;
            assert_eq!(rows, records);
            samples[i].push(ns / records as f64);
        }
    }
    if std::env::var("BENCH_SAMPLES").is_ok() {
        for s in &samples {
            let v: Vec<String> = s.iter().map(|x| format!("{x:.0}")).collect();
            eprintln!("samples: {}", v.join(" "));
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.total_cmp(b));
            Figures { median_ns: s[rounds / 2], min_ns: s[0] }
        })
        .collect()
}

fn main() {
    let n = arg("--records", 200_000);
    let rounds = arg("--rounds", 15);
    let only_a = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "a");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let fds = protox::compile(["protolake/examples/v1/events.proto"], [dir]).expect("bench proto compiles");
    let pool = Pool::from_prost(&fds).expect("pool");
    let reflect_pool = DescriptorPool::from_file_descriptor_set(fds).expect("prost-reflect pool");

    let flat: Vec<Vec<u8>> = (0..n).map(|i| flat_event(i, n).encode_to_vec()).collect();
    let avg = flat.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("flat 8-field event: {n} records, {avg:.0} bytes each on average, {rounds} interleaved rounds, batches of {BATCH}");

    let mut decoder = Decoder::new(&pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let schema = decoder.schema();
    let mut a = || decode_all(&mut decoder, &flat, |_| ());
    if only_a {
        let f = measure_interleaved(rounds, n, &mut [&mut a]);
        report("(a) protolake decoder", &f[0], None);
        return;
    }
    let mut builders = FlatBuilders::new(schema.clone());
    let mut b = || {
        let mut rows = 0;
        for chunk in flat.chunks(BATCH) {
            for bytes in chunk {
                let e = FlatEvent::decode(bytes.as_slice()).expect("valid");
                builders.append(&e);
            }
            rows += black_box(builders.finish()).num_rows();
        }
        rows
    };
    let desc = reflect_pool.get_message_by_name("protolake.examples.v1.FlatEvent").unwrap();
    let mut reflect_builders = FlatBuilders::new(schema);
    let mut c = || reflect_flat(&desc, &flat, &mut reflect_builders);
    let f = measure_interleaved(rounds, n, &mut [&mut a, &mut b, &mut c]);
    report("(a) protolake decoder", &f[0], None);
    report("(b) prost structs → builders", &f[1], Some(&f[0]));
    report("(c) prost-reflect → builders", &f[2], Some(&f[0]));

    let orders = orders(n / 4);
    let m = orders.len();
    let avg = orders.iter().map(Vec::len).sum::<usize>() as f64 / m as f64;
    println!("\nnested/repeated order (3 lines × 2 labels, map, timestamp): {m} records, {avg:.0} bytes each");
    let mut decoder = Decoder::new(&pool, "protolake.examples.v1.Order", &DecodeOptions::default()).unwrap();
    let mut na = || decode_all(&mut decoder, &orders, |_| ());
    let odesc = reflect_pool.get_message_by_name("protolake.examples.v1.Order").unwrap();
    let mut nb = || {
        let mut sum = 0u64;
        for bytes in &orders {
            let o = Order::decode(bytes.as_slice()).expect("valid");
            sum += o.lines.len() as u64 + o.attributes.len() as u64;
        }
        black_box(sum);
        m
    };
    let mut nc = || {
        let mut sum = 0u64;
        for bytes in &orders {
            let msg = DynamicMessage::decode(odesc.clone(), bytes.as_slice()).expect("valid");
            sum = sum.wrapping_add(reflect_walk(&Value::Message(msg)));
        }
        black_box(sum);
        m
    };
    let f = measure_interleaved(rounds, m, &mut [&mut na, &mut nb, &mut nc]);
    report("(a) protolake decoder → RecordBatch", &f[0], None);
    report("(b) prost structs, decode only (no Arrow)", &f[1], Some(&f[0]));
    report("(c) prost-reflect, decode + walk (no Arrow)", &f[2], Some(&f[0]));
    rules(&flat, rounds);
    println!("\npeak RSS: {:.0} MiB (inputs included)", peak_rss_mib());
}

/// What the rules cost per record: the flat event's bytes as `RuledFlatEvent` (seven
/// buf.validate field rules, `proto/protolake/examples/v1/ruled.proto`), decoded alone, decoded
/// then checked (every record valid, so every rule is evaluated), and checked by protovalidate
/// alone (without the rules read off the wire first).
fn rules(flat: &[Vec<u8>], rounds: usize) {
    const MESSAGE: &str = "protolake.examples.v1.RuledFlatEvent";
    let mut compiler = protox::Compiler::new([Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("protolake/examples/v1/ruled.proto").expect("bench proto compiles");
    // The encoded set keeps the rules (option extensions), which prost-types structs would drop.
    let pool = Pool::decode(&compiler.encode_file_descriptor_set()).expect("pool");
    let validator = match protolake::validate::validator_for(&pool, MESSAGE) {
        Ok(Some(v)) => v,
        Ok(None) => panic!("the bench message carries rules"),
        Err(e) => {
            println!("\nbuf.validate rules: not measured ({e})");
            return;
        }
    };
    let broken = flat.iter().filter(|b| !validator.check(b).is_empty()).count();
    assert_eq!(broken, 0, "the bench's records are all valid");
    assert!(validator.reads_wire_rules(), "the bench's rules are read off the wire");
    let judge_alone = validator.without_wire_rules();
    println!(
        "\nbuf.validate: the flat event under 7 field rules (uuid, in, uri, ranges, len + pattern), {} records",
        flat.len()
    );
    let mut decoder = Decoder::new(&pool, MESSAGE, &DecodeOptions::default()).unwrap();
    let mut plain = || decode_all(&mut decoder, flat, |_| ());
    let mut checked_decoder = Decoder::new(&pool, MESSAGE, &DecodeOptions::default()).unwrap();
    let mut checked = || {
        decode_all(&mut checked_decoder, flat, |bytes| {
            black_box(validator.check(bytes));
        })
    };
    let mut alone_decoder = Decoder::new(&pool, MESSAGE, &DecodeOptions::default()).unwrap();
    let mut alone = || {
        decode_all(&mut alone_decoder, flat, |bytes| {
            black_box(judge_alone.check(bytes));
        })
    };
    let f = measure_interleaved(rounds, flat.len(), &mut [&mut plain, &mut checked, &mut alone]);
    report("(a) protolake decoder", &f[0], None);
    report("(b) decoder + buf.validate rules", &f[1], Some(&f[0]));
    report("(c) decoder + protovalidate alone", &f[2], Some(&f[0]));
    println!(
        "  the rules add {:.0} ns a record ({:.0} ns judged by protovalidate alone)",
        f[1].median_ns - f[0].median_ns,
        f[2].median_ns - f[0].median_ns
    );
}

/// Decodes the records in batches of `BATCH` rows, handing each to `before` first; the rows
/// decoded.
fn decode_all(decoder: &mut Decoder, records: &[Vec<u8>], mut before: impl FnMut(&[u8])) -> usize {
    let mut rows = 0;
    for chunk in records.chunks(BATCH) {
        for bytes in chunk {
            before(bytes);
            decoder.decode(bytes).expect("valid");
        }
        rows += black_box(decoder.flush().unwrap()).num_rows();
    }
    rows
}

fn report(name: &str, f: &Figures, baseline: Option<&Figures>) {
    let ratio = baseline
        .map_or(String::new(), |base| format!("   protolake takes {:.2}× this time", base.median_ns / f.median_ns));
    println!("  {name:<45} {:>7.1} ns/record (best {:>6.1}){ratio}", f.median_ns, f.min_ns);
}
