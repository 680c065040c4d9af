//! The ingest daemon's Prometheus metrics and its `/metrics`, `/healthz` and `/readyz`
//! endpoints. Nothing here is needed for correctness: a daemon without a metrics address
//! ingests the same way.
//!
//! Every metric is documented in `docs/ingest.md`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub table: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub table: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub table: String,
    pub topic: String,
    pub partition: i32,
}

fn commit_histogram() -> Histogram {
    // 5 ms .. ~82 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// All metrics of one daemon (labelled by table).
pub struct Metrics {
    registry: Registry,
    pub records: Family<TableLabel, Counter>,
    pub bytes: Family<TableLabel, Counter>,
    pub rows: Family<TableLabel, Counter>,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub skipped: Family<TableLabel, Counter>,
    pub commits: Family<OutcomeLabel, Counter>,
    pub commit_seconds: Family<TableLabel, Histogram, fn() -> Histogram>,
    pub files: Family<TableLabel, Counter>,
    pub table_version: Family<TableLabel, Gauge>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub assigned: Family<TableLabel, Gauge>,
    pub kafka_errors: Family<TableLabel, Counter>,
    pub offset_gaps: Family<TableLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("protolake");
        let m = Metrics {
            records: Family::default(),
            bytes: Family::default(),
            rows: Family::default(),
            dead_letters: Family::default(),
            skipped: Family::default(),
            commits: Family::default(),
            commit_seconds: Family::new_with_constructor(commit_histogram as fn() -> Histogram),
            files: Family::default(),
            table_version: Family::default(),
            lag: Family::default(),
            assigned: Family::default(),
            kafka_errors: Family::default(),
            offset_gaps: Family::default(),
            registry: Registry::default(),
        };
        registry.register("records_received", "Kafka messages received", m.records.clone());
        registry.register("bytes_received", "Bytes of Kafka message values received", m.bytes.clone());
        registry.register("rows_committed", "Rows committed to the data table", m.rows.clone());
        registry.register(
            "dead_letters",
            "Records committed to the dead-letter table, by reason",
            m.dead_letters.clone(),
        );
        registry.register(
            "records_skipped",
            "Messages skipped because the table already holds them (redelivery after a restart or rebalance)",
            m.skipped.clone(),
        );
        registry.register("commits", "Delta commits by outcome (committed, conflict, failed)", m.commits.clone());
        registry.register(
            "commit_duration_seconds",
            "Time to write the open files and commit them (dead-letter and data tables)",
            m.commit_seconds.clone(),
        );
        registry.register("files_written", "Parquet data files committed", m.files.clone());
        registry.register("table_version", "Version of the data table after the last commit", m.table_version.clone());
        registry.register(
            "consumer_lag",
            "Messages between the partition's high watermark and the last offset committed (from librdkafka statistics)",
            m.lag.clone(),
        );
        registry.register("assigned_partitions", "Partitions assigned to this daemon", m.assigned.clone());
        registry.register("kafka_errors", "Errors reported by the Kafka client", m.kafka_errors.clone());
        registry.register(
            "offset_gaps",
            "Offsets skipped between the offset a partition was started at and its first message",
            m.offset_gaps.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        text(&self.registry)
    }
}

/// A registry in the Prometheus text format.
fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub table: String,
    pub error: String,
}

fn call_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The metrics of `protolake gateway` (documented in `docs/gateway.md`).
pub struct GatewayMetrics {
    registry: Registry,
    pub calls: Family<CallLabel, Counter>,
    pub call_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    pub accepted: Family<TableLabel, Counter>,
    pub refused: Family<ReasonLabel, Counter>,
    pub produce_errors: Family<ErrorLabel, Counter>,
    pub broker_reachable: Gauge,
    accepted_total: AtomicU64,
    refused_total: AtomicU64,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("protolake_gateway");
        let m = GatewayMetrics {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            accepted: Family::default(),
            refused: Family::default(),
            produce_errors: Family::default(),
            broker_reachable: Gauge::default(),
            accepted_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register("calls", "Calls answered, by method and gRPC status code", m.calls.clone());
        registry.register(
            "call_duration_seconds",
            "Time from a call's arrival to its answer (the broker's acknowledgement included)",
            m.call_seconds.clone(),
        );
        registry.register("records_accepted", "Records that passed the table's checks", m.accepted.clone());
        registry.register(
            "violations",
            "Violations found in refused records, by table and rule (a record may break several)",
            m.refused.clone(),
        );
        registry.register(
            "produce_errors",
            "Records the producer could not hand over or the broker did not acknowledge, by librdkafka error",
            m.produce_errors.clone(),
        );
        registry.register(
            "broker_reachable",
            "1 while the producer reaches the brokers (health SERVING)",
            m.broker_reachable.clone(),
        );
        GatewayMetrics { registry, ..m }
    }

