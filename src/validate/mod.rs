//! `buf.validate` (protovalidate) rules carried by the descriptor, evaluated per record with the
//! `prost-protovalidate` crate, the common field rules first over the record's wire bytes
//! ([`wire_rules`]: a record they pass is valid, any other is judged by protovalidate) (cargo feature `protovalidate`, on by default; its build's one
//! protoc call is answered by `scripts/protoc-offline` from the descriptor set shipped in
//! `proto/buf/validate/`). A record that breaks any rule becomes a dead letter listing every
//! violation; a message whose types carry no rule costs nothing (no validator is built). A build
//! without the feature refuses a descriptor that carries rules rather than let unchecked records
//! in.

use crate::decode::Pool;

#[cfg(feature = "protovalidate")]
mod wire_rules;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field_path: String,
    pub rule: String,
    pub message: String,
    /// The `buf.validate.Violation` protovalidate reported, encoded (field path elements with
    /// their numbers and types, the rule's path); empty for protolake's own checks.
    pub encoded: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("descriptor set: {0}")]
    Descriptor(String),
    #[error("the buf.validate rules of {message} cannot be compiled: {reason}")]
    Compilation { message: String, reason: String },
    #[error(
        "{message} carries buf.validate rules, and this build of protolake cannot check them; \
         build it with the default features (`protovalidate`)"
    )]
    NotBuilt { message: String },
}

/// The validator for `message`, or None when it carries no rules.
pub fn validator_for(pool: &Pool, message: &str) -> Result<Option<RecordValidator>, ValidateError> {
    if !pool.carries_validation_rules(message) {
        return Ok(None);
    }
    RecordValidator::for_message(pool.encoded(), message)
}

#[cfg(not(feature = "protovalidate"))]
pub enum RecordValidator {}

#[cfg(not(feature = "protovalidate"))]
impl RecordValidator {
    fn for_message(_: &[u8], message: &str) -> Result<Option<Self>, ValidateError> {
        Err(ValidateError::NotBuilt { message: message.to_string() })
    }

    pub fn check(&self, _: &[u8]) -> Vec<Violation> {
        match *self {}
    }

    pub fn fresh(&self) -> Self {
        match *self {}
    }
}

#[cfg(feature = "protovalidate")]
pub use with_rules::RecordValidator;

#[cfg(feature = "protovalidate")]
mod with_rules {
    use super::wire_rules::{Extensions, WireRules};
    use super::{ValidateError, Violation};
    use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

    pub struct RecordValidator {
        pub(super) descriptor: MessageDescriptor,
        validator: prost_protovalidate::Validator,
        /// The rules read off the wire, when every rule of the message is one it reads.
        pub(super) plan: Option<WireRules>,
    }

    const RULE_EXTENSIONS: [&str; 3] = ["buf.validate.field", "buf.validate.message", "buf.validate.oneof"];

    impl RecordValidator {
        /// A validator for `message`, or None when neither it nor any type it reaches carries a
        /// `buf.validate` rule.
        pub(super) fn for_message(descriptor_set: &[u8], message: &str) -> Result<Option<Self>, ValidateError> {
            let pool = DescriptorPool::decode(descriptor_set).map_err(|e| ValidateError::Descriptor(e.to_string()))?;
            let Some(descriptor) = pool.get_message_by_name(message.trim_start_matches('.')) else {
                return Ok(None);
            };
            let [field, message_rules, oneof] = RULE_EXTENSIONS.map(|n| pool.get_extension_by_name(n));
            let rule_extensions = Extensions { field, message: message_rules, oneof };
            let extensions: Vec<_> = rule_extensions.all().cloned().collect();
            if extensions.is_empty() || !has_rules(&descriptor, &extensions, &mut Vec::new()) {
                return Ok(None);
            }
            let validator = prost_protovalidate::Validator::new();
            // Compile the rules now so a broken CEL expression stops the run before any data.
            if let Err(prost_protovalidate::Error::Compilation(e)) =
                validator.validate(&DynamicMessage::new(descriptor.clone()))
            {
                return Err(ValidateError::Compilation { message: message.into(), reason: e.to_string() });
            }
            let plan =
                WireRules::compile(&descriptor, &rule_extensions, &|m| has_rules(m, &extensions, &mut Vec::new()));
            Ok(Some(RecordValidator { descriptor, validator, plan }))
        }

        /// Another validator of the same message, for a worker on another thread (its rules
        /// are compiled anew, on its first record).
        pub fn fresh(&self) -> Self {
            RecordValidator {
                descriptor: self.descriptor.clone(),
                validator: prost_protovalidate::Validator::new(),
                plan: self.plan.clone(),
            }
        }

