//! The gateway's check of one record: the sink's own pipeline ([`TablePipeline::check`]), so a
//! record the gateway accepts is a row the sink writes, and the Kafka key read from the
//! record's bytes, so close-books and Kafka's partitioner see the same key.

use std::sync::{Arc, Mutex};

use prost::Message as _;
use prost_reflect::{Kind, MessageDescriptor};
use tonic::{Code, Status};

use crate::decode::wire::{zigzag32, zigzag64, Cursor, WireValue};
use crate::pipeline::{TablePipeline, TOO_LARGE};
use crate::validate::Violation;

/// The pipelines of one route, one per call being checked at a time.
pub struct Checkers {
    idle: Mutex<Vec<TablePipeline>>,
    /// Makes another pipeline when every one is busy (a fresh copy of the first).
    make: Box<dyn Fn() -> Option<TablePipeline> + Send + Sync>,
}

impl Checkers {
    pub fn new(first: TablePipeline, make: Box<dyn Fn() -> Option<TablePipeline> + Send + Sync>) -> Self {
        Checkers { idle: Mutex::new(vec![first]), make }
    }

    /// A pipeline for one call; it goes back to the pool when dropped.
    pub fn take(self: &Arc<Self>) -> Result<CheckerGuard, Status> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let pipeline = match idle {
            Some(p) => p,
            None => (self.make)().ok_or_else(|| Status::internal("cannot build another checker for the route"))?,
        };
        Ok(CheckerGuard { pipeline: Some(pipeline), home: self.clone() })
    }
}

pub struct CheckerGuard {
    pipeline: Option<TablePipeline>,
    home: Arc<Checkers>,
}

impl CheckerGuard {
    /// Every reason `bytes` would not become a row (empty: it would).
    pub fn check(&mut self, bytes: &[u8]) -> Vec<Violation> {
        match self.pipeline.as_mut() {
            Some(p) => p.check(bytes),
            None => Vec::new(),
        }
    }
}

impl Drop for CheckerGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            self.home.idle.lock().unwrap_or_else(|p| p.into_inner()).push(p);
        }
    }
}

/// The table's key, read from a record's wire bytes: the Kafka record key.
///
/// One key field: its value (a string's UTF-8 bytes, a number in decimal). Several: the values
/// joined by the unit separator (0x1F). An absent field is its default (`""`, `0`, `false`),
/// as the decoded row holds it.
#[derive(Debug, Clone)]
pub struct KeyReader {
    paths: Vec<Vec<(u32, Kind)>>,
}

impl KeyReader {
    /// `key`: the table's key columns (dotted paths through singular messages).
    pub fn new(message: &MessageDescriptor, key: &[String]) -> Result<Option<Self>, String> {
        if key.is_empty() {
            return Ok(None);
        }
        let mut paths = Vec::new();
        for column in key {
            let mut current = message.clone();
            let mut path = Vec::new();
            let segments: Vec<&str> = column.split('.').collect();
            for (i, seg) in segments.iter().enumerate() {
                let field = current
                    .get_field_by_name(seg)
                    .ok_or_else(|| format!("key column {column:?}: {} has no field {seg:?}", current.full_name()))?;
                if field.is_list() || field.is_map() {
                    return Err(format!("key column {column:?}: {seg} is repeated; a key is a single value"));
                }
                let last = i + 1 == segments.len();
                match (field.kind(), last) {
                    (Kind::Message(m), false) => current = m,
                    (Kind::Message(_), true) => {
                        return Err(format!("key column {column:?} is a message; name one of its fields"))
                    }
                    (_, false) => return Err(format!("key column {column:?}: {seg} is not a message")),
                    (_, true) => {}
                }
                path.push((field.number(), field.kind()));
            }
            paths.push(path);
        }
        Ok(Some(KeyReader { paths }))
    }

    /// The key of a record that passed the check (so it parses).
    pub fn read(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_into(bytes, &mut out);
        out
    }

    /// [`read`](Self::read) into a buffer of the caller's (cleared first).
    pub fn read_into(&self, bytes: &[u8], out: &mut Vec<u8>) {
        out.clear();
        for (i, path) in self.paths.iter().enumerate() {
            if i > 0 {
                out.push(0x1f);
            }
            let (_, kind) = path.last().expect("a key path has a field");
            let mut last = None;
            find_last(bytes, path, &mut last);
            render(kind, last, out);
        }
    }
}

/// The last value of the field at `path` (last one wins, as protobuf merges messages).
fn find_last<'a>(bytes: &'a [u8], path: &[(u32, Kind)], last: &mut Option<WireValue<'a>>) {
    let Some(((number, _), rest)) = path.split_first() else { return };
    let mut c = Cursor::new(bytes);
    while !c.is_empty() {
        let Some((n, wire_type)) = c.tag() else { return };
        if n != *number {
            if c.skip(wire_type).is_none() {
                return;
            }
            continue;
        }
        let Some(value) = c.value(wire_type) else { return };
        match (rest.is_empty(), value) {
            (true, v) => *last = Some(v),
            (false, WireValue::Len(inner)) => find_last(inner, rest, last),
            (false, _) => return,
        }
    }
}

