//! The decoder tree: one [`MessageNode`] per message position in the schema (recursion is cut by
//! the planner, so the tree is finite), each owning the columns of its fields.
//!
//! A message instance is decoded in two steps. `parse` appends each field as it arrives on the
//! wire (a repeated singular field replaces its last value: last one wins; a sub-message seen
//! again merges into the same pending row). `finish_instance` then fills every field that never
//! arrived (zero, null, declared default, or a `missing_required` error) and closes list rows.
//! Until the whole record is finished nothing is visible: on error the caller truncates.

use std::collections::HashMap;

use super::column::{Column, ListCol};
use super::error::{Reason, RecordError};
use super::json::{self, JsonKind};
use super::wire::{self, Reader, EGROUP, I32, I64, LEN, SGROUP, VARINT};

/// How wire values of a field become column values.
#[derive(Debug, Clone)]
pub enum Kind {
    Bool,
    Int32,
    SInt32,
    UInt32,
    Int64,
    SInt64,
    UInt64,
    Fixed32,
    SFixed32,
    Fixed64,
    SFixed64,
    Float,
    Double,
    String,
    Bytes,
    Enum(Box<EnumTable>),
    Message {
        delimited: bool,
    },
    Timestamp,
    Duration,
    /// `google.protobuf.*Value` wrappers: the wrapped kind.
    Wrapper(Box<Kind>),
    Json(JsonKind),
}

impl Kind {
    /// The wire type a singular value of this kind arrives with.
    pub fn wire_type(&self) -> u8 {
        match self {
            Kind::Bool
            | Kind::Int32
            | Kind::SInt32
            | Kind::UInt32
            | Kind::Int64
            | Kind::SInt64
            | Kind::UInt64
            | Kind::Enum(_) => VARINT,
            Kind::Fixed32 | Kind::SFixed32 | Kind::Float => I32,
            Kind::Fixed64 | Kind::SFixed64 | Kind::Double => I64,
            Kind::Message { delimited: true } => SGROUP,
            _ => LEN,
        }
    }

    fn packable(&self) -> bool {
        self.wire_type() != LEN && self.wire_type() != SGROUP
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Int32 => "int32",
            Kind::SInt32 => "sint32",
            Kind::UInt32 => "uint32",
            Kind::Int64 => "int64",
            Kind::SInt64 => "sint64",
            Kind::UInt64 => "uint64",
            Kind::Fixed32 => "fixed32",
            Kind::SFixed32 => "sfixed32",
            Kind::Fixed64 => "fixed64",
            Kind::SFixed64 => "sfixed64",
            Kind::Float => "float",
            Kind::Double => "double",
            Kind::String => "string",
            Kind::Bytes => "bytes",
            Kind::Enum(_) => "enum",
            Kind::Message { delimited: false } => "message",
            Kind::Message { delimited: true } => "group",
            Kind::Timestamp => "google.protobuf.Timestamp",
            Kind::Duration => "google.protobuf.Duration",
            Kind::Wrapper(_) => "wrapper",
            Kind::Json(_) => "google.protobuf.Struct/Value/ListValue",
        }
    }
}

/// Enum number → name, built once per enum type.
#[derive(Debug, Clone)]
pub struct EnumTable {
    pub simple_name: String,
    pub closed: bool,
    /// Names indexed by `number - min` when the numbers are dense enough.
    dense: Vec<Option<Box<str>>>,
    min: i64,
    sparse: HashMap<i32, Box<str>>,
    /// The name used for an absent implicit-presence field or map value.
    pub default_name: Box<str>,
}

