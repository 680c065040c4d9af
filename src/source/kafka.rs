//! Kafka as a source: the librdkafka settings protolake manages, the exactly-once bookkeeping
//! id of each partition, and a message's coordinates and headers.

use rdkafka::config::ClientConfig;
use rdkafka::message::{BorrowedMessage, Headers as _, Message};

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

/// The message's coordinates; `topic` is the message's topic, shared between messages.
pub fn coordinates(message: &BorrowedMessage<'_>, topic: std::sync::Arc<str>) -> Coordinates {
    Coordinates::Kafka {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
    }
}

/// The message's headers (empty when it has none).
pub fn headers(message: &BorrowedMessage<'_>) -> Headers {
    match message.headers() {
        None => Headers::new(),
        Some(h) => h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect(),
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
