//! One test per mapping rule (PROTOBUF_MAPPING §1–§12), each on hand-built wire bytes, so the
//! encodings a real encoder never produces (padded varints, interleaved packed runs, duplicate
//! map keys, wire-type mismatches, truncations) are covered too.

mod common;

use arrow::datatypes::{DataType, TimeUnit};
use common::{batch_rows, compile, varint};
use protolake::decode::{DecodeOptions, Decoder, Reason, RecordError, SchemaError};
use serde_json::{json, Value as Json};

// --- a tiny wire encoder --------------------------------------------------------------------

fn tag(n: u32, wt: u8) -> Vec<u8> {
    varint((u64::from(n) << 3) | u64::from(wt))
}

fn f_varint(n: u32, v: u64) -> Vec<u8> {
    [tag(n, 0), varint(v)].concat()
}

fn f_len(n: u32, body: &[u8]) -> Vec<u8> {
    [tag(n, 2), varint(body.len() as u64), body.to_vec()].concat()
}

fn f_fixed32(n: u32, v: u32) -> Vec<u8> {
    [tag(n, 5), v.to_le_bytes().to_vec()].concat()
}

fn f_fixed64(n: u32, v: u64) -> Vec<u8> {
    [tag(n, 1), v.to_le_bytes().to_vec()].concat()
}

fn group(n: u32, body: &[u8]) -> Vec<u8> {
    [tag(n, 3), body.to_vec(), tag(n, 4)].concat()
}

// --- helpers --------------------------------------------------------------------------------

fn decoder(file: &str, message: &str) -> Decoder {
    decoder_with(file, message, None)
}

fn decoder_with(file: &str, message: &str, depth: Option<u32>) -> Decoder {
    let (bytes, _) = compile(file);
    Decoder::from_descriptor_set(&bytes, message, &DecodeOptions { recursion_depth: depth }).expect("plans")
}

thread_local! {
    /// prost-reflect's view of every fixture, for comparing each decoded row with the oracle.
    static REFLECT: prost_reflect::DescriptorPool = {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos");
        let fds = protox::compile(["mapping3.proto", "mapping2.proto", "recursive.proto"], [dir]).unwrap();
        prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap()
    };
}

/// Decodes one record, and checks the row against the oracle applied to prost-reflect's
/// reading of the same bytes.
fn one(d: &mut Decoder, bytes: &[u8]) -> Json {
    d.decode(bytes).unwrap_or_else(|e| panic!("unexpected bad record: {e}"));
    let batch = d.flush().unwrap();
    let row = batch_rows(&batch).remove(0);
    let view = REFLECT.with(|pool| {
        let desc = pool.get_message_by_name(d.message_name()).expect("fixture message");
        prost_reflect::DynamicMessage::decode(desc, bytes).expect("prost-reflect reads what the decoder accepts")
    });
    if let Some(diff) = common::first_difference(&row, &common::oracle_row(&view, batch.schema().fields()), "") {
        panic!("{diff}");
    }
    row
}

fn bad(d: &mut Decoder, bytes: &[u8]) -> RecordError {
    let e = d.decode(bytes).expect_err("record must be refused");
    assert!(d.is_empty(), "a refused record leaves no row");
    e
}

fn everything() -> Decoder {
    decoder("mapping3.proto", "pl.test.Everything")
}

fn scalars() -> Decoder {
    decoder("mapping3.proto", "pl.test.Scalars")
}

fn p2() -> Decoder {
    decoder("mapping2.proto", "pl.test2.P2")
}

fn f64_bits(v: f64) -> Json {
    json!(format!("f64:{:016x}", v.to_bits()))
}

// --- §1 rows and columns --------------------------------------------------------------------

#[test]
fn columns_follow_declaration_order_and_proto_names() {
    let d = everything();
    let names: Vec<String> = d.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(&names[..4], ["scalars", "inner", "inners", "r_int32"]);
    assert_eq!(names.last().unwrap(), "CamelCase_Name");
    // Oneof members sit where they are declared.
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("m_u64_str") < pos("c_text") && pos("c_empty") < pos("ts"));
}

#[test]
fn names_equal_under_case_folding_are_a_schema_error() {
    let (bytes, _) = compile("clash.proto");
    for message in ["pl.clash.CaseClash", "pl.clash.NestedClash"] {
        let err = Decoder::from_descriptor_set(&bytes, message, &DecodeOptions::default()).err().unwrap();
        assert!(matches!(err, SchemaError::CaseInsensitiveClash { .. }), "{err}");
        assert!(err.to_string().contains("fooBar") && err.to_string().contains("foobar"));
    }
}

