//! Keeping tables healthy as they age, and telling an operator what is in them:
//! `inspect` (versions, files, partitions, contract, Kafka offsets, close-of-books runs),
//! `optimize` (compaction into target-size files, optionally Z-ordered) and `vacuum` (removal of
//! files no version needs any more, with a retention check).
//!
//! Optimize and vacuum may run while the daemon ingests. Compaction commits remove + add actions
//! marked `dataChange: false` and no txn: a daemon's append never conflicts with it (it reads no
//! files), and the positions the daemon records are untouched. Vacuum only deletes files older
//! than the retention, which is never shorter than [`MIN_RETENTION`], so files written by a
//! batch that is not committed yet are not touched.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde::Serialize;

use crate::config::TableConfig;
use crate::sink::{open_table, Location, SinkError};

/// Vacuum never keeps less than this, even with `--force`: younger unreferenced files may belong
/// to a batch a writer has not committed yet.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// Which of a configured table's Delta tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    /// The table the daemon and backfill append to.
    Raw,
    /// The dead-letter table.
    Dlq,
    /// The table close-books publishes into.
    Final,
}

impl Which {
    pub fn location(self, table: &TableConfig) -> &Location {
        match self {
            Which::Raw => &table.location,
            Which::Dlq => &table.dlq_location,
            Which::Final => &table.final_location,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{location}: there is no Delta table here yet")]
    NoTable { location: String },
    #[error("{location}: {message}")]
    Refused { location: String, message: String },
}

fn delta(location: &Location) -> impl Fn(deltalake::DeltaTableError) -> MaintenanceError + '_ {
    move |cause| MaintenanceError::Sink(SinkError::Delta { location: location.to_string(), cause })
}

async fn existing(location: &Location) -> Result<DeltaTable, MaintenanceError> {
    open_table(location, None).await?.ok_or_else(|| MaintenanceError::NoTable { location: location.to_string() })
}

/// What `inspect` shows of one configured table.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub table: String,
    pub raw: Option<TableSummary>,
    pub dlq: Option<TableSummary>,
    pub r#final: Option<TableSummary>,
    /// The Kafka topic and, per partition, the last offset the raw table holds (the daemon
    /// resumes after it).
    pub topic: Option<String>,
    pub kafka_offsets: BTreeMap<i32, i64>,
    /// The newest close-of-books publications, newest first.
    pub close_books_runs: Vec<CloseRun>,
}

