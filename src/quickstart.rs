//! `protolake quickstart`: a tour that needs nothing installed. It generates sample ad-impression
//! events from the schema shipped in `proto/` (some duplicated, some broken the ways real
//! producers break them), ingests them through the real backfill pipeline into `./lake/`, and
//! reports what became a row, what was refused and why, and how to query the tables.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use prost::Message;

use protolake::backfill::{self, BackfillSpec, NoProgress};
use protolake::config::{EventTime, FlushPolicy, ParquetOptions};
use protolake::contract::{delta_schema, to_ddl};
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::source::file::write_delimited;

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
            impression_id: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                i * 7919,
                i % 65536,
                i % 4096,
                (i * 31) % 4096,
                i
            ),
            event_time: Some(prost_types::Timestamp {
                seconds: 1_763_683_200 + i as i64 * 37,
                nanos: (i as i32 % 1000) * 1_000_000,
            }),
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

pub async fn run(args: &QuickstartArgs) -> Result<ExitCode> {
    let pool = sample_pool().context("the embedded sample schema does not compile")?;
    let decoder = Decoder::new(&pool, MESSAGE, &DecodeOptions::default())?;
    let lake = args.lake.clone();
    let input_dir = lake.join("quickstart-input");
    std::fs::create_dir_all(&input_dir).with_context(|| format!("cannot create {}", input_dir.display()))?;
    let input = input_dir.join(format!("ad_impressions-{}.pb", args.events));
    let events = sample_events(args.events);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for (_, bytes) in &events {
        write_delimited(&mut file, bytes)?;
    }
    file.flush()?;
    drop(file);

    println!("protolake quickstart: {} sample {MESSAGE} events", events.len());
    println!("  schema: proto/{PROTO_PATH}");
    println!("  input:  {} (varint-delimited, as archived by writeDelimitedTo)\n", input.display());
    println!("Table columns (Delta DDL, as `protolake schema print` shows):");
    for line in to_ddl(&delta_schema(&decoder.schema()))?.lines() {
        println!("  {line}");
    }

    let location = absolute(&lake.join("ad_impressions"));
    let dlq_location = absolute(&lake.join("ad_impressions_dlq"));
    let spec = BackfillSpec {
        decoder,
        validator: None,
        contract: None,
        location: location.clone(),
        dlq_location: dlq_location.clone(),
        event_time: Some(EventTime { field: "event_time".into(), unit: None }),
        flush: FlushPolicy::default(),
        parquet: ParquetOptions::default(),
        max_record_bytes: 1 << 20,
        inputs: vec![input],
    };
    let report = backfill::run(spec, &NoProgress).await?;
    println!(
        "\nIngested {} records in {:.0} ms: {} rows → {location}",
        report.records,
        report.elapsed.as_secs_f64() * 1e3,
        report.rows
    );
    println!("{} dead letters → {dlq_location}", report.dead_letters);
    for (reason, count) in &report.by_reason {
        println!("  {count:>5} × {reason}");
    }
    if report.already_committed > 0 {
        println!(
            "{} records were already in the table from an earlier run and were not added again.",
            report.already_committed
        );
    }
    let duplicates = events.iter().filter(|(l, _)| l == "duplicate").count();
    println!("\n{duplicates} events were sent twice: both copies are rows here; close-of-books removes them by key.");
    println!("Every refused record keeps its bytes, reason, field path and file position in the DLQ table.");
    println!("\nQuery it (pip install polars deltalake):");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{location}').group_by('event_type').len())\"");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{dlq_location}').select('reason','field_path','message'))\"");
    println!("or DuckDB: SELECT event_date, count(*) FROM delta_scan('{location}') GROUP BY ALL;");
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> String {
    let p =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    p.display().to_string()
}
