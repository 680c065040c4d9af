//! gRPC gateway benchmark: the `protolake gateway` binary (its own process, so its CPU is its
//! own) serving `protolake.examples.v1.FlatTrackService` (the 8-field flat event under seven
//! buf.validate rules, `proto/protolake/examples/v1/ruled.proto`), driven by a tonic load client
//! in this process, publishing to a real broker; and, in the same run, the broker's own produce
//! rate (a bare librdkafka producer with the settings of the gateway's stream producer:
//! idempotent, `acks=all`, its linger.ms and partitioner).
//!
//! Run: `PROTOLAKE_KAFKA_BROKERS=127.0.0.1:19092 cargo bench --bench gateway` (options:
//! `-- --events N` streamed (default 400,000), `--streams S` concurrent client streams (4),
//! `--calls N` unary calls (40,000), `--concurrency C` unary calls in flight (32),
//! `--partitions P` (4), `--linger-ms L` the producers' linger.ms (the gateway's defaults: 1 for calls, 5 for streams),
//! `--rules 0` the same events as `FlatEvent`, without rules, to see what the rules cost).
//!
//! Printed: events (calls) per second of wall time, per CPU-second of the gateway process
//! (user + system from /proc), p50/p99 latency of unary calls, and the broker's own figures: its
//! produce rate, and its answer time for one record at a time, under the unary calls.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use protolake::gateway::RawCodec as Raw;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
};

mod common;

use common::{arg, flat_event};

/// Delivery reports counted, for the bare producer.
#[derive(Default)]
struct Counted {
    done: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl rdkafka::ClientContext for Counted {}

impl ProducerContext for Counted {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// User + system CPU seconds of process `pid`.
fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let events = arg("--events", 400_000);
    let streams = arg("--streams", 4).max(1);
    let calls = arg("--calls", 40_000);
    let concurrency = arg("--concurrency", 32).max(1);
    let partitions = arg("--partitions", 4) as i32;
    // librdkafka's linger.ms for both of the gateway's producers (unset: its defaults, 1 ms for calls and 5 for streams).
    let linger: Option<usize> = std::env::args().any(|a| a == "--linger-ms").then(|| arg("--linger-ms", 1));
    // With rules (RuledFlatEvent, seven buf.validate rules) or without (FlatEvent, the same bytes).
    let rules = arg("--rules", 1) != 0;
    let (proto_file, message, service) = if rules {
        ("ruled.proto", "RuledFlatEvent", "FlatTrackService")
    } else {
        ("events.proto", "FlatEvent", "FlatEventService")
    };
    let service = format!("protolake.examples.v1.{service}");
    let Some(servers) = std::env::var("PROTOLAKE_KAFKA_BROKERS").ok().filter(|s| !s.is_empty()) else {
        eprintln!(
            "set PROTOLAKE_KAFKA_BROKERS to a broker (e.g. tansu: `tansu broker --listener-url tcp://127.0.0.1:19092 \
             --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/`)"
        );
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let topic = format!("bench-gateway-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &servers).create().unwrap();
    for t in [topic.clone(), format!("{topic}-bare")] {
        for r in runtime
            .block_on(
                admin.create_topics(&[NewTopic::new(&t, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
            )
            .unwrap()
        {
            r.unwrap();
        }
    }
    println!("broker: {servers}, topic {topic} ({partitions} partitions)");

    let n = events.max(calls);
    let payloads: Arc<Vec<Bytes>> = Arc::new(
        (0..n)
            .map(|i| {
                let mut event = flat_event(i, n);
                // A UUID for any count (the shared generator's first group outgrows 8 digits).
                event.id = format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    (i * 7919) as u32,
                    i % 65536,
                    i % 4096,
                    (i * 31) % 4096,
                    i
                );
                Bytes::from(event.encode_to_vec())
            })
            .collect(),
    );
    let mean = payloads.iter().map(Bytes::len).sum::<usize>() as f64 / n as f64;
    println!(
        "events: flat 8-field, {mean:.0} bytes on the wire, {}",
        if rules { "7 buf.validate rules + the decoder's checks" } else { "no rules: the decoder's checks only" }
    );

    // The broker's own produce rate, with the settings of the gateway's stream producer
    // (idempotent, acks=all, its linger.ms and partitioner), as librdkafka's own performance
    // tool drives it: send until the queue is full, then serve delivery reports.
    let bare: BaseProducer<Counted> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.unwrap_or(5).to_string())
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "100000")
        .create_with_context(Counted::default())
        .unwrap();
    let bare_topic = format!("{topic}-bare");
    let started = Instant::now();
    for (i, p) in payloads.iter().take(events).enumerate() {
        let key = i.to_string();
        let mut record = BaseRecord::to(&bare_topic).payload(p.as_ref()).key(&key);
        loop {
            match bare.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    bare.poll(Duration::from_millis(1));
                }
            }
        }
    }
    while bare.context().done.load(std::sync::atomic::Ordering::Relaxed) < events as u64 {
        bare.poll(Duration::from_millis(10));
    }
    assert_eq!(bare.context().failed.load(std::sync::atomic::Ordering::Relaxed), 0, "the broker refused records");
    let bare_rate = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "broker produce-only: {events} records in {:.2} s = {:.0} records/s",
        started.elapsed().as_secs_f64(),
        bare_rate
    );
    drop(bare);
    // The broker's own answer time for one record at a time, as unary calls see it underneath.
    let bare: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.unwrap_or(1).to_string())
        .create()
        .unwrap();
    let mut bare_latencies = runtime.block_on({
        let (payloads, topic) = (payloads.clone(), bare_topic.clone());
        one_at_a_time(concurrency, calls, move |i| {
            let (bare, payloads, topic) = (bare.clone(), payloads.clone(), topic.clone());
            async move {
                let key = i.to_string();
                let record = FutureRecord::to(&topic).payload(payloads[i].as_ref()).key(&key);
                bare.send_result(record).map_err(|_| "queue full").unwrap().await.unwrap().unwrap();
            }
        })
    });
    bare_latencies.sort();

    // The gateway, its own process.
    let dir = tempfile::tempdir().unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let address = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{servers}"
{kafka_properties}

