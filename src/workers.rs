//! A pool of workers (threads) that decode records and encode their rows into Parquet files of
//! one table, for `backfill` and `ingest`.
//!
//! The thread that reads the source deals runs of records to the workers (whole records, not
//! yet decoded) and ends an epoch with [`Pool::end_epoch`]: a flush marker queued behind every
//! run dealt so far. Each worker finishes its files at the marker and hands back its part of
//! the epoch ([`Part`]: the files, the row count and the dead letters). An epoch's parts hold
//! exactly the records dealt before its marker, whichever worker took which run, so the source
//! positions the dealer noted at the marker are wholly covered by the epoch's commit.
//!
//! A worker that fails (a batch that cannot be built, a file that cannot be written) drops what
//! it holds, skips the rest of the epoch's runs and hands back the error as its part, so that
//! the epoch still ends with one part from every worker; the commit that would have held it
//! fails, and the worker is clean for the next epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as sync_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::pipeline::{DeadLetter, PipelineError, TablePipeline};
use crate::sink::{FileWriter, SinkError, WrittenFiles};
use crate::source::file::{DelimitedReader, Frame};
use crate::source::{Coordinates, Headers};

/// Rows decoded between two hand-overs to the Parquet writer.
const DECODE_BATCH: usize = 65_536;

/// Runs waiting for each worker of a backfill (runs of 256 KiB of input): enough that a worker
/// never waits for the reader, few enough that the input in flight stays a few MiB.
pub const FILE_RUNS_QUEUED: usize = 8;

/// Runs waiting for each worker of the ingest daemon (runs of up to 2,048 messages, which keep
/// librdkafka's fetch buffers alive until they are decoded).
pub const KAFKA_RUNS_QUEUED: usize = 4;

/// The jobs the workers have taken, counted, and the dealer's wait for more of them.
struct Takes {
    count: AtomicU64,
    /// The count the waiting dealer wakes at (`u64::MAX`: it is not waiting).
    wake_at: AtomicU64,
    lock: std::sync::Mutex<()>,
    signal: std::sync::Condvar,
}

impl Takes {
    fn new() -> Takes {
        Takes {
            count: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            lock: std::sync::Mutex::new(()),
            signal: std::sync::Condvar::new(),
        }
    }

    /// A worker took a job: wakes the dealer when the count reaches what it waits for.
    fn took(&self) {
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if count >= self.wake_at.load(Ordering::SeqCst) {
            // Under the lock, so that a dealer between its check and its wait is not missed.
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.signal.notify_one();
        }
    }

    /// Waits until `more` jobs have been taken after `seen` (or a bound passes, so that a
    /// worker that ended is noticed by the next try).
    fn wait(&self, seen: u64, more: u64) {
        let held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake_at.store(seen + more, Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) < seen + more {
            let _ = self.signal.wait_timeout(held, std::time::Duration::from_millis(100));
        }
        self.wake_at.store(u64::MAX, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("preparing a worker's decoder: {0}")]
    Decoder(#[from] crate::decode::SchemaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("reading a run of {file}: {cause}")]
    Input { file: String, cause: std::io::Error },
    #[error("the workers stopped: {0}")]
    Gone(String),
}

/// Runs of records, as the dealer hands them out.
pub enum Run {
    /// Varint-delimited records `bytes[start..]` of an input file, the first at index `first`;
    /// the last run of a file may end with a cut record, which the worker's framing reports.
    File { source: Arc<str>, first: u64, bytes: Vec<u8>, start: usize },
    /// Records of Kafka messages of one topic, their payloads back to back in `bytes`.
    Kafka(KafkaRun),
    /// A dead letter the dealer made itself (a record it could not hand over whole).
    Dead(DeadLetter),
}

/// Kafka messages of one topic and where each came from.
#[derive(Default)]
pub struct KafkaRun {
    pub topic: Option<Arc<str>>,
    /// The payloads of copied messages, back to back.
    pub bytes: Vec<u8>,
    pub records: Vec<KafkaRecord>,
}

pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub body: KafkaBody,
}

/// Where a record's payload is.
pub enum KafkaBody {
    /// Copied into the run's bytes, ending at `end` (it starts where the previous copied one
    /// ends); with the message's headers when it has any (kept for its dead letter, should it
    /// become one).
    Copied { end: usize, headers: Option<Headers> },
    /// In the message itself, `skip` bytes into its value (past the framing), which the worker
    /// reads in place and releases: no copy, and headers parsed only for a record that needs
    /// them (a header column, a dead letter). A pool holding such messages must be drained
    /// ([`Pool::drain`]) before their consumer goes.
    #[cfg(feature = "kafka")]
    Held { message: crate::source::kafka::Fetched, skip: usize },
}

impl KafkaRun {
    pub fn with_capacity(records: usize, bytes: usize) -> KafkaRun {
        KafkaRun { topic: None, bytes: Vec::with_capacity(bytes), records: Vec::with_capacity(records) }
    }

