//! The configuration file (`protolake.toml`): raw TOML → validated [`Config`].
//!
//! Every key is documented in `docs/config.md`; unknown keys are refused (a typo must not
//! silently fall back to a default). Environment variables override the file:
//! `PROTOLAKE__TABLES__EVENTS__LOCATION=s3://…` sets `tables.events.location` (path segments
//! separated by `__`, lower-cased; values parsed as TOML when they parse, else taken as strings).
//! Validation happens here, before any file or network is touched; each rejected combination
//! has a test with the message the user reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::location::Location;

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: table {table:?} is not defined; defined tables: {known}")]
    UnknownTable { path: String, table: String, known: String },
    #[error("table {table}: {message}")]
    Invalid { table: String, message: String },
}

/// Where a table's message descriptor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    /// An encoded `FileDescriptorSet` (`buf build -o`, `protoc --descriptor_set_out`).
    DescriptorSet(PathBuf),
    /// `.proto` files compiled at start-up, with import paths.
    Protos { files: Vec<PathBuf>, includes: Vec<PathBuf> },
}

/// Unit of an integer event-time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl TimeUnit {
    /// The unit as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "seconds",
            TimeUnit::Milliseconds => "milliseconds",
            TimeUnit::Microseconds => "microseconds",
            TimeUnit::Nanoseconds => "nanoseconds",
        }
    }

    /// Multiplier/divisor to microseconds.
    pub fn to_micros(self, value: i64) -> Option<i64> {
        match self {
            TimeUnit::Seconds => value.checked_mul(1_000_000),
            TimeUnit::Milliseconds => value.checked_mul(1_000),
            TimeUnit::Microseconds => Some(value),
            TimeUnit::Nanoseconds => Some(value.div_euclid(1_000)),
        }
    }
}

/// The event-time field that gives each row its `event_date` partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTime {
    /// Top-level field name or dotted path into structs (`header.sent_at`).
    pub field: String,
    /// Required for integer fields; must be absent for Timestamp fields.
    pub unit: Option<TimeUnit>,
}

/// When a batch of rows becomes files and a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: u64,
    pub max_latency: Duration,
    pub target_file_size: u64,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_rows: 2_000_000,
            max_bytes: 256 * 1024 * 1024,
            max_latency: Duration::from_secs(60),
            target_file_size: 128 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetOptions {
    /// zstd level (1..=22).
    pub zstd_level: i32,
    pub row_group_rows: usize,
    /// Columns written without dictionary encoding: high-cardinality strings (ids, URLs), where
    /// building a dictionary that is then abandoned costs time and saves nothing.
    pub plain_columns: Vec<String>,
    /// Integer columns whose values mostly ascend (the event time): written DELTA_BINARY_PACKED,
    /// a few bits a value, without a dictionary. Not a config key: a table's resolved options
    /// hold its event-time column ([`ParquetOptions::with_event_time`]).
    pub ascending_columns: Vec<String>,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            zstd_level: 1,
            row_group_rows: 1_048_576,
            plain_columns: Vec::new(),
            ascending_columns: Vec::new(),
        }
    }
}

impl ParquetOptions {
    /// These options with the event-time column (a Timestamp or an integer) written as an
    /// ascending column: events arrive roughly in time order, so its deltas are small.
    pub fn with_event_time(&self, event_time: Option<&EventTime>) -> ParquetOptions {
        let mut options = self.clone();
        if let Some(et) = event_time {
            if !options.ascending_columns.contains(&et.field) {
                options.ascending_columns.push(et.field.clone());
            }
        }
        options
    }
}

/// One validated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub name: String,
    pub descriptor: DescriptorSource,
    pub message: String,
    pub recursion_depth: Option<u32>,
    /// `schemas/<table>` by default; None when `contract_dir` is set to "" (ad-hoc mode).
    pub contract_dir: Option<PathBuf>,
    /// The data table; its store's options come from `[storage]` and `[tables.<name>.storage]`.
    pub location: Location,
    pub dlq_location: Location,
    pub event_time: Option<EventTime>,
    pub key: Vec<String>,
    pub flush: FlushPolicy,
    pub parquet: ParquetOptions,
    /// Records larger than this are dead letters, not allocations.
    pub max_record_bytes: usize,
    /// The Kafka topic `ingest` reads into this table (None: the table is only backfilled).
    pub topic: Option<String>,
    pub framing: Framing,
    /// A Kafka topic that also receives each dead letter (at least once; the DLQ table is exact).
    pub dlq_topic: Option<String>,
    /// Commits between two Delta checkpoints (the table property `delta.checkpointInterval`).
    pub checkpoint_interval: u32,
    /// Where `close-books` publishes the deduplicated days (`<location>_final` by default).
    pub final_location: Location,
    pub close_books: CloseBooksConfig,
    /// Columns `optimize` Z-orders the files by (empty: plain compaction).
    pub zorder_by: Vec<String>,
    /// Kafka headers kept as `_source_header_<name>` columns of the data table.
    pub header_columns: Vec<String>,
}

/// Settings of `close-books` for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseBooksConfig {
    /// How long after a day's end (UTC midnight, the end of its `event_date`) the day may be
    /// closed without `--force`: late records still arriving belong to it.
    pub grace: Duration,
    /// The zone whose calendar picks "yesterday" when no date is given.
    pub time_zone: chrono_tz::Tz,
    /// Memory the deduplication may hold: three quarters for the map of the day's keys to their
    /// winners, a quarter for the scans. A day whose keys do not fit is read in more rounds.
    pub memory_limit: u64,
}