        /// The same validator judging every record with protovalidate alone (what the rules
        /// read off the wire save is measured against it).
        pub fn without_wire_rules(&self) -> Self {
            RecordValidator { plan: None, ..self.fresh() }
        }

        /// Whether the message's rules are read off the wire first.
        pub fn reads_wire_rules(&self) -> bool {
            self.plan.is_some()
        }

        /// The violations of one record; empty when it is valid, or when it does not parse (the
        /// decoder then reports why, more precisely).
        pub fn check(&self, bytes: &[u8]) -> Vec<Violation> {
            if self.plan.as_ref().is_some_and(|plan| plan.passes(bytes)) {
                return Vec::new();
            }
            self.protovalidate(bytes)
        }

        /// protovalidate's verdict on one record.
        pub(super) fn protovalidate(&self, bytes: &[u8]) -> Vec<Violation> {
            let Ok(message) = DynamicMessage::decode(self.descriptor.clone(), bytes) else { return Vec::new() };
            match self.validator.validate(&message) {
                Ok(()) => Vec::new(),
                Err(prost_protovalidate::Error::Validation(e)) => e
                    .violations()
                    .iter()
                    .map(|v| Violation {
                        field_path: v.field_path(),
                        rule: v.rule_id().to_string(),
                        message: sentence(v.message(), v.rule_id()),
                        encoded: prost::Message::encode_to_vec(&v.to_proto()),
                    })
                    .collect(),
                Err(other) => {
                    vec![Violation {
                        field_path: String::new(),
                        rule: "evaluation_error".into(),
                        message: other.to_string(),
                        encoded: Vec::new(),
                    }]
                }
            }
        }
    }

    /// protovalidate's message, or one made from the rule id where it gives none (its
    /// `*_empty` rules, e.g. `string.uuid_empty`, come without a message).
    fn sentence(message: &str, rule: &str) -> String {
        if !message.is_empty() {
            return message.to_string();
        }
        match rule.strip_suffix("_empty") {
            Some(base) => format!("is empty, and the rule {base} needs a value"),
            None => format!("breaks the rule {rule}"),
        }
    }

    fn has_rules(
        message: &MessageDescriptor,
        extensions: &[prost_reflect::ExtensionDescriptor],
        seen: &mut Vec<String>,
    ) -> bool {
        if seen.iter().any(|s| s == message.full_name()) {
            return false;
        }
        seen.push(message.full_name().to_string());
        let options_have = |options: &DynamicMessage| extensions.iter().any(|e| options.has_extension(e));
        if options_have(&message.options()) || message.oneofs().any(|o| options_have(&o.options())) {
            return true;
        }
        message.fields().any(|f| {
            options_have(&f.options())
                || matches!(f.kind(), prost_reflect::Kind::Message(m) if has_rules(&m, extensions, seen))
        })
    }
}

#[cfg(all(test, feature = "protovalidate"))]
mod wire_plan {
    use std::path::Path;

    use proptest::prelude::*;
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::*;