#[derive(Debug, Serialize)]
pub struct TableSummary {
    pub location: String,
    pub version: u64,
    pub files: u64,
    pub bytes: u64,
    /// None when some file has no row count in its statistics.
    pub rows: Option<u64>,
    /// Files under a quarter of the target size: what `optimize` would compact.
    pub small_files: u64,
    pub partitions: Vec<PartitionSummary>,
    pub contract_version: Option<String>,
    pub checkpoint_interval: u64,
    /// The last commit: when (ms since the epoch) and what.
    pub last_commit_ms: Option<i64>,
    pub last_operation: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PartitionSummary {
    pub partition: String,
    pub files: u64,
    pub bytes: u64,
    pub rows: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct CloseRun {
    pub date: String,
    pub at_ms: Option<i64>,
    pub source_version: Option<u64>,
    pub rows_published: Option<u64>,
    pub duplicates_removed: Option<u64>,
    pub rows_invalid: Option<u64>,
    pub late_rows: Option<u64>,
}

/// Partition ids probed past the highest one found with a committed offset.
const PARTITION_PROBE: i32 = 16;

pub async fn inspect(table: &TableConfig, close_runs: usize) -> Result<Inspection, MaintenanceError> {
    let target = table.flush.target_file_size;
    let raw = open_table(&table.location, None).await?;
    let mut kafka_offsets = BTreeMap::new();
    if let (Some(raw), Some(topic)) = (&raw, &table.topic) {
        let snapshot = raw.snapshot().map_err(delta(&table.location))?;
        let mut partition = 0;
        let mut last_found = -1;
        while partition <= last_found + PARTITION_PROBE {
            let app = crate::source::kafka::app_id(topic, partition);
            if let Some(offset) =
                snapshot.transaction_version(raw.log_store().as_ref(), app).await.map_err(delta(&table.location))?
            {
                kafka_offsets.insert(partition, offset);
                last_found = partition;
            }
            partition += 1;
        }
    }
    let summary = |t: Option<DeltaTable>, location: Location| async move {
        match t {
            None => Ok::<_, MaintenanceError>(None),
            Some(t) => Ok(Some(summarize(&t, &location, target).await?)),
        }
    };
    let final_table = open_table(&table.final_location, None).await?;
    let mut close_books_runs = Vec::new();
    if let Some(f) = &final_table {
        let infos: Vec<_> = f.history(None).try_collect().await.map_err(delta(&table.final_location))?;
        for info in infos {
            let field = |k: &str| info.info.get(&format!("protolake.{k}")).cloned();
            if field("operation").and_then(|v| v.as_str().map(str::to_string)).as_deref() != Some("close-books") {
                continue;
            }
            let number = |k: &str| field(k).and_then(|v| v.as_u64());
            close_books_runs.push(CloseRun {
                date: field("date").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                at_ms: info.timestamp,
                source_version: number("sourceVersion"),
                rows_published: number("rowsPublished"),
                duplicates_removed: number("duplicatesRemoved"),
                rows_invalid: number("rowsInvalid"),
                late_rows: number("lateRows"),
            });
            if close_books_runs.len() >= close_runs {
                break;
            }
        }
    }
    let dlq = open_table(&table.dlq_location, None).await?;
    Ok(Inspection {
        table: table.name.clone(),
        raw: summary(raw, table.location.clone()).await?,
        dlq: summary(dlq, table.dlq_location.clone()).await?,
        r#final: summary(final_table, table.final_location.clone()).await?,
        topic: table.topic.clone(),
        kafka_offsets,
        close_books_runs,
    })
}

async fn summarize(table: &DeltaTable, location: &Location, target: u64) -> Result<TableSummary, MaintenanceError> {
    let snapshot = table.snapshot().map_err(delta(location))?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    let mut partitions: BTreeMap<String, PartitionSummary> = BTreeMap::new();
    let (mut files, mut bytes, mut rows, mut small) = (0u64, 0u64, Some(0u64), 0u64);
    let mut views = table.get_active_add_actions_by_partitions(&[]);
    while let Some(file) = views.try_next().await.map_err(delta(location))? {
        let size = file.size().max(0) as u64;
        let count = file.num_records().map(|n| n as u64);
        files += 1;
        bytes += size;
        rows = rows.zip(count).map(|(a, b)| a + b);
        if size < target / 4 {
            small += 1;
        }
        if !partition_columns.is_empty() {
            let values = file.partition_values_map();
            let name = partition_columns
                .iter()
                .map(|c| format!("{c}={}", values.get(c).cloned().flatten().unwrap_or_else(|| "NULL".into())))
                .collect::<Vec<_>>()
                .join("/");
            let p = partitions.entry(name.clone()).or_insert(PartitionSummary {
                partition: name,
                files: 0,
                bytes: 0,
                rows: Some(0),
            });
            p.files += 1;
            p.bytes += size;
            p.rows = p.rows.zip(count).map(|(a, b)| a + b);
        }
    }
    let configuration = snapshot.metadata().configuration();
    let mut last: Vec<_> = table.history(Some(1)).try_collect().await.map_err(delta(location))?;
    let last = last.pop();
    Ok(TableSummary {
        location: location.to_string(),
        version: table.version().unwrap_or_default(),
        files,
        bytes,
        rows,
        small_files: small,
        partitions: partitions.into_values().collect(),
        contract_version: last
            .as_ref()
            .and_then(|i| i.info.get("protolake.contractVersion"))
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|v| !v.is_empty())
            .or_else(|| configuration.get("protolake.contractVersion").cloned()),
        checkpoint_interval: snapshot.table_config().checkpoint_interval().get(),
        last_commit_ms: last.as_ref().and_then(|i| i.timestamp),
        last_operation: last.as_ref().and_then(|i| {
            i.info.get("protolake.operation").and_then(|v| v.as_str().map(str::to_string)).or(i.operation.clone())
        }),
    })
}

/// What `optimize` did.
#[derive(Debug, Serialize)]
pub struct OptimizeReport {
    pub location: String,
    pub version: u64,
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions_optimized: u64,
    pub zorder_by: Vec<String>,
}

/// Compacts the files of `which` (only the partition `event_date = date` when given) into files
/// near the table's target size, Z-ordered by `zorder_by` when not empty.
pub async fn optimize(
    table: &TableConfig,
    which: Which,
    date: Option<chrono::NaiveDate>,
    zorder_by: &[String],
) -> Result<OptimizeReport, MaintenanceError> {
    let location = which.location(table);
    let t = existing(location).await?;
    let day = date.map(|d| d.to_string());
    if day.is_some() {
        let partitioned = t
            .snapshot()
            .map_err(delta(location))?
            .metadata()
            .partition_columns()
            .iter()
            .any(|c| c == crate::pipeline::EVENT_DATE);
        if !partitioned {
            return Err(MaintenanceError::Refused {
                location: location.to_string(),
                message: format!("--date needs a table partitioned by {}", crate::pipeline::EVENT_DATE),
            });
        }
    }
    let filter_literals: Vec<deltalake::FilterLiteral<'_>> = match &day {
        Some(d) => vec![(crate::pipeline::EVENT_DATE, deltalake::FilterOp::Eq, deltalake::FilterValue::Scalar(d))],
        None => Vec::new(),
    };
    let target = NonZeroU64::new(table.flush.target_file_size.max(1)).expect("non-zero");
    let kind = if zorder_by.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder_by.to_vec()) };
    let schema = t.snapshot().map_err(delta(location))?.snapshot().arrow_schema();
    let properties = crate::sink::parquet_properties_for(&table.parquet, &schema);
    let (t, metrics) = t
        .optimize()
        .with_type(kind)
        .with_target_size(target)
        .with_filters(&filter_literals)
        .with_writer_properties(properties)
        .await
        .map_err(delta(location))?;
    Ok(OptimizeReport {
        location: location.to_string(),
        version: t.version().unwrap_or_default(),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        partitions_optimized: metrics.partitions_optimized,
        zorder_by: zorder_by.to_vec(),
    })
}

