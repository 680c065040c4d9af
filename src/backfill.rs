//! Backfill: archived varint-delimited protobuf files → the table and its dead-letter table.
//!
//! Exactly-once per file: each commit records, for every file it covers, the index of the last
//! record it includes (a txn action with app id `protolake-backfill:<path>`). The dead-letter
//! table is committed first and the data table second, so after a crash the data table never
//! claims more than the dead-letter table; a rerun skips what the data table holds and does not
//! repeat dead letters the DLQ already holds.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;

use crate::config::{EventTime, FlushPolicy, ParquetOptions};
use crate::contract::Contract;
use crate::decode::Decoder;
use crate::pipeline::{DeadLetter, PipelineError, TablePipeline};
use crate::sink::{dead_letter_batch, CommitInfo, SinkError, TablePair, TableWriter};
use crate::source::file::{DelimitedReader, Frame};
use crate::source::Coordinates;

/// Rows decoded between two hand-overs to the Parquet writer.
const DECODE_BATCH: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("cannot read {path}: {cause}")]
    Input { path: PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("building a batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Read size for input files. Small enough that the bytes just read are still in the core's
/// cache when the decoder reaches them (a 1 MiB buffer cost about 4% more CPU); records longer
/// than this are still read whole, through a copy.
const READ_BUFFER: usize = 64 << 10;

/// Everything a backfill needs, resolved.
pub struct BackfillSpec {
    pub decoder: Decoder,
    /// The descriptor's `buf.validate` rules, when it carries any.
    pub validator: Option<crate::validate::RecordValidator>,
    /// The pinned contract and its version; None in ad-hoc mode.
    pub contract: Option<(u32, Contract)>,
    pub location: crate::location::Location,
    pub dlq_location: crate::location::Location,
    pub event_time: Option<EventTime>,
    pub flush: FlushPolicy,
    pub parquet: ParquetOptions,
    pub max_record_bytes: usize,
    pub inputs: Vec<PathBuf>,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct BackfillReport {
    pub files: usize,
    pub records: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// Records skipped because an earlier run committed them.
    pub already_committed: u64,
    pub commits: u64,
    pub bytes_read: u64,
    pub elapsed: Duration,
    pub table_version: Option<u64>,
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress {
    fn start(&self, total_bytes: u64);
    fn advance(&self, bytes: u64, records: u64);
    fn finish(&self);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
    fn finish(&self) {}
}

pub fn app_id(path: &str) -> String {
    format!("protolake-backfill:{path}")
}

struct Run {
    pipeline: TablePipeline,
    data: TableWriter,
    dlq: TableWriter,
    contract_version: String,
    flush: FlushPolicy,
    /// Last record index decoded per source, not yet committed.
    positions: BTreeMap<String, i64>,
    /// Per source: dead letters with an index at or below this are already in the DLQ.
    dlq_done: BTreeMap<String, i64>,
    rows_since_commit: u64,
    dead_since_commit: Vec<DeadLetter>,
    max_record_bytes: usize,
    report: BackfillReport,
}

pub async fn run(spec: BackfillSpec, progress: &dyn Progress) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    let contract_version = spec.contract.as_ref().map_or("adhoc".to_string(), |(v, _)| format!("v{v}"));
    let pipeline = TablePipeline::new(
        spec.decoder,
        spec.contract.as_ref().map(|(_, c)| c),
        spec.event_time.as_ref(),
        spec.max_record_bytes,
    )?
    .with_validator(spec.validator);
    let properties: std::collections::HashMap<String, String> =
        [("protolake.contractVersion".to_string(), contract_version.clone())].into();
    // A spec built from a config holds the event-time column already; an ad-hoc one does not.
    let parquet = spec.parquet.with_event_time(spec.event_time.as_ref());
    let (data, dlq) = TablePair {
        location: &spec.location,
        dlq_location: &spec.dlq_location,
        schema: pipeline.table_schema(),
        partition_columns: pipeline.partition_columns(),
        properties,
        parquet: &parquet,
        target_file_size: spec.flush.target_file_size,
    }
    .open()
    .await?;
    let mut run = Run {
        pipeline,
        data,
        dlq,
        contract_version,
        flush: spec.flush,
        positions: BTreeMap::new(),
        dlq_done: BTreeMap::new(),
        rows_since_commit: 0,
        dead_since_commit: Vec::new(),
        max_record_bytes: spec.max_record_bytes,
        report: BackfillReport::default(),
    };
    // Each file is named by its absolute path (its source id); a file named twice is read once,
    // since its position is only known to the table after a commit.
    let mut inputs: Vec<(PathBuf, std::sync::Arc<str>)> = Vec::new();
    for path in &spec.inputs {
        let name: std::sync::Arc<str> =
            std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string().into();
        if !inputs.iter().any(|(_, seen)| *seen == name) {
            inputs.push((path.clone(), name));
        }
    }
    let total: u64 = inputs.iter().filter_map(|(p, _)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    progress.start(total);
    for (path, name) in &inputs {
        run.file(path, name, progress).await?;
    }
    run.commit().await?;
    progress.finish();
    run.report.elapsed = started.elapsed();
    run.report.table_version = run.data.version();
    Ok(run.report)
}

impl Run {
    async fn file(
        &mut self,
        path: &PathBuf,
        name: &std::sync::Arc<str>,
        progress: &dyn Progress,
    ) -> Result<(), BackfillError> {
        let input_err = |cause| BackfillError::Input { path: path.clone(), cause };
        let file = std::fs::File::open(path).map_err(input_err)?;
        let id = app_id(name);
        let data_done = self.data.committed_position(&id).await?.unwrap_or(-1);
        let dlq_done = self.dlq.committed_position(&id).await?.unwrap_or(-1);
        self.dlq_done.insert(id.clone(), dlq_done);
        self.report.files += 1;
        let mut reader = DelimitedReader::new(BufReader::with_capacity(READ_BUFFER, file), self.max_record_bytes);
        let mut last_progress = 0u64;
        // The last record pushed; it becomes the file's position when its batch is handed over.
        let mut last = None;
        // One value for all the file's records; only the index changes.
        let mut coordinates = Coordinates::File { path: std::sync::Arc::clone(name), index: 0 };
        loop {
            let frame = reader.next_frame().map_err(input_err)?;
            let Some((index, frame)) = frame else { break };
            let index = index as i64;
            if index <= data_done {
                self.report.already_committed += 1;
                continue;
            }
            self.report.records += 1;
            if let Coordinates::File { index: at, .. } = &mut coordinates {
                *at = index as u64;
            }
            match frame {
                Frame::Record(bytes) => self.pipeline.push(bytes, &coordinates),
                Frame::Oversized { len } => self.pipeline.dead_letter_oversized(len, None, coordinates.clone()),
                Frame::Truncated { expected, partial } => self.pipeline.dead_letter(DeadLetter {
                    message: match expected {
                        Some(len) => format!("the file ends {} bytes into a {len}-byte record", partial.len()),
                        None => "the file ends inside a record's length prefix".to_string(),
                    },
                    raw: partial,
                    reason: "truncated".into(),
                    field_path: String::new(),
                    coordinates: coordinates.clone(),
                    headers: Vec::new(),
                }),
            }
            last = Some(index);
            if self.pipeline.pending() >= DECODE_BATCH {
                self.positions.insert(id.clone(), index);
                self.hand_over().await?;
                let read = reader.bytes_read();
                progress.advance(read - last_progress, self.report.records);
                last_progress = read;
                if self.rows_since_commit >= self.flush.max_rows as u64
                    || self.data.buffered_bytes() as u64 >= self.flush.max_bytes
                {
                    self.commit().await?;
                }
            }
        }
        if let Some(index) = last {
            self.positions.insert(id.clone(), index);
        }
        let read = reader.bytes_read();
        progress.advance(read - last_progress, self.report.records);
        self.report.bytes_read += read;
        Ok(())
    }

    /// Moves the decoded rows into Parquet files and the dead letters aside (nothing visible).
    async fn hand_over(&mut self) -> Result<(), BackfillError> {
        let now = chrono::Utc::now().timestamp_micros();
        let (batch, dead) = self.pipeline.take(now)?;
        if let Some(batch) = batch {
            self.rows_since_commit += batch.num_rows() as u64;
            self.report.rows += batch.num_rows() as u64;
            self.data.write(batch).await?;
        }
        for letter in dead {
            *self.report.by_reason.entry(letter.reason.clone()).or_default() += 1;
            self.report.dead_letters += 1;
            self.dead_since_commit.push(letter);
        }
        Ok(())
    }

    /// Commits the dead letters, then the rows, each with the positions they cover.
    async fn commit(&mut self) -> Result<(), BackfillError> {
        self.hand_over().await?;
        if self.positions.is_empty() {
            return Ok(());
        }
        let positions: Vec<(String, i64)> = self.positions.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let dead = std::mem::take(&mut self.dead_since_commit);
        let fresh: Vec<DeadLetter> = dead
            .into_iter()
            .filter(|l| match &l.coordinates {
                Coordinates::File { path, index } => {
                    *index as i64 > self.dlq_done.get(&app_id(path.as_ref())).copied().unwrap_or(-1)
                }
                Coordinates::Kafka { .. } => true,
            })
            .collect();
        let now = chrono::Utc::now().timestamp_micros();
        if !fresh.is_empty() {
            self.dlq.write(dead_letter_batch(&fresh, &self.contract_version, now)?).await?;
        }
        let info = CommitInfo {
            contract_version: self.contract_version.clone(),
            operation: "backfill".into(),
            rows: 0,
            dead_letters: fresh.len() as u64,
        };
        self.dlq.commit(positions.clone(), &info).await?;
        for (id, index) in &positions {
            self.dlq_done.insert(id.clone(), *index);
        }
        let info = CommitInfo { rows: self.rows_since_commit, dead_letters: 0, ..info };
        self.data.commit(positions, &info).await?;
        self.report.commits += 1;
        self.rows_since_commit = 0;
        self.positions.clear();
        Ok(())
    }
}

/// The table schema a backfill of `decoder` would write (for `schema check` and tests).
pub fn table_schema(
    decoder: Decoder,
    contract: Option<&Contract>,
    event_time: Option<&EventTime>,
) -> Result<SchemaRef, PipelineError> {
    Ok(TablePipeline::new(decoder, contract, event_time, usize::MAX)?.table_schema())
}
