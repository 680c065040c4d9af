//! Kafka → Delta benchmark: N flat 8-field ~150-byte events on a topic, ingested by the daemon's
//! own code path (`protolake::ingest::run`) into a local Delta table, and, in the same run, the
//! broker's consume-only rate (a bare librdkafka consumer reading the same messages), so a slow
//! broker shows as such.
//!
//! Run: `PROTOLAKE_KAFKA_BROKERS=127.0.0.1:19092 cargo bench --bench ingest` (options:
//! `-- --records N` (default 2,000,000), `--partitions P` (default 1), `--workers W` (default 2)).
//! Without the variable the topic lives on librdkafka's in-process mock cluster, which serves
//! small runs only (`--records 10000`): beyond some tens of thousands of messages a partition
//! it stops serving, and the bench says so after 30 s without a message.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use protolake::config::{
    DescriptorSource, EventTime, FlushPolicy, Framing, IngestConfig, KafkaConfig, ParquetOptions, TableConfig, TimeUnit,
};
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::ingest::{self, IngestOptions, TableSetup};
use protolake::metrics::{Health, Metrics};

mod common;

use common::{arg, cpu_seconds, flat_event, peak_rss_mib, reset_peak_rss};

fn main() {
    // As the protolake binary does.
    protolake::allocator::tune();
    let n = arg("--records", 2_000_000);
    let partitions = arg("--partitions", 1) as i32;
    let topic = format!("bench-{}", std::process::id());
    let mock;
    let servers = match std::env::var("PROTOLAKE_KAFKA_BROKERS") {
        Ok(s) if !s.is_empty() => {
            let admin: AdminClient<DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", &s).create().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for r in rt
                .block_on(admin.create_topics(
                    &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                ))
                .unwrap()
            {
                r.unwrap();
            }
            println!("broker: {s}");
            s
        }
        _ => {
            mock = MockCluster::new(1).unwrap();
            mock.create_topic(&topic, partitions, 1).unwrap();
            println!("broker: librdkafka mock cluster (set PROTOLAKE_KAFKA_BROKERS for a real one)");
            mock.bootstrap_servers()
        }
    };

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..n {
        let payload = flat_event(i, n).encode_to_vec();
        bytes += payload.len();
        let mut record =
            BaseRecord::<(), [u8]>::to(&topic).payload(payload.as_slice()).partition((i % partitions as usize) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    drop(producer);
    println!(
        "produced {n} flat events ({:.0} bytes each) to {partitions} partition(s) in {:.1} s",
        bytes as f64 / n as f64,
        started.elapsed().as_secs_f64()
    );

    // The broker's own rate: a bare consumer reading every message, nothing else.
    reset_peak_rss();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", format!("bench-consume-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let cpu = cpu_seconds();
    // Timed from the first message, as the daemon's rate is.
    let mut started = Instant::now();
    let mut seen = 0;
    let mut last_error = None;
    let mut last_message = Instant::now();
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                if seen == 0 {
                    started = Instant::now();
                }
                seen += 1;
                last_message = Instant::now();
            }
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => {}
        }
        // librdkafka's mock cluster stops serving a partition of some tens of thousands of
        // messages; a stalled broker ends the bench with what it got instead of a hang.
        assert!(
            last_message.elapsed() < Duration::from_secs(30),
            "the broker served {seen} of {n} messages and then nothing for 30 s (last error: {last_error:?}); \
             for more than about 10,000 messages per partition set PROTOLAKE_KAFKA_BROKERS to a real broker"
        );
    }
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let consume_rate = n as f64 / secs;
    drop(consumer);
    println!(
        "consume only (librdkafka, no decoding): {:.2} M msgs/s wall, {:.2} M msgs/s per CPU-second, peak RSS {:.0} MiB",
        n as f64 / secs / 1e6,
        n as f64 / cpu / 1e6,
        peak_rss_mib()
    );

    // The daemon's path: consumer group, decode, rules, Parquet, Delta commits with txn offsets.
    reset_peak_rss();
    let work = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let fds = protox::compile(["protolake/examples/v1/events.proto"], [dir]).expect("proto compiles");
    let pool = Pool::from_prost(&fds).unwrap();
    let decoder = Decoder::new(&pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let location = work.path().join("table").display().to_string();
    let table = TableConfig {
        name: "bench".into(),
        descriptor: DescriptorSource::DescriptorSet("unused".into()),
        message: "protolake.examples.v1.FlatEvent".into(),
        recursion_depth: None,
        contract_dir: None,
        location: location.as_str().into(),
        dlq_location: format!("{location}_dlq").into(),
        event_time: Some(EventTime { field: "ts_ms".into(), unit: Some(TimeUnit::Milliseconds) }),
        key: Vec::new(),
        flush: FlushPolicy::default(),
        parquet: ParquetOptions::default(),
        max_record_bytes: 1 << 20,
        topic: Some(topic.clone()),
        framing: Framing::Raw,
        dlq_topic: None,
        checkpoint_interval: 100,
        final_location: format!("{location}_final").into(),
        close_books: Default::default(),
        zorder_by: Vec::new(),
        header_columns: Vec::new(),
    };
    let kafka = KafkaConfig {
        properties: [("bootstrap.servers".to_string(), servers.clone())].into(),
        group_id: format!("bench-{}", std::process::id()),
    };
    let setup = TableSetup { config: table, decoder, validator: None, contract: None, index_path: vec![0] };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cpu = cpu_seconds();
    let reports = runtime
        .block_on(ingest::run(
            vec![setup],
            &kafka,
            &IngestConfig { metrics_address: None, commit_retry_for: Duration::from_secs(60) },
            &IngestOptions { exit_when_idle: Some(Duration::from_secs(2)), workers: Some(arg("--workers", 2)) },
            Arc::new(AtomicBool::new(false)),
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
        ))
        .expect("ingest");
    let cpu = cpu_seconds() - cpu;
    let report = &reports[0];
    assert_eq!(report.rows, n as u64, "every produced record is a row");
    let busy = report.busy.as_secs_f64();
    println!(
        "ingest → Delta: {:.2} M rows/s wall (first message to last, and the last commit, {busy:.1} s), {:.2} M rows/s per CPU-second \
         ({cpu:.1} CPU-s incl. group join and a 2 s idle wait), {} commits, peak RSS {:.0} MiB",
        n as f64 / busy / 1e6,
        n as f64 / cpu / 1e6,
        report.commits,
        peak_rss_mib()
    );
    println!(
        "ingest wall rate / consume-only rate: {:.3}; {:.2} µs of daemon CPU a row",
        n as f64 / busy / consume_rate,
        cpu / n as f64 * 1e6
    );
}