#[test]
fn unknown_message_names_suggest_the_right_one() {
    let (bytes, _) = compile("mapping3.proto");
    let err = Decoder::from_descriptor_set(&bytes, "Everything", &DecodeOptions::default()).err().unwrap();
    assert!(err.to_string().contains("did you mean pl.test.Everything"), "{err}");
}

// --- §2 nullability -------------------------------------------------------------------------

#[test]
fn nullability_follows_the_table() {
    let d = p2();
    let schema = d.schema();
    assert!(!schema.field_with_name("id").unwrap().is_nullable(), "required is NOT NULL");
    assert!(schema.field_with_name("name").unwrap().is_nullable());
    let DataType::List(element) = schema.field_with_name("levels").unwrap().data_type() else { panic!() };
    assert!(!element.is_nullable(), "list elements are not null");
    let DataType::Map(entries, false) = schema.field_with_name("m_level").unwrap().data_type() else { panic!() };
    let DataType::Struct(kv) = entries.data_type() else { panic!() };
    assert!(!kv[0].is_nullable() && !kv[1].is_nullable());
    assert_eq!(entries.name(), "key_value");
}

// --- §3 scalars -----------------------------------------------------------------------------

#[test]
fn scalar_types_map_to_their_arrow_types() {
    let d = scalars();
    let s = d.schema();
    let t = |n: &str| s.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(t("f_uint32"), DataType::UInt32);
    assert_eq!(t("f_fixed32"), DataType::UInt32);
    assert_eq!(t("f_uint64"), DataType::UInt64);
    assert_eq!(t("f_fixed64"), DataType::UInt64);
    assert_eq!(t("f_sint64"), DataType::Int64);
    assert_eq!(t("f_float"), DataType::Float32);
    assert_eq!(t("f_enum"), DataType::Utf8);
    assert_eq!(t("f_bytes"), DataType::Binary);
}

#[test]
fn int32_keeps_the_low_32_bits_of_a_long_varint() {
    let mut d = scalars();
    let row = one(&mut d, &f_varint(3, (1 << 32) + 5));
    assert_eq!(row["f_int32"], 5);
    let five_byte = [tag(3, 0), vec![0xff, 0xff, 0xff, 0xff, 0x0f]].concat();
    assert_eq!(one(&mut d, &five_byte)["f_int32"], -1);
    assert_eq!(one(&mut d, &f_varint(3, u64::MAX))["f_int32"], -1);
    // sint32 zigzags the low 32 bits; uint32 keeps them.
    assert_eq!(one(&mut d, &f_varint(7, (1 << 32) + 1))["f_sint32"], -1);
    assert_eq!(one(&mut d, &f_varint(5, (1 << 33) + 4_294_967_295))["f_uint32"], 4_294_967_295u64);
}

#[test]
fn unsigned_values_keep_their_full_range() {
    let mut d = scalars();
    let row = one(&mut d, &[f_varint(6, u64::MAX), f_fixed64(10, u64::MAX), f_fixed32(9, u32::MAX)].concat());
    assert_eq!(row["f_uint64"], json!(u64::MAX));
    assert_eq!(row["f_fixed64"], json!(u64::MAX));
    assert_eq!(row["f_fixed32"], json!(u32::MAX));
}

#[test]
fn bool_is_true_for_any_nonzero_varint_and_padded_varints_are_accepted() {
    let mut d = scalars();
    assert_eq!(one(&mut d, &f_varint(13, 1 << 40))["f_bool"], true);
    let padded = [tag(4, 0), vec![0x81, 0x80, 0x80, 0x80, 0x00]].concat();
    assert_eq!(one(&mut d, &padded)["f_int64"], 1);
}

#[test]
fn floats_keep_every_bit_pattern() {
    let mut d = scalars();
    let nan = 0x7ff8_0000_0000_1234u64;
    for bits in [nan, (-0.0f64).to_bits(), f64::INFINITY.to_bits(), 1] {
        assert_eq!(one(&mut d, &f_fixed64(1, bits))["f_double"], json!(format!("f64:{bits:016x}")));
    }
    let row = one(&mut d, &f_fixed32(2, 0x8000_0000));
    assert_eq!(row["f_float"], json!("f32:80000000"));
}

// --- §4 enums -------------------------------------------------------------------------------

