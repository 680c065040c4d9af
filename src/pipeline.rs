//! One table's path from wire bytes to rows ready for the Delta sink, shared by `backfill` and
//! `ingest`: decode → record rules (contract NOT NULL, event time) → Delta storage types →
//! metadata columns and the `event_date` partition. Every refused record becomes a
//! [`DeadLetter`] carrying its original bytes; none is dropped.
//!
//! Invariant: after [`TablePipeline::take`], every record pushed since the previous `take` is in
//! exactly one place: a row of the batch, or a dead letter.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int32Array, Int32Builder, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::config::{EventTime, TimeUnit as EventUnit};
use crate::contract::{delta_schema, to_delta_batch, Contract};
use crate::decode::{Decoder, RecordError};
use crate::source::{Coordinates, Headers};
use crate::validate::RecordValidator;

/// Metadata column names; payload fields may not use them.
pub const SOURCE_TOPIC: &str = "_source_topic";
pub const SOURCE_PARTITION: &str = "_source_partition";
pub const SOURCE_OFFSET: &str = "_source_offset";
pub const SOURCE_TIMESTAMP: &str = "_source_timestamp";
pub const SOURCE_FILE: &str = "_source_file";
pub const SOURCE_INDEX: &str = "_source_index";
pub const INGESTED_AT: &str = "_ingested_at";
pub const EVENT_DATE: &str = "event_date";

/// Whether a table column is one protolake adds (source coordinates, ingest time, the
/// `event_date` partition) rather than one of the message's.
pub fn is_metadata_column(name: &str) -> bool {
    name == EVENT_DATE || name == INGESTED_AT || name.starts_with("_source_")
}

/// The coordinate columns every data and dead-letter row carries.
pub fn source_fields() -> Vec<Field> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    vec![
        Field::new(SOURCE_TOPIC, DataType::Utf8, true),
        Field::new(SOURCE_PARTITION, DataType::Int32, true),
        Field::new(SOURCE_OFFSET, DataType::Int64, true),
        Field::new(SOURCE_TIMESTAMP, ts.clone(), true),
        Field::new(SOURCE_FILE, DataType::Utf8, true),
        Field::new(SOURCE_INDEX, DataType::Int64, true),
        Field::new(INGESTED_AT, ts, false),
    ]
}

/// A record that did not become a row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub raw: Vec<u8>,
    pub reason: String,
    pub message: String,
    pub field_path: String,
    pub coordinates: Coordinates,
    /// The Kafka message's headers (empty for files).
    pub headers: Headers,
}

impl DeadLetter {
    pub fn from_record_error(raw: &[u8], e: &RecordError, coordinates: Coordinates) -> Self {
        DeadLetter {
            raw: raw.to_vec(),
            reason: e.reason.to_string(),
            message: format!("{} (byte {})", e.message, e.byte_offset),
            field_path: e.field_path(),
            coordinates,
            headers: Vec::new(),
        }
    }
}

/// Errors that stop the pipeline (not record errors: those are dead letters).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("payload field {0:?} has the name of a protolake metadata column; rename it in the .proto")]
    MetadataCollision(String),
    #[error("event_time.field {field:?}: {reason}")]
    EventTime { field: String, reason: String },
    #[error("assembling the batch: {0}")]
    Arrow(#[from] ArrowError),
}

/// How the event date is read from a decoded batch.
#[derive(Debug, Clone)]
struct EventTimeColumn {
    path: Vec<String>,
    unit: Option<EventUnit>,
    display: String,
}

/// A NOT NULL rule of the contract that the decoder's schema does not already guarantee.
#[derive(Debug, Clone)]
struct NotNullRule {
    path: Vec<String>,
}

pub struct TablePipeline {
    decoder: Decoder,
    table_schema: SchemaRef,
    event_time: Option<EventTimeColumn>,
    not_null: Vec<NotNullRule>,
    /// Original bytes of the pending rows (dead letters need them if a rule refuses a row).
    raw: Vec<u8>,
    raw_ends: Vec<usize>,
    coordinates: Vec<Coordinates>,
    /// Headers of the pending rows that have any, by row (kept in case a rule refuses the row).
    headers: Vec<(usize, Headers)>,
    dead: Vec<DeadLetter>,
    max_record_bytes: usize,
    validator: Option<RecordValidator>,
}

