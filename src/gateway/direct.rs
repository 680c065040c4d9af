//! Direct mode: a route whose table has no topic. Accepted records go straight into the Delta
//! table through the sink's own pipeline and flush policy (`flush.max_rows`, `flush.max_bytes`,
//! `flush.max_latency`), one commit for the records of many calls; each call is answered once
//! the commit that holds its record is in the table's log.
//!
//! Bookkeeping: the gateway process is a source of its own, `gateway:<run id>`: its records carry
//! that as `_source_file` and their arrival number as `_source_index`, and every commit records the
//! last number it holds as the txn action `protolake-gateway:<run id>`, as `ingest` records a
//! partition's offset. A record is in the table once or, if its commit failed (the call is then
//! answered `UNAVAILABLE`), not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::config::TableConfig;
use crate::contract::Contract;
use crate::pipeline::TablePipeline;
use crate::sink::{CommitInfo, TablePair, TableWriter};
use crate::source::Coordinates;

/// A record on its way into the table, and who waits for its commit.
struct Pending {
    bytes: bytes::Bytes,
    /// The call's `idempotency-key`, kept as the record's header.
    idempotency: Option<String>,
    answer: oneshot::Sender<Result<u64, Status>>,
}

/// What a submitted record's call waits on.
pub type Commit = oneshot::Receiver<Result<u64, Status>>;

/// The writer of one table in direct mode: a task owning the pipeline and the table.
pub struct DirectSink {
    records: mpsc::Sender<Pending>,
    pub table: String,
}

impl DirectSink {
    /// Opens (or creates) the table and starts its writer task.
    pub async fn open(
        table: &TableConfig,
        pipeline: TablePipeline,
        contract: Option<&(u32, Contract)>,
    ) -> Result<Arc<DirectSink>, String> {
        let contract_version = contract.map_or("adhoc".to_string(), |(v, _)| format!("v{v}"));
        let properties: HashMap<String, String> = [
            ("protolake.contractVersion".to_string(), contract_version.clone()),
            ("delta.checkpointInterval".to_string(), table.checkpoint_interval.to_string()),
        ]
        .into();
        let (data, _dlq) = TablePair {
            location: &table.location,
            dlq_location: &table.dlq_location,
            schema: pipeline.table_schema(),
            partition_columns: pipeline.partition_columns(),
            properties,
            parquet: &table.parquet,
            target_file_size: table.flush.target_file_size,
        }
        .open()
        .await
        .map_err(|e| e.to_string())?;
        let run = uuid::Uuid::new_v4().to_string();
        let (records, receiver) = mpsc::channel(table.flush.max_rows.clamp(1, 65_536));
        let writer = Writer {
            pipeline,
            data,
            source: format!("gateway:{run}").into(),
            app_id: format!("protolake-gateway:{run}"),
            next_index: 0,
            waiting: Vec::new(),
            first_at: None,
            max_rows: table.flush.max_rows,
            max_bytes: table.flush.max_bytes,
            max_latency: table.flush.max_latency,
            info: CommitInfo { contract_version, operation: "gateway".into(), ..CommitInfo::default() },
            table: table.name.clone(),
        };
        tokio::spawn(writer.run(receiver));
        Ok(Arc::new(DirectSink { records, table: table.name.clone() }))
    }

    /// Hands one checked record to the writer: the table version whose commit holds it.
    pub async fn write(&self, bytes: bytes::Bytes, idempotency: Option<String>) -> Result<u64, Status> {
        Self::committed(self.submit(bytes, idempotency).await?).await
    }

    /// Hands one checked record to the writer (waiting while its queue is full); the receiver
    /// learns of its commit.
    pub async fn submit(&self, bytes: bytes::Bytes, idempotency: Option<String>) -> Result<Commit, Status> {
        let (answer, answered) = oneshot::channel();
        self.records
            .send(Pending { bytes, idempotency, answer })
            .await
            .map_err(|_| Status::unavailable(format!("the writer of table {} has stopped", self.table)))?;
        Ok(answered)
    }

