//! One table's path from wire bytes to rows ready for the Delta sink, shared by `backfill` and
//! `ingest`: decode → record rules (contract NOT NULL, event time) → Delta storage types →
//! metadata columns and the `event_date` partition. Every refused record becomes a
//! [`DeadLetter`] carrying its original bytes; none is dropped.
//!
//! Invariant: after [`TablePipeline::take`], every record pushed since the previous `take` is in
//! exactly one place: a row of the batch, or a dead letter.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, NullBufferBuilder, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::config::{EventTime, TimeUnit as EventUnit};
use crate::contract::{delta_schema, to_delta_batch, Contract};
use crate::decode::{ColumnPath, Decoder, LastValue, RecordError};
use crate::source::{Coordinates, Headers};
use crate::validate::{RecordValidator, Violation};

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
    column: ColumnPath,
    unit: Option<EventUnit>,
    display: String,
}

/// A NOT NULL rule of the contract that the decoder's schema does not already guarantee.
#[derive(Debug, Clone)]
struct NotNullRule {
    column: ColumnPath,
    display: String,
}

/// Why a decoded record may not become a row: (reason, field path, message).
type Refusal = (&'static str, String, String);

pub struct TablePipeline {
    decoder: Decoder,
    table_schema: SchemaRef,
    event_time: Option<EventTimeColumn>,
    not_null: Vec<NotNullRule>,
    /// Where the pending rows came from.
    sources: SourceLog,
    dead: Vec<DeadLetter>,
    max_record_bytes: usize,
    validator: Option<RecordValidator>,
    /// Kafka headers kept as columns (`header_columns`): (header name, column name).
    header_columns: Vec<(String, String)>,
    /// Each header column's value of each pending row.
    header_values: Vec<Vec<Option<String>>>,
    /// Rows [`check`](Self::check) decoded and left atop the pending ones, taken back in bulk
    /// (a row at a time cost the gateway a few percent of each record).
    checked_rows: usize,
}

/// Rows `check` leaves in the decoder before it takes them back.
const CHECKED_ROWS_KEPT: usize = 256;

/// The column of a Kafka header kept by `header_columns`: `_source_header_<name>`, the name
/// lower-cased with every character but letters and digits as `_` (`idempotency-key` →
/// `_source_header_idempotency_key`).
pub fn header_column_name(header: &str) -> String {
    let name: String =
        header.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("_source_header_{name}")
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
        let event_time = event_time.map(|et| resolve_event_time(&payload, &decoder, et)).transpose()?;
        // The table's payload columns take the contract's nullability (NOT NULL may tighten).
        let (payload_fields, not_null) = match contract {
            Some(c) => {
                let pinned = c.to_arrow();
                let rules = not_null_rules(payload.fields(), pinned.fields(), &mut Vec::new())
                    .into_iter()
                    .filter_map(|path| {
                        // Every path of the rules goes through singular messages only.
                        decoder.column_path(&path).map(|column| NotNullRule { column, display: path.join(".") })
                    })
                    .collect();
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
            sources: SourceLog::default(),
            dead: Vec::new(),
            max_record_bytes,
            validator: None,
            header_columns: Vec::new(),
            header_values: Vec::new(),
            checked_rows: 0,
        })
    }

    /// Checks each record against the descriptor's `buf.validate` rules before decoding it.
    pub fn with_validator(mut self, validator: Option<RecordValidator>) -> Self {
        self.validator = validator;
        self
    }

    /// Keeps these Kafka headers of each row as string columns (after the source columns; null
    /// where a record has no such header, e.g. every backfilled one). The last value wins when a
    /// header repeats; bytes that are not UTF-8 are kept lossily.
    pub fn with_header_columns(mut self, headers: &[String]) -> Self {
        if headers.is_empty() {
            return self;
        }
        let mut fields: Vec<FieldRef> = self.table_schema.fields().iter().cloned().collect();
        let at = fields.iter().position(|f| f.name() == INGESTED_AT).map_or(fields.len(), |i| i + 1);
        for (i, header) in headers.iter().enumerate() {
            let column = header_column_name(header);
            fields.insert(at + i, Arc::new(Field::new(&column, DataType::Utf8, true)));
            self.header_columns.push((header.clone(), column));
        }
        self.header_values = vec![Vec::new(); headers.len()];
        self.table_schema = Arc::new(Schema::new(fields));
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
        self.sources.rows + self.dead.len()
    }

    /// Decodes one record; a bad one becomes a dead letter.
    pub fn push(&mut self, bytes: &[u8], coordinates: &Coordinates) {
        self.push_with_headers(bytes, coordinates, Headers::new);
    }

    /// [`push`](Self::push) for a record whose headers go with it if it becomes a dead letter
    /// (`headers` is called only then, or for every record when header columns are kept).
    pub fn push_with_headers(&mut self, bytes: &[u8], coordinates: &Coordinates, headers: impl FnOnce() -> Headers) {
        if self.header_columns.is_empty() {
            self.push_record(bytes, coordinates, headers);
            return;
        }
        let all = headers();
        let values: Vec<Option<String>> = self
            .header_columns
            .iter()
            .map(|(name, _)| {
                all.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| v.as_deref())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .collect();
        let rows = self.sources.rows;
        self.push_record(bytes, coordinates, move || all);
        if self.sources.rows > rows {
            for (column, value) in self.header_values.iter_mut().zip(values) {
                column.push(value);
            }
        }
    }

    fn push_record(&mut self, bytes: &[u8], coordinates: &Coordinates, headers: impl FnOnce() -> Headers) {
        self.forget_checked();
        if bytes.len() > self.max_record_bytes {
            self.dead_letter_oversized(bytes.len() as u64, Some(bytes), coordinates.clone());
            if let Some(last) = self.dead.last_mut() {
                last.headers = headers();
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
                    coordinates: coordinates.clone(),
                    headers: headers(),
                });
                return;
            }
        }
        match self.decoder.decode(bytes) {
            Ok(()) => match self.refusal() {
                None => self.sources.push(coordinates),
                // The rules are checked on the row just decoded, while its bytes are at hand:
                // a refused row leaves the batch at once and nothing else need be kept.
                Some((reason, field_path, message)) => {
                    self.decoder.drop_last();
                    self.dead.push(DeadLetter {
                        raw: bytes.to_vec(),
                        reason: reason.into(),
                        message,
                        field_path,
                        coordinates: coordinates.clone(),
                        headers: headers(),
                    });
                }
            },
            Err(e) => {
                let mut letter = DeadLetter::from_record_error(bytes, &e, coordinates.clone());
                letter.headers = headers();
                self.dead.push(letter);
            }
        }
    }

    /// Every reason `bytes` would not become a row of this table, with the checks of
    /// [`push`](Self::push) (size, `buf.validate` rules, decoding, the contract's NOT NULLs, the
    /// event time); empty when it would become one. Nothing is kept: what the gateway asks before
    /// it publishes a record, so that what it accepts the sink accepts too. Where `push` stops at
    /// the first broken rule, this lists them all (a record that does not decode has one reason:
    /// where its bytes go wrong).
    pub fn check(&mut self, bytes: &[u8]) -> Vec<Violation> {
        if bytes.len() > self.max_record_bytes {
            let message = too_large_message(bytes.len() as u64, self.max_record_bytes, "");
            return vec![Violation { field_path: String::new(), rule: TOO_LARGE.into(), message, encoded: Vec::new() }];
        }
        let mut violations = match &self.validator {
            Some(validator) => validator.check(bytes),
            None => Vec::new(),
        };
        match self.decoder.decode(bytes) {
            Ok(()) => {
                for rule in &self.not_null {
                    if self.decoder.last_value(&rule.column) == Some(LastValue::Null) {
                        violations.push(refusal_violation(not_null_refusal(rule)));
                    }
                }
                if let Some(refusal) = self.event_time_refusal() {
                    violations.push(refusal_violation(refusal));
                }
                self.checked_rows += 1;
                if self.checked_rows >= CHECKED_ROWS_KEPT {
                    self.forget_checked();
                }
            }
            Err(e) => violations.push(Violation {
                field_path: e.field_path(),
                rule: e.reason.to_string(),
                message: format!("{} (byte {})", e.message, e.byte_offset),
                encoded: Vec::new(),
            }),
        }
        violations
    }

    /// The first record rule the row just decoded breaks: a NOT NULL of the contract, or an
    /// event time that gives no date.
    #[inline(always)]
    fn refusal(&self) -> Option<Refusal> {
        for rule in &self.not_null {
            // A null parent is not this column's violation (the parent's own rule covers it).
            if self.decoder.last_value(&rule.column) == Some(LastValue::Null) {
                return Some(not_null_refusal(rule));
            }
        }
        self.event_time_refusal()
    }

    /// The event time of the row just decoded, when it gives no date.
    #[inline(always)]
    fn event_time_refusal(&self) -> Option<Refusal> {
        let et = self.event_time.as_ref()?;
        match self.decoder.last_value(&et.column) {
            Some(LastValue::Int(v)) => match et.unit {
                Some(unit) if unit.to_micros(v).is_none() => Some(event_time_refusal(et, Some(v))),
                _ => None,
            },
            Some(LastValue::Null | LastValue::ParentNull) => Some(event_time_refusal(et, None)),
            Some(LastValue::Present) | None => None,
        }
    }

    /// Records a record that could not even be framed or held (oversized, cut file).
    pub fn dead_letter_oversized(&mut self, len: u64, head: Option<&[u8]>, coordinates: Coordinates) {
        self.dead.push(oversized_letter(len, self.max_record_bytes, head, coordinates));
    }

    /// Takes back the rows `check` decoded.
    fn forget_checked(&mut self) {
        if self.checked_rows > 0 {
            self.decoder.truncate(self.decoder.rows() - self.checked_rows);
            self.checked_rows = 0;
        }
    }

    /// Drops everything pushed since the last `take` (a batch abandoned before its commit).
    pub fn discard(&mut self) {
        self.checked_rows = 0;
        let _ = self.decoder.flush();
        self.sources.clear();
        self.dead.clear();
        self.header_values.iter_mut().for_each(Vec::clear);
    }

    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.dead.push(letter);
    }

    /// Takes the pending rows as a batch in the table schema (None when there are none) and the
    /// dead letters. `ingested_at_micros` stamps every row.
    pub fn take(&mut self, ingested_at_micros: i64) -> Result<(Option<RecordBatch>, Vec<DeadLetter>), PipelineError> {
        self.forget_checked();
        let dead = std::mem::take(&mut self.dead);
        let decoded = self.decoder.flush();
        let sources = self.sources.finish(ingested_at_micros);
        let decoded = decoded?;
        let rows = decoded.num_rows();
        if rows == 0 {
            return Ok((None, dead));
        }
        let payload = to_delta_batch(&decoded)?;
        let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
        columns.extend(sources?);
        for values in &mut self.header_values {
            columns.push(Arc::new(StringArray::from(std::mem::take(values))));
        }
        if let Some(et) = &self.event_time {
            columns.push(Arc::new(event_dates(&payload, et)?));
        }
        let batch = conform(columns, &self.table_schema, rows)?;
        Ok((Some(batch), dead))
    }
}

