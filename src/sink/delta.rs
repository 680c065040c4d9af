//! A Delta table being appended to: Parquet files are written as batches arrive (zstd, column
//! statistics, a target file size) and become visible only with [`TableWriter::commit`], which
//! adds them in one Delta commit together with the source positions they cover.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};

use crate::config::ParquetOptions;
use crate::location::Location;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("table location {location:?}: {message}")]
    Location { location: String, message: String },
    #[error("Delta table {location}: {cause}")]
    Delta { location: String, cause: DeltaTableError },
    #[error("Delta table {location}: schema {message}")]
    Schema { location: String, message: String },
    /// Another writer committed something this commit depends on (e.g. the same source
    /// positions): the batch must be abandoned and its source re-read from the table.
    #[error("Delta table {location}: a concurrent commit conflicts with this one: {cause}")]
    Conflict { location: String, cause: DeltaTableError },
}

impl SinkError {
    fn from_commit(location: &str, cause: DeltaTableError) -> Self {
        use deltalake::kernel::transaction::TransactionError;
        let location = location.to_string();
        match &cause {
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_),
            } => SinkError::Conflict { location, cause },
            _ => SinkError::Delta { location, cause },
        }
    }
}

/// What a commit added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub version: u64,
    pub files: usize,
}

/// What a commit that replaced a partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    pub version: u64,
    pub files_added: usize,
    pub files_removed: usize,
}

/// What a commit records besides its files: table-level facts for `commitInfo`.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub contract_version: String,
    /// e.g. "backfill", "ingest".
    pub operation: String,
    pub rows: u64,
    pub dead_letters: u64,
}

pub struct TableWriter {
    location: String,
    partition_columns: Vec<String>,
    table: DeltaTable,
    files: FileWriter,
    writer_properties: WriterProperties,
}

/// Parquet files of one table being written and not yet committed: the part of a
/// [`TableWriter`] that a worker on another thread owns ([`TableWriter::file_writer`]); its
/// [`finish`](Self::finish)ed files are committed by the table's writer
/// ([`TableWriter::commit_files`]).
pub struct FileWriter {
    location: String,
    partition_columns: Vec<String>,
    writer: RecordBatchWriter,
    schema: SchemaRef,
    target_file_size: u64,
    /// Files closed at the target size since the last finish, waiting for it.
    closed: Vec<deltalake::kernel::Add>,
}

/// Finished Parquet files, not yet part of the table.
#[derive(Debug, Default)]
pub struct WrittenFiles(Vec<deltalake::kernel::Add>);

impl WrittenFiles {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: WrittenFiles) {
        self.0.extend(other.0);
    }
}

/// The Parquet settings protolake writes with (zstd, page statistics, row groups, dictionaries).
fn parquet_properties(options: &ParquetOptions) -> WriterProperties {
    parquet_properties_builder(options).build()
}

