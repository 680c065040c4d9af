//! `protolake quickstart`: a tour that needs nothing installed. It generates sample ad-impression
//! events from the schema shipped in `proto/` (some duplicated, some broken the ways real
//! producers break them), sends them over real gRPC to the gateway's own code serving
//! `ClickTrackService` in this process, which publishes the accepted ones to a Kafka topic on
//! librdkafka's in-process mock cluster; a producer that bypasses the gateway writes the refused
//! ones to the topic too; then it runs the ingest daemon's own code on that topic until it has
//! caught up and closes the books, and reports what the gateway refused and why next to what the
//! sink refused, what became a row in `./lake/`, and how to query the tables.

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
    DescriptorSource, EventTime, FlushPolicy, Framing, GatewayConfig, IngestConfig, KafkaConfig, ParquetOptions,
    RouteConfig, TableConfig,
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
const METHOD: &str = "protolake.examples.v1.ClickTrackService/AdTrackStream";
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

/// `AdTrackStreamResponse`, the gateway's answer to a stream.
#[derive(Clone, PartialEq, Message)]
struct StreamAnswer {
    #[prost(int64, tag = "1")]
    accepted: i64,
    #[prost(message, repeated, tag = "2")]
    refused: Vec<RefusedEvent>,
}

#[derive(Clone, PartialEq, Message)]
struct RefusedEvent {
    #[prost(int64, tag = "1")]
    index: i64,
    #[prost(message, repeated, tag = "2")]
    violations: Vec<FieldViolation>,
}

#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    rule: String,
    #[prost(string, tag = "3")]
    description: String,
}

/// Sends every event in one client stream to the gateway at `address`: its answer.
async fn send_through_gateway(address: std::net::SocketAddr, events: &[(String, Vec<u8>)]) -> Result<StreamAnswer> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {address}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.context("the gateway is not ready")?;
    let messages: Vec<bytes::Bytes> = events.iter().map(|(_, b)| bytes::Bytes::from(b.clone())).collect();
    let path = http::uri::PathAndQuery::from_static("/protolake.examples.v1.ClickTrackService/AdTrackStream");
    let reply = client
        .client_streaming(tonic::Request::new(futures::stream::iter(messages)), path, protolake::gateway::RawCodec)
        .await
        .map_err(|s| anyhow::anyhow!("the gateway refused the stream: {} {}", s.code(), s.message()))?;
    Ok(StreamAnswer::decode(reply.into_inner())?)
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
        header_columns: Vec::new(),
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

    // The gateway's own code, serving ClickTrackService from the descriptor on a loopback port.
    let route = RouteConfig { method: METHOD.into(), table: table.name.clone(), tokens_env: None };
    let gateway_config = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        metrics_address: None,
        routes: [(METHOD.to_string(), route.clone())].into(),
        ..GatewayConfig::default()
    };
    let route_setup = protolake::gateway::RouteSetup {
        route,
        table: table.clone(),
        descriptor_set: pool.encoded().to_vec(),
        decoder: decoder.fresh()?,
        validator: None,
        contract: Some(contract.clone()),
        tokens: None,
    };
    let gateway = protolake::gateway::Gateway::bind(
        vec![route_setup],
        &gateway_config,
        &kafka,
        Arc::new(protolake::metrics::GatewayMetrics::new()),
    )
    .await?;
    let address = gateway.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    let answer = send_through_gateway(address, &events).await?;
    let _ = stop.send(());
    serving.await.context("the gateway stopped")??;
    println!(
        "\n`protolake gateway` (gRPC on {address}, in this process) took the {} events in one client stream of {METHOD}:",
        events.len()
    );
    println!(
        "  {} accepted and published to {TOPIC} (acks=all), {} refused (none of them published):",
        answer.accepted,
        answer.refused.len()
    );
    let mut by_rule: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for r in &answer.refused {
        for v in &r.violations {
            let entry = by_rule
                .entry(v.rule.clone())
                .or_insert_with(|| (0, format!("e.g. event {}: {}: {}", r.index, v.field, v.description)));
            entry.0 += 1;
        }
    }
    for (rule, (count, example)) in &by_rule {
        println!("    {count:>5} × {rule:<20} {example}");
    }

    // A producer that does not go through the gateway, e.g. a legacy service writing to the
    // topic directly, sends the refused events: the sink must refuse exactly the same ones.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .create()
        .context("cannot create the sample producer")?;
    for r in &answer.refused {
        let bytes = &events[r.index as usize].1;
        // A fixed partition, as the gateway's keyed records have: a rerun produces the same
        // offsets, which the table already holds.
        let partition = (r.index % i64::from(PARTITIONS)) as i32;
        let mut record = BaseRecord::<(), [u8]>::to(TOPIC).payload(bytes.as_slice()).partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).context("the bypassing producer's events were not acknowledged")?;
    println!(
        "A producer that bypasses the gateway then wrote those {} refused events straight to the topic.",
        answer.refused.len()
    );

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
    // Each sample record breaks one rule: the gateway's reasons, record by record, against the sink's.
    let mut gateway_reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &answer.refused {
        if let Some(v) = r.violations.first() {
            *gateway_reasons.entry(v.rule.clone()).or_default() += 1;
        }
    }
    let sink_reasons = report.by_reason.clone();
    if report.records > 0 && gateway_reasons == sink_reasons {
        println!("The sink refused exactly what the gateway refused, for the same reasons: one decoder, one contract, one set of rules.");
    } else if report.records > 0 {
        println!("The gateway refused {gateway_reasons:?}, the sink {sink_reasons:?}: they should agree; please report this.");
    }
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
    println!(
        "\nNext: docs/gateway.md serves ClickTrackService in front of your Kafka, docs/ingest.md ingests it;\n\
         `protolake backfill` loads archived files."
    );
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> String {
    let p =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    p.display().to_string()
}
