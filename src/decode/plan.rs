//! Plans the decoder tree and the Arrow schema from a message descriptor, once, before any data
//! is read. Everything the mapping decides per field (kind, presence, default, recursion cut,
//! well-known types) is decided here; the hot loop only follows the plan.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};

use super::column::{BytesCol, Column, ListCol, PrimCol, StructCol};
use super::descriptor::{Cardinality, FieldDef, MessageDef, Pool, Presence, ProtoType};
use super::error::SchemaError;
use super::json::JsonKind;
use super::message::{Absent, Declared, EnumTable, FieldPlan, Kind, MessageNode, Shape};

/// The child of a struct that has no fields (PROTOBUF_MAPPING §5).
pub const EMPTY_STRUCT_FIELD: &str = "__dummy_field_in_empty_struct";
/// Names of the Arrow children of lists and maps, as Delta and Parquet spell them.
pub const LIST_ELEMENT: &str = "element";
pub const MAP_ENTRIES: &str = "key_value";

pub struct Planner<'a> {
    pool: &'a Pool,
    max_depth: Option<u32>,
    /// How often each message type appears on the current root-to-field path.
    on_path: HashMap<String, u32>,
}

/// A planned message: its decoder node and its Arrow fields.
pub struct PlannedMessage {
    pub node: MessageNode,
    pub fields: Fields,
}

impl<'a> Planner<'a> {
    pub fn new(pool: &'a Pool, max_depth: Option<u32>) -> Result<Self, SchemaError> {
        if let Some(d) = max_depth {
            if !(1..=10).contains(&d) {
                return Err(SchemaError::DepthOutOfRange(d));
            }
        }
        Ok(Planner { pool, max_depth, on_path: HashMap::new() })
    }

    pub fn plan_root(&mut self, message: &str) -> Result<PlannedMessage, SchemaError> {
        let def = self.pool.message(message).ok_or_else(|| unknown_message(self.pool, message))?;
        self.enter(def, "")
    }

    fn enter(&mut self, def: &MessageDef, path: &str) -> Result<PlannedMessage, SchemaError> {
        *self.on_path.entry(def.full_name.clone()).or_default() += 1;
        let planned = self.plan_message(def, path);
        if let Some(count) = self.on_path.get_mut(&def.full_name) {
            *count -= 1;
        }
        planned
    }

    fn plan_message(&mut self, def: &MessageDef, path: &str) -> Result<PlannedMessage, SchemaError> {
        check_case_clash(def, path)?;
        let mut plans = Vec::with_capacity(def.fields.len());
        let mut fields = Vec::with_capacity(def.fields.len());
        for f in &def.fields {
            let field_path = if path.is_empty() { f.name.clone() } else { format!("{path}.{}", f.name) };
            if let Some((plan, field)) = self.plan_field(f, &field_path)? {
                plans.push(plan);
                fields.push(field);
            }
        }
        if fields.is_empty() {
            fields.push(Field::new(EMPTY_STRUCT_FIELD, DataType::Utf8, true));
        }
        Ok(PlannedMessage { node: MessageNode::new(plans, def.oneofs.len()), fields: Fields::from(fields) })
    }

    fn plan_field(&mut self, f: &FieldDef, path: &str) -> Result<Option<(FieldPlan, Field)>, SchemaError> {
        if f.cardinality == Cardinality::Repeated {
            if let Some(entry) = self.pool.message(&f.type_name).filter(|m| m.map_entry) {
                return self.plan_map(f, entry, path);
            }
        }
        let Some(value) = self.plan_value(f, path)? else { return Ok(None) };
        if f.cardinality == Cardinality::Repeated {
            let (kind, data_type, element_col) = value.column(false);
            let element = Arc::new(arrow_field(LIST_ELEMENT, &kind, data_type, false));
            let col = Column::List(ListCol::new(element_col, element.clone(), false));
            let plan = FieldPlan::new(f.name.clone(), f.number, kind, Shape::List, None, col);
            return Ok(Some((plan, Field::new(&f.name, DataType::List(element), true))));
        }
        let absent = match f.presence {
            Presence::Required => Absent::Required,
            Presence::Implicit => Absent::Zero,
            Presence::Explicit => match &f.default_value {
                Some(text) if !matches!(value.kind, Kind::Message { .. }) => {
                    Absent::Declared(parse_default(&value.kind, text, path)?)
                }
                _ => Absent::Null,
            },
        };
        let nullable = f.presence != Presence::Required;
        let (kind, data_type, col) = value.column(nullable);
        let field = arrow_field(&f.name, &kind, data_type, nullable);
        let plan = FieldPlan::new(f.name.clone(), f.number, kind, Shape::Singular(absent), f.oneof, col);
        Ok(Some((plan, field)))
    }

