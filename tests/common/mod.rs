//! Test support: compile the fixture .proto files, an independent reference ("oracle") for the
//! mapping built on prost-reflect's view of the same bytes, Arrow → JSON for comparison, and a
//! seeded random message generator.
#![allow(dead_code)]

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Fields};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{json, Map, Value as Json};

/// Compiles `tests/protos/<file>` (WKT imports included) into encoded descriptor-set bytes and
/// prost-reflect's pool of the same files.
pub fn compile(file: &str) -> (Vec<u8>, DescriptorPool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos");
    let fds = protox::compile([file], [dir]).expect("fixture compiles");
    let bytes = prost::Message::encode_to_vec(&fds);
    let pool = DescriptorPool::decode(bytes.as_slice()).expect("prost-reflect reads it");
    (bytes, pool)
}

/// A protobuf varint.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

// ---------------------------------------------------------------------------------------------
// Arrow → JSON

fn is_json_field(field: &Field) -> bool {
    field.metadata().get("ARROW:extension:name").map(String::as_str) == Some("arrow.json")
}

/// Numbers as f64 so JSON text compares as parsed JSON.
pub fn normalize(v: Json) -> Json {
    match v {
        Json::Number(n) => json!(n.as_f64().unwrap()),
        Json::Array(a) => Json::Array(a.into_iter().map(normalize).collect()),
        Json::Object(o) => Json::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

pub fn batch_rows(batch: &RecordBatch) -> Vec<Json> {
    (0..batch.num_rows())
        .map(|row| {
            let mut obj = Map::new();
            for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), arrow_value(field, col.as_ref(), row));
            }
            Json::Object(obj)
        })
        .collect()
}

pub fn arrow_value(field: &Field, array: &dyn Array, row: usize) -> Json {
    if array.is_null(row) {
        return Json::Null;
    }
    use arrow::datatypes::*;
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => json!(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => json!(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => json!(format!("f32:{:08x}", array.as_primitive::<Float32Type>().value(row).to_bits())),
        DataType::Float64 => json!(format!("f64:{:016x}", array.as_primitive::<Float64Type>().value(row).to_bits())),
        DataType::Timestamp(_, _) => json!(array.as_primitive::<TimestampMicrosecondType>().value(row)),
        DataType::Duration(_) => json!(array.as_primitive::<DurationMicrosecondType>().value(row)),
        DataType::Utf8 => {
            let s = array.as_string::<i32>().value(row);
            if is_json_field(field) {
                normalize(serde_json::from_str(s).expect("JSON column holds JSON"))
            } else {
                json!(s)
            }
        }
        DataType::Binary => json!(format!("hex:{}", hex(array.as_binary::<i32>().value(row)))),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), arrow_value(f, c.as_ref(), row));
            }
            Json::Object(obj)
        }
        DataType::List(element) => {
            let l = array.as_list::<i32>();
            let values = l.value(row);
            Json::Array((0..values.len()).map(|i| arrow_value(element, values.as_ref(), i)).collect())
        }
        DataType::Map(entries, _) => {
            let m = array.as_map();
            let DataType::Struct(kv) = entries.data_type() else { unreachable!() };
            let e = m.value(row);
            let mut pairs: Vec<Json> = (0..e.len())
                .map(|i| {
                    json!([arrow_value(&kv[0], e.column(0).as_ref(), i), arrow_value(&kv[1], e.column(1).as_ref(), i)])
                })
                .collect();
            pairs.sort_by_key(|p| p[0].to_string());
            Json::Array(pairs)
        }
        other => panic!("unexpected type {other}"),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The oracle: PROTOBUF_MAPPING applied to prost-reflect's view of a message.

pub fn oracle_row(msg: &DynamicMessage, fields: &Fields) -> Json {
    oracle_struct(msg, fields)
}

fn oracle_struct(msg: &DynamicMessage, fields: &Fields) -> Json {
    let desc = msg.descriptor();
    let mut obj = Map::new();
    for field in fields.iter() {
        if field.name() == "__dummy_field_in_empty_struct" {
            obj.insert(field.name().clone(), Json::Null);
            continue;
        }
        let fd = desc.get_field_by_name(field.name()).expect("schema field exists in descriptor");
        obj.insert(field.name().clone(), oracle_field(msg, &fd, field));
    }
    Json::Object(obj)
}

