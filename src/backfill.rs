//! Backfill: archived varint-delimited protobuf files → the table and its dead-letter table.
//!
//! The work is spread over N workers (threads), each with its own decoder, pipeline and Parquet
//! writer. A reader cuts the input files into runs of whole records (without decoding them) and
//! hands each run to a worker; runs of several files go to the workers alike.
//!
//! Exactly-once per file: each commit records, for every file it covers, the index of the last
//! record it includes (a txn action with app id `protolake-backfill:<path>`). Commits are cut
//! by epochs: at the end of an epoch the reader sends every worker a flush marker behind the
//! runs it has already handed out, each worker finishes its files at that marker, and the
//! epoch's commit holds the files of all workers and, per file, the last record read before the
//! marker. Every record up to a recorded position is in that commit or an earlier one, and none
//! after it: a position is always a prefix of its file wholly committed, whichever worker
//! decoded which run. The dead-letter table is committed first and the data table second, so
//! after a crash the data table never claims more than the dead-letter table; a rerun skips
//! what the data table holds and does not repeat dead letters the DLQ already holds.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;

use crate::config::{EventTime, FlushPolicy, ParquetOptions};
use crate::contract::Contract;
use crate::decode::Decoder;
use crate::pipeline::{DeadLetter, PipelineError, TablePipeline};
use crate::sink::{dead_letter_batch, CommitInfo, SinkError, TablePair, TableWriter, WrittenFiles};
use crate::source::Coordinates;
use crate::workers::{cut_record, Pool, Run, WorkerError};

/// Bytes of input in one run handed to a worker (a run holds whole records; a longer record
/// makes a run of its own).
const RUN_BYTES: usize = 256 << 10;

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
    #[error("preparing worker {worker}: {message}")]
    Worker { worker: usize, message: String },
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

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
    /// Kafka header columns of the table (`header_columns`): null in every backfilled row.
    pub header_columns: Vec<String>,
    pub inputs: Vec<PathBuf>,
    /// Threads decoding and encoding (at least 1).
    pub workers: usize,
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
    pub workers: usize,
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

/// One input file and what the tables already hold of it.
struct Input {
    path: PathBuf,
    /// Its absolute path: the source id of its records.
    name: Arc<str>,
    /// Index of the last record the data table holds (-1: none).
    data_done: i64,
}

/// What the reader tells the committer.
enum ReaderEvent {
    /// Every run of the epoch is dealt; the last record dealt per source.
    Epoch {
        epoch: u64,
        positions: Vec<(String, i64)>,
    },
    Done,
    Failed(BackfillError),
}

/// Counters the reader updates for the committer's progress.
#[derive(Default)]
struct Shared {
    bytes_read: AtomicU64,
    records: AtomicU64,
    already_committed: AtomicU64,
}