    /// Adds a record whose payload is copied.
    pub fn push(
        &mut self,
        payload: &[u8],
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        headers: Option<Headers>,
    ) {
        self.bytes.extend_from_slice(payload);
        let body = KafkaBody::Copied { end: self.bytes.len(), headers };
        self.records.push(KafkaRecord { partition, offset, timestamp_ms, body });
    }

    /// Adds a record read in place from its message.
    #[cfg(feature = "kafka")]
    pub fn hold(
        &mut self,
        message: crate::source::kafka::Fetched,
        skip: usize,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) {
        self.records.push(KafkaRecord { partition, offset, timestamp_ms, body: KafkaBody::Held { message, skip } });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

enum Job {
    Run(Run),
    /// Finish the files written so far: the end of an epoch.
    Flush {
        epoch: u64,
    },
    /// Drop everything since the last flush marker.
    Abandon,
    /// Answer once every job queued before this one is done (and its run dropped).
    Barrier(sync_mpsc::Sender<()>),
}

/// One worker's part of an epoch.
pub struct Part {
    pub files: WrittenFiles,
    pub rows: u64,
    pub dead: Vec<DeadLetter>,
}

/// One pipeline per worker (at least one): the first of `decoder` and `validator`, the others
/// of fresh copies of them.
pub fn pipelines(
    decoder: crate::decode::Decoder,
    validator: Option<crate::validate::RecordValidator>,
    contract: Option<&crate::contract::Contract>,
    event_time: Option<&crate::config::EventTime>,
    max_record_bytes: usize,
    header_columns: &[String],
    workers: usize,
) -> Result<Vec<TablePipeline>, WorkerError> {
    let mut pipelines = Vec::with_capacity(workers.max(1));
    for _ in 1..workers.max(1) {
        let validator = validator.as_ref().map(|v| v.fresh());
        pipelines.push(
            TablePipeline::new(decoder.fresh()?, contract, event_time, max_record_bytes)?
                .with_validator(validator)
                .with_header_columns(header_columns),
        );
    }
    pipelines.insert(
        0,
        TablePipeline::new(decoder, contract, event_time, max_record_bytes)?
            .with_validator(validator)
            .with_header_columns(header_columns),
    );
    Ok(pipelines)
}

/// The workers of one table, and what they hand back.
pub struct Pool {
    jobs: Vec<sync_mpsc::SyncSender<Job>>,
    /// Jobs taken by the workers so far: a dealer finding every queue full waits for takes,
    /// whichever workers make them, rather than for one worker's queue (that worker may be busy
    /// encoding while another runs dry).
    taken: Arc<Takes>,
    /// Takes a dealer that found every queue full waits for before it deals again: half a
    /// queue, so that no worker can run dry meanwhile (it still has the other half), and the
    /// dealer and the workers trade one wake-up per this many runs rather than one per run.
    wake_after: u64,
    /// The worker tried first for the next run.
    next: usize,
    /// Per worker: Parquet bytes written since its last flush marker.
    buffered: Arc<Vec<AtomicU64>>,
    epoch: u64,
}

/// A worker's part of an epoch, as it arrives: (worker, epoch, part).
pub type Arrival = (usize, u64, Result<Part, WorkerError>);

/// Where the workers' parts arrive (one per worker and epoch, in each worker's epoch order).
pub type Parts = mpsc::Receiver<Arrival>;

impl Pool {
    /// Starts one worker per pipeline, each writing files of its own with `files`, on the
    /// async runtime of `runtime` for their uploads; each worker's queue holds `queued` runs.
    pub fn start(
        name: &str,
        pipelines: Vec<TablePipeline>,
        mut files: impl FnMut() -> Result<FileWriter, SinkError>,
        max_record_bytes: usize,
        queued: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(Pool, Parts), WorkerError> {
        let queued = queued.max(2);
        let n = pipelines.len();
        let buffered: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let taken = Arc::new(Takes::new());
        let (done_tx, done_rx) = mpsc::channel(n * 2);
        let mut jobs = Vec::with_capacity(n);
        for (index, pipeline) in pipelines.into_iter().enumerate() {
            let (tx, rx) = sync_mpsc::sync_channel::<Job>(queued);
            jobs.push(tx);
            let mut worker = Worker {
                pipeline,
                files: files()?,
                rows: 0,
                dead: Vec::new(),
                failed: None,
                max_record_bytes,
                buffered: Arc::clone(&buffered),
                taken: Arc::clone(&taken),
                index,
            };
            let done = done_tx.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || worker.work(rx, done, &runtime))
                .map_err(|e| WorkerError::Gone(format!("cannot start a worker thread: {e}")))?;
        }
        Ok((Pool { jobs, taken, wake_after: (queued / 2) as u64, next: 0, buffered, epoch: 0 }, done_rx))
    }

    pub fn workers(&self) -> usize {
        self.jobs.len()
    }

    /// Parquet bytes the workers hold since their last flush marker.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Hands `run` to the next worker in turn with room in its queue; when every queue is
    /// full, waits until the workers, whichever they are, have taken half a queue's worth.
    pub fn deal(&mut self, run: Run) -> Result<(), WorkerError> {
        let n = self.jobs.len();
        let mut job = Job::Run(run);
        loop {
            let seen = self.taken.count.load(Ordering::SeqCst);
            for i in 0..n {
                let w = (self.next + i) % n;
                match self.jobs[w].try_send(job) {
                    Ok(()) => {
                        self.next = (w + 1) % n;
                        return Ok(());
                    }
                    Err(sync_mpsc::TrySendError::Full(back)) => job = back,
                    Err(sync_mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
                }
            }
            // Every queue was full: wait until half a queue's worth has been taken (takes that
            // came in between count: the count has moved past `seen`).
            self.taken.wait(seen, self.wake_after);
        }
    }

    /// Queues a flush marker behind every run dealt: the epoch's number, whose parts arrive
    /// on [`Parts`] (one per worker).
    pub fn end_epoch(&mut self) -> Result<u64, WorkerError> {
        let epoch = self.epoch;
        self.epoch += 1;
        for jobs in &self.jobs {
            jobs.send(Job::Flush { epoch }).map_err(|_| gone())?;
        }
        Ok(epoch)
    }

    /// Drops, in every worker, what it holds of the runs dealt so far (no part comes of them).
    pub fn abandon(&mut self) -> Result<(), WorkerError> {
        for jobs in &self.jobs {
            jobs.send(Job::Abandon).map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Abandons what the workers hold and returns once every run dealt so far has been
    /// dropped (a worker that ended has dropped its queue): after this no message of a run
    /// is alive, and the consumer they came from may go.
    pub fn drain(&mut self) {
        let (answer, answered) = sync_mpsc::channel();
        let asked = self
            .jobs
            .iter()
            .filter(|jobs| jobs.send(Job::Abandon).is_ok() && jobs.send(Job::Barrier(answer.clone())).is_ok())
            .count();
        drop(answer);
        for _ in 0..asked {
            if answered.recv().is_err() {
                break;
            }
        }
    }
}

fn gone() -> WorkerError {
    WorkerError::Gone("a worker thread ended".into())
}

/// Collects the parts of `epoch` (one per worker) from `parts` and from `early` (parts that
/// arrived while an earlier epoch was collected); parts of later epochs are left in `early`.
/// The first worker error is returned once all parts are in.
pub async fn collect(
    parts: &mut Parts,
    early: &mut Vec<Arrival>,
    epoch: u64,
    workers: usize,
) -> Result<Vec<Part>, WorkerError> {
    let mut got: Vec<Result<Part, WorkerError>> = Vec::with_capacity(workers);
    let mut i = 0;
    while i < early.len() {
        if early[i].1 == epoch {
            got.push(early.swap_remove(i).2);
        } else {
            i += 1;
        }
    }
    while got.len() < workers {
        let Some(arrival) = parts.recv().await else { return Err(gone()) };
        if arrival.1 == epoch {
            got.push(arrival.2);
        } else {
            early.push(arrival);
        }
    }
    got.into_iter().collect()
}

struct Worker {
    pipeline: TablePipeline,
    files: FileWriter,
    /// Rows written since the last flush marker.
    rows: u64,
    dead: Vec<DeadLetter>,
    /// Why this epoch's work was dropped; handed back at its flush marker.
    failed: Option<WorkerError>,
    max_record_bytes: usize,
    buffered: Arc<Vec<AtomicU64>>,
    taken: Arc<Takes>,
    index: usize,
}

impl Worker {
    fn work(&mut self, jobs: sync_mpsc::Receiver<Job>, done: mpsc::Sender<Arrival>, runtime: &tokio::runtime::Handle) {
        for job in jobs {
            self.taken.took();
            match job {
                Job::Run(run) => {
                    if self.failed.is_some() {
                        continue;
                    }
                    if let Err(e) = self.take(run, runtime) {
                        self.drop_all();
                        self.failed = Some(e);
                    }
                }
                Job::Flush { epoch } => {
                    let part = match self.failed.take() {
                        Some(e) => Err(e),
                        None => runtime.block_on(self.flush()),
                    };
                    if part.is_err() {
                        self.drop_all();
                    }
                    if done.blocking_send((self.index, epoch, part)).is_err() {
                        return;
                    }
                }
                Job::Abandon => {
                    self.drop_all();
                    self.failed = None;
                }
                Job::Barrier(answer) => {
                    let _ = answer.send(());
                }
            }
        }
    }

    fn drop_all(&mut self) {
        self.pipeline.discard();
        self.files.abandon();
        self.rows = 0;
        self.dead.clear();
        self.buffered[self.index].store(0, Ordering::Relaxed);
    }

    fn take(&mut self, run: Run, runtime: &tokio::runtime::Handle) -> Result<(), WorkerError> {
        match run {
            Run::File { source, first, bytes, start } => {
                let mut reader = DelimitedReader::new(&bytes[start..], self.max_record_bytes);
                // One value for all the run's records; only the index changes.
                let mut coordinates = Coordinates::File { path: Arc::clone(&source), index: first };
                loop {
                    let frame =
                        reader.next_frame().map_err(|cause| WorkerError::Input { file: source.to_string(), cause })?;
                    let Some((at, frame)) = frame else { break };
                    if let Coordinates::File { index, .. } = &mut coordinates {
                        *index = first + at;
                    }
                    match frame {
                        Frame::Record(bytes) => self.pipeline.push(bytes, &coordinates),
                        Frame::Oversized { len } => self.pipeline.dead_letter_oversized(len, None, coordinates.clone()),
                        Frame::Truncated { expected, partial } => {
                            self.pipeline.dead_letter(cut_record(expected, partial, coordinates.clone()))
                        }
                    }
                    if self.pipeline.pending() >= DECODE_BATCH {
                        runtime.block_on(self.hand_over())?;
                    }
                }
            }
            Run::Kafka(run) => {
                let Some(topic) = run.topic else { return Ok(()) };
                let mut start = 0;
                for record in run.records {
                    let coordinates = Coordinates::Kafka {
                        topic: Arc::clone(&topic),
                        partition: record.partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                    };
                    match record.body {
                        KafkaBody::Copied { end, headers } => {
                            let payload = &run.bytes[start..end];
                            start = end;
                            self.pipeline.push_with_headers(payload, &coordinates, || headers.unwrap_or_default());
                        }
                        #[cfg(feature = "kafka")]
                        KafkaBody::Held { message, skip } => {
                            let view = message.view();
                            let payload = view.payload().map_or(&[][..], |v| v.get(skip..).unwrap_or_default());
                            self.pipeline
                                .push_with_headers(payload, &coordinates, || view.headers().unwrap_or_default());
                        }
                    }
                    if self.pipeline.pending() >= DECODE_BATCH {
                        runtime.block_on(self.hand_over())?;
                    }
                }
            }
            Run::Dead(letter) => {
                self.pipeline.dead_letter(letter);
            }
        }
        Ok(())
    }

    /// Moves the decoded rows into Parquet files and the dead letters aside (nothing visible).
    async fn hand_over(&mut self) -> Result<(), WorkerError> {
        let now = chrono::Utc::now().timestamp_micros();
        let (batch, dead) = self.pipeline.take(now)?;
        if let Some(batch) = batch {
            self.rows += batch.num_rows() as u64;
            self.files.write(batch).await?;
            self.buffered[self.index].store(self.files.buffered_bytes() as u64, Ordering::Relaxed);
        }
        self.dead.extend(dead);
        Ok(())
    }

    /// This worker's part of the epoch: its files finished, its rows and dead letters.
    async fn flush(&mut self) -> Result<Part, WorkerError> {
        self.hand_over().await?;
        let files = self.files.finish().await?;
        self.buffered[self.index].store(0, Ordering::Relaxed);
        Ok(Part { files, rows: std::mem::take(&mut self.rows), dead: std::mem::take(&mut self.dead) })
    }
}

/// The dead letter of a record the file's end cut short.
pub fn cut_record(expected: Option<u64>, partial: Vec<u8>, coordinates: Coordinates) -> DeadLetter {
    DeadLetter {
        message: match expected {
            Some(len) => format!("the file ends {} bytes into a {len}-byte record", partial.len()),
            None => "the file ends inside a record's length prefix".to_string(),
        },
        raw: partial,
        reason: "truncated".into(),
        field_path: String::new(),
        coordinates,
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{EventTime, ParquetOptions, TimeUnit};
    use crate::decode::{DecodeOptions, Decoder};
    use crate::sink::{Location, TableWriter};

    #[test]
    fn drain_returns_only_once_every_run_dealt_is_dropped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let fds = protox::compile(["protolake/examples/v1/events.proto"], [dir]).unwrap();
        let pool = crate::decode::Pool::from_prost(&fds).unwrap();
        let decoder = Decoder::new(&pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
        let event_time = EventTime { field: "ts_ms".into(), unit: Some(TimeUnit::Milliseconds) };
        let pipelines = pipelines(decoder, None, None, Some(&event_time), 1 << 20, &[], 3).unwrap();
        let work = tempfile::tempdir().unwrap();
        let place = Location::new(work.path().join("t").display().to_string());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = runtime
            .block_on(TableWriter::open_or_create(
                &place,
                pipelines[0].table_schema(),
                pipelines[0].partition_columns(),
                HashMap::new(),
                &ParquetOptions::default(),
                64 << 20,
            ))
            .unwrap();
        let (mut pool, _parts) =
            Pool::start("drain-test", pipelines, || data.file_writer(), 1 << 20, FILE_RUNS_QUEUED, runtime.handle())
                .unwrap();
        // Each run holds a reference to `source`: a run alive anywhere in the pool keeps one.
        // Records that do not decode, so that each run costs its worker some work.
        let source: Arc<str> = Arc::from("in.pb");
        let mut bytes = Vec::new();
        for i in 0..2_000u32 {
            crate::source::file::write_delimited(&mut bytes, &i.to_le_bytes().repeat(9)).unwrap();
        }
        for r in 0..40 {
            pool.deal(Run::File { source: Arc::clone(&source), first: r * 2_000, bytes: bytes.clone(), start: 0 })
                .unwrap();
        }
        pool.drain();
        assert_eq!(Arc::strong_count(&source), 1, "a run dealt before drain() is still alive after it");
        // The workers are clean and take runs again.
        pool.deal(Run::File { source: Arc::clone(&source), first: 0, bytes, start: 0 }).unwrap();
        pool.drain();
        assert_eq!(Arc::strong_count(&source), 1);
    }
}