fn render(kind: &Kind, value: Option<WireValue<'_>>, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = match (kind, value) {
        (Kind::String | Kind::Bytes, Some(WireValue::Len(b))) => {
            out.extend_from_slice(b);
            Ok(())
        }
        (Kind::String | Kind::Bytes, _) => Ok(()),
        (Kind::Bool, v) => write!(out, "{}", matches!(v, Some(WireValue::Varint(x)) if x != 0)),
        (Kind::Int32 | Kind::Int64 | Kind::Enum(_), Some(WireValue::Varint(x))) => {
            let v = if matches!(kind, Kind::Int32 | Kind::Enum(_)) { i64::from(x as i32) } else { x as i64 };
            write!(out, "{v}")
        }
        (Kind::Uint32, Some(WireValue::Varint(x))) => write!(out, "{}", x as u32),
        (Kind::Uint64, Some(WireValue::Varint(x))) => write!(out, "{x}"),
        (Kind::Sint32, Some(WireValue::Varint(x))) => write!(out, "{}", zigzag32(x as u32)),
        (Kind::Sint64, Some(WireValue::Varint(x))) => write!(out, "{}", zigzag64(x)),
        (Kind::Fixed32, Some(WireValue::Fixed32(x))) => write!(out, "{x}"),
        (Kind::Sfixed32, Some(WireValue::Fixed32(x))) => write!(out, "{}", x as i32),
        (Kind::Float, Some(WireValue::Fixed32(x))) => write!(out, "{}", f32::from_bits(x)),
        (Kind::Fixed64, Some(WireValue::Fixed64(x))) => write!(out, "{x}"),
        (Kind::Sfixed64, Some(WireValue::Fixed64(x))) => write!(out, "{}", x as i64),
        (Kind::Double, Some(WireValue::Fixed64(x))) => write!(out, "{}", f64::from_bits(x)),
        // Absent (or packed, which a singular field is not): the default.
        _ => write!(out, "0"),
    };
}

/// What a refused record is answered with.
pub struct RefusalContext<'a> {
    pub message: &'a str,
    pub table: &'a str,
    pub contract_version: Option<u32>,
}

/// `INVALID_ARGUMENT` listing every violation (`RESOURCE_EXHAUSTED` when the record is only too
/// large), with `google.rpc.BadRequest`, `buf.validate.Violations` and `google.rpc.ErrorInfo`
/// details.
pub fn refusal_status(context: &RefusalContext<'_>, violations: &[Violation]) -> Status {
    let only_size = violations.iter().all(|v| v.rule == TOO_LARGE);
    let code = if only_size { Code::ResourceExhausted } else { Code::InvalidArgument };
    let contract = match context.contract_version {
        Some(v) => format!("contract v{v} of table {}", context.table),
        None => format!("table {} (no pinned contract)", context.table),
    };
    let listed: Vec<String> = violations.iter().map(describe).collect();
    let text = format!(
        "{} refused by {contract}: {} violation{}: {}",
        context.message,
        violations.len(),
        if violations.len() == 1 { "" } else { "s" },
        listed.join("; ")
    );
    let bad_request = tonic_types::pb::BadRequest {
        field_violations: violations
            .iter()
            .map(|v| tonic_types::pb::bad_request::FieldViolation {
                field: v.field_path.clone(),
                description: v.message.clone(),
                reason: v.rule.clone(),
                localized_message: None,
            })
            .collect(),
    };
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("table".to_string(), context.table.to_string());
    metadata.insert("message".to_string(), context.message.to_string());
    if let Some(v) = context.contract_version {
        metadata.insert("contract_version".to_string(), v.to_string());
    }
    let error_info = tonic_types::pb::ErrorInfo {
        reason: if only_size { "RECORD_TOO_LARGE".into() } else { "CONTRACT_VIOLATION".into() },
        domain: "protolake".into(),
        metadata,
    };
    let status = tonic_types::pb::Status {
        code: code as i32,
        message: text.clone(),
        details: vec![
            any("google.rpc.BadRequest", bad_request.encode_to_vec()),
            any("buf.validate.Violations", validate_violations(violations)),
            any("google.rpc.ErrorInfo", error_info.encode_to_vec()),
        ],
    };
    Status::with_details(code, text, status.encode_to_vec().into())
}

/// `field: message [rule]`.
pub fn describe(v: &Violation) -> String {
    if v.field_path.is_empty() {
        format!("{} [{}]", v.message, v.rule)
    } else {
        format!("{}: {} [{}]", v.field_path, v.message, v.rule)
    }
}

pub fn any(name: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any { type_url: format!("type.googleapis.com/{name}"), value }
}