#[test]
fn enums_are_names_with_unknown_open_values_kept() {
    let mut d = scalars();
    assert_eq!(one(&mut d, &f_varint(16, 1))["f_enum"], "RED");
    assert_eq!(one(&mut d, &f_varint(16, (-5i64) as u64))["f_enum"], "NEG");
    assert_eq!(one(&mut d, &f_varint(16, 99))["f_enum"], "UNKNOWN_ENUM_VALUE_Color_99");
    assert_eq!(one(&mut d, &f_varint(16, (-7i64) as u64))["f_enum"], "UNKNOWN_ENUM_VALUE_Color_-7");
    // The implicit default is the value numbered 0.
    assert_eq!(one(&mut d, &[])["f_enum"], "COLOR_UNSPECIFIED");
}

#[test]
fn alias_uses_the_first_declared_name() {
    let mut d = p2();
    assert_eq!(one(&mut d, &[f_varint(1, 1), f_varint(19, 1)].concat())["alias"], "B");
}

#[test]
fn closed_enum_unknown_values_are_bad_records_at_any_depth() {
    let mut d = p2();
    let id = f_varint(1, 1);
    let e = bad(&mut d, &[id.clone(), f_varint(8, 7)].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::ClosedEnumUnknownValue, "level"));
    let e = bad(&mut d, &[id.clone(), f_varint(11, 1), f_varint(11, 9)].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::ClosedEnumUnknownValue, "levels[1]"));
    let packed = f_len(11, &[1, 2, 42]);
    let e = bad(&mut d, &[id.clone(), packed].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::ClosedEnumUnknownValue, "levels[2]"));
    let entry = [f_len(1, b"k"), f_varint(2, 5)].concat();
    let e = bad(&mut d, &[id, f_len(18, &entry)].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::ClosedEnumUnknownValue, "m_level[0].value"));
}

// --- §5 messages ----------------------------------------------------------------------------

#[test]
fn absent_sub_message_is_null_and_present_empty_is_a_struct_of_defaults() {
    let mut d = everything();
    assert_eq!(one(&mut d, &[])["inner"], Json::Null);
    let row = one(&mut d, &f_len(2, &[]));
    assert_eq!(row["inner"], json!({"id": 0, "label": "", "weight": null, "nums": []}));
}

#[test]
fn a_sub_message_seen_twice_is_merged() {
    let mut d = everything();
    let first = [f_varint(1, 7), f_varint(4, 1)].concat();
    let second = [f_len(2, b"x"), f_varint(4, 2)].concat();
    let row = one(&mut d, &[f_len(2, &first), f_varint(18, 3), f_len(2, &second)].concat());
    assert_eq!(row["inner"], json!({"id": 7, "label": "x", "weight": null, "nums": [1, 2]}));
}

#[test]
fn empty_messages_keep_their_presence_in_a_dummy_child() {
    let mut d = everything();
    let row = one(&mut d, &f_len(32, &[]));
    assert_eq!(row["empty"], json!({"__dummy_field_in_empty_struct": null}));
    assert_eq!(one(&mut d, &[])["empty"], Json::Null);
    // A top-level empty message: one all-null column, one row per input.
    let mut n = decoder("mapping3.proto", "pl.test.Nothing");
    n.decode(&[]).unwrap();
    n.decode(&f_varint(5, 1)).unwrap();
    let batch = n.flush().unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema().field(0).name(), "__dummy_field_in_empty_struct");
}

#[test]
fn groups_decode_like_messages() {
    let mut d = p2();
    let item = group(12, &[f_varint(13, 4), f_len(14, b"sku-1")].concat());
    let lines = [group(15, &f_varint(16, 1)), group(15, &f_varint(16, 2))].concat();
    let row = one(&mut d, &[f_varint(1, 1), item, lines].concat());
    assert_eq!(row["item"], json!({"qty": 4, "sku": "sku-1"}));
    assert_eq!(row["line"], json!([{"n": 1}, {"n": 2}]));
}

#[test]
fn a_group_sent_length_delimited_is_a_mismatch() {
    let mut d = p2();
    let e = bad(&mut d, &[f_varint(1, 1), f_len(12, &f_varint(13, 4))].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::WireTypeMismatch, "item"));
    let e = bad(&mut d, &[f_varint(1, 1), group(17, &[])].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::WireTypeMismatch, "sub"));
}

// --- §6 repeated ----------------------------------------------------------------------------

