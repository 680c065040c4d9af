//! `buf.validate` (protovalidate) rules carried by the descriptor, evaluated per record with the
//! `prost-protovalidate` crate. A record that breaks any rule becomes a dead letter listing every
//! violation; a message whose types carry no rule costs nothing (no validator is built).

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field_path: String,
    pub rule: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("descriptor set: {0}")]
    Descriptor(String),
    #[error("the buf.validate rules of {message} cannot be compiled: {reason}")]
    Compilation { message: String, reason: String },
}

pub struct RecordValidator {
    descriptor: MessageDescriptor,
    validator: prost_protovalidate::Validator,
}

const RULE_EXTENSIONS: [&str; 3] = ["buf.validate.field", "buf.validate.message", "buf.validate.oneof"];

impl RecordValidator {
    /// A validator for `message`, or None when neither it nor any type it reaches carries a
    /// `buf.validate` rule.
    pub fn for_message(descriptor_set: &[u8], message: &str) -> Result<Option<Self>, ValidateError> {
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
        if let Err(prost_protovalidate::Error::Compilation(e)) = validator.validate(&DynamicMessage::new(descriptor.clone())) {
            return Err(ValidateError::Compilation { message: message.into(), reason: e.to_string() });
        }
        Ok(Some(RecordValidator { descriptor, validator }))
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
                .map(|v| Violation { field_path: v.field_path(), rule: v.rule_id().to_string(), message: v.message().to_string() })
                .collect(),
            Err(other) => {
                vec![Violation { field_path: String::new(), rule: "evaluation_error".into(), message: other.to_string() }]
            }
        }
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

/// `buf/validate/validate.proto`, for compiling .proto files that import it without having it.
pub fn validate_proto_file() -> Option<prost_types::FileDescriptorProto> {
    prost_protovalidate::types::DESCRIPTOR_POOL
        .get_file_by_name("buf/validate/validate.proto")
        .map(|f| f.file_descriptor_proto().clone())
}
