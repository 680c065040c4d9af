//! Kafka as a source: the librdkafka settings protolake manages, the exactly-once bookkeeping
//! id of each partition, a message's coordinates and headers, and the batched fetch queue.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::source::{Coordinates, Headers};

/// The Delta txn app id that records, in a table, the last offset of `topic`/`partition` it
/// holds. The group is not part of it: a renamed group must not ingest a topic twice.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("protolake-kafka:{topic}:{partition}")
}

/// The consumer group of a table: `<group_id>.<table>`, so a rebalance of one table's
/// consumers never pauses another table.
pub fn group_of(kafka: &KafkaConfig, table: &str) -> String {
    format!("{}.{table}", kafka.group_id)
}

/// Consumer settings: the user's properties over protolake's defaults, and the few settings
/// exactly-once depends on forced.
pub fn consumer_config(kafka: &KafkaConfig, table: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in [
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "10000"),
        ("client.id", "protolake"),
        ("isolation.level", "read_committed"),
    ] {
        config.set(key, value);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    // Offsets live in the Delta table; Kafka's copy is written after each commit, for lag only.
    config.set("group.id", group_of(kafka, table));
    config.set("enable.auto.commit", "false");
    config.set("enable.auto.offset.store", "false");
    config.set("enable.partition.eof", "false");
    config
}

/// Producer settings for the dead-letter topic: the user's connection properties.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("client.id", "protolake-dlq");
    for (key, value) in &kafka.properties {
        // Consumer-only settings would only draw warnings from the producer.
        if !matches!(
            key.as_str(),
            "auto.offset.reset"
                | "isolation.level"
                | "statistics.interval.ms"
                | "session.timeout.ms"
                | "max.poll.interval.ms"
                | "heartbeat.interval.ms"
                | "fetch.max.bytes"
                | "fetch.min.bytes"
                | "fetch.wait.max.ms"
                | "queued.max.messages.kbytes"
                | "queued.min.messages"
                | "partition.assignment.strategy"
                | "group.instance.id"
        ) {
            config.set(key, value);
        }
    }
    config.set("enable.idempotence", "true");
    config
}

/// Whether the configured offset reset starts a partition the table has never seen at its end.
pub fn starts_at_end(kafka: &KafkaConfig) -> bool {
    matches!(kafka.properties.get("auto.offset.reset").map(String::as_str), Some("latest" | "largest" | "end"))
}

/// A consumed message, read through librdkafka's own struct: the same view of a message taken
/// from the consumer's queue ([`MessageView::of`]) or from a [`FetchQueue`] batch.
#[derive(Clone, Copy)]
pub struct MessageView<'a> {
    message: &'a rd::rd_kafka_message_t,
}

impl<'a> MessageView<'a> {
    pub fn of(message: &'a BorrowedMessage<'_>) -> MessageView<'a> {
        // SAFETY: a BorrowedMessage points at a live message for as long as it is borrowed.
        MessageView { message: unsafe { &*message.ptr() } }
    }

    /// The error librdkafka delivered in place of a message, if this is one.
    pub fn error(&self) -> Option<KafkaError> {
        if self.message.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        let code = RDKafkaErrorCode::from(self.message.err);
        Some(if code == RDKafkaErrorCode::Fatal {
            KafkaError::MessageConsumptionFatal(code)
        } else {
            KafkaError::MessageConsumption(code)
        })
    }

    /// Identifies the message's topic without reading its name: librdkafka's topic handle,
    /// the same for every message of a topic while any of them is alive.
    pub fn topic_handle(&self) -> usize {
        self.message.rkt as usize
    }

    pub fn topic(&self) -> String {
        if self.message.rkt.is_null() {
            return String::new();
        }
        // SAFETY: a message holds a reference to its topic handle, whose name is a C string.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.message.rkt)) }.to_string_lossy().into_owned()
    }

    pub fn partition(&self) -> i32 {
        self.message.partition
    }

    pub fn offset(&self) -> i64 {
        self.message.offset
    }

    /// The value; None for a message without one (a tombstone).
    pub fn payload(&self) -> Option<&'a [u8]> {
        if self.message.payload.is_null() {
            return None;
        }
        // SAFETY: librdkafka's payload is `len` bytes, alive as long as the message.
        Some(unsafe { std::slice::from_raw_parts(self.message.payload as *const u8, self.message.len) })
    }

    /// The create or log-append time in milliseconds, when the broker gave one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: reads the message's timestamp fields.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.message, &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ms >= 0).then_some(ms)
    }

    /// The headers, None when the message has none.
    pub fn headers(&self) -> Option<Headers> {
        let mut native: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: librdkafka parses the headers into the message; they live as long as it.
        let err = unsafe { rd::rd_kafka_message_headers(self.message, &mut native) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
            return None;
        }
        let mut headers = Headers::new();
        for index in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: index is checked by librdkafka, which answers NOENT past the last one.
            let err = unsafe { rd::rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: names are C strings and values `size` bytes, owned by the headers.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            let value =
                (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec());
            headers.push((name, value));
        }
        Some(headers)
    }

    /// The message's coordinates; `topic` is the message's topic, shared between messages.
    pub fn coordinates(&self, topic: Arc<str>) -> Coordinates {
        Coordinates::Kafka {
            topic,
            partition: self.partition(),
            offset: self.offset(),
            timestamp_ms: self.timestamp_ms(),
        }
    }
}

