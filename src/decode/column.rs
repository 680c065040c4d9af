//! Column buffers the decoder appends into.
//!
//! Arrow's builders cannot take back a value, but a record may turn out bad after some of its
//! fields were appended (and a oneof member is withdrawn when a sibling arrives). These buffers
//! support `truncate(n)`, which drops everything past row `n` including the children of lists
//! and structs, so a bad record leaves no trace and its neighbours are untouched. `finish` hands
//! the buffers to Arrow without copying and keeps the old capacity for the next batch.

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::NullBufferBuilder;
use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, ListArray, MapArray, PrimitiveArray, StringArray, StructArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::filter;
use arrow::datatypes::{
    ArrowNativeType, DataType, DurationMicrosecondType, Field, Fields, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;

use super::message::MessageNode;

/// The buffer handed out with the previous batch. Once the caller drops that batch the
/// allocation is ours again and becomes the next batch's buffer: fresh pages cost page faults,
/// so a steady stream of batches alternates between two warm allocations per column.
pub struct Spare<T> {
    in_flight: Option<Buffer>,
    _t: std::marker::PhantomData<T>,
}

impl<T> Default for Spare<T> {
    fn default() -> Self {
        Spare { in_flight: None, _t: std::marker::PhantomData }
    }
}

impl<T: ArrowNativeType> Spare<T> {
    /// Swaps `current` for an empty vector (the reclaimed one if possible) and returns the
    /// filled one as a buffer, remembered for reclaiming at the next swap.
    fn swap(&mut self, current: &mut Vec<T>) -> Buffer {
        let capacity = current.len();
        let next = match self.in_flight.take().map(Buffer::into_vec::<T>) {
            Some(Ok(mut v)) => {
                v.clear();
                v.reserve(capacity);
                v
            }
            _ => Vec::with_capacity(capacity),
        };
        let buffer = Buffer::from_vec(std::mem::replace(current, next));
        self.in_flight = Some(buffer.clone());
        buffer
    }
}

/// Fixed-width values.
pub struct PrimCol<T> {
    pub values: Vec<T>,
    pub nulls: Option<NullBufferBuilder>,
    spare: Spare<T>,
}

/// Variable-length values (utf8 or binary).
pub struct BytesCol {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
    pub nulls: Option<NullBufferBuilder>,
    pub utf8: bool,
    spare_offsets: Spare<i32>,
    spare_data: Spare<u8>,
}

pub struct StructCol {
    pub len: usize,
    pub nulls: Option<NullBufferBuilder>,
    pub node: MessageNode,
    pub fields: Fields,
}

/// A list, or a map when `map` is set (its element is then the entries struct).
pub struct ListCol {
    pub offsets: Vec<i32>,
    pub element: Box<Column>,
    pub element_field: Arc<Field>,
    pub map: bool,
    /// Map entries superseded by a later entry with the same key, removed at `finish`.
    pub dead: Vec<usize>,
}

pub enum Column {
    Bool(PrimCol<bool>),
    I32(PrimCol<i32>),
    I64(PrimCol<i64>, DataType),
    U32(PrimCol<u32>),
    U64(PrimCol<u64>),
    F32(PrimCol<f32>),
    F64(PrimCol<f64>),
    Bytes(BytesCol),
    Struct(Box<StructCol>),
    List(ListCol),
}

fn nulls_for(nullable: bool) -> Option<NullBufferBuilder> {
    nullable.then(|| NullBufferBuilder::new(0))
}

impl<T: Copy + Default> PrimCol<T> {
    pub fn new(nullable: bool) -> Self {
        PrimCol { values: Vec::new(), nulls: nulls_for(nullable), spare: Spare::default() }
    }

    #[inline(always)]
    pub fn push(&mut self, v: T) {
        self.values.push(v);
        if let Some(n) = &mut self.nulls {
            n.append_non_null();
        }
    }

    #[inline]
    pub fn set_last(&mut self, v: T) {
        if let Some(last) = self.values.last_mut() {
            *last = v;
        }
    }

    fn push_null(&mut self) {
        self.values.push(T::default());
        if let Some(n) = &mut self.nulls {
            n.append_null();
        }
    }

    fn truncate(&mut self, len: usize) {
        if self.values.len() > len {
            self.values.truncate(len);
            if let Some(n) = &mut self.nulls {
                n.truncate(len);
            }
        }
    }
}

impl<T: ArrowNativeType> PrimCol<T> {
    fn take(&mut self) -> (ScalarBuffer<T>, Option<NullBuffer>) {
        let len = self.values.len();
        let values = self.spare.swap(&mut self.values);
        let nulls = self.nulls.as_mut().and_then(NullBufferBuilder::finish);
        (ScalarBuffer::new(values, 0, len), nulls)
    }
}

impl BytesCol {
    pub fn new(nullable: bool, utf8: bool) -> Self {
        BytesCol {
            offsets: vec![0],
            data: Vec::new(),
            nulls: nulls_for(nullable),
            utf8,
            spare_offsets: Spare::default(),
            spare_data: Spare::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends `v`; the caller has validated UTF-8 for utf8 columns.
    #[inline(always)]
    pub fn push(&mut self, v: &[u8]) -> Result<(), ()> {
        let end = self.data.len() + v.len();
        let end = i32::try_from(end).map_err(drop)?;
        self.data.extend_from_slice(v);
        self.offsets.push(end);
        if let Some(n) = &mut self.nulls {
            n.append_non_null();
        }
        Ok(())
    }

    #[inline]
    pub fn set_last(&mut self, v: &[u8]) -> Result<(), ()> {
        let n = self.offsets.len();
        if n < 2 {
            return Ok(());
        }
        let start = self.offsets[n - 2] as usize;
        let end = i32::try_from(start + v.len()).map_err(drop)?;
        self.data.truncate(start);
        self.data.extend_from_slice(v);
        self.offsets[n - 1] = end;
        Ok(())
    }

    fn push_null(&mut self) {
        self.offsets.push(self.data.len() as i32);
        if let Some(n) = &mut self.nulls {
            n.append_null();
        }
    }

    pub fn value(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn truncate(&mut self, len: usize) {
        if self.offsets.len() > len + 1 {
            self.offsets.truncate(len + 1);
            self.data.truncate(self.offsets[len] as usize);
            if let Some(n) = &mut self.nulls {
                n.truncate(len);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        let count = self.offsets.len();
        let offsets = self.spare_offsets.swap(&mut self.offsets);
        self.offsets.push(0);
        let values = self.spare_data.swap(&mut self.data);
        let nulls = self.nulls.as_mut().and_then(NullBufferBuilder::finish);
        // SAFETY: offsets start at 0 and only grow (push/set_last/truncate keep that), and every
        // value of a utf8 column was validated as UTF-8 before it was appended.
        let offsets = unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::new(offsets, 0, count)) };
        if self.utf8 {
            Arc::new(unsafe { StringArray::new_unchecked(offsets, values, nulls) })
        } else {
            Arc::new(unsafe { BinaryArray::new_unchecked(offsets, values, nulls) })
        }
    }
}

impl ListCol {
    pub fn new(element: Column, element_field: Arc<Field>, map: bool) -> Self {
        ListCol { offsets: vec![0], element: Box::new(element), element_field, map, dead: Vec::new() }
    }

    /// First element of the row being built.
    pub fn row_start(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0) as usize
    }

    /// Ends the current row at the element column's length.
    pub fn close_row(&mut self) {
        self.offsets.push(self.element.len() as i32);
    }
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Bool(c) => c.values.len(),
            Column::I32(c) => c.values.len(),
            Column::I64(c, _) => c.values.len(),
            Column::U32(c) => c.values.len(),
            Column::U64(c) => c.values.len(),
            Column::F32(c) => c.values.len(),
            Column::F64(c) => c.values.len(),
            Column::Bytes(c) => c.len(),
            Column::Struct(c) => c.len,
            Column::List(c) => c.offsets.len() - 1,
        }
    }

    /// The last row's value (None for an empty column).
    #[inline(always)]
    pub fn last_value(&self) -> Option<super::LastValue> {
        use super::LastValue;
        fn of<T>(c: &PrimCol<T>, value: impl Fn(&T) -> LastValue) -> Option<LastValue> {
            let last = c.values.len().checked_sub(1)?;
            Some(match &c.nulls {
                Some(n) if !n.is_valid(last) => LastValue::Null,
                _ => value(&c.values[last]),
            })
        }
        fn valid(nulls: &Option<NullBufferBuilder>, len: usize) -> Option<LastValue> {
            let last = len.checked_sub(1)?;
            Some(match nulls {
                Some(n) if !n.is_valid(last) => LastValue::Null,
                _ => LastValue::Present,
            })
        }
        match self {
            Column::I64(c, _) => of(c, |v| LastValue::Int(*v)),
            Column::I32(c) => of(c, |v| LastValue::Int(i64::from(*v))),
            Column::U32(c) => of(c, |v| LastValue::Int(i64::from(*v))),
            Column::Bool(c) => of(c, |_| LastValue::Present),
            Column::U64(c) => of(c, |_| LastValue::Present),
            Column::F32(c) => of(c, |_| LastValue::Present),
            Column::F64(c) => of(c, |_| LastValue::Present),
            Column::Bytes(c) => valid(&c.nulls, c.len()),
            Column::Struct(c) => valid(&c.nulls, c.len),
            Column::List(c) => valid(&None, c.offsets.len() - 1),
        }
    }

    fn nullable(&self) -> bool {
        match self {
            Column::Bool(c) => c.nulls.is_some(),
            Column::I32(c) => c.nulls.is_some(),
            Column::I64(c, _) => c.nulls.is_some(),
            Column::U32(c) => c.nulls.is_some(),
            Column::U64(c) => c.nulls.is_some(),
            Column::F32(c) => c.nulls.is_some(),
            Column::F64(c) => c.nulls.is_some(),
            Column::Bytes(c) => c.nulls.is_some(),
            Column::Struct(c) => c.nulls.is_some(),
            Column::List(_) => true,
        }
    }

    /// Appends a null, or, in a non-nullable column (only reached beneath a null parent, where
    /// the value is masked), a zero placeholder.
    pub fn push_null(&mut self) {
        if !self.nullable() {
            return self.push_placeholder();
        }
        match self {
            Column::Bool(c) => c.push_null(),
            Column::I32(c) => c.push_null(),
            Column::I64(c, _) => c.push_null(),
            Column::U32(c) => c.push_null(),
            Column::U64(c) => c.push_null(),
            Column::F32(c) => c.push_null(),
            Column::F64(c) => c.push_null(),
            Column::Bytes(c) => c.push_null(),
            Column::Struct(c) => {
                c.len += 1;
                if let Some(n) = &mut c.nulls {
                    n.append_null();
                }
                c.node.push_placeholders();
            }
            Column::List(c) => c.close_row(),
        }
    }

    /// Appends a valid zero value (empty list, struct of placeholders).
    fn push_placeholder(&mut self) {
        match self {
            Column::Bool(c) => c.push(false),
            Column::I32(c) => c.push(0),
            Column::I64(c, _) => c.push(0),
            Column::U32(c) => c.push(0),
            Column::U64(c) => c.push(0),
            Column::F32(c) => c.push(0.0),
            Column::F64(c) => c.push(0.0),
            Column::Bytes(c) => {
                let _ = c.push(b"");
            }
            Column::Struct(c) => {
                c.len += 1;
                if let Some(n) = &mut c.nulls {
                    n.append_non_null();
                }
                c.node.push_placeholders();
            }
            Column::List(c) => c.close_row(),
        }
    }

    /// Drops every row at and after `len`, including elements appended for a row not yet closed.
    pub fn truncate(&mut self, len: usize) {
        match self {
            Column::Bool(c) => c.truncate(len),
            Column::I32(c) => c.truncate(len),
            Column::I64(c, _) => c.truncate(len),
            Column::U32(c) => c.truncate(len),
            Column::U64(c) => c.truncate(len),
            Column::F32(c) => c.truncate(len),
            Column::F64(c) => c.truncate(len),
            Column::Bytes(c) => c.truncate(len),
            Column::Struct(c) => {
                if c.len > len {
                    c.len = len;
                    if let Some(n) = &mut c.nulls {
                        n.truncate(len);
                    }
                }
                c.node.truncate(len);
            }
            Column::List(c) => {
                c.offsets.truncate(len + 1);
                let end = c.row_start();
                c.element.truncate(end);
                c.dead.retain(|&d| d < end);
            }
        }
    }

    /// Hands the rows to Arrow and leaves the column empty (capacity kept).
    pub fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Column::Bool(c) => {
                // Arrow packs booleans into bits, so this column copies; its Vec is kept.
                let values = BooleanBuffer::from(c.values.as_slice());
                c.values.clear();
                let nulls = c.nulls.as_mut().and_then(NullBufferBuilder::finish);
                Arc::new(BooleanArray::new(values, nulls))
            }
            Column::I32(c) => {
                let (v, n) = c.take();
                Arc::new(PrimitiveArray::<Int32Type>::new(v, n))
            }
            Column::I64(c, dt) => {
                let (v, n) = c.take();
                match dt {
                    DataType::Timestamp(_, tz) => {
                        Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(v, n).with_timezone_opt(tz.clone()))
                    }
                    DataType::Duration(_) => Arc::new(PrimitiveArray::<DurationMicrosecondType>::new(v, n)),
                    _ => Arc::new(PrimitiveArray::<Int64Type>::new(v, n)),
                }
            }
            Column::U32(c) => {
                let (v, n) = c.take();
                Arc::new(PrimitiveArray::<UInt32Type>::new(v, n))
            }
            Column::U64(c) => {
                let (v, n) = c.take();
                Arc::new(PrimitiveArray::<UInt64Type>::new(v, n))
            }
            Column::F32(c) => {
                let (v, n) = c.take();
                Arc::new(PrimitiveArray::<Float32Type>::new(v, n))
            }
            Column::F64(c) => {
                let (v, n) = c.take();
                Arc::new(PrimitiveArray::<Float64Type>::new(v, n))
            }
            Column::Bytes(c) => c.finish(),
            Column::Struct(c) => {
                let len = std::mem::take(&mut c.len);
                let nulls = c.nulls.as_mut().and_then(NullBufferBuilder::finish);
                let children = c.node.finish_columns(len)?;
                Arc::new(StructArray::try_new_with_length(c.fields.clone(), children, nulls, len)?)
            }
            Column::List(c) => finish_list(c)?,
        })
    }
}