    pub fn observe_call(&self, method: &str, code: tonic::Code, started: std::time::Instant) {
        let code = format!("{code:?}");
        self.calls.get_or_create(&CallLabel { method: method.to_string(), code }).inc();
        self.call_seconds
            .get_or_create(&MethodLabel { method: method.to_string() })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The accepted-records counter of `table`, to hold and increment without a lookup.
    pub fn accepted_counter(&self, table: &str) -> Counter {
        self.accepted.get_or_create(&TableLabel { table: table.to_string() }).clone()
    }

    /// Counts a record accepted (for the gateway's final report).
    pub fn accepted_record(&self) {
        self.accepted_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, table: &str, rule: &str) {
        self.refused.get_or_create(&ReasonLabel { table: table.to_string(), reason: rule.to_string() }).inc();
    }

    pub fn refused_record(&self) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn produce_error(&self, table: &str, error: String) {
        self.produce_errors.get_or_create(&ErrorLabel { table: table.to_string(), error }).inc();
    }

    pub fn accepted_total(&self) -> u64 {
        self.accepted_total.load(Ordering::Relaxed)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    pub fn encode(&self) -> String {
        text(&self.registry)
    }
}

/// Liveness and readiness of each table's consumer loop.
#[derive(Default)]
pub struct Health {
    tables: std::sync::Mutex<Vec<(String, Arc<TableHealth>)>>,
}

#[derive(Default)]
pub struct TableHealth {
    /// The tables are open and the consumer has subscribed.
    pub ready: AtomicBool,
    /// The loop has stopped on an error.
    pub failed: AtomicBool,
    /// Unix seconds of the loop's last turn.
    pub last_turn: AtomicU64,
}

impl TableHealth {
    pub fn turn(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.last_turn.store(now, Ordering::Relaxed);
    }
}

impl Health {
    pub fn table(&self, name: &str) -> Arc<TableHealth> {
        let entry = Arc::new(TableHealth::default());
        entry.turn();
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), entry.clone()));
        entry
    }

    /// (healthy, report): a loop that failed or has not turned for `stall` is unhealthy.
    pub fn live(&self, stall: Duration) -> (bool, String) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut ok = true;
        let mut report = String::new();
        for (name, t) in tables.iter() {
            let age = now.saturating_sub(t.last_turn.load(Ordering::Relaxed));
            let state = if t.failed.load(Ordering::Relaxed) {
                ok = false;
                "failed".to_string()
            } else if age > stall.as_secs() {
                ok = false;
                format!("stalled for {age}s")
            } else {
                "ok".to_string()
            };
            report.push_str(&format!("{name}: {state}\n"));
        }
        (ok, report)
    }

    /// (ready, report): every table open and subscribed, none failed.
    pub fn ready(&self) -> (bool, String) {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut ok = !tables.is_empty();
        let mut report = String::new();
        for (name, t) in tables.iter() {
            let ready = t.ready.load(Ordering::Relaxed) && !t.failed.load(Ordering::Relaxed);
            ok &= ready;
            report.push_str(&format!("{name}: {}\n", if ready { "ready" } else { "not ready" }));
        }
        (ok, report)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` resolves.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let live = health.clone();
    serve_endpoints(
        address,
        move || metrics.encode(),
        move || live.live(Duration::from_secs(600)),
        move || health.ready(),
        stop,
    )
    .await
}

/// The endpoints of any long-running command: `/metrics` (`encode`), `/healthz` (`live`) and
/// `/readyz` (`ready`), each probe answering (ok, report).
pub async fn serve_endpoints(
    address: SocketAddr,
    encode: impl Fn() -> String + Clone + Send + Sync + 'static,
    live: impl Fn() -> (bool, String) + Clone + Send + Sync + 'static,
    ready: impl Fn() -> (bool, String) + Clone + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let status =
        |(ok, report): (bool, String)| (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, report);
    let app =
        axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let body = encode();
                    async move {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                    }
                }),
            )
            .route("/healthz", get(move || std::future::ready(status(live()))))
            .route("/readyz", get(move || std::future::ready(status(ready()))));
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}
