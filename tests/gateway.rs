//! `protolake gateway` end to end, through the real binary, with real clients (Python grpcio
//! stubs generated from tests/protos/gateway.proto, grpcio-status, grpcio-reflection,
//! grpcio-health-checking, `buf curl`, plain HTTP/JSON: tests/gateway/client.py) against the
//! tansu broker scripts/test.sh starts (PROTOLAKE_KAFKA_BROKERS). The topic must then hold
//! exactly the accepted events, each once, with its key and headers, and the daemon must ingest
//! exactly those into the table.
//!
//! Needs PROTOLAKE_KAFKA_BROKERS and PROTOLAKE_PYTHON (with the gRPC packages); without them
//! the tests say so and pass, as the ingest tests fall back to a mock, which the gateway (an
//! idempotent producer) cannot use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;

mod common;

use common::{create_topic, http_get, terminate, unique, wait_at_most};
use protolake::location::Location;

fn environment() -> Option<(String, PathBuf)> {
    let brokers = std::env::var("PROTOLAKE_KAFKA_BROKERS").ok().filter(|s| !s.is_empty());
    let python = std::env::var_os("PROTOLAKE_PYTHON").map(PathBuf::from);
    match (brokers, python) {
        (Some(b), Some(p)) => Some((b, p)),
        _ => {
            eprintln!("PROTOLAKE_KAFKA_BROKERS or PROTOLAKE_PYTHON is not set (scripts/test.sh sets both): skipped");
            None
        }
    }
}

/// A child process killed when the test ends, passed or not.
struct Guard(Child);

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A folder with a config routing ClickService's methods to one table, its contract pinned.
struct Site {
    dir: tempfile::TempDir,
    topic: String,
    servers: String,
    address: String,
    metrics: String,
}

impl Site {
    fn new(servers: &str, extra_gateway: &str) -> Site {
        Self::with_table(servers, extra_gateway, true)
    }

    /// `topic`: the table has a topic (else the gateway writes it directly).
    fn with_table(servers: &str, extra_gateway: &str, topic_on: bool) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique("clicks");
        let topic_line = if topic_on {
            create_topic(servers, &topic, 2);
            format!("topic = \"{topic}\"")
        } else {
            "flush = { max_latency = \"500ms\" }".to_string()
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let address = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = format!(
            r#"
[kafka]
bootstrap_servers = "{servers}"
group_id = "{group}"

[ingest]
metrics_address = ""

[tables.clicks]
proto = ["{protos}/gateway.proto"]
include = ["{protos}", "{proto}"]
message = "protolake.tests.gateway.v1.Click"
location = "lake/clicks"
event_time = {{ field = "event_time" }}
key = ["click_id"]
header_columns = ["idempotency-key"]
{topic_line}

[gateway]
listen = "{address}"
metrics_address = "{metrics}"
{extra_gateway}

[gateway.routes."protolake.tests.gateway.v1.ClickService/Track"]
table = "clicks"

[gateway.routes."protolake.tests.gateway.v1.ClickService/TrackStream"]
table = "clicks"
tokens_env = "STREAM_TOKENS"

[gateway.routes."protolake.tests.gateway.v1.ClickService/TrackSecure"]
table = "clicks"
tokens_env = "SECURE_TOKENS"
"#,
            group = unique("group"),
            protos = root.join("tests/protos").display(),
            proto = root.join("proto").display(),
        );
        std::fs::write(dir.path().join("protolake.toml"), config).unwrap();
        let site = Site { dir, topic, servers: servers.to_string(), address, metrics };
        let out = site.protolake(&["schema", "init", "--table", "clicks"]);
        assert!(out.status.success(), "schema init: {}", String::from_utf8_lossy(&out.stderr));
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn protolake(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_protolake")).args(args).current_dir(self.path()).output().unwrap()
    }

    /// Starts the gateway and waits until it listens; its log goes to `log_name`.
    fn start_gateway(&self, log_name: &str) -> Guard {
        let log = std::fs::File::create(self.path().join(log_name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_protolake"))
            .args(["gateway", "--config", "protolake.toml"])
            .current_dir(self.path())
            .env("RUST_LOG", "warn,protolake=info")
            .env("STREAM_TOKENS", "stream-secret")
            .env("SECURE_TOKENS", "other, secure-secret")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gateway starts");
        let mut gateway = Guard(child);
        wait_until_listening(&self.address, &mut gateway, "the gateway", Duration::from_secs(60), || {
            self.log(log_name)
        });
        gateway
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    fn client(&self, python: &Path, args: &[&str]) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/client.py");
        let out = Command::new(python).arg(script).args(args).output().expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "client.py {args:?} failed:\n{stdout}\n{}\n--- gateway log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log("gateway.log")
        );
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or(serde_json::Value::Null)
    }
}

/// Waits until `child` (`what`) accepts connections at `address`, for `limit` at most.
fn wait_until_listening(address: &str, child: &mut Child, what: &str, limit: Duration, log: impl Fn() -> String) {
    let started = Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}):\n{}", log());
        }
        assert!(started.elapsed() < limit, "{what} did not listen:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One record of the topic.
struct Published {
    key: Vec<u8>,
    headers: BTreeMap<String, String>,
    click_id: String,
}

/// Every record of `topic` (all partitions) from the start, until `n` or a quiet minute.
fn consume(servers: &str, topic: &str, n: usize) -> Vec<Published> {
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = protox::compile(["gateway.proto"], [root.join("tests/protos"), root.join("proto")]).unwrap();
    let pool = DescriptorPool::from_file_descriptor_set(set).unwrap();
    let descriptor = pool.get_message_by_name("protolake.tests.gateway.v1.Click").unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && last.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            let headers = common::kafka_headers(&m);
            let message = DynamicMessage::decode(descriptor.clone(), m.payload().unwrap_or_default()).unwrap();
            let click_id = message.get_field_by_name("click_id").unwrap().as_str().unwrap().to_string();
            out.push(Published { key: m.key().unwrap_or_default().to_vec(), headers, click_id });
        }
    }
    out
}

