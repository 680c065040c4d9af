//! Close of books: one day of a raw table, re-checked against the table's contract and
//! deduplicated by the table's key, published into the final table in one Delta commit that
//! replaces exactly that day's partition.
//!
//! The winner among rows sharing a key is the one with the latest event time; ties go to the
//! highest source position (Kafka topic, partition, offset; then file, record index), then to
//! the latest ingest time. Every part of that order is stored in the row, so a rerun over the
//! same raw rows picks the same winners.
//!
//! The day is read in two passes ([`close_rows`]): the key columns first, into a map from each
//! key to its winner's rank ([`winners`]), then the whole rows, keeping each key's winner. No
//! sort: the final table's files keep the raw table's row order (arrival order, so the event
//! time stays clustered), and a day whose keys do not fit in `close_books.memory_limit` is read
//! in more rounds, each for a share of the keys, instead of spilling.
//!
//! The day is read from one snapshot of the raw table (version V), so a daemon appending while
//! the day is closed never yields half a commit. The publish records V (a txn action
//! `protolake-close-books:<date>`); a rerun finds the raw day's files unchanged since V and
//! does nothing, or finds late rows and publishes the day again with them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use chrono::{NaiveDate, TimeZone, Utc};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::datafusion::functions::core::expr_fn::get_field;
use deltalake::datafusion::logical_expr::{cast, ident, lit, when, Expr};
use deltalake::datafusion::physical_plan::ExecutionPlanProperties;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableError, FilterOp, FilterValue};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::{TableConfig, TimeUnit};
use crate::contract::{diff, Contract, PinnedContracts};
use crate::pipeline::{
    is_metadata_column, EVENT_DATE, INGESTED_AT, SOURCE_FILE, SOURCE_INDEX, SOURCE_OFFSET, SOURCE_PARTITION,
    SOURCE_TOPIC,
};
use crate::sink::{open_table, FileWriter, Location, SinkError, TableWriter, WrittenFiles};

/// The txn app id under which the final table records the raw version a day was closed from.
pub fn app_id(date: NaiveDate) -> String {
    format!("protolake-close-books:{date}")
}

mod winners;

use winners::{rank_converter, KeyBytes, Winners};

/// Why the row is invalid (NULL when it is valid).
const PROBLEM: &str = "_protolake_problem";
/// The event time (the winner order's first part).
const ORDER_TIME: &str = "_protolake_time";
/// The winner order among a key's valid rows, each descending (NULLs last): the first is the
/// winner.
const RANK: [&str; 7] =
    [ORDER_TIME, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SOURCE_FILE, SOURCE_INDEX, INGESTED_AT];
/// The i-th key column, computed (a key may be a path into a struct).
fn key_column(i: usize) -> String {
    format!("_protolake_key{i}")
}
/// Invalid rows quoted in a report (all are counted).
const EXAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("table {table}: {message}")]
    Setup { table: String, message: String },
    #[error(
        "table {table}: {date} is still open: it can be closed from {closes_at} (its end, midnight UTC, \
         plus close_books.grace); pass --force to close it now"
    )]
    DayOpen { table: String, date: NaiveDate, closes_at: String },
    #[error(
        "table {table}: the raw table {location} does not match its contract {contract}:\n{differences}\n\
         Fix the table or pin its schema (`protolake schema init`) before closing days of it."
    )]
    Contract { table: String, location: String, contract: String, differences: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("table {table}: reading {date} of the raw table: {cause}")]
    Query { table: String, date: NaiveDate, cause: Box<DataFusionError> },
    #[error(
        "table {table}: {date} was published by another run while this one worked ({cause}); \
         rerun to check its result"
    )]
    Conflict { table: String, date: NaiveDate, cause: String },
}

impl CloseError {
    /// The process exit code a scheduler can act on: 3 = try later (the day is open),
    /// 4 = another run published the day concurrently, 1 = anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CloseError::DayOpen { .. } => 3,
            CloseError::Conflict { .. } => 4,
            _ => 1,
        }
    }
}

