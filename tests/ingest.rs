//! The ingest daemon end to end, through the real binary, against a Kafka-protocol broker:
//! scripts/test.sh starts one (tansu) and names it in PROTOLAKE_KAFKA_BROKERS. Without that
//! variable the tests start librdkafka's in-process mock cluster instead (for a quick local
//! run; CI always uses the real broker).
//!
//! What is checked is the table's content, read back with the deltalake crate and Parquet:
//! every produced offset exactly once, bad records in the dead-letter table with their reason
//! and headers, after clean runs, kill -9 crashes and consumer-group rebalances.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};

mod common;

use common::{http_get, terminate, unique, wait_at_most, AdImpression};
use protolake::location::Location;

/// A broker for one test: the real one from the environment, or a mock cluster.
struct Broker {
    servers: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

fn broker() -> Broker {
    match std::env::var("PROTOLAKE_KAFKA_BROKERS") {
        Ok(servers) if !servers.is_empty() => Broker { servers, mock: None },
        _ => {
            eprintln!("PROTOLAKE_KAFKA_BROKERS is not set: using librdkafka's mock cluster");
            let mock = MockCluster::new(1).expect("mock cluster");
            Broker { servers: mock.bootstrap_servers(), mock: Some(mock) }
        }
    }
}

impl Broker {
    fn create_topic(&self, topic: &str, partitions: i32) {
        if let Some(mock) = &self.mock {
            mock.create_topic(topic, partitions, 1).expect("mock topic");
            return;
        }
        common::create_topic(&self.servers, topic, partitions);
    }

    /// One record per batch: the tansu broker answers a fetch at an offset inside a batch with
    /// the next batch (skipping the rest of the one it asked for), so batches of one keep its
    /// answers exact; the daemon reports such skips as `offset_gaps`.
    fn producer(&self) -> BaseProducer {
        let one_per_batch = if self.mock.is_some() { "10000" } else { "1" };
        ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("linger.ms", if self.mock.is_some() { "5" } else { "0" })
            .set("batch.num.messages", one_per_batch)
            .set("enable.idempotence", "false")
            .create()
            .expect("producer")
    }
}

/// The record at index `i`; its partition is `i % partitions`.
fn record(i: usize) -> Vec<u8> {
    AdImpression {
        impression_id: format!("ad-{i:07}"),
        event_time: Some(prost_types::Timestamp { seconds: 1_763_683_200 + (i as i64 % 3) * 86_400, nanos: 0 }),
        event_type: if i.is_multiple_of(2) { "impression".into() } else { "click".into() },
        slot: i as i32,
        tags: Vec::new(),
    }
    .encode_to_vec()
}

/// A record the decoder refuses (invalid UTF-8 in event_type).
fn bad_record(i: usize) -> Vec<u8> {
    let mut bytes = record(i);
    bytes.extend_from_slice(&[0x1a, 0x02, 0xc3, 0x28]);
    bytes
}

/// Produces records `range` (bad ones where `is_bad`), each to partition `i % partitions`.
fn produce(
    producer: &BaseProducer,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<usize>,
    is_bad: &dyn Fn(usize) -> bool,
) {
    for i in range {
        let payload = if is_bad(i) { bad_record(i) } else { record(i) };
        let key = format!("k{i}");
        let headers = OwnedHeaders::new().insert(Header { key: "trace-id", value: Some(key.as_bytes()) });
        let mut rec = BaseRecord::to(topic)
            .payload(&payload)
            .key(&key)
            .partition((i % partitions as usize) as i32)
            .headers(headers);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(50));
                    rec = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("all records acknowledged");
}

struct Lake {
    dir: PathBuf,
    table: Location,
    dlq: Location,
    /// Removes the folder at the end, unless PROTOLAKE_KEEP_LAKE is set (for a look afterwards).
    _cleanup: Option<tempfile::TempDir>,
}

impl Lake {
    fn new(broker: &Broker, topic: &str, flush: &str, extra_table: &str) -> Self {
        Self::on(None, broker, topic, flush, extra_table)
    }