/// The dead letter of a record of `len` bytes over `max_record_bytes`, keeping the first KiB of
/// `head` when the record's bytes are at hand.
pub fn oversized_letter(
    len: u64,
    max_record_bytes: usize,
    head: Option<&[u8]>,
    coordinates: Coordinates,
) -> DeadLetter {
    let kept = if head.is_some() { " (first KiB kept)" } else { "" };
    DeadLetter {
        raw: head.map(|b| b[..b.len().min(1024)].to_vec()).unwrap_or_default(),
        reason: TOO_LARGE.into(),
        message: too_large_message(len, max_record_bytes, kept),
        field_path: String::new(),
        coordinates,
        headers: Vec::new(),
    }
}

/// The reason of a record over `max_record_bytes`.
pub const TOO_LARGE: &str = "too_large";

fn too_large_message(len: u64, max_record_bytes: usize, kept: &str) -> String {
    format!(
        "record of {len} bytes is over max_record_bytes ({max_record_bytes}); raise it in the table config if such records are legitimate{kept}"
    )
}

fn refusal_violation((rule, field_path, message): Refusal) -> Violation {
    Violation { field_path, rule: rule.into(), message, encoded: Vec::new() }
}

#[cold]
fn not_null_refusal(rule: &NotNullRule) -> Refusal {
    let message = format!("{} is NOT NULL in the contract but the record has no value", rule.display);
    ("not_null_violated", rule.display.clone(), message)
}

