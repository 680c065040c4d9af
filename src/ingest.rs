//! The ingest daemon: each configured table is one Kafka consumer-group member whose records
//! go through the table's pipeline into its Delta table and dead-letter table.
//!
//! Exactly-once. Every Delta commit carries one txn action per partition this daemon owns
//! (app id [`app_id`], version = the last offset the table holds), so the table is the only
//! record of progress:
//! * on every assignment, each partition is started at the offset after the table's;
//! * a commit is checked by Delta against every commit made since this writer's snapshot; one
//!   that recorded any of the same partitions (another daemon that still believed it owned
//!   one) fails it, and the batch is dropped and re-read from the table's positions, so no
//!   offset is committed twice and positions never move backwards;
//! * dead letters are committed to the dead-letter table before the rows to the data table,
//!   and a dead letter at or below the dead-letter table's position is never written again.
//!
//! Kafka's committed group offsets are written after each Delta commit, for lag monitoring only.
//!
//! Threads. Each table runs on a blocking thread of its own: it polls its consumer and deals
//! runs of messages (their payloads copied out, not yet decoded) to the table's workers
//! ([`crate::workers`]: `workers` threads, each with its own decoder, rules and Parquet files),
//! and commits (Delta calls run on the async runtime through its handle). A commit queues a
//! flush marker behind every run dealt, takes every worker's files up to it, and commits them
//! with the last offset dealt per partition: the same positions as with one thread, whichever
//! worker decoded which run. Rebalance callbacks run inside `poll` on the consumer's thread; the
//! table's state sits behind a mutex that the loop never holds while polling.
//!
//! Memory. The open batch is bounded by `flush.max_rows` / `flush.max_bytes`; librdkafka's
//! pre-fetch queue by `queued.max.messages.kbytes`. While a commit runs nothing is polled, so
//! the pre-fetch queue fills and librdkafka stops fetching: a backlog never grows memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use crate::config::{FlushPolicy, IngestConfig, KafkaConfig, TableConfig};
use crate::contract::Contract;
use crate::decode::Decoder;
use crate::metrics::{Health, Metrics, OutcomeLabel, PartitionLabel, ReasonLabel, TableHealth, TableLabel};
use crate::pipeline::{DeadLetter, PipelineError};
use crate::sink::{dead_letter_batch, CommitInfo, SinkError, TablePair, TableWriter, WrittenFiles};
use crate::source::framing::Unframer;
use crate::source::kafka::{app_id, consumer_config, producer_config, starts_at_end, FetchQueue, Fetched, MessageView};
use crate::source::Coordinates;
use crate::workers::{Arrival, KafkaRun, Parts, Pool, Run, WorkerError};

/// Messages in one run dealt to a worker (or fewer, at a commit).
const RUN_RECORDS: usize = 2048;
/// The longest a poll blocks, so a stop request is noticed promptly.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("table {table}: no topic; set `topic = \"...\"` in [tables.{table}] to ingest it")]
    NoTopic { table: String },
    #[error("table {table}: {cause}")]
    Pipeline { table: String, cause: PipelineError },
    #[error("table {table}: {cause}")]
    Sink { table: String, cause: SinkError },
    #[error("table {table}: Kafka: {cause}")]
    Kafka { table: String, cause: KafkaError },
    #[error("table {table}: {message}")]
    Stopped { table: String, message: String },
    #[error("table {table}: {cause}")]
    Workers { table: String, cause: WorkerError },
}

/// A table ready to ingest: its config and what was resolved from its descriptor.
pub struct TableSetup {
    pub config: TableConfig,
    pub decoder: Decoder,
    pub validator: Option<crate::validate::RecordValidator>,
    /// The pinned contract and its version; None in ad-hoc mode.
    pub contract: Option<(u32, Contract)>,
    /// The message's index path in its file (Confluent framing).
    pub index_path: Vec<i32>,
}

/// How a run ends besides a stop request.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Commit and stop once no message has arrived for this long (and at least one partition
    /// is assigned): for one-off catch-up runs, tests and benchmarks.
    pub exit_when_idle: Option<Duration>,
    /// Threads that decode and encode each table's records (None: one per available core).
    pub workers: Option<usize>,
}

/// What one table's loop did.
#[derive(Debug, Clone, Default)]
pub struct TableReport {
    pub table: String,
    pub records: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub skipped: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub table_version: Option<u64>,
    /// From the first message taken to the last, plus the time of the commit that made the
    /// last one durable; a wait for more messages (as `exit_when_idle` waits) is not counted.
    pub busy: Duration,
}