    /// The table version holding a submitted record.
    pub async fn committed(commit: Commit) -> Result<u64, Status> {
        commit.await.map_err(|_| Status::unavailable("the table's writer stopped before the commit"))?
    }
}

struct Writer {
    pipeline: TablePipeline,
    data: TableWriter,
    source: Arc<str>,
    app_id: String,
    next_index: u64,
    /// (arrival number, answer) of the records since the last commit.
    waiting: Vec<(u64, oneshot::Sender<Result<u64, Status>>)>,
    first_at: Option<Instant>,
    max_rows: usize,
    max_bytes: u64,
    max_latency: Duration,
    info: CommitInfo,
    table: String,
}

impl Writer {
    async fn run(mut self, mut records: mpsc::Receiver<Pending>) {
        loop {
            let due = self.first_at.map(|t| t + self.max_latency);
            let next = match due {
                None => records.recv().await,
                Some(due) => tokio::select! {
                    r = records.recv() => r,
                    _ = tokio::time::sleep_until(due.into()) => {
                        self.commit().await;
                        continue;
                    }
                },
            };
            let Some(record) = next else {
                // Every sender is gone (the gateway stopped): commit what is open, then end.
                if !self.waiting.is_empty() {
                    self.commit().await;
                }
                return;
            };
            self.push(record);
            // Take what else has arrived without waiting, up to the batch's limit.
            while self.waiting.len() < self.max_rows {
                match records.try_recv() {
                    Ok(r) => self.push(r),
                    Err(_) => break,
                }
            }
            if self.waiting.len() >= self.max_rows || self.data.buffered_bytes() as u64 >= self.max_bytes {
                self.commit().await;
            }
        }
    }

    fn push(&mut self, record: Pending) {
        let index = self.next_index;
        self.next_index += 1;
        let idempotency = record.idempotency;
        self.pipeline.push_with_headers(&record.bytes, &Coordinates::File { path: self.source.clone(), index }, || {
            idempotency.map(|k| vec![("idempotency-key".to_string(), Some(k.into_bytes()))]).unwrap_or_default()
        });
        self.waiting.push((index, record.answer));
        self.first_at.get_or_insert_with(Instant::now);
    }

    /// Writes and commits the open records, then answers their calls.
    async fn commit(&mut self) {
        self.first_at = None;
        let waiting = std::mem::take(&mut self.waiting);
        let Some(last) = waiting.last().map(|(i, _)| *i) else { return };
        let now = chrono::Utc::now().timestamp_micros();
        let result = async {
            let (batch, dead) = self.pipeline.take(now).map_err(|e| e.to_string())?;
            let rows = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
            if let Some(batch) = batch {
                self.data.write(batch).await.map_err(|e| e.to_string())?;
            }
            let info = CommitInfo { rows, ..self.info.clone() };
            let committed =
                self.data.commit(vec![(self.app_id.clone(), last as i64)], &info).await.map_err(|e| e.to_string())?;
            let version = committed.map(|c| c.version).or(self.data.version()).unwrap_or_default();
            Ok::<_, String>((version, dead))
        }
        .await;
        match result {
            Ok((version, dead)) => {
                // A record the gateway's check accepted and the table's pipeline did not: the
                // two disagree, which they never should; its call learns so.
                let refused: HashMap<u64, String> = dead
                    .into_iter()
                    .filter_map(|d| match d.coordinates {
                        Coordinates::File { index, .. } => Some((index, format!("{}: {}", d.reason, d.message))),
                        Coordinates::Kafka { .. } => None,
                    })
                    .collect();
                for (index, answer) in waiting {
                    let _ = answer.send(match refused.get(&index) {
                        None => Ok(version),
                        Some(why) => Err(Status::internal(format!("the table's pipeline refused the record: {why}"))),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "a direct-mode commit failed; its calls are answered UNAVAILABLE");
                self.pipeline.discard();
                let _ = self.data.abandon();
                for (_, answer) in waiting {
                    let _ = answer.send(Err(Status::unavailable(format!(
                        "the commit to table {} failed: {e}; the record is not in the table, retry",
                        self.table
                    ))));
                }
            }
        }
    }
}