pub async fn run(spec: BackfillSpec, progress: &dyn Progress) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    let workers = spec.workers.max(1);
    let contract_version = spec.contract.as_ref().map_or("adhoc".to_string(), |(v, _)| format!("v{v}"));
    let contract = spec.contract.as_ref().map(|(_, c)| c);
    let pipelines = crate::workers::pipelines(
        spec.decoder,
        spec.validator,
        contract,
        spec.event_time.as_ref(),
        spec.max_record_bytes,
        &spec.header_columns,
        workers,
    )
    .map_err(|e| match e {
        WorkerError::Pipeline(e) => BackfillError::Pipeline(e),
        other => other.into(),
    })?;
    let properties: HashMap<String, String> =
        [("protolake.contractVersion".to_string(), contract_version.clone())].into();
    // A spec built from a config holds the event-time column already; an ad-hoc one does not.
    let parquet = spec.parquet.with_event_time(spec.event_time.as_ref());
    let (mut data, mut dlq) = TablePair {
        location: &spec.location,
        dlq_location: &spec.dlq_location,
        schema: pipelines[0].table_schema(),
        partition_columns: pipelines[0].partition_columns(),
        properties,
        parquet: &parquet,
        target_file_size: spec.flush.target_file_size,
    }
    .open()
    .await?;

    // Each file is named by its absolute path (its source id); a file named twice is read once,
    // since its position is only known to the table after a commit.
    let mut inputs: Vec<Input> = Vec::new();
    let mut dlq_done: BTreeMap<String, i64> = BTreeMap::new();
    for path in &spec.inputs {
        let name: Arc<str> = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string().into();
        if inputs.iter().any(|seen| seen.name == name) {
            continue;
        }
        let id = app_id(&name);
        let data_done = data.committed_position(&id).await?.unwrap_or(-1);
        dlq_done.insert(id.clone(), dlq.committed_position(&id).await?.unwrap_or(-1));
        inputs.push(Input { path: path.clone(), name, data_done });
    }
    let files = inputs.len();
    let total: u64 = inputs.iter().filter_map(|i| std::fs::metadata(&i.path).ok()).map(|m| m.len()).sum();
    progress.start(total);

    let shared = Arc::new(Shared::default());
    let runtime = tokio::runtime::Handle::current();
    let (pool, mut parts) = Pool::start(
        "backfill",
        pipelines,
        || data.file_writer(),
        spec.max_record_bytes,
        crate::workers::FILE_RUNS_QUEUED,
        &runtime,
    )?;
    let (events_tx, mut events_rx) = mpsc::channel::<ReaderEvent>(1);
    let reader = Reader {
        pool,
        flush: spec.flush.clone(),
        shared: Arc::clone(&shared),
        max_record_bytes: spec.max_record_bytes,
        events: events_tx,
        positions: BTreeMap::new(),
        records_in_epoch: 0,
    };
    std::thread::Builder::new()
        .name("backfill-reader".into())
        .spawn(move || reader.read(inputs))
        .map_err(|e| BackfillError::Worker { worker: 0, message: format!("cannot start the reader: {e}") })?;

    let mut committer = Committer {
        data: &mut data,
        dlq: &mut dlq,
        contract_version,
        dlq_done,
        report: BackfillReport { workers, ..BackfillReport::default() },
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut shown = 0u64;
    let mut show = |shared: &Shared| {
        let read = shared.bytes_read.load(Ordering::Relaxed);
        progress.advance(read.saturating_sub(shown), shared.records.load(Ordering::Relaxed));
        shown = read.max(shown);
    };
    // Parts of later epochs that arrived while an earlier one was collected.
    let mut early = Vec::new();
    loop {
        tokio::select! {
            event = events_rx.recv() => match event {
                Some(ReaderEvent::Epoch { epoch, positions }) => {
                    let epoch_parts = crate::workers::collect(&mut parts, &mut early, epoch, workers).await?;
                    committer.commit(epoch_parts, positions).await?;
                }
                Some(ReaderEvent::Done) => break,
                Some(ReaderEvent::Failed(e)) => return Err(e),
                None => return Err(BackfillError::Worker { worker: 0, message: "the reader stopped".into() }),
            },
            _ = tick.tick() => show(&shared),
        }
    }
    show(&shared);
    progress.finish();
    let mut report = committer.report;
    report.files = files;
    report.records = shared.records.load(Ordering::Relaxed);
    report.already_committed = shared.already_committed.load(Ordering::Relaxed);
    report.bytes_read = shared.bytes_read.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    report.table_version = data.version();
    Ok(report)
}

struct Committer<'a> {
    data: &'a mut TableWriter,
    dlq: &'a mut TableWriter,
    contract_version: String,
    /// Per source: dead letters with an index at or below this are already in the DLQ.
    dlq_done: BTreeMap<String, i64>,
    report: BackfillReport,
}