impl EnumTable {
    pub fn new(simple_name: &str, closed: bool, values: &[(String, i32)]) -> Self {
        let min = values.iter().map(|v| i64::from(v.1)).min().unwrap_or(0);
        let max = values.iter().map(|v| i64::from(v.1)).max().unwrap_or(0);
        let mut dense = Vec::new();
        let mut sparse = HashMap::new();
        if max - min < 4096 {
            dense = vec![None; (max - min + 1) as usize];
        }
        // With allow_alias the first declared name for a number is the one used.
        for (name, number) in values {
            if dense.is_empty() {
                sparse.entry(*number).or_insert_with(|| name.clone().into_boxed_str());
            } else {
                let slot = &mut dense[(i64::from(*number) - min) as usize];
                if slot.is_none() {
                    *slot = Some(name.clone().into_boxed_str());
                }
            }
        }
        let zero = values.iter().find(|v| v.1 == 0);
        let default_name = match (closed, zero, values.first()) {
            (false, Some(z), _) => z.0.clone(),
            (_, _, Some(first)) => first.0.clone(),
            _ => String::new(),
        };
        EnumTable {
            simple_name: simple_name.to_string(),
            closed,
            dense,
            min,
            sparse,
            default_name: default_name.into_boxed_str(),
        }
    }

    pub fn has_name(&self, name: &str) -> bool {
        self.dense.iter().flatten().chain(self.sparse.values()).any(|n| &**n == name)
    }

    #[inline]
    pub fn name(&self, number: i32) -> Option<&str> {
        if self.dense.is_empty() {
            self.sparse.get(&number).map(|s| &**s)
        } else {
            let i = i64::from(number) - self.min;
            if i < 0 {
                return None;
            }
            self.dense.get(i as usize).and_then(|s| s.as_deref())
        }
    }
}

/// A proto2/editions `[default = X]`, parsed for the field's kind.
#[derive(Debug, Clone)]
pub enum Declared {
    Bool(bool),
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    /// string, bytes, or the enum value's name.
    Bytes(Vec<u8>),
}

/// What an absent singular field becomes.
#[derive(Debug, Clone)]
pub enum Absent {
    /// The type's zero value (implicit presence; map keys and values, where a message is a
    /// struct of defaults).
    Zero,
    Null,
    Declared(Declared),
    Required,
}

#[derive(Debug, Clone)]
pub enum Shape {
    Singular(Absent),
    List,
    Map,
}

/// Per-field state kept while a message instance is decoded.
#[derive(Default)]
struct Scratch {
    seconds: i64,
    nanos: i32,
    /// Concatenated occurrences of a Struct/Value/ListValue field (concatenation is merge).
    json: Vec<u8>,
}

pub struct FieldPlan {
    pub name: String,
    pub number: u32,
    pub kind: Kind,
    pub shape: Shape,
    pub oneof: Option<usize>,
    pub col: Column,
    set: bool,
    scratch: Scratch,
}

impl FieldPlan {
    pub fn new(name: String, number: u32, kind: Kind, shape: Shape, oneof: Option<usize>, col: Column) -> Self {
        FieldPlan { name, number, kind, shape, oneof, col, set: false, scratch: Scratch::default() }
    }
}

/// Field number → index into `fields`.
enum Lookup {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

const NONE: u32 = u32::MAX;

pub struct MessageNode {
    pub fields: Vec<FieldPlan>,
    lookup: Lookup,
    /// The member currently set in each oneof.
    oneof_current: Vec<Option<usize>>,
    /// No fields: the struct carries one always-null dummy child (PROTOBUF_MAPPING §5).
    pub empty: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// First value of a singular field in this instance.
    Append,
    /// A singular field seen again: last wins, sub-messages merge.
    Replace,
    /// A list element: appended and, for messages, finished at once.
    Element,
}

impl MessageNode {
    pub fn new(fields: Vec<FieldPlan>, oneof_count: usize) -> Self {
        let max = fields.iter().map(|f| f.number).max().unwrap_or(0);
        let lookup = if max <= 4096 {
            let mut dense = vec![NONE; max as usize + 1];
            for (i, f) in fields.iter().enumerate() {
                dense[f.number as usize] = i as u32;
            }
            Lookup::Dense(dense)
        } else {
            Lookup::Sparse(fields.iter().enumerate().map(|(i, f)| (f.number, i as u32)).collect())
        };
        let empty = fields.is_empty();
        MessageNode { fields, lookup, oneof_current: vec![None; oneof_count], empty }
    }