fn has_declared_default(fd: &FieldDescriptor) -> bool {
    fd.field_descriptor_proto().default_value.is_some()
}

fn oracle_field(msg: &DynamicMessage, fd: &FieldDescriptor, field: &Field) -> Json {
    let value = msg.get_field(fd);
    if fd.is_list() {
        let DataType::List(element) = field.data_type() else { panic!("list expected") };
        let Value::List(items) = value.as_ref() else { panic!() };
        return Json::Array(items.iter().map(|v| oracle_value(v, &fd.kind(), element)).collect());
    }
    if fd.is_map() {
        let DataType::Map(entries, _) = field.data_type() else { panic!("map expected") };
        let DataType::Struct(kv) = entries.data_type() else { panic!() };
        let Kind::Message(entry) = fd.kind() else { panic!() };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let Value::Map(map) = value.as_ref() else { panic!() };
        let mut pairs: Vec<Json> = map
            .iter()
            .map(|(k, v)| json!([oracle_value(&map_key(k), &key_kind, &kv[0]), oracle_value(v, &value_kind, &kv[1])]))
            .collect();
        pairs.sort_by_key(|p| p[0].to_string());
        return Json::Array(pairs);
    }
    let explicit = fd.supports_presence();
    if explicit && !msg.has_field(fd) && (matches!(fd.kind(), Kind::Message(_)) || !has_declared_default(fd)) {
        return Json::Null;
    }
    oracle_value(&value, &fd.kind(), field)
}

fn map_key(k: &MapKey) -> Value {
    match k {
        MapKey::Bool(b) => Value::Bool(*b),
        MapKey::I32(v) => Value::I32(*v),
        MapKey::I64(v) => Value::I64(*v),
        MapKey::U32(v) => Value::U32(*v),
        MapKey::U64(v) => Value::U64(*v),
        MapKey::String(s) => Value::String(s.clone()),
    }
}

fn oracle_value(v: &Value, kind: &Kind, field: &Field) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I32(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::F32(x) => json!(format!("f32:{:08x}", x.to_bits())),
        Value::F64(x) => json!(format!("f64:{:016x}", x.to_bits())),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(format!("hex:{}", hex(b))),
        Value::EnumNumber(n) => {
            let Kind::Enum(e) = kind else { panic!("enum kind") };
            // With allow_alias the first declared name wins: read the declaration order.
            match e.enum_descriptor_proto().value.iter().find(|ev| ev.number() == *n) {
                Some(ev) => json!(ev.name()),
                None => json!(format!("UNKNOWN_ENUM_VALUE_{}_{}", e.name(), n)),
            }
        }
        Value::Message(m) => oracle_message(m, field),
        Value::List(_) | Value::Map(_) => panic!("nested collections are not values"),
    }
}

fn get_i64(m: &DynamicMessage, name: &str) -> i64 {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::I64(v)) => *v,
        Some(Value::I32(v)) => i64::from(*v),
        _ => 0,
    }
}

fn oracle_message(m: &DynamicMessage, field: &Field) -> Json {
    match m.descriptor().full_name() {
        "google.protobuf.Timestamp" => {
            json!(get_i64(m, "seconds") * 1_000_000 + get_i64(m, "nanos").div_euclid(1000))
        }
        "google.protobuf.Duration" => json!(get_i64(m, "seconds") * 1_000_000 + get_i64(m, "nanos") / 1000),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => normalize(wkt_json(m)),
        name if name.starts_with("google.protobuf.") && name.ends_with("Value") => {
            let fd = m.descriptor().get_field_by_name("value").unwrap();
            oracle_value(&m.get_field(&fd), &fd.kind(), field)
        }
        _ => {
            let DataType::Struct(fields) = field.data_type() else { panic!("struct expected for {}", field.name()) };
            oracle_struct(m, fields)
        }
    }
}