    fn plan_map(
        &mut self,
        f: &FieldDef,
        entry: &MessageDef,
        path: &str,
    ) -> Result<Option<(FieldPlan, Field)>, SchemaError> {
        let (Some(key_def), Some(value_def)) =
            (entry.fields.iter().find(|e| e.number == 1), entry.fields.iter().find(|e| e.number == 2))
        else {
            return Err(SchemaError::DescriptorSet {
                reason: format!("{path}: map entry {} lacks its key or value field", entry.full_name),
            });
        };
        let Some(key) = self.plan_value(key_def, &format!("{path}.key"))? else { return Ok(None) };
        // A map whose values are cut by the recursion limit is dropped whole (§10).
        let Some(value) = self.plan_value(value_def, &format!("{path}.value"))? else { return Ok(None) };
        let (key_kind, key_type, key_col) = key.column(false);
        let (value_kind, value_type, value_col) = value.column(false);
        let entry_fields = Fields::from(vec![
            Field::new("key", key_type, false),
            arrow_field("value", &value_kind, value_type, false),
        ]);
        let entries = Arc::new(Field::new(MAP_ENTRIES, DataType::Struct(entry_fields.clone()), false));
        let key_plan = FieldPlan::new("key".into(), 1, key_kind, Shape::Singular(Absent::Zero), None, key_col);
        let value_plan = FieldPlan::new("value".into(), 2, value_kind, Shape::Singular(Absent::Zero), None, value_col);
        let entry_col = Column::Struct(Box::new(StructCol {
            len: 0,
            nulls: None,
            node: MessageNode::new(vec![key_plan, value_plan], 0),
            fields: entry_fields,
        }));
        let col = Column::List(ListCol::new(entry_col, entries.clone(), true));
        let plan = FieldPlan::new(f.name.clone(), f.number, Kind::Message { delimited: false }, Shape::Map, None, col);
        Ok(Some((plan, Field::new(&f.name, DataType::Map(entries, false), true))))
    }

    /// The kind and Arrow type of one value of field `f` (ignoring its cardinality); None when
    /// the recursion limit cuts it.
    fn plan_value(&mut self, f: &FieldDef, path: &str) -> Result<Option<Value>, SchemaError> {
        let scalar = |kind: Kind, data_type: DataType| Ok(Some(Value { kind, data_type, message: None }));
        match f.ty {
            ProtoType::Double => scalar(Kind::Double, DataType::Float64),
            ProtoType::Float => scalar(Kind::Float, DataType::Float32),
            ProtoType::Int64 => scalar(Kind::Int64, DataType::Int64),
            ProtoType::SInt64 => scalar(Kind::SInt64, DataType::Int64),
            ProtoType::SFixed64 => scalar(Kind::SFixed64, DataType::Int64),
            ProtoType::UInt64 => scalar(Kind::UInt64, DataType::UInt64),
            ProtoType::Fixed64 => scalar(Kind::Fixed64, DataType::UInt64),
            ProtoType::Int32 => scalar(Kind::Int32, DataType::Int32),
            ProtoType::SInt32 => scalar(Kind::SInt32, DataType::Int32),
            ProtoType::SFixed32 => scalar(Kind::SFixed32, DataType::Int32),
            ProtoType::UInt32 => scalar(Kind::UInt32, DataType::UInt32),
            ProtoType::Fixed32 => scalar(Kind::Fixed32, DataType::UInt32),
            ProtoType::Bool => scalar(Kind::Bool, DataType::Boolean),
            ProtoType::String => scalar(Kind::String, DataType::Utf8),
            ProtoType::Bytes => scalar(Kind::Bytes, DataType::Binary),
            ProtoType::Enum => {
                let def = self.pool.enumeration(&f.type_name).ok_or_else(|| SchemaError::DescriptorSet {
                    reason: format!("{path}: enum {} is not in the descriptor set", f.type_name),
                })?;
                let table = EnumTable::new(&def.name, def.closed, &def.values);
                scalar(Kind::Enum(Box::new(table)), DataType::Utf8)
            }
            ProtoType::Message | ProtoType::Group => {
                if !f.delimited {
                    if let Some(wkt) = well_known(&f.type_name) {
                        return scalar(wkt.0, wkt.1);
                    }
                }
                let def = self.pool.message(&f.type_name).ok_or_else(|| SchemaError::DescriptorSet {
                    reason: format!("{path}: message {} is not in the descriptor set", f.type_name),
                })?;
                let seen = self.on_path.get(&def.full_name).copied().unwrap_or(0);
                if seen > 0 {
                    match self.max_depth {
                        None => {
                            return Err(SchemaError::Recursive {
                                path: path.to_string(),
                                type_name: def.full_name.clone(),
                            })
                        }
                        Some(limit) if seen >= limit => return Ok(None),
                        Some(_) => {}
                    }
                }
                let planned = self.enter(def, path)?;
                Ok(Some(Value {
                    kind: Kind::Message { delimited: f.delimited },
                    data_type: DataType::Struct(planned.fields.clone()),
                    message: Some(planned),
                }))
            }
        }
    }
}