    #[inline]
    fn lookup(&self, number: u32) -> Option<usize> {
        let i = match &self.lookup {
            Lookup::Dense(d) => d.get(number as usize).copied().unwrap_or(NONE),
            Lookup::Sparse(s) => s.get(&number).copied().unwrap_or(NONE),
        };
        (i != NONE).then_some(i as usize)
    }

    /// Reads fields until the reader is exhausted (`end_group` None) or the matching end-group
    /// tag is met (a group / delimited field).
    pub fn parse(&mut self, r: &mut Reader<'_>, end_group: Option<u32>) -> Result<(), RecordError> {
        loop {
            if r.is_empty() {
                return match end_group {
                    None => Ok(()),
                    Some(n) => Err(r.error(
                        Reason::UnterminatedGroup,
                        format!("group of field {n} has no end-group tag before the end of its message"),
                    )),
                };
            }
            let (number, wt) = r.read_tag()?;
            if wt == EGROUP {
                return if end_group == Some(number) {
                    Ok(())
                } else {
                    Err(r.error(
                        Reason::UnexpectedEndGroup,
                        format!("end-group tag for field {number} that no start-group opened"),
                    ))
                };
            }
            let Some(i) = self.lookup(number) else {
                r.skip(number, wt)?;
                continue;
            };
            if let Some(o) = self.fields[i].oneof {
                self.switch_oneof(o, i);
            }
            let field = &mut self.fields[i];
            read_field(field, r, wt).map_err(|e| e.in_field(&field.name))?;
        }
    }

    /// Setting one oneof member clears the member set before it.
    fn switch_oneof(&mut self, oneof: usize, member: usize) {
        if let Some(previous) = self.oneof_current[oneof] {
            if previous != member {
                let f = &mut self.fields[previous];
                if f.set {
                    let len = f.col.len();
                    f.col.truncate(len - 1);
                    f.set = false;
                }
            }
        }
        self.oneof_current[oneof] = Some(member);
    }

    /// Completes the pending instance: absent fields get their value, list rows are closed.
    pub fn finish_instance(&mut self, end: usize) -> Result<(), RecordError> {
        self.oneof_current.fill(None);
        for f in &mut self.fields {
            let was_set = std::mem::take(&mut f.set);
            match &f.shape {
                Shape::Singular(absent) => {
                    if was_set {
                        if let Column::Struct(s) = &mut f.col {
                            s.node.finish_instance(end).map_err(|e| e.in_field(&f.name))?;
                        }
                    } else {
                        push_absent(&f.kind, &mut f.col, absent, end).map_err(|e| e.in_field(&f.name))?;
                    }
                }
                Shape::List => {
                    if let Column::List(list) = &mut f.col {
                        list.close_row();
                    }
                }
                Shape::Map => {
                    if let Column::List(list) = &mut f.col {
                        mark_superseded_entries(list);
                        list.close_row();
                    }
                }
            }
        }
        Ok(())
    }

    /// One placeholder row in every column (beneath a null struct).
    pub fn push_placeholders(&mut self) {
        for f in &mut self.fields {
            f.col.push_null();
        }
    }

    /// Drops rows at and after `len` in every column and forgets the pending instance.
    pub fn truncate(&mut self, len: usize) {
        self.oneof_current.fill(None);
        for f in &mut self.fields {
            f.set = false;
            f.col.truncate(len);
        }
    }

    pub fn finish_columns(&mut self, len: usize) -> Result<Vec<arrow::array::ArrayRef>, arrow::error::ArrowError> {
        if self.empty {
            return Ok(vec![arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, len)]);
        }
        self.fields.iter_mut().map(|f| f.col.finish()).collect()
    }
}