impl Committer<'_> {
    /// Commits the dead letters, then the rows, of every worker's part of an epoch, each with
    /// the positions they cover.
    async fn commit(
        &mut self,
        parts: Vec<crate::workers::Part>,
        positions: Vec<(String, i64)>,
    ) -> Result<(), BackfillError> {
        let mut files = WrittenFiles::default();
        let mut rows = 0;
        let mut fresh: Vec<DeadLetter> = Vec::new();
        for part in parts {
            files.extend(part.files);
            rows += part.rows;
            for letter in part.dead {
                *self.report.by_reason.entry(letter.reason.clone()).or_default() += 1;
                self.report.dead_letters += 1;
                let repeated = match &letter.coordinates {
                    Coordinates::File { path, index } => {
                        *index as i64 <= self.dlq_done.get(&app_id(path.as_ref())).copied().unwrap_or(-1)
                    }
                    Coordinates::Kafka { .. } => false,
                };
                if !repeated {
                    fresh.push(letter);
                }
            }
        }
        self.report.rows += rows;
        if positions.is_empty() && files.is_empty() {
            return Ok(());
        }
        // Dead letters in source order, as a single reader would have written them.
        fresh.sort_by(|a, b| match (&a.coordinates, &b.coordinates) {
            (Coordinates::File { path: p, index: i }, Coordinates::File { path: q, index: j }) => (p, i).cmp(&(q, j)),
            _ => std::cmp::Ordering::Equal,
        });
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
        let info = CommitInfo { rows, dead_letters: 0, ..info };
        self.data.commit_files(files, positions, &info).await?;
        self.report.commits += 1;
        Ok(())
    }
}

/// Cuts the input files into runs of whole records and deals them to the workers; ends an epoch
/// when the flush policy says so.
struct Reader {
    pool: Pool,
    flush: FlushPolicy,
    shared: Arc<Shared>,
    max_record_bytes: usize,
    events: mpsc::Sender<ReaderEvent>,
    /// Last record dealt per source in this epoch.
    positions: BTreeMap<String, i64>,
    records_in_epoch: u64,
}

impl Reader {
    fn read(mut self, inputs: Vec<Input>) {
        let outcome = inputs.iter().try_for_each(|input| self.file(input)).and_then(|()| self.end_epoch());
        let event = match outcome {
            Ok(()) => ReaderEvent::Done,
            Err(e) => ReaderEvent::Failed(e),
        };
        let _ = self.events.blocking_send(event);
        // The pool goes with the reader: the workers end once their queues are empty.
    }

    /// Notes that records of `source` up to `last` are dealt, and ends the epoch when the
    /// flush policy says so.
    fn dealt(&mut self, source: &str, last: u64, records: u64) -> Result<(), BackfillError> {
        self.positions.insert(app_id(source), last as i64);
        self.records_in_epoch += records;
        if self.records_in_epoch >= self.flush.max_rows as u64 || self.pool.buffered_bytes() >= self.flush.max_bytes {
            self.end_epoch()?;
        }
        Ok(())
    }

    fn end_epoch(&mut self) -> Result<(), BackfillError> {
        if self.positions.is_empty() {
            return Ok(());
        }
        let epoch = self.pool.end_epoch()?;
        let positions: Vec<(String, i64)> = std::mem::take(&mut self.positions).into_iter().collect();
        self.records_in_epoch = 0;
        self.events
            .blocking_send(ReaderEvent::Epoch { epoch, positions })
            .map_err(|_| BackfillError::Worker { worker: 0, message: "the committer stopped".into() })
    }

