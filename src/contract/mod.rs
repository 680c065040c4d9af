//! The table's schema contract: the Delta storage mapping of the decoder's Arrow schema
//! (PROTOBUF_MAPPING §13), its Spark-style DDL text (the form pinned in
//! `schemas/<table>/vN.ddl`), comparison with a readable diff, and the evolution rule between
//! versions (only new nullable columns may appear).

mod ddl;
mod diff;
mod pinned;
mod storage;

pub use ddl::{Column, Contract, SqlType};
pub use diff::{check_evolution, diff, diff_types, Difference};
pub use pinned::{PinnedContracts, PinnedError};
pub use storage::{delta_schema, delta_type, to_delta_batch};

/// Errors about contracts: unreadable DDL, or a type no contract can express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("line {line}, column {column}: {message}")]
    Parse { line: usize, column: usize, message: String },
    #[error("{path}: Arrow type {data_type} has no Delta/Spark DDL form")]
    Unsupported { path: String, data_type: String },
}

/// The DDL of an Arrow schema that is already in Delta storage types (see [`delta_schema`]).
pub fn to_ddl(schema: &arrow::datatypes::Schema) -> Result<String, ContractError> {
    Ok(Contract::from_arrow(schema)?.to_ddl())
}