/// What a run of one day did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub table: String,
    pub date: NaiveDate,
    /// `published` (the day was written) or `unchanged` (nothing arrived since the last close).
    pub outcome: Outcome,
    /// The raw table version the day was read from.
    pub source_version: u64,
    /// The raw version of the previous close of this day, if it was closed before.
    pub previous_source_version: Option<u64>,
    /// Rows of the day that reached the raw table since the previous close (None on a first
    /// close, or when the raw table's files carry no row counts).
    pub late_rows: Option<u64>,
    pub rows_read: u64,
    pub rows_invalid: u64,
    pub duplicates_removed: u64,
    pub rows_published: u64,
    /// Up to ten invalid rows: where each came from and why it was left out.
    pub invalid_examples: Vec<String>,
    /// The final table's version that holds the day (None when unchanged).
    pub final_version: Option<u64>,
    pub files_written: usize,
    pub files_replaced: usize,
    /// The pinned contract the raw table matched (None: ad-hoc table).
    pub contract_version: Option<String>,
    /// Rounds the day was read in: 1 when its keys' winners fit in `close_books.memory_limit`,
    /// more when each round could hold only a share of them (each round reads the day twice).
    pub rounds: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Published,
    Unchanged,
}

/// How one day is closed.
#[derive(Debug, Clone)]
pub struct CloseOptions {
    pub date: NaiveDate,
    /// Close the day even if it is still within its grace period.
    pub force: bool,
    pub now: chrono::DateTime<Utc>,
    /// Parts the day is split into by the key's hash, each sorted and written on a core of its
    /// own within its share of `close_books.memory_limit` (at least 1).
    pub workers: usize,
}

/// "Yesterday" on the calendar of the table's configured time zone.
pub fn yesterday(table: &TableConfig, now: chrono::DateTime<Utc>) -> NaiveDate {
    let today = now.with_timezone(&table.close_books.time_zone).date_naive();
    today.pred_opt().unwrap_or(today)
}

/// When `date` may be closed without `--force`: its end (midnight UTC, the end of its
/// `event_date`) plus the grace period.
pub fn closes_at(table: &TableConfig, date: NaiveDate) -> chrono::DateTime<Utc> {
    let end = date.succ_opt().unwrap_or(date).and_hms_opt(0, 0, 0).expect("midnight exists");
    let grace = chrono::Duration::from_std(table.close_books.grace).unwrap_or(chrono::Duration::MAX);
    Utc.from_utc_datetime(&end).checked_add_signed(grace).unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
}

/// How far a close has come.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Rows of the day read by this round's key pass so far.
    pub scanned: u64,
    /// Rows of the day sorted out by this round's rows pass so far (as winners, duplicates or
    /// invalid rows).
    pub ranked: u64,
    /// The round (from 1) and how many the day takes.
    pub round: u64,
    pub rounds: u64,
}