    fn pool() -> Pool {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut compiler = protox::Compiler::new([root.join("tests/protos"), root.join("proto")]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("wire_rules.proto").unwrap();
        Pool::decode(&compiler.encode_file_descriptor_set()).unwrap()
    }

    fn validator(pool: &Pool, message: &str) -> RecordValidator {
        validator_for(pool, &format!("pl.wire.{message}")).unwrap().expect("the message carries rules")
    }

    #[derive(Debug, Clone)]
    enum Wire {
        Varint(u64),
        Fixed32(u32),
        Fixed64(u64),
        Len(Vec<u8>),
    }

    fn encode(fields: &[(u32, Wire)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (number, value) in fields {
            match value {
                Wire::Varint(v) => {
                    encode_key(*number, WireType::Varint, &mut out);
                    encode_varint(*v, &mut out);
                }
                Wire::Fixed32(v) => {
                    encode_key(*number, WireType::ThirtyTwoBit, &mut out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Wire::Fixed64(v) => {
                    encode_key(*number, WireType::SixtyFourBit, &mut out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Wire::Len(b) => {
                    encode_key(*number, WireType::LengthDelimited, &mut out);
                    encode_varint(b.len() as u64, &mut out);
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    fn text(s: &str) -> Wire {
        Wire::Len(s.as_bytes().to_vec())
    }

    fn zz(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    /// A record of `pl.wire.Ruled` that passes every rule.
    fn valid() -> Vec<(u32, Wire)> {
        vec![
            (1, Wire::Varint(1)),
            (2, Wire::Varint(0)),
            (3, Wire::Varint(4294967295)),
            (4, Wire::Varint(5)),
            (5, Wire::Varint(zz(-3))),
            (6, Wire::Varint(zz(-2))),
            (7, Wire::Fixed32(11)),
            (8, Wire::Fixed64(1000)),
            (9, Wire::Fixed32(0)),
            (10, Wire::Fixed64(0)),
            (11, Wire::Fixed32((-1.5f32).to_bits())),
            (12, Wire::Fixed64(1e-300f64.to_bits())),
            (13, Wire::Varint(1)),
            (14, text("123e4567-E89B-12d3-a456-426614174000")),
            (15, text("https://www.example-news-site.com/section/world/article-000001?ref=home")),
            (16, text("AB")),
            (17, text("aé")),
            (18, text("é")),
            (19, text("éz")),
            (20, text("k")),
            (21, Wire::Varint(3)),
            (23, text("m")),
            (24, text("p")),
            (27, Wire::Fixed64(1.5f64.to_bits())),
            (28, text("anything")),
            (29, Wire::Len(encode(&[(1, text("x"))]))),
        ]
    }

    fn varints() -> impl Strategy<Value = Wire> {
        let edges: Vec<i64> = vec![
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            10,
            11,
            99,
            100,
            101,
            1000,
            1001,
            -1,
            -2,
            -3,
            -4,
            -5,
            -6,
            i32::MAX as i64,
            i32::MIN as i64,
            u32::MAX as i64,
            1 << 32,
            (1 << 32) + 7,
            i64::MAX,
            i64::MIN,
        ];
        let edge = proptest::sample::select(edges.clone()).prop_map(|v| Wire::Varint(v as u64));
        let zigzag = proptest::sample::select(edges).prop_map(|v| Wire::Varint(zz(v)));
        prop_oneof![edge, zigzag, any::<u64>().prop_map(Wire::Varint)]
    }

    fn fixed32s() -> impl Strategy<Value = Wire> {
        let floats = vec![0.0f32, -0.0, -1.5, -1.6, 2.4, 2.5, 1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-45];
        let ints = vec![0u32, 1, 10, 11, u32::MAX, (-1i32) as u32, i32::MIN as u32];
        prop_oneof![
            proptest::sample::select(floats).prop_map(|f| Wire::Fixed32(f.to_bits())),
            proptest::sample::select(ints).prop_map(Wire::Fixed32),
            any::<u32>().prop_map(Wire::Fixed32),
        ]
    }

    fn fixed64s() -> impl Strategy<Value = Wire> {
        let floats = vec![0.0f64, -0.0, 1.5, -1.5, 1e-300, -1e-300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 5e-324];
        let ints = vec![0u64, 1, 1000, 1001, u64::MAX, (-1i64) as u64, i64::MIN as u64];
        prop_oneof![
            proptest::sample::select(floats).prop_map(|f| Wire::Fixed64(f.to_bits())),
            proptest::sample::select(ints).prop_map(Wire::Fixed64),
            any::<u64>().prop_map(Wire::Fixed64),
        ]
    }

    /// Strings near the rules' edges, near-URIs and near-UUIDs, random text and invalid UTF-8.
    fn strings() -> impl Strategy<Value = Wire> {
        let near = vec![
            "",
            "a",
            "b",
            "k",
            "K",
            "é",
            "z",
            "zz",
            "az",
            "éz",
            "aaaz",
            "ab",
            "abcd",
            "abcde",
            "ax",
            "AB",
            "Ab",
            "ÀB",
            "ABC",
            "A",
            " k",
            "k ",
            "123e4567-e89b-12d3-a456-426614174000",
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "123e4567-e89b-12d3-a456-4266141740000",
        ];
        let schemes = vec!["http", "https", "h+t-t.p", "1x", "", "x", "H"];
        let separators = vec!["://", ":/", ":", "", "//"];
        let hosts = vec![
            "a",
            "example.com",
            "1.2.3.4",
            "256.1.1.1",
            "1.2.3",
            "",
            "a_b~c",
            "[::1]",
            "[v1.x]",
            "a%20b",
            "u@h",
            "é",
            "a..b",
            "-",
            ".",
            "0",
        ];
        let ports = vec!["", ":80", ":", ":65535", ":65536", ":0", ":99999", ":00080", ":x"];
        let path_chars: Vec<char> = "aZ09/-._~!$&'()*+,;=:@?#%2fFzg [] ^|\"<>\\{}é\u{7f}\n".chars().collect();
        let uri = (
            proptest::sample::select(schemes),
            proptest::sample::select(separators),
            proptest::sample::select(hosts),
            proptest::sample::select(ports),
            proptest::collection::vec(proptest::sample::select(path_chars), 0..12),
        )
            .prop_map(|(s, sep, h, p, path)| format!("{s}{sep}{h}{p}{}", path.into_iter().collect::<String>()));
        prop_oneof![
            proptest::sample::select(near).prop_map(text),
            uri.prop_map(|u| text(&u)),
            "\\PC{0,6}".prop_map(|s| text(&s)),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(Wire::Len),
        ]
    }

    fn value_for(number: u32) -> BoxedStrategy<Wire> {
        match number {
            7 | 9 | 11 => fixed32s().boxed(),
            8 | 10 | 12 | 27 => fixed64s().boxed(),
            14..=20 | 23 | 24 | 28 | 30 => strings().boxed(),
            29 => strings().boxed(),
            _ => varints().boxed(),
        }
    }

    #[derive(Debug, Clone)]
    enum Change {
        Set(u32, Wire),
        Append(u32, Wire),
        Remove(u32),
        /// Any value of any wire type, for any field (unknown numbers included).
        Stray(u32, Wire),
        Cut(usize),
    }

    fn change() -> impl Strategy<Value = Change> {
        let number = 1u32..=31;
        prop_oneof![
            4 => number.clone().prop_flat_map(|n| value_for(n).prop_map(move |w| Change::Set(n, w))),
            2 => number.clone().prop_flat_map(|n| value_for(n).prop_map(move |w| Change::Append(n, w))),
            2 => number.clone().prop_map(Change::Remove),
            1 => (1u32..=40, prop_oneof![varints(), fixed32s(), fixed64s(), strings()])
                .prop_map(|(n, w)| Change::Stray(n, w)),
            1 => (1usize..8).prop_map(Change::Cut),
        ]
    }

    fn apply(changes: &[Change]) -> Vec<u8> {
        let mut fields = valid();
        let mut cut = 0;
        for c in changes {
            match c.clone() {
                Change::Set(n, w) => {
                    fields.retain(|(m, _)| *m != n);
                    fields.push((n, w));
                }
                Change::Append(n, w) | Change::Stray(n, w) => fields.push((n, w)),
                Change::Remove(n) => fields.retain(|(m, _)| *m != n),
                Change::Cut(k) => cut = k,
            }
        }
        let mut bytes = encode(&fields);
        bytes.truncate(bytes.len().saturating_sub(cut));
        bytes
    }

    #[test]
    fn the_plan_reads_the_rules_it_knows_and_leaves_the_others_to_protovalidate() {
        let pool = pool();
        assert!(validator(&pool, "Ruled").reads_wire_rules());
        for other in ["WithCel", "WithList", "WithNested", "WithEmail", "WithOneof", "WithInvertedRange"] {
            assert!(!validator(&pool, other).reads_wire_rules(), "{other} has a rule outside the plan");
        }
        let v = validator(&pool, "Ruled");
        let plan = v.plan.as_ref().unwrap();
        let record = encode(&valid());
        assert!(v.protovalidate(&record).is_empty(), "{:?}", v.protovalidate(&record));
        assert!(plan.passes(&record), "the plan passes a valid record without asking protovalidate");
        // Each broken rule is protovalidate's to report, with its own words.
        let broken = apply(&[Change::Set(16, text("abc")), Change::Remove(23)]);
        assert!(!plan.passes(&broken));
        let rules: Vec<_> = v.check(&broken).into_iter().map(|x| x.rule).collect();
        assert_eq!(rules, ["string.len", "string.pattern", "required"]);
    }

    /// The plan never passes a record protovalidate refuses: with it or without it, a validator
    /// gives the same answer (random changes to a valid record, 3,000 cases or PROPTEST_CASES).
    #[test]
    fn the_plan_passes_only_what_protovalidate_passes() {
        let pool = pool();
        let v = validator(&pool, "Ruled");
        let plan = v.plan.as_ref().unwrap();
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
        let (passed, valid) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        runner
            .run(&proptest::collection::vec(change(), 1..4), |changes| {
                let bytes = apply(&changes);
                let passes = plan.passes(&bytes);
                let judged = v.protovalidate(&bytes);
                prop_assert!(
                    !passes || judged.is_empty(),
                    "the plan passed a record protovalidate refuses: {judged:?}"
                );
                prop_assert_eq!(v.check(&bytes), judged.clone());
                // (A record that does not decode is nobody's to pass: protovalidate reports
                // nothing, and the sink's decoder says where its bytes go wrong.)
                let decodes = prost_reflect::DynamicMessage::decode(v.descriptor.clone(), bytes.as_slice()).is_ok();
                passed.set(passed.get() + u32::from(decodes && passes));
                valid.set(valid.get() + u32::from(decodes && judged.is_empty()));
                Ok(())
            })
            .unwrap();
        // The plan does its work: most records protovalidate reads and passes, it passes alone.
        let (passed, valid) = (passed.get(), valid.get());
        eprintln!("{passed} of {valid} valid records passed by the plan");
        assert!(valid > 300 && passed * 4 > valid * 3, "{passed} of {valid} valid records passed by the plan");
    }
}

#[cfg(all(test, not(feature = "protovalidate")))]
mod tests {
    use prost::Message;

    use super::*;
    use crate::decode::descriptor::raw::{
        DescriptorProto, FieldDescriptorProto, FieldOptions, FileDescriptorProto, FileDescriptorSet,
    };

    #[test]
    fn a_build_without_the_feature_refuses_descriptors_with_rules() {
        let field = |rules: bool| FieldDescriptorProto {
            name: Some("id".into()),
            number: Some(1),
            label: Some(1),
            r#type: Some(9),
            options: rules.then(|| FieldOptions { validate: Some(vec![0x0a, 0x00]), ..Default::default() }),
            ..Default::default()
        };
        let set = |rules: bool| {
            let message = DescriptorProto { name: Some("M".into()), field: vec![field(rules)], ..Default::default() };
            let file = FileDescriptorProto {
                name: Some("m.proto".into()),
                package: Some("p".into()),
                message_type: vec![message],
                syntax: Some("proto3".into()),
                ..Default::default()
            };
            FileDescriptorSet { file: vec![file] }.encode_to_vec()
        };
        let plain = Pool::decode(&set(false)).unwrap();
        assert!(validator_for(&plain, "p.M").unwrap().is_none());
        let with_rules = Pool::decode(&set(true)).unwrap();
        let e = validator_for(&with_rules, "p.M").err().unwrap().to_string();
        assert!(e.contains("carries buf.validate rules") && e.contains("default features (`protovalidate`)"), "{e}");
    }
}

#[cfg(test)]
mod shipped_descriptor {
    use std::path::{Path, PathBuf};

    /// Where cargo unpacked prost-protovalidate-types: its validate.proto is the one its build
    /// compiles.
    fn types_crate_proto() -> PathBuf {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        let manifest = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "prost-protovalidate-types")
            .and_then(|p| p["manifest_path"].as_str())
            .expect("prost-protovalidate-types is a dependency");
        Path::new(manifest).parent().unwrap().join("proto/buf/validate/validate.proto")
    }

    /// scripts/protoc-offline answers the types crate's protoc call with
    /// proto/buf/validate/validate.binpb when the crate's validate.proto is the shipped one; the
    /// descriptor set must be what protox compiles from that file. With PROTOLAKE_BLESS=1 the
    /// test writes it instead (after copying a new validate.proto into proto/buf/validate/).
    #[test]
    fn the_shipped_validate_descriptor_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let shipped = std::fs::read(root.join("buf/validate/validate.proto")).unwrap();
        let upstream_path = types_crate_proto();
        let upstream = std::fs::read(&upstream_path).unwrap();
        assert!(
            shipped == upstream,
            "proto/buf/validate/validate.proto differs from {}: copy it over and rerun with PROTOLAKE_BLESS=1",
            upstream_path.display()
        );

        let mut compiler = protox::Compiler::new([&root]).unwrap();
        compiler.include_imports(true).include_source_info(true);
        compiler.open_file("buf/validate/validate.proto").unwrap();
        let compiled = compiler.encode_file_descriptor_set();
        let set_path = root.join("buf/validate/validate.binpb");
        if std::env::var_os("PROTOLAKE_BLESS").is_some() {
            std::fs::write(&set_path, &compiled).unwrap();
        }
        let on_disk = std::fs::read(&set_path).unwrap_or_default();
        assert!(
            on_disk == compiled,
            "{} is not the descriptor set of the shipped validate.proto ({} bytes, compiled {}); \
             regenerate it: PROTOLAKE_BLESS=1 cargo test --no-default-features --lib shipped_validate",
            set_path.display(),
            on_disk.len(),
            compiled.len()
        );
    }
}