/// Canonical JSON of Struct / Value / ListValue.
pub fn wkt_json(m: &DynamicMessage) -> Json {
    match m.descriptor().full_name() {
        "google.protobuf.Struct" => {
            let Some(Value::Map(fields)) = m.get_field_by_name("fields").as_deref().cloned() else { return json!({}) };
            let mut obj = Map::new();
            for (k, v) in fields {
                let MapKey::String(k) = k else { panic!() };
                let Value::Message(v) = v else { panic!() };
                obj.insert(k, wkt_json(&v));
            }
            Json::Object(obj)
        }
        "google.protobuf.ListValue" => {
            let Some(Value::List(values)) = m.get_field_by_name("values").as_deref().cloned() else { return json!([]) };
            Json::Array(values.iter().map(|v| if let Value::Message(v) = v { wkt_json(v) } else { panic!() }).collect())
        }
        "google.protobuf.Value" => {
            let desc = m.descriptor();
            let set = desc.fields().find(|f| m.has_field(f));
            match set.as_ref().map(|f| (f.name().to_string(), m.get_field(f).into_owned())) {
                None => Json::Null,
                Some((name, _)) if name == "null_value" => Json::Null,
                Some((_, Value::F64(x))) => json!(x),
                Some((_, Value::String(s))) => json!(s),
                Some((_, Value::Bool(b))) => json!(b),
                Some((_, Value::Message(inner))) => wkt_json(&inner),
                Some(other) => panic!("unexpected Value member {other:?}"),
            }
        }
        other => panic!("not a JSON WKT: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Random messages

/// A small deterministic generator (xorshift), so a failing seed reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_string(rng: &mut Rng) -> String {
    const PIECES: [&str; 8] = ["a", "Zz", "é", "日本", "🦀", " ", "\"q\\", "0"];
    (0..rng.below(6)).map(|_| PIECES[rng.below(PIECES.len() as u64) as usize]).collect()
}

fn random_scalar(kind: &Kind, rng: &mut Rng) -> Value {
    let edge = rng.chance(30);
    match kind {
        Kind::Double => Value::F64(if edge {
            [0.0, -0.0, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE / 2.0, f64::MAX][rng.below(6) as usize]
        } else {
            (rng.next() as i64 as f64) / 1e9
        }),
        Kind::Float => Value::F32(if edge {
            [0.0, -0.0, f32::NAN, f32::NEG_INFINITY][rng.below(4) as usize]
        } else {
            rng.next() as i32 as f32 / 7.0
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(if edge {
            [0, -1, i32::MIN, i32::MAX][rng.below(4) as usize]
        } else {
            rng.next() as i32 >> rng.below(31)
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(if edge {
            [0, -1, i64::MIN, i64::MAX][rng.below(4) as usize]
        } else {
            rng.next() as i64 >> rng.below(63)
        }),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(if edge {
            [0, u32::MAX, 1 << 31][rng.below(3) as usize]
        } else {
            rng.next() as u32 >> rng.below(31)
        }),
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(if edge { [0, u64::MAX, 1 << 63][rng.below(3) as usize] } else { rng.next() >> rng.below(63) })
        }
        Kind::Bool => Value::Bool(rng.chance(50)),
        Kind::String => Value::String(random_string(rng)),
        Kind::Bytes => Value::Bytes((0..rng.below(5)).map(|_| rng.next() as u8).collect::<Vec<u8>>().into()),
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).collect();
            // Unknown numbers only for open enums: a closed enum's unknown value is a bad record.
            let open = e.parent_file().syntax() == prost_reflect::Syntax::Proto3;
            if open && rng.chance(10) {
                Value::EnumNumber(99 + rng.below(5) as i32)
            } else {
                Value::EnumNumber(values[rng.below(values.len() as u64) as usize])
            }
        }
        Kind::Message(_) => unreachable!(),
    }
}

fn random_wkt(desc: &MessageDescriptor, rng: &mut Rng, depth: u32) -> Option<DynamicMessage> {
    let mut m = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "google.protobuf.Timestamp" => {
            m.set_field_by_name("seconds", Value::I64(rng.below(200_000_000_000) as i64 - 100_000_000_000));
            m.set_field_by_name("nanos", Value::I32(rng.below(1_000_000_000) as i32));
        }
        "google.protobuf.Duration" => {
            let s = rng.below(1_000_000_000) as i64;
            let n = rng.below(1_000_000_000) as i32;
            let neg = rng.chance(50);
            m.set_field_by_name("seconds", Value::I64(if neg { -s } else { s }));
            m.set_field_by_name("nanos", Value::I32(if neg { -n } else { n }));
        }
        "google.protobuf.Struct" => {
            let value_desc = desc.parent_pool().get_message_by_name("google.protobuf.Value").unwrap();
            let mut map = std::collections::HashMap::new();
            for _ in 0..rng.below(3) {
                map.insert(
                    MapKey::String(random_string(rng)),
                    Value::Message(random_json_value(&value_desc, rng, depth + 1)),
                );
            }
            m.set_field_by_name("fields", Value::Map(map));
        }
        "google.protobuf.ListValue" => {
            let value_desc = desc.parent_pool().get_message_by_name("google.protobuf.Value").unwrap();
            let values =
                (0..rng.below(3)).map(|_| Value::Message(random_json_value(&value_desc, rng, depth + 1))).collect();
            m.set_field_by_name("values", Value::List(values));
        }
        "google.protobuf.Value" => return Some(random_json_value(desc, rng, depth)),
        _ => return None,
    }
    Some(m)
}

fn random_json_value(desc: &MessageDescriptor, rng: &mut Rng, depth: u32) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    let pool = desc.parent_pool();
    match if depth > 3 { rng.below(4) } else { rng.below(6) } {
        0 => m.set_field_by_name("null_value", Value::EnumNumber(0)),
        1 => m.set_field_by_name("number_value", Value::F64((rng.next() % 100_000) as f64 / 8.0)),
        2 => m.set_field_by_name("string_value", Value::String(random_string(rng))),
        3 => m.set_field_by_name("bool_value", Value::Bool(rng.chance(50))),
        4 => {
            let s = random_wkt(&pool.get_message_by_name("google.protobuf.Struct").unwrap(), rng, depth + 1).unwrap();
            m.set_field_by_name("struct_value", Value::Message(s));
        }
        _ => {
            let l =
                random_wkt(&pool.get_message_by_name("google.protobuf.ListValue").unwrap(), rng, depth + 1).unwrap();
            m.set_field_by_name("list_value", Value::Message(l));
        }
    }
    m
}

/// A random message of `desc`; sub-messages stop at `max_depth`.
pub fn random_message(desc: &MessageDescriptor, rng: &mut Rng, depth: u32, max_depth: u32) -> DynamicMessage {
    if let Some(m) = random_wkt(desc, rng, depth) {
        return m;
    }
    let mut m = DynamicMessage::new(desc.clone());
    for fd in desc.fields() {
        let required = fd.cardinality() == prost_reflect::Cardinality::Required;
        if !required && !rng.chance(60) {
            continue;
        }
        let value = random_field_value(&fd, rng, depth, max_depth);
        if let Some(v) = value {
            m.set_field(&fd, v);
        }
    }
    m
}

fn random_of_kind(kind: &Kind, rng: &mut Rng, depth: u32, max_depth: u32) -> Option<Value> {
    match kind {
        Kind::Message(md) => {
            if depth >= max_depth {
                return None;
            }
            Some(Value::Message(random_message(md, rng, depth + 1, max_depth)))
        }
        k => Some(random_scalar(k, rng)),
    }
}

fn random_field_value(fd: &FieldDescriptor, rng: &mut Rng, depth: u32, max_depth: u32) -> Option<Value> {
    if fd.is_map() {
        let Kind::Message(entry) = fd.kind() else { unreachable!() };
        let mut map = std::collections::HashMap::new();
        for _ in 0..rng.below(4) {
            let k = match random_scalar(&entry.map_entry_key_field().kind(), rng) {
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(v) => MapKey::I32(v),
                Value::I64(v) => MapKey::I64(v),
                Value::U32(v) => MapKey::U32(v),
                Value::U64(v) => MapKey::U64(v),
                Value::String(s) => MapKey::String(s),
                _ => unreachable!(),
            };
            if let Some(v) = random_of_kind(&entry.map_entry_value_field().kind(), rng, depth, max_depth) {
                map.insert(k, v);
            }
        }
        return Some(Value::Map(map));
    }
    if fd.is_list() {
        let items: Vec<Value> =
            (0..rng.below(4)).filter_map(|_| random_of_kind(&fd.kind(), rng, depth, max_depth)).collect();
        return Some(Value::List(items));
    }
    random_of_kind(&fd.kind(), rng, depth, max_depth)
}

/// The first place where two JSON values differ, as a path with both sides.
pub fn first_difference(a: &Json, b: &Json, path: &str) -> Option<String> {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for (k, v) in x {
                let w = y.get(k).unwrap_or(&Json::Null);
                if let Some(d) = first_difference(v, w, &format!("{path}.{k}")) {
                    return Some(d);
                }
            }
            y.keys().find(|k| !x.contains_key(*k)).map(|k| format!("{path}.{k}: missing on the left"))
        }
        (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: decoded {a} but the oracle says {b}")),
    }
}

