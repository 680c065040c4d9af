//! The descriptor model the decoder is planned from.
//!
//! A `FileDescriptorSet` (from `buf build -o x.binpb` or `protoc --include_imports
//! --descriptor_set_out`) is decoded into the small subset of `descriptor.proto` the mapping
//! needs, *including* the editions fields (`edition`, `features`) that `prost-types` drops, and
//! every field's behaviour (presence, closed enums, delimited encoding) is resolved once here so
//! the planner never has to know which syntax a file used.
//!
//! Invariant: every `FieldDef` carries a fully resolved [`Presence`] and encoding, and every type
//! name it refers to exists in the pool (checked by [`Pool::new`]).

use std::collections::HashMap;

use prost::Message;

use super::error::SchemaError;

/// `descriptor.proto` messages, reduced to the fields the mapping reads (editions included). Field numbers are those
/// of `google/protobuf/descriptor.proto`; unknown fields are skipped by prost.
pub mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "5")]
        pub enum_type: Vec<EnumDescriptorProto>,
        #[prost(message, optional, tag = "8")]
        pub options: Option<FileOptions>,
        #[prost(string, optional, tag = "12")]
        pub syntax: Option<String>,
        #[prost(int32, optional, tag = "14")]
        pub edition: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<FieldDescriptorProto>,
        #[prost(message, repeated, tag = "3")]
        pub nested_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "4")]
        pub enum_type: Vec<EnumDescriptorProto>,
        #[prost(message, optional, tag = "7")]
        pub options: Option<MessageOptions>,
        #[prost(message, repeated, tag = "8")]
        pub oneof_decl: Vec<OneofDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FieldDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "3")]
        pub number: Option<i32>,
        #[prost(int32, optional, tag = "4")]
        pub label: Option<i32>,
        #[prost(int32, optional, tag = "5")]
        pub r#type: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub type_name: Option<String>,
        #[prost(string, optional, tag = "7")]
        pub default_value: Option<String>,
        #[prost(message, optional, tag = "8")]
        pub options: Option<FieldOptions>,
        #[prost(int32, optional, tag = "9")]
        pub oneof_index: Option<i32>,
        #[prost(bool, optional, tag = "17")]
        pub proto3_optional: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OneofDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub value: Vec<EnumValueDescriptorProto>,
        #[prost(message, optional, tag = "3")]
        pub options: Option<EnumOptions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumValueDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "2")]
        pub number: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileOptions {
        #[prost(message, optional, tag = "50")]
        pub features: Option<FeatureSet>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MessageOptions {
        #[prost(bool, optional, tag = "7")]
        pub map_entry: Option<bool>,
        #[prost(message, optional, tag = "12")]
        pub features: Option<FeatureSet>,
        /// `buf.validate.message`.
        #[prost(bytes = "vec", optional, tag = "1159")]
        pub validate: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FieldOptions {
        #[prost(message, optional, tag = "21")]
        pub features: Option<FeatureSet>,
        /// `buf.validate.field` (protovalidate rules), kept only to know that rules exist.
        #[prost(bytes = "vec", optional, tag = "1159")]
        pub validate: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumOptions {
        #[prost(message, optional, tag = "7")]
        pub features: Option<FeatureSet>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct FeatureSet {
        #[prost(int32, optional, tag = "1")]
        pub field_presence: Option<i32>,
        #[prost(int32, optional, tag = "2")]
        pub enum_type: Option<i32>,
        #[prost(int32, optional, tag = "5")]
        pub message_encoding: Option<i32>,
    }
}

/// `FieldDescriptorProto.Type` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoType {
    Double,
    Float,
    Int64,
    UInt64,
    Int32,
    Fixed64,
    Fixed32,
    Bool,
    String,
    Group,
    Message,
    Bytes,
    UInt32,
    Enum,
    SFixed32,
    SFixed64,
    SInt32,
    SInt64,
}

impl ProtoType {
    fn from_number(n: i32) -> Option<Self> {
        use ProtoType::*;
        Some(match n {
            1 => Double,
            2 => Float,
            3 => Int64,
            4 => UInt64,
            5 => Int32,
            6 => Fixed64,
            7 => Fixed32,
            8 => Bool,
            9 => String,
            10 => Group,
            11 => Message,
            12 => Bytes,
            13 => UInt32,
            14 => Enum,
            15 => SFixed32,
            16 => SFixed64,
            17 => SInt32,
            18 => SInt64,
            _ => return None,
        })
    }
}

/// How an absent singular field reads (PROTOBUF_MAPPING §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// proto3 plain scalars, editions `IMPLICIT`: absent reads as the type's zero value.
    Implicit,
    /// Absent reads as null (or the declared `[default = X]` when there is one).
    Explicit,
    /// proto2 `required`, editions `LEGACY_REQUIRED`: absent makes the record bad.
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cardinality {
    Singular,
    Repeated,
}

#[derive(Debug, Clone)]
pub struct FieldDef {
    pub name: String,
    pub number: u32,
    pub cardinality: Cardinality,
    pub ty: ProtoType,
    /// Fully-qualified name (no leading dot) of the message or enum type.
    pub type_name: String,
    pub presence: Presence,
    /// The proto2/editions declared default, as written in the descriptor.
    pub default_value: Option<String>,
    /// Index into [`MessageDef::oneofs`] for members of a real (non-synthetic) oneof.
    pub oneof: Option<usize>,
    /// Group / editions `DELIMITED`: framed by start/end-group tags instead of a length.
    pub delimited: bool,
}

#[derive(Debug, Clone)]
pub struct MessageDef {
    /// The message or one of its fields has `buf.validate` options.
    pub has_validation_rules: bool,
    pub full_name: String,
    pub fields: Vec<FieldDef>,
    pub oneofs: Vec<String>,
    pub map_entry: bool,
    /// Where the message is declared in its file: its index among the file's messages, then
    /// among each enclosing message's nested ones (the Confluent wire format's message indexes).
    pub index_path: Vec<i32>,
}

#[derive(Debug, Clone)]
pub struct EnumDef {
    pub full_name: String,
    pub name: String,
    /// Declaration order; with `allow_alias` a number may appear more than once.
    pub values: Vec<(String, i32)>,
    pub closed: bool,
}

/// All message and enum types of a descriptor set, by fully-qualified name.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    messages: HashMap<String, MessageDef>,
    enums: HashMap<String, EnumDef>,
    /// The encoded descriptor set (for components that read it themselves, e.g. validation).
    encoded: Vec<u8>,
}

const EDITION_PROTO2: i32 = 998;
const EDITION_PROTO3: i32 = 999;
const EDITION_2023: i32 = 1000;
const EDITION_2024: i32 = 1001;

/// The resolved features the mapping depends on (`FeatureSet` values).
#[derive(Debug, Clone, Copy)]
struct Features {
    /// 1 EXPLICIT, 2 IMPLICIT, 3 LEGACY_REQUIRED
    field_presence: i32,
    /// 1 OPEN, 2 CLOSED
    enum_type: i32,
    /// 1 LENGTH_PREFIXED, 2 DELIMITED
    message_encoding: i32,
}

impl Features {
    fn for_edition(edition: i32) -> Self {
        match edition {
            EDITION_PROTO2 => Features { field_presence: 1, enum_type: 2, message_encoding: 1 },
            EDITION_PROTO3 => Features { field_presence: 2, enum_type: 1, message_encoding: 1 },
            _ => Features { field_presence: 1, enum_type: 1, message_encoding: 1 },
        }
    }

    fn merged(self, over: Option<&raw::FeatureSet>) -> Self {
        let Some(over) = over else { return self };
        let pick = |new: Option<i32>, old: i32| new.filter(|v| *v != 0).unwrap_or(old);
        Features {
            field_presence: pick(over.field_presence, self.field_presence),
            enum_type: pick(over.enum_type, self.enum_type),
            message_encoding: pick(over.message_encoding, self.message_encoding),
        }
    }
}

impl Pool {
    /// Reads an encoded `FileDescriptorSet`.
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        let set = raw::FileDescriptorSet::decode(bytes)
            .map_err(|e| SchemaError::DescriptorSet { reason: format!("not a FileDescriptorSet: {e}") })?;
        let mut pool = Self::from_files(&set.file)?;
        pool.encoded = bytes.to_vec();
        Ok(pool)
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Whether `message` or any message type it reaches carries `buf.validate` rules.
    pub fn carries_validation_rules(&self, message: &str) -> bool {
        let mut stack = vec![message.trim_start_matches('.').to_string()];
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(m) = self.messages.get(&name) else { continue };
            if m.has_validation_rules {
                return true;
            }
            stack.extend(m.fields.iter().filter(|f| !f.type_name.is_empty()).map(|f| f.type_name.clone()));
        }
        false
    }

    /// Builds the pool from a `prost_types` descriptor set (as `protox` produces). Editions
    /// features survive only through [`Pool::decode`], since `prost_types` has no field for them.
    pub fn from_prost(set: &prost_types::FileDescriptorSet) -> Result<Self, SchemaError> {
        Self::decode(&set.encode_to_vec())
    }

    fn from_files(files: &[raw::FileDescriptorProto]) -> Result<Self, SchemaError> {
        let mut pool = Pool::default();
        for file in files {
            let file_name = file.name.clone().unwrap_or_default();
            let edition = match (file.syntax.as_deref(), file.edition) {
                (Some("editions"), Some(e)) => e,
                (Some("editions"), None) => {
                    return Err(SchemaError::DescriptorSet {
                        reason: format!("{file_name}: syntax \"editions\" without an edition"),
                    })
                }
                (None | Some("") | Some("proto2"), _) => EDITION_PROTO2,
                (Some("proto3"), _) => EDITION_PROTO3,
                (Some(other), _) => {
                    return Err(SchemaError::DescriptorSet { reason: format!("{file_name}: unknown syntax {other:?}") })
                }
            };
            if !matches!(edition, EDITION_PROTO2 | EDITION_PROTO3 | EDITION_2023 | EDITION_2024) {
                return Err(SchemaError::DescriptorSet {
                    reason: format!("{file_name}: edition {edition} is not supported (2023 and 2024 are)"),
                });
            }
            let features =
                Features::for_edition(edition).merged(file.options.as_ref().and_then(|o| o.features.as_ref()));
            let ctx = FileCtx { edition, features };
            let prefix = file.package.clone().unwrap_or_default();
            for e in &file.enum_type {
                pool.add_enum(&prefix, e, features);
            }
            for (i, m) in file.message_type.iter().enumerate() {
                pool.add_message(&prefix, m, &ctx, features, vec![i as i32])?;
            }
        }
        pool.check_references()?;
        Ok(pool)
    }

    fn add_enum(&mut self, prefix: &str, e: &raw::EnumDescriptorProto, parent: Features) {
        let name = e.name.clone().unwrap_or_default();
        let full_name = qualify(prefix, &name);
        let features = parent.merged(e.options.as_ref().and_then(|o| o.features.as_ref()));
        let values = e.value.iter().map(|v| (v.name.clone().unwrap_or_default(), v.number.unwrap_or(0))).collect();
        self.enums.insert(full_name.clone(), EnumDef { full_name, name, values, closed: features.enum_type == 2 });
    }

    fn add_message(
        &mut self,
        prefix: &str,
        m: &raw::DescriptorProto,
        file: &FileCtx,
        parent: Features,
        index_path: Vec<i32>,
    ) -> Result<(), SchemaError> {
        let full_name = qualify(prefix, m.name.as_deref().unwrap_or_default());
        let features = parent.merged(m.options.as_ref().and_then(|o| o.features.as_ref()));
        for e in &m.enum_type {
            self.add_enum(&full_name, e, features);
        }
        for (i, nested) in m.nested_type.iter().enumerate() {
            let mut path = index_path.clone();
            path.push(i as i32);
            self.add_message(&full_name, nested, file, features, path)?;
        }
        // A oneof is synthetic when it only exists to give a proto3 `optional` field presence.
        let synthetic: Vec<bool> = (0..m.oneof_decl.len())
            .map(|i| {
                m.field.iter().filter(|f| f.oneof_index == Some(i as i32)).all(|f| f.proto3_optional == Some(true))
            })
            .collect();
        let mut oneof_slot = vec![None; m.oneof_decl.len()];
        let mut oneofs = Vec::new();
        for (i, decl) in m.oneof_decl.iter().enumerate() {
            if !synthetic[i] {
                oneof_slot[i] = Some(oneofs.len());
                oneofs.push(decl.name.clone().unwrap_or_default());
            }
        }
        let mut fields = Vec::with_capacity(m.field.len());
        for f in &m.field {
            fields.push(resolve_field(&full_name, f, file, features, &oneof_slot)?);
        }
        let map_entry = m.options.as_ref().and_then(|o| o.map_entry).unwrap_or(false);
        let has_validation_rules = m.options.as_ref().is_some_and(|o| o.validate.is_some())
            || m.field.iter().any(|f| f.options.as_ref().is_some_and(|o| o.validate.is_some()));
        self.messages.insert(
            full_name.clone(),
            MessageDef { has_validation_rules, full_name, fields, oneofs, map_entry, index_path },
        );
        Ok(())
    }

    fn check_references(&self) -> Result<(), SchemaError> {
        for m in self.messages.values() {
            for f in &m.fields {
                let known = match f.ty {
                    ProtoType::Message | ProtoType::Group => self.messages.contains_key(&f.type_name),
                    ProtoType::Enum => self.enums.contains_key(&f.type_name),
                    _ => true,
                };
                if !known {
                    return Err(SchemaError::DescriptorSet {
                        reason: format!(
                            "{}.{} refers to {:?}, which is not in the descriptor set \
                             (build it with --include_imports / `buf build`)",
                            m.full_name, f.name, f.type_name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn message(&self, full_name: &str) -> Option<&MessageDef> {
        self.messages.get(full_name.trim_start_matches('.'))
    }

    pub fn enumeration(&self, full_name: &str) -> Option<&EnumDef> {
        self.enums.get(full_name.trim_start_matches('.'))
    }

    /// Message names, sorted, for "did you mean" hints.
    pub fn message_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.messages.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

struct FileCtx {
    edition: i32,
    #[allow(dead_code)]
    features: Features,
}

fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn resolve_field(
    message: &str,
    f: &raw::FieldDescriptorProto,
    file: &FileCtx,
    message_features: Features,
    oneof_slot: &[Option<usize>],
) -> Result<FieldDef, SchemaError> {
    let name = f.name.clone().unwrap_or_default();
    let bad = |reason: String| SchemaError::DescriptorSet { reason: format!("{message}.{name}: {reason}") };
    let number = f
        .number
        .filter(|n| (1..=536_870_911).contains(n))
        .ok_or_else(|| bad(format!("field number {:?} is outside 1..=536870911", f.number)))? as u32;
    let ty =
        f.r#type.and_then(ProtoType::from_number).ok_or_else(|| bad(format!("unknown field type {:?}", f.r#type)))?;
    let features = message_features.merged(f.options.as_ref().and_then(|o| o.features.as_ref()));
    let label = f.label.unwrap_or(1);
    let cardinality = if label == 3 { Cardinality::Repeated } else { Cardinality::Singular };
    let oneof = f.oneof_index.and_then(|i| usize::try_from(i).ok()).and_then(|i| oneof_slot.get(i).copied().flatten());
    let is_message = matches!(ty, ProtoType::Message | ProtoType::Group);
    let presence = if label == 2 || (file.edition >= EDITION_2023 && features.field_presence == 3) {
        Presence::Required
    } else if is_message || oneof.is_some() || f.proto3_optional == Some(true) {
        Presence::Explicit
    } else if features.field_presence == 2 {
        Presence::Implicit
    } else {
        Presence::Explicit
    };
    let delimited =
        ty == ProtoType::Group || (is_message && file.edition >= EDITION_2023 && features.message_encoding == 2);
    Ok(FieldDef {
        name,
        number,
        cardinality,
        ty,
        type_name: f.type_name.clone().unwrap_or_default().trim_start_matches('.').to_string(),
        presence,
        default_value: f.default_value.clone(),
        oneof,
        delimited,
    })
}
