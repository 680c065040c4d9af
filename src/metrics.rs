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
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let status =
        |(ok, report): (bool, String)| (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, report);
    let live = health.clone();
    let app =
        axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let body = metrics.encode();
                    async move {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                    }
                }),
            )
            .route("/healthz", get(move || std::future::ready(status(live.live(Duration::from_secs(600))))))
            .route("/readyz", get(move || std::future::ready(status(health.ready()))));
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}
