//! Protobuf wire bytes → Arrow record batches, driven by a message descriptor at run time.
//!
//! [`Decoder`] is built once from a `FileDescriptorSet` and a message name (schema errors are
//! refused here, before any data is read), then fed one record at a time with
//! [`Decoder::decode`] and drained with [`Decoder::flush`]. The mapping is PROTOBUF_MAPPING.md
//! (see `docs/mapping.md`).
//!
//! Invariants:
//! * A record is appended whole or not at all: a bad record returns a [`RecordError`] and leaves
//!   the rows before and after it exactly as if it had never been offered.
//! * The batch schema is [`Decoder::schema`]; column order is declaration order.
//! * No input can make the decoder panic, loop forever or allocate more than a small multiple of
//!   the input (nesting is bounded by the planned tree and explicit limits).

mod column;
pub mod descriptor;
mod error;
mod json;
mod message;
mod plan;
pub(crate) mod wire;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::array::RecordBatchOptions;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;

pub use descriptor::Pool;
pub use error::{Reason, RecordError, SchemaError};
pub use plan::{EMPTY_STRUCT_FIELD, LIST_ELEMENT, MAP_ENTRIES};

use column::Column;
use message::MessageNode;
use wire::Reader;

/// Mapping options (PROTOBUF_MAPPING §15).
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// `recursive.fields.max.depth`: how many times a message type may appear on one path
    /// (1..=10). Unset, a recursive message is a schema error.
    pub recursion_depth: Option<u32>,
}

/// A column of the decoded schema, by field index from the root through singular messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPath(Vec<usize>);

/// One value of the last decoded row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastValue {
    /// A message on the way to the column is absent.
    ParentNull,
    Null,
    /// The value of an integer column (int32, int64, uint32; timestamps in microseconds).
    Int(i64),
    /// A value of another type.
    Present,
}

pub struct Decoder {
    root: MessageNode,
    rows: usize,
    schema: SchemaRef,
    message: String,
    /// What the decoder was planned from, for [`fresh`](Self::fresh).
    planned_from: Arc<(Pool, DecodeOptions)>,
}

impl Decoder {
    /// Plans a decoder for `message` (fully-qualified, e.g. `acme.ads.v1.AdImpression`).
    pub fn new(pool: &Pool, message: &str, options: &DecodeOptions) -> Result<Self, SchemaError> {
        let mut planner = plan::Planner::new(pool, options.recursion_depth)?;
        let planned = planner.plan_root(message)?;
        let schema = Arc::new(Schema::new(planned.fields));
        Ok(Decoder {
            root: planned.node,
            rows: 0,
            schema,
            message: message.trim_start_matches('.').to_string(),
            planned_from: Arc::new((pool.clone(), options.clone())),
        })
    }

    /// Another decoder of the same message, with no rows: for a worker on another thread.
    pub fn fresh(&self) -> Result<Self, SchemaError> {
        let (pool, options) = self.planned_from.as_ref();
        let planned = plan::Planner::new(pool, options.recursion_depth)?.plan_root(&self.message)?;
        Ok(Decoder {
            root: planned.node,
            rows: 0,
            schema: self.schema.clone(),
            message: self.message.clone(),
            planned_from: Arc::clone(&self.planned_from),
        })
    }

    /// Convenience: an encoded `FileDescriptorSet` and a message name.
    pub fn from_descriptor_set(bytes: &[u8], message: &str, options: &DecodeOptions) -> Result<Self, SchemaError> {
        Self::new(&Pool::decode(bytes)?, message, options)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn message_name(&self) -> &str {
        &self.message
    }

    /// Rows decoded since the last flush.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decodes one record into a new row. On error nothing of the record remains.
    pub fn decode(&mut self, record: &[u8]) -> Result<(), RecordError> {
        let mut r = Reader::new(record);
        let result = self.root.parse(&mut r, None).and_then(|()| self.root.finish_instance(record.len()));
        match result {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err(e) => {
                self.root.truncate(self.rows);
                Err(e)
            }
        }
    }

    /// Where the column at `names` (a field, then fields of singular messages) sits, for
    /// [`last_value`](Self::last_value). None if no such column, or the path goes through a
    /// list or a map.
    pub fn column_path(&self, names: &[String]) -> Option<ColumnPath> {
        let mut node = &self.root;
        let mut path = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let index = node.fields.iter().position(|f| f.name == *name)?;
            path.push(index);
            if i + 1 < names.len() {
                match &node.fields[index].col {
                    Column::Struct(s) => node = &s.node,
                    _ => return None,
                }
            }
        }
        (!path.is_empty()).then_some(ColumnPath(path))
    }

    /// The last decoded row's value at `path` (None when no row was decoded since the last
    /// flush). Lets a caller check a decoded record before it becomes part of the batch, and
    /// take it back with [`drop_last`](Self::drop_last) while its bytes are still at hand.
    #[inline(always)]
    pub fn last_value(&self, path: &ColumnPath) -> Option<LastValue> {
        if self.rows == 0 {
            return None;
        }
        let (leaf, parents) = path.0.split_last()?;
        let mut node = &self.root;
        for &index in parents {
            let col = &node.fields.get(index)?.col;
            if col.last_value()? == LastValue::Null {
                return Some(LastValue::ParentNull);
            }
            let Column::Struct(s) = col else { return None };
            node = &s.node;
        }
        node.fields.get(*leaf).and_then(|f| f.col.last_value())
    }

    /// Takes back the last decoded row, as if its record had never been offered.
    pub fn drop_last(&mut self) {
        if self.rows > 0 {
            self.rows -= 1;
            self.root.truncate(self.rows);
        }
    }

    /// The rows decoded since the last flush.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes back every row after the first `rows`, as if their records had never been offered.
    pub fn truncate(&mut self, rows: usize) {
        if rows < self.rows {
            self.rows = rows;
            self.root.truncate(rows);
        }
    }

    /// Takes the decoded rows as a batch; the decoder keeps its buffers' capacity.
    pub fn flush(&mut self) -> Result<RecordBatch, ArrowError> {
        let rows = std::mem::take(&mut self.rows);
        let columns = self.root.finish_columns(rows)?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
    }
}