    /// A lake whose tables live on an object store: (folder URI, storage options).
    fn on(
        store: Option<(&str, &BTreeMap<String, String>)>,
        broker: &Broker,
        topic: &str,
        flush: &str,
        extra_table: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (location, storage) = match store {
            Some((root, options)) => (format!("{root}/ads"), common::storage_section(options)),
            None => ("lake/ads".to_string(), String::new()),
        };
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let config = format!(
            r#"
[kafka]
bootstrap_servers = "{servers}"
group_id = "{group}"
properties = {{ "session.timeout.ms" = 6000, "heartbeat.interval.ms" = 500, "topic.metadata.refresh.interval.ms" = 1000 }}

[ingest]
metrics_address = ""

{storage}
[tables.ads]
proto = ["{proto}/protolake/examples/v1/events.proto"]
include = ["{proto}"]
message = "protolake.examples.v1.AdImpression"
contract_dir = ""
location = "{location}"
event_time = {{ field = "event_time" }}
topic = "{topic}"
flush = {flush}
{extra_table}
"#,
            servers = broker.servers,
            group = unique("group"),
            proto = proto.display(),
        );
        std::fs::write(dir.path().join("protolake.toml"), config).unwrap();
        let path = dir.path().to_path_buf();
        let table = match store {
            Some((_, options)) => Location::with_options(location.clone(), options.clone()).unwrap(),
            None => Location::new(path.join(&location).display().to_string()),
        };
        let dlq = table.sibling("_dlq");
        if std::env::var_os("PROTOLAKE_KEEP_LAKE").is_some() {
            eprintln!("lake kept in {}", path.display());
            #[allow(deprecated)]
            let _ = dir.into_path();
            return Lake { dir: path, table, dlq, _cleanup: None };
        }
        Lake { dir: path, table, dlq, _cleanup: Some(dir) }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn table(&self) -> Location {
        self.table.clone()
    }

    fn dlq(&self) -> Location {
        self.dlq.clone()
    }

    /// Starts the daemon; its log goes to `log_name` in the lake folder.
    fn start(&self, extra: &[&str], log_name: &str) -> Child {
        self.start_in_group(None, extra, log_name)
    }

    /// Starts the daemon, in its own consumer group when `group` is given.
    fn start_in_group(&self, group: Option<&str>, extra: &[&str], log_name: &str) -> Child {
        let log = std::fs::File::create(self.path().join(log_name)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_protolake"));
        if let Some(group) = group {
            command.env("PROTOLAKE__KAFKA__GROUP_ID", group);
        }
        command
            .args(["ingest", "--config", "protolake.toml"])
            .args(extra)
            .current_dir(self.path())
            .env("RUST_LOG", "warn,protolake=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts")
    }

    fn log(&self, log_name: &str) -> String {
        std::fs::read_to_string(self.path().join(log_name)).unwrap_or_default()
    }

    /// Runs a catch-up: ingest until idle, and expect success.
    fn catch_up(&self, log_name: &str, extra: &[&str]) {
        let mut args = vec!["--exit-when-idle", "3s"];
        args.extend_from_slice(extra);
        let mut child = self.start(&args, log_name);
        let status = wait_at_most(&mut child, Duration::from_secs(300));
        assert!(status.success(), "ingest failed:\n{}", self.log(log_name));
    }
}

/// Column values of every row of the Delta table at `location` (a path or a URL).
fn read_table(location: &Location, columns: &[&str]) -> Vec<Vec<Option<String>>> {
    common::read_columns(location, columns)
}

/// (partition, offset) of every row; panics on a duplicate.
fn offsets(path: &Location) -> BTreeSet<(i32, i64)> {
    let mut seen = BTreeSet::new();
    for row in read_table(path, &["_source_partition", "_source_offset"]) {
        let p: i32 = row[0].as_ref().unwrap().parse().unwrap();
        let o: i64 = row[1].as_ref().unwrap().parse().unwrap();
        assert!(seen.insert((p, o)), "partition {p} offset {o} is in {path} twice");
    }
    seen
}

/// Compares offset sets, naming a few missing and extra ones (not thousands).
#[track_caller]
fn assert_offsets(actual: &BTreeSet<(i32, i64)>, expected: &BTreeSet<(i32, i64)>, context: &str) {
    if actual != expected {
        let missing: Vec<_> = expected.difference(actual).take(10).collect();
        let extra: Vec<_> = actual.difference(expected).take(10).collect();
        panic!(
            "{} rows, expected {}; missing (first 10): {missing:?}; unexpected (first 10): {extra:?}\n{context}",
            actual.len(),
            expected.len()
        );
    }
}

/// Waits (with a generous limit against hangs) until the table holds `n` rows.
fn wait_for_rows(path: &Location, n: usize, limit: Duration) {
    let started = Instant::now();
    loop {
        let rows = read_table(path, &["_source_offset"]).len();
        if rows >= n {
            return;
        }
        assert!(started.elapsed() < limit, "the table has {rows} of {n} rows after {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The (partition, offset) set of records `range` when each partition received `i % p` in order.
fn expected_offsets(
    range: std::ops::Range<usize>,
    partitions: i32,
    keep: &dyn Fn(usize) -> bool,
) -> BTreeSet<(i32, i64)> {
    let mut next = vec![0i64; partitions as usize];
    let mut out = BTreeSet::new();
    for i in range {
        let p = i % partitions as usize;
        if keep(i) {
            out.insert((p as i32, next[p]));
        }
        next[p] += 1;
    }
    out
}

#[test]
fn produced_records_are_read_back_exactly_once_and_bad_ones_are_dead_letters() {
    let broker = broker();
    let topic = unique("ads");
    broker.create_topic(&topic, 3);
    let n = 3000;
    let bad = |i: usize| i % 500 == 7;
    produce(&broker.producer(), &topic, 3, 0..n, &bad);

    let dlq_topic = format!("{topic}-dlq");
    broker.create_topic(&dlq_topic, 1);
    let lake = Lake::new(
        &broker,
        &topic,
        r#"{ max_rows = 700, max_latency = "1s" }"#,
        &format!("dlq_topic = \"{dlq_topic}\"\ncheckpoint_interval = 2\nmax_record_bytes = \"1KiB\""),
    );
    lake.catch_up("run1.log", &[]);
    let checkpoints = std::fs::read_dir(Path::new(lake.table().uri()).join("_delta_log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert!(checkpoints > 0, "checkpoint_interval = 2 wrote no checkpoint");
    let rows = offsets(&lake.table());
    assert_offsets(&rows, &expected_offsets(0..n, 3, &|i| !bad(i)), &lake.log("run1.log"));
    let keys: BTreeSet<String> =
        read_table(&lake.table(), &["impression_id"]).into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(keys.len(), n - 6);
    assert!(keys.contains("ad-0000000") && !keys.contains("ad-0000007"));

    let dead =
        read_table(&lake.dlq(), &["reason", "field_path", "_source_partition", "_source_offset", "headers", "raw"]);
    assert_eq!(dead.len(), 6, "{dead:?}");
    for row in &dead {
        assert_eq!(row[0].as_deref(), Some("invalid_utf8"), "{row:?}");
        assert_eq!(row[1].as_deref(), Some("event_type"), "{row:?}");
        assert!(row[4].as_deref().unwrap_or("").contains("trace-id"), "headers kept: {row:?}");
    }
    let dead_offsets: BTreeSet<(i32, i64)> = dead
        .iter()
        .map(|r| (r[2].as_ref().unwrap().parse().unwrap(), r[3].as_ref().unwrap().parse().unwrap()))
        .collect();
    assert_offsets(&dead_offsets, &expected_offsets(0..n, 3, &bad), "dead letters");

    // The dead-letter topic got the same records, original bytes and headers plus the reason.
    let copies = consume_all(&broker, &dlq_topic, 6);
    for (payload, headers) in &copies {
        assert_eq!(headers.get("protolake.reason").map(String::as_str), Some("invalid_utf8"), "{headers:?}");
        assert_eq!(headers.get("protolake.field_path").map(String::as_str), Some("event_type"));
        let i: usize = headers["trace-id"].trim_start_matches('k').parse().unwrap();
        assert_eq!(payload, &bad_record(i));
    }

    // A second run takes only the new records (the table's positions say where to start); an
    // oversized record is a dead letter, not an allocation. Its log is JSON.
    produce(&broker.producer(), &topic, 3, n..n + 30, &bad);
    let mut huge = record(n + 30);
    huge.extend_from_slice(&[0x7a, 0x90, 0x0f]); // field 15, 1936 bytes: an unknown field
    huge.extend_from_slice(&[b'x'; 1936]);
    let producer = broker.producer();
    producer.send(BaseRecord::<(), [u8]>::to(&topic).payload(huge.as_slice()).partition(0)).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    lake.catch_up("run2.log", &["--log-format", "json"]);
    assert_offsets(&offsets(&lake.table()), &expected_offsets(0..n + 30, 3, &|i| !bad(i)), &lake.log("run2.log"));
    let reasons: Vec<String> =
        read_table(&lake.dlq(), &["reason"]).into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(reasons.len(), 8, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "too_large").count(), 1, "{reasons:?}");
    for line in lake.log("run2.log").lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
}

/// Reads `n` messages of a one-partition topic from its start: (payload, headers).
fn consume_all(broker: &Broker, topic: &str, n: usize) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.servers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(started.elapsed() < Duration::from_secs(120), "{} of {n} messages on {topic}", out.len());
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = common::kafka_headers(&m);
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    out
}

#[test]
fn confluent_framing_checks_the_schema_id() {
    let broker = broker();
    let topic = unique("confluent");
    broker.create_topic(&topic, 1);
    let frame = |id: u32, body: Vec<u8>| {
        let mut v = vec![0u8];
        v.extend_from_slice(&id.to_be_bytes());
        v.push(0); // message indexes [0]: the file's first message, AdImpression
        v.extend(body);
        v
    };
    let values = [frame(41, record(0)), frame(99, record(1)), record(2), frame(41, record(3))];
    let producer = broker.producer();
    for v in &values {
        producer.send(BaseRecord::<(), [u8]>::to(&topic).payload(v.as_slice()).partition(0)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let lake = Lake::new(
        &broker,
        &topic,
        r#"{ max_rows = 700, max_latency = "1s" }"#,
        "framing = \"confluent\"\nschema_ids = [41, 42]",
    );
    lake.catch_up("run.log", &[]);
    let keys: BTreeSet<String> =
        read_table(&lake.table(), &["impression_id"]).into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(keys, BTreeSet::from(["ad-0000000".to_string(), "ad-0000003".to_string()]));
    let mut dead: Vec<(String, String)> = read_table(&lake.dlq(), &["_source_offset", "reason"])
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    dead.sort();
    assert_eq!(dead, [("1".to_string(), "unknown_schema_id".to_string()), ("2".into(), "bad_framing".into())]);
}

#[test]
fn start_up_refuses_a_descriptor_that_left_its_pinned_contract() {
    // Needs no broker: the check comes before connecting.
    let lake = Lake::new(&Broker { servers: "127.0.0.1:9".into(), mock: None }, "t", "{}", "");
    let config = std::fs::read_to_string(lake.path().join("protolake.toml")).unwrap();
    std::fs::write(
        lake.path().join("protolake.toml"),
        config.replace("contract_dir = \"\"", "contract_dir = \"pins\""),
    )
    .unwrap();
    std::fs::create_dir_all(lake.path().join("pins")).unwrap();
    std::fs::write(
        lake.path().join("pins/v1.ddl"),
        "impression_id STRING,\nevent_time TIMESTAMP,\nevent_type STRING,\npage_url STRING,\nslot BIGINT,\n\
         bid_price DOUBLE,\nviewable BOOLEAN,\ncountry STRING,\ncampaign_id STRING,\ntags ARRAY<STRING>,\n\
         attributes MAP<STRING, STRING>\n",
    )
    .unwrap();
    let mut child = lake.start(&[], "refused.log");
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    let log = lake.log("refused.log");
    assert!(!status.success(), "{log}");
    assert!(log.contains("slot: expected BIGINT, found INT"), "{log}");
    assert!(log.contains("protolake schema init --table ads"), "{log}");
}

#[test]
fn kill_nine_at_random_moments_loses_and_doubles_nothing() {
    let broker = broker();
    let topic = unique("crash");
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let partitions = env("PROTOLAKE_CRASH_PARTITIONS", 3) as i32;
    broker.create_topic(&topic, partitions);
    let n = env("PROTOLAKE_CRASH_RECORDS", 60_000);
    let kills = env("PROTOLAKE_CRASH_KILLS", 10);
    let bad = |i: usize| i % 1000 == 999;
    produce(&broker.producer(), &topic, partitions, 0..n, &bad);

    let flush = format!("{{ max_rows = {}, max_latency = \"300ms\" }}", env("PROTOLAKE_CRASH_FLUSH_ROWS", 4000));
    let lake = Lake::new(&broker, &topic, &flush, "");
    // Pseudo-random kill moments (fixed seed: a failure can be replayed).
    let mut seed = env("PROTOLAKE_CRASH_SEED", 42) as u64;
    let mut killed_with_progress = 0;
    let mut killed = 0;
    for k in 0..kills {
        killed += 1;
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(100 + (seed >> 33) % env("PROTOLAKE_CRASH_MAX_DELAY_MS", 900) as u64);
        let before = read_table(&lake.table(), &["_source_offset"]).len();
        // Each run joins a new group: the killed member's group membership (which a broker
        // keeps until its session times out) is irrelevant, since positions come from the table.
        let group = unique("crash-group");
        let log = format!("crash{k}.log");
        // Runs of several workers and of one take turns: whatever a killed run's workers held,
        // the next run, with however many, resumes from the table's positions.
        let workers = if k % 2 == 0 { "3" } else { "1" };
        let mut child = lake.start_in_group(Some(&group), &["--workers", workers], &log);
        // The moment is counted from this run's first commit (or, if none comes within a
        // minute, from its assignment), so every kill lands while it ingests and commits.
        let joining = Instant::now();
        while !lake.log(&log).contains("partitions=[\"") && joining.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let commits = || {
            let log = std::path::Path::new(lake.table().local_path().unwrap()).join("_delta_log");
            std::fs::read_dir(log)
                .map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        };
        let at_start = commits();
        let assigned = Instant::now();
        while commits() == at_start && assigned.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let after = offsets(&lake.table()).len();
        if after > before {
            killed_with_progress += 1;
        }
        eprintln!(
            "kill {k}: {} ms after the run's first commit; the table holds {after} rows (+{})",
            delay.as_millis(),
            after - before
        );
        if after >= n - n / 1000 {
            break;
        }
    }
    // A broker keeping a large topic in memory may take seconds to answer the first fetch.
    let idle = std::env::var("PROTOLAKE_CRASH_IDLE").unwrap_or_else(|_| "3s".into());
    let mut child =
        lake.start_in_group(Some(&unique("final-group")), &["--exit-when-idle", &idle, "--workers", "2"], "final.log");
    assert!(wait_at_most(&mut child, Duration::from_secs(900)).success(), "{}", lake.log("final.log"));
    let rows = offsets(&lake.table());
    assert_offsets(&rows, &expected_offsets(0..n, partitions, &|i| !bad(i)), &lake.log("final.log"));
    let dead = read_table(&lake.dlq(), &["_source_partition", "_source_offset"]);
    let dead_set: BTreeSet<(i32, i64)> = dead
        .iter()
        .map(|r| (r[0].as_ref().unwrap().parse().unwrap(), r[1].as_ref().unwrap().parse().unwrap()))
        .collect();
    assert_eq!(dead.len(), dead_set.len(), "a dead letter was written twice");
    assert_offsets(&dead_set, &expected_offsets(0..n, partitions, &bad), "dead letters");
    eprintln!(
        "{killed} kills, {killed_with_progress} of them after the table had grown; {} rows exactly once",
        rows.len()
    );
}

#[test]
fn a_second_daemon_joining_and_leaving_mid_stream_loses_and_doubles_nothing() {
    let broker = broker();
    let topic = unique("rebalance");
    let partitions = 4;
    broker.create_topic(&topic, partitions);
    let lake = Lake::new(&broker, &topic, r#"{ max_rows = 2000, max_latency = "300ms" }"#, "");
    let n = 40_000;
    let producer = broker.producer();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let mut a = lake.start(&["--metrics-address", &address], "a.log");
    produce(&producer, &topic, partitions, 0..n / 4, &|_| false);
    let mut b = lake.start(&[], "b.log");
    // Keep producing while the group rebalances to two members and back to one.
    let mut produced = n / 4;
    let chunk = n / 16;
    let mut b_assigned = false;
    while produced < 3 * n / 4 {
        produce(&producer, &topic, partitions, produced..produced + chunk, &|_| false);
        produced += chunk;
        std::thread::sleep(Duration::from_millis(700));
        b_assigned |= lake.log("b.log").contains("partitions=[\"");
    }
    let started = Instant::now();
    while !b_assigned && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(300));
        b_assigned = lake.log("b.log").contains("partitions=[\"");
    }
    assert!(terminate(&mut b).success(), "second daemon:\n{}", lake.log("b.log"));
    produce(&producer, &topic, partitions, produced..n, &|_| false);
    wait_for_rows(&lake.table(), n, Duration::from_secs(180));
    // The running daemon reports itself: ready, healthy, and counting what it committed.
    let (status, body) = http_get(&address, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ads: ready"), "{body}");
    assert_eq!(http_get(&address, "/healthz").0, 200);
    let (status, metrics) = http_get(&address, "/metrics");
    assert_eq!(status, 200);
    let committed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("protolake_rows_committed_total{table=\"ads\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rows_committed in:\n{metrics}"));
    assert!(committed > 0.0 && committed <= n as f64, "{committed}");
    for name in
        ["protolake_commit_duration_seconds_bucket", "protolake_assigned_partitions", "protolake_files_written_total"]
    {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(terminate(&mut a).success(), "first daemon:\n{}", lake.log("a.log"));
    assert!(b_assigned, "the second daemon never got partitions:\n{}", lake.log("b.log"));
    assert_offsets(&offsets(&lake.table()), &expected_offsets(0..n, partitions, &|_| true), &lake.log("a.log"));
}

#[test]
fn the_daemon_ingests_into_s3_and_azure_exactly_once() {
    let broker = broker();
    for (name, root, options) in common::object_stores("ingest") {
        let topic = unique(&format!("store-{name}"));
        broker.create_topic(&topic, 2);
        let n = 1500;
        let bad = |i: usize| i % 300 == 11;
        produce(&broker.producer(), &topic, 2, 0..n, &bad);
        let lake =
            Lake::on(Some((&root, &options)), &broker, &topic, r#"{ max_rows = 400, max_latency = "500ms" }"#, "");
        lake.catch_up("run1.log", &[]);
        let log = lake.log("run1.log");
        assert!(!log.contains("unsafe for concurrent writers"), "{name}: {log}");
        assert_offsets(&offsets(&lake.table()), &expected_offsets(0..n, 2, &|i| !bad(i)), &format!("{name}: {log}"));
        let dead: BTreeSet<(i32, i64)> = read_table(&lake.dlq(), &["_source_partition", "_source_offset"])
            .iter()
            .map(|r| (r[0].as_ref().unwrap().parse().unwrap(), r[1].as_ref().unwrap().parse().unwrap()))
            .collect();
        assert_offsets(&dead, &expected_offsets(0..n, 2, &bad), &format!("{name}: dead letters"));

        // A restart resumes from the positions the table on the store records.
        produce(&broker.producer(), &topic, 2, n..n + 200, &bad);
        lake.catch_up("run2.log", &[]);
        assert_offsets(
            &offsets(&lake.table()),
            &expected_offsets(0..n + 200, 2, &|i| !bad(i)),
            &format!("{name}: {}", lake.log("run2.log")),
        );
    }
}

/// A TCP relay in front of a server that can be cut off: while down it resets every open
/// connection and every new one, as a crashed or unreachable server would.
struct Relay {
    address: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(upstream: &str) -> Relay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_string();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                open2.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { address, up, open }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[test]
fn an_s3_outage_stalls_ingestion_and_it_resumes_without_loss_or_doubles() {
    let broker = broker();
    let (_, root, direct_options) =
        common::object_stores("outage").into_iter().find(|(name, _, _)| *name == "s3").unwrap();
    let endpoint = direct_options["aws_endpoint"].trim_start_matches("http://").to_string();
    let relay = Relay::start(&endpoint);
    let mut options = direct_options.clone();
    options.insert("aws_endpoint".into(), format!("http://{}", relay.address));
    // Requests give up after a few seconds, so the outage reaches the daemon's own recovery
    // (drop the batch, re-read the table's positions) instead of being hidden by HTTP retries.
    options.insert("max_retries".into(), "2".into());
    options.insert("retry_timeout".into(), "3s".into());
    let topic = unique("outage");
    let partitions = 2;
    broker.create_topic(&topic, partitions);
    let lake = Lake::on(Some((&root, &options)), &broker, &topic, r#"{ max_rows = 100, max_latency = "200ms" }"#, "");
    // The test reads the table past the relay.
    let direct = Location::with_options(format!("{root}/ads"), direct_options).unwrap();
    let n = 3000;
    produce(&broker.producer(), &topic, partitions, 0..1000, &|_| false);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = format!("127.0.0.1:{port}");
    let mut child = lake.start(&["--metrics-address", &metrics], "daemon.log");
    wait_for_rows(&direct, 500, Duration::from_secs(120));

    relay.set_up(false);
    produce(&broker.producer(), &topic, partitions, 1000..n, &|_| false);
    let readiness = |want: u16, limit: Duration| {
        let started = Instant::now();
        while http_get(&metrics, "/readyz").0 != want {
            assert!(started.elapsed() < limit, "/readyz never answered {want}:\n{}", lake.log("daemon.log"));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Not ready while commits fail.
    readiness(503, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "the daemon exited during the outage:\n{}", lake.log("daemon.log"));
    let during = offsets(&direct).len();
    assert!(during < n, "everything was committed although the store was unreachable");
    relay.set_up(true);

    wait_for_rows(&direct, n, Duration::from_secs(180));
    readiness(200, Duration::from_secs(60));
    assert!(terminate(&mut child).success(), "{}", lake.log("daemon.log"));
    let log = lake.log("daemon.log");
    assert!(log.contains("commit failed"), "the outage never reached a commit:\n{log}");
    assert_offsets(&offsets(&direct), &expected_offsets(0..n, partitions, &|_| true), &log);
}

/// Runs a maintenance command of the binary in the lake folder and parses its `--json` output.
fn maintenance(lake: &Lake, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_protolake"))
        .args(args)
        .args(["--config", "protolake.toml", "--table", "ads", "--json"])
        .current_dir(lake.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {text}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

#[test]
fn compaction_racing_the_daemon_loses_and_doubles_nothing() {
    let broker = broker();
    let topic = unique("compact");
    let partitions = 2;
    broker.create_topic(&topic, partitions);
    let n = 8000;
    // Small commits, so there is plenty to compact while the daemon goes on.
    let lake = Lake::new(&broker, &topic, r#"{ max_rows = 150, max_latency = "100ms" }"#, "");
    produce(&broker.producer(), &topic, partitions, 0..n / 2, &|_| false);
    let mut child = lake.start(&[], "daemon.log");
    wait_for_rows(&lake.table(), 500, Duration::from_secs(120));
    let producer = {
        let (producer, topic) = (broker.producer(), topic.clone());
        std::thread::spawn(move || produce(&producer, &topic, partitions, n / 2..n, &|_| false))
    };
    let mut compacted = 0;
    let mut rounds = 0;
    while offsets(&lake.table()).len() < n && rounds < 200 {
        let report = maintenance(&lake, &["optimize"]);
        compacted += report["files_removed"].as_u64().unwrap();
        rounds += 1;
    }
    producer.join().unwrap();
    wait_for_rows(&lake.table(), n, Duration::from_secs(180));
    let last = maintenance(&lake, &["optimize"]);
    compacted += last["files_removed"].as_u64().unwrap();
    assert!(terminate(&mut child).success(), "{}", lake.log("daemon.log"));
    assert!(compacted > 0, "no optimize run compacted anything in {rounds} rounds");
    assert_offsets(&offsets(&lake.table()), &expected_offsets(0..n, partitions, &|_| true), &lake.log("daemon.log"));

    // inspect reports the offsets the table holds: the last of each partition.
    let seen = maintenance(&lake, &["inspect"]);
    for p in 0..partitions {
        let last = expected_offsets(0..n, partitions, &|_| true).iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).max();
        assert_eq!(seen["kafka_offsets"][p.to_string()].as_i64(), last, "partition {p}: {seen}");
    }
    assert_eq!(seen["raw"]["rows"], n as u64, "{seen}");
    eprintln!("{rounds} optimize runs while ingesting compacted {compacted} files");

    // vacuum: the compacted files are younger than any retention it accepts, so nothing goes;
    // shorter retentions are refused with the reason.
    let dry = maintenance(&lake, &["vacuum", "--dry-run", "--full"]);
    assert_eq!(dry["files_deleted"], 0, "{dry}");
    assert_eq!(dry["retention_hours"], 168.0, "the table's default retention: {dry}");
    let refused = |args: &[&str], why: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_protolake"))
            .args(args)
            .args(["--config", "protolake.toml", "--table", "ads"])
            .current_dir(lake.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && text.contains(why), "{args:?}: {text}");
    };
    refused(&["vacuum", "--retention", "2h"], "shorter than the table's delta.deletedFileRetentionDuration");
    refused(&["vacuum", "--retention", "30m", "--force"], "below the minimum of 1h, even with --force");
    let forced = maintenance(&lake, &["vacuum", "--retention", "1h", "--force", "--full"]);
    assert_eq!(forced["files_deleted"], 0, "every file is younger than an hour: {forced}");
    assert_offsets(&offsets(&lake.table()), &expected_offsets(0..n, partitions, &|_| true), "after vacuum");
}
