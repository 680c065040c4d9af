//! The answer of a method, built from its response message's descriptor: the fields it has of
//! `partition`, `offset` (unary), `accepted` and `refused` (client streams) are filled by name.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::validate::Violation;

/// How a method's response message is filled.
pub struct Reply {
    descriptor: MessageDescriptor,
    partition: Option<FieldDescriptor>,
    offset: Option<FieldDescriptor>,
    accepted: Option<FieldDescriptor>,
    refused: Option<RefusedShape>,
}

/// `repeated R refused`, R with `index` and `repeated V violations`, V with `field`, `rule`,
/// `description` (each optional).
struct RefusedShape {
    field: FieldDescriptor,
    index: Option<FieldDescriptor>,
    violations: Option<(FieldDescriptor, [Option<FieldDescriptor>; 3])>,
}

fn integer(message: &MessageDescriptor, name: &str) -> Result<Option<FieldDescriptor>, String> {
    let Some(f) = message.get_field_by_name(name) else { return Ok(None) };
    let is_int = matches!(
        f.kind(),
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64
    );
    if !is_int || f.is_list() {
        return Err(format!("{}.{name} must be a singular integer field", message.full_name()));
    }
    Ok(Some(f))
}

fn string(message: &MessageDescriptor, name: &str) -> Result<Option<FieldDescriptor>, String> {
    let Some(f) = message.get_field_by_name(name) else { return Ok(None) };
    if f.kind() != Kind::String || f.is_list() {
        return Err(format!("{}.{name} must be a singular string field", message.full_name()));
    }
    Ok(Some(f))
}

fn int_value(field: &FieldDescriptor, v: i64) -> Value {
    match field.kind() {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(v as i32),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(v as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(v as u64),
        _ => Value::I64(v),
    }
}

impl Reply {
    /// `client_streaming`: the method answers a stream, whose reply must say what was refused.
    pub fn for_method(descriptor: MessageDescriptor, client_streaming: bool) -> Result<Self, String> {
        let refused = match descriptor.get_field_by_name("refused") {
            None => None,
            Some(field) => {
                let Kind::Message(item) = field.kind() else {
                    return Err(format!("{}.refused must be a repeated message", descriptor.full_name()));
                };
                if !field.is_list() {
                    return Err(format!("{}.refused must be repeated", descriptor.full_name()));
                }
                let violations = match item.get_field_by_name("violations") {
                    None => None,
                    Some(v) => {
                        let Kind::Message(violation) = v.kind() else {
                            return Err(format!("{}.violations must be a repeated message", item.full_name()));
                        };
                        let fields = [
                            string(&violation, "field")?,
                            string(&violation, "rule")?,
                            string(&violation, "description")?,
                        ];
                        Some((v, fields))
                    }
                };
                Some(RefusedShape { field, index: integer(&item, "index")?, violations })
            }
        };
        let reply = Reply {
            partition: integer(&descriptor, "partition")?,
            offset: integer(&descriptor, "offset")?,
            accepted: integer(&descriptor, "accepted")?,
            refused,
            descriptor,
        };
        if client_streaming && (reply.accepted.is_none() || reply.refused.is_none()) {
            return Err(format!(
                "{} answers a client stream, so it must say what was taken and what refused: give it \
                 `int64 accepted` and `repeated <Refused> refused` (Refused: `int64 index`, `repeated <Violation> violations`, \
                 Violation: `string field`, `string rule`, `string description`)",
                reply.descriptor.full_name()
            ));
        }
        Ok(reply)
    }

    /// The answer to a unary call whose record is at `partition`/`offset`.
    pub fn unary(&self, partition: i32, offset: i64) -> Bytes {
        let mut m = DynamicMessage::new(self.descriptor.clone());
        if let Some(f) = &self.partition {
            m.set_field(f, int_value(f, i64::from(partition)));
        }
        if let Some(f) = &self.offset {
            m.set_field(f, int_value(f, offset));
        }
        if let Some(f) = &self.accepted {
            m.set_field(f, int_value(f, 1));
        }
        prost::Message::encode_to_vec(&m).into()
    }

    /// The answer to a unary call in direct mode: no partition or offset (there is no topic),
    /// `accepted` when the message has it.
    pub fn direct(&self) -> Bytes {
        let mut m = DynamicMessage::new(self.descriptor.clone());
        if let Some(f) = &self.accepted {
            m.set_field(f, int_value(f, 1));
        }
        prost::Message::encode_to_vec(&m).into()
    }

    /// The answer to a client stream.
    pub fn stream(&self, accepted: u64, refused: &[(u64, Vec<Violation>)]) -> Bytes {
        prost::Message::encode_to_vec(&self.stream_message(accepted, refused)).into()
    }

    pub fn stream_message(&self, accepted: u64, refused: &[(u64, Vec<Violation>)]) -> DynamicMessage {
        let mut m = DynamicMessage::new(self.descriptor.clone());
        if let Some(f) = &self.accepted {
            m.set_field(f, int_value(f, accepted as i64));
        }
        if let Some(shape) = &self.refused {
            let Kind::Message(item) = shape.field.kind() else { return m };
            let list = refused
                .iter()
                .map(|(index, violations)| {
                    let mut r = DynamicMessage::new(item.clone());
                    if let Some(f) = &shape.index {
                        r.set_field(f, int_value(f, *index as i64));
                    }
                    if let Some((vf, [field, rule, description])) = &shape.violations {
                        if let Kind::Message(vm) = vf.kind() {
                            let items = violations
                                .iter()
                                .map(|v| {
                                    let mut x = DynamicMessage::new(vm.clone());
                                    for (f, text) in
                                        [(field, &v.field_path), (rule, &v.rule), (description, &v.message)]
                                    {
                                        if let Some(f) = f {
                                            x.set_field(f, Value::String(text.clone()));
                                        }
                                    }
                                    Value::Message(x)
                                })
                                .collect();
                            r.set_field(vf, Value::List(items));
                        }
                    }
                    Value::Message(r)
                })
                .collect();
            m.set_field(&shape.field, Value::List(list));
        }
        m
    }

    /// The answer as JSON (the HTTP/JSON form of the method).
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }
}