#[test]
fn packed_and_unpacked_are_both_accepted_in_wire_order() {
    let mut d = everything();
    let packed = f_len(4, &[varint(1), varint(2)].concat());
    let row = one(&mut d, &[f_varint(4, 9), packed, f_len(4, &[]), f_varint(4, 0)].concat());
    assert_eq!(row["r_int32"], json!([9, 1, 2, 0]));
    let mut p = p2();
    let row = one(&mut p, &[f_varint(1, 1), f_len(21, &[3, 4]), f_varint(22, 5), f_varint(21, 6)].concat());
    assert_eq!(row["unpacked"], json!([3, 4, 6]));
    assert_eq!(row["packed"], json!([5]));
    assert_eq!(one(&mut d, &[])["r_int32"], json!([]));
}

#[test]
fn a_packed_run_that_does_not_split_is_truncated() {
    let mut d = everything();
    let e = bad(&mut d, &f_len(11, &[1, 2, 3, 4, 5]));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::Truncated, "r_fixed32[1]"));
    let e = bad(&mut d, &f_len(4, &[0x80]));
    assert_eq!(e.reason, Reason::Truncated);
}

#[test]
fn repeated_messages_with_zero_bytes_are_structs_of_defaults() {
    let mut d = everything();
    let row = one(&mut d, &[f_len(3, &[]), f_len(3, &f_varint(1, 2))].concat());
    assert_eq!(
        row["inners"],
        json!([{"id": 0, "label": "", "weight": null, "nums": []}, {"id": 2, "label": "", "weight": null, "nums": []}])
    );
}

// --- §7 maps --------------------------------------------------------------------------------

#[test]
fn map_duplicate_keys_last_wins_and_missing_parts_default() {
    let mut d = everything();
    let e1 = [f_len(1, b"a"), f_varint(2, 1)].concat();
    let e2 = [f_varint(2, 2), f_len(1, b"b")].concat(); // value before key
    let e3 = [f_len(1, b"a"), f_varint(2, 3), f_varint(9, 1)].concat(); // unknown field kept entry
    let e4 = f_varint(2, 4); // key missing → ""
    let row = one(&mut d, &[f_len(12, &e1), f_len(12, &e2), f_len(12, &e3), f_len(12, &e4)].concat());
    assert_eq!(row["m_str_int"], json!([["", 4], ["a", 3], ["b", 2]]));
    // A message value is replaced, not merged; a missing value is a struct of defaults.
    let v1 = [f_varint(1, 1), f_len(2, &f_varint(1, 5))].concat();
    let v2 = [f_varint(1, 1), f_len(2, &f_len(2, b"z"))].concat();
    let v3 = f_varint(1, 2);
    let row = one(&mut d, &[f_len(13, &v1), f_len(13, &v2), f_len(13, &v3)].concat());
    assert_eq!(
        row["m_int_inner"],
        json!([
            [1, {"id": 0, "label": "z", "weight": null, "nums": []}],
            [2, {"id": 0, "label": "", "weight": null, "nums": []}]
        ])
    );
}

#[test]
fn many_duplicate_keys_across_rows_are_removed_row_by_row() {
    let mut d = everything();
    let entry = |k: u64, v: u64| f_len(14, &[f_varint(1, k), f_varint(2, v)].concat());
    let many: Vec<u8> = (0..20).flat_map(|i| entry(i % 2, 1 + i % 2)).collect();
    d.decode(&many).unwrap();
    d.decode(&[entry(1, 2), entry(1, 1)].concat()).unwrap();
    let batch = d.flush().unwrap();
    let rows = batch_rows(&batch);
    assert_eq!(rows[0]["m_bool_enum"], json!([[false, "RED"], [true, "GREEN"]]));
    assert_eq!(rows[1]["m_bool_enum"], json!([[true, "RED"]]));
}

#[test]
fn invalid_utf8_in_a_map_key_is_a_bad_record() {
    let mut d = everything();
    let e = bad(&mut d, &f_len(12, &[f_len(1, &[0xc3, 0x28]), f_varint(2, 1)].concat()));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::InvalidUtf8, "m_str_int[0].key"));
}

// --- §8 presence ----------------------------------------------------------------------------