/// An event time without a value (`None`) or beyond a timestamp's range.
#[cold]
fn event_time_refusal(et: &EventTimeColumn, value: Option<i64>) -> Refusal {
    let message = match (value, et.unit) {
        (Some(v), Some(unit)) => format!(
            "{} = {v} {} is beyond the range of a timestamp, so the row has no event_date partition",
            et.display,
            unit.as_str()
        ),
        _ => format!("{} has no value, so the row has no event_date partition", et.display),
    };
    ("missing_event_time", et.display.clone(), message)
}

fn event_date_field() -> Field {
    Field::new(EVENT_DATE, DataType::Date32, true)
}

fn resolve_event_time(payload: &Schema, decoder: &Decoder, et: &EventTime) -> Result<EventTimeColumn, PipelineError> {
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
    let column = decoder.column_path(&path).ok_or_else(|| err("is not a column of the decoded message".into()))?;
    Ok(EventTimeColumn { path, column, unit: et.unit, display: et.field.clone() })
}

/// The column at `path` (through structs).
fn column_at(batch: &RecordBatch, path: &[String]) -> Option<ArrayRef> {
    let mut array = batch.column_by_name(&path[0])?.clone();
    for seg in &path[1..] {
        array = array.as_struct_opt()?.column_by_name(seg)?.clone();
    }
    Some(array)
}