#[inline(always)]
fn read_field(f: &mut FieldPlan, r: &mut Reader<'_>, wt: u8) -> Result<(), RecordError> {
    match f.shape {
        Shape::Singular(_) => {
            let mode = if f.set { Mode::Replace } else { Mode::Append };
            read_value(&f.kind, &mut f.col, r, wt, f.number, mode, &mut f.scratch)?;
            f.set = true;
            Ok(())
        }
        Shape::List | Shape::Map => {
            let Column::List(list) = &mut f.col else { return Ok(()) };
            let kind = if matches!(f.shape, Shape::Map) { &Kind::Message { delimited: false } } else { &f.kind };
            if wt == LEN && kind.packable() {
                let mut run = r.read_len()?;
                let native = kind.wire_type();
                while !run.is_empty() {
                    let index = list.element.len() - list.row_start();
                    read_value(kind, &mut list.element, &mut run, native, f.number, Mode::Element, &mut f.scratch)
                        .map_err(|e| e.at_index(index))?;
                }
                Ok(())
            } else {
                let index = list.element.len() - list.row_start();
                read_value(kind, &mut list.element, r, wt, f.number, Mode::Element, &mut f.scratch)
                    .map_err(|e| e.at_index(index))
            }
        }
    }
}

macro_rules! put {
    ($col:expr, $variant:ident, $v:expr, $mode:expr) => {
        match $col {
            Column::$variant(c, ..) => {
                if $mode == Mode::Replace {
                    c.set_last($v)
                } else {
                    c.push($v)
                }
            }
            _ => {}
        }
    };
}

#[inline(always)]
fn put_bytes(col: &mut Column, v: &[u8], mode: Mode, r: &Reader<'_>) -> Result<(), RecordError> {
    if let Column::Bytes(c) = col {
        let fits = if mode == Mode::Replace { c.set_last(v) } else { c.push(v) };
        if fits.is_err() {
            return Err(batch_full(r));
        }
    }
    Ok(())
}

#[cold]
fn batch_full(r: &Reader<'_>) -> RecordError {
    r.error(Reason::BatchFull, "the batch's variable-length data would pass 2 GiB; flush the batch first")
}

/// Reads one value of `kind`. Scalars are handled inline (the hot path); messages and
/// well-known types go through [`read_composite`], kept out of line so the common case carries
/// no large stack frame.
#[inline(always)]
fn read_value(
    kind: &Kind,
    col: &mut Column,
    r: &mut Reader<'_>,
    wt: u8,
    number: u32,
    mode: Mode,
    scratch: &mut Scratch,
) -> Result<(), RecordError> {
    if wt != kind.wire_type() {
        return Err(wire_type_mismatch(kind, r, wt));
    }
    match kind {
        Kind::Bool => put!(col, Bool, r.read_varint()? != 0, mode),
        Kind::Int32 => put!(col, I32, r.read_varint()? as i32, mode),
        Kind::SInt32 => put!(col, I32, wire::zigzag32(r.read_varint()? as u32), mode),
        Kind::UInt32 => put!(col, U32, r.read_varint()? as u32, mode),
        Kind::Int64 => put!(col, I64, r.read_varint()? as i64, mode),
        Kind::SInt64 => put!(col, I64, wire::zigzag64(r.read_varint()?), mode),
        Kind::UInt64 => put!(col, U64, r.read_varint()?, mode),
        Kind::Fixed32 => put!(col, U32, r.read_fixed32()?, mode),
        Kind::SFixed32 => put!(col, I32, r.read_fixed32()? as i32, mode),
        Kind::Fixed64 => put!(col, U64, r.read_fixed64()?, mode),
        Kind::SFixed64 => put!(col, I64, r.read_fixed64()? as i64, mode),
        Kind::Float => put!(col, F32, f32::from_bits(r.read_fixed32()?), mode),
        Kind::Double => put!(col, F64, f64::from_bits(r.read_fixed64()?), mode),
        Kind::String => {
            let value = r.read_len()?;
            let bytes = value.rest();
            if !is_utf8(bytes) {
                return Err(utf8_error(&value));
            }
            put_bytes(col, bytes, mode, r)?;
        }
        Kind::Bytes => {
            let value = r.read_len()?;
            put_bytes(col, value.rest(), mode, r)?;
        }
        _ => read_composite(kind, col, r, number, mode, scratch)?,
    }
    Ok(())
}