#[test]
fn presence_is_exact() {
    let mut d = scalars();
    let row = one(&mut d, &[]);
    assert_eq!(row["f_int32"], 0, "implicit presence: zero, never null");
    assert_eq!(row["f_string"], "");
    assert_eq!(row["f_bytes"], "hex:");
    assert_eq!(row["o_int32"], Json::Null, "proto3 optional: null when absent");
    assert_eq!(row["o_enum"], Json::Null);
    let row = one(&mut d, &[f_varint(17, 0), f_len(18, b"")].concat());
    assert_eq!(row["o_int32"], 0, "present zero is zero");
    assert_eq!(row["o_string"], "");
}

#[test]
fn proto2_declared_defaults_are_materialised() {
    let mut d = p2();
    let row = one(&mut d, &f_varint(1, 1));
    assert_eq!(row["name"], "anon");
    assert_eq!(row["big"], -9_000_000_000i64);
    assert_eq!(row["ratio"], f64_bits(f64::INFINITY));
    assert_eq!(row["f"], json!(format!("f32:{:08x}", (-1.5f32).to_bits())));
    assert_eq!(row["u"], json!(u64::MAX));
    assert_eq!(row["blob"], "hex:6101ff");
    assert_eq!(row["level"], "HIGH");
    assert_eq!(row["flag"], true);
    assert_eq!(row["level_nodefault"], Json::Null);
    assert_eq!(row["plain"], Json::Null);
    let row = one(&mut d, &[f_varint(1, 1), f_len(2, b"")].concat());
    assert_eq!(row["name"], "", "present zero value beats the default");
}

#[test]
fn last_singular_value_wins() {
    let mut d = scalars();
    let row = one(&mut d, &[f_len(14, b"first"), f_varint(3, 1), f_len(14, b"second"), f_varint(3, 2)].concat());
    assert_eq!((row["f_string"].clone(), row["f_int32"].clone()), (json!("second"), json!(2)));
}

#[test]
fn oneof_keeps_only_the_last_member() {
    let mut d = everything();
    let row = one(&mut d, &[f_len(16, b"text"), f_varint(18, 0)].concat());
    assert_eq!((row["c_text"].clone(), row["c_num"].clone()), (Json::Null, json!(0)));
    // A message member merges with an earlier occurrence only when no other member came between.
    let row = one(&mut d, &[f_len(17, &f_varint(1, 1)), f_len(17, &f_len(2, b"b"))].concat());
    assert_eq!(row["c_inner"], json!({"id": 1, "label": "b", "weight": null, "nums": []}));
    let row = one(
        &mut d,
        &[f_len(17, &[f_varint(1, 1), f_varint(4, 8)].concat()), f_varint(18, 5), f_len(17, &f_len(2, b"b"))].concat(),
    );
    assert_eq!(row["c_inner"], json!({"id": 0, "label": "b", "weight": null, "nums": []}));
    assert_eq!(row["c_num"], Json::Null);
    let row = one(&mut d, &f_len(19, &[]));
    assert_eq!(row["c_empty"], json!({"__dummy_field_in_empty_struct": null}));
}

// --- §9 well-known types --------------------------------------------------------------------

#[test]
fn timestamps_and_durations_are_microseconds() {
    let mut d = everything();
    let schema = d.schema();
    assert_eq!(
        schema.field_with_name("ts").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(schema.field_with_name("dur").unwrap().data_type(), &DataType::Duration(TimeUnit::Microsecond));
    let ts = [f_varint(1, (-1i64) as u64), f_varint(2, 999_999_999)].concat();
    let dur = [f_varint(2, (-1500i64) as u64)].concat();
    let row = one(&mut d, &[f_len(20, &ts), f_len(21, &dur)].concat());
    assert_eq!((row["ts"].clone(), row["dur"].clone()), (json!(-1), json!(-1)));
    assert_eq!(one(&mut d, &f_len(20, &[]))["ts"], 0, "present-empty is the epoch");
    let overflow = f_varint(1, (i64::MAX / 10) as u64);
    let e = bad(&mut d, &f_len(20, &overflow));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::TimeOverflow, "ts"));
}

#[test]
fn wrappers_unwrap_and_a_present_zero_is_zero() {
    let mut d = everything();
    let row = one(&mut d, &[f_len(22, &[]), f_len(24, &f_varint(1, 0)), f_len(23, &f_len(1, b"s"))].concat());
    assert_eq!(row["w_int64"], 0);
    assert_eq!(row["w_bool"], false);
    assert_eq!(row["w_string"], "s");
    assert_eq!(row["w_double"], Json::Null);
    assert_eq!(d.schema().field_with_name("w_uint32").unwrap().data_type(), &DataType::UInt32);
}