/// Closes one day; `progress` hears how far it has come a few times a second.
pub async fn close_day(
    table: &TableConfig,
    options: &CloseOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, CloseError> {
    let started = Instant::now();
    let date = options.date;
    let setup = |message: String| CloseError::Setup { table: table.name.clone(), message };
    let Some(event_time) = &table.event_time else {
        return Err(setup(
            "has no event_time, so its rows have no day; set event_time = { field = \"...\" } to close days".into(),
        ));
    };
    if table.key.is_empty() {
        return Err(setup(
            "has no key to remove duplicates by; set key = [\"...\"] (the columns that identify an event)".into(),
        ));
    }
    let closes_at = closes_at(table, date);
    if options.now < closes_at && !options.force {
        return Err(CloseError::DayOpen {
            table: table.name.clone(),
            date,
            closes_at: closes_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }

    let raw = open_table(&table.location, None)
        .await?
        .ok_or_else(|| setup(format!("there is no raw table at {} yet; nothing to close", table.location)))?;
    let delta = |cause| SinkError::Delta { location: table.location.to_string(), cause };
    let source_version = raw.version().expect("a loaded table has a version");
    let raw_schema: SchemaRef = raw.snapshot().map_err(delta)?.snapshot().arrow_schema();
    let partitions = raw.snapshot().map_err(delta)?.metadata().partition_columns().to_vec();
    if partitions != [EVENT_DATE.to_string()] {
        return Err(setup(format!(
            "the raw table {} is partitioned by {partitions:?}, not by {EVENT_DATE}; it was not written with this \
             event_time",
            table.location
        )));
    }
    let contract_version = check_contract(table, &raw_schema)?;
    let day = date.to_string();
    let (raw_files, raw_rows) = day_files(&raw, &day).await.map_err(delta)?;

    let mut writer = TableWriter::open_or_create(
        &table.final_location,
        raw_schema.clone(),
        vec![EVENT_DATE.to_string()],
        HashMap::from([("delta.checkpointInterval".to_string(), table.checkpoint_interval.to_string())]),
        &table.parquet,
        table.flush.target_file_size,
    )
    .await?;
    let previous = writer.committed_position(&app_id(date)).await?.map(|v| v as u64);
    let mut late_rows = None;
    if let Some(previous) = previous {
        let before = if previous == source_version {
            Some((raw_files.clone(), raw_rows))
        } else {
            files_at(&table.location, previous, &day).await?
        };
        if let Some((files, rows)) = before {
            late_rows = match (raw_rows, rows) {
                (Some(now), Some(then)) => Some(now.saturating_sub(then)),
                _ => None,
            };
            if files == raw_files {
                return Ok(Report {
                    table: table.name.clone(),
                    date,
                    outcome: Outcome::Unchanged,
                    source_version,
                    previous_source_version: Some(previous),
                    late_rows: Some(0),
                    rows_read: raw_rows.unwrap_or(0),
                    rows_invalid: 0,
                    duplicates_removed: 0,
                    rows_published: 0,
                    invalid_examples: Vec::new(),
                    final_version: None,
                    files_written: 0,
                    files_replaced: 0,
                    contract_version,
                    rounds: 0,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    let query = |cause: DataFusionError| CloseError::Query { table: table.name.clone(), date, cause: Box::new(cause) };
    let workers = options.workers.max(1);
    let day_plan = day_plans(&raw, table, event_time, &raw_schema, date, workers).await.map_err(query)?;
    let (counts, files, rounds) =
        close_rows(&day_plan, &writer, table, raw_rows, progress).await.map_err(|e| match e {
            PassError::Query(e) => query(e),
            PassError::Sink(e) => CloseError::Sink(e),
            // close_rows answers this with more rounds; it does not return it.
            PassError::OverBudget => query(DataFusionError::ResourcesExhausted(PassError::OverBudget.to_string())),
            PassError::Changed => query(DataFusionError::Internal(
                "the day's rows differed between its two reads of one table version; nothing was published".into(),
            )),
        })?;

    let metadata = vec![
        ("protolake.operation".to_string(), serde_json::Value::from("close-books")),
        ("protolake.date".to_string(), serde_json::Value::from(day.clone())),
        ("protolake.sourceVersion".to_string(), serde_json::Value::from(source_version)),
        ("protolake.rowsRead".to_string(), serde_json::Value::from(counts.read)),
        ("protolake.rowsInvalid".to_string(), serde_json::Value::from(counts.invalid)),
        ("protolake.duplicatesRemoved".to_string(), serde_json::Value::from(counts.duplicates)),
        ("protolake.rowsPublished".to_string(), serde_json::Value::from(counts.published)),
        ("protolake.lateRows".to_string(), serde_json::to_value(late_rows).unwrap_or_default()),
        ("protolake.rounds".to_string(), serde_json::Value::from(rounds)),
        ("protolake.contractVersion".to_string(), serde_json::to_value(&contract_version).unwrap_or_default()),
    ];
    let committed = writer
        .commit_replacing_partition(EVENT_DATE, &day, files, vec![(app_id(date), source_version as i64)], metadata)
        .await
        .map_err(|e| match e {
            SinkError::Conflict { cause, .. } => {
                CloseError::Conflict { table: table.name.clone(), date, cause: cause.to_string() }
            }
            other => other.into(),
        })?;
    Ok(Report {
        table: table.name.clone(),
        date,
        outcome: Outcome::Published,
        source_version,
        previous_source_version: previous,
        late_rows,
        rows_read: counts.read,
        rows_invalid: counts.invalid,
        duplicates_removed: counts.duplicates,
        rows_published: counts.published,
        invalid_examples: counts.examples,
        final_version: Some(committed.version),
        files_written: committed.files_added,
        files_replaced: committed.files_removed,
        contract_version,
        rounds,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// The raw table's payload must be one of its pinned contract versions (the newest, or an
/// older one the table has not yet been evolved past). Returns that version's name.
fn check_contract(table: &TableConfig, raw_schema: &Schema) -> Result<Option<String>, CloseError> {
    let Some(dir) = &table.contract_dir else { return Ok(None) };
    let setup = |message: String| CloseError::Setup { table: table.name.clone(), message };
    let pinned = PinnedContracts::load(dir).map_err(|e| setup(e.to_string()))?;
    let Some((newest, newest_contract)) = pinned.newest() else {
        return Err(setup(format!(
            "no contract pinned in {}; run `protolake schema init --table {}` (or set contract_dir = \"\" for an \
             ad-hoc table)",
            dir.display(),
            table.name
        )));
    };
    let payload: Vec<_> = raw_schema.fields().iter().filter(|f| !is_metadata_column(f.name())).cloned().collect();
    let live = Contract::from_arrow(&Schema::new(payload)).map_err(|e| setup(e.to_string()))?;
    for (version, contract) in pinned.versions.iter().rev() {
        if diff(contract, &live).is_empty() {
            return Ok(Some(format!("v{version}")));
        }
    }
    Err(CloseError::Contract {
        table: table.name.clone(),
        location: table.location.to_string(),
        contract: pinned.path_of(*newest).display().to_string(),
        differences: diff(newest_contract, &live).iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"),
    })
}

/// The files of one `event_date` partition and their row count (None if a file has no stats).
async fn day_files(table: &DeltaTable, day: &str) -> Result<(BTreeSet<String>, Option<u64>), DeltaTableError> {
    let filter = [(EVENT_DATE, FilterOp::Eq, FilterValue::Scalar(day))];
    let mut files = BTreeSet::new();
    let mut rows = Some(0u64);
    let mut stream = table.get_active_add_actions_by_partitions(&filter);
    while let Some(file) = stream.next().await {
        let file = file?;
        rows = rows.zip(file.num_records()).map(|(a, b)| a + b as u64);
        files.insert(file.path().to_string());
    }
    Ok((files, rows))
}

/// [`day_files`] at an earlier version; None when that version can no longer be read (its log
/// was cleaned up), in which case the day is simply closed again.
async fn files_at(
    location: &Location,
    version: u64,
    day: &str,
) -> Result<Option<(BTreeSet<String>, Option<u64>)>, SinkError> {
    let Ok(Some(table)) = open_table(location, Some(version)).await else {
        tracing::warn!(%location, version, "the previous close's table version cannot be read; closing the day again");
        return Ok(None);
    };
    day_files(&table, day).await.map(Some).map_err(|cause| SinkError::Delta { location: location.to_string(), cause })
}

/// The `paths` in which no file of `day` has a NULL, by the null counts of the files' Delta
/// statistics (a file without them leaves every path in doubt).
async fn never_null(
    raw: &DeltaTable,
    day: &str,
    paths: &[(String, Vec<String>)],
) -> Result<std::collections::HashSet<String>, DataFusionError> {
    let mut free: std::collections::HashSet<String> = paths.iter().map(|(p, _)| p.clone()).collect();
    let filter = [(EVENT_DATE, FilterOp::Eq, FilterValue::Scalar(day))];
    let mut files = raw.get_active_add_actions_by_partitions(&filter);
    while let Some(file) = files.next().await {
        let file = file.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let stats: Option<serde_json::Value> = file.stats().and_then(|s| serde_json::from_str(&s).ok());
        free.retain(|path| {
            let mut count = stats.as_ref().and_then(|s| s.get("nullCount"));
            for part in path.split('.') {
                count = count.and_then(|c| c.get(part));
            }
            count.and_then(|c| c.as_u64()) == Some(0)
        });
        if free.is_empty() {
            break;
        }
    }
    Ok(free)
}

/// The plans of the raw rows of one day with more columns: why the row is invalid (NULL when
/// valid), the key's values and the event time of the winner order; one plan of those columns
/// and the rank's, one of the whole rows with them.
async fn day_plans(
    raw: &DeltaTable,
    table: &TableConfig,
    event_time: &crate::config::EventTime,
    raw_schema: &Schema,
    date: NaiveDate,
    workers: usize,
) -> Result<DayPlans, DataFusionError> {
    use deltalake::datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
    use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
    // The scans' pool (they hold a few batches each; the winners' map is accounted apart, in
    // the other three quarters of the budget). An exhausted pool names its top consumers.
    let limit = usize::try_from(table.close_books.memory_limit / 4).unwrap_or(usize::MAX);
    let pool = TrackConsumersPool::new(GreedyMemoryPool::new(limit), std::num::NonZeroUsize::new(5).expect("5 > 0"));
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool)).build_arc()?;
    let mut state = deltalake::delta_datafusion::DeltaSessionContext::with_runtime_env(runtime).state();
    // Plain string and binary arrays, as the final table's writer expects.
    state.config_mut().options_mut().execution.parquet.schema_force_view_types = false;
    // Each scan in as many partitions as workers, each partition read on a core of its own.
    state.config_mut().options_mut().execution.target_partitions = workers;
    let ctx = SessionContext::new_with_state(state);
    raw.update_datafusion_session(&ctx.state()).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let provider = raw.table_provider().await?;
    let days = (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32;

    let column = |path: &str| -> Expr {
        let mut parts = path.split('.');
        let mut expr = ident(parts.next().unwrap_or(path));
        for part in parts {
            expr = get_field(expr, part);
        }
        expr
    };
    let event_time_expr = column(&event_time.field);
    let event_day = match event_time.unit {
        None => cast(event_time_expr.clone(), DataType::Date32),
        Some(unit) => {
            use deltalake::datafusion::functions::datetime::expr_fn as dt;
            let ts = match unit {
                TimeUnit::Seconds => dt::to_timestamp_seconds(vec![event_time_expr.clone()]),
                TimeUnit::Milliseconds => dt::to_timestamp_millis(vec![event_time_expr.clone()]),
                TimeUnit::Microseconds => dt::to_timestamp_micros(vec![event_time_expr.clone()]),
                TimeUnit::Nanoseconds => dt::to_timestamp_nanos(vec![event_time_expr.clone()]),
            };
            cast(ts, DataType::Date32)
        }
    };

    // Checks in order; a row's problem is the first that fails.
    let mut checks: Vec<(Expr, String)> = Vec::new();
    for key in &table.key {
        checks.push((column(key).is_null(), format!("key column {key} is NULL")));
    }
    checks.push((event_time_expr.clone().is_null(), format!("event time {} is NULL", event_time.field)));
    checks.push((
        event_day.not_eq(ident(EVENT_DATE)),
        format!("{EVENT_DATE} is not the UTC date of {}", event_time.field),
    ));
    let required = required_paths(raw_schema);
    let never_null = never_null(raw, &date.to_string(), &required).await?;
    for (path, ancestors) in required {
        // A column no file of the day has a NULL in (by the files' statistics) needs no check,
        // and the key pass then need not read it.
        if never_null.contains(&path) {
            continue;
        }
        let mut condition = column(&path).is_null();
        for a in ancestors {
            condition = column(&a).is_not_null().and(condition);
        }
        checks.push((condition, format!("{path} is NOT NULL in the contract but has no value")));
    }
    let mut checks = checks.into_iter();
    let (first, first_reason) = checks.next().expect("at least the key check");
    let mut case = when(first, lit(first_reason));
    for (condition, reason) in checks {
        case = case.when(condition, lit(reason));
    }
    let problem = case.otherwise(lit(ScalarValue::Utf8(None)))?;

    let mut frame = ctx
        .read_table(provider)?
        .filter(ident(EVENT_DATE).eq(lit(ScalarValue::Date32(Some(days)))))?
        .with_column(PROBLEM, problem)?
        .with_column(ORDER_TIME, event_time_expr)?;
    for (i, key) in table.key.iter().enumerate() {
        frame = frame.with_column(&key_column(i), column(key))?;
    }
    let mut key_columns = vec![PROBLEM.to_string()];
    key_columns.extend((0..table.key.len()).map(key_column));
    key_columns.extend(RANK.iter().map(|c| c.to_string()));
    let names: Vec<&str> = key_columns.iter().map(String::as_str).collect();
    let keys = frame.clone().select_columns(&names)?;
    Ok(DayPlans { ctx, keys, rows: frame, key_count: table.key.len() })
}

/// The rows of one day, twice over one snapshot of the raw table: the key pass's columns (why a
/// row is invalid, its key, its rank) and the whole rows with the same columns added. Each round
/// plans them anew (a physical plan with repartitioning runs once).
struct DayPlans {
    ctx: SessionContext,
    keys: deltalake::datafusion::dataframe::DataFrame,
    rows: deltalake::datafusion::dataframe::DataFrame,
    /// Key columns.
    key_count: usize,
}

/// Where a plan's batches hold the columns a pass reads.
#[derive(Clone)]
struct Layout {
    problem: usize,
    keys: Vec<usize>,
    ranks: Vec<usize>,
}

impl Layout {
    fn of(schema: &Schema, key_count: usize) -> Result<Self, DataFusionError> {
        Ok(Layout {
            problem: schema.index_of(PROBLEM)?,
            keys: (0..key_count).map(|i| schema.index_of(&key_column(i))).collect::<Result<_, _>>()?,
            ranks: RANK.iter().map(|c| schema.index_of(c)).collect::<Result<_, _>>()?,
        })
    }
}

/// Why a pass over the day stopped.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Query(DataFusionError),
    #[error(transparent)]
    Sink(SinkError),
    #[error("the winners of the day's keys outgrew close_books.memory_limit")]
    OverBudget,
    #[error("the day's rows changed between its two reads")]
    Changed,
}

impl From<DataFusionError> for PassError {
    fn from(e: DataFusionError) -> Self {
        PassError::Query(e)
    }
}

impl From<arrow::error::ArrowError> for PassError {
    fn from(e: arrow::error::ArrowError) -> Self {
        PassError::Query(e.into())
    }
}

/// The least a key's entry in the winners' map takes (its entry, a short key and rank): the
/// first guess at how many rounds a day needs, before a round has measured it.
const MIN_KEY_BYTES: u64 = 64;

/// Sorts the day's rows out into winners, duplicates and invalid rows, and writes the winners.
///
/// A round reads the day's key columns once, to find each key's winner ([`Winners`]), and then
/// the whole rows once, keeping the winners. A day whose keys do not fit in three quarters of
/// `memory_limit` is closed in several rounds, each for a share of the keys by hash; a round
/// that finds its share too large starts the day over with more rounds (the files it wrote are
/// never committed).
async fn close_rows(
    day: &DayPlans,
    writer: &TableWriter,
    table: &TableConfig,
    raw_rows: Option<u64>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(Counts, WrittenFiles, u64), PassError> {
    let budget = table.close_books.memory_limit / 4 * 3;
    let mut rounds = raw_rows.map_or(1, |rows| (rows * MIN_KEY_BYTES).div_ceil(budget).max(1));
    let hasher = winners::Hasher::default();
    'day: loop {
        let mut counts = Counts::default();
        let mut files = WrittenFiles::default();
        for round in 0..rounds {
            let winners = Arc::new(Winners::new(round, rounds, budget, raw_rows, hasher.clone()));
            let scanned = Arc::new(AtomicU64::new(0));
            let ranked = Arc::new(AtomicU64::new(0));
            let report = |scanned: &AtomicU64, ranked: &AtomicU64| {
                progress(Progress {
                    scanned: scanned.load(Ordering::Relaxed),
                    ranked: ranked.load(Ordering::Relaxed),
                    round: round + 1,
                    rounds,
                })
            };
            // The key pass.
            let mut tasks = tokio::task::JoinSet::new();
            let plan = day.keys.clone().create_physical_plan().await?;
            let layout = Layout::of(&plan.schema(), day.key_count)?;
            for partition in 0..plan.output_partitioning().partition_count() {
                let stream = plan.execute(partition, day.ctx.task_ctx())?;
                let part = KeyPass { winners: winners.clone(), layout: layout.clone() };
                tasks.spawn(part.run(stream, round == 0, scanned.clone()));
            }
            let offered = match joined(tasks, || report(&scanned, &ranked)).await {
                Ok(parts) => parts,
                Err(PassError::OverBudget) => {
                    let bytes = winners.bytes();
                    let seen = scanned.load(Ordering::Relaxed).max(1);
                    let more = match raw_rows {
                        Some(rows) => (rows as f64 * bytes as f64 / seen as f64 * 1.25 / budget as f64).ceil() as u64,
                        None => rounds * 2,
                    };
                    let next = more.max(rounds + 1);
                    tracing::info!(
                        table = %table.name, rounds = next,
                        "the day's keys do not fit in three quarters of close_books.memory_limit in {rounds} round(s)"
                    );
                    rounds = next;
                    continue 'day;
                }
                Err(e) => return Err(e),
            };
            let mut valid = 0;
            for part in offered {
                counts.read += part.read;
                counts.invalid += part.invalid;
                let room = EXAMPLES.saturating_sub(counts.examples.len());
                counts.examples.extend(part.examples.into_iter().take(room));
                valid += part.valid;
            }
            // The rows pass needs only the contested keys; the whole map is let go here.
            let (contested, keys) = Arc::into_inner(winners)
                .ok_or_else(|| PassError::Query(DataFusionError::Internal("a key pass still runs".into())))?
                .into_contested();
            let winners = Arc::new(contested);
            counts.duplicates += valid - keys;
            // The rows pass.
            let mut tasks = tokio::task::JoinSet::new();
            let plan = day.rows.clone().create_physical_plan().await?;
            let layout = Layout::of(&plan.schema(), day.key_count)?;
            for partition in 0..plan.output_partitioning().partition_count() {
                let stream = plan.execute(partition, day.ctx.task_ctx())?;
                let part = RowPass {
                    winners: winners.clone(),
                    layout: layout.clone(),
                    files: writer.file_writer().map_err(PassError::Sink)?,
                    schema: writer.schema(),
                };
                tasks.spawn(part.run(stream, ranked.clone()));
            }
            let mut kept = 0;
            for (part_kept, part_files) in joined(tasks, || report(&scanned, &ranked)).await? {
                kept += part_kept;
                files.extend(part_files);
            }
            if kept != keys || winners.unsettled() != 0 {
                return Err(PassError::Changed);
            }
            counts.published += kept;
            report(&scanned, &ranked);
        }
        return Ok((counts, files, rounds));
    }
}

/// The results of `tasks`, calling `tick` a few times a second meanwhile. The first failure
/// stops the other tasks.
async fn joined<T: Send + 'static>(
    mut tasks: tokio::task::JoinSet<Result<T, PassError>>,
    tick: impl Fn(),
) -> Result<Vec<T>, PassError> {
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut done = Vec::with_capacity(tasks.len());
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => return Ok(done),
                Some(Ok(result)) => done.push(result?),
                Some(Err(e)) => return Err(PassError::Query(DataFusionError::External(Box::new(e)))),
            },
            _ = interval.tick() => tick(),
        }
    }
}

/// A pass's reading of each batch's keys: every row's key bytes and hash, and the rank
/// converter (made for the first batch's rank columns).
#[derive(Default)]
struct BatchKeys {
    keys: KeyBytes,
    hashes: Vec<u64>,
    /// Scratch for the map's grouping of rows by shard.
    grouped: Vec<u32>,
    converter: Option<arrow::row::RowConverter>,
}

impl BatchKeys {
    fn read(
        &mut self,
        batch: &RecordBatch,
        layout: &Layout,
        winners: &Winners,
    ) -> Result<(), arrow::error::ArrowError> {
        self.keys.encode(&layout.keys.iter().map(|&i| batch.column(i).clone()).collect::<Vec<_>>())?;
        winners.hash_keys(&self.keys, &mut self.hashes);
        Ok(())
    }

    /// The rank bytes of the rows of `columns` (the rank columns, or some of their rows).
    fn ranks(&mut self, columns: &[ArrayRef]) -> Result<arrow::row::Rows, arrow::error::ArrowError> {
        if self.converter.is_none() {
            self.converter = Some(rank_converter(&columns.iter().map(|c| c.data_type().clone()).collect::<Vec<_>>())?);
        }
        self.converter.as_ref().expect("set above").convert_columns(columns)
    }
}

/// What a key pass over one partition of the day saw.
struct Offered {
    read: u64,
    invalid: u64,
    /// Valid rows of the round's keys.
    valid: u64,
    examples: Vec<String>,
}

/// The key pass over one partition of the day: offers each valid row of the round's keys to
/// the winners, and (in the first round) counts and quotes the invalid rows.
struct KeyPass {
    winners: Arc<Winners>,
    layout: Layout,
}

impl KeyPass {
    async fn run(
        self,
        mut stream: SendableRecordBatchStream,
        first_round: bool,
        scanned: Arc<AtomicU64>,
    ) -> Result<Offered, PassError> {
        let mut offered = Offered { read: 0, invalid: 0, valid: 0, examples: Vec::new() };
        let mut read = BatchKeys::default();
        let mut rows = Vec::new();
        while let Some(batch) = stream.try_next().await? {
            let problem = arrow::compute::cast(batch.column(self.layout.problem), &DataType::Utf8)?;
            let problem = problem.as_string::<i32>();
            read.read(&batch, &self.layout, &self.winners)?;
            rows.clear();
            for row in 0..batch.num_rows() {
                if problem.is_null(row) {
                    if self.winners.in_round(read.hashes[row]) {
                        rows.push(row as u32);
                    }
                } else if first_round {
                    offered.invalid += 1;
                    if offered.examples.len() < EXAMPLES {
                        offered.examples.push(format!("{}: {}", describe_row(&batch, row), problem.value(row)));
                    }
                }
            }
            let ranks: Vec<ArrayRef> = self.layout.ranks.iter().map(|&i| batch.column(i).clone()).collect();
            let ranks = read.ranks(&ranks)?;
            self.winners
                .offer(&rows, &read.hashes, &read.keys, &ranks, &mut read.grouped)
                .map_err(|_| PassError::OverBudget)?;
            offered.valid += rows.len() as u64;
            if first_round {
                offered.read += batch.num_rows() as u64;
            }
            scanned.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        }
        Ok(offered)
    }
}

/// The rows pass over one partition of the day: keeps each key's winner, writing it to `files`.
struct RowPass {
    winners: Arc<Winners>,
    layout: Layout,
    files: FileWriter,
    /// The final table's columns.
    schema: SchemaRef,
}

impl RowPass {
    async fn run(
        mut self,
        mut stream: SendableRecordBatchStream,
        ranked: Arc<AtomicU64>,
    ) -> Result<(u64, WrittenFiles), PassError> {
        let mut kept_rows = 0;
        let mut read = BatchKeys::default();
        let (mut rows, mut contested) = (Vec::new(), Vec::new());
        while let Some(batch) = stream.try_next().await? {
            let problem = batch.column(self.layout.problem);
            read.read(&batch, &self.layout, &self.winners)?;
            rows.clear();
            rows.extend(
                (0..batch.num_rows() as u32)
                    .filter(|&row| problem.is_null(row as usize) && self.winners.in_round(read.hashes[row as usize])),
            );
            let mut keep = vec![false; batch.num_rows()];
            self.winners.settle(&rows, &read.hashes, &read.keys, &mut keep, &mut contested, &mut read.grouped);
            if !contested.is_empty() {
                let at = arrow::array::UInt32Array::from(contested.clone());
                let ranks = self
                    .layout
                    .ranks
                    .iter()
                    .map(|&i| arrow::compute::take(batch.column(i), &at, None))
                    .collect::<Result<Vec<_>, _>>()?;
                let ranks = read.ranks(&ranks)?;
                self.winners.settle_contested(&contested, &read.hashes, &read.keys, &ranks, &mut keep);
            }
            ranked.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let kept = filter_record_batch(&batch, &BooleanArray::from(keep))?;
            if kept.num_rows() == 0 {
                continue;
            }
            kept_rows += kept.num_rows() as u64;
            let columns = self
                .schema
                .fields()
                .iter()
                .map(|f| {
                    let c = kept.column_by_name(f.name()).ok_or_else(|| {
                        DataFusionError::Internal(format!("the day's rows have no {} column", f.name()))
                    })?;
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        Ok(arrow::compute::cast(c, f.data_type())?)
                    }
                })
                .collect::<Result<Vec<ArrayRef>, DataFusionError>>()?;
            let winners = RecordBatch::try_new(self.schema.clone(), columns)?;
            self.files.write(winners).await.map_err(PassError::Sink)?;
        }
        let written = self.files.finish().await.map_err(PassError::Sink)?;
        Ok((kept_rows, written))
    }
}

/// The counts of a closed day.
#[derive(Default)]
struct Counts {
    read: u64,
    invalid: u64,
    duplicates: u64,
    published: u64,
    examples: Vec<String>,
}

/// Non-nullable payload columns (dotted paths through structs) and the nullable structs above
/// each: a missing value is a violation only where its parent is present. Lists and maps are
/// not entered (their elements' nullability is checked by the Parquet reader itself).
fn required_paths(schema: &Schema) -> Vec<(String, Vec<String>)> {
    fn walk(
        fields: &arrow::datatypes::Fields,
        prefix: &str,
        ancestors: &[String],
        out: &mut Vec<(String, Vec<String>)>,
    ) {
        for f in fields {
            let path = if prefix.is_empty() { f.name().clone() } else { format!("{prefix}.{}", f.name()) };
            if !f.is_nullable() {
                out.push((path.clone(), ancestors.to_vec()));
            }
            if let DataType::Struct(children) = f.data_type() {
                let mut next = ancestors.to_vec();
                if f.is_nullable() {
                    next.push(path.clone());
                }
                walk(children, &path, &next, out);
            }
        }
    }
    let payload: arrow::datatypes::Fields =
        schema.fields().iter().filter(|f| !is_metadata_column(f.name())).cloned().collect();
    let mut out = Vec::new();
    walk(&payload, "", &[], &mut out);
    out
}

/// Where a raw row came from, for a person: `topic/partition@offset` or `file#index`.
fn describe_row(batch: &RecordBatch, row: usize) -> String {
    let text = |name: &str| -> Option<String> {
        let c = batch.column_by_name(name)?;
        if c.is_null(row) {
            return None;
        }
        let formatter = arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()).ok()?;
        Some(formatter.value(row).to_string())
    };
    match (text(SOURCE_TOPIC), text(SOURCE_PARTITION), text(SOURCE_OFFSET), text(SOURCE_FILE), text(SOURCE_INDEX)) {
        (Some(t), Some(p), Some(o), _, _) => format!("{t}/{p}@{o}"),
        (_, _, _, Some(f), Some(i)) => format!("{f}#{i}"),
        _ => format!("row {row} of a batch"),
    }
}