#[cold]
fn wire_type_mismatch(kind: &Kind, r: &Reader<'_>, wt: u8) -> RecordError {
    let expected = kind.wire_type();
    r.error(
        Reason::WireTypeMismatch,
        format!(
            "wire type {} ({}) cannot carry this {} field (it uses wire type {}, {}); the writer used another schema",
            wt,
            wire::wire_type_name(wt),
            kind.describe(),
            expected,
            wire::wire_type_name(expected)
        ),
    )
}

/// Enums, messages and well-known types (wire type already checked).
#[inline(never)]
fn read_composite(
    kind: &Kind,
    col: &mut Column,
    r: &mut Reader<'_>,
    number: u32,
    mode: Mode,
    scratch: &mut Scratch,
) -> Result<(), RecordError> {
    match kind {
        Kind::Enum(table) => {
            let at = *r;
            let number = r.read_varint()? as i32;
            match table.name(number) {
                Some(name) => put_bytes(col, name.as_bytes(), mode, r)?,
                None if table.closed => {
                    return Err(at.error(
                        Reason::ClosedEnumUnknownValue,
                        format!("{number} is not a value of the closed enum {}", table.simple_name),
                    ))
                }
                None => {
                    let name = format!("UNKNOWN_ENUM_VALUE_{}_{number}", table.simple_name);
                    put_bytes(col, name.as_bytes(), mode, r)?;
                }
            }
        }
        Kind::Message { delimited } => {
            let Column::Struct(s) = col else { return Ok(()) };
            if mode != Mode::Replace {
                s.len += 1;
                if let Some(n) = &mut s.nulls {
                    n.append_non_null();
                }
            }
            if *delimited {
                s.node.parse(r, Some(number))?;
            } else {
                let mut body = r.read_len()?;
                s.node.parse(&mut body, None)?;
            }
            if mode == Mode::Element {
                s.node.finish_instance(r.offset())?;
            }
        }
        Kind::Timestamp | Kind::Duration => {
            let mut body = r.read_len()?;
            if mode != Mode::Replace {
                scratch.seconds = 0;
                scratch.nanos = 0;
            }
            read_seconds_nanos(&mut body, scratch)?;
            let micros = if matches!(kind, Kind::Timestamp) {
                timestamp_micros(scratch.seconds, scratch.nanos)
            } else {
                duration_micros(scratch.seconds, scratch.nanos)
            };
            let micros = micros.ok_or_else(|| {
                r.error(
                    Reason::TimeOverflow,
                    format!("seconds={} nanos={} does not fit in int64 microseconds", scratch.seconds, scratch.nanos),
                )
            })?;
            put!(col, I64, micros, mode);
        }
        Kind::Wrapper(inner) => {
            let mut body = r.read_len()?;
            if mode != Mode::Replace {
                push_zero(inner, col, r.offset())?;
            }
            while !body.is_empty() {
                let (n, inner_wt) = body.read_tag()?;
                if n == 1 {
                    read_value(inner, col, &mut body, inner_wt, 1, Mode::Replace, scratch)
                        .map_err(|e| e.in_field("value"))?;
                } else if inner_wt == EGROUP {
                    return Err(body.error(Reason::UnexpectedEndGroup, format!("end-group for field {n}")));
                } else {
                    body.skip(n, inner_wt)?;
                }
            }
        }
        Kind::Json(json_kind) => {
            let body = r.read_len()?;
            if mode != Mode::Replace {
                scratch.json.clear();
            }
            scratch.json.extend_from_slice(body.rest());
            let text = json::render(*json_kind, &scratch.json).map_err(|mut e| {
                e.byte_offset += body.offset();
                e
            })?;
            put_bytes(col, text.as_bytes(), mode, r)?;
        }
        _ => {}
    }
    Ok(())
}