/// Runs every table until `stop` is set (SIGTERM/SIGINT) or, with `exit_when_idle`, until
/// each table has caught up. Open batches are committed before returning.
pub async fn run(
    tables: Vec<TableSetup>,
    kafka: &KafkaConfig,
    ingest: &IngestConfig,
    options: &IngestOptions,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Vec<TableReport>, IngestError> {
    let mut loops = Vec::new();
    for setup in tables {
        let name = setup.config.name.clone();
        let topic = setup.config.topic.clone().ok_or_else(|| IngestError::NoTopic { table: name.clone() })?;
        let table_health = health.table(&name);
        let workers = crate::config::workers_or_cores(options.workers);
        let state = TableState::open(setup, kafka, ingest, workers, metrics.clone()).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            runtime: Handle::current(),
            fatal: Mutex::new(None),
            fetch: Mutex::new(None),
            metrics: metrics.clone(),
            label: TableLabel { table: name.clone() },
        });
        let consumer_config = consumer_config(kafka, &name);
        let stop = stop.clone();
        let options = options.clone();
        let retry_for = ingest.commit_retry_for;
        loops.push((
            name,
            stop.clone(),
            tokio::task::spawn_blocking(move || {
                table_loop(shared, consumer_config, topic, &options, &stop, &table_health, retry_for)
            }),
        ));
    }
    let mut reports = Vec::new();
    let mut first_error = None;
    for (name, stop, handle) in loops {
        match handle.await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => {
                // One table failing stops the others (committing what they hold).
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(e);
            }
            Err(join) => {
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(IngestError::Stopped { table: name, message: join.to_string() });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

/// A partition: its topic (shared) and number.
type Tp = (Arc<str>, i32);

/// What the consumer context and the loop share.
struct Shared {
    state: Mutex<TableState>,
    runtime: Handle,
    /// An error raised inside a callback, for the loop to stop on.
    fatal: Mutex<Option<IngestError>>,
    /// Where the loop reads messages from; the rebalance callback routes each partition here
    /// before assigning it. None before the consumer exists and once it is closing.
    fetch: Mutex<Option<Arc<FetchQueue>>>,
    metrics: Arc<Metrics>,
    label: TableLabel,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_fatal(&self, e: IngestError) {
        error!(table = %self.label.table, error = %e, "stopping");
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
    }

    fn take_fatal(&self) -> Option<IngestError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Routes the partitions about to be assigned to the fetch queue.
    fn route(&self, tpl: &TopicPartitionList) {
        let fetch = self.fetch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(fetch) = fetch else { return };
        for e in tpl.elements() {
            if !fetch.take_partition(e.topic(), e.partition()) {
                // Its messages come on the consumer's own queue instead, all of them.
                debug!(table = %self.label.table, topic = e.topic(), partition = e.partition(), "no partition queue");
            }
        }
    }
}

struct IngestContext {
    shared: Arc<Shared>,
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let table = &self.shared.label.table;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", %table, fac, "{message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", %table, fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", %table, fac, "{message}"),
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", %table, fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.metrics.kafka_errors.get_or_create(&self.shared.label).inc();
        warn!(table = %self.shared.label.table, %error, reason, "Kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let label = PartitionLabel { table: self.shared.label.table.clone(), topic: topic.clone(), partition };
                self.shared.metrics.lag.get_or_create(&label).set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = {
                    let mut state = self.shared.state();
                    self.shared.runtime.block_on(state.on_assign(tpl, cooperative))
                };
                if assigned.is_ok() {
                    self.shared.route(tpl);
                }
                let result = match assigned {
                    Ok(()) if cooperative => consumer.incremental_assign(tpl),
                    Ok(()) => consumer.assign(tpl),
                    Err(e) => {
                        // Without the table's positions nothing may be read: take no partitions.
                        self.shared.set_fatal(e);
                        if cooperative {
                            Ok(())
                        } else {
                            consumer.unassign()
                        }
                    }
                };
                if let Err(e) = result {
                    self.shared.set_fatal(IngestError::Kafka { table: self.shared.label.table.clone(), cause: e });
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let offsets = {
                    let mut state = self.shared.state();
                    self.shared.runtime.block_on(state.on_revoke(tpl, cooperative, lost))
                };
                if !lost {
                    commit_group_offsets(consumer, &offsets, CommitMode::Sync);
                }
                let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = result {
                    warn!(table = %self.shared.label.table, error = %e, "unassigning partitions");
                }
            }
            other => {
                warn!(table = %self.shared.label.table, error = ?other, "rebalance error; dropping the assignment");
                let mut state = self.shared.state();
                let all: Vec<Tp> = state.owned.keys().cloned().collect();
                state.abandon();
                state.release(&all);
                drop(state);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Writes the Delta-committed positions to Kafka's group offsets (for lag monitoring).
fn commit_group_offsets<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &[(Tp, i64)], mode: CommitMode) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), last) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(last + 1));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        debug!(error = %e, "committing group offsets (used for lag only)");
    }
}

/// A consumed message as the table takes it: read through its view, and kept in a run
/// either as a copy (a message of the consumer's queue, which librdkafka's event owns) or
/// whole (a message of the fetch queue, read in place by a worker).
trait Incoming {
    fn view(&self) -> MessageView<'_>;
    /// Adds the message to `run`, its payload `skip` bytes into its value; `at` is its
    /// (partition, offset, timestamp), as the caller read them.
    fn keep(self, run: &mut KafkaRun, skip: usize, at: (i32, i64, Option<i64>));
}

impl Incoming for MessageView<'_> {
    fn view(&self) -> MessageView<'_> {
        *self
    }

    fn keep(self, run: &mut KafkaRun, skip: usize, (partition, offset, timestamp_ms): (i32, i64, Option<i64>)) {
        let payload = self.payload().map_or(&[][..], |v| &v[skip..]);
        run.push(payload, partition, offset, timestamp_ms, self.headers());
    }
}

impl Incoming for Fetched {
    fn view(&self) -> MessageView<'_> {
        Fetched::view(self)
    }

    fn keep(self, run: &mut KafkaRun, skip: usize, (partition, offset, timestamp_ms): (i32, i64, Option<i64>)) {
        run.hold(self, skip, partition, offset, timestamp_ms);
    }
}