    fn file(&mut self, input: &Input) -> Result<(), BackfillError> {
        let failed = |cause| BackfillError::Input { path: input.path.clone(), cause };
        let mut file = std::fs::File::open(&input.path).map_err(failed)?;
        let mut runs = Runs::new(self.max_record_bytes);
        let mut skip = u64::try_from(input.data_done + 1).unwrap_or(0);
        while let Some(cut) = runs.next(&mut file).map_err(failed)? {
            self.shared.bytes_read.fetch_add(cut.bytes_read, Ordering::Relaxed);
            match cut.piece {
                Piece::Run { bytes, mut start, mut first, mut records } => {
                    if skip > 0 {
                        // Records an earlier run committed: the prefix of the file.
                        let skipped = skip.min(records);
                        start = skip_records(&bytes, start, skipped);
                        skip -= skipped;
                        first += skipped;
                        records -= skipped;
                        self.shared.already_committed.fetch_add(skipped, Ordering::Relaxed);
                        if records == 0 && start >= bytes.len() {
                            continue;
                        }
                    }
                    let last = first + records.max(1) - 1;
                    self.shared.records.fetch_add(records.max(1), Ordering::Relaxed);
                    self.pool.deal(Run::File { source: Arc::clone(&input.name), first, bytes, start })?;
                    self.dealt(&input.name, last, records.max(1))?;
                }
                Piece::Refused { index, len, cut } => {
                    if skip > 0 {
                        skip -= 1;
                        self.shared.already_committed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.shared.records.fetch_add(1, Ordering::Relaxed);
                    let coordinates = Coordinates::File { path: Arc::clone(&input.name), index };
                    let letter = if cut {
                        cut_record(Some(len), Vec::new(), coordinates)
                    } else {
                        crate::pipeline::oversized_letter(len, self.max_record_bytes, None, coordinates)
                    };
                    self.pool.deal(Run::Dead(letter))?;
                    self.dealt(&input.name, index, 1)?;
                }
            }
        }
        Ok(())
    }
}

/// The offset of the record `count` records after `start` in a run of whole records.
fn skip_records(bytes: &[u8], mut start: usize, count: u64) -> usize {
    for _ in 0..count {
        match crate::source::file::length_prefix(&bytes[start..]) {
            Some((len, prefix)) => start += prefix + len as usize,
            None => return bytes.len(),
        }
    }
    start.min(bytes.len())
}

/// A piece of input the reader hands out.
enum Piece {
    /// `records` whole records in `bytes[start..]`, the first at index `first`; the last piece
    /// of a file may end with a cut record (counted, not whole).
    Run { bytes: Vec<u8>, start: usize, first: u64, records: u64 },
    /// A record over the size limit (skipped, not read), or one cut while being skipped.
    Refused { index: u64, len: u64, cut: bool },
}

struct Cut {
    piece: Piece,
    /// Input bytes consumed by this piece.
    bytes_read: u64,
}

/// Cuts a varint-delimited stream into runs of about [`RUN_BYTES`] of whole records, reading
/// each byte once and decoding nothing but the length prefixes.
struct Runs {
    /// Bytes read past the last run: the start of its next record.
    carry: Vec<u8>,
    next_index: u64,
    max_record_bytes: usize,
    eof: bool,
}

impl Runs {
    fn new(max_record_bytes: usize) -> Self {
        Runs { carry: Vec::new(), next_index: 0, max_record_bytes, eof: false }
    }

