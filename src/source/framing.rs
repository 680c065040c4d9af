//! How a Kafka message's value carries its protobuf record: bare, or in the Confluent Schema
//! Registry wire format (`0x00`, a big-endian 4-byte schema id, the message indexes as a
//! zig-zag varint count followed by zig-zag varint indexes, then the serialized message; a
//! single `0x00` stands for the indexes `[0]`).
//!
//! A value that does not carry what the table expects is a dead letter with a reason, never a
//! crash: wrong magic byte, an unknown schema id, indexes naming another message.

use crate::config::Framing;

/// Why a value could not be unframed (the dead letter's reason and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError {
    pub reason: &'static str,
    pub message: String,
}

/// A table's framing, resolved against its message's place in its `.proto` file.
#[derive(Debug, Clone)]
pub struct Unframer {
    framing: Framing,
    /// The configured message's index path (Confluent message indexes).
    index_path: Vec<i32>,
}

impl Unframer {
    pub fn new(framing: Framing, index_path: Vec<i32>) -> Self {
        Unframer { framing, index_path }
    }

    /// The protobuf record inside `value`.
    pub fn payload<'a>(&self, value: &'a [u8]) -> Result<&'a [u8], FramingError> {
        let Framing::Confluent { schema_ids } = &self.framing else { return Ok(value) };
        let err = |reason, message: String| Err(FramingError { reason, message });
        if value.len() < 5 {
            return err(
                "bad_framing",
                format!("{} bytes cannot hold the Confluent header (magic byte and schema id)", value.len()),
            );
        }
        if value[0] != 0 {
            return err(
                "bad_framing",
                format!("magic byte is {:#04x}, not 0x00: the value is not in the Confluent wire format", value[0]),
            );
        }
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        if !schema_ids.contains(&id) {
            let known: Vec<String> = schema_ids.iter().map(u32::to_string).collect();
            return err(
                "unknown_schema_id",
                format!(
                    "schema id {id} is not one this table accepts ({}); if it is a compatible new version, \
                     add it to schema_ids after pinning its contract",
                    known.join(", ")
                ),
            );
        }
        let mut rest = &value[5..];
        let count = match read_zigzag(&mut rest) {
            Some(n) => n,
            None => return err("bad_framing", "the message indexes are cut off".into()),
        };
        let indexes: Vec<i32> = if count == 0 {
            vec![0]
        } else {
            if count < 0 || count as usize > rest.len() {
                return err("bad_framing", format!("message index count {count} is not possible here"));
            }
            let mut v = Vec::with_capacity(count as usize);
            for _ in 0..count {
                match read_zigzag(&mut rest) {
                    Some(i) => v.push(i as i32),
                    None => return err("bad_framing", "the message indexes are cut off".into()),
                }
            }
            v
        };
        if indexes != self.index_path {
            return err(
                "wrong_message_type",
                format!(
                    "schema {id} message indexes {indexes:?} name another message than the table's {:?}",
                    self.index_path
                ),
            );
        }
        Ok(rest)
    }
}

fn read_zigzag(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confluent(ids: &[u32], path: &[i32]) -> Unframer {
        Unframer::new(Framing::Confluent { schema_ids: ids.to_vec() }, path.to_vec())
    }

    fn framed(id: u32, indexes: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(indexes);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn raw_values_pass_through() {
        let u = Unframer::new(Framing::Raw, vec![0]);
        assert_eq!(u.payload(b"\x08\x01").unwrap(), b"\x08\x01");
        assert_eq!(u.payload(b"").unwrap(), b"");
    }

    #[test]
    fn first_message_shorthand_and_explicit_indexes() {
        let u = confluent(&[7], &[0]);
        assert_eq!(u.payload(&framed(7, &[0], b"\x08\x01")).unwrap(), b"\x08\x01");
        // count 1 (zigzag 2), index 0
        assert_eq!(u.payload(&framed(7, &[2, 0], b"\x08\x01")).unwrap(), b"\x08\x01");
        // nested message [1, 0]: count 2 (4), 1 (2), 0 (0)
        let nested = confluent(&[7], &[1, 0]);
        assert_eq!(nested.payload(&framed(7, &[4, 2, 0], b"x")).unwrap(), b"x");
        let e = nested.payload(&framed(7, &[0], b"x")).unwrap_err();
        assert_eq!(e.reason, "wrong_message_type");
        assert!(e.message.contains("[0]") && e.message.contains("[1, 0]"), "{}", e.message);
    }

    #[test]
    fn refusals_say_why() {
        let u = confluent(&[7, 8], &[0]);
        let e = u.payload(&framed(9, &[0], b"")).unwrap_err();
        assert_eq!(e.reason, "unknown_schema_id");
        assert!(e.message.contains("schema id 9") && e.message.contains("7, 8"), "{}", e.message);
        let e = u.payload(b"\x08\x01\x10\x02\x18").unwrap_err();
        assert_eq!(e.reason, "bad_framing");
        assert!(e.message.contains("magic byte is 0x08"), "{}", e.message);
        assert_eq!(u.payload(b"\x00\x00").unwrap_err().reason, "bad_framing");
        assert!(u.payload(&framed(7, &[], b"")).unwrap_err().message.contains("cut off"));
        assert!(u.payload(&framed(7, &[0x7f], b"")).unwrap_err().message.contains("not possible"));
        assert!(u.payload(&framed(7, &[4, 0x82, 0x82], b"")).unwrap_err().message.contains("cut off"));
    }
}