impl TablePipeline {
    /// `contract`: the pinned contract (its NOT NULLs become rules), or None in ad-hoc mode.
    pub fn new(
        decoder: Decoder,
        contract: Option<&Contract>,
        event_time: Option<&EventTime>,
        max_record_bytes: usize,
    ) -> Result<Self, PipelineError> {
        let payload = delta_schema(&decoder.schema());
        let reserved: Vec<Field> = source_fields().into_iter().chain([event_date_field()]).collect();
        for f in payload.fields() {
            if reserved.iter().any(|r| r.name().eq_ignore_ascii_case(f.name())) {
                return Err(PipelineError::MetadataCollision(f.name().clone()));
            }
        }
        let event_time = event_time.map(|et| resolve_event_time(&payload, et)).transpose()?;
        // The table's payload columns take the contract's nullability (NOT NULL may tighten).
        let (payload_fields, not_null) = match contract {
            Some(c) => {
                let pinned = c.to_arrow();
                let rules = not_null_rules(payload.fields(), pinned.fields(), &mut Vec::new());
                (with_nullability(payload.fields(), pinned.fields()), rules)
            }
            None => (payload.fields().clone(), Vec::new()),
        };
        let mut fields: Vec<FieldRef> = payload_fields.iter().cloned().collect();
        fields.extend(source_fields().into_iter().map(Arc::new));
        if event_time.is_some() {
            fields.push(Arc::new(event_date_field()));
        }
        Ok(TablePipeline {
            decoder,
            table_schema: Arc::new(Schema::new(fields)),
            event_time,
            not_null,
            raw: Vec::new(),
            raw_ends: Vec::new(),
            coordinates: Vec::new(),
            headers: Vec::new(),
            dead: Vec::new(),
            max_record_bytes,
            validator: None,
        })
    }

    /// Checks each record against the descriptor's `buf.validate` rules before decoding it.
    pub fn with_validator(mut self, validator: Option<RecordValidator>) -> Self {
        self.validator = validator;
        self
    }

    /// The Delta table's schema: payload, metadata columns and (with an event time) `event_date`.
    pub fn table_schema(&self) -> SchemaRef {
        self.table_schema.clone()
    }

    pub fn partition_columns(&self) -> Vec<String> {
        if self.event_time.is_some() {
            vec![EVENT_DATE.to_string()]
        } else {
            Vec::new()
        }
    }

    /// Records pushed since the last `take` (rows and dead letters).
    pub fn pending(&self) -> usize {
        self.coordinates.len() + self.dead.len()
    }

    /// Bytes of input held for the pending rows.
    pub fn pending_bytes(&self) -> usize {
        self.raw.len()
    }

    /// Decodes one record; a bad one becomes a dead letter.
    pub fn push(&mut self, bytes: &[u8], coordinates: Coordinates) {
        self.push_with_headers(bytes, coordinates, Headers::new());
    }

    /// [`push`](Self::push) for a record whose headers go with it if it becomes a dead letter.
    pub fn push_with_headers(&mut self, bytes: &[u8], coordinates: Coordinates, headers: Headers) {
        if bytes.len() > self.max_record_bytes {
            self.dead_letter_oversized(bytes.len() as u64, Some(bytes), coordinates);
            if let Some(last) = self.dead.last_mut() {
                last.headers = headers;
            }
            return;
        }
        if let Some(validator) = &self.validator {
            let violations = validator.check(bytes);
            if let Some(first) = violations.first() {
                let listed: Vec<String> =
                    violations.iter().map(|v| format!("{}: {} [{}]", v.field_path, v.message, v.rule)).collect();
                self.dead.push(DeadLetter {
                    raw: bytes.to_vec(),
                    reason: "validation_failed".into(),
                    message: listed.join("; "),
                    field_path: first.field_path.clone(),
                    coordinates,
                    headers,
                });
                return;
            }
        }
        match self.decoder.decode(bytes) {
            Ok(()) => {
                self.raw.extend_from_slice(bytes);
                self.raw_ends.push(self.raw.len());
                if !headers.is_empty() {
                    self.headers.push((self.coordinates.len(), headers));
                }
                self.coordinates.push(coordinates);
            }
            Err(e) => {
                let mut letter = DeadLetter::from_record_error(bytes, &e, coordinates);
                letter.headers = headers;
                self.dead.push(letter);
            }
        }
    }