    fn next(&mut self, input: &mut impl Read) -> std::io::Result<Option<Cut>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        let mut bytes = std::mem::take(&mut self.carry);
        let mut want = RUN_BYTES.max(bytes.len());
        loop {
            fill(input, &mut bytes, want, &mut self.eof)?;
            // Whole records from the start.
            let mut end = 0;
            let mut records = 0u64;
            let mut refused = None;
            let mut short = None;
            let mut malformed = false;
            while end < bytes.len() {
                let Some((len, prefix)) = crate::source::file::length_prefix(&bytes[end..]) else {
                    // Ten bytes without the prefix's end: no length, so no way to the next record.
                    malformed = bytes.len() - end >= 10;
                    break;
                };
                if len > self.max_record_bytes as u64 {
                    refused = Some((len, prefix));
                    break;
                }
                let whole = prefix + len as usize;
                if bytes.len() - end < whole {
                    short = Some(whole);
                    break;
                }
                end += whole;
                records += 1;
            }
            let first = self.next_index;
            if records > 0 {
                self.next_index += records;
                self.carry = bytes.split_off(end);
                let bytes_read = end as u64;
                return Ok(Some(Cut { piece: Piece::Run { bytes, start: 0, first, records }, bytes_read }));
            }
            if let Some((len, prefix)) = refused {
                // A record too large to hand over: its bytes are skipped, not kept.
                let index = self.next_index;
                self.next_index += 1;
                let held = (bytes.len() - prefix) as u64;
                let mut bytes_read = prefix as u64;
                let cut = if held >= len {
                    self.carry = bytes.split_off(prefix + len as usize);
                    bytes_read += len;
                    false
                } else {
                    let skipped = std::io::copy(&mut input.by_ref().take(len - held), &mut std::io::sink())?;
                    bytes_read += held + skipped;
                    if skipped < len - held {
                        self.eof = true;
                        true
                    } else {
                        false
                    }
                };
                return Ok(Some(Cut { piece: Piece::Refused { index, len, cut }, bytes_read }));
            }
            if self.eof || malformed {
                // The file ends inside a record, or its framing breaks off (the rest of the file
                // cannot be framed): the worker's framing reports it, and reading stops.
                self.eof = true;
                if bytes.is_empty() {
                    return Ok(None);
                }
                let bytes_read = bytes.len() as u64;
                self.next_index += 1;
                return Ok(Some(Cut { piece: Piece::Run { bytes, start: 0, first, records: 1 }, bytes_read }));
            }
            // The first record is longer than what is read: read the rest of it.
            want = want.max(short.unwrap_or(0)).max(bytes.len() + 16);
        }
    }
}

/// Reads from `input` until `bytes` holds `want` bytes or the input ends (into the vector's
/// spare room, which is not zeroed first).
fn fill(input: &mut impl Read, bytes: &mut Vec<u8>, want: usize, eof: &mut bool) -> std::io::Result<()> {
    if *eof || bytes.len() >= want {
        return Ok(());
    }
    let need = want - bytes.len();
    bytes.reserve_exact(need);
    if input.take(need as u64).read_to_end(bytes)? < need {
        *eof = true;
    }
    Ok(())
}