impl Default for CloseBooksConfig {
    fn default() -> Self {
        CloseBooksConfig {
            grace: Duration::from_secs(3600),
            time_zone: chrono_tz::UTC,
            memory_limit: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// How a Kafka message's value carries the protobuf record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Framing {
    /// The value is the serialized message.
    #[default]
    Raw,
    /// Confluent Schema Registry wire format: magic byte 0, a 4-byte schema id, the message
    /// indexes, then the message. Only the listed schema ids are accepted.
    Confluent { schema_ids: Vec<u32> },
}

/// The Kafka client settings shared by every table of `ingest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// librdkafka properties, `${VAR}` already replaced from the environment.
    pub properties: BTreeMap<String, String>,
    /// Each table's consumer group is `<group_id>.<table>`.
    pub group_id: String,
}

impl KafkaConfig {
    /// Properties whose values must never be printed.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "jaas", "token", "key.pem", "private", "keystore", "truststore", "credentials"]
            .iter()
            .any(|s| k.contains(s))
    }

    /// The properties for a log line, secrets replaced by `***`.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| (k.clone(), if Self::is_secret(k) { "***".to_string() } else { v.clone() }))
            .collect()
    }
}

/// Settings of the `ingest` daemon itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (None: not served).
    pub metrics_address: Option<String>,
    /// How long a commit may keep failing (storage unreachable) before the daemon gives up.
    pub commit_retry_for: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { metrics_address: Some("127.0.0.1:9464".into()), commit_retry_for: Duration::from_secs(300) }
    }
}

/// Settings of `protolake gateway`, the gRPC front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// HOST:PORT the gRPC (and HTTP/JSON) service listens on.
    pub listen: String,
    /// Address of `/metrics`, `/healthz`, `/readyz` (None: not served).
    pub metrics_address: Option<String>,
    /// The largest request message accepted, after decompression (gRPC's max message size).
    pub max_message_bytes: usize,
    /// How long a record may wait for the broker's acknowledgement before the call fails
    /// `UNAVAILABLE` (librdkafka's `message.timeout.ms`).
    pub produce_timeout: Duration,
    /// How long, after SIGTERM, in-flight calls may take to finish before the gateway exits.
    pub drain_timeout: Duration,
    /// Records waiting for their acknowledgement at most (librdkafka's producer queue); a call
    /// that finds it full is refused `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// PEM certificate chain and private key: serve TLS (None: cleartext HTTP/2).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Method (`package.Service/Method`) → route.
    pub routes: BTreeMap<String, RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:50051".into(),
            metrics_address: Some("127.0.0.1:9465".into()),
            max_message_bytes: 4 * 1024 * 1024,
            produce_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_in_flight: 100_000,
            tls: None,
            routes: BTreeMap::new(),
        }
    }
}

/// One gRPC method the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `package.Service/Method`.
    pub method: String,
    /// The configured table whose topic, descriptor, contract and rules the method uses.
    pub table: String,
    /// The environment variable holding the bearer tokens this route accepts, separated by
    /// commas (None: no authentication). Read by the gateway when it starts, never printed.
    pub tokens_env: Option<String>,
}

/// Bearer tokens, read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The environment variable they came from.
    pub env: String,
    pub values: Vec<String>,
}

impl Tokens {
    /// The tokens in the environment variable `var` (separated by commas).
    pub fn from_env(var: &str) -> Result<Tokens, String> {
        let text = std::env::var(var).map_err(|_| format!("the environment variable {var} (tokens_env) is not set"))?;
        let values: Vec<String> =
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
        if values.is_empty() {
            return Err(format!("the environment variable {var} (tokens_env) holds no token"));
        }
        Ok(Tokens { env: var.to_string(), values })
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} from ${}, values hidden)", self.values.len(), self.env)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the config came from (paths in it are relative to its folder).
    pub source: String,
    pub tables: BTreeMap<String, TableConfig>,
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
    pub gateway: GatewayConfig,
    /// Threads that decode and encode (`workers`); None: one per available core.
    pub workers: Option<usize>,
}