    /// Records a record that could not even be framed or held (oversized, cut file).
    pub fn dead_letter_oversized(&mut self, len: u64, head: Option<&[u8]>, coordinates: Coordinates) {
        self.dead.push(DeadLetter {
            raw: head.map(|b| b[..b.len().min(1024)].to_vec()).unwrap_or_default(),
            reason: "too_large".into(),
            message: format!(
                "record of {len} bytes is over max_record_bytes ({}); raise it in the table config if such records are legitimate (first KiB kept)",
                self.max_record_bytes
            ),
            field_path: String::new(),
            coordinates,
            headers: Vec::new(),
        });
    }

    /// Drops everything pushed since the last `take` (a batch abandoned before its commit).
    pub fn discard(&mut self) {
        let _ = self.decoder.flush();
        self.raw.clear();
        self.raw_ends.clear();
        self.coordinates.clear();
        self.headers.clear();
        self.dead.clear();
    }

    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead.push(letter);
    }

    /// Takes the pending rows as a batch in the table schema (None when there are none) and the
    /// dead letters. `ingested_at_micros` stamps every row.
    pub fn take(&mut self, ingested_at_micros: i64) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), PipelineError> {
        let mut raw = std::mem::take(&mut self.raw);
        let mut ends = std::mem::take(&mut self.raw_ends);
        let mut coordinates = std::mem::take(&mut self.coordinates);
        let taken = self.build(&raw, &ends, &coordinates, ingested_at_micros);
        // The buffers keep their room for the next batch (up to a limit), so that a steady
        // stream of batches does not grow them from nothing each time.
        if raw.capacity() <= RECYCLE_LIMIT {
            raw.clear();
            ends.clear();
            coordinates.clear();
            self.raw = raw;
            self.raw_ends = ends;
            self.coordinates = coordinates;
        }
        taken
    }

    fn build(
        &mut self,
        raw: &[u8],
        ends: &[usize],
        coordinates: &[Coordinates],
        ingested_at_micros: i64,
    ) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), PipelineError> {
        let decoded = self.decoder.flush()?;
        let mut headers = std::mem::take(&mut self.headers);
        let mut dead = std::mem::take(&mut self.dead);
        if decoded.num_rows() == 0 {
            return Ok((None, dead));
        }
        let payload = to_delta_batch(&decoded)?;
        let rows = payload.num_rows();
        let mut keep = vec![true; rows];
        let mut refuse = |row: usize, reason: &str, path: &str, message: String, keep: &mut Vec<bool>| {
            if keep[row] {
                keep[row] = false;
                let start = if row == 0 { 0 } else { ends[row - 1] };
                dead.push(DeadLetter {
                    raw: raw[start..ends[row]].to_vec(),
                    reason: reason.into(),
                    message,
                    field_path: path.into(),
                    coordinates: coordinates[row].clone(),
                    headers: headers
                        .iter_mut()
                        .find(|(r, _)| *r == row)
                        .map(|(_, h)| std::mem::take(h))
                        .unwrap_or_default(),
                });
            }
        };
        for rule in &self.not_null {
            let nulls = null_rows(&payload, &rule.path);
            let path = rule.path.join(".");
            for row in nulls {
                refuse(
                    row,
                    "not_null_violated",
                    &path,
                    format!("{path} is NOT NULL in the contract but the record has no value"),
                    &mut keep,
                );
            }
        }
        let event_date = match &self.event_time {
            Some(et) => {
                let (dates, missing) = event_dates(&payload, et)?;
                for (row, why) in missing {
                    refuse(row, "missing_event_time", &et.display, why, &mut keep);
                }
                Some(dates)
            }
            None => None,
        };
        let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
        columns.extend(source_columns_for(coordinates, ingested_at_micros));
        if let Some(d) = event_date {
            columns.push(Arc::new(d));
        }
        // Refused rows leave before the table's NOT NULLs apply to the columns.
        let loose_fields: Vec<FieldRef> = columns
            .iter()
            .zip(self.table_schema.fields())
            .map(|(c, f)| Arc::new(Field::new(f.name(), c.data_type().clone(), true)))
            .collect();
        let loose = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(loose_fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let kept =
            if keep.iter().all(|k| *k) { loose } else { filter_record_batch(&loose, &BooleanArray::from(keep))? };
        if kept.num_rows() == 0 {
            return Ok((None, dead));
        }
        let batch = conform(kept.columns().to_vec(), &self.table_schema, kept.num_rows())?;
        Ok((Some(batch), dead))
    }
}