/// `buf.validate.Violations`: protovalidate's own violations as it reported them, protolake's
/// checks (decoding, NOT NULL, event time, size) as violations whose rule id is the reason the
/// sink's dead-letter table would give.
pub fn validate_violations(violations: &[Violation]) -> Vec<u8> {
    use prost_protovalidate_types::{FieldPath, FieldPathElement, Violation as Proto, Violations};
    let mut out = Violations::default();
    for v in violations {
        let proto = match Proto::decode(v.encoded.as_slice()) {
            Ok(p) if !v.encoded.is_empty() => p,
            _ => Proto {
                field: (!v.field_path.is_empty()).then(|| FieldPath {
                    elements: v
                        .field_path
                        .split('.')
                        .map(|name| FieldPathElement { field_name: Some(name.to_string()), ..Default::default() })
                        .collect(),
                }),
                rule_id: Some(v.rule.clone()),
                message: Some(v.message.clone()),
                ..Default::default()
            },
        };
        out.violations.push(proto);
    }
    out.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> MessageDescriptor {
        let proto = r#"
            syntax = "proto3";
            package t;
            message Inner { string id = 1; sint64 n = 2; }
            message M { string id = 1; int32 slot = 2; Inner inner = 3; repeated string tags = 4; double price = 5; }
        "#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.proto"), proto).unwrap();
        let fds = protox::compile(["m.proto"], [dir.path()]).unwrap();
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap();
        pool.get_message_by_name("t.M").unwrap()
    }

    fn encode(fields: &[(u32, u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, wt, payload) in fields {
            out.push(((n << 3) | u32::from(*wt)) as u8);
            if *wt == 2 {
                out.push(payload.len() as u8);
            }
            out.extend_from_slice(payload);
        }
        out
    }

    #[test]
    fn the_key_is_the_last_value_of_each_key_column() {
        let m = descriptor();
        let one = KeyReader::new(&m, &["id".into()]).unwrap().unwrap();
        let record = encode(&[(1, 2, b"first".to_vec()), (2, 0, vec![0x05]), (1, 2, b"second".to_vec())]);
        assert_eq!(one.read(&record), b"second");
        assert_eq!(one.read(&[]), b"");

        let several = KeyReader::new(&m, &["slot".into(), "inner.n".into(), "inner.id".into()]).unwrap().unwrap();
        // slot = -1 (ten-byte varint), inner { n = -2 (zigzag 3) } then inner { id = "x" } merged.
        let mut record = vec![0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        record.extend(encode(&[(3, 2, vec![0x10, 0x03]), (3, 2, vec![0x0a, 0x01, b'x'])]));
        assert_eq!(several.read(&record), b"-1\x1f-2\x1fx");
        assert_eq!(several.read(&[]), b"0\x1f0\x1f");
    }

    #[test]
    fn a_key_column_the_message_cannot_hold_is_refused() {
        let m = descriptor();
        assert!(KeyReader::new(&m, &[]).unwrap().is_none());
        for (column, says) in
            [("nope", "has no field"), ("tags", "repeated"), ("inner", "is a message"), ("id.x", "is not a message")]
        {
            let e = KeyReader::new(&m, &[column.into()]).unwrap_err();
            assert!(e.contains(says), "{column}: {e}");
        }
    }

    #[test]
    fn a_refusal_lists_every_violation_in_each_detail() {
        let violations = vec![
            Violation {
                field_path: "country".into(),
                rule: "string.len".into(),
                message: "value length must be 2 characters".into(),
                encoded: Vec::new(),
            },
            Violation {
                field_path: "event_time".into(),
                rule: "missing_event_time".into(),
                message: "event_time has no value".into(),
                encoded: Vec::new(),
            },
        ];
        let context = RefusalContext { message: "t.M", table: "events", contract_version: Some(3) };
        let status = refusal_status(&context, &violations);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("contract v3 of table events: 2 violations"), "{}", status.message());
        let details = tonic_types::pb::Status::decode(status.details()).unwrap();
        let urls: Vec<&str> = details.details.iter().map(|a| a.type_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "type.googleapis.com/google.rpc.BadRequest",
                "type.googleapis.com/buf.validate.Violations",
                "type.googleapis.com/google.rpc.ErrorInfo"
            ]
        );
        let bad = tonic_types::pb::BadRequest::decode(details.details[0].value.as_slice()).unwrap();
        let fields: Vec<(&str, &str)> =
            bad.field_violations.iter().map(|f| (f.field.as_str(), f.reason.as_str())).collect();
        assert_eq!(fields, [("country", "string.len"), ("event_time", "missing_event_time")]);
        let buf = prost_protovalidate_types::Violations::decode(details.details[1].value.as_slice()).unwrap();
        assert_eq!(buf.violations.len(), 2);
        assert_eq!(buf.violations[1].rule_id.as_deref(), Some("missing_event_time"));
        let info = tonic_types::pb::ErrorInfo::decode(details.details[2].value.as_slice()).unwrap();
        assert_eq!(info.metadata.get("contract_version").map(String::as_str), Some("3"));

        let too_large = Violation {
            field_path: String::new(),
            rule: TOO_LARGE.into(),
            message: "record of 9 bytes is over max_record_bytes (8)".into(),
            encoded: Vec::new(),
        };
        assert_eq!(refusal_status(&context, &[too_large]).code(), Code::ResourceExhausted);
    }
}