/// The workers a command runs: `configured`, or one per core the process may use.
pub fn workers_or_cores(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

// --- raw form ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
    #[serde(default)]
    kafka: RawKafka,
    #[serde(default)]
    ingest: RawIngest,
    #[serde(default)]
    gateway: RawGateway,
    workers: Option<usize>,
    /// Object-store options for every table location (a table's own `storage` overrides keys).
    #[serde(default)]
    storage: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: Option<String>,
    group_id: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    metrics_address: Option<String>,
    commit_retry_for: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<String>,
    metrics_address: Option<String>,
    max_message_bytes: Option<ByteSize>,
    produce_timeout: Option<HumanDuration>,
    drain_timeout: Option<HumanDuration>,
    max_in_flight: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    routes: BTreeMap<String, RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    table: String,
    /// The environment variable holding the route's bearer tokens, separated by commas.
    tokens_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    descriptor_set: Option<PathBuf>,
    #[serde(default)]
    proto: Vec<PathBuf>,
    #[serde(default)]
    include: Vec<PathBuf>,
    message: String,
    recursion_depth: Option<u32>,
    contract_dir: Option<PathBuf>,
    location: String,
    dlq_location: Option<String>,
    event_time: Option<EventTime>,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    flush: RawFlush,
    #[serde(default)]
    parquet: RawParquet,
    max_record_bytes: Option<ByteSize>,
    topic: Option<String>,
    framing: Option<String>,
    #[serde(default)]
    schema_ids: Vec<u32>,
    dlq_topic: Option<String>,
    checkpoint_interval: Option<u32>,
    final_location: Option<String>,
    #[serde(default)]
    close_books: RawCloseBooks,
    #[serde(default)]
    storage: BTreeMap<String, toml::Value>,
    #[serde(default)]
    optimize: RawOptimize,
    #[serde(default)]
    header_columns: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptimize {
    #[serde(default)]
    zorder_by: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloseBooks {
    grace: Option<HumanDuration>,
    time_zone: Option<String>,
    memory_limit: Option<ByteSize>,
    spill_compression: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlush {
    max_rows: Option<usize>,
    max_bytes: Option<ByteSize>,
    max_latency: Option<HumanDuration>,
    target_file_size: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParquet {
    zstd_level: Option<i32>,
    row_group_rows: Option<usize>,
    #[serde(default)]
    plain_columns: Vec<String>,
}

/// A number written either as a plain integer or as text with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(u64),
    Text(String),
}

/// Splits "1.5 GiB" into (1.5, "GiB"), with `what` naming the kind of value for the error.
fn number_and_unit<'a>(text: &'a str, what: &str, example: &str) -> Result<(f64, &'a str), String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value = num.parse().map_err(|_| format!("{text:?} is not {what} (try {example})"))?;
    Ok((value, unit.trim()))
}

/// A size: an integer of bytes or a string like "128MiB", "1.5 GB", "512k".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => Ok(ByteSize(n)),
            IntOrText::Text(t) => parse_bytes(&t).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(text, "a size", "128MiB or 1000000")?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?} (use B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    Ok((value * mult as f64) as u64)
}

/// A duration: integer seconds or a string like "30s", "5m", "250ms", "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => Ok(HumanDuration(Duration::from_secs(n))),
            IntOrText::Text(t) => parse_duration(&t).map(HumanDuration).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text, "a duration", "30s, 5m, 250ms")?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?} (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

// --- loading ----------------------------------------------------------------------------------

impl Config {
    /// Reads, overrides from the environment, and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.into(), cause })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_str_with_env(&text, &path.display().to_string(), base, std::env::vars())
    }

    /// Parses config text; `base` resolves relative paths; `env` supplies `PROTOLAKE__*` overrides.
    pub fn from_str_with_env(
        text: &str,
        source: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let env_lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: source.into(), message: e.to_string() })?;
        for (key, raw) in &env {
            let Some(rest) = key.strip_prefix("PROTOLAKE__") else { continue };
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            apply_override(&mut value, &segments, raw)
                .map_err(|message| ConfigError::Parse { path: format!("environment variable {key}"), message })?;
        }
        let raw: RawConfig = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: source.into(), message: e.to_string() })?;
        let mut tables = BTreeMap::new();
        let storage = scalar_map("storage", raw.storage, &env_lookup)
            .map_err(|message| ConfigError::Parse { path: source.into(), message })?;
        for (name, t) in raw.tables {
            let table = validate_table(&name, t, base, &storage, &env_lookup)?;
            tables.insert(name, table);
        }
        let kafka = validate_kafka(raw.kafka, source, &env_lookup)?;
        let defaults = IngestConfig::default();
        let ingest = IngestConfig {
            metrics_address: match raw.ingest.metrics_address {
                Some(a) if a.trim().is_empty() => None,
                Some(a) => Some(a),
                None => defaults.metrics_address,
            },
            commit_retry_for: raw.ingest.commit_retry_for.map_or(defaults.commit_retry_for, |d| d.0),
        };
        let workers = match raw.workers {
            Some(0) => {
                return Err(ConfigError::Parse {
                    path: source.into(),
                    message: "workers = 0: at least one worker is needed (leave it out for one per core)".into(),
                })
            }
            w => w,
        };
        let gateway = validate_gateway(raw.gateway, source, base, &tables)?;
        Ok(Config { source: source.into(), tables, kafka, ingest, gateway, workers })
    }

    pub fn table(&self, name: &str) -> Result<&TableConfig, ConfigError> {
        self.tables.get(name).ok_or_else(|| ConfigError::UnknownTable {
            path: self.source.clone(),
            table: name.into(),
            known: if self.tables.is_empty() {
                "none".into()
            } else {
                self.tables.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }
}

fn apply_override(table: &mut toml::Table, segments: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = segments.split_last().ok_or("empty key")?;
    let mut current = table;
    for seg in parents {
        let entry = current.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{seg} is not a table, so it has no keys to set")),
        };
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    current.insert(last.clone(), parsed);
    Ok(())
}

/// Replaces each `${NAME}` in a property value with the environment variable NAME.
fn interpolate(section: &str, key: &str, value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("{section}.\"{key}\": unclosed ${{ in the value"))?;
        let name = &after[..end];
        let v = env(name).ok_or_else(|| {
            format!("{section}.\"{key}\" refers to the environment variable {name}, which is not set")
        })?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A table of string, number or boolean values as strings, `${NAME}` replaced from `env`.
fn scalar_map(
    section: &str,
    raw: BTreeMap<String, toml::Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(format!(
                    "{section}.\"{key}\" must be a string, number or boolean, not {}",
                    other.type_str()
                ))
            }
        };
        let value = interpolate(section, &key, &text, env)?;
        out.insert(key, value);
    }
    Ok(out)
}

