//! The table's schema contract: the Delta storage mapping of the decoder's Arrow schema
//! (PROTOBUF_MAPPING §13) and its Spark-style DDL text, the form pinned in
//! `schemas/<table>/vN.ddl`.

mod ddl;
mod storage;

pub use ddl::{to_ddl, type_ddl};
pub use storage::{delta_schema, delta_type, to_delta_batch};