/// Each row's `event_date`. Rows without one were refused when they were pushed.
fn event_dates(batch: &RecordBatch, et: &EventTimeColumn) -> Result<Date32Array, PipelineError> {
    const DAY_MICROS: i64 = 86_400_000_000;
    let day = |micros: i64| micros.div_euclid(DAY_MICROS) as i32;
    let array = column_at(batch, &et.path).ok_or_else(|| PipelineError::EventTime {
        field: et.display.clone(),
        reason: "column missing from the decoded batch".into(),
    })?;
    let to_micros = |v: i64| et.unit.and_then(|u| u.to_micros(v)).unwrap_or(v);
    Ok(match array.data_type() {
        DataType::Timestamp(_, _) => array.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().unary(day),
        DataType::Int64 => array.as_primitive::<arrow::datatypes::Int64Type>().unary(|v| day(to_micros(v))),
        DataType::Int32 => array.as_primitive::<arrow::datatypes::Int32Type>().unary(|v| day(to_micros(i64::from(v)))),
        other => {
            return Err(PipelineError::EventTime {
                field: et.display.clone(),
                reason: format!("unexpected type {other}"),
            })
        }
    })
}

/// The source coordinates of the pending rows, as runs (a file's consecutive records, a Kafka
/// partition's messages) and the Kafka rows' offsets and timestamps: nothing is kept per row
/// that the run already says.
#[derive(Debug, Default)]
struct SourceLog {
    rows: usize,
    runs: Vec<SourceRun>,
    /// One per Kafka row, in row order.
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    timestamps_valid: Option<NullBufferBuilder>,
}

#[derive(Debug)]
enum SourceRun {
    /// Records `first_index`, `first_index + 1`, … of one file.
    File { path: Arc<str>, first_index: u64, len: usize },
    /// Messages of one topic partition.
    Kafka { topic: Arc<str>, partition: i32, len: usize },
}

impl SourceLog {
    fn push(&mut self, at: &Coordinates) {
        self.rows += 1;
        match at {
            Coordinates::File { path, index } => {
                if let Some(SourceRun::File { path: p, first_index, len }) = self.runs.last_mut() {
                    if *first_index + *len as u64 == *index && (Arc::ptr_eq(p, path) || p == path) {
                        *len += 1;
                        return;
                    }
                }
                self.runs.push(SourceRun::File { path: path.clone(), first_index: *index, len: 1 });
            }
            Coordinates::Kafka { topic, partition, offset, timestamp_ms } => {
                let timestamp = timestamp_ms.and_then(|ms| ms.checked_mul(1000));
                let valid = self.timestamps_valid.get_or_insert_with(|| NullBufferBuilder::new(0));
                valid.append(timestamp.is_some());
                self.timestamps.push(timestamp.unwrap_or_default());
                self.offsets.push(*offset);
                if let Some(SourceRun::Kafka { topic: t, partition: p, len }) = self.runs.last_mut() {
                    if *p == *partition && (Arc::ptr_eq(t, topic) || t == topic) {
                        *len += 1;
                        return;
                    }
                }
                self.runs.push(SourceRun::Kafka { topic: topic.clone(), partition: *partition, len: 1 });
            }
        }
    }

    fn clear(&mut self) {
        self.rows = 0;
        self.runs.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.timestamps_valid = None;
    }