fn validate_kafka(
    raw: RawKafka,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KafkaConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Parse { path: source.into(), message };
    let mut properties = scalar_map("kafka.properties", raw.properties, env).map_err(invalid)?;
    for (key, managed) in [
        ("group.id", "set kafka.group_id instead (each table's group is <group_id>.<table>)"),
        ("enable.auto.commit", "offsets are committed by protolake after each Delta commit"),
        ("enable.auto.offset.store", "offsets are committed by protolake after each Delta commit"),
    ] {
        if properties.contains_key(key) {
            return Err(invalid(format!("kafka.properties.\"{key}\" cannot be set: {managed}")));
        }
    }
    if let Some(servers) = raw.bootstrap_servers {
        if properties.contains_key("bootstrap.servers") {
            return Err(invalid(
                "set kafka.bootstrap_servers or kafka.properties.\"bootstrap.servers\", not both".into(),
            ));
        }
        properties.insert("bootstrap.servers".into(), servers);
    }
    if let Some(reset) = properties.get("auto.offset.reset") {
        if !["earliest", "smallest", "beginning", "latest", "largest", "end"].contains(&reset.as_str()) {
            return Err(invalid(format!(
                "kafka.properties.\"auto.offset.reset\" = {reset:?}: use \"earliest\" or \"latest\""
            )));
        }
    }
    let group_id = raw.group_id.unwrap_or_else(|| "protolake".into());
    if group_id.trim().is_empty() {
        return Err(invalid("kafka.group_id is empty".into()));
    }
    Ok(KafkaConfig { properties, group_id })
}

fn validate_gateway(
    raw: RawGateway,
    source: &str,
    base: &Path,
    tables: &BTreeMap<String, TableConfig>,
) -> Result<GatewayConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Parse { path: source.into(), message };
    let defaults = GatewayConfig::default();
    let max_message_bytes = match raw.max_message_bytes {
        None => defaults.max_message_bytes,
        Some(ByteSize(0)) => return Err(invalid("gateway.max_message_bytes must be positive".into())),
        Some(ByteSize(n)) => {
            usize::try_from(n).map_err(|_| invalid("gateway.max_message_bytes is too large".into()))?
        }
    };
    let produce_timeout = raw.produce_timeout.map_or(defaults.produce_timeout, |d| d.0);
    if produce_timeout < Duration::from_millis(1) {
        return Err(invalid("gateway.produce_timeout must be at least 1ms".into()));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(defaults.max_in_flight);
    if max_in_flight == 0 {
        return Err(invalid("gateway.max_in_flight must be positive".into()));
    }
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((resolve(&cert), resolve(&key))),
        _ => return Err(invalid("gateway.tls_cert and gateway.tls_key go together: set both, or neither".into())),
    };
    let mut routes = BTreeMap::new();
    for (method, route) in raw.routes {
        let what = format!("gateway.routes.\"{method}\"");
        let valid_method = method.split_once('/').is_some_and(|(service, name)| {
            service.contains('.')
                && !name.is_empty()
                && !name.contains('/')
                && service.split('.').all(|seg| !seg.is_empty())
        });
        if !valid_method {
            return Err(invalid(format!(
                "{what}: a route is named by its method, \"package.Service/Method\" (e.g. \"shop.v1.ClickTrackService/AdTrack\")"
            )));
        }
        let Some(table) = tables.get(&route.table) else {
            let known =
                if tables.is_empty() { "none".into() } else { tables.keys().cloned().collect::<Vec<_>>().join(", ") };
            return Err(invalid(format!("{what}: table {:?} is not defined; defined tables: {known}", route.table)));
        };
        // A table without a topic is written directly (direct mode).
        if table.topic.is_some() && table.framing != Framing::Raw {
            return Err(invalid(format!(
                "{what}: table {} reads framing = \"confluent\"; the gateway publishes the bare message (framing = \"raw\")",
                table.name
            )));
        }
        if route.tokens_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(invalid(format!(
                "{what}: tokens_env is empty; name the environment variable holding the tokens"
            )));
        }
        routes.insert(method.clone(), RouteConfig { method, table: route.table, tokens_env: route.tokens_env });
    }
    Ok(GatewayConfig {
        listen: raw.listen.unwrap_or(defaults.listen),
        metrics_address: match raw.metrics_address {
            Some(a) if a.trim().is_empty() => None,
            Some(a) => Some(a),
            None => defaults.metrics_address,
        },
        max_message_bytes,
        produce_timeout,
        drain_timeout: raw.drain_timeout.map_or(defaults.drain_timeout, |d| d.0),
        max_in_flight,
        tls,
        routes,
    })
}

