//! The dead-letter table: one row per refused record with its original bytes, a reason a
//! program can group by, a message a person can act on, the field path and the record's
//! source coordinates.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

use crate::pipeline::{source_fields, DeadLetter};

pub const REASON: &str = "reason";
pub const MESSAGE: &str = "message";
pub const FIELD_PATH: &str = "field_path";
pub const RAW: &str = "raw";
pub const CONTRACT_VERSION: &str = "contract_version";
pub const HEADERS: &str = "headers";

fn header_fields() -> Fields {
    Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Binary, true)])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Struct(header_fields()), false)))
}

pub fn dlq_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(REASON, DataType::Utf8, false),
        Field::new(MESSAGE, DataType::Utf8, false),
        Field::new(FIELD_PATH, DataType::Utf8, true),
        Field::new(RAW, DataType::Binary, true),
        Field::new(CONTRACT_VERSION, DataType::Utf8, true),
    ];
    fields.extend(source_fields());
    // Added after the first release of the table: new columns come last (additive evolution).
    fields.push(Field::new(HEADERS, headers_type(), true));
    Arc::new(Schema::new(fields))
}

/// Dead letters as a batch of the DLQ table.
pub fn dead_letter_batch(
    letters: &[DeadLetter],
    contract_version: &str,
    ingested_at_micros: i64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.reason.as_str()))),
        Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.message.as_str()))),
        Arc::new(StringArray::from_iter(
            letters.iter().map(|l| (!l.field_path.is_empty()).then_some(l.field_path.as_str())),
        )),
        Arc::new(BinaryArray::from_iter_values(letters.iter().map(|l| l.raw.as_slice()))),
        Arc::new(StringArray::from_iter_values(letters.iter().map(|_| contract_version))),
    ];
    let coordinates: Vec<_> = letters.iter().map(|l| l.coordinates.clone()).collect();
    columns.extend(crate::pipeline::source_columns_for(&coordinates, ingested_at_micros)?);
    let entry = StructBuilder::new(
        header_fields(),
        vec![Box::new(StringBuilder::new()) as Box<dyn arrow::array::ArrayBuilder>, Box::new(BinaryBuilder::new())],
    );
    let mut headers =
        ListBuilder::new(entry).with_field(Arc::new(Field::new("element", DataType::Struct(header_fields()), false)));
    for letter in letters {
        if letter.headers.is_empty() {
            headers.append_null();
            continue;
        }
        let entries = headers.values();
        for (key, value) in &letter.headers {
            entries.field_builder::<StringBuilder>(0).expect("key builder").append_value(key);
            entries.field_builder::<BinaryBuilder>(1).expect("value builder").append_option(value.as_deref());
            entries.append(true);
        }
        headers.append(true);
    }
    columns.push(Arc::new(headers.finish()));
    RecordBatch::try_new(dlq_schema(), columns)
}