/// The table schema a backfill of `decoder` would write (for `schema check` and tests).
pub fn table_schema(
    decoder: Decoder,
    contract: Option<&Contract>,
    event_time: Option<&EventTime>,
) -> Result<SchemaRef, PipelineError> {
    Ok(TablePipeline::new(decoder, contract, event_time, usize::MAX)?.table_schema())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::{write_delimited, DelimitedReader, Frame};

    /// Every piece `Runs` cuts from `input`, with its records' (index, bytes) as the worker's
    /// framing sees them.
    /// A piece's framed records, its refusal (index, length, cut) and the bytes it consumed.
    type Cut = (Vec<(u64, Vec<u8>)>, Option<(u64, u64, bool)>, u64);

    fn cut(input: &[u8], max: usize) -> Vec<Cut> {
        let mut runs = Runs::new(max);
        let mut reader = input;
        let mut out = Vec::new();
        while let Some(c) = runs.next(&mut reader).unwrap() {
            match c.piece {
                Piece::Run { bytes, start, first, records } => {
                    let mut framed = Vec::new();
                    let mut r = DelimitedReader::new(&bytes[start..], max);
                    while let Some((i, frame)) = r.next_frame().unwrap() {
                        let raw = match frame {
                            Frame::Record(b) => b.to_vec(),
                            Frame::Truncated { partial, .. } => partial,
                            Frame::Oversized { .. } => panic!("oversized records are cut out by the reader"),
                        };
                        framed.push((first + i, raw));
                    }
                    assert_eq!(framed.len() as u64, records);
                    out.push((framed, None, c.bytes_read));
                }
                Piece::Refused { index, len, cut } => out.push((Vec::new(), Some((index, len, cut)), c.bytes_read)),
            }
        }
        out
    }

    #[test]
    fn runs_hold_whole_records_and_every_byte_once() {
        let mut input = Vec::new();
        let mut records = Vec::new();
        for i in 0..20_000u32 {
            let body = vec![(i % 251) as u8; (i as usize * 7919) % 300];
            write_delimited(&mut input, &body).unwrap();
            records.push(body);
        }
        let pieces = cut(&input, 1 << 20);
        assert!(pieces.len() > 3, "{} runs", pieces.len());
        let framed: Vec<(u64, Vec<u8>)> = pieces.iter().flat_map(|p| p.0.clone()).collect();
        assert_eq!(framed.len(), records.len());
        for (n, (index, bytes)) in framed.iter().enumerate() {
            assert_eq!(*index, n as u64);
            assert_eq!(bytes, &records[n]);
        }
        assert_eq!(pieces.iter().map(|p| p.2).sum::<u64>(), input.len() as u64);
    }

    #[test]
    fn a_record_longer_than_a_run_is_a_run_of_its_own_and_an_oversized_one_is_skipped_unread() {
        let mut input = Vec::new();
        write_delimited(&mut input, b"a").unwrap();
        write_delimited(&mut input, &vec![1u8; RUN_BYTES * 3]).unwrap();
        write_delimited(&mut input, &vec![2u8; 5000]).unwrap(); // over the limit below
        write_delimited(&mut input, b"b").unwrap();
        let pieces = cut(&input, RUN_BYTES * 4);
        let framed: Vec<(u64, usize)> = pieces.iter().flat_map(|p| p.0.iter().map(|(i, b)| (*i, b.len()))).collect();
        assert_eq!(framed, vec![(0, 1), (1, RUN_BYTES * 3), (2, 5000), (3, 1)]);

        let pieces = cut(&input, 4096);
        let framed: Vec<(u64, usize)> = pieces.iter().flat_map(|p| p.0.iter().map(|(i, b)| (*i, b.len()))).collect();
        assert_eq!(framed, vec![(0, 1), (3, 1)]);
        let refused: Vec<_> = pieces.iter().filter_map(|p| p.1).collect();
        assert_eq!(refused, vec![(1, RUN_BYTES as u64 * 3, false), (2, 5000, false)]);
        assert_eq!(pieces.iter().map(|p| p.2).sum::<u64>(), input.len() as u64);
    }

    #[test]
    fn a_cut_last_record_is_handed_over_for_the_worker_to_report() {
        for keep in [1usize, 2, 40] {
            let mut input = Vec::new();
            write_delimited(&mut input, b"whole").unwrap();
            write_delimited(&mut input, &[7u8; 300]).unwrap();
            let cut_at = 7 + keep; // "whole" takes 6 bytes; 300 takes a 2-byte prefix
            let pieces = cut(&input[..cut_at], 1 << 20);
            let framed: Vec<(u64, Vec<u8>)> = pieces.iter().flat_map(|p| p.0.clone()).collect();
            assert_eq!(framed[0], (0, b"whole".to_vec()));
            assert_eq!(framed.len(), 2, "keep {keep}: {framed:?}");
            assert_eq!(framed[1].0, 1);
            assert_eq!(pieces.iter().map(|p| p.2).sum::<u64>(), cut_at as u64);
        }
        // A record over the limit that the file's end cuts while it is skipped.
        let mut input = Vec::new();
        write_delimited(&mut input, &[3u8; 9000]).unwrap();
        let pieces = cut(&input[..5000], 4096);
        assert_eq!(pieces.iter().filter_map(|p| p.1).collect::<Vec<_>>(), vec![(0, 9000, true)]);
    }

    #[test]
    fn skipping_committed_records_lands_on_the_next_record() {
        let mut input = Vec::new();
        for i in 0..10u8 {
            write_delimited(&mut input, &vec![i; i as usize * 30]).unwrap();
        }
        for n in 0..=10u64 {
            let at = skip_records(&input, 0, n);
            let mut r = DelimitedReader::new(&input[at..], 1 << 20);
            let next = r.next_frame().unwrap().map(|(_, f)| match f {
                Frame::Record(b) => b.to_vec(),
                _ => panic!("whole records"),
            });
            assert_eq!(next, (n < 10).then(|| vec![n as u8; n as usize * 30]));
        }
    }
}