[tables.flat]
proto = ["{proto}/protolake/examples/v1/{proto_file}"]
include = ["{proto}"]
message = "protolake.examples.v1.{message}"
contract_dir = ""
location = "lake/flat"
event_time = {{ field = "ts_ms", unit = "milliseconds" }}
key = ["id"]
topic = "{topic}"

[gateway]
listen = "{address}"
metrics_address = ""

[gateway.routes."{service}/Track"]
table = "flat"

[gateway.routes."{service}/TrackStream"]
table = "flat"
"#,
        proto = proto.display(),
        kafka_properties = linger.map_or(String::new(), |l| format!("properties = {{ \"linger.ms\" = {l} }}\n")),
    );
    std::fs::write(dir.path().join("protolake.toml"), config).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_protolake"))
        .args(["gateway", "--config", "protolake.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    let pid = gateway.id();
    let started = Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the gateway did not listen");
        assert!(gateway.try_wait().unwrap().is_none(), "the gateway exited");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (stream_wall, stream_cpu) = runtime.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        // A warm-up stream, not measured.
        let warm: Vec<Bytes> = payloads.iter().take(2_000).cloned().collect();
        stream_call(channel.clone(), &service, warm).await;
        let cpu = cpu_of(pid);
        let started = Instant::now();
        let per = events / streams;
        let mut tasks = Vec::new();
        for s in 0..streams {
            let batch: Vec<Bytes> = payloads[s * per..(s + 1) * per].to_vec();
            tasks.push(tokio::spawn(stream_call(channel.clone(), service.clone(), batch)));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap();
        }
        assert_eq!(accepted, (per * streams) as u64, "every streamed event accepted");
        (started.elapsed().as_secs_f64(), cpu_of(pid) - cpu)
    });
    let streamed = (events / streams) * streams;

    let (unary_wall, unary_cpu, mut latencies) = runtime.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        let cpu = cpu_of(pid);
        let started = Instant::now();
        let grpc = tonic::client::Grpc::new(channel);
        let path = http::uri::PathAndQuery::try_from(format!("/{service}/Track")).unwrap();
        let payloads = payloads.clone();
        let all = one_at_a_time(concurrency, calls, move |i| {
            let (mut grpc, path, payload) = (grpc.clone(), path.clone(), payloads[i].clone());
            async move {
                grpc.ready().await.unwrap();
                grpc.unary(tonic::Request::new(payload), path, Raw).await.expect("a valid call is accepted");
            }
        })
        .await;
        (started.elapsed().as_secs_f64(), cpu_of(pid) - cpu, all)
    });
    latencies.sort();

    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = gateway.wait();

    let per_cpu = |n: usize, cpu: f64| if cpu > 0.0 { n as f64 / cpu } else { f64::NAN };
    println!();
    println!("| what | count | wall s | rate /s | gateway CPU s | per gateway CPU-s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| streaming ({streams} streams) | {streamed} | {stream_wall:.2} | {:.0} | {stream_cpu:.2} | {:.0} |",
        streamed as f64 / stream_wall,
        per_cpu(streamed, stream_cpu)
    );
    println!(
        "| unary ({concurrency} in flight) | {calls} | {unary_wall:.2} | {:.0} | {unary_cpu:.2} | {:.0} |",
        calls as f64 / unary_wall,
        per_cpu(calls, unary_cpu)
    );
    println!(
        "unary latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "broker alone, one record at a time ({concurrency} in flight): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&bare_latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&bare_latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("streaming rate / broker produce-only rate: {:.2}", (streamed as f64 / stream_wall) / bare_rate);
}

/// `calls` calls made by `concurrency` tasks, each waiting for its call before the next: the
/// time of each.
async fn one_at_a_time<F, Fut>(concurrency: usize, calls: usize, call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    return latencies;
                }
                let t = Instant::now();
                call(i).await;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// One client stream of `events`: the count the gateway accepted (the reply's field 1).
async fn stream_call(channel: tonic::transport::Channel, service: impl AsRef<str>, events: Vec<Bytes>) -> u64 {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(format!("/{}/TrackStream", service.as_ref())).unwrap();
    let request = tonic::Request::new(futures::stream::iter(events));
    let reply = grpc.client_streaming(request, path, Raw).await.expect("the stream is answered").into_inner();
    // AdTrackStreamResponse { int64 accepted = 1; ... }
    #[derive(Clone, PartialEq, Message)]
    struct Reply {
        #[prost(int64, tag = "1")]
        accepted: i64,
    }
    Reply::decode(reply).expect("a reply").accepted as u64
}