/// Arrow extension type of the JSON text columns (Struct / Value / ListValue).
pub const JSON_EXTENSION: &str = "arrow.json";

fn arrow_field(name: &str, kind: &Kind, data_type: DataType, nullable: bool) -> Field {
    let field = Field::new(name, data_type, nullable);
    if matches!(kind, Kind::Json(_)) {
        field.with_metadata([("ARROW:extension:name".to_string(), JSON_EXTENSION.to_string())].into_iter().collect())
    } else {
        field
    }
}

/// A planned value: its kind, Arrow type and, for messages, the planned sub-message.
struct Value {
    kind: Kind,
    data_type: DataType,
    message: Option<PlannedMessage>,
}

impl Value {
    fn column(self, nullable: bool) -> (Kind, DataType, Column) {
        let col = make_column(&self.data_type, nullable, self.message);
        (self.kind, self.data_type, col)
    }
}

fn make_column(data_type: &DataType, nullable: bool, message: Option<PlannedMessage>) -> Column {
    match (data_type, message) {
        (DataType::Struct(_), Some(m)) => Column::Struct(Box::new(StructCol {
            len: 0,
            nulls: nullable.then(|| arrow::array::NullBufferBuilder::new(0)),
            node: m.node,
            fields: m.fields,
        })),
        (DataType::Boolean, _) => Column::Bool(PrimCol::new(nullable)),
        (DataType::Int32, _) => Column::I32(PrimCol::new(nullable)),
        (DataType::UInt32, _) => Column::U32(PrimCol::new(nullable)),
        (DataType::UInt64, _) => Column::U64(PrimCol::new(nullable)),
        (DataType::Float32, _) => Column::F32(PrimCol::new(nullable)),
        (DataType::Float64, _) => Column::F64(PrimCol::new(nullable)),
        (DataType::Binary, _) => Column::Bytes(BytesCol::new(nullable, false)),
        (DataType::Utf8, _) => Column::Bytes(BytesCol::new(nullable, true)),
        (dt, _) => Column::I64(PrimCol::new(nullable), dt.clone()),
    }
}

fn well_known(full_name: &str) -> Option<(Kind, DataType)> {
    let wrapper = |inner: Kind, dt: DataType| Some((Kind::Wrapper(Box::new(inner)), dt));
    match full_name {
        "google.protobuf.Timestamp" => {
            Some((Kind::Timestamp, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))))
        }
        "google.protobuf.Duration" => Some((Kind::Duration, DataType::Duration(TimeUnit::Microsecond))),
        "google.protobuf.DoubleValue" => wrapper(Kind::Double, DataType::Float64),
        "google.protobuf.FloatValue" => wrapper(Kind::Float, DataType::Float32),
        "google.protobuf.Int64Value" => wrapper(Kind::Int64, DataType::Int64),
        "google.protobuf.UInt64Value" => wrapper(Kind::UInt64, DataType::UInt64),
        "google.protobuf.Int32Value" => wrapper(Kind::Int32, DataType::Int32),
        "google.protobuf.UInt32Value" => wrapper(Kind::UInt32, DataType::UInt32),
        "google.protobuf.BoolValue" => wrapper(Kind::Bool, DataType::Boolean),
        "google.protobuf.StringValue" => wrapper(Kind::String, DataType::Utf8),
        "google.protobuf.BytesValue" => wrapper(Kind::Bytes, DataType::Binary),
        other => JsonKind::from_full_name(other).map(|k| (Kind::Json(k), DataType::Utf8)),
    }
}