/// The leading fields of `protolake.examples.v1.AdImpression` (proto/), as a producer's
/// generated code would send them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdImpression {
    #[prost(string, tag = "1")]
    pub impression_id: String,
    #[prost(message, optional, tag = "2")]
    pub event_time: Option<prost_types::Timestamp>,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(int32, tag = "5")]
    pub slot: i32,
    #[prost(string, repeated, tag = "10")]
    pub tags: Vec<String>,
}

/// The object stores scripts/test.sh starts on loopback (moto for S3, Azurite for Azure Blob),
/// each as (name, a table-folder URI no other test uses, the storage options that reach it).
pub fn object_stores(prefix: &str) -> Vec<(&'static str, String, std::collections::BTreeMap<String, String>)> {
    let need = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: the object-store tests need the servers scripts/test.sh starts (run it)")
        })
    };
    let s3 = need("PROTOLAKE_S3_ENDPOINT");
    need("AZURITE_BLOB_STORAGE_URL");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("{prefix}-{}-{nanos}", std::process::id());
    let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vec![
        (
            "s3",
            format!("s3://protolake/{id}"),
            pairs(&[
                ("aws_endpoint", s3.as_str()),
                ("aws_region", "us-east-1"),
                ("aws_access_key_id", "test"),
                ("aws_secret_access_key", "test"),
            ]),
        ),
        ("azure", format!("az://protolake/{id}"), pairs(&[("azure_storage_use_emulator", "true")])),
    ]
}

