//! protolake: Kafka protobuf → Delta Lake.
//!
//! * [`decode`]: descriptor-driven protobuf → Arrow decoding.
//! * [`contract`]: the table's schema contract (Spark DDL) and the Delta storage mapping.

pub mod contract;
pub mod decode;
