//! `protolake quickstart`: a tour that needs nothing installed. It generates sample ad-impression
//! events from the schema shipped in `proto/` (some duplicated, some broken the ways real
//! producers break them), runs them through the decoder, and reports what became a row and what
//! was refused, and why.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use prost::Message;

use protolake::contract::{delta_schema, to_ddl};
use protolake::decode::{DecodeOptions, Decoder, Pool};

use crate::cli::QuickstartArgs;

const PROTO_PATH: &str = "protolake/examples/v1/events.proto";
const PROTO_SOURCE: &str = include_str!("../proto/protolake/examples/v1/events.proto");
const MESSAGE: &str = "protolake.examples.v1.AdImpression";

/// The sample event as a producer's generated code would hold it.
#[derive(Clone, PartialEq, Message)]
struct AdImpression {
    #[prost(string, tag = "1")]
    impression_id: String,
    #[prost(message, optional, tag = "2")]
    event_time: Option<prost_types::Timestamp>,
    #[prost(string, tag = "3")]
    event_type: String,
    #[prost(string, tag = "4")]
    page_url: String,
    #[prost(int32, tag = "5")]
    slot: i32,
    #[prost(double, tag = "6")]
    bid_price: f64,
    #[prost(bool, tag = "7")]
    viewable: bool,
    #[prost(string, tag = "8")]
    country: String,
    #[prost(string, optional, tag = "9")]
    campaign_id: Option<String>,
    #[prost(string, repeated, tag = "10")]
    tags: Vec<String>,
    #[prost(map = "string, string", tag = "11")]
    attributes: std::collections::HashMap<String, String>,
}

struct EmbeddedProto;

impl protox::file::FileResolver for EmbeddedProto {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == PROTO_PATH {
            protox::file::File::from_source(name, PROTO_SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn sample_pool() -> Result<Pool> {
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(EmbeddedProto);
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(PROTO_PATH).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Pool::from_prost(&compiler.file_descriptor_set())?)
}

/// Deterministic sample data: every 20th event is sent twice, and every 50th is broken.
fn sample_events(count: usize) -> Vec<(String, Vec<u8>)> {
    const TYPES: [&str; 3] = ["impression", "click", "conversion"];
    const COUNTRIES: [&str; 5] = ["DE", "US", "FR", "BR", "JP"];
    let mut out = Vec::with_capacity(count + count / 20);
    for i in 0..count {
        let event = AdImpression {
            impression_id: format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i * 7919, i % 65536, i % 4096, (i * 31) % 4096, i),
            event_time: Some(prost_types::Timestamp { seconds: 1_763_683_200 + i as i64 * 37, nanos: (i as i32 % 1000) * 1_000_000 }),
            event_type: TYPES[i % 3].to_string(),
            page_url: format!("https://news.example.com/articles/{}/story-{}?utm_source=feed", 2026, i % 997),
            slot: (i % 6) as i32,
            bid_price: 0.05 + (i % 400) as f64 / 1000.0,
            viewable: i % 4 != 0,
            country: COUNTRIES[i % 5].to_string(),
            campaign_id: (i % 3 == 0).then(|| format!("cmp-{}", i % 40)),
            tags: (0..i % 3).map(|t| format!("tag{t}")).collect(),
            attributes: [("device".to_string(), if i % 2 == 0 { "mobile" } else { "desktop" }.to_string())].into(),
        };
        let mut bytes = event.encode_to_vec();
        let label = match i % 50 {
            17 => {
                bytes.truncate(bytes.len() - 3);
                "cut off in transit"
            }
            29 => {
                // A producer that put Latin-1 text into a string field.
                bytes.extend_from_slice(&[0x1a, 0x03, b'c', 0xe9, b'!']);
                "Latin-1 event_type"
            }
            41 => {
                // A producer on another schema: slot sent as text.
                bytes.extend_from_slice(&[0x2a, 0x01, b'3']);
                "slot sent as a string"
            }
            _ => "valid",
        };
        out.push((label.to_string(), bytes.clone()));
        if i % 20 == 7 {
            out.push(("duplicate".to_string(), bytes));
        }
    }
    out
}

pub fn run(args: &QuickstartArgs) -> Result<()> {
    let pool = sample_pool().context("the embedded sample schema does not compile")?;
    let mut decoder = Decoder::new(&pool, MESSAGE, &DecodeOptions::default())?;
    let events = sample_events(args.events);
    println!("protolake quickstart: {} sample {MESSAGE} events (schema: proto/{PROTO_PATH})\n", events.len());
    println!("Table columns (Delta DDL, as `protolake schema print` shows):");
    for line in to_ddl(&delta_schema(&decoder.schema()))?.lines() {
        println!("  {line}");
    }

    let started = Instant::now();
    let mut rows = 0usize;
    let mut refused: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (index, (label, bytes)) in events.iter().enumerate() {
        if let Err(e) = decoder.decode(bytes) {
            let entry = refused.entry(e.reason.to_string()).or_insert((0, String::new()));
            entry.0 += 1;
            if entry.1.is_empty() {
                entry.1 = format!("record {index} ({label}): {e}");
            }
        }
        if decoder.len() >= 8192 {
            rows += decoder.flush()?.num_rows();
        }
    }
    rows += decoder.flush()?.num_rows();
    let elapsed = started.elapsed();

    println!("\nDecoded {rows} rows in {:.1} ms; refused {} records:", elapsed.as_secs_f64() * 1e3, events.len() - rows);
    for (reason, (count, example)) in &refused {
        println!("  {count:>5} × {reason:<20} e.g. {example}");
    }
    let duplicates = events.iter().filter(|(l, _)| l == "duplicate").count();
    println!(
        "\n{duplicates} events were sent twice; they are ordinary rows here and are removed by key at close-of-books."
    );
    println!("Refused records keep their bytes, reason and field path: nothing is dropped silently.");
    println!("\nTry: protolake schema print --proto proto/{PROTO_PATH} -I proto --message {MESSAGE}");
    Ok(())
}