#[test]
fn struct_value_and_list_value_are_json_text() {
    let mut d = everything();
    let value = f_len(1, &[f_len(1, b"k"), f_len(2, &f_len(3, b"v"))].concat());
    let row = one(&mut d, &[f_len(28, &value), f_len(29, &f_varint(1, 0)), f_len(30, &[])].concat());
    assert_eq!(row["st"], json!({"k": "v"}));
    assert_eq!(row["val"], Json::Null.clone());
    assert_eq!(row["lv"], json!([]));
    assert_eq!(one(&mut d, &[])["st"], Json::Null, "absent is null, not the text null");
    let schema = d.schema();
    let st = schema.field_with_name("st").unwrap();
    assert_eq!(st.metadata().get("ARROW:extension:name").unwrap(), "arrow.json");
}

#[test]
fn lookalike_well_known_types_are_plain_structs() {
    let mut d = decoder("mapping3.proto", "pl.test.Lookalike");
    let row = one(&mut d, &f_len(1, &[f_varint(1, 5), f_varint(2, 6)].concat()));
    assert_eq!(row["ts"], json!({"seconds": 5, "nanos": 6}));
}

#[test]
fn any_is_type_url_and_raw_bytes() {
    let mut d = everything();
    let any = [f_len(1, b"type.googleapis.com/x.Y"), f_len(2, &[8, 1])].concat();
    assert_eq!(
        one(&mut d, &f_len(31, &any))["any"],
        json!({"type_url": "type.googleapis.com/x.Y", "value": "hex:0801"})
    );
}

// --- §10 recursion --------------------------------------------------------------------------

fn struct_names(dt: &DataType) -> Vec<String> {
    match dt {
        DataType::Struct(f) => f.iter().map(|f| f.name().clone()).collect(),
        _ => vec![],
    }
}

#[test]
fn recursion_needs_an_explicit_depth() {
    let (bytes, _) = compile("recursive.proto");
    let err = Decoder::from_descriptor_set(&bytes, "pl.rec.Person", &DecodeOptions::default()).err().unwrap();
    assert!(matches!(err, SchemaError::Recursive { .. }), "{err}");
    assert!(err.to_string().contains("bff"));
    for depth in [0, 11] {
        let opts = DecodeOptions { recursion_depth: Some(depth) };
        assert_eq!(
            Decoder::from_descriptor_set(&bytes, "pl.rec.Person", &opts).err(),
            Some(SchemaError::DepthOutOfRange(depth))
        );
    }
    // Reusing a type in sibling fields is not recursion.
    assert!(Decoder::from_descriptor_set(&bytes, "pl.rec.Siblings", &DecodeOptions::default()).is_ok());
}

#[test]
fn recursion_is_cut_at_the_depth() {
    let d1 = decoder_with("recursive.proto", "pl.rec.Person", Some(1));
    let names: Vec<_> = d1.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["name"], "lists and maps of the cut type are dropped whole");
    let d2 = decoder_with("recursive.proto", "pl.rec.Person", Some(2));
    let bff = d2.schema().field_with_name("bff").unwrap().data_type().clone();
    assert_eq!(struct_names(&bff), ["name"]);
    let d3 = decoder_with("recursive.proto", "pl.rec.Person", Some(3));
    let bff = d3.schema().field_with_name("bff").unwrap().data_type().clone();
    assert_eq!(struct_names(&bff), ["name", "bff", "friends", "by_name"]);
    // Mutual recursion, N=2: {a_name, b: {b_num, a: {a_name, b: {b_num}}}}
    let a = decoder_with("recursive.proto", "pl.rec.A", Some(2));
    let b = a.schema().field_with_name("b").unwrap().data_type().clone();
    let DataType::Struct(bf) = &b else { panic!() };
    let inner_a = bf.find("a").unwrap().1.data_type().clone();
    let DataType::Struct(af) = &inner_a else { panic!() };
    assert_eq!(struct_names(af.find("b").unwrap().1.data_type()), ["b_num"]);
}

#[test]
fn data_of_cut_fields_is_ignored() {
    let mut d = decoder_with("recursive.proto", "pl.rec.Person", Some(2));
    let deep = f_len(2, &[f_len(1, b"b"), f_len(2, &f_len(1, b"c"))].concat());
    let row = one(&mut d, &[f_len(1, b"a"), deep].concat());
    assert_eq!(row["name"], "a");
    assert_eq!(row["bff"], json!({"name": "b"}));
}

// --- §11 unknown fields and wire errors -------------------------------------------------------