fn parquet_properties_builder(
    options: &ParquetOptions,
) -> deltalake::parquet::file::properties::WriterPropertiesBuilder {
    let level = ZstdLevel::try_new(options.zstd_level).unwrap_or_default();
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_created_by(format!("protolake {}", env!("CARGO_PKG_VERSION")));
    // Offsets, record indexes and source timestamps ascend (per partition, per file), as does
    // the event time mostly: stored as deltas in a few bits a value. A dictionary of such
    // near-unique values would be built only to be abandoned at the first page.
    let ascending = [crate::pipeline::SOURCE_OFFSET, crate::pipeline::SOURCE_INDEX, crate::pipeline::SOURCE_TIMESTAMP];
    // The ingest time is one value per batch: written plain, a page of it is one value repeated,
    // which zstd reduces to almost nothing (as small as delta-packed, within 0.01 bytes a row) at
    // less cost than either deltas or a dictionary lookup per row.
    builder = builder.set_column_dictionary_enabled(column_path(crate::pipeline::INGESTED_AT), false);
    for column in ascending.into_iter().chain(options.ascending_columns.iter().map(String::as_str)) {
        builder = builder
            .set_column_dictionary_enabled(column_path(column), false)
            .set_column_encoding(column_path(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in &options.plain_columns {
        builder = builder.set_column_dictionary_enabled(column_path(column), false);
    }
    builder
}

/// A column of a Parquet file by its dotted path through structs.
fn column_path(column: &str) -> deltalake::parquet::schema::types::ColumnPath {
    column.split('.').map(str::to_string).collect::<Vec<_>>().into()
}

/// [`parquet_properties`] for files that delta-rs's own operations write (compaction): no
/// statistics for the columns of [`wide_decimal_paths`], whose Delta statistics delta-rs would
/// get wrong; the files protolake commits itself keep them and lose only those Delta min/max.
pub fn parquet_properties_for(options: &ParquetOptions, schema: &arrow::datatypes::Schema) -> WriterProperties {
    let mut builder = parquet_properties_builder(options);
    for path in wide_decimal_paths(schema) {
        builder = builder.set_column_statistics_enabled(
            deltalake::parquet::schema::types::ColumnPath::from(path),
            EnabledStatistics::None,
        );
    }
    builder.build()
}

impl TableWriter {
    /// Opens the table at `location`, creating it with `schema` and `partition_columns` if it
    /// does not exist. An existing table must have exactly this schema.
    pub async fn open_or_create(
        place: &Location,
        schema: SchemaRef,
        partition_columns: Vec<String>,
        properties: HashMap<String, String>,
        parquet: &ParquetOptions,
        target_file_size: u64,
    ) -> Result<Self, SinkError> {
        let location = place.uri();
        let err = |cause| SinkError::Delta { location: location.to_string(), cause };
        if let Some(path) = place.local_path() {
            std::fs::create_dir_all(path).map_err(|e| SinkError::Location {
                location: location.to_string(),
                message: format!("cannot create the folder: {e}"),
            })?;
        }
        let url = deltalake::ensure_table_uri(location).map_err(err)?;
        let mut table =
            DeltaTable::try_from_url_with_storage_options(url, place.storage_options()).await.map_err(err)?;
        warn_if_unsafe_for_concurrent_writers(place, &table).await;
        if table.version().is_none() {
            let columns: StructType = schema.as_ref().try_into_kernel().map_err(|e| SinkError::Schema {
                location: location.to_string(),
                message: format!("cannot be expressed in Delta: {e}"),
            })?;
            let created = table
                .clone()
                .create()
                .with_columns(columns.fields().cloned())
                .with_partition_columns(partition_columns.clone())
                .with_configuration(properties.into_iter().map(|(k, v)| (k, Some(v))))
                .with_raise_if_key_not_exists(false)
                // Never retried as a later version: a table created by another writer at the
                // same moment is theirs to keep (below), not one to replace.
                .with_commit_properties(CommitProperties::default().with_max_retries(0))
                .await;
            table = match created {
                Ok(t) => t,
                Err(cause) => {
                    // Another writer may have created it at the same moment: use theirs.
                    table.update_incremental(None).await.map_err(|_| err(cause))?;
                    if table.version().is_none() {
                        return Err(SinkError::Location {
                            location: location.to_string(),
                            message: "the table could not be created and no other writer created it".into(),
                        });
                    }
                    evolve_if_additive(table, location, &schema).await?
                }
            };
        } else {
            table = evolve_if_additive(table, location, &schema).await?;
        }
        // Columns are written in the table's order (an evolved table has its new columns last).
        let schema: SchemaRef = table.snapshot().map_err(err)?.snapshot().arrow_schema();
        let writer_properties = parquet_properties(parquet);
        let partition_columns = table.snapshot().map_err(err)?.metadata().partition_columns().to_vec();
        let files =
            FileWriter::for_table(&table, location, &partition_columns, &writer_properties, schema, target_file_size)?;
        Ok(TableWriter { location: location.to_string(), partition_columns, table, files, writer_properties })
    }

    /// Another writer of Parquet files for this table (for a worker on another thread); its
    /// files join the table through [`commit_files`](Self::commit_files).
    pub fn file_writer(&self) -> Result<FileWriter, SinkError> {
        FileWriter::for_table(
            &self.table,
            &self.location,
            &self.partition_columns,
            &self.writer_properties,
            self.files.schema.clone(),
            self.files.target_file_size,
        )
    }

    /// Loads the commits other writers made since this writer last looked.
    pub async fn refresh(&mut self) -> Result<(), SinkError> {
        let location = &self.location;
        self.table
            .update_incremental(None)
            .await
            .map_err(|cause| SinkError::Delta { location: location.clone(), cause })
    }

    /// Drops the rows written since the last commit. Files already uploaded stay unreferenced
    /// (never part of the table; `VACUUM` removes them).
    pub fn abandon(&mut self) -> Result<(), SinkError> {
        self.files.abandon();
        Ok(())
    }

    pub fn schema(&self) -> SchemaRef {
        self.files.schema.clone()
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The last position committed for a source (`app_id`), if any.
    pub async fn committed_position(&self, app_id: &str) -> Result<Option<i64>, SinkError> {
        let err = |cause| SinkError::Delta { location: self.location.clone(), cause };
        let snapshot = self.table.snapshot().map_err(err)?;
        snapshot.transaction_version(self.table.log_store().as_ref(), app_id).await.map_err(err)
    }

    /// Streams a batch into Parquet files (not yet visible to readers). Columns are matched to
    /// the table's by name.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        self.files.write(batch).await
    }

    /// Parquet bytes written since the last commit (the closed files' and the open ones').
    pub fn buffered_bytes(&self) -> usize {
        self.files.buffered_bytes()
    }

    /// Finishes the open files and commits them with the source positions they cover, in one
    /// Delta commit (None when there was nothing to commit). The commit is checked against
    /// every commit made since this writer's snapshot: one that recorded any of the same
    /// positions fails it with [`SinkError::Conflict`]. After any failure the written files are
    /// not part of the table; the caller drops the batch ([`TableWriter::abandon`]).
    ///
    /// The writer's snapshot moves to exactly the new version, so that the next commit is
    /// checked against everything committed after it.
    pub async fn commit(
        &mut self,
        positions: Vec<(String, i64)>,
        info: &CommitInfo,
    ) -> Result<Option<Committed>, SinkError> {
        let files = self.files.finish().await?;
        self.commit_files(files, positions, info).await
    }

    /// [`commit`](Self::commit) of files finished by other writers of this table
    /// ([`file_writer`](Self::file_writer)), with the positions they cover (nothing of this
    /// writer's own files).
    pub async fn commit_files(
        &mut self,
        files: WrittenFiles,
        positions: Vec<(String, i64)>,
        info: &CommitInfo,
    ) -> Result<Option<Committed>, SinkError> {
        let adds = files.0;
        if adds.is_empty() && positions.is_empty() {
            return Ok(None);
        }
        let metadata = vec![
            ("protolake.contractVersion".to_string(), serde_json::Value::from(info.contract_version.clone())),
            ("protolake.operation".to_string(), serde_json::Value::from(info.operation.clone())),
            ("protolake.rows".to_string(), serde_json::Value::from(info.rows)),
            ("protolake.deadLetters".to_string(), serde_json::Value::from(info.dead_letters)),
        ];
        let partition_columns: Vec<String> = self.partition_columns.clone();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
            predicate: None,
        };
        let files = adds.len();
        let version =
            self.commit_actions(adds.into_iter().map(Action::Add).collect(), positions, metadata, operation).await?;
        Ok(Some(Committed { version, files }))
    }

    /// Finishes the open files and commits them in place of every file of one partition
    /// (`column = value`), in one Delta commit: readers see the partition's old files or the
    /// new ones, never a mix. `positions` and `metadata` are recorded with it. A concurrent
    /// commit that removed any of the same files or recorded any of the same positions fails
    /// it with [`SinkError::Conflict`].
    ///
    /// `files`: files finished by other writers of this table ([`file_writer`](Self::file_writer))
    /// that join this writer's own.
    pub async fn commit_replacing_partition(
        &mut self,
        column: &str,
        value: &str,
        files: WrittenFiles,
        positions: Vec<(String, i64)>,
        metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<Replaced, SinkError> {
        use deltalake::{FilterOp, FilterValue};
        use futures::TryStreamExt;
        let mut adds = self.files.finish().await?.0;
        adds.extend(files.0);
        let err = |cause| SinkError::Delta { location: self.location.clone(), cause };
        let filter = [(column, FilterOp::Eq, FilterValue::Scalar(value))];
        let removes: Vec<Action> = self
            .table
            .get_active_add_actions_by_partitions(&filter)
            .map_ok(|file| Action::Remove(file.remove_action(true)))
            .try_collect()
            .await
            .map_err(err)?;
        let files_added = adds.len();
        let files_removed = removes.len();
        let mut actions = removes;
        actions.extend(adds.into_iter().map(Action::Add));
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: Some(self.partition_columns.clone()),
            predicate: Some(format!("{column} = '{value}'")),
        };
        let version = self.commit_actions(actions, positions, metadata, operation).await?;
        Ok(Replaced { version, files_added, files_removed })
    }

    async fn commit_actions(
        &mut self,
        actions: Vec<Action>,
        positions: Vec<(String, i64)>,
        metadata: Vec<(String, serde_json::Value)>,
        operation: DeltaOperation,
    ) -> Result<u64, SinkError> {
        let err = |cause| SinkError::Delta { location: self.location.clone(), cause };
        let now = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = positions
            .into_iter()
            .map(|(app_id, version)| Transaction { app_id, version, last_updated: Some(now) })
            .collect();
        let properties = CommitProperties::default().with_application_transactions(txns).with_metadata(metadata);
        let snapshot = self.table.snapshot().map_err(err)?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(|cause| SinkError::from_commit(&self.location, cause))?;
        let version = finalized.version();
        self.table.update_incremental(Some(version)).await.map_err(err)?;
        Ok(version)
    }
}

impl FileWriter {
    fn for_table(
        table: &DeltaTable,
        location: &str,
        partition_columns: &[String],
        properties: &WriterProperties,
        schema: SchemaRef,
        target_file_size: u64,
    ) -> Result<Self, SinkError> {
        let writer = RecordBatchWriter::for_table(table)
            .map_err(|cause| SinkError::Delta { location: location.to_string(), cause })?
            .with_writer_properties(properties.clone());
        Ok(FileWriter {
            location: location.to_string(),
            partition_columns: partition_columns.to_vec(),
            writer,
            schema,
            target_file_size,
            closed: Vec::new(),
        })
    }

    /// Streams a batch into Parquet files (not yet visible to readers). Columns are matched to
    /// the table's by name.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let batch = self.in_table_order(batch)?;
        let location = &self.location;
        let err = |cause| SinkError::Delta { location: location.clone(), cause };
        // A batch within one date partition (the usual case) skips the writer's split by
        // partition, which re-encodes and copies every row.
        match single_date_partition(&batch, &self.partition_columns) {
            Some(values) => {
                self.writer.write_partition(batch, &values, WriteMode::Default).await.map(drop).map_err(err)?
            }
            None => self.writer.write(batch).await.map_err(err)?,
        }
        // The files roll here, between batches, rather than inside delta-rs's writer: given a
        // target size, it hands the Parquet encoder 1,024 rows at a time to check the size
        // between them, which costs the whole backfill about 3% more CPU than whole batches.
        // A file passes its target by at most one batch's encoded rows.
        if self.writer.buffer_len() as u64 >= self.target_file_size {
            let adds = self.close_open_files().await?;
            self.closed.extend(adds);
        }
        Ok(())
    }

    fn in_table_order(&self, batch: RecordBatch) -> Result<RecordBatch, SinkError> {
        let same = batch.schema().fields().iter().map(|f| f.name()).eq(self.schema.fields().iter().map(|f| f.name()));
        if same {
            return Ok(batch);
        }
        let indices = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                batch.schema().index_of(f.name()).map_err(|_| SinkError::Schema {
                    location: self.location.clone(),
                    message: format!("the batch has no column {}", f.name()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        batch
            .project(&indices)
            .map_err(|e| SinkError::Schema { location: self.location.clone(), message: e.to_string() })
    }

    /// Parquet bytes written since the last finish (the closed files' and the open ones').
    pub fn buffered_bytes(&self) -> usize {
        let closed: usize = self.closed.iter().map(|a| usize::try_from(a.size).unwrap_or(0)).sum();
        self.writer.buffer_len() + closed
    }

    /// Finishes the open Parquet files (and takes those closed at the target size): their add
    /// actions, with statistics readers can trust.
    pub async fn finish(&mut self) -> Result<WrittenFiles, SinkError> {
        let mut adds = self.close_open_files().await?;
        adds.splice(0..0, std::mem::take(&mut self.closed));
        Ok(WrittenFiles(adds))
    }

    async fn close_open_files(&mut self) -> Result<Vec<deltalake::kernel::Add>, SinkError> {
        let err = |cause| SinkError::Delta { location: self.location.clone(), cause };
        let mut adds = self.writer.flush().await.map_err(err)?;
        let wide = wide_decimal_paths(&self.schema);
        if !wide.is_empty() {
            for add in &mut adds {
                add.stats = add.stats.take().map(|s| without_min_max(&s, &wide));
            }
        }
        Ok(adds)
    }

    /// Drops the rows written since the last finish. Files already uploaded stay unreferenced
    /// (never part of the table; `VACUUM` removes them).
    pub fn abandon(&mut self) {
        self.writer.reset();
        self.closed.clear();
    }
}

/// Decimal digits an f64 holds exactly: delta-rs writes DECIMAL statistics through an f64 (and
/// scale-0 ones through an i64, which saturates), so the min/max of wider decimals can be wrong
/// in either direction, and a reader skipping files by them would miss rows.
const EXACT_DECIMAL_DIGITS: u8 = 15;

/// The paths (through structs; lists and maps carry no statistics) of DECIMAL columns wider than
/// [`EXACT_DECIMAL_DIGITS`].
fn wide_decimal_paths(schema: &arrow::datatypes::Schema) -> Vec<Vec<String>> {
    use arrow::datatypes::DataType;
    fn walk(fields: &arrow::datatypes::Fields, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for f in fields {
            let mut path = prefix.to_vec();
            path.push(f.name().clone());
            match f.data_type() {
                DataType::Decimal128(p, _) | DataType::Decimal256(p, _) if *p > EXACT_DECIMAL_DIGITS => out.push(path),
                DataType::Struct(children) => walk(children, &path, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(schema.fields(), &[], &mut out);
    out
}

/// An add action's statistics without the min/max of `paths` (their null counts stay).
fn without_min_max(stats: &str, paths: &[Vec<String>]) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(stats) else { return stats.to_string() };
    for bound in ["minValues", "maxValues"] {
        for path in paths {
            let Some((leaf, parents)) = path.split_last() else { continue };
            let mut node = value.get_mut(bound);
            for p in parents {
                node = node.and_then(|n| n.get_mut(p));
            }
            if let Some(serde_json::Value::Object(map)) = node {
                map.remove(leaf);
            }
        }
    }
    value.to_string()
}

/// Where a pipeline writes: its data table and its dead-letter table.
pub struct TablePair<'a> {
    pub location: &'a Location,
    pub dlq_location: &'a Location,
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
    /// Table properties set when a table is created.
    pub properties: HashMap<String, String>,
    pub parquet: &'a ParquetOptions,
    pub target_file_size: u64,
}

impl TablePair<'_> {
    /// Opens (creating if needed) the data table, then the dead-letter table.
    pub async fn open(self) -> Result<(TableWriter, TableWriter), SinkError> {
        let data = TableWriter::open_or_create(
            self.location,
            self.schema,
            self.partition_columns,
            self.properties.clone(),
            self.parquet,
            self.target_file_size,
        )
        .await?;
        let dlq = TableWriter::open_or_create(
            self.dlq_location,
            super::dlq_schema(),
            Vec::new(),
            self.properties,
            self.parquet,
            self.target_file_size,
        )
        .await?;
        Ok((data, dlq))
    }
}

/// The table at `location`, loaded at `version` (or its newest), or None when there is no
/// table there.
pub async fn open_table(place: &Location, version: Option<u64>) -> Result<Option<DeltaTable>, SinkError> {
    let location = place.uri();
    let err = |cause| SinkError::Delta { location: location.to_string(), cause };
    if let Some(path) = place.local_path() {
        if !std::path::Path::new(path).join("_delta_log").is_dir() {
            return Ok(None);
        }
    }
    let url = deltalake::ensure_table_uri(location).map_err(err)?;
    let mut builder =
        deltalake::DeltaTableBuilder::from_url(url).map_err(err)?.with_storage_options(place.storage_options());
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    match builder.load().await {
        Ok(table) => Ok(table.version().is_some().then_some(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(cause) => Err(err(cause)),
    }
}

/// Says, once per location, what makes a table's store unsafe for two writers at once: settings
/// that turn conditional writes off, or a store that overwrote an object it was asked to create
/// only if absent (checked with a scratch object under `_protolake/`, removed afterwards).
async fn warn_if_unsafe_for_concurrent_writers(place: &Location, table: &DeltaTable) {
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if place.is_local() {
        return;
    }
    {
        let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        if checked.iter().any(|c| c == place.uri()) {
            return;
        }
        checked.push(place.uri().to_string());
    }
    for hazard in place.concurrency_hazards() {
        tracing::warn!(location = %place, "unsafe for concurrent writers: {hazard}");
    }
    let store = table.log_store().object_store(None);
    let probe = object_store::path::Path::from(format!("_protolake/create-only-probe-{}", uuid::Uuid::new_v4()));
    let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
    let first = store.put_opts(&probe, "1".into(), create()).await;
    let second = match first {
        Ok(_) => store.put_opts(&probe, "2".into(), create()).await,
        Err(e) => {
            tracing::warn!(location = %place, error = %e, "could not check the store's conditional writes");
            return;
        }
    };
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {
            tracing::debug!(location = %place, "the store refuses to overwrite on create-only writes")
        }
        Ok(_) => tracing::error!(
            location = %place,
            "unsafe for concurrent writers: the store overwrote an object it was asked to create only if \
             absent (If-None-Match). Two writers committing to this table at once can overwrite each \
             other's commit: run one writer per table, or use a store with conditional writes"
        ),
        Err(e) => tracing::warn!(location = %place, error = %e, "could not check the store's conditional writes"),
    }
    if let Err(e) = store.delete(&probe).await {
        tracing::debug!(location = %place, error = %e, "removing the conditional-write probe");
    }
}

/// The schema of the table at `location`, or None when there is no table there.
pub async fn table_schema_at(location: &Location) -> Result<Option<SchemaRef>, SinkError> {
    let Some(table) = open_table(location, None).await? else { return Ok(None) };
    let snapshot = table.snapshot().map_err(|cause| SinkError::Delta { location: location.to_string(), cause })?;
    Ok(Some(snapshot.snapshot().arrow_schema()))
}

/// An existing table whose schema differs from `schema`: if `schema` only adds nullable columns
/// (anywhere, nested included), the table is evolved to it in one commit; otherwise refused
/// with the differences.
async fn evolve_if_additive(table: DeltaTable, location: &str, schema: &SchemaRef) -> Result<DeltaTable, SinkError> {
    use crate::contract::{check_evolution, diff, Contract};
    let err = |cause| SinkError::Delta { location: location.to_string(), cause };
    let schema_err = |message: String| SinkError::Schema { location: location.to_string(), message };
    let existing = table.snapshot().map_err(err)?.snapshot().arrow_schema();
    let found = Contract::from_arrow(&existing).map_err(|e| schema_err(e.to_string()))?;
    let expected = Contract::from_arrow(schema).map_err(|e| schema_err(e.to_string()))?;
    if diff(&found, &expected).is_empty() {
        return Ok(table);
    }
    if let Err(reasons) = check_evolution(&found, &expected) {
        let lines: Vec<String> = reasons.iter().map(|r| format!("  {r}")).collect();
        return Err(schema_err(format!(
            "of the existing table cannot become the one to write (only new nullable columns can be added):\n{}",
            lines.join("\n")
        )));
    }
    let fields: StructType =
        schema.as_ref().try_into_kernel().map_err(|e| schema_err(format!("cannot be expressed in Delta: {e}")))?;
    let fields: Vec<_> = fields.fields().cloned().collect();
    table.add_columns().with_fields(fields).await.map_err(err)
}

/// When every partition column is a DATE holding one value across the batch: those values.
fn single_date_partition(
    batch: &RecordBatch,
    partition_columns: &[String],
) -> Option<indexmap::IndexMap<String, delta_kernel::expressions::Scalar>> {
    use arrow::array::{Array, AsArray};
    if partition_columns.is_empty() || batch.num_rows() == 0 {
        return None;
    }
    let mut values = indexmap::IndexMap::new();
    for name in partition_columns {
        let column = batch.column_by_name(name)?;
        let dates = column.as_primitive_opt::<arrow::datatypes::Date32Type>()?;
        if dates.null_count() > 0 {
            return None;
        }
        let first = dates.value(0);
        if dates.values().iter().any(|d| *d != first) {
            return None;
        }
        values.insert(name.clone(), delta_kernel::expressions::Scalar::Date(first));
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{EventTime, TimeUnit};

    #[test]
    fn ascending_columns_are_delta_packed_and_the_ingest_time_plain_without_a_dictionary() {
        let options = ParquetOptions { plain_columns: vec!["page.url".into()], ..ParquetOptions::default() }
            .with_event_time(Some(&EventTime { field: "header.ts_ms".into(), unit: Some(TimeUnit::Milliseconds) }));
        let props = parquet_properties(&options);
        let path = column_path;
        for column in ["header.ts_ms", "_source_offset", "_source_index", "_source_timestamp"] {
            assert_eq!(props.encoding(&path(column)), Some(Encoding::DELTA_BINARY_PACKED), "{column}");
            assert!(!props.dictionary_enabled(&path(column)), "{column}");
        }
        for column in ["page.url", "_ingested_at"] {
            assert!(!props.dictionary_enabled(&path(column)), "{column}");
            assert_eq!(props.encoding(&path(column)), None, "{column}");
        }
        for column in ["ts_ms", "_source_file", "country"] {
            assert!(props.dictionary_enabled(&path(column)), "{column}");
            assert_eq!(props.encoding(&path(column)), None, "{column}");
        }
    }

    /// 1,000 rows of 32 random hex digits: about 18 KB of Parquet that zstd cannot squeeze away.
    fn random_batch(schema: &SchemaRef, seed: &mut u64) -> RecordBatch {
        let values: Vec<String> = (0..1000)
            .map(|_| {
                *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                format!("{:016x}{:016x}", *seed, seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15)
            })
            .collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::StringArray::from(values))]).unwrap()
    }

    /// (file size, rows) of every file the table's newest version holds.
    async fn table_files(place: &Location) -> Vec<(i64, usize)> {
        use futures::TryStreamExt;
        let table = open_table(place, None).await.unwrap().expect("table");
        let files: Vec<_> = table.get_active_add_actions_by_partitions(&[]).try_collect().await.unwrap();
        files.iter().map(|f| (f.size(), f.num_records().expect("row count in the statistics"))).collect()
    }

    #[tokio::test]
    async fn files_roll_at_the_target_size_between_batches_and_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let place = Location::new(dir.path().join("t").display().to_string());
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "v",
            arrow::datatypes::DataType::Utf8,
            false,
        )]));
        let target = 48 * 1024;
        let options = ParquetOptions::default();
        let mut writer =
            TableWriter::open_or_create(&place, schema.clone(), Vec::new(), HashMap::new(), &options, target)
                .await
                .unwrap();
        let mut seed = 7;
        for _ in 0..8 {
            writer.write(random_batch(&schema, &mut seed)).await.unwrap();
        }
        assert!(
            writer.files.closed.len() >= 2,
            "{} bytes written and fewer than 2 files closed at {target}",
            writer.buffered_bytes()
        );
        // The closed files count too, so that flush.max_bytes sees every byte since the commit.
        let closed: u64 = writer.files.closed.iter().map(|a| a.size as u64).sum();
        assert!(writer.buffered_bytes() as u64 >= closed && closed >= 2 * target);
        let committed = writer.commit(vec![("t".into(), 0)], &CommitInfo::default()).await.unwrap().unwrap();
        let files = table_files(&place).await;
        assert_eq!(committed.files, files.len());
        assert!(files.len() >= 2, "{files:?}");
        assert_eq!(files.iter().map(|f| f.1).sum::<usize>(), 8000, "every row in exactly one committed file");
        // A file takes batches until the Parquet writer's estimate of its size reaches the
        // target (one batch's estimate here is about 3/4 of it): never a file per batch.
        assert!(files.len() < 8, "{files:?}");

        // Files closed at the target and then abandoned never become part of the table.
        for _ in 0..6 {
            writer.write(random_batch(&schema, &mut seed)).await.unwrap();
        }
        assert!(!writer.files.closed.is_empty());
        writer.abandon().unwrap();
        assert_eq!(writer.buffered_bytes(), 0);
        writer.write(random_batch(&schema, &mut seed)).await.unwrap();
        writer.commit(vec![("t".into(), 1)], &CommitInfo::default()).await.unwrap().unwrap();
        assert_eq!(table_files(&place).await.iter().map(|f| f.1).sum::<usize>(), 9000);
    }
}