/// Options as the `[storage]` section of a config file.
pub fn storage_section(options: &std::collections::BTreeMap<String, String>) -> String {
    let lines: String = options.iter().map(|(k, v)| format!("{k:?} = {v:?}\n")).collect();
    format!("[storage]\n{lines}")
}

/// Column values (as text) of every row of the Delta table at `location`, read from its Parquet
/// files through the table's own object store; empty when there is no table.
pub fn read_columns(location: &protolake::location::Location, columns: &[&str]) -> Vec<Vec<Option<String>>> {
    use object_store::ObjectStoreExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let Some(table) = protolake::sink::open_table(location, None).await.unwrap() else { return Vec::new() };
        let store = table.log_store().object_store(None);
        let mut rows = Vec::new();
        for path in table.get_files_by_partitions(&[]).await.unwrap() {
            let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
            let reader = deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let cols: Vec<_> = columns
                    .iter()
                    .map(|c| {
                        let array = batch.column_by_name(c).unwrap_or_else(|| panic!("no column {c}"));
                        arrow::compute::cast(array, &DataType::Utf8).unwrap_or_else(|_| {
                            // Lists and structs: their debug text is enough to compare.
                            std::sync::Arc::new(arrow::array::StringArray::from(
                                (0..array.len())
                                    .map(|i| (!array.is_null(i)).then(|| format!("{:?}", array.slice(i, 1))))
                                    .collect::<Vec<_>>(),
                            ))
                        })
                    })
                    .collect();
                for row in 0..batch.num_rows() {
                    rows.push(
                        cols.iter()
                            .map(|c| {
                                let s = c.as_string::<i32>();
                                (!s.is_null(row)).then(|| s.value(row).to_string())
                            })
                            .collect(),
                    );
                }
            }
        }
        rows
    })
}

// ---------------------------------------------------------------------------------------------
// Processes, brokers and endpoints of the binary's end-to-end tests

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A Kafka record's headers as (name, value as text) pairs.
#[cfg(feature = "kafka")]
pub fn kafka_headers<C: FromIterator<(String, String)>>(message: &impl rdkafka::Message) -> C {
    use rdkafka::message::Headers as _;
    message
        .headers()
        .into_iter()
        .flat_map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Creates `topic` with `partitions` on the Kafka-protocol broker at `servers`.
#[cfg(feature = "kafka")]
pub fn create_topic(servers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", servers).create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30))),
        ))
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Waits for `child` to exit; kills it and fails the test after `limit`.
pub fn wait_at_most(child: &mut std::process::Child, limit: std::time::Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sends SIGTERM and waits (up to two minutes) for the exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_at_most(child, std::time::Duration::from_secs(120))
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("metrics endpoint listening");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}
