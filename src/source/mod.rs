//! Where records come from, and the coordinates that identify each one (for the metadata
//! columns, the dead-letter table and exactly-once bookkeeping). Sources know nothing of Arrow.

pub mod file;
pub mod framing;
#[cfg(feature = "kafka")]
pub mod kafka;

/// Kafka message headers (key, value), kept with dead letters.
pub type Headers = Vec<(String, Option<Vec<u8>>)>;

/// The position of one record in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordinates {
    /// A record of an archived file: its path (shared by all its records) and 0-based index.
    File { path: std::sync::Arc<str>, index: u64 },
    /// A Kafka message.
    Kafka { topic: std::sync::Arc<str>, partition: i32, offset: i64, timestamp_ms: Option<i64> },
}

impl std::fmt::Display for Coordinates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Coordinates::File { path, index } => write!(f, "{path}:{index}"),
            Coordinates::Kafka { topic, partition, offset, .. } => write!(f, "{topic}/{partition}@{offset}"),
        }
    }
}