    /// The metadata columns of the logged rows (`source_fields` order), `ingested_at` in every
    /// row; the log is left empty.
    fn finish(&mut self, ingested_at: i64) -> Result<Vec<ArrayRef>, ArrowError> {
        let n = self.rows;
        let kafka_rows = self.offsets.len();
        let utc = |a: TimestampMicrosecondArray| Arc::new(a.with_timezone("UTC")) as ArrayRef;
        // Batches come from one kind of source; the other kind's columns are all null, made
        // without a pass over the rows.
        let (topic, partition, offset, timestamp): (ArrayRef, ArrayRef, ArrayRef, ArrayRef) = if kafka_rows == 0 {
            (
                Arc::new(StringArray::new_null(n)),
                Arc::new(Int32Array::new_null(n)),
                Arc::new(Int64Array::new_null(n)),
                utc(TimestampMicrosecondArray::new_null(n)),
            )
        } else {
            let topics = repeated_strings(
                self.runs.iter().map(|r| match r {
                    SourceRun::Kafka { topic, len, .. } => (Some(topic.as_ref()), *len),
                    SourceRun::File { len, .. } => (None, *len),
                }),
                n,
            )?;
            let mut partitions = Vec::with_capacity(n);
            let mut offsets = Vec::with_capacity(n);
            let mut timestamps = Vec::with_capacity(n);
            let mut kafka = NullBufferBuilder::new(n);
            let mut valid = NullBufferBuilder::new(n);
            let taken = self.timestamps_valid.take().and_then(|mut v| v.finish());
            let mut at = 0;
            for run in &self.runs {
                match run {
                    SourceRun::Kafka { partition, len, .. } => {
                        partitions.extend(std::iter::repeat_n(*partition, *len));
                        offsets.extend_from_slice(&self.offsets[at..at + len]);
                        timestamps.extend_from_slice(&self.timestamps[at..at + len]);
                        kafka.append_n_non_nulls(*len);
                        match &taken {
                            Some(t) => (at..at + len).for_each(|i| valid.append(t.is_valid(i))),
                            None => valid.append_n_non_nulls(*len),
                        }
                        at += len;
                    }
                    SourceRun::File { len, .. } => {
                        partitions.extend(std::iter::repeat_n(0, *len));
                        offsets.extend(std::iter::repeat_n(0, *len));
                        timestamps.extend(std::iter::repeat_n(0, *len));
                        kafka.append_n_nulls(*len);
                        valid.append_n_nulls(*len);
                    }
                }
            }
            let kafka = kafka.finish();
            (
                Arc::new(topics),
                Arc::new(Int32Array::new(ScalarBuffer::from(partitions), kafka.clone())),
                Arc::new(Int64Array::new(ScalarBuffer::from(offsets), kafka)),
                utc(TimestampMicrosecondArray::new(ScalarBuffer::from(timestamps), valid.finish())),
            )
        };
        let (file, index): (ArrayRef, ArrayRef) = if kafka_rows == n {
            (Arc::new(StringArray::new_null(n)), Arc::new(Int64Array::new_null(n)))
        } else {
            let files = repeated_strings(
                self.runs.iter().map(|r| match r {
                    SourceRun::File { path, len, .. } => (Some(path.as_ref()), *len),
                    SourceRun::Kafka { len, .. } => (None, *len),
                }),
                n,
            )?;
            let mut indexes = Vec::with_capacity(n);
            let mut nulls = NullBufferBuilder::new(n);
            for run in &self.runs {
                match run {
                    SourceRun::File { first_index, len, .. } => {
                        indexes.extend((0..*len as u64).map(|i| (first_index + i) as i64));
                        nulls.append_n_non_nulls(*len);
                    }
                    SourceRun::Kafka { len, .. } => {
                        indexes.extend(std::iter::repeat_n(0, *len));
                        nulls.append_n_nulls(*len);
                    }
                }
            }
            (Arc::new(files), Arc::new(Int64Array::new(ScalarBuffer::from(indexes), nulls.finish())))
        };
        self.clear();
        Ok(vec![
            topic,
            partition,
            offset,
            timestamp,
            file,
            index,
            utc(TimestampMicrosecondArray::from_value(ingested_at, n)),
        ])
    }
}

/// A string column of `n` rows given as runs of one value (or of nulls).
fn repeated_strings<'a>(
    runs: impl Iterator<Item = (Option<&'a str>, usize)>,
    n: usize,
) -> Result<StringArray, ArrowError> {
    let too_long = || ArrowError::ComputeError("source coordinates of one batch pass 2 GiB".into());
    let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
    let mut values: Vec<u8> = Vec::new();
    let mut nulls = NullBufferBuilder::new(n);
    offsets.push(0);
    for (value, len) in runs {
        match value {
            Some(v) => {
                values.reserve(v.len() * len);
                for _ in 0..len {
                    values.extend_from_slice(v.as_bytes());
                    offsets.push(i32::try_from(values.len()).map_err(|_| too_long())?);
                }
                nulls.append_n_non_nulls(len);
            }
            None => {
                let end = *offsets.last().unwrap_or(&0);
                offsets.extend(std::iter::repeat_n(end, len));
                nulls.append_n_nulls(len);
            }
        }
    }
    StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), values.into(), nulls.finish())
}