fn validate_table(
    name: &str,
    t: RawTable,
    base: &Path,
    storage: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TableConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { table: name.into(), message };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(invalid("table names may use letters, digits, '_' and '-' only".into()));
    }
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let descriptor =
        match (t.descriptor_set, t.proto.is_empty()) {
            (Some(_), false) => return Err(invalid("set descriptor_set or proto, not both".into())),
            (None, true) => return Err(invalid(
                "no schema: set descriptor_set = \"x.binpb\" (from `buf build -o x.binpb`) or proto = [\"x.proto\"]"
                    .into(),
            )),
            (Some(ds), true) => DescriptorSource::DescriptorSet(resolve(&ds)),
            (None, false) => DescriptorSource::Protos {
                files: t.proto.iter().map(|p| resolve(p)).collect(),
                includes: t.include.iter().map(|p| resolve(p)).collect(),
            },
        };
    if !t.include.is_empty() && matches!(descriptor, DescriptorSource::DescriptorSet(_)) {
        return Err(invalid("include only applies to proto files".into()));
    }
    if let Some(d) = t.recursion_depth {
        if !(1..=10).contains(&d) {
            return Err(invalid(format!("recursion_depth must be between 1 and 10, got {d}")));
        }
    }
    if t.location.trim().is_empty() {
        return Err(invalid("location is empty".into()));
    }
    let mut options = storage.clone();
    options.extend(scalar_map(&format!("tables.{name}.storage"), t.storage, env).map_err(invalid)?);
    let place = |uri: String| Location::placed(uri, &options).map_err(invalid);
    let location = place(resolve_location(&t.location, base))?;
    let dlq_location = match t.dlq_location {
        Some(l) if l.trim().is_empty() => return Err(invalid("dlq_location is empty".into())),
        Some(l) => place(resolve_location(&l, base))?,
        None => location.sibling("_dlq"),
    };
    if dlq_location.uri() == location.uri() {
        return Err(invalid("dlq_location must differ from location".into()));
    }
    let contract_dir = match t.contract_dir {
        Some(d) if d.as_os_str().is_empty() => None,
        Some(d) => Some(resolve(&d)),
        None => Some(base.join("schemas").join(name)),
    };
    let defaults = FlushPolicy::default();
    let flush = FlushPolicy {
        max_rows: t.flush.max_rows.unwrap_or(defaults.max_rows),
        max_bytes: t.flush.max_bytes.map_or(defaults.max_bytes, |b| b.0),
        max_latency: t.flush.max_latency.map_or(defaults.max_latency, |d| d.0),
        target_file_size: t.flush.target_file_size.map_or(defaults.target_file_size, |b| b.0),
    };
    if flush.max_rows == 0 || flush.max_bytes == 0 {
        return Err(invalid("flush.max_rows and flush.max_bytes must be positive".into()));
    }
    if flush.target_file_size < 1024 * 1024 {
        return Err(invalid(format!(
            "flush.target_file_size of {} bytes would write tiny files; use at least 1MiB",
            flush.target_file_size
        )));
    }
    let parquet_defaults = ParquetOptions::default();
    let parquet = ParquetOptions {
        zstd_level: t.parquet.zstd_level.unwrap_or(parquet_defaults.zstd_level),
        row_group_rows: t.parquet.row_group_rows.unwrap_or(parquet_defaults.row_group_rows),
        plain_columns: t.parquet.plain_columns,
        ascending_columns: Vec::new(),
    };
    if !(1..=22).contains(&parquet.zstd_level) {
        return Err(invalid(format!("parquet.zstd_level must be between 1 and 22, got {}", parquet.zstd_level)));
    }
    if parquet.row_group_rows == 0 {
        return Err(invalid("parquet.row_group_rows must be positive".into()));
    }
    if let Some(et) = &t.event_time {
        if et.field.trim().is_empty() {
            return Err(invalid("event_time.field is empty".into()));
        }
    }
    let parquet = parquet.with_event_time(t.event_time.as_ref());
    let max_record_bytes = t.max_record_bytes.map_or(16 * 1024 * 1024, |b| b.0);
    let max_record_bytes =
        usize::try_from(max_record_bytes).map_err(|_| invalid("max_record_bytes is too large".into()))?;
    let framing = match (t.framing.as_deref(), t.schema_ids.is_empty()) {
        (None | Some("raw"), true) => Framing::Raw,
        (None | Some("raw"), false) => {
            return Err(invalid("schema_ids apply to framing = \"confluent\" only".into()));
        }
        (Some("confluent"), true) => {
            return Err(invalid(
                "framing = \"confluent\" needs schema_ids = [..]: the Schema Registry ids whose messages this table accepts"
                    .into(),
            ))
        }
        (Some("confluent"), false) => Framing::Confluent { schema_ids: t.schema_ids },
        (Some(other), _) => {
            return Err(invalid(format!("framing = {other:?} is not known; use \"raw\" or \"confluent\"")));
        }
    };
    for (key, value) in [("topic", &t.topic), ("dlq_topic", &t.dlq_topic)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(invalid(format!("{key} is empty")));
        }
    }
    if t.dlq_topic.is_some() && t.dlq_topic == t.topic {
        return Err(invalid("dlq_topic must differ from topic".into()));
    }
    let checkpoint_interval = t.checkpoint_interval.unwrap_or(100);
    if checkpoint_interval == 0 {
        return Err(invalid("checkpoint_interval must be at least 1".into()));
    }
    let final_location = match t.final_location {
        Some(l) if l.trim().is_empty() => return Err(invalid("final_location is empty".into())),
        Some(l) => place(resolve_location(&l, base))?,
        None => location.sibling("_final"),
    };
    if final_location.uri() == location.uri() || final_location.uri() == dlq_location.uri() {
        return Err(invalid("final_location must differ from location and dlq_location".into()));
    }
    let books_defaults = CloseBooksConfig::default();
    let time_zone = match t.close_books.time_zone {
        None => books_defaults.time_zone,
        Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
            invalid(format!(
                "close_books.time_zone = {name:?} is not an IANA time zone (e.g. \"UTC\", \"Europe/Berlin\", \"America/New_York\")"
            ))
        })?,
    };
    let close_books = CloseBooksConfig {
        grace: t.close_books.grace.map_or(books_defaults.grace, |d| d.0),
        time_zone,
        memory_limit: t.close_books.memory_limit.map_or(books_defaults.memory_limit, |b| b.0),
    };
    match t.close_books.spill_compression.as_deref() {
        None => {}
        Some("none" | "lz4") => tracing::warn!(
            table = %name,
            "close_books.spill_compression has no effect: close-books no longer spills (a day whose keys do not \
             fit in memory_limit is read in more rounds); remove the key"
        ),
        Some(other) => {
            return Err(invalid(format!("close_books.spill_compression = {other:?}: use \"none\" or \"lz4\"")))
        }
    }
    if close_books.memory_limit < 16 * 1024 * 1024 {
        return Err(invalid(format!(
            "close_books.memory_limit of {} bytes is too small to close a day; use at least 16MiB",
            close_books.memory_limit
        )));
    }
    let mut header_names = std::collections::BTreeSet::new();
    for header in &t.header_columns {
        if header.trim().is_empty() {
            return Err(invalid("header_columns holds an empty header name".into()));
        }
        if !header_names.insert(crate::pipeline::header_column_name(header)) {
            return Err(invalid(format!(
                "header_columns: {header:?} gives the column {} a second time",
                crate::pipeline::header_column_name(header)
            )));
        }
    }
    Ok(TableConfig {
        name: name.into(),
        descriptor,
        message: t.message,
        recursion_depth: t.recursion_depth,
        contract_dir,
        location,
        dlq_location,
        event_time: t.event_time,
        key: t.key,
        flush,
        parquet,
        max_record_bytes,
        topic: t.topic,
        framing,
        dlq_topic: t.dlq_topic,
        checkpoint_interval,
        final_location,
        close_books,
        zorder_by: t.optimize.zorder_by,
        header_columns: t.header_columns,
    })
}

