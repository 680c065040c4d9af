//! Delta has no unsigned integers and no duration type, so the stored columns widen losslessly:
//! uint32 → int64, uint64 → decimal(20,0), duration[us] → int64 microseconds. Everything else is
//! stored as decoded. Nested types are widened at any depth.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, MapArray, RecordBatch, RecordBatchOptions, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

/// The Delta storage type of a decoded Arrow type.
pub fn delta_type(dt: &DataType) -> DataType {
    match dt {
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Duration(_) => DataType::Int64,
        DataType::Struct(fields) => DataType::Struct(delta_fields(fields)),
        DataType::List(element) => DataType::List(delta_field(element)),
        DataType::Map(entries, sorted) => DataType::Map(delta_field(entries), *sorted),
        other => other.clone(),
    }
}

fn delta_field(f: &FieldRef) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())))
}

fn delta_fields(fields: &Fields) -> Fields {
    fields.iter().map(delta_field).collect()
}

/// The schema a Delta table stores for batches of `schema`.
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(delta_fields(schema.fields()), schema.metadata().clone()))
}

/// Converts a decoded batch to its Delta storage types (cheap when nothing needs widening).
pub fn to_delta_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = delta_schema(batch.schema().as_ref());
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| convert(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema, columns, &options)
}

fn convert(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    match (array.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array.as_struct();
            let children =
                s.columns().iter().zip(fields).map(|(c, f)| convert(c, f.data_type())).collect::<Result<_, _>>()?;
            Ok(Arc::new(StructArray::try_new_with_length(fields.clone(), children, s.nulls().cloned(), s.len())?))
        }
        (DataType::List(_), DataType::List(element)) => {
            let l = array.as_list::<i32>();
            let values = convert(l.values(), element.data_type())?;
            Ok(Arc::new(ListArray::try_new(element.clone(), l.offsets().clone(), values, l.nulls().cloned())?))
        }
        (DataType::Map(_, _), DataType::Map(entries, sorted)) => {
            let m = array.as_map();
            let entries_array = convert(&(Arc::new(m.entries().clone()) as ArrayRef), entries.data_type())?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                m.offsets().clone(),
                entries_array.as_struct().clone(),
                m.nulls().cloned(),
                *sorted,
            )?))
        }
        (DataType::Duration(_), DataType::Int64) => {
            let data = array.to_data().into_builder().data_type(DataType::Int64).build()?;
            Ok(arrow::array::make_array(data))
        }
        _ => cast(array, to),
    }
}