/// The metadata columns (`source_fields` order) of rows from `coordinates`, each stamped
/// `ingested_at`.
pub(crate) fn source_columns_for(coordinates: &[Coordinates], ingested_at: i64) -> Result<Vec<ArrayRef>, ArrowError> {
    let mut log = SourceLog::default();
    for c in coordinates {
        log.push(c);
    }
    log.finish(ingested_at)
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

/// Paths of the NOT NULL columns of the contract that the decoder may leave null (through
/// structs).
fn not_null_rules(decoded: &Fields, pinned: &Fields, path: &mut Vec<String>) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for f in decoded {
        let Some((_, p)) = pinned.find(f.name()) else { continue };
        path.push(f.name().clone());
        if !p.is_nullable() && f.is_nullable() {
            rules.push(path.clone());
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
        let other_file = Coordinates::File { path: Arc::from("/in/other.pb"), index: 2 };
        let other_partition =
            Coordinates::Kafka { topic: Arc::from("ads"), partition: 4, offset: 8, timestamp_ms: None };
        let other_topic =
            Coordinates::Kafka { topic: Arc::from("clicks"), partition: 3, offset: 9, timestamp_ms: Some(5) };
        for coordinates in [
            vec![file(0), file(1)],
            // Runs break at a skipped index, at another file, and back at the first file.
            vec![file(0), file(1), file(5), other_file.clone(), file(6), file(7)],
            vec![kafka(7), kafka(8)],
            vec![kafka(7), other_partition.clone(), kafka(9), other_topic.clone(), kafka(12)],
            vec![file(4), kafka(9)],
            vec![kafka(1), file(4), file(5), other_partition, other_file, kafka(2), other_topic],
            Vec::new(),
        ] {
            let columns = source_columns_for(&coordinates, 1_000_000).unwrap();
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
                    Coordinates::Kafka { topic, partition, offset, timestamp_ms } => {
                        assert_eq!(at(0).as_deref(), Some(topic.as_ref()));
                        assert_eq!(at(1), Some(partition.to_string()));
                        assert_eq!(at(2), Some(offset.to_string()));
                        match timestamp_ms {
                            Some(ms) => assert_eq!(
                                at(3).as_deref(),
                                Some(format!("1970-01-01T00:00:00.{:03}Z", ms).as_str()),
                                "row {row}"
                            ),
                            None => assert_eq!(at(3), None, "row {row}"),
                        }
                        assert_eq!([at(4), at(5)], [None, None]);
                    }
                }
                assert_eq!(at(6).as_deref(), Some("1970-01-01T00:00:01Z"));
            }
        }
    }

    /// A decoder of a small message with a nested one, and the message encoder.
    fn event_decoder() -> (Decoder, prost_reflect::MessageDescriptor) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ev.proto"),
            r#"syntax = "proto3";
