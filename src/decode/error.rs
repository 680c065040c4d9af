//! Errors of the decoder: a [`SchemaError`] refuses a message type before any data is read; a
//! [`RecordError`] is a value describing one bad record, which the caller routes to the
//! dead-letter sink while the stream goes on.

use std::fmt;

/// The message type cannot be mapped (PROTOBUF_MAPPING §1, §10) or the descriptor set is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid descriptor set: {reason}")]
    DescriptorSet { reason: String },
    #[error("message {name:?} is not in the descriptor set{hint}")]
    UnknownMessage { name: String, hint: String },
    #[error(
        "{path}: message {type_name} is recursive; set recursive.fields.max.depth (1..=10, \
         `--recursion-depth N`) to cut it at N levels"
    )]
    Recursive { path: String, type_name: String },
    #[error("recursive.fields.max.depth must be between 1 and 10, got {0}")]
    DepthOutOfRange(u32),
    #[error(
        "{path}: fields {first:?} and {second:?} differ only in letter case; Delta and Spark \
         column names are case-insensitive, so one table cannot hold both (rename one in the .proto)"
    )]
    CaseInsensitiveClash { path: String, first: String, second: String },
    #[error("{path}: declared default {value:?} is not a valid {kind} value")]
    BadDefault { path: String, value: String, kind: &'static str },
}

/// Why a record was refused (PROTOBUF_MAPPING §12). The `as_str` names are stable: they are
/// what the dead-letter table's `reason` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Truncated,
    VarintTooLong,
    InvalidWireType,
    FieldNumberZero,
    FieldNumberOutOfRange,
    UnexpectedEndGroup,
    UnterminatedGroup,
    MissingRequired,
    InvalidUtf8,
    WireTypeMismatch,
    ClosedEnumUnknownValue,
    /// Timestamp/Duration seconds and nanos do not fit in int64 microseconds.
    TimeOverflow,
    /// Nesting deeper than the decoder's limit (unknown groups, `google.protobuf.Value`).
    TooDeep,
    /// The batch's variable-length buffer would pass 2 GiB; flush before appending more.
    BatchFull,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::VarintTooLong => "varint_too_long",
            Reason::InvalidWireType => "invalid_wire_type",
            Reason::FieldNumberZero => "field_number_zero",
            Reason::FieldNumberOutOfRange => "field_number_out_of_range",
            Reason::UnexpectedEndGroup => "unexpected_end_group",
            Reason::UnterminatedGroup => "unterminated_group",
            Reason::MissingRequired => "missing_required",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::WireTypeMismatch => "wire_type_mismatch",
            Reason::ClosedEnumUnknownValue => "closed_enum_unknown_value",
            Reason::TimeOverflow => "time_overflow",
            Reason::TooDeep => "too_deep",
            Reason::BatchFull => "batch_full",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One path step, innermost last once the error reaches the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
}

/// A bad record: no row was produced for it, and the batch around it is untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub reason: Reason,
    /// Human-readable detail, e.g. "wire type 2 (length-delimited) for an int64 field".
    pub message: String,
    /// Byte offset in the record where the problem was found.
    pub byte_offset: usize,
    /// Steps collected innermost-first while the error unwinds.
    steps: Vec<Step>,
}

impl RecordError {
    pub(crate) fn new(reason: Reason, byte_offset: usize, message: impl Into<String>) -> Self {
        RecordError { reason, message: message.into(), byte_offset, steps: Vec::new() }
    }

    pub(crate) fn in_field(mut self, name: &str) -> Self {
        self.steps.push(Step::Field(name.to_string()));
        self
    }

    pub(crate) fn at_index(mut self, index: usize) -> Self {
        self.steps.push(Step::Index(index));
        self
    }

    /// The field path, e.g. `items[2].price` (empty for the record itself).
    pub fn field_path(&self) -> String {
        let mut out = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.field_path();
        let path = if path.is_empty() { "<record>" } else { path.as_str() };
        write!(f, "{} at {path} (byte {}): {}", self.reason, self.byte_offset, self.message)
    }
}

impl std::error::Error for RecordError {}