fn event_date_field() -> Field {
    Field::new(EVENT_DATE, DataType::Date32, true)
}

fn resolve_event_time(payload: &Schema, et: &EventTime) -> Result<EventTimeColumn, PipelineError> {
    let path: Vec<String> = et.field.split('.').map(str::to_string).collect();
    let err = |reason: String| PipelineError::EventTime { field: et.field.clone(), reason };
    let mut fields = payload.fields().clone();
    let mut dt = None;
    for (i, seg) in path.iter().enumerate() {
        let f = fields.find(seg).map(|(_, f)| f.clone()).ok_or_else(|| {
            let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
            err(format!("no field {seg:?} here; fields: {}", names.join(", ")))
        })?;
        if i + 1 < path.len() {
            match f.data_type() {
                DataType::Struct(children) => fields = children.clone(),
                other => return Err(err(format!("{seg} is {other}, not a message, so it has no fields"))),
            }
        } else {
            dt = Some(f.data_type().clone());
        }
    }
    match (dt, et.unit) {
        (Some(DataType::Timestamp(_, _)), None) => {}
        (Some(DataType::Timestamp(_, _)), Some(_)) => {
            return Err(err("is a google.protobuf.Timestamp; remove `unit`, it applies to integer fields".into()))
        }
        (Some(DataType::Int32 | DataType::Int64), Some(_)) => {}
        (Some(DataType::Int32 | DataType::Int64), None) => {
            return Err(err(
                "is an integer; set unit = \"seconds\" | \"milliseconds\" | \"microseconds\" | \"nanoseconds\"".into(),
            ))
        }
        (Some(other), _) => {
            return Err(err(format!("has type {other}; an event time is a Timestamp or an integer with a unit")))
        }
        (None, _) => return Err(err("is empty".into())),
    }
    Ok(EventTimeColumn { path, unit: et.unit, display: et.field.clone() })
}

/// Finds a column by path; nulls of its parents count as nulls.
fn column_at(batch: &RecordBatch, path: &[String]) -> Option<(ArrayRef, Vec<bool>)> {
    let mut array = batch.column_by_name(&path[0])?.clone();
    let mut parent_null = vec![false; batch.num_rows()];
    for seg in &path[1..] {
        let s = array.as_struct_opt()?;
        for (row, p) in parent_null.iter_mut().enumerate() {
            *p |= s.is_null(row);
        }
        array = s.column_by_name(seg)?.clone();
    }
    Some((array, parent_null))
}

/// Rows where the column at `path` is null while its parents are present.
fn null_rows(batch: &RecordBatch, path: &[String]) -> Vec<usize> {
    let Some((array, parent_null)) = column_at(batch, path) else { return Vec::new() };
    if array.null_count() == 0 {
        return Vec::new();
    }
    (0..array.len()).filter(|&row| array.is_null(row) && !parent_null[row]).collect()
}