package t;
message Header { int64 sent_ms = 1; optional string source = 2; }
message Ev { int64 ts_s = 1; Header header = 2; string id = 3; optional string note = 4; }
"#,
        )
        .unwrap();
        let fds = protox::compile(["ev.proto"], [dir.path()]).unwrap();
        let pool = crate::decode::Pool::from_prost(&fds).unwrap();
        let decoder = Decoder::new(&pool, "t.Ev", &crate::decode::DecodeOptions::default()).unwrap();
        let reflect = prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap();
        (decoder, reflect.get_message_by_name("t.Ev").unwrap())
    }

    /// `Ev` with the given fields set: (field, value) with `header.` for the nested message's.
    fn ev(desc: &prost_reflect::MessageDescriptor, fields: &[(&str, &str)]) -> Vec<u8> {
        use prost::Message;
        use prost_reflect::{DynamicMessage, ReflectMessage, Value};
        let value =
            |d: &prost_reflect::MessageDescriptor, name: &str, v: &str| match d.get_field_by_name(name).unwrap().kind()
            {
                prost_reflect::Kind::Int64 => Value::I64(v.parse().unwrap()),
                _ => Value::String(v.to_string()),
            };
        let mut m = DynamicMessage::new(desc.clone());
        for (name, v) in fields {
            match name.strip_prefix("header.") {
                Some(inner) => {
                    let mut header = match m.get_field_by_name("header").as_deref() {
                        Some(Value::Message(h)) if m.has_field_by_name("header") => h.clone(),
                        _ => DynamicMessage::new(
                            desc.get_field_by_name("header").unwrap().kind().as_message().unwrap().clone(),
                        ),
                    };
                    let hv = value(&header.descriptor(), inner, v);
                    header.set_field_by_name(inner, hv);
                    m.set_field_by_name("header", Value::Message(header));
                }
                None => {
                    let fv = value(desc, name, v);
                    m.set_field_by_name(name, fv);
                }
            }
        }
        m.encode_to_vec()
    }

    fn string_column(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let c = batch.column_by_name(name).unwrap();
        (0..c.len())
            .map(|i| c.is_valid(i).then(|| arrow::util::display::array_value_to_string(c, i).unwrap()))
            .collect()
    }

    #[test]
    fn a_row_without_an_event_time_is_a_dead_letter_with_its_bytes_and_its_neighbours_stay() {
        let (decoder, desc) = event_decoder();
        let et = EventTime { field: "header.sent_ms".into(), unit: Some(EventUnit::Milliseconds) };
        let mut pipeline = TablePipeline::new(decoder, None, Some(&et), 1 << 20).unwrap();
        let records = [
            ev(&desc, &[("id", "a"), ("header.sent_ms", "86400000")]),
            // No header: its field has no value (Spark reads header.sent_ms as NULL).
            ev(&desc, &[("id", "b")]),
            ev(&desc, &[("id", "c"), ("header.sent_ms", "172800000")]),
            // A header without sent_ms holds proto3's zero: 1970-01-01.
            ev(&desc, &[("id", "d"), ("header.source", "x")]),
        ];
        let mut asked = 0;
        for (i, r) in records.iter().enumerate() {
            pipeline.push_with_headers(r, &file(i as u64), || {
                asked += 1;
                vec![("h".into(), Some(b"v".to_vec()))]
            });
        }
        assert_eq!(asked, 1, "headers are taken only for the dead letter");
        assert_eq!(pipeline.pending(), 4);
        let (batch, dead) = pipeline.take(0).unwrap();
        let batch = batch.unwrap();
        assert_eq!(string_column(&batch, "id"), [Some("a".into()), Some("c".into()), Some("d".into())]);
        assert_eq!(string_column(&batch, SOURCE_INDEX), [Some("0".into()), Some("2".into()), Some("3".into())]);
        assert_eq!(
            string_column(&batch, EVENT_DATE),
            [Some("1970-01-02".into()), Some("1970-01-03".into()), Some("1970-01-01".into())]
        );
        assert_eq!(dead.len(), 1);
        let d = &dead[0];
        assert_eq!((d.reason.as_str(), d.field_path.as_str()), ("missing_event_time", "header.sent_ms"));
        assert!(d.message.contains("has no value"), "{}", d.message);
        assert_eq!(d.raw, records[1]);
        assert_eq!(d.coordinates, file(1));
        assert_eq!(d.headers, vec![("h".to_string(), Some(b"v".to_vec()))]);
        assert_eq!(pipeline.pending(), 0);
    }

    #[test]
    fn checking_records_leaves_no_row_among_the_pushed_ones() {
        let (decoder, desc) = event_decoder();
        let et = EventTime { field: "header.sent_ms".into(), unit: Some(EventUnit::Milliseconds) };
        let mut pipeline = TablePipeline::new(decoder, None, Some(&et), 1 << 20).unwrap();
        let good = |id: &str| ev(&desc, &[("id", id), ("header.sent_ms", "86400000")]);
        let no_time = ev(&desc, &[("id", "x")]);
        // More checks than are kept between bulk take-backs, pushes among them.
        let mut pushed = Vec::new();
        for i in 0..(2 * CHECKED_ROWS_KEPT + 7) {
            assert!(pipeline.check(&good(&format!("checked-{i}"))).is_empty());
            if i % 100 == 3 {
                let id = format!("pushed-{i}");
                pipeline.push(&good(&id), &file(i as u64));
                pushed.push(Some(id));
            }
            if i % 50 == 1 {
                // Each check sees its own record: the one before it is no longer the last row.
                let refused = pipeline.check(&no_time);
                assert_eq!(refused.len(), 1);
                assert_eq!(refused[0].rule, "missing_event_time");
            }
        }
        assert_eq!(pipeline.pending(), pushed.len());
        let (batch, dead) = pipeline.take(0).unwrap();
        assert_eq!(string_column(&batch.unwrap(), "id"), pushed);
        assert!(dead.is_empty());
        // A check after the take, then a take: nothing.
        assert!(pipeline.check(&good("late")).is_empty());
        assert!(pipeline.take(0).unwrap().0.is_none());
    }

    #[test]
    fn an_event_time_beyond_the_timestamp_range_is_refused_with_the_value() {
        let (decoder, desc) = event_decoder();
        let et = EventTime { field: "ts_s".into(), unit: Some(EventUnit::Seconds) };
        let mut pipeline = TablePipeline::new(decoder, None, Some(&et), 1 << 20).unwrap();
        let huge = ev(&desc, &[("ts_s", &(i64::MAX / 10).to_string()), ("id", "big")]);
        pipeline.push(&ev(&desc, &[("ts_s", "86400"), ("id", "ok")]), &kafka(5));
        pipeline.push(&huge, &kafka(6));
        let (batch, dead) = pipeline.take(0).unwrap();
        let batch = batch.unwrap();
        assert_eq!(string_column(&batch, "id"), [Some("ok".into())]);
        assert_eq!(string_column(&batch, SOURCE_OFFSET), [Some("5".into())]);
        assert_eq!(string_column(&batch, EVENT_DATE), [Some("1970-01-02".into())]);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "missing_event_time");
        assert!(dead[0].message.contains(&format!("{} seconds", i64::MAX / 10)), "{}", dead[0].message);
        assert_eq!((dead[0].raw.as_slice(), &dead[0].coordinates), (huge.as_slice(), &kafka(6)));
    }

    #[test]
    fn kept_headers_become_columns_of_the_rows_only() {
        let (decoder, desc) = event_decoder();
        let et = EventTime { field: "header.sent_ms".into(), unit: Some(EventUnit::Milliseconds) };
        let mut pipeline = TablePipeline::new(decoder, None, Some(&et), 1 << 20)
            .unwrap()
            .with_header_columns(&["idempotency-key".into()]);
        let names: Vec<String> = pipeline.table_schema().fields().iter().map(|f| f.name().clone()).collect();
        let at = names.iter().position(|n| n == "_source_header_idempotency_key").expect("the header's column");
        assert_eq!(names[at - 1], INGESTED_AT);
        let header = |v: &str| vec![("idempotency-key".to_string(), Some(v.as_bytes().to_vec()))];
        let good = |id: &str| ev(&desc, &[("id", id), ("header.sent_ms", "86400000")]);
        pipeline.push_with_headers(&good("a"), &kafka(0), || header("k-a"));
        // No event time: a dead letter, whose headers are kept as before, and no row value.
        pipeline.push_with_headers(&ev(&desc, &[("id", "b")]), &kafka(1), || header("k-b"));
        pipeline.push_with_headers(&good("c"), &kafka(2), Vec::new);
        let mut twice = header("first");
        twice.extend(header("last"));
        pipeline.push_with_headers(&good("d"), &kafka(3), || twice);
        let (batch, dead) = pipeline.take(0).unwrap();
        let batch = batch.unwrap();
        assert_eq!(string_column(&batch, "id"), [Some("a".into()), Some("c".into()), Some("d".into())]);
        assert_eq!(
            string_column(&batch, "_source_header_idempotency_key"),
            [Some("k-a".into()), None, Some("last".into())]
        );
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].headers, header("k-b"));
        assert_eq!(header_column_name("X-Request.ID"), "_source_header_x_request_id");
    }

    #[test]
    fn contract_not_nulls_refuse_the_row_at_once_but_not_beneath_an_absent_parent() {
        let (decoder, desc) = event_decoder();
        let contract = Contract::parse(
            "ts_s BIGINT NOT NULL,\nheader STRUCT<sent_ms: BIGINT NOT NULL, source: STRING NOT NULL>,\nid STRING NOT NULL,\nnote STRING NOT NULL",
        )
        .unwrap();
        let mut pipeline = TablePipeline::new(decoder, Some(&contract), None, 1 << 20).unwrap();
        let records = [
            ev(&desc, &[("id", "a"), ("note", "n")]),
            ev(&desc, &[("id", "b")]),
            ev(&desc, &[("id", "c"), ("note", "n"), ("header.sent_ms", "1")]),
            ev(&desc, &[("id", "d"), ("note", "n"), ("header.source", "s")]),
        ];
        for (i, r) in records.iter().enumerate() {
            pipeline.push(r, &file(i as u64));
        }
        let (batch, dead) = pipeline.take(0).unwrap();
        let batch = batch.unwrap();
        // Row a: header absent, so header.source is not checked (header itself may be null).
        assert_eq!(string_column(&batch, "id"), [Some("a".into()), Some("d".into())]);
        assert_eq!(string_column(&batch, SOURCE_INDEX), [Some("0".into()), Some("3".into())]);
        assert!(!batch.schema().field_with_name("note").unwrap().is_nullable());
        let got: Vec<_> = dead.iter().map(|d| (d.field_path.as_str(), d.coordinates.clone(), d.raw.clone())).collect();
        assert_eq!(got, [("note", file(1), records[1].clone()), ("header.source", file(2), records[2].clone()),]);
        assert!(dead.iter().all(|d| d.reason == "not_null_violated"));
        assert_eq!(dead[0].message, "note is NOT NULL in the contract but the record has no value");
    }
}