/// UTF-8 check with an ASCII fast path: most event strings (ids, URLs, codes) are ASCII and
/// short, where a word-at-a-time test beats a SIMD validator's set-up.
#[inline(always)]
fn is_utf8(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        acc |= u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    }
    let tail = chunks.remainder().iter().fold(0u8, |a, b| a | b);
    if acc & HIGH == 0 && tail < 0x80 {
        return true;
    }
    simdutf8::basic::from_utf8(bytes).is_ok()
}

#[cold]
fn utf8_error(value: &Reader<'_>) -> RecordError {
    let valid = simdutf8::compat::from_utf8(value.rest()).err().map_or(0, |e| e.valid_up_to());
    RecordError::new(
        Reason::InvalidUtf8,
        value.offset() + valid,
        format!("string is not valid UTF-8 (bad byte sequence after {valid} valid bytes)"),
    )
}

/// Reads `seconds` (1) and `nanos` (2) of a Timestamp or Duration into `scratch` (merging).
fn read_seconds_nanos(body: &mut Reader<'_>, scratch: &mut Scratch) -> Result<(), RecordError> {
    while !body.is_empty() {
        let (n, wt) = body.read_tag()?;
        match (n, wt) {
            (1, VARINT) => scratch.seconds = body.read_varint()? as i64,
            (2, VARINT) => scratch.nanos = body.read_varint()? as i32,
            (1 | 2, _) => {
                let name = if n == 1 { "seconds" } else { "nanos" };
                return Err(body
                    .error(
                        Reason::WireTypeMismatch,
                        format!("wire type {wt} ({}) for a varint field", wire::wire_type_name(wt)),
                    )
                    .in_field(name));
            }
            (_, EGROUP) => return Err(body.error(Reason::UnexpectedEndGroup, format!("end-group for field {n}"))),
            _ => body.skip(n, wt)?,
        }
    }
    Ok(())
}

/// `seconds*1e6 + nanos/1000`, flooring (nanos of a Timestamp are non-negative).
fn timestamp_micros(seconds: i64, nanos: i32) -> Option<i64> {
    seconds.checked_mul(1_000_000)?.checked_add(i64::from(nanos).div_euclid(1000))
}

/// `seconds*1e6 + trunc(nanos/1000)`: a Duration's nanos carry its sign.
fn duration_micros(seconds: i64, nanos: i32) -> Option<i64> {
    seconds.checked_mul(1_000_000)?.checked_add(i64::from(nanos) / 1000)
}

fn push_absent(kind: &Kind, col: &mut Column, absent: &Absent, end: usize) -> Result<(), RecordError> {
    match absent {
        Absent::Null => {
            col.push_null();
            Ok(())
        }
        Absent::Zero => push_zero(kind, col, end),
        Absent::Declared(d) => push_declared(d, col),
        Absent::Required => Err(RecordError::new(
            Reason::MissingRequired,
            end,
            "required field is absent (proto2 `required` / LEGACY_REQUIRED)",
        )),
    }
}