#[test]
fn the_gateway_publishes_exactly_what_it_accepts_and_the_sink_ingests_exactly_that() {
    let Some((servers, python)) = environment() else { return };
    let site = Site::new(&servers, "");
    let mut gateway = site.start_gateway("gateway.log");

    let result = site.client(&python, &["all", &site.address]);
    let accepted = result["accepted"].as_array().expect("the client lists what it sent and was accepted");
    assert!(accepted.len() > 9_900, "{} accepted", accepted.len());

    // The metrics count the calls and the violations by rule.
    let (_, metrics) = http_get(&site.metrics, "/metrics");
    assert!(metrics.contains("protolake_gateway_calls_total{method=\"protolake.tests.gateway.v1.ClickService/Track\",code=\"InvalidArgument\"}"), "{metrics}");
    assert!(
        metrics.contains("protolake_gateway_violations_total{table=\"clicks\",reason=\"string.len\"}"),
        "{metrics}"
    );
    assert_eq!(http_get(&site.metrics, "/readyz").0, 200);

    let status = terminate(&mut gateway);
    assert!(status.success(), "the gateway's drain failed:\n{}", site.log("gateway.log"));

    // The topic holds exactly the accepted events, each once, keyed by click_id, with the
    // client's idempotency key (and a stream event's index) as headers.
    let published = consume(&site.servers, &site.topic, accepted.len());
    let mut seen = BTreeSet::new();
    for p in &published {
        assert!(seen.insert(p.click_id.clone()), "{} is in the topic twice", p.click_id);
        assert_eq!(p.key, p.click_id.as_bytes(), "the record key is the table's key");
    }
    let expected: BTreeMap<String, &serde_json::Value> =
        accepted.iter().map(|a| (a["id"].as_str().unwrap().to_string(), a)).collect();
    let missing: Vec<&String> = expected.keys().filter(|id| !seen.contains(*id)).take(5).collect();
    let extra: Vec<&String> = seen.iter().filter(|id| !expected.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing from the topic: {missing:?}; never accepted: {extra:?}");
    for p in &published {
        let sent = expected[&p.click_id];
        assert_eq!(
            p.headers.get("idempotency-key").map(String::as_str),
            sent["idempotency"].as_str(),
            "{}",
            p.click_id
        );
        let index = sent["index"].as_u64().map(|i| i.to_string());
        assert_eq!(p.headers.get("protolake-stream-index"), index.as_ref(), "{}", p.click_id);
    }

    // What the gateway accepted, the sink accepts: every event is a row, none a dead letter.
    let out =
        site.protolake(&["ingest", "--config", "protolake.toml", "--exit-when-idle", "3s", "--metrics-address", "off"]);
    assert!(out.status.success(), "ingest: {}", String::from_utf8_lossy(&out.stderr));
    let table = Location::new(site.path().join("lake/clicks").display().to_string());
    let read = common::read_columns(&table, &["click_id", "_source_header_idempotency_key"]);
    let rows: BTreeSet<String> = read.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(rows.len(), expected.len());
    assert!(rows.iter().all(|id| expected.contains_key(id)));
    // The client's idempotency key reached the table (header_columns), so a retry is recognisable.
    for row in &read {
        let sent = expected[row[0].as_ref().unwrap()];
        assert_eq!(row[1].as_deref(), sent["idempotency"].as_str(), "{row:?}");
    }
    let dlq = Location::new(site.path().join("lake/clicks_dlq").display().to_string());
    let dead = if Path::new(dlq.uri()).join("_delta_log").exists() {
        common::read_columns(&dlq, &["reason"])
    } else {
        Vec::new()
    };
    assert!(dead.is_empty(), "the sink refused what the gateway accepted: {dead:?}");
}

#[test]
fn a_broker_that_goes_away_fails_calls_unavailable_and_health_follows() {
    let Some((_, python)) = environment() else { return };
    let Some(tansu) = std::env::var_os("PROTOLAKE_TANSU") else {
        eprintln!("PROTOLAKE_TANSU is not set (scripts/test.sh sets it): skipped");
        return;
    };
    // A broker of this test's own, so stopping it stops nobody else's.
    let port = free_port();
    let servers = format!("127.0.0.1:{port}");
    let start_broker = || {
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &format!("tcp://{servers}"), "--advertised-listener-url"])
            .arg(format!("tcp://{servers}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let mut broker = Guard(child);
        wait_until_listening(&servers, &mut broker, "tansu", Duration::from_secs(30), String::new);
        broker
    };
    let mut broker = start_broker();
    let site = Site::new(&servers, "produce_timeout = \"3s\"\nmax_in_flight = 1");
    let mut gateway = site.start_gateway("gateway.log");
    site.client(&python, &["health", &site.address, "--expect", "SERVING"]);
    site.client(&python, &["unary", &site.address, "--expect", "ok"]);
    // A stream through a queue of one record: each event waits for the one before it.
    let streamed = site.client(&python, &["stream", &site.address, "--expect", "ok", "--events", "40"]);
    assert_eq!(streamed["accepted"].as_array().unwrap().len(), 40);

    broker.kill().unwrap();
    broker.wait().unwrap();
    // Never a success for a record the broker did not take: the client's deadline passes first
    // (1 s), or the produce timeout (3 s) does.
    site.client(&python, &["unary", &site.address, "--expect", "unavailable"]);
    site.client(&python, &["health", &site.address, "--expect", "NOT_SERVING", "--within", "30"]);
    assert_eq!(http_get(&site.metrics, "/readyz").0, 503);
    // A full produce queue (max_in_flight = 1) refuses at once, with RetryInfo.
    site.client(&python, &["unary", &site.address, "--expect", "queue-full"]);
    site.client(&python, &["unary", &site.address, "--expect", "deadline"]);
    // A stream's first event is never acknowledged: the stream fails naming it.
    site.client(&python, &["stream", &site.address, "--expect", "unavailable", "--events", "5"]);

    // A broker back on the address, without the topic (in-memory storage): still NOT_SERVING,
    // as records for it would time out; with the topic, health follows. (This broker has also
    // lost the producers' ids and sequences, which a Kafka cluster keeps across restarts; the
    // idempotent producer does not resume against it, so no call is made here.)
    let _broker = start_broker();
    site.client(&python, &["health", &site.address, "--expect", "NOT_SERVING", "--within", "5"]);
    create_topic(&servers, &site.topic, 2);
    site.client(&python, &["health", &site.address, "--expect", "SERVING", "--within", "60"]);

    let status = terminate(&mut gateway);
    let _ = status;
}

#[test]
fn sigterm_during_a_stream_lets_it_finish_and_loses_no_acknowledged_event() {
    let Some((servers, python)) = environment() else { return };
    let site = Site::new(&servers, "drain_timeout = \"60s\"");
    let mut gateway = site.start_gateway("gateway.log");
    let marker = site.path().join("streaming");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/client.py");
    let client = Command::new(&python)
        .arg(script)
        .args(["slow-stream", &site.address, "--events", "2000", "--marker"])
        .arg(&marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the stream did not start:\n{}", site.log("gateway.log"));
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM mid-stream: no new calls, but this one runs to its end and is answered.
    Command::new("kill").args(["-TERM", &gateway.id().to_string()]).status().unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the stream was not answered in full:\n{}\n--- gateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        site.log("gateway.log")
    );
    let status = wait_at_most(&mut gateway, Duration::from_secs(120));
    assert!(status.success(), "the gateway's drain failed:\n{}", site.log("gateway.log"));
    assert!(site.log("gateway.log").contains("draining"), "{}", site.log("gateway.log"));

    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let acknowledged: BTreeSet<String> =
        result["accepted"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(acknowledged.len(), 2000);
    let published: BTreeSet<String> =
        consume(&site.servers, &site.topic, acknowledged.len()).into_iter().map(|p| p.click_id).collect();
    let missing: Vec<&String> = acknowledged.difference(&published).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but not in the topic: {missing:?}");
}

#[test]
fn a_route_to_a_table_without_a_topic_writes_it_directly_and_answers_after_the_commit() {
    let Some((servers, python)) = environment() else { return };
    let site = Site::with_table(&servers, "", false);
    let mut gateway = site.start_gateway("gateway.log");
    let result = site.client(&python, &["direct", &site.address]);
    // Answered means committed: the table holds every accepted event before the gateway stops.
    let table = Location::new(site.path().join("lake/clicks").display().to_string());
    let rows = common::read_columns(&table, &["click_id", "_source_file", "_source_index"]);
    let status = terminate(&mut gateway);
    assert!(status.success(), "{}", site.log("gateway.log"));
    let accepted: BTreeSet<String> =
        result["accepted"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(accepted.len(), 540);
    let mut ids = BTreeSet::new();
    let mut positions = BTreeSet::new();
    for row in &rows {
        assert!(ids.insert(row[0].clone().unwrap()), "{:?} twice", row[0]);
        assert!(row[1].as_deref().unwrap().starts_with("gateway:"), "{row:?}");
        assert!(positions.insert(row[2].clone().unwrap()), "{row:?}");
    }
    assert_eq!(ids, accepted, "the table holds exactly the accepted events");
}

#[test]
fn a_gateway_with_a_certificate_serves_tls() {
    let Some((servers, python)) = environment() else { return };
    let site = Site::new(&servers, "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let folder = site.path().display().to_string();
    site.client(&python, &["certificate", &folder]);
    let mut gateway = site.start_gateway("gateway.log");
    let result = site.client(&python, &["tls", &site.address, "--marker", &folder]);
    let id = result["accepted"][0]["id"].as_str().unwrap().to_string();
    let status = terminate(&mut gateway);
    assert!(status.success(), "{}", site.log("gateway.log"));
    let published: Vec<String> = consume(&site.servers, &site.topic, 1).into_iter().map(|p| p.click_id).collect();
    assert_eq!(published, [id]);
}
