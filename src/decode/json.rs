//! `google.protobuf.Struct`, `Value` and `ListValue` rendered as canonical proto3 JSON text
//! (PROTOBUF_MAPPING §9), straight from the wire. These types are recursive, so a nesting limit
//! bounds the work; merge semantics hold because the caller passes every occurrence of a field
//! concatenated, and concatenation is merge on the wire.

use std::fmt::Write;

use super::error::{Reason, RecordError};
use super::wire::{self, Reader, EGROUP, I64, LEN, VARINT};

/// Deepest `Value` nesting rendered before the record is refused (protobuf's own default limit).
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Struct,
    Value,
    ListValue,
}

impl JsonKind {
    pub fn from_full_name(name: &str) -> Option<Self> {
        match name {
            "google.protobuf.Struct" => Some(JsonKind::Struct),
            "google.protobuf.Value" => Some(JsonKind::Value),
            "google.protobuf.ListValue" => Some(JsonKind::ListValue),
            _ => None,
        }
    }

    /// The JSON of a default instance.
    pub fn empty_json(self) -> &'static str {
        match self {
            JsonKind::Struct => "{}",
            JsonKind::Value => "null",
            JsonKind::ListValue => "[]",
        }
    }
}

/// Renders one message of `kind` (the merge of all its occurrences) as JSON text.
pub fn render(kind: JsonKind, bytes: &[u8]) -> Result<String, RecordError> {
    let mut out = String::with_capacity(bytes.len() + 2);
    let parts = [bytes];
    match kind {
        JsonKind::Struct => write_struct(&parts, &mut out, 0)?,
        JsonKind::Value => write_value(&parts, &mut out, 0)?,
        JsonKind::ListValue => write_list(&parts, &mut out, 0)?,
    }
    Ok(out)
}

fn mismatch(r: &Reader<'_>, wt: u8, field: &str) -> RecordError {
    r.error(Reason::WireTypeMismatch, format!("wire type {wt} ({}) for field {field}", wire::wire_type_name(wt)))
}

fn end_group(r: &Reader<'_>, n: u32) -> RecordError {
    r.error(Reason::UnexpectedEndGroup, format!("end-group for field {n} that no start-group opened"))
}

fn too_deep(depth: usize) -> Result<(), RecordError> {
    if depth >= MAX_DEPTH {
        Err(RecordError::new(Reason::TooDeep, 0, format!("google.protobuf.Value nested deeper than {MAX_DEPTH}")))
    } else {
        Ok(())
    }
}

fn utf8<'a>(r: &Reader<'a>) -> Result<&'a str, RecordError> {
    simdutf8::compat::from_utf8(r.rest())
        .map_err(|e| RecordError::new(Reason::InvalidUtf8, r.offset() + e.valid_up_to(), "string is not valid UTF-8"))
}

