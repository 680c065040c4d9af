//! Close of books: one day of a raw table, re-checked against the table's contract and
//! deduplicated by the table's key, published into the final table in one Delta commit that
//! replaces exactly that day's partition.
//!
//! The winner among rows sharing a key is the one with the latest event time; ties go to the
//! highest source position (Kafka topic, partition, offset; then file, record index), then to
//! the latest ingest time. Every part of that order is stored in the row, so a rerun over the
//! same raw rows picks the same winners.
//!
//! The day is read from one snapshot of the raw table (version V), so a daemon appending while
//! the day is closed never yields half a commit. The publish records V (a txn action
//! `protolake-close-books:<date>`); a rerun finds the raw day's files unchanged since V and
//! does nothing, or finds late rows and publishes the day again with them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use chrono::{NaiveDate, TimeZone, Utc};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::functions::core::expr_fn::get_field;
use deltalake::datafusion::logical_expr::{cast, ident, lit, when, Expr, SortExpr};
use deltalake::datafusion::physical_plan::ExecutionPlan;
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

const PROBLEM: &str = "_protolake_problem";
/// Whether the row is valid (sorts valid rows of a key first).
const VALID: &str = "_protolake_valid";
/// The event time (the winner order's first part).
const ORDER_TIME: &str = "_protolake_time";
/// The i-th key column, computed (a key may be a path into a struct).
fn key_column(i: usize) -> String {
    format!("_protolake_key{i}")
}
/// The least share of `close_books.memory_limit` a part of the day is sorted in (fewer parts
/// than workers when the budget is small): room for the sort's merge reservation and a few
/// batches besides.
const MIN_PART_MEMORY: u64 = 32 << 20;
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
    /// Bytes the deduplication spilled to disk because the day did not fit in
    /// `close_books.memory_limit`.
    pub spilled_bytes: u64,
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
    /// Raw rows of the day read so far.
    pub scanned: u64,
    /// Rows through the sort so far (sorted out as winners, duplicates or invalid rows).
    pub ranked: u64,
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
                    spilled_bytes: 0,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    let query = |cause: DataFusionError| CloseError::Query { table: table.name.clone(), date, cause: Box::new(cause) };
    // Each part sorts within its share of the budget: no share under MIN_PART_MEMORY.
    let workers = options.workers.clamp(1, (table.close_books.memory_limit / MIN_PART_MEMORY).max(1) as usize);
    let day_plan = sorted_day(&raw, table, event_time, &raw_schema, date, workers).await.map_err(query)?;
    let (plan, sorts, streams) = day_plan.parts(table.close_books.memory_limit, workers).map_err(query)?;
    // Each part of the day (a share of the keys) is sorted out and written by a task of its
    // own, into Parquet files of its own; all of them are published in the one commit below.
    let ranked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut parts = Vec::new();
    for stream in streams {
        let files = writer.file_writer()?;
        parts.push(tokio::spawn(sort_out_part(stream, files, table.key.len(), raw_schema.clone(), ranked.clone())));
    }
    // The sorts take in the whole day before the first winner comes out; meanwhile the scan's
    // live row count is the progress.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut all = futures::future::try_join_all(parts);
    let done = loop {
        tokio::select! {
            done = &mut all => break done,
            _ = tick.tick() => {
                let ranked = ranked.load(std::sync::atomic::Ordering::Relaxed);
                progress(Progress { scanned: scanned(plan.as_ref()), ranked });
            }
        }
    };
    let mut counts = Counts::new(table.key.len());
    let mut files = WrittenFiles::default();
    for part in done.map_err(|e| query(DataFusionError::External(Box::new(e))))? {
        let (part_counts, part_files) = part.map_err(|e| match e {
            PartError::Query(e) => query(e),
            PartError::Sink(e) => CloseError::Sink(e),
        })?;
        counts.add(part_counts);
        files.extend(part_files);
    }
    progress(Progress { scanned: counts.read, ranked: counts.read });
    let spilled_bytes = sorts.iter().map(|sort| spilled(sort.as_ref())).sum();

    let metadata = vec![
        ("protolake.operation".to_string(), serde_json::Value::from("close-books")),
        ("protolake.date".to_string(), serde_json::Value::from(day.clone())),
        ("protolake.sourceVersion".to_string(), serde_json::Value::from(source_version)),
        ("protolake.rowsRead".to_string(), serde_json::Value::from(counts.read)),
        ("protolake.rowsInvalid".to_string(), serde_json::Value::from(counts.invalid)),
        ("protolake.duplicatesRemoved".to_string(), serde_json::Value::from(counts.duplicates)),
        ("protolake.rowsPublished".to_string(), serde_json::Value::from(counts.published)),
        ("protolake.lateRows".to_string(), serde_json::to_value(late_rows).unwrap_or_default()),
        ("protolake.spilledBytes".to_string(), serde_json::Value::from(spilled_bytes)),
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
        spilled_bytes,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// A task context per part of the day, each with a memory pool of its own: its share of the
/// budget, which it spills beyond. (Shared, a part whose sort finished in memory would hold its
/// rows through the merge while another part still sorts, and starve it instead of letting it
/// spill.) The scan and the split by key run under the session's own context.
fn part_contexts(
    ctx: &SessionContext,
    memory_limit: u64,
    parts: usize,
) -> Result<Vec<Arc<deltalake::datafusion::execution::TaskContext>>, DataFusionError> {
    use deltalake::datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
    use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use deltalake::datafusion::execution::TaskContext;
    let state = ctx.state();
    let shared = state.runtime_env();
    let share = usize::try_from(memory_limit / parts as u64).unwrap_or(usize::MAX);
    (0..parts)
        .map(|_| {
            let pool =
                TrackConsumersPool::new(FairSpillPool::new(share), std::num::NonZeroUsize::new(5).expect("5 > 0"));
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(pool))
                // The raw table's store, registered with the session.
                .with_object_store_registry(shared.object_store_registry.clone())
                .build_arc()?;
            Ok(Arc::new(TaskContext::from(&state).with_runtime(runtime)))
        })
        .collect()
}