#[test]
fn unknown_fields_and_extensions_are_skipped_at_every_depth() {
    let mut d = p2();
    let unknown = [
        f_varint(900, 1),
        f_fixed64(901, 2),
        f_len(902, b"zz"),
        f_fixed32(903, 3),
        group(904, &[f_varint(1, 99), group(5, &[])].concat()),
        f_varint(536_870_911, 4),
        f_varint(100, 5), // extension
    ]
    .concat();
    let sub = [f_len(1, b"c"), unknown.clone()].concat();
    let row = one(&mut d, &[f_varint(1, 3), unknown, f_len(17, &sub)].concat());
    assert_eq!(row["id"], 3);
    assert_eq!(row["sub"], json!({"code": "c", "x": null}));
}

#[test]
fn wire_type_mismatches_are_bad_records_at_any_depth() {
    let mut d = everything();
    let e = bad(&mut d, &f_len(1, &f_len(4, b"12345678")));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::WireTypeMismatch, "scalars.f_int64"));
    assert!(e.message.contains("length-delimited"), "{}", e.message);
    let e = bad(&mut d, &f_len(3, &f_varint(2, 1)));
    assert_eq!(e.field_path(), "inners[0].label");
    assert_eq!(e.reason, Reason::WireTypeMismatch);
    // A singular scalar sent as a packed run.
    let e = bad(&mut d, &f_len(1, &f_len(3, &[1, 2])));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::WireTypeMismatch, "scalars.f_int32"));
    // A message sent as a varint.
    assert_eq!(bad(&mut d, &f_varint(2, 1)).reason, Reason::WireTypeMismatch);
}

// --- §12 bad records ------------------------------------------------------------------------

#[test]
fn every_bad_record_kind_is_named() {
    let mut d = everything();
    let cases: Vec<(Vec<u8>, Reason, &str)> = vec![
        (vec![0x20], Reason::Truncated, "r_int32[0]"),       // tag, no value
        (vec![0x20, 0x80], Reason::Truncated, "r_int32[0]"), // varint cut
        ([tag(5, 1), vec![0; 4]].concat(), Reason::Truncated, "r_double[0]"), // fixed64 cut
        (vec![0x12, 0x05, 0x08], Reason::Truncated, "inner"), // length runs past the end
        (f_len(2, &[0x12, 0x09, 0x41]), Reason::Truncated, "inner.label"),
        ([vec![0x20], vec![0xff; 10], vec![0x01]].concat(), Reason::VarintTooLong, "r_int32[0]"),
        (vec![0x0e], Reason::InvalidWireType, ""),
        (vec![0x00, 0x01], Reason::FieldNumberZero, ""),
        (tag(7, 4), Reason::UnexpectedEndGroup, ""),
        (tag(70, 3), Reason::UnterminatedGroup, ""),
        (f_len(14, &[0xff]), Reason::Truncated, "m_bool_enum[0]"),
        (f_len(14, &f_len(1, b"")), Reason::WireTypeMismatch, "m_bool_enum[0].key"),
        (f_len(6, &[0xed, 0xa0, 0x80]), Reason::InvalidUtf8, "r_string[0]"), // encoded surrogate
        (f_len(6, &[0xc0, 0xaf]), Reason::InvalidUtf8, "r_string[0]"),       // overlong
        (f_len(35, &[0xe6, 0x97]), Reason::InvalidUtf8, "CamelCase_Name"),   // cut sequence
        (f_len(2, &f_len(2, &[0x80])), Reason::InvalidUtf8, "inner.label"),
    ];
    for (bytes, reason, path) in cases {
        let e = bad(&mut d, &bytes);
        assert_eq!((e.reason, e.field_path().as_str()), (reason, path), "for {bytes:02x?}: {e}");
    }
}

#[test]
fn proto2_strings_are_validated_too() {
    let mut d = p2();
    let e = bad(&mut d, &[f_varint(1, 1), f_len(20, &[0xff])].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::InvalidUtf8, "plain"));
}

#[test]
fn missing_required_is_found_wherever_a_message_is_present() {
    let mut d = p2();
    let e = bad(&mut d, &f_len(2, b"no id"));
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::MissingRequired, "id"));
    let e = bad(&mut d, &[f_varint(1, 1), f_len(17, &f_varint(2, 1))].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::MissingRequired, "sub.code"));
    let e = bad(&mut d, &[f_varint(1, 1), group(15, &f_varint(16, 1)), group(15, &[])].concat());
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::MissingRequired, "line[1].n"));
    // An absent optional sub-message with required fields is fine.
    assert_eq!(one(&mut d, &f_varint(1, 1))["sub"], Json::Null);
}

