//! Editions 2023: behaviour comes from resolved features, not from a `syntax` keyword. The
//! descriptor is built by hand (protox does not compile editions yet), the way `buf build`
//! would write it.

mod common;

use common::{batch_rows, varint};
use prost::Message;
use protolake::decode::descriptor::raw::{
    DescriptorProto, EnumDescriptorProto, EnumOptions, EnumValueDescriptorProto, FeatureSet, FieldDescriptorProto,
    FieldOptions, FileDescriptorProto, FileDescriptorSet, FileOptions,
};
use protolake::decode::{DecodeOptions, Decoder, Reason};
use serde_json::{json, Value as Json};

const OPTIONAL: i32 = 1;
const REPEATED: i32 = 3;
const INT32: i32 = 5;
const MESSAGE: i32 = 11;
const ENUM: i32 = 14;

fn field(
    name: &str,
    number: i32,
    ty: i32,
    type_name: Option<&str>,
    features: Option<FeatureSet>,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(OPTIONAL),
        r#type: Some(ty),
        type_name: type_name.map(Into::into),
        options: features.map(|f| FieldOptions { features: Some(f), ..Default::default() }),
        ..Default::default()
    }
}

fn features(presence: Option<i32>, enum_type: Option<i32>, encoding: Option<i32>) -> Option<FeatureSet> {
    Some(FeatureSet { field_presence: presence, enum_type, message_encoding: encoding })
}

fn enum_type(name: &str, closed: bool) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some(name.into()),
        value: vec![
            EnumValueDescriptorProto { name: Some(format!("{}_ZERO", name.to_uppercase())), number: Some(0) },
            EnumValueDescriptorProto { name: Some(format!("{}_ONE", name.to_uppercase())), number: Some(1) },
        ],
        options: closed.then(|| EnumOptions { features: features(None, Some(2), None) }),
    }
}

fn descriptor_set(file_features: Option<FeatureSet>) -> Vec<u8> {
    let mut defaulted = field("f", 6, INT32, None, None);
    defaulted.default_value = Some("42".into());
    let mut repeated = field("g", 7, INT32, None, None);
    repeated.label = Some(REPEATED);
    let message = DescriptorProto {
        name: Some("E".into()),
        field: vec![
            field("a", 1, INT32, None, None),
            field("b", 2, INT32, None, features(Some(2), None, None)),
            field("c", 3, INT32, None, features(Some(3), None, None)),
            field("d", 4, ENUM, Some(".pl.ed.Closed"), None),
            field("e", 5, MESSAGE, Some(".pl.ed.Sub"), features(None, None, Some(2))),
            defaulted,
            repeated,
            field("h", 8, ENUM, Some(".pl.ed.Open"), None),
        ],
        ..Default::default()
    };
    let sub = DescriptorProto {
        name: Some("Sub".into()),
        field: vec![field("x", 1, INT32, None, None)],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("ed.proto".into()),
        package: Some("pl.ed".into()),
        message_type: vec![message, sub],
        enum_type: vec![enum_type("Closed", true), enum_type("Open", false)],
        options: file_features.map(|f| FileOptions { features: Some(f) }),
        syntax: Some("editions".into()),
        edition: Some(1000),
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

fn decoder(file_features: Option<FeatureSet>) -> Decoder {
    Decoder::from_descriptor_set(&descriptor_set(file_features), "pl.ed.E", &DecodeOptions::default()).unwrap()
}

#[test]
fn features_decide_presence_enums_and_encoding() {
    let mut d = decoder(None);
    assert!(!d.schema().field_with_name("c").unwrap().is_nullable(), "LEGACY_REQUIRED is NOT NULL");
    let group = [vec![0x2b], vec![0x08, 0x07], vec![0x2c]].concat(); // field 5 start, x=7, field 5 end
    let record = [vec![0x18, 0x01], group, vec![0x38, 0x01, 0x3a, 0x02, 0x02, 0x03], vec![0x40], varint(9)].concat();
    d.decode(&record).unwrap();
    let row = batch_rows(&d.flush().unwrap()).remove(0);
    assert_eq!(row["a"], Json::Null, "edition 2023 default presence is EXPLICIT");
    assert_eq!(row["b"], 0, "IMPLICIT: absent reads as zero");
    assert_eq!(row["c"], 1);
    assert_eq!(row["d"], Json::Null);
    assert_eq!(row["e"], json!({"x": 7}), "DELIMITED: group framing");
    assert_eq!(row["f"], 42, "declared default");
    assert_eq!(row["g"], json!([1, 2, 3]), "packed and unpacked both accepted");
    assert_eq!(row["h"], "UNKNOWN_ENUM_VALUE_Open_9", "edition 2023 enums are open");
}

#[test]
fn closed_enums_and_legacy_required_make_bad_records() {
    let mut d = decoder(None);
    let e = d.decode(&[0x18, 0x01, 0x20, 0x05]).unwrap_err();
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::ClosedEnumUnknownValue, "d"));
    let e = d.decode(&[0x08, 0x01]).unwrap_err();
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::MissingRequired, "c"));
    // DELIMITED means a length-delimited Sub is another writer's schema.
    let e = d.decode(&[0x18, 0x01, 0x2a, 0x00]).unwrap_err();
    assert_eq!((e.reason, e.field_path().as_str()), (Reason::WireTypeMismatch, "e"));
}

#[test]
fn file_level_features_cascade_to_fields() {
    // File-wide IMPLICIT presence: `a` now reads as zero when absent.
    let mut d = decoder(features(Some(2), None, None));
    d.decode(&[0x18, 0x01]).unwrap();
    let row = batch_rows(&d.flush().unwrap()).remove(0);
    assert_eq!(row["a"], 0);
}