fn event_dates(
    batch: &RecordBatch,
    et: &EventTimeColumn,
) -> Result<(Date32Array, Vec<(usize, String)>), PipelineError> {
    const DAY_MICROS: i64 = 86_400_000_000;
    let (array, _) = column_at(batch, &et.path).ok_or_else(|| PipelineError::EventTime {
        field: et.display.clone(),
        reason: "column missing from the decoded batch".into(),
    })?;
    let micros: Vec<Option<i64>> = match (array.data_type(), et.unit) {
        (DataType::Timestamp(_, _), _) => {
            array.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().iter().collect()
        }
        (DataType::Int64, Some(unit)) => array
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .map(|v| v.and_then(|v| unit.to_micros(v)))
            .collect(),
        (DataType::Int32, Some(unit)) => array
            .as_primitive::<arrow::datatypes::Int32Type>()
            .iter()
            .map(|v| v.and_then(|v| unit.to_micros(i64::from(v))))
            .collect(),
        (other, _) => {
            return Err(PipelineError::EventTime {
                field: et.display.clone(),
                reason: format!("unexpected type {other}"),
            })
        }
    };
    let mut missing = Vec::new();
    let dates: Date32Array = micros
        .iter()
        .enumerate()
        .map(|(row, m)| match m {
            Some(m) => i32::try_from(m.div_euclid(DAY_MICROS)).ok(),
            None => {
                missing.push((row, format!("{} has no value, so the row has no event_date partition", et.display)));
                None
            }
        })
        .collect();
    Ok((dates, missing))
}

/// Bytes of input a pipeline keeps allocated between batches.
const RECYCLE_LIMIT: usize = 64 << 20;

pub(crate) fn source_columns_for(coordinates: &[Coordinates], ingested_at: i64) -> Vec<ArrayRef> {
    let n = coordinates.len();
    let files = coordinates.iter().filter(|c| matches!(c, Coordinates::File { .. })).count();
    let utc = |a: TimestampMicrosecondArray| Arc::new(a.with_timezone("UTC")) as ArrayRef;
    // Batches come from one kind of source; columns of the other kind are all null, built
    // without a pass over the rows.
    let (topic, partition, offset, timestamp): (ArrayRef, ArrayRef, ArrayRef, ArrayRef) = if files == n {
        (
            Arc::new(StringArray::new_null(n)),
            Arc::new(Int32Array::new_null(n)),
            Arc::new(Int64Array::new_null(n)),
            utc(TimestampMicrosecondArray::new_null(n)),
        )
    } else {
        let first = coordinates.iter().find_map(|c| match c {
            Coordinates::Kafka { topic, .. } => Some(topic.len()),
            Coordinates::File { .. } => None,
        });
        let mut topic = StringBuilder::with_capacity(n, first.unwrap_or(0) * (n - files));
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut timestamp = TimestampMicrosecondBuilder::with_capacity(n);
        for c in coordinates {
            match c {
                Coordinates::Kafka { topic: t, partition: p, offset: o, timestamp_ms } => {
                    topic.append_value(t.as_ref());
                    partition.append_value(*p);
                    offset.append_value(*o);
                    timestamp.append_option(timestamp_ms.map(|ms| ms * 1000));
                }
                Coordinates::File { .. } => {
                    topic.append_null();
                    partition.append_null();
                    offset.append_null();
                    timestamp.append_null();
                }
            }
        }
        (Arc::new(topic.finish()), Arc::new(partition.finish()), Arc::new(offset.finish()), utc(timestamp.finish()))
    };
    let (file, index): (ArrayRef, ArrayRef) = if files == 0 {
        (Arc::new(StringArray::new_null(n)), Arc::new(Int64Array::new_null(n)))
    } else {
        let first = coordinates.iter().find_map(|c| match c {
            Coordinates::File { path, .. } => Some(path.len()),
            Coordinates::Kafka { .. } => None,
        });
        let mut file = StringBuilder::with_capacity(n, first.unwrap_or(0) * files);
        let mut index = Int64Builder::with_capacity(n);
        for c in coordinates {
            match c {
                Coordinates::File { path, index: i } => {
                    file.append_value(path.as_ref());
                    index.append_value(*i as i64);
                }
                Coordinates::Kafka { .. } => {
                    file.append_null();
                    index.append_null();
                }
            }
        }
        (Arc::new(file.finish()), Arc::new(index.finish()))
    };
    vec![topic, partition, offset, timestamp, file, index, utc(TimestampMicrosecondArray::from_value(ingested_at, n))]
}

