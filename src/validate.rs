//! `buf.validate` (protovalidate) rules carried by the descriptor, evaluated per record with the
//! `prost-protovalidate` crate (cargo feature `protovalidate`, on by default; its build's one
//! protoc call is answered by `scripts/protoc-offline` from the descriptor set shipped in
//! `proto/buf/validate/`). A record that breaks any rule becomes a dead letter listing every
//! violation; a message whose types carry no rule costs nothing (no validator is built). A build
//! without the feature refuses a descriptor that carries rules rather than let unchecked records
//! in.

use crate::decode::Pool;

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
    use super::{ValidateError, Violation};
    use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

    pub struct RecordValidator {
        descriptor: MessageDescriptor,
        validator: prost_protovalidate::Validator,
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
            let extensions: Vec<_> = RULE_EXTENSIONS.iter().filter_map(|n| pool.get_extension_by_name(n)).collect();
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
            Ok(Some(RecordValidator { descriptor, validator }))
        }

        /// Another validator of the same message, for a worker on another thread (its rules
        /// are compiled anew, on its first record).
        pub fn fresh(&self) -> Self {
            RecordValidator { descriptor: self.descriptor.clone(), validator: prost_protovalidate::Validator::new() }
        }

        /// The violations of one record; empty when it is valid, or when it does not parse (the
        /// decoder then reports why, more precisely).
        pub fn check(&self, bytes: &[u8]) -> Vec<Violation> {
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
