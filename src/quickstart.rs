//! `protolake quickstart`: a tour that needs nothing installed. It generates sample ad-impression
//! events from the schema shipped in `proto/` (some duplicated, some broken the ways real
//! producers break them), produces them to a Kafka topic on librdkafka's in-process mock
//! cluster, runs the ingest daemon's own code on that topic until it has caught up, and reports
//! what became a row in `./lake/`, what was refused and why, and how to query the tables.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use protolake::close_books;
use protolake::config::{
    DescriptorSource, EventTime, FlushPolicy, Framing, IngestConfig, KafkaConfig, ParquetOptions, TableConfig,
};
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::ingest;
use protolake::metrics::{Health, Metrics};

use crate::cli::QuickstartArgs;
use crate::commands::pinned_contract;

const PROTO_PATH: &str = "protolake/examples/v1/events.proto";
const PROTO_SOURCE: &str = include_str!("../proto/protolake/examples/v1/events.proto");
const MESSAGE: &str = "protolake.examples.v1.AdImpression";
/// The sample table's pinned contract, shipped in `schemas/` where `protolake ingest` reads it.
const CONTRACT_PATH: &str = "schemas/ad_impressions/v1.ddl";
const CONTRACT_SOURCE: &str = include_str!("../schemas/ad_impressions/v1.ddl");
const TOPIC: &str = "ad-impressions";
const PARTITIONS: i32 = 3;

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
    std::fs::create_dir_all(&lake).with_context(|| format!("cannot create {}", lake.display()))?;
    let events = sample_events(args.events);

    // librdkafka's mock cluster: a Kafka broker inside this process, on a loopback port.
    let cluster = MockCluster::new(1).context("cannot start the in-process Kafka cluster")?;
    cluster.create_topic(TOPIC, PARTITIONS, 1).context("cannot create the sample topic")?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .create()
        .context("cannot create the sample producer")?;
    for (i, (_, bytes)) in events.iter().enumerate() {
        let mut record = BaseRecord::<(), [u8]>::to(TOPIC).payload(bytes.as_slice()).partition((i % 3) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).context("the sample events were not acknowledged")?;

    println!("protolake quickstart: {} sample {MESSAGE} events", events.len());
    println!("  schema: proto/{PROTO_PATH}");
    println!(
        "  Kafka:  topic {TOPIC} ({PARTITIONS} partitions) on an in-process broker at {}\n",
        cluster.bootstrap_servers()
    );
    // The daemon and close-books read the contract from its folder; the tour keeps a copy
    // beside its tables so it runs from any directory.
    let contract_dir = lake.join("schemas").join("ad_impressions");
    let contract_file = contract_dir.join("v1.ddl");
    std::fs::create_dir_all(&contract_dir).with_context(|| format!("cannot create {}", contract_dir.display()))?;
    std::fs::write(&contract_file, CONTRACT_SOURCE)
        .with_context(|| format!("cannot write {}", contract_file.display()))?;

    let location = absolute(&lake.join("ad_impressions"));
    let dlq_location = absolute(&lake.join("ad_impressions_dlq"));
    let table = TableConfig {
        name: "ad_impressions".into(),
        descriptor: DescriptorSource::Protos { files: vec![PROTO_PATH.into()], includes: Vec::new() },
        message: MESSAGE.into(),
        recursion_depth: None,
        contract_dir: Some(contract_dir.clone()),
        location: location.as_str().into(),
        dlq_location: dlq_location.as_str().into(),
        event_time: Some(EventTime { field: "event_time".into(), unit: None }),
        key: vec!["impression_id".into()],
        flush: FlushPolicy { max_latency: Duration::from_secs(1), ..FlushPolicy::default() },
        parquet: ParquetOptions::default(),
        max_record_bytes: 1 << 20,
        topic: Some(TOPIC.into()),
        framing: Framing::Raw,
        dlq_topic: None,
        checkpoint_interval: 100,
        final_location: format!("{}_final", location).into(),
        close_books: Default::default(),
        zorder_by: Vec::new(),
    };
    // The daemon's start-up check: the descriptor must agree with the contract column by column.
    let contract =
        pinned_contract(&table, &decoder)?.with_context(|| format!("{} holds no contract", contract_dir.display()))?;
    println!(
        "Contract: {CONTRACT_PATH} (v{}; copied to {}), checked against the descriptor column by column:",
        contract.0,
        contract_file.display()
    );
    for line in contract.1.to_ddl().lines() {
        println!("  {line}");
    }

    let kafka = KafkaConfig {
        properties: [("bootstrap.servers".to_string(), cluster.bootstrap_servers())].into(),
        group_id: "protolake-quickstart".into(),
    };
    let ingest_config = IngestConfig { metrics_address: None, commit_retry_for: Duration::from_secs(30) };
    let books_table = table.clone();
    let setup =
        ingest::TableSetup { config: table, decoder, validator: None, contract: Some(contract), index_path: vec![0] };
    let options = ingest::IngestOptions { exit_when_idle: Some(Duration::from_secs(2)), workers: None };
    let started = Instant::now();
    let reports = ingest::run(
        vec![setup],
        &kafka,
        &ingest_config,
        &options,
        Arc::new(AtomicBool::new(false)),
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
    .await?;
    let report = reports.into_iter().next().unwrap_or_default();
    println!(
        "\n`protolake ingest` consumed {} records in {:.1} s (joining the group and a 2 s idle wait included):",
        report.records,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {} rows → {location} (version {})",
        report.rows,
        report.table_version.map_or("-".into(), |v| v.to_string())
    );
    println!("  {} dead letters → {dlq_location}", report.dead_letters);
    for (reason, count) in &report.by_reason {
        println!("    {count:>5} × {reason}");
    }
    if report.records == 0 && report.skipped == 0 {
        println!("  The table already holds every offset of the topic (from an earlier run): nothing was added.");
    }
    if report.skipped > 0 {
        println!(
            "  {} records were already in the table from an earlier run and were not added again.",
            report.skipped
        );
    }
    let duplicates = events.iter().filter(|(l, _)| l == "duplicate").count();
    println!("\n{duplicates} events were sent twice: both copies are rows here.");
    // The sample's event times start at 2025-11-21T00:00:00Z, 37 s apart.
    let first = chrono::DateTime::from_timestamp(1_763_683_200, 0).expect("a valid time").date_naive();
    let last = chrono::DateTime::from_timestamp(1_763_683_200 + 37 * args.events.max(1) as i64 - 37, 0)
        .expect("a valid time")
        .date_naive();
    println!("`protolake close-books` removes them by key and publishes each day into {}:", books_table.final_location);
    let mut date = first;
    while date <= last {
        let options = close_books::CloseOptions {
            date,
            force: false,
            now: chrono::Utc::now(),
            workers: protolake::config::workers_or_cores(None),
        };
        let r = close_books::close_day(&books_table, &options, &|_| {}).await?;
        match r.outcome {
            close_books::Outcome::Published => println!(
                "  {date}: {} rows read, {} duplicates removed, {} published (final version {}, raw rows checked against contract {})",
                r.rows_read,
                r.duplicates_removed,
                r.rows_published,
                r.final_version.unwrap_or_default(),
                r.contract_version.as_deref().unwrap_or("-")
            ),
            close_books::Outcome::Unchanged => {
                println!("  {date}: already closed, nothing arrived since ({} rows)", r.rows_read)
            }
        }
        date = date.succ_opt().expect("a next day");
    }
    println!("Every refused record keeps its bytes, reason, field path, headers and Kafka offset in the DLQ table;");
    println!("every commit records each partition's last offset, so a restart neither loses nor repeats a record.");
    println!("\nQuery it (pip install polars deltalake):");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{location}').group_by('event_type').len())\"");
    println!(
        "  python3 -c \"import polars as pl; print(pl.read_delta('{}').group_by('event_date').len())\"",
        books_table.final_location
    );
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{dlq_location}').select('reason','field_path','message'))\"");
    println!("or DuckDB: SELECT event_date, count(*) FROM delta_scan('{location}') GROUP BY ALL;");
    println!("\nNext: docs/ingest.md runs this against your Kafka; `protolake backfill` loads archived files.");
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> String {
    let p =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    p.display().to_string()
}