fn check_case_clash(def: &MessageDef, path: &str) -> Result<(), SchemaError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for f in &def.fields {
        if let Some(first) = seen.insert(f.name.to_ascii_lowercase(), &f.name) {
            return Err(SchemaError::CaseInsensitiveClash {
                path: if path.is_empty() { def.full_name.clone() } else { path.to_string() },
                first: first.to_string(),
                second: f.name.clone(),
            });
        }
    }
    Ok(())
}

fn unknown_message(pool: &Pool, name: &str) -> SchemaError {
    let wanted = name.trim_start_matches('.');
    let simple = wanted.rsplit('.').next().unwrap_or(wanted);
    let candidates: Vec<&str> = pool
        .message_names()
        .into_iter()
        .filter(|n| n.rsplit('.').next() == Some(simple) || n.ends_with(wanted))
        .collect();
    let hint = if candidates.is_empty() {
        let all = pool.message_names();
        let shown: Vec<&str> = all.iter().copied().filter(|n| !n.starts_with("google.protobuf.")).take(12).collect();
        if shown.is_empty() {
            "; it has no messages of its own (built without the .proto that defines it?)".to_string()
        } else {
            format!("; it has: {}", shown.join(", "))
        }
    } else {
        format!("; did you mean {}?", candidates.join(" or "))
    };
    SchemaError::UnknownMessage { name: name.to_string(), hint }
}

/// Parses a declared default as `protoc` writes it into the descriptor.
fn parse_default(kind: &Kind, text: &str, path: &str) -> Result<Declared, SchemaError> {
    let bad = |kind: &'static str| SchemaError::BadDefault { path: path.to_string(), value: text.to_string(), kind };
    let float = |t: &str| -> Option<f64> {
        match t {
            "inf" | "infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            t => t.parse().ok(),
        }
    };
    Ok(match kind {
        Kind::Bool => Declared::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(bad("bool")),
        }),
        Kind::Int32 | Kind::SInt32 | Kind::SFixed32 => Declared::I32(parse_int(text).ok_or_else(|| bad("int32"))?),
        Kind::Int64 | Kind::SInt64 | Kind::SFixed64 => Declared::I64(parse_int(text).ok_or_else(|| bad("int64"))?),
        Kind::UInt32 | Kind::Fixed32 => Declared::U32(parse_int(text).ok_or_else(|| bad("uint32"))?),
        Kind::UInt64 | Kind::Fixed64 => Declared::U64(parse_int(text).ok_or_else(|| bad("uint64"))?),
        Kind::Float => Declared::F32(float(text).ok_or_else(|| bad("float"))? as f32),
        Kind::Double => Declared::F64(float(text).ok_or_else(|| bad("double"))?),
        Kind::String => Declared::Bytes(text.as_bytes().to_vec()),
        Kind::Bytes => Declared::Bytes(unescape_c(text).ok_or_else(|| bad("bytes"))?),
        Kind::Enum(table) => {
            if !table.has_name(text) {
                return Err(bad("enum"));
            }
            Declared::Bytes(text.as_bytes().to_vec())
        }
        _ => return Err(bad("message")),
    })
}

fn parse_int<T: TryFrom<i128>>(text: &str) -> Option<T> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        i128::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i128::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<i128>().ok()?
    };
    T::try_from(if neg { -value } else { value }).ok()
}

/// Undoes the C escaping `protoc` applies to `bytes` defaults.
fn unescape_c(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = *bytes.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' | b'?' => out.push(e),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match bytes.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v).ok()?);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while let Some(d) = bytes.get(i).and_then(|d| (*d as char).to_digit(16)) {
                    v = v * 16 + d;
                    i += 1;
                    n += 1;
                    if n == 2 {
                        break;
                    }
                }
                if n == 0 {
                    return None;
                }
                out.push(v as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_escapes() {
        assert_eq!(unescape_c(r"a\001\x41\n\\").unwrap(), b"a\x01A\n\\");
        assert!(unescape_c(r"\q").is_none());
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int::<i32>("-2147483648"), Some(i32::MIN));
        assert_eq!(parse_int::<u64>("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_int::<u32>("-1"), None);
        assert_eq!(parse_int::<i64>("0x10"), Some(16));
    }
}