enum ValueKind<'a> {
    Unset,
    Null,
    Number(f64),
    Str(&'a str),
    Bool(bool),
    Struct(Vec<&'a [u8]>),
    List(Vec<&'a [u8]>),
}

fn write_value(parts: &[&[u8]], out: &mut String, depth: usize) -> Result<(), RecordError> {
    too_deep(depth)?;
    let mut kind = ValueKind::Unset;
    for part in parts {
        let mut r = Reader::new(part);
        while !r.is_empty() {
            let (n, wt) = r.read_tag()?;
            kind = match (n, wt) {
                (1, VARINT) => {
                    r.read_varint()?;
                    ValueKind::Null
                }
                (2, I64) => ValueKind::Number(f64::from_bits(r.read_fixed64()?)),
                (3, LEN) => ValueKind::Str(utf8(&r.read_len()?).map_err(|e| e.in_field("string_value"))?),
                (4, VARINT) => ValueKind::Bool(r.read_varint()? != 0),
                (5, LEN) => {
                    let body = r.read_len()?.rest();
                    match kind {
                        ValueKind::Struct(mut v) => {
                            v.push(body);
                            ValueKind::Struct(v)
                        }
                        _ => ValueKind::Struct(vec![body]),
                    }
                }
                (6, LEN) => {
                    let body = r.read_len()?.rest();
                    match kind {
                        ValueKind::List(mut v) => {
                            v.push(body);
                            ValueKind::List(v)
                        }
                        _ => ValueKind::List(vec![body]),
                    }
                }
                (1..=6, _) => return Err(mismatch(&r, wt, VALUE_FIELDS[n as usize - 1])),
                (_, EGROUP) => return Err(end_group(&r, n)),
                _ => {
                    r.skip(n, wt)?;
                    kind
                }
            };
        }
    }
    match kind {
        ValueKind::Unset | ValueKind::Null => out.push_str("null"),
        ValueKind::Number(v) => write_number(v, out),
        ValueKind::Str(s) => write_string(s, out),
        ValueKind::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        ValueKind::Struct(parts) => write_struct(&parts, out, depth + 1).map_err(|e| e.in_field("struct_value"))?,
        ValueKind::List(parts) => write_list(&parts, out, depth + 1).map_err(|e| e.in_field("list_value"))?,
    }
    Ok(())
}

const VALUE_FIELDS: [&str; 6] =
    ["null_value", "number_value", "string_value", "bool_value", "struct_value", "list_value"];

fn write_struct(parts: &[&[u8]], out: &mut String, depth: usize) -> Result<(), RecordError> {
    too_deep(depth)?;
    // Map semantics: the last entry for a key wins; its value is replaced, not merged.
    let mut entries: Vec<(&str, Vec<&[u8]>)> = Vec::new();
    for part in parts {
        let mut r = Reader::new(part);
        while !r.is_empty() {
            let (n, wt) = r.read_tag()?;
            match (n, wt) {
                (1, LEN) => {
                    let mut entry = r.read_len()?;
                    let mut key = "";
                    let mut value: Vec<&[u8]> = Vec::new();
                    while !entry.is_empty() {
                        let (en, ewt) = entry.read_tag()?;
                        match (en, ewt) {
                            (1, LEN) => key = utf8(&entry.read_len()?).map_err(|e| e.in_field("fields"))?,
                            (2, LEN) => value.push(entry.read_len()?.rest()),
                            (1 | 2, _) => return Err(mismatch(&entry, ewt, "fields").in_field("fields")),
                            (_, EGROUP) => return Err(end_group(&entry, en)),
                            _ => entry.skip(en, ewt)?,
                        }
                    }
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(existing) => existing.1 = value,
                        None => entries.push((key, value)),
                    }
                }
                (1, _) => return Err(mismatch(&r, wt, "fields")),
                (_, EGROUP) => return Err(end_group(&r, n)),
                _ => r.skip(n, wt)?,
            }
        }
    }
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write_value(value, out, depth + 1).map_err(|e| e.in_field(key))?;
    }
    out.push('}');
    Ok(())
}

fn write_list(parts: &[&[u8]], out: &mut String, depth: usize) -> Result<(), RecordError> {
    too_deep(depth)?;
    out.push('[');
    let mut first = true;
    for part in parts {
        let mut r = Reader::new(part);
        while !r.is_empty() {
            let (n, wt) = r.read_tag()?;
            match (n, wt) {
                (1, LEN) => {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    let body = r.read_len()?.rest();
                    write_value(&[body], out, depth + 1)?;
                }
                (1, _) => return Err(mismatch(&r, wt, "values")),
                (_, EGROUP) => return Err(end_group(&r, n)),
                _ => r.skip(n, wt)?,
            }
        }
    }
    out.push(']');
    Ok(())
}

fn write_number(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v:?}");
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(n: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, body.len() as u8];
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn renders_nested_values() {
        // Struct { "a": 1.5, "b": ["x", true], "c": null }
        let num = [&[0x11u8][..], &1.5f64.to_le_bytes()].concat();
        let list = [len_field(1, &len_field(3, b"x")), len_field(1, &[0x20, 0x01])].concat();
        let b = len_field(6, &list);
        let entries = [
            len_field(1, &[len_field(1, b"a"), len_field(2, &num)].concat()),
            len_field(1, &[len_field(1, b"b"), len_field(2, &b)].concat()),
            len_field(1, &[len_field(1, b"c"), len_field(2, &[0x08, 0x00])].concat()),
        ]
        .concat();
        assert_eq!(render(JsonKind::Struct, &entries).unwrap(), r#"{"a":1.5,"b":["x",true],"c":null}"#);
    }

    #[test]
    fn last_key_wins_and_bad_utf8_is_refused() {
        let e1 = len_field(1, &[len_field(1, b"k"), len_field(2, &[0x20, 0x01])].concat());
        let e2 = len_field(1, &[len_field(1, b"k"), len_field(2, &[0x20, 0x00])].concat());
        assert_eq!(render(JsonKind::Struct, &[e1, e2].concat()).unwrap(), r#"{"k":false}"#);
        let bad = len_field(3, &[0xff]);
        assert_eq!(render(JsonKind::Value, &bad).unwrap_err().reason, Reason::InvalidUtf8);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = vec![0x20, 0x01];
        for _ in 0..200 {
            let list = encode_len(1, &v);
            v = encode_len(6, &list);
        }
        assert_eq!(render(JsonKind::Value, &v).unwrap_err().reason, Reason::TooDeep);
    }

    fn encode_len(n: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2];
        let mut len = body.len();
        while len >= 0x80 {
            v.push((len as u8) | 0x80);
            len >>= 7;
        }
        v.push(len as u8);
        v.extend_from_slice(body);
        v
    }
}