/// The type's zero value: what an implicit-presence field or a map key/value reads as when absent.
fn push_zero(kind: &Kind, col: &mut Column, end: usize) -> Result<(), RecordError> {
    let dummy = Reader::new(&[]);
    match kind {
        Kind::Bool => put!(col, Bool, false, Mode::Append),
        Kind::Int32 | Kind::SInt32 | Kind::SFixed32 => put!(col, I32, 0, Mode::Append),
        Kind::UInt32 | Kind::Fixed32 => put!(col, U32, 0, Mode::Append),
        Kind::Int64 | Kind::SInt64 | Kind::SFixed64 | Kind::Timestamp | Kind::Duration => {
            put!(col, I64, 0, Mode::Append)
        }
        Kind::UInt64 | Kind::Fixed64 => put!(col, U64, 0, Mode::Append),
        Kind::Float => put!(col, F32, 0.0, Mode::Append),
        Kind::Double => put!(col, F64, 0.0, Mode::Append),
        Kind::String | Kind::Bytes => put_bytes(col, b"", Mode::Append, &dummy)?,
        Kind::Enum(table) => put_bytes(col, table.default_name.as_bytes(), Mode::Append, &dummy)?,
        Kind::Message { .. } => {
            if let Column::Struct(s) = col {
                s.len += 1;
                if let Some(n) = &mut s.nulls {
                    n.append_non_null();
                }
                s.node.finish_instance(end)?;
            }
        }
        Kind::Wrapper(inner) => push_zero(inner, col, end)?,
        Kind::Json(k) => put_bytes(col, k.empty_json().as_bytes(), Mode::Append, &dummy)?,
    }
    Ok(())
}

fn push_declared(d: &Declared, col: &mut Column) -> Result<(), RecordError> {
    match (d, col) {
        (Declared::Bool(v), col) => put!(col, Bool, *v, Mode::Append),
        (Declared::I32(v), col) => put!(col, I32, *v, Mode::Append),
        (Declared::I64(v), col) => put!(col, I64, *v, Mode::Append),
        (Declared::U32(v), col) => put!(col, U32, *v, Mode::Append),
        (Declared::U64(v), col) => put!(col, U64, *v, Mode::Append),
        (Declared::F32(v), col) => put!(col, F32, *v, Mode::Append),
        (Declared::F64(v), col) => put!(col, F64, *v, Mode::Append),
        (Declared::Bytes(v), col) => put_bytes(col, v, Mode::Append, &Reader::new(&[]))?,
    }
    Ok(())
}

/// Map keys: the last entry with a key wins; earlier ones are marked for removal at `finish`.
fn mark_superseded_entries(list: &mut ListCol) {
    let start = list.row_start();
    let end = list.element.len();
    if end - start < 2 {
        return;
    }
    let Column::Struct(entries) = &*list.element else { return };
    let Some(key_col) = entries.node.fields.first().map(|f| &f.col) else { return };
    if end - start <= 8 {
        for i in start..end {
            if (i + 1..end).any(|j| key_eq(key_col, i, j)) {
                list.dead.push(i);
            }
        }
    } else {
        let mut last: HashMap<KeyRef<'_>, usize> = HashMap::with_capacity(end - start);
        for i in start..end {
            last.insert(key_ref(key_col, i), i);
        }
        for i in start..end {
            if last.get(&key_ref(key_col, i)) != Some(&i) {
                list.dead.push(i);
            }
        }
    }
}

#[derive(PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn key_ref(col: &Column, i: usize) -> KeyRef<'_> {
    match col {
        Column::Bool(c) => KeyRef::Int(u64::from(c.values[i])),
        Column::I32(c) => KeyRef::Int(c.values[i] as u64),
        Column::I64(c, _) => KeyRef::Int(c.values[i] as u64),
        Column::U32(c) => KeyRef::Int(u64::from(c.values[i])),
        Column::U64(c) => KeyRef::Int(c.values[i]),
        Column::Bytes(c) => KeyRef::Bytes(c.value(i)),
        _ => KeyRef::Int(i as u64),
    }
}

fn key_eq(col: &Column, i: usize, j: usize) -> bool {
    key_ref(col, i) == key_ref(col, j)
}