/// Why a part of the day could not be sorted out.
#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error(transparent)]
    Query(DataFusionError),
    #[error(transparent)]
    Sink(SinkError),
}

/// Sorts out one part of the sorted day (all rows of its keys) into winners written to `files`.
async fn sort_out_part(
    mut stream: deltalake::datafusion::execution::SendableRecordBatchStream,
    mut files: FileWriter,
    keys: usize,
    schema: SchemaRef,
    ranked: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(Counts, WrittenFiles), PartError> {
    let mut counts = Counts::new(keys);
    while let Some(batch) = stream.try_next().await.map_err(PartError::Query)? {
        let winners = counts.sort_out(&batch, &schema).map_err(|e| PartError::Query(e.into()))?;
        ranked.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(winners) = winners {
            files.write(winners).await.map_err(PartError::Sink)?;
        }
    }
    let written = files.finish().await.map_err(PartError::Sink)?;
    Ok((counts, written))
}

/// Rows the plan's scan has produced so far (its leaf's output rows).
fn scanned(plan: &dyn ExecutionPlan) -> u64 {
    match plan.children().first() {
        Some(child) => scanned(child.as_ref()),
        None => plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0) as u64,
    }
}

/// Bytes the plan's operators spilled to disk (sorts beyond `close_books.memory_limit`).
fn spilled(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan.children().into_iter().map(|c| spilled(c.as_ref())).sum::<u64>()
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

/// The plan of the raw rows of one day with more columns: why the row is invalid (NULL when
/// valid) and the key's values, sorted so that each key's rows are together, its winner first.
async fn sorted_day(
    raw: &DeltaTable,
    table: &TableConfig,
    event_time: &crate::config::EventTime,
    raw_schema: &Schema,
    date: NaiveDate,
    workers: usize,
) -> Result<DayPlan, DataFusionError> {
    use deltalake::datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
    use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
    // The session's pool: the one sort of a single worker, and the scan; an exhausted budget
    // names its top consumers.
    let limit = usize::try_from(table.close_books.memory_limit).unwrap_or(usize::MAX);
    let pool = TrackConsumersPool::new(FairSpillPool::new(limit), std::num::NonZeroUsize::new(5).expect("5 > 0"));
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool)).build_arc()?;
    let mut state = deltalake::delta_datafusion::DeltaSessionContext::with_runtime_env(runtime).state();
    // Plain string and binary arrays, as the final table's writer expects.
    state.config_mut().options_mut().execution.parquet.schema_force_view_types = false;
    // The scan in as many partitions as workers; with more than one, their rows are split by
    // the key's hash into one sort per worker, each in a pool of its own (DayPlan::parts).
    state.config_mut().options_mut().execution.target_partitions = workers;
    // Spilled runs are written and read back once, to the temporary folder: uncompressed
    // unless the table asks for lz4 (`cargo bench --bench close_books -- --workers 2
    // --skip-peers 1 --lz4-spills 0|1`: 3.1 GiB spilled in 18.1 s, against 1.0 GiB in 19.7 s
    // with lz4).
    state.config_mut().options_mut().execution.spill_compression = if table.close_books.compress_spills {
        deltalake::datafusion::common::config::SpillCompression::Lz4Frame
    } else {
        deltalake::datafusion::common::config::SpillCompression::Uncompressed
    };
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
    for (path, ancestors) in required_paths(raw_schema) {
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

    // Sorted by key, then valid rows first, then the winner order: the first row of each key
    // is its winner (when valid). A plain sort rather than ROW_NUMBER() OVER (PARTITION BY key):
    // the window operator keeps state per key, several times the cost of the sort itself.
    // Every sort key is a column of the frame (computed ones added), so that the sorts of
    // several workers can be planned over those columns directly.
    let mut frame = ctx
        .read_table(provider)?
        .filter(ident(EVENT_DATE).eq(lit(ScalarValue::Date32(Some(days)))))?
        .with_column(PROBLEM, problem)?
        .with_column(VALID, ident(PROBLEM).is_null())?
        .with_column(ORDER_TIME, event_time_expr)?;
    for (i, key) in table.key.iter().enumerate() {
        frame = frame.with_column(&key_column(i), column(key))?;
    }
    // (column, descending); ascending keys put NULLs first, descending ones last.
    let mut order: Vec<(String, bool)> = (0..table.key.len()).map(|i| (key_column(i), false)).collect();
    for name in
        [VALID, ORDER_TIME, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SOURCE_FILE, SOURCE_INDEX, INGESTED_AT]
    {
        order.push((name.to_string(), true));
    }
    if workers == 1 {
        let sort: Vec<SortExpr> = order.iter().map(|(c, desc)| ident(c).sort(!desc, !desc)).collect();
        let plan = frame.sort(sort)?.create_physical_plan().await?;
        return Ok(DayPlan { plan, sorted: true, order, keys: table.key.len(), ctx });
    }
    let plan = frame.create_physical_plan().await?;
    Ok(DayPlan { plan, sorted: false, order, keys: table.key.len(), ctx })
}