/// One table's batch, writers and positions.
struct TableState {
    name: String,
    /// The workers that decode and encode, the parts of epochs they hand back, and parts that
    /// arrived early (none: an epoch is collected right after its marker).
    pool: Pool,
    parts: Parts,
    early: Vec<Arrival>,
    /// Messages taken and not yet dealt.
    run: KafkaRun,
    /// Records taken into the open batch (dealt or not).
    records_since_commit: u64,
    data: TableWriter,
    dlq: TableWriter,
    unframer: Unframer,
    contract_version: String,
    flush: FlushPolicy,
    /// Owned partitions → the last offset the data table holds (-1: none).
    owned: BTreeMap<Tp, i64>,
    /// Owned partitions → the last offset the dead-letter table holds (-1: none).
    dlq_done: BTreeMap<Tp, i64>,
    /// Last offset taken into the open batch, per partition.
    pending: BTreeMap<Tp, i64>,
    dead_since_commit: Vec<DeadLetter>,
    /// Dead letters handed to the DLQ writer but not yet committed.
    dlq_dirty: bool,
    rows_since_commit: u64,
    dead_letters_since_commit: u64,
    /// Dead letters written to the DLQ writer but not yet committed, by reason.
    reasons_since_commit: BTreeMap<String, u64>,
    input_bytes_since_commit: u64,
    oldest_pending: Option<Instant>,
    start_at_end: bool,
    dlq_topic: Option<(String, BaseProducer)>,
    metrics: Arc<Metrics>,
    label: TableLabel,
    report: TableReport,
    /// When partitions were last assigned (an idle run waits for messages from then on).
    assigned_at: Instant,
    first_message_at: Option<Instant>,
    /// When the loop last took messages (noted per batch, not per message).
    last_taken_at: Option<Instant>,
    /// Since when commits have been failing (None after a success).
    failing_since: Option<Instant>,
    /// Partitions started at an explicit offset whose first message has not arrived yet.
    awaiting: BTreeMap<Tp, i64>,
    /// The topic of the last message (shared by keys and coordinates), by librdkafka's handle.
    topic_name: Option<(usize, Arc<str>)>,
    records_unreported: u64,
    bytes_unreported: u64,
}

enum Committed {
    /// Nothing was pending.
    Nothing,
    /// The batch is in the table; these positions can go to Kafka's group offsets.
    Done(Vec<(Tp, i64)>),
    /// Another writer committed some of the same partitions: the batch was dropped and the
    /// positions reloaded; the consumer must re-read from them.
    Conflict,
}

