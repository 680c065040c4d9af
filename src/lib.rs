//! protolake: Kafka protobuf → Delta Lake.
//!
//! * [`decode`]: descriptor-driven protobuf → Arrow decoding.
//! * [`contract`]: the table's schema contract (Spark DDL) and the Delta storage mapping.
//! * [`config`]: the configuration file; [`location`]: table locations and their storage options.
//! * [`source`]: where records come from (archived files, Kafka).
//! * [`pipeline`]: one table's records → rows and dead letters.
//! * [`sink`]: Delta tables (data and dead letters).
//! * [`ingest`]: the Kafka → Delta daemon; [`metrics`]: its metrics and health endpoints.
//! * [`gateway`]: the gRPC front door that checks records as the sink does and publishes them.
//! * [`allocator`]: the C allocator's settings for a process that streams batches.

pub mod allocator;
#[cfg(feature = "delta")]
pub mod backfill;
#[cfg(feature = "delta")]
pub mod close_books;
pub mod config;
pub mod contract;
pub mod decode;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "kafka")]
pub mod ingest;
pub mod location;
#[cfg(feature = "delta")]
pub mod maintenance;
#[cfg(feature = "kafka")]
pub mod metrics;
pub mod pipeline;
#[cfg(feature = "delta")]
pub mod sink;
pub mod source;
pub mod validate;
#[cfg(feature = "delta")]
pub mod workers;