#[test]
fn a_bad_record_leaves_its_neighbours_untouched() {
    let mut d = everything();
    let good_a = [
        f_len(3, &[f_varint(1, 1), f_varint(4, 10)].concat()),
        f_len(12, &[f_len(1, b"a"), f_varint(2, 1)].concat()),
        f_len(6, b"x"),
    ]
    .concat();
    let good_b = [f_len(2, &f_len(2, b"b")), f_varint(4, 2), f_len(16, b"t")].concat();
    // Bad after appending into lists, maps, nested structs and a oneof.
    let bad_record = [
        f_len(3, &[f_varint(1, 2), f_varint(4, 11)].concat()),
        f_len(12, &[f_len(1, b"z"), f_varint(2, 9)].concat()),
        f_len(12, &[f_len(1, b"z"), f_varint(2, 9)].concat()),
        f_len(2, &f_varint(1, 5)),
        f_len(17, &f_varint(1, 5)),
        f_len(6, b"y"),
        f_len(20, &f_varint(1, 1)),
        f_len(1, &f_len(14, &[0xff])),
    ]
    .concat();
    let mut alone = everything();
    alone.decode(&good_a).unwrap();
    alone.decode(&good_b).unwrap();
    let expected = batch_rows(&alone.flush().unwrap());
    d.decode(&good_a).unwrap();
    assert_eq!(d.decode(&bad_record).unwrap_err().reason, Reason::InvalidUtf8);
    for cut in 1..bad_record.len() {
        let _ = d.decode(&bad_record[..cut]);
        if d.len() > 1 {
            // Some prefixes are valid records; drop them again by starting over.
            let _ = d.flush();
            d.decode(&good_a).unwrap();
        }
    }
    d.decode(&good_b).unwrap();
    let rows = batch_rows(&d.flush().unwrap());
    assert_eq!(rows, expected);
}

#[test]
fn errors_read_like_instructions() {
    let mut d = everything();
    let e = bad(&mut d, &f_len(1, &f_len(4, b"12345678")));
    let text = e.to_string();
    assert!(text.starts_with("wire_type_mismatch at scalars.f_int64 (byte 3):"), "{text}");
    assert!(text.contains("int64"), "{text}");
}

// --- §13 Delta storage ----------------------------------------------------------------------

#[test]
fn delta_storage_widens_unsigned_and_durations_losslessly() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Decimal128Type, Int64Type};
    use protolake::contract::{delta_schema, to_ddl, to_delta_batch};

    let mut d = everything();
    let scalars = [f_varint(5, u64::from(u32::MAX)), f_varint(6, u64::MAX)].concat();
    let record = [
        f_len(1, &scalars),
        f_len(21, &[f_varint(1, 2), f_varint(2, 500_000_000)].concat()),
        f_len(15, &[f_varint(1, u64::MAX), f_len(2, b"max")].concat()),
        f_len(11, &7u32.to_le_bytes()),
    ]
    .concat();
    d.decode(&record).unwrap();
    let batch = to_delta_batch(&d.flush().unwrap()).unwrap();
    let s = batch.column_by_name("scalars").unwrap().as_struct();
    let u32_col = s.column_by_name("f_uint32").unwrap().as_primitive::<Int64Type>();
    assert_eq!(u32_col.value(0), i64::from(u32::MAX));
    let u64_col = s.column_by_name("f_uint64").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(u64_col.value(0), i128::from(u64::MAX));
    assert_eq!(batch.column_by_name("dur").unwrap().as_primitive::<Int64Type>().value(0), 2_500_000);
    let m = batch.column_by_name("m_u64_str").unwrap().as_map();
    assert_eq!(m.keys().as_primitive::<Decimal128Type>().value(0), i128::from(u64::MAX));
    let l = batch.column_by_name("r_fixed32").unwrap().as_list::<i32>();
    assert_eq!(l.values().as_primitive::<Int64Type>().value(0), 7);
    let ddl = to_ddl(&delta_schema(&d.schema())).unwrap();
    assert!(
        ddl.contains("f_uint64: DECIMAL(20,0)")
            && ddl.contains("dur BIGINT")
            && ddl.contains("r_fixed32 ARRAY<BIGINT>"),
        "{ddl}"
    );
}
