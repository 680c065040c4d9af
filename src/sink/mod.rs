//! Delta tables: the data table and the dead-letter table. Every deltalake call lives in this
//! module (its API moves between versions).
//!
//! Invariant: a commit carries the source positions (txn actions) of exactly the records whose
//! rows or dead letters it adds, so a rerun skips what is committed and nothing else.

mod delta;
mod dlq;

pub use delta::{
    open_table, parquet_properties_for, table_schema_at, CommitInfo, Committed, FileWriter, Replaced, SinkError,
    TablePair, TableWriter, WrittenFiles,
};
pub use dlq::{dead_letter_batch, dlq_schema};

pub use crate::location::Location;