impl TableState {
    async fn open(
        setup: TableSetup,
        kafka: &KafkaConfig,
        _ingest: &IngestConfig,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IngestError> {
        let name = setup.config.name.clone();
        let sink_err = |cause| IngestError::Sink { table: name.clone(), cause };
        let contract_version = setup.contract.as_ref().map_or("adhoc".to_string(), |(v, _)| format!("v{v}"));
        let max_record_bytes = setup.config.max_record_bytes;
        let pipelines = crate::workers::pipelines(
            setup.decoder,
            setup.validator,
            setup.contract.as_ref().map(|(_, c)| c),
            setup.config.event_time.as_ref(),
            max_record_bytes,
            &setup.config.header_columns,
            workers,
        )
        .map_err(|cause| workers_error(&name, cause))?;
        let properties: std::collections::HashMap<String, String> = [
            ("protolake.contractVersion".to_string(), contract_version.clone()),
            ("delta.checkpointInterval".to_string(), setup.config.checkpoint_interval.to_string()),
        ]
        .into();
        let (data, dlq) = TablePair {
            location: &setup.config.location,
            dlq_location: &setup.config.dlq_location,
            schema: pipelines[0].table_schema(),
            partition_columns: pipelines[0].partition_columns(),
            properties,
            parquet: &setup.config.parquet,
            target_file_size: setup.config.flush.target_file_size,
        }
        .open()
        .await
        .map_err(sink_err)?;
        let (pool, parts) = Pool::start(
            &format!("ingest-{name}"),
            pipelines,
            || data.file_writer(),
            max_record_bytes,
            crate::workers::KAFKA_RUNS_QUEUED,
            &Handle::current(),
        )
        .map_err(|cause| workers_error(&name, cause))?;
        let dlq_topic = match &setup.config.dlq_topic {
            None => None,
            Some(topic) => {
                let producer: BaseProducer = producer_config(kafka)
                    .create()
                    .map_err(|cause| IngestError::Kafka { table: name.clone(), cause })?;
                Some((topic.clone(), producer))
            }
        };
        Ok(TableState {
            unframer: Unframer::new(setup.config.framing.clone(), setup.index_path),
            pool,
            parts,
            early: Vec::new(),
            run: KafkaRun::default(),
            records_since_commit: 0,
            data,
            dlq,
            contract_version,
            flush: setup.config.flush.clone(),
            owned: BTreeMap::new(),
            dlq_done: BTreeMap::new(),
            pending: BTreeMap::new(),
            dead_since_commit: Vec::new(),
            dlq_dirty: false,
            rows_since_commit: 0,
            dead_letters_since_commit: 0,
            reasons_since_commit: BTreeMap::new(),
            input_bytes_since_commit: 0,
            oldest_pending: None,
            start_at_end: starts_at_end(kafka),
            dlq_topic,
            label: TableLabel { table: name.clone() },
            report: TableReport { table: name.clone(), ..TableReport::default() },
            assigned_at: Instant::now(),
            first_message_at: None,
            last_taken_at: None,
            failing_since: None,
            awaiting: BTreeMap::new(),
            topic_name: None,
            records_unreported: 0,
            bytes_unreported: 0,
            metrics,
            name,
        })
    }

    fn sink_err(&self, cause: SinkError) -> IngestError {
        IngestError::Sink { table: self.name.clone(), cause }
    }

    /// The offset to start a partition at, from the table's last offset.
    fn start_offset(&self, last: i64) -> Offset {
        if last >= 0 {
            Offset::Offset(last + 1)
        } else if self.start_at_end {
            Offset::End
        } else {
            Offset::Beginning
        }
    }

    /// Reads the tables' positions of `tps` (after loading what other writers committed).
    async fn load_positions(&mut self, tps: &[Tp]) -> Result<(), IngestError> {
        self.data.refresh().await.map_err(|e| self.sink_err(e))?;
        self.dlq.refresh().await.map_err(|e| self.sink_err(e))?;
        for tp in tps {
            let id = app_id(&tp.0, tp.1);
            let data = self.data.committed_position(&id).await.map_err(|e| self.sink_err(e))?.unwrap_or(-1);
            let dlq = self.dlq.committed_position(&id).await.map_err(|e| self.sink_err(e))?.unwrap_or(-1);
            self.owned.insert(tp.clone(), data.max(-1));
            self.dlq_done.insert(tp.clone(), dlq.max(-1));
        }
        Ok(())
    }

    async fn on_assign(&mut self, tpl: &mut TopicPartitionList, cooperative: bool) -> Result<(), IngestError> {
        let tps: Vec<Tp> = tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        if !cooperative {
            // An eager assignment is the whole new set (the revocation before it emptied ours).
            self.abandon();
            self.owned.clear();
            self.dlq_done.clear();
        } else if !self.pending.is_empty() {
            // The snapshot must not move under an open batch: commit it first.
            self.commit_or_abandon().await;
        }
        self.load_positions(&tps).await?;
        for tp in &tps {
            self.await_start(tp);
            let offset = self.start_offset(self.owned[tp]);
            tpl.set_partition_offset(&tp.0, tp.1, offset)
                .map_err(|cause| IngestError::Kafka { table: self.name.clone(), cause })?;
        }
        info!(table = %self.name, partitions = ?tps.iter().map(|(t, p)| format!("{t}/{p}@{}", self.owned[&(t.clone(), *p)] + 1)).collect::<Vec<_>>(), "assigned");
        self.metrics.assigned.get_or_create(&self.label).set(self.owned.len() as i64);
        self.assigned_at = Instant::now();
        Ok(())
    }

    /// Commits what is open for the revoked partitions (when the assignment was not lost),
    /// then forgets them. Returns the positions committed.
    async fn on_revoke(&mut self, tpl: &TopicPartitionList, _cooperative: bool, lost: bool) -> Vec<(Tp, i64)> {
        let tps: Vec<Tp> = tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        let committed = if lost {
            // Another member may already own them; its commits win.
            self.abandon();
            Vec::new()
        } else {
            self.commit_or_abandon().await
        };
        self.release(&tps);
        info!(table = %self.name, partitions = tps.len(), lost, "revoked");
        committed
    }

    /// Notes the offset a partition is (re)started at, to check the first message against it.
    fn await_start(&mut self, tp: &Tp) {
        match self.owned.get(tp) {
            Some(&last) if last >= 0 => self.awaiting.insert(tp.clone(), last + 1),
            _ => self.awaiting.remove(tp),
        };
    }

    fn release(&mut self, tps: &[Tp]) {
        for tp in tps {
            self.awaiting.remove(tp);
            self.owned.remove(tp);
            self.dlq_done.remove(tp);
            self.pending.remove(tp);
        }
        self.metrics.assigned.get_or_create(&self.label).set(self.owned.len() as i64);
    }

    /// Commits the open batch; on failure the batch is dropped (its records will be read
    /// again by whoever owns their partitions next).
    async fn commit_or_abandon(&mut self) -> Vec<(Tp, i64)> {
        match self.commit().await {
            Ok(Committed::Done(offsets)) => offsets,
            Ok(Committed::Nothing | Committed::Conflict) => Vec::new(),
            Err(e) => {
                warn!(table = %self.name, error = %e, "commit failed; the open batch is dropped and will be read again");
                self.abandon();
                Vec::new()
            }
        }
    }

    /// Takes messages of one partition, in the order consumed, into the open batch. The
    /// partition's bookkeeping (owned, pending, awaited offsets) is looked up once for the
    /// group rather than once a message. Empties `group`; answers how many messages it held
    /// (taken or skipped).
    fn accept<M: Incoming>(&mut self, group: &mut Vec<M>) -> Result<usize, IngestError> {
        let taken = group.len();
        let Some(first) = group.first().map(Incoming::view) else { return Ok(0) };
        // The topic's name is shared by every key and coordinate (no allocation per message).
        let topic = match &self.topic_name {
            Some((handle, t)) if *handle == first.topic_handle() => t.clone(),
            _ => {
                let t: Arc<str> = Arc::from(first.topic());
                self.topic_name = Some((first.topic_handle(), t.clone()));
                t
            }
        };
        let (handle, tp) = (first.topic_handle(), (topic, first.partition()));
        let Some(&done) = self.owned.get(&tp) else {
            // Messages fetched before their partition was revoked.
            self.skip(taken);
            group.clear();
            return Ok(taken);
        };
        // Offsets at or below this were committed or are already in the open batch.
        let mut last = self.pending.get(&tp).map_or(done, |&p| p.max(done));
        let before = last;
        let mut skipped = 0;
        if self.run.topic.as_ref().is_some_and(|t| *t != tp.0) {
            self.deal()?;
        }
        for incoming in group.drain(..) {
            let message = incoming.view();
            debug_assert_eq!((message.topic_handle(), message.partition()), (handle, tp.1));
            let offset = message.offset();
            if offset <= last {
                skipped += 1;
                continue;
            }
            if last == before {
                self.check_start(&tp, offset);
            }
            last = offset;
            let value = message.payload();
            let len = value.map_or(0, |v| v.len() as u64);
            self.report.records += 1;
            self.records_unreported += 1;
            self.input_bytes_since_commit += len;
            self.bytes_unreported += len;
            self.records_since_commit += 1;
            match value.map(|v| (v, self.unframer.payload(v))) {
                Some((value, Ok(payload))) => {
                    self.run.topic.get_or_insert_with(|| tp.0.clone());
                    // The payload is the value past its framing.
                    let skip = value.len() - payload.len();
                    debug_assert_eq!(payload.as_ptr(), value[skip..].as_ptr());
                    let timestamp_ms = message.timestamp_ms();
                    incoming.keep(&mut self.run, skip, (tp.1, offset, timestamp_ms));
                    if self.run.len() >= RUN_RECORDS {
                        self.deal()?;
                    }
                }
                Some((raw, Err(e))) => self.dead_since_commit.push(DeadLetter {
                    raw: raw.to_vec(),
                    reason: e.reason.into(),
                    message: e.message,
                    field_path: String::new(),
                    coordinates: message.coordinates(tp.0.clone()),
                    headers: message.headers().unwrap_or_default(),
                }),
                None => self.dead_since_commit.push(DeadLetter {
                    raw: Vec::new(),
                    reason: "no_value".into(),
                    message: "the message has no value (a tombstone?); a record needs the serialized message".into(),
                    field_path: String::new(),
                    coordinates: message.coordinates(tp.0.clone()),
                    headers: message.headers().unwrap_or_default(),
                }),
            }
        }
        if skipped > 0 {
            self.skip(skipped);
        }
        if last > before {
            self.pending.insert(tp, last);
            if self.oldest_pending.is_none() {
                let now = Instant::now();
                self.oldest_pending = Some(now);
                self.first_message_at.get_or_insert(now);
            }
        }
        Ok(taken)
    }

    /// Checks the first message taken after a partition was (re)started against the offset asked for.
    fn check_start(&mut self, tp: &Tp, offset: i64) {
        if let Some(start) = self.awaiting.remove(tp) {
            if offset > start {
                // Normal for compacted topics and transaction markers; anything else means the
                // broker skipped records, which must not pass unnoticed.
                self.metrics.offset_gaps.get_or_create(&self.label).inc_by((offset - start) as u64);
                warn!(
                    table = %self.name, topic = %tp.0, partition = tp.1, asked = start, got = offset,
                    "the first message after a (re)start is not at the requested offset: {} offsets skipped \
                     (a compacted topic or transaction markers, or a broker fault)",
                    offset - start
                );
            }
        }
    }

    /// Hands the messages taken to a worker.
    fn deal(&mut self) -> Result<(), IngestError> {
        self.report_received();
        if self.run.is_empty() {
            return Ok(());
        }
        // The next run starts at this one's size: no regrowing as messages are taken.
        let next = KafkaRun::with_capacity(RUN_RECORDS, self.run.bytes.len() + self.run.bytes.len() / 8);
        let run = std::mem::replace(&mut self.run, next);
        self.pool.deal(Run::Kafka(run)).map_err(|cause| IngestError::Workers { table: self.name.clone(), cause })
    }

    /// Moves the per-message counts into the metrics (done per batch, not per message).
    fn report_received(&mut self) {
        if self.records_unreported > 0 {
            self.metrics.records.get_or_create(&self.label).inc_by(self.records_unreported);
            self.metrics.bytes.get_or_create(&self.label).inc_by(self.bytes_unreported);
            self.records_unreported = 0;
            self.bytes_unreported = 0;
        }
    }

    fn skip(&mut self, messages: usize) {
        self.report.skipped += messages as u64;
        self.metrics.skipped.get_or_create(&self.label).inc_by(messages as u64);
    }

    /// Whether the open batch should be committed now.
    fn due(&self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.records_since_commit >= self.flush.max_rows as u64
            || self.input_bytes_since_commit >= self.flush.max_bytes
            || self.pool.buffered_bytes() >= self.flush.max_bytes
            || self.oldest_pending.is_some_and(|t| t.elapsed() >= self.flush.max_latency)
    }

    /// Drops the open batch.
    fn abandon(&mut self) {
        self.run = KafkaRun::default();
        if let Err(e) = self.pool.abandon() {
            warn!(table = %self.name, error = %e, "resetting the workers");
        }
        if let Err(e) = self.data.abandon().and_then(|()| self.dlq.abandon()) {
            warn!(table = %self.name, error = %e, "resetting the writers");
        }
        self.dead_since_commit.clear();
        self.dlq_dirty = false;
        self.reasons_since_commit.clear();
        self.pending.clear();
        self.rows_since_commit = 0;
        self.dead_letters_since_commit = 0;
        self.input_bytes_since_commit = 0;
        self.records_since_commit = 0;
        self.oldest_pending = None;
    }

    /// Commits the open batch: dead letters first, then rows, each commit carrying the
    /// position of every owned partition.
    async fn commit(&mut self) -> Result<Committed, IngestError> {
        if self.pending.is_empty() {
            return Ok(Committed::Nothing);
        }
        let started = Instant::now();
        // Every worker's files up to the last message taken.
        self.deal()?;
        let workers_err = |cause| IngestError::Workers { table: self.name.clone(), cause };
        let epoch = self.pool.end_epoch().map_err(workers_err)?;
        let workers = self.pool.workers();
        let parts = crate::workers::collect(&mut self.parts, &mut self.early, epoch, workers).await;
        let parts = parts.map_err(|cause| workers_error(&self.name, cause))?;
        let mut files = WrittenFiles::default();
        for part in parts {
            files.extend(part.files);
            self.rows_since_commit += part.rows;
            self.dead_since_commit.extend(part.dead);
        }
        let now = chrono::Utc::now().timestamp_micros();
        let positions: Vec<(String, i64)> = self
            .owned
            .iter()
            .map(|(tp, done)| (app_id(&tp.0, tp.1), self.pending.get(tp).copied().unwrap_or(*done)))
            .collect();
        let dlq_done = &self.dlq_done;
        let fresh: Vec<DeadLetter> = std::mem::take(&mut self.dead_since_commit)
            .into_iter()
            .filter(|l| match &l.coordinates {
                Coordinates::Kafka { topic, partition, offset, .. } => {
                    *offset > dlq_done.get(&(topic.clone(), *partition)).copied().unwrap_or(-1)
                }
                Coordinates::File { .. } => true,
            })
            .collect();
        if !fresh.is_empty() {
            self.publish_dead_letters(&fresh)?;
            let batch = dead_letter_batch(&fresh, &self.contract_version, now).map_err(|e| {
                self.sink_err(SinkError::Schema { location: self.dlq.location().into(), message: e.to_string() })
            })?;
            self.dlq.write(batch).await.map_err(|e| self.sink_err(e))?;
            self.dlq_dirty = true;
            for l in &fresh {
                *self.reasons_since_commit.entry(l.reason.clone()).or_default() += 1;
            }
            self.dead_letters_since_commit += fresh.len() as u64;
        }
        let info = CommitInfo {
            contract_version: self.contract_version.clone(),
            operation: "ingest".into(),
            rows: 0,
            dead_letters: self.dead_letters_since_commit,
        };
        if self.dlq_dirty {
            match self.dlq.commit(positions.clone(), &info).await {
                Ok(_) => {
                    self.dlq_dirty = false;
                    for (reason, n) in std::mem::take(&mut self.reasons_since_commit) {
                        *self.report.by_reason.entry(reason.clone()).or_default() += n;
                        let label = ReasonLabel { table: self.name.clone(), reason };
                        self.metrics.dead_letters.get_or_create(&label).inc_by(n);
                    }
                    for (tp, last) in &self.pending {
                        self.dlq_done.insert(tp.clone(), *last);
                    }
                }
                Err(SinkError::Conflict { cause, .. }) => return self.conflict(&cause.to_string()).await,
                Err(e) => return Err(self.sink_err(e)),
            }
        }
        let info = CommitInfo { rows: self.rows_since_commit, dead_letters: 0, ..info };
        let committed = match self.data.commit_files(files, positions, &info).await {
            Ok(c) => c,
            Err(SinkError::Conflict { cause, .. }) => return self.conflict(&cause.to_string()).await,
            Err(e) => return Err(self.sink_err(e)),
        };
        let offsets: Vec<(Tp, i64)> = std::mem::take(&mut self.pending).into_iter().collect();
        for (tp, last) in &offsets {
            self.owned.insert(tp.clone(), *last);
        }
        self.report.commits += 1;
        if let (Some(first), Some(last)) = (self.first_message_at, self.last_taken_at) {
            self.report.busy = last.saturating_duration_since(first) + started.elapsed();
        }
        self.report.rows += self.rows_since_commit;
        self.report.dead_letters += self.dead_letters_since_commit;
        self.metrics.rows.get_or_create(&self.label).inc_by(self.rows_since_commit);
        self.metrics.commits.get_or_create(&self.outcome("committed")).inc();
        self.metrics.commit_seconds.get_or_create(&self.label).observe(started.elapsed().as_secs_f64());
        if let Some(c) = committed {
            self.metrics.files.get_or_create(&self.label).inc_by(c.files as u64);
            self.metrics.table_version.get_or_create(&self.label).set(c.version as i64);
            self.report.table_version = Some(c.version);
        }
        debug!(table = %self.name, rows = self.rows_since_commit, version = ?self.report.table_version, "committed");
        self.rows_since_commit = 0;
        self.dead_letters_since_commit = 0;
        self.input_bytes_since_commit = 0;
        self.records_since_commit = 0;
        self.oldest_pending = None;
        Ok(Committed::Done(offsets))
    }

    fn outcome(&self, outcome: &str) -> OutcomeLabel {
        OutcomeLabel { table: self.name.clone(), outcome: outcome.into() }
    }

    /// Drops the batch after a conflicting commit and reloads every owned position.
    async fn conflict(&mut self, cause: &str) -> Result<Committed, IngestError> {
        warn!(table = %self.name, cause, "another writer committed the same partitions; re-reading from the table");
        self.metrics.commits.get_or_create(&self.outcome("conflict")).inc();
        self.report.conflicts += 1;
        self.reload().await?;
        Ok(Committed::Conflict)
    }

    /// Drops the open batch and reads every owned partition's position from the tables again.
    async fn reload(&mut self) -> Result<(), IngestError> {
        self.abandon();
        let tps: Vec<Tp> = self.owned.keys().cloned().collect();
        self.load_positions(&tps).await
    }

    /// Sends dead letters to the dead-letter topic, if one is configured (at least once).
    fn publish_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), IngestError> {
        let Some((topic, producer)) = &self.dlq_topic else { return Ok(()) };
        let kafka_err = |cause| IngestError::Kafka { table: self.name.clone(), cause };
        for l in letters {
            let mut h = OwnedHeaders::new();
            for (key, value) in &l.headers {
                h = h.insert(Header { key, value: value.as_deref() });
            }
            let source = l.coordinates.to_string();
            for (key, value) in [
                ("protolake.reason", l.reason.as_str()),
                ("protolake.message", l.message.as_str()),
                ("protolake.field_path", l.field_path.as_str()),
                ("protolake.source", source.as_str()),
                ("protolake.table", self.name.as_str()),
            ] {
                h = h.insert(Header { key, value: Some(value.as_bytes()) });
            }
            let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).payload(l.raw.as_slice()).headers(h);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(100));
                        record = r;
                    }
                    Err((e, _)) => return Err(kafka_err(e)),
                }
            }
        }
        producer.flush(Duration::from_secs(30)).map_err(kafka_err)
    }
}