/// The decoder's fields with the pinned contract's nullability (matched by name).
fn with_nullability(decoded: &Fields, pinned: &Fields) -> Fields {
    decoded
        .iter()
        .map(|f| {
            let Some((_, p)) = pinned.find(f.name()) else { return f.clone() };
            let dt = match (f.data_type(), p.data_type()) {
                (DataType::Struct(d), DataType::Struct(pc)) => DataType::Struct(with_nullability(d, pc)),
                (dt, _) => dt.clone(),
            };
            Arc::new(f.as_ref().clone().with_data_type(dt).with_nullable(p.is_nullable()))
        })
        .collect()
}

/// NOT NULL columns of the contract that the decoder may leave null (through structs).
fn not_null_rules(decoded: &Fields, pinned: &Fields, path: &mut Vec<String>) -> Vec<NotNullRule> {
    let mut rules = Vec::new();
    for f in decoded {
        let Some((_, p)) = pinned.find(f.name()) else { continue };
        path.push(f.name().clone());
        if !p.is_nullable() && f.is_nullable() {
            rules.push(NotNullRule { path: path.clone() });
        }
        if let (DataType::Struct(d), DataType::Struct(pc)) = (f.data_type(), p.data_type()) {
            rules.extend(not_null_rules(d, pc, path));
        }
        path.pop();
    }
    rules
}

/// Rebuilds columns so their (nested) field definitions are exactly the schema's: same data,
/// the table's nullability.
fn conform(columns: Vec<ArrayRef>, schema: &SchemaRef, rows: usize) -> Result<RecordBatch, ArrowError> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| conform_array(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

fn conform_array(array: ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == to {
        return Ok(array);
    }
    match (array.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array.as_struct();
            let children = s
                .columns()
                .iter()
                .zip(fields)
                .map(|(c, f)| conform_array(c.clone(), f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(StructArray::try_new_with_length(fields.clone(), children, s.nulls().cloned(), s.len())?))
        }
        _ => Err(ArrowError::SchemaError(format!("cannot conform {} to {to}", array.data_type()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(index: u64) -> Coordinates {
        Coordinates::File { path: Arc::from("/in/day.pb"), index }
    }

    fn kafka(offset: i64) -> Coordinates {
        Coordinates::Kafka { topic: Arc::from("ads"), partition: 3, offset, timestamp_ms: Some(offset * 10) }
    }

    /// Per column: the rows that hold a value, as text.
    fn cells(columns: &[ArrayRef]) -> Vec<Vec<Option<String>>> {
        columns
            .iter()
            .map(|c| {
                (0..c.len())
                    .map(|i| c.is_valid(i).then(|| arrow::util::display::array_value_to_string(c, i).unwrap()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn source_columns_of_files_kafka_and_a_mix() {
        let schema = Schema::new(source_fields());
        for coordinates in [vec![file(0), file(1)], vec![kafka(7), kafka(8)], vec![file(4), kafka(9)]] {
            let columns = source_columns_for(&coordinates, 1_000_000);
            // The columns match the table's metadata fields, type by type.
            for (c, f) in columns.iter().zip(schema.fields()) {
                assert_eq!(c.data_type(), f.data_type(), "{}", f.name());
                assert_eq!(c.len(), coordinates.len());
            }
            let cells = cells(&columns);
            for (row, c) in coordinates.iter().enumerate() {
                let at = |col: usize| cells[col][row].clone();
                match c {
                    Coordinates::File { path, index } => {
                        assert_eq!([at(0), at(1), at(2), at(3)], [None, None, None, None]);
                        assert_eq!(at(4).as_deref(), Some(path.as_ref()));
                        assert_eq!(at(5), Some(index.to_string()));
                    }
                    Coordinates::Kafka { topic, partition, offset, .. } => {
                        assert_eq!(at(0).as_deref(), Some(topic.as_ref()));
                        assert_eq!(at(1), Some(partition.to_string()));
                        assert_eq!(at(2), Some(offset.to_string()));
                        assert!(at(3).unwrap().starts_with("1970-01-01T00:00:00.0"), "{:?}", at(3));
                        assert_eq!([at(4), at(5)], [None, None]);
                    }
                }
                assert_eq!(at(6).as_deref(), Some("1970-01-01T00:00:01Z"));
            }
        }
    }
}