/// The most messages one [`FetchQueue::consume`] returns.
pub const FETCH_BATCH: usize = 1024;

/// A message taken from a [`FetchQueue`], handed back to librdkafka when dropped. It may be
/// read and dropped on another thread (a worker reads it in place), but must be dropped
/// before its consumer: a pool holding such messages is drained first.
pub struct Fetched {
    message: NonNull<rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka's messages are not tied to the thread that consumed them: reading one
// and `rd_kafka_message_destroy` are safe from any thread while the client is alive, which
// the owner of the consumer ensures (above). A message is never shared, only moved.
unsafe impl Send for Fetched {}

impl Fetched {
    pub fn view(&self) -> MessageView<'_> {
        // SAFETY: the message is alive until this is dropped.
        MessageView { message: unsafe { self.message.as_ref() } }
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        // SAFETY: each message from a batch is destroyed exactly once, here.
        unsafe { rd::rd_kafka_message_destroy(self.message.as_ptr()) }
    }
}

/// A queue of its own that every assigned partition's messages are forwarded to, read in
/// batches: librdkafka's per-call work (the lock and the clock, an event per message,
/// the position update) is then paid once per batch rather than once per message. The
/// consumer's own queue keeps the rebalances, errors and statistics, and must still be polled.
///
/// A partition must be forwarded before it is assigned ([`FetchQueue::take_partition`], in the
/// rebalance callback), so that all its messages come here, in order; one that could not be
/// forwarded stays wholly on the consumer's queue.
///
/// Must be dropped before its consumer, and its messages before it.
pub struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    client: NonNull<rd::rd_kafka_t>,
}

// SAFETY: librdkafka's queues are thread-safe; the client outlives the queue (see above).
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<FetchQueue> {
        let client = NonNull::new(consumer.client().native_ptr())?;
        // SAFETY: a new queue on a live client.
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(client.as_ptr()) })?;
        Some(FetchQueue { queue, client })
    }

    /// Routes a partition's messages to this queue. False when librdkafka has no queue for
    /// it (its messages then arrive on the consumer's queue).
    pub fn take_partition(&self, topic: &str, partition: i32) -> bool {
        let Ok(topic) = CString::new(topic) else { return false };
        // SAFETY: the partition's queue is a new reference, released right after forwarding.
        unsafe {
            let own = rd::rd_kafka_queue_get_partition(self.client.as_ptr(), topic.as_ptr(), partition);
            if own.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(own, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(own);
        }
        true
    }

    /// Waits up to `timeout` for messages and appends up to [`FETCH_BATCH`] of them to `into`.
    pub fn consume(&self, timeout: Duration, into: &mut Vec<Fetched>) -> usize {
        let mut raw = [std::ptr::null_mut::<rd::rd_kafka_message_t>(); FETCH_BATCH];
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: librdkafka fills at most FETCH_BATCH slots with messages the caller now owns.
        let n =
            unsafe { rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), timeout_ms, raw.as_mut_ptr(), FETCH_BATCH) };
        let n = n.max(0) as usize;
        into.extend(raw[..n].iter().filter_map(|m| NonNull::new(*m)).map(|message| Fetched { message }));
        n
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: the queue is this struct's own reference; forwarded partitions hold theirs,
        // and what they still deliver is discarded by librdkafka.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            group_id: "ingest".into(),
        }
    }

    #[test]
    fn protolake_owns_the_offset_settings() {
        let c = consumer_config(&kafka(&[("bootstrap.servers", "b:9092"), ("auto.offset.reset", "latest")]), "events");
        assert_eq!(c.get("group.id"), Some("ingest.events"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert!(starts_at_end(&kafka(&[("auto.offset.reset", "latest")])));
        assert!(!starts_at_end(&kafka(&[])));
        let p = producer_config(&kafka(&[("bootstrap.servers", "b:9092"), ("auto.offset.reset", "latest")]));
        assert_eq!(p.get("auto.offset.reset"), None);
        assert_eq!(p.get("bootstrap.servers"), Some("b:9092"));
    }
}