/// A worker's error as the table's: a sink or pipeline error as such, anything else as the
/// workers'.
fn workers_error(table: &str, cause: WorkerError) -> IngestError {
    let table = table.to_string();
    match cause {
        WorkerError::Sink(cause) => IngestError::Sink { table, cause },
        WorkerError::Pipeline(cause) => IngestError::Pipeline { table, cause },
        cause => IngestError::Workers { table, cause },
    }
}

/// One table's consumer loop (on a blocking thread).
fn table_loop(
    shared: Arc<Shared>,
    config: rdkafka::config::ClientConfig,
    topic: String,
    options: &IngestOptions,
    stop: &AtomicBool,
    health: &TableHealth,
    retry_for: Duration,
) -> Result<TableReport, IngestError> {
    let table = shared.label.table.clone();
    let kafka_err = |cause| IngestError::Kafka { table: table.clone(), cause };
    let context = IngestContext { shared: shared.clone() };
    let consumer: BaseConsumer<IngestContext> = config.create_with_context(context).map_err(kafka_err)?;
    // Messages are read in batches from a queue of their own (see FetchQueue); the consumer's
    // queue is polled without waiting between batches for rebalances, errors and statistics.
    let fetch = FetchQueue::new(&consumer).map(Arc::new);
    *shared.fetch.lock().unwrap_or_else(|p| p.into_inner()) = fetch.clone();
    // Declared after the consumer and the fetch queue, so dropped before them on every way out.
    let drained = Drained(&shared);
    consumer.subscribe(&[&topic]).map_err(kafka_err)?;
    health.ready.store(true, Ordering::Relaxed);
    info!(%table, %topic, "consuming");
    let mut last_message = Instant::now();
    let mut batch: Vec<Fetched> = Vec::with_capacity(crate::source::kafka::FETCH_BATCH);
    let mut group: Vec<Fetched> = Vec::with_capacity(crate::source::kafka::FETCH_BATCH);
    let result = (|| -> Result<(), IngestError> {
        loop {
            health.turn();
            if let Some(e) = shared.take_fatal() {
                return Err(e);
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut taken = 0usize;
            // Rebalance callbacks run inside this poll. A message comes here only for a
            // partition that could not be routed to the fetch queue.
            let polled = consumer.poll(if fetch.is_some() { Duration::ZERO } else { POLL });
            if let Some(polled) = polled {
                let mut state = shared.state();
                match polled {
                    Ok(message) => taken += state.accept(&mut vec![MessageView::of(&message)])?,
                    Err(e) => consumer_error(&shared, e)?,
                }
            }
            // A rebalance callback inside the poll may have raised a fatal error.
            if let Some(e) = shared.take_fatal() {
                return Err(e);
            }
            if let Some(fetch) = &fetch {
                // While no partition is owned, wait briefly: the assignment comes on the
                // consumer's queue (as do the messages of a partition that was not routed).
                let wait = if taken > 0 {
                    Duration::ZERO
                } else if shared.state().owned.is_empty() {
                    POLL / 10
                } else {
                    POLL
                };
                fetch.consume(wait, &mut batch);
                if !batch.is_empty() {
                    // Consecutive messages of one partition are taken as a group; the state
                    // stays locked for the whole batch, so no rebalance comes between them.
                    let mut state = shared.state();
                    for message in batch.drain(..) {
                        let view = message.view();
                        if let Some(e) = view.error() {
                            drop(message);
                            taken += state.accept(&mut group)?;
                            consumer_error(&shared, e)?;
                            continue;
                        }
                        if group.last().is_some_and(|g: &Fetched| {
                            let g = g.view();
                            (g.topic_handle(), g.partition()) != (view.topic_handle(), view.partition())
                        }) {
                            taken += state.accept(&mut group)?;
                        }
                        group.push(message);
                    }
                    taken += state.accept(&mut group)?;
                }
            }
            let mut state = shared.state();
            if taken > 0 {
                last_message = Instant::now();
                state.last_taken_at = Some(last_message);
            }
            let quiet = last_message.elapsed().min(state.assigned_at.elapsed());
            let idle = options.exit_when_idle.is_some_and(|d| quiet >= d);
            if state.due() || (idle && !state.pending.is_empty()) {
                commit_with_retries(&shared, &mut state, &consumer, retry_for, health)?;
            }
            if idle && state.pending.is_empty() && !state.owned.is_empty() {
                info!(%table, "no message for {:?}; stopping", options.exit_when_idle.unwrap_or_default());
                return Ok(());
            }
        }
    })();
    drop(batch);
    if let Err(e) = &result {
        health.failed.store(true, Ordering::Relaxed);
        error!(%table, error = %e, "stopping; the open batch is dropped and will be read again");
        shared.state().abandon();
    } else {
        let mut state = shared.state();
        commit_with_retries(&shared, &mut state, &consumer, retry_for, health).inspect_err(|_| {
            health.failed.store(true, Ordering::Relaxed);
        })?;
    }
    // Leaving the group: the revocation callback finds nothing open. Partitions assigned
    // from here on stay on the consumer's queue; the fetch queue goes before the consumer.
    drop(drained);
    drop(fetch);
    consumer.unsubscribe();
    drop(consumer);
    let report = shared.state().report.clone();
    result.map(|()| report)
}

/// Releases, when a table's loop ends however it ends, every message its runs still hold
/// (the workers drained) and the shared reference to the fetch queue: both must go before
/// the consumer does.
struct Drained<'a>(&'a Shared);

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.0.state();
            state.run = KafkaRun::default();
            state.pool.drain();
        }
        self.0.fetch.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Counts and logs an error the consumer delivered; a fatal one stops the table.