/// A URL (`s3://…`, `file:///…`) is kept; a plain path becomes absolute.
fn resolve_location(location: &str, base: &Path) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let p = Path::new(location);
    let p = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [tables.events]
        proto = ["proto/events.proto"]
        include = ["proto"]
        message = "acme.Event"
        location = "lake/events"
        event_time = { field = "ts_ms", unit = "milliseconds" }
        key = ["id"]
        flush = { max_rows = 1000, max_bytes = "64MiB", max_latency = "5s", target_file_size = "32MiB" }
        parquet = { zstd_level = 3, plain_columns = ["id"] }
    "#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with_env(text, "protolake.toml", Path::new("/etc/pl"), Vec::new())
    }

    fn load_err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_table() {
        let c = load(GOOD).unwrap();
        let t = c.table("events").unwrap();
        assert_eq!(t.location.uri(), "/etc/pl/lake/events");
        assert_eq!(t.dlq_location.uri(), "/etc/pl/lake/events_dlq");
        assert_eq!(t.contract_dir.as_deref(), Some(Path::new("/etc/pl/schemas/events")));
        assert_eq!(t.flush.max_bytes, 64 << 20);
        assert_eq!(t.flush.max_latency, Duration::from_secs(5));
        assert_eq!(t.parquet.zstd_level, 3);
        assert_eq!(t.parquet.plain_columns, ["id"]);
        assert_eq!(c.workers, None, "one worker per core unless set");
        let c =
            load(&format!("workers = 3\n{GOOD}\n[tables.events.close_books]\nspill_compression = \"lz4\"")).unwrap();
        assert_eq!(c.workers, Some(3));
        // Still accepted (it no longer does anything).
        assert_eq!(c.table("events").unwrap().close_books.memory_limit, 2 << 30);
        // The event-time column is written delta-packed; no key is needed for it.
        assert_eq!(t.parquet.ascending_columns, ["ts_ms"]);
        assert_eq!(
            t.descriptor,
            DescriptorSource::Protos {
                files: vec!["/etc/pl/proto/events.proto".into()],
                includes: vec!["/etc/pl/proto".into()]
            }
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = load_err(&GOOD.replace("key = [\"id\"]", "keys = [\"id\"]"));
        assert!(e.contains("unknown field `keys`"), "{e}");
        let e = load_err(&GOOD.replace("zstd_level = 3", "zstd = 3"));
        assert!(e.contains("unknown field `zstd`"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("PROTOLAKE__TABLES__EVENTS__LOCATION".to_string(), "s3://bucket/events".to_string()),
            ("PROTOLAKE__TABLES__EVENTS__FLUSH__MAX_ROWS".to_string(), "5".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::from_str_with_env(GOOD, "protolake.toml", Path::new("/etc/pl"), env).unwrap();
        let t = c.table("events").unwrap();
        assert_eq!(t.location.uri(), "s3://bucket/events");
        assert_eq!(t.flush.max_rows, 5);
        let env = vec![("PROTOLAKE__TABLES__EVENTS__LOCATON".to_string(), "x".to_string())];
        let e = Config::from_str_with_env(GOOD, "protolake.toml", Path::new("/"), env).unwrap_err().to_string();
        assert!(e.contains("unknown field `locaton`"), "{e}");
    }

    #[test]
    fn storage_options_merge_per_table_and_are_checked() {
        let text = GOOD.replace(
            "location = \"lake/events\"",
            "location = \"s3://bucket/events\"\ndlq_location = \"lake/events_dlq\"",
        ) + "\n[storage]\naws_region = \"eu-west-1\"\naws_secret_access_key = \"${S3_SECRET}\"\n\
               [tables.events.storage]\naws_region = \"us-east-1\"\nmax_retries = 3\n";
        let env = vec![("S3_SECRET".to_string(), "hunter2".to_string())];
        let c = Config::from_str_with_env(&text, "protolake.toml", Path::new("/etc/pl"), env).unwrap();
        let t = c.table("events").unwrap();
        let options = t.location.storage_options();
        assert_eq!(options["aws_region"], "us-east-1", "the table's key wins");
        assert_eq!(options["aws_secret_access_key"], "hunter2");
        assert_eq!(options["max_retries"], "3");
        assert_eq!(t.final_location.storage_options()["aws_region"], "us-east-1", "siblings keep the options");
        assert_eq!(t.dlq_location.option_keys().count(), 0, "a local DLQ takes none");
        assert!(!format!("{t:?}").contains("hunter2"), "secrets are not in debug output");

        let e = Config::from_str_with_env(
            &text.replace("max_retries", "max_retry"),
            "p.toml",
            Path::new("/"),
            vec![("S3_SECRET".to_string(), "x".to_string())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("storage option \"max_retry\": not an option of this store"), "{e}");
        let e = Config::from_str_with_env(&text, "p.toml", Path::new("/"), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("storage.\"aws_secret_access_key\" refers to the environment variable S3_SECRET"), "{e}");
    }

    #[test]
    fn rejected_combinations_say_why() {
        let cases = [
            (
                GOOD.replace("proto = [\"proto/events.proto\"]", "proto = [\"a.proto\"]\ndescriptor_set = \"x.binpb\""),
                "set descriptor_set or proto, not both",
            ),
            (
                GOOD.replace("proto = [\"proto/events.proto\"]\n        include = [\"proto\"]", ""),
                "no schema: set descriptor_set",
            ),
            (GOOD.replace("zstd_level = 3", "zstd_level = 30"), "parquet.zstd_level must be between 1 and 22, got 30"),
            (GOOD.replace("target_file_size = \"32MiB\"", "target_file_size = 100"), "would write tiny files"),
            (GOOD.replace("max_rows = 1000", "max_rows = 0"), "flush.max_rows and flush.max_bytes must be positive"),
            (GOOD.replace("max_bytes = \"64MiB\"", "max_bytes = \"64 parsecs\""), "unknown size unit"),
            (GOOD.replace("max_latency = \"5s\"", "max_latency = \"5 fortnights\""), "unknown duration unit"),
            (format!("{GOOD}\nrecursion_depth = 11"), "recursion_depth must be between 1 and 10, got 11"),
            (format!("{GOOD}\ndlq_location = \"lake/events\""), "dlq_location must differ from location"),
            (GOOD.replace("[tables.events]", "[tables.\"my events\"]"), "table names may use"),
            (GOOD.replace("unit = \"milliseconds\"", "unit = \"fortnights\""), "unknown variant `fortnights`"),
            (
                format!("{GOOD}\n[tables.events.close_books]\nspill_compression = \"zip\""),
                "close_books.spill_compression = \"zip\": use \"none\" or \"lz4\"",
            ),
            (format!("workers = 0\n{GOOD}"), "workers = 0: at least one worker is needed"),
        ];
        for (text, expected) in cases {
            let e = load_err(&text);
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    #[test]
    fn kafka_settings_and_secrets() {
        let text = format!(
            "{GOOD}\ntopic = \"events\"\nframing = \"confluent\"\nschema_ids = [4, 5]\ndlq_topic = \"events.dlq\"\n\n\
             [kafka]\nbootstrap_servers = \"b:9092\"\n\
             properties = {{ \"sasl.password\" = \"${{PW}}\", \"session.timeout.ms\" = 6000, \"ssl.ca.location\" = \"/ca-${{ENVNAME}}.pem\" }}\n"
        );
        let env = vec![("PW".to_string(), "hunter2".to_string()), ("ENVNAME".to_string(), "prod".to_string())];
        let c = Config::from_str_with_env(&text, "protolake.toml", Path::new("/etc/pl"), env).unwrap();
        let t = c.table("events").unwrap();
        assert_eq!(t.topic.as_deref(), Some("events"));
        assert_eq!(t.framing, Framing::Confluent { schema_ids: vec![4, 5] });
        assert_eq!(t.checkpoint_interval, 100);
        assert_eq!(c.kafka.group_id, "protolake");
        assert_eq!(c.kafka.properties["bootstrap.servers"], "b:9092");
        assert_eq!(c.kafka.properties["sasl.password"], "hunter2");
        assert_eq!(c.kafka.properties["session.timeout.ms"], "6000");
        assert_eq!(c.kafka.properties["ssl.ca.location"], "/ca-prod.pem");
        let shown = format!("{:?}", c.kafka.redacted());
        assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        assert_eq!(c.ingest.metrics_address.as_deref(), Some("127.0.0.1:9464"));

        let e = Config::from_str_with_env(&text, "protolake.toml", Path::new("/"), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("refers to the environment variable PW, which is not set"), "{e}");
    }

    #[test]
    fn the_gateway_section_and_its_routes() {
        let text = format!(
            "{GOOD}\ntopic = \"events\"\n[gateway]\nlisten = \"0.0.0.0:9000\"\nmax_message_bytes = \"1MiB\"\n\
             produce_timeout = \"2s\"\nmetrics_address = \"\"\n\
             [gateway.routes.\"acme.v1.Track/Send\"]\ntable = \"events\"\ntokens_env = \"TRACK_TOKENS\"\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(c.gateway.listen, "0.0.0.0:9000");
        assert_eq!(c.gateway.max_message_bytes, 1 << 20);
        assert_eq!(c.gateway.produce_timeout, Duration::from_secs(2));
        assert_eq!(c.gateway.metrics_address, None);
        let route = &c.gateway.routes["acme.v1.Track/Send"];
        assert_eq!((route.table.as_str(), route.tokens_env.as_deref()), ("events", Some("TRACK_TOKENS")));
        // Defaults; a config without [gateway] still loads.
        let d = load(GOOD).unwrap().gateway;
        assert_eq!(d, GatewayConfig::default());
        let tokens = Tokens { env: "T".into(), values: vec!["s3cret".into()] };
        assert!(!format!("{tokens:?}").contains("s3cret"));
    }

    #[test]
    fn rejected_gateway_combinations_say_why() {
        let route =
            |method: &str, body: &str| format!("{GOOD}\ntopic = \"events\"\n[gateway.routes.\"{method}\"]\n{body}\n");
        let cases = [
            (route("Track/Send", "table = \"events\""), "\"package.Service/Method\""),
            (route("acme.Track", "table = \"events\""), "\"package.Service/Method\""),
            (route("acme.Track/Send", "table = \"nope\""), "table \"nope\" is not defined; defined tables: events"),
            (route("acme.Track/Send", "table = \"events\"\ntokens_env = \"\""), "tokens_env is empty"),
            (route("acme.Track/Send", "table = \"events\"\ntoken = \"x\""), "unknown field `token`"),
            (
                format!("{GOOD}\ntopic = \"t\"\nframing = \"confluent\"\nschema_ids = [1]\n[gateway.routes.\"acme.Track/Send\"]\ntable = \"events\""),
                "the gateway publishes the bare message",
            ),
            (format!("{GOOD}\ntopic = \"events\"\n[gateway]\ntls_cert = \"c.pem\""), "go together"),
            (format!("{GOOD}\n[gateway]\nmax_in_flight = 0"), "max_in_flight must be positive"),
            (format!("{GOOD}\n[gateway]\nmax_message_bytes = 0"), "max_message_bytes must be positive"),
        ];
        for (text, expected) in cases {
            let e = load_err(&text);
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
        assert!(Tokens::from_env("PROTOLAKE_TEST_UNSET_TOKENS").unwrap_err().contains("is not set"));
    }

    #[test]
    fn rejected_kafka_combinations_say_why() {
        let cases = [
            (format!("{GOOD}\ntopic = \"t\"\nframing = \"confluent\""), "needs schema_ids"),
            (format!("{GOOD}\ntopic = \"t\"\nschema_ids = [1]"), "schema_ids apply to framing = \"confluent\" only"),
            (format!("{GOOD}\ntopic = \"t\"\nframing = \"avro\""), "framing = \"avro\" is not known"),
            (format!("{GOOD}\ntopic = \"t\"\ndlq_topic = \"t\""), "dlq_topic must differ from topic"),
            (format!("{GOOD}\ncheckpoint_interval = 0"), "checkpoint_interval must be at least 1"),
            (format!("{GOOD}\n[kafka]\nproperties = {{ \"group.id\" = \"x\" }}"), "set kafka.group_id instead"),
            (format!("{GOOD}\n[kafka]\nproperties = {{ \"enable.auto.commit\" = true }}"), "cannot be set"),
            (
                format!("{GOOD}\n[kafka]\nbootstrap_servers = \"a\"\nproperties = {{ \"bootstrap.servers\" = \"b\" }}"),
                "not both",
            ),
            (
                format!("{GOOD}\n[kafka]\nproperties = {{ \"auto.offset.reset\" = \"oldest\" }}"),
                "use \"earliest\" or \"latest\"",
            ),
            (format!("{GOOD}\n[kafka]\nproperties = {{ \"a\" = [1] }}"), "must be a string, number or boolean"),
            (format!("{GOOD}\n[kafka]\nbrokers = \"a\""), "unknown field `brokers`"),
            (format!("{GOOD}\n[ingest]\nmetrics_port = 1"), "unknown field `metrics_port`"),
        ];
        for (text, expected) in cases {
            let e = load_err(&text);
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    #[test]
    fn unknown_table_lists_the_known_ones() {
        let e = load(GOOD).unwrap().table("evnts").unwrap_err().to_string();
        assert!(e.contains("table \"evnts\" is not defined; defined tables: events"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("512k").unwrap(), 512_000);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }
}