/// The rows of one day, planned: sorted already (one part), or to be split by the key's hash and
/// sorted part by part ([`DayPlan::parts`]).
struct DayPlan {
    plan: Arc<dyn ExecutionPlan>,
    sorted: bool,
    /// (column, descending); ascending keys put NULLs first, descending ones last. The first
    /// `keys` columns are the key.
    order: Vec<(String, bool)>,
    keys: usize,
    ctx: SessionContext,
}

type Batches = tokio::sync::mpsc::Receiver<Result<RecordBatch, DataFusionError>>;

impl DayPlan {
    /// The scan (for its progress), the sorts (for their spill metrics) and one stream per part,
    /// each sorted, each holding every row of its keys. The scan's partitions are split by a
    /// hash of the key into `parts` channels; each part's sort reads one channel under a task
    /// context of its own, with its share of `memory_limit` ([`part_contexts`]).
    #[allow(clippy::type_complexity)]
    fn parts(
        self,
        memory_limit: u64,
        parts: usize,
    ) -> Result<
        (
            Arc<dyn ExecutionPlan>,
            Vec<Arc<dyn ExecutionPlan>>,
            Vec<deltalake::datafusion::execution::SendableRecordBatchStream>,
        ),
        DataFusionError,
    > {
        use arrow::compute::SortOptions;
        use deltalake::datafusion::physical_expr::expressions::Column;
        use deltalake::datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
        use deltalake::datafusion::physical_plan::sorts::sort::SortExec;
        use deltalake::datafusion::physical_plan::streaming::StreamingTableExec;
        use deltalake::datafusion::physical_plan::{execute_stream, ExecutionPlanProperties};
        if self.sorted {
            let stream = execute_stream(self.plan.clone(), self.ctx.task_ctx())?;
            return Ok((self.plan.clone(), vec![self.plan], vec![stream]));
        }
        let schema = self.plan.schema();
        let key_columns =
            self.order[..self.keys].iter().map(|(c, _)| schema.index_of(c)).collect::<Result<Vec<_>, _>>()?;
        let (senders, receivers): (Vec<_>, Vec<Batches>) = (0..parts).map(|_| tokio::sync::mpsc::channel(2)).unzip();
        for partition in 0..self.plan.output_partitioning().partition_count() {
            let stream = self.plan.execute(partition, self.ctx.task_ctx())?;
            tokio::spawn(split_by_key(stream, key_columns.clone(), senders.clone()));
        }
        drop(senders);
        let sort = self
            .order
            .iter()
            .map(|(c, desc)| {
                Ok(PhysicalSortExpr::new(
                    Arc::new(Column::new_with_schema(c, &schema)?),
                    SortOptions { descending: *desc, nulls_first: !desc },
                ))
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        let ordering = LexOrdering::new(sort).ok_or_else(|| DataFusionError::Internal("no sort key".into()))?;
        let contexts = part_contexts(&self.ctx, memory_limit, parts)?;
        let mut sorts = Vec::with_capacity(parts);
        let mut streams = Vec::with_capacity(parts);
        for (receiver, context) in receivers.into_iter().zip(contexts) {
            let part = Received { schema: schema.clone(), batches: std::sync::Mutex::new(Some(receiver)) };
            let input = StreamingTableExec::try_new(schema.clone(), vec![Arc::new(part)], None, [], false, None)?;
            let sort: Arc<dyn ExecutionPlan> = Arc::new(SortExec::new(ordering.clone(), Arc::new(input)));
            streams.push(sort.execute(0, context)?);
            sorts.push(sort);
        }
        Ok((self.plan, sorts, streams))
    }
}

/// Sends each row of `stream` to the part its key hashes to (a batch of each part's rows per
/// batch read). An error goes to every part.
async fn split_by_key(
    mut stream: deltalake::datafusion::execution::SendableRecordBatchStream,
    key_columns: Vec<usize>,
    parts: Vec<tokio::sync::mpsc::Sender<Result<RecordBatch, DataFusionError>>>,
) {
    use deltalake::datafusion::common::hash_utils::create_hashes_with_hasher;
    let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
    let mut hashes = Vec::new();
    while let Some(batch) = stream.next().await {
        let split = batch.and_then(|batch| {
            hashes.clear();
            hashes.resize(batch.num_rows(), 0);
            let keys: Vec<&ArrayRef> = key_columns.iter().map(|&i| batch.column(i)).collect();
            create_hashes_with_hasher(keys, &hasher, &mut hashes)?;
            let mut rows: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
            for (row, hash) in hashes.iter().enumerate() {
                rows[(*hash % parts.len() as u64) as usize].push(row as u32);
            }
            rows.into_iter()
                .map(|r| Ok(arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(r))?))
                .collect::<Result<Vec<RecordBatch>, DataFusionError>>()
        });
        match split {
            Ok(pieces) => {
                for (part, piece) in parts.iter().zip(pieces) {
                    if piece.num_rows() > 0 && part.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                for part in &parts {
                    let _ = part.send(Err(DataFusionError::Execution(message.clone()))).await;
                }
                return;
            }
        }
    }
}

/// One part's rows, as its sort reads them.
#[derive(Debug)]
struct Received {
    schema: SchemaRef,
    batches: std::sync::Mutex<Option<Batches>>,
}

impl deltalake::datafusion::physical_plan::streaming::PartitionStream for Received {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(
        &self,
        _: Arc<deltalake::datafusion::execution::TaskContext>,
    ) -> deltalake::datafusion::execution::SendableRecordBatchStream {
        use deltalake::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let batches = self.batches.lock().unwrap_or_else(|p| p.into_inner()).take();
        let stream = futures::stream::unfold(batches, |batches| async move {
            let mut batches = batches?;
            let next = batches.recv().await?;
            Some((next, Some(batches)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
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

/// Running counts of a day and the sorting of each sorted batch into winners, duplicates and
/// invalid rows.
struct Counts {
    read: u64,
    invalid: u64,
    duplicates: u64,
    published: u64,
    examples: Vec<String>,
    keys: usize,
    /// Turns key columns into comparable rows.
    converter: Option<RowConverter>,
    /// The key of the last row seen (a key's rows may span batches).
    last_key: Option<OwnedRow>,
}

impl Counts {
    /// Adds the counts of another part of the day (its keys are none of this part's).
    fn add(&mut self, other: Counts) {
        self.read += other.read;
        self.invalid += other.invalid;
        self.duplicates += other.duplicates;
        self.published += other.published;
        let room = EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }

    fn new(keys: usize) -> Self {
        Counts {
            read: 0,
            invalid: 0,
            duplicates: 0,
            published: 0,
            examples: Vec::new(),
            keys,
            converter: None,
            last_key: None,
        }
    }

    /// The winners of `batch`, in the final table's schema (None if there are none).
    fn sort_out(
        &mut self,
        batch: &RecordBatch,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        let missing =
            |name: &str| arrow::error::ArrowError::SchemaError(format!("the sorted day has no {name} column"));
        let problem = batch.column_by_name(PROBLEM).ok_or_else(|| missing(PROBLEM))?;
        let problem = arrow::compute::cast(problem, &DataType::Utf8)?;
        let problem = problem.as_string::<i32>();
        let key_columns = (0..self.keys)
            .map(|i| batch.column_by_name(&key_column(i)).cloned().ok_or_else(|| missing(&key_column(i))))
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        if self.converter.is_none() {
            let fields = key_columns.iter().map(|c| SortField::new(c.data_type().clone())).collect();
            self.converter = Some(RowConverter::new(fields)?);
        }
        let keys = self.converter.as_ref().expect("set above").convert_columns(&key_columns)?;
        let rows = batch.num_rows();
        self.read += rows as u64;
        let mut keep = Vec::with_capacity(rows);
        for row in 0..rows {
            let key = keys.row(row);
            let first_of_key = match row {
                0 => self.last_key.as_ref().is_none_or(|last| last.row() != key),
                _ => keys.row(row - 1) != key,
            };
            let valid = problem.is_null(row);
            let winner = valid && first_of_key;
            if !valid {
                self.invalid += 1;
                if self.examples.len() < EXAMPLES {
                    self.examples.push(format!("{}: {}", describe_row(batch, row), problem.value(row)));
                }
            } else if !winner {
                self.duplicates += 1;
            }
            keep.push(winner);
        }
        if rows > 0 {
            self.last_key = Some(keys.row(rows - 1).owned());
        }
        let kept = filter_record_batch(batch, &BooleanArray::from(keep))?;
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        self.published += kept.num_rows() as u64;
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let c = kept.column_by_name(f.name()).ok_or_else(|| missing(f.name()))?;
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    arrow::compute::cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        RecordBatch::try_new(schema.clone(), columns).map(Some)
    }
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