fn consumer_error(shared: &Shared, e: KafkaError) -> Result<(), IngestError> {
    shared.metrics.kafka_errors.get_or_create(&shared.label).inc();
    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
        return Err(IngestError::Kafka { table: shared.label.table.clone(), cause: e });
    }
    warn!(table = %shared.label.table, error = %e, "consuming");
    Ok(())
}

/// Commits the open batch. A conflict, or a failure (storage unreachable, a write refused),
/// drops the batch and re-seeks the owned partitions to the table's positions, so the records
/// are read again: nothing half-written is ever retried. Failures are retried with backoff
/// until they have lasted `retry_for`.
fn commit_with_retries(
    shared: &Shared,
    state: &mut TableState,
    consumer: &BaseConsumer<IngestContext>,
    retry_for: Duration,
    health: &TableHealth,
) -> Result<(), IngestError> {
    let error = match shared.runtime.block_on(state.commit()) {
        Ok(Committed::Nothing) => return Ok(()),
        Ok(Committed::Done(offsets)) => {
            state.failing_since = None;
            health.ready.store(true, Ordering::Relaxed);
            commit_group_offsets(consumer, &offsets, CommitMode::Async);
            return Ok(());
        }
        Ok(Committed::Conflict) => return seek_to_table(state, consumer),
        Err(e) => e,
    };
    state.metrics.commits.get_or_create(&state.outcome("failed")).inc();
    warn!(table = %state.name, error = %error, "commit failed; the batch will be read again");
    // Not ready (/readyz) until a commit succeeds again.
    health.ready.store(false, Ordering::Relaxed);
    let since = *state.failing_since.get_or_insert_with(Instant::now);
    let mut wait = Duration::from_millis(200);
    // Until the positions are reloaded the consumer must not go on past the dropped batch.
    loop {
        if since.elapsed() + wait >= retry_for {
            return Err(error);
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(30));
        match shared.runtime.block_on(state.reload()) {
            Ok(()) => return seek_to_table(state, consumer),
            Err(e) => warn!(table = %state.name, error = %e, retry_in = ?wait, "reading the table's positions"),
        }
    }
}

/// Points every owned partition at the offset after the table's.
fn seek_to_table(state: &mut TableState, consumer: &BaseConsumer<IngestContext>) -> Result<(), IngestError> {
    let tps: Vec<Tp> = state.owned.keys().cloned().collect();
    for tp in &tps {
        state.await_start(tp);
    }
    for (tp, last) in &state.owned {
        consumer
            .seek(&tp.0, tp.1, state.start_offset(*last), Duration::from_secs(30))
            .map_err(|cause| IngestError::Kafka { table: state.name.clone(), cause })?;
    }
    Ok(())
}