fn finish_list(c: &mut ListCol) -> Result<ArrayRef, ArrowError> {
    let cap = c.offsets.len();
    let mut offsets = std::mem::replace(&mut c.offsets, Vec::with_capacity(cap));
    c.offsets.push(0);
    let mut values = c.element.finish()?;
    if !c.dead.is_empty() {
        // Drop superseded map entries and shift each row's end by the entries removed before it.
        let mut dead = std::mem::take(&mut c.dead);
        dead.sort_unstable();
        let mut keep = vec![true; values.len()];
        for &d in &dead {
            keep[d] = false;
        }
        let mut removed = 0i32;
        let mut dead_iter = dead.into_iter().peekable();
        for offset in offsets.iter_mut() {
            while dead_iter.next_if(|&d| (d as i32) < *offset).is_some() {
                removed += 1;
            }
            *offset -= removed;
        }
        values = filter(&values, &BooleanArray::from(keep))?;
    }
    // SAFETY: offsets start at 0, never decrease, and end at the element count.
    let offsets = unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets)) };
    if c.map {
        let entries = values
            .as_struct_opt()
            .ok_or_else(|| ArrowError::InvalidArgumentError("map entries must be a struct".into()))?
            .clone();
        Ok(Arc::new(MapArray::try_new(c.element_field.clone(), offsets, entries, None, false)?))
    } else {
        Ok(Arc::new(ListArray::try_new(c.element_field.clone(), offsets, values, None)?))
    }
}