/// What `vacuum` did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct VacuumReport {
    pub location: String,
    pub dry_run: bool,
    pub retention_hours: f64,
    pub files_deleted: usize,
    /// Up to 20 of them.
    pub examples: Vec<String>,
}

/// Deletes the files no version younger than `retention` needs. `retention` defaults to the
/// table's `delta.deletedFileRetentionDuration` (7 days unless set); a shorter one is refused
/// unless `force`, and one under [`MIN_RETENTION`] always. `full` also removes files no commit
/// ever referenced (left by runs that were killed before committing).
pub async fn vacuum(
    location: &Location,
    retention: Option<Duration>,
    force: bool,
    full: bool,
    dry_run: bool,
) -> Result<VacuumReport, MaintenanceError> {
    let t = existing(location).await?;
    let table_retention = t.snapshot().map_err(delta(location))?.table_config().deleted_file_retention_duration();
    let retention = retention.unwrap_or(table_retention);
    let hours = |d: Duration| d.as_secs_f64() / 3600.0;
    if retention < MIN_RETENTION {
        return Err(MaintenanceError::Refused {
            location: location.to_string(),
            message: format!(
                "a retention of {:.2}h is below the minimum of {:.0}h, even with --force: younger unreferenced files may \
                 belong to a commit in progress",
                hours(retention),
                hours(MIN_RETENTION)
            ),
        });
    }
    if retention < table_retention && !force {
        return Err(MaintenanceError::Refused {
            location: location.to_string(),
            message: format!(
                "a retention of {:.1}h is shorter than the table's delta.deletedFileRetentionDuration ({:.1}h): readers \
                 of older versions (time travel, long queries) would lose files. Use --force if no reader needs them",
                hours(retention),
                hours(table_retention)
            ),
        });
    }
    let period = chrono::Duration::from_std(retention).map_err(|e| MaintenanceError::Refused {
        location: location.to_string(),
        message: format!("retention: {e}"),
    })?;
    let (_, metrics) = t
        .vacuum()
        .with_retention_period(period)
        .with_enforce_retention_duration(false)
        .with_mode(if full { VacuumMode::Full } else { VacuumMode::Lite })
        .with_dry_run(dry_run)
        .await
        .map_err(delta(location))?;
    Ok(VacuumReport {
        location: location.to_string(),
        dry_run,
        retention_hours: hours(retention),
        files_deleted: metrics.files_deleted.len(),
        examples: metrics.files_deleted.iter().take(20).cloned().collect(),
    })
}
