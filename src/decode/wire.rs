//! Protobuf wire-format reading: tags, varints, fixed-width values, length-delimited slices and
//! skipping of unknown fields (groups included, iteratively so hostile nesting cannot overflow
//! the stack). Every read is bounds-checked and reports [`Reason::Truncated`] rather than panic.

use super::error::{Reason, RecordError};

pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
pub const SGROUP: u8 = 3;
pub const EGROUP: u8 = 4;
pub const I32: u8 = 5;

/// Deepest nesting of unknown groups skipped before the record is refused.
pub const MAX_SKIP_DEPTH: usize = 100;

pub fn wire_type_name(wire_type: u8) -> &'static str {
    match wire_type {
        VARINT => "varint",
        I64 => "fixed64",
        LEN => "length-delimited",
        SGROUP => "start-group",
        EGROUP => "end-group",
        I32 => "fixed32",
        _ => "invalid",
    }
}

/// A cursor over one record's bytes (or a slice of them). `base` is the offset of `buf[0]` in
/// the whole record, so errors can point at an absolute byte.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, base: 0 }
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute offset of the next byte.
    #[inline]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    #[cold]
    pub fn error(&self, reason: Reason, message: impl Into<String>) -> RecordError {
        RecordError::new(reason, self.offset(), message)
    }

    fn truncated(&self, what: &str) -> RecordError {
        self.error(Reason::Truncated, format!("input ends inside {what}"))
    }

    #[inline(always)]
    pub fn read_varint(&mut self) -> Result<u64, RecordError> {
        // Fast paths: one and two bytes cover tags and most small values.
        if let Some(&b0) = self.buf.get(self.pos) {
            if b0 < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b0));
            }
            if let Some(&b1) = self.buf.get(self.pos + 1) {
                if b1 < 0x80 {
                    self.pos += 2;
                    return Ok(u64::from(b0 & 0x7f) | (u64::from(b1) << 7));
                }
            }
        }
        self.read_varint_slow()
    }

    #[inline(never)]
    fn read_varint_slow(&mut self) -> Result<u64, RecordError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let mut value: u64 = 0;
        for (i, &b) in rest.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte holds bit 63 only; more is a value beyond 64 bits.
                if i == 9 && b > 1 {
                    return Err(self.error(Reason::VarintTooLong, "varint overflows 64 bits"));
                }
                self.pos += i + 1;
                return Ok(value);
            }
        }
        if rest.len() >= 10 {
            Err(self.error(Reason::VarintTooLong, "varint longer than 10 bytes"))
        } else {
            Err(self.truncated("a varint"))
        }
    }

    /// Reads a tag: (field number, wire type).
    #[inline(always)]
    pub fn read_tag(&mut self) -> Result<(u32, u8), RecordError> {
        let start = self.pos;
        let tag = self.read_varint()?;
        let wire_type = (tag & 7) as u8;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) || wire_type > 5 {
            return Err(self.bad_tag(start, number, wire_type));
        }
        Ok((number as u32, wire_type))
    }

    #[cold]
    fn bad_tag(&self, start: usize, number: u64, wire_type: u8) -> RecordError {
        let at = Reader { buf: self.buf, pos: start, base: self.base };
        if number == 0 {
            at.error(Reason::FieldNumberZero, "tag with field number 0")
        } else if wire_type > 5 {
            at.error(Reason::InvalidWireType, format!("wire type {wire_type} does not exist"))
        } else {
            at.error(Reason::FieldNumberOutOfRange, format!("field number {number} is beyond 2^29-1"))
        }
    }

    #[inline]
    pub fn read_fixed32(&mut self) -> Result<u32, RecordError> {
        match self.buf.get(self.pos..self.pos + 4) {
            Some(b) => {
                self.pos += 4;
                Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            None => Err(self.truncated("a fixed32 value")),
        }
    }

    #[inline]
    pub fn read_fixed64(&mut self) -> Result<u64, RecordError> {
        match self.buf.get(self.pos..self.pos + 8) {
            Some(b) => {
                self.pos += 8;
                Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            None => Err(self.truncated("a fixed64 value")),
        }
    }

    /// Reads a length prefix and returns a reader over exactly that many bytes.
    #[inline(always)]
    pub fn read_len(&mut self) -> Result<Reader<'a>, RecordError> {
        let len = self.read_varint()?;
        let start = self.pos;
        match self.buf.get(start..).and_then(|rest| rest.get(..usize::try_from(len).ok()?)) {
            Some(body) => {
                self.pos = start + body.len();
                Ok(Reader { buf: body, pos: 0, base: self.base + start })
            }
            None => Err(self.len_past_end(len)),
        }
    }

    #[cold]
    fn len_past_end(&self, len: u64) -> RecordError {
        let remaining = self.buf.len().saturating_sub(self.pos);
        self.error(
            Reason::Truncated,
            format!("length {len} runs past the end of the enclosing message ({remaining} bytes left)"),
        )
    }

    /// The unread bytes of this reader.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// Skips the value of a field of unknown number whose tag was just read.
    pub fn skip(&mut self, number: u32, wire_type: u8) -> Result<(), RecordError> {
        match wire_type {
            VARINT => self.read_varint().map(drop),
            I64 => self.read_fixed64().map(drop),
            I32 => self.read_fixed32().map(drop),
            LEN => self.read_len().map(drop),
            SGROUP => self.skip_group(number),
            EGROUP => Err(self.error(
                Reason::UnexpectedEndGroup,
                format!("end-group for field {number} with no matching start-group"),
            )),
            _ => Err(self.error(Reason::InvalidWireType, format!("wire type {wire_type} does not exist"))),
        }
    }

    /// Skips a group whose start tag (field `number`) was just read, nested groups included.
    fn skip_group(&mut self, number: u32) -> Result<(), RecordError> {
        let mut open = vec![number];
        while let Some(&innermost) = open.last() {
            if self.is_empty() {
                return Err(
                    self.error(Reason::UnterminatedGroup, format!("group for field {innermost} is never closed"))
                );
            }
            let (n, wt) = self.read_tag()?;
            match wt {
                SGROUP => {
                    if open.len() >= MAX_SKIP_DEPTH {
                        return Err(self.error(Reason::TooDeep, "unknown groups nested deeper than 100"));
                    }
                    open.push(n);
                }
                EGROUP if n == innermost => {
                    open.pop();
                }
                EGROUP => {
                    return Err(self.error(
                        Reason::UnexpectedEndGroup,
                        format!("end-group for field {n} inside the group of field {innermost}"),
                    ))
                }
                _ => self.skip(n, wt)?,
            }
        }
        Ok(())
    }
}

/// One field value as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// A lighter [`Reader`] for the passes that only look (the gateway's key, the rules read off the
/// wire): None wherever the bytes do not read, with no error built, and groups not skipped (such
/// a record takes the full path, whose decoder says what is wrong).
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A tag: (field number, wire type); None for number 0, beyond 2^29-1, or wire type 6 or 7.
    #[inline(always)]
    pub fn tag(&mut self) -> Option<(u32, u8)> {
        let tag = self.varint()?;
        let (number, wire_type) = (tag >> 3, (tag & 7) as u8);
        (number != 0 && number <= u64::from(u32::MAX >> 3) && wire_type <= 5).then_some((number as u32, wire_type))
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Option<u64> {
        let b0 = *self.buf.get(self.pos)?;
        if b0 < 0x80 {
            self.pos += 1;
            return Some(u64::from(b0));
        }
        let mut value = u64::from(b0 & 0x7f);
        for i in 1..10 {
            let b = *self.buf.get(self.pos + i)?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte holds bit 63 alone.
                if i == 9 && b > 1 {
                    return None;
                }
                self.pos += i + 1;
                return Some(value);
            }
        }
        None
    }

    #[inline(always)]
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    #[inline(always)]
    pub fn delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    /// The value of a field whose tag (of `wire_type`) was just read; None for groups.
    #[inline(always)]
    pub fn value(&mut self, wire_type: u8) -> Option<WireValue<'a>> {
        match wire_type {
            VARINT => self.varint().map(WireValue::Varint),
            I64 => self.take(8).map(|b| WireValue::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))),
            I32 => self.take(4).map(|b| WireValue::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))),
            LEN => self.delimited().map(WireValue::Len),
            _ => None,
        }
    }

    #[inline]
    pub fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            I32 => self.take(4).map(drop),
            LEN => self.delimited().map(drop),
            _ => None,
        }
    }
}

#[inline]
pub fn zigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

#[inline]
pub fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_forms() {
        assert_eq!(Reader::new(&[0x96, 0x01]).read_varint().unwrap(), 150);
        // Padded (non-minimal) varints are accepted.
        assert_eq!(Reader::new(&[0x81, 0x80, 0x80, 0x00]).read_varint().unwrap(), 1);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).read_varint().unwrap(), u64::MAX);
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(Reader::new(&overflow).read_varint().unwrap_err().reason, Reason::VarintTooLong);
        let eleven = [0x80; 11];
        assert_eq!(Reader::new(&eleven).read_varint().unwrap_err().reason, Reason::VarintTooLong);
        assert_eq!(Reader::new(&[0x80, 0x80]).read_varint().unwrap_err().reason, Reason::Truncated);
    }

    #[test]
    fn tags_are_checked() {
        assert_eq!(Reader::new(&[0x00]).read_tag().unwrap_err().reason, Reason::FieldNumberZero);
        assert_eq!(Reader::new(&[0x0e]).read_tag().unwrap_err().reason, Reason::InvalidWireType);
        assert_eq!(Reader::new(&[0x08]).read_tag().unwrap(), (1, VARINT));
    }

    #[test]
    fn groups_are_skipped_with_their_nesting() {
        // field 1 start-group, field 2 start-group, field 2 end-group, field 1 end-group, then a varint
        let bytes = [0x0b, 0x13, 0x14, 0x0c, 0x08, 0x05];
        let mut r = Reader::new(&bytes);
        let (n, wt) = r.read_tag().unwrap();
        r.skip(n, wt).unwrap();
        assert_eq!(r.read_tag().unwrap(), (1, VARINT));
        let unterminated = [0x0b, 0x08, 0x01];
        let mut r = Reader::new(&unterminated);
        let (n, wt) = r.read_tag().unwrap();
        assert_eq!(r.skip(n, wt).unwrap_err().reason, Reason::UnterminatedGroup);
        let mismatched = [0x0b, 0x14];
        let mut r = Reader::new(&mismatched);
        let (n, wt) = r.read_tag().unwrap();
        assert_eq!(r.skip(n, wt).unwrap_err().reason, Reason::UnexpectedEndGroup);
    }

    #[test]
    fn zigzag() {
        assert_eq!(zigzag32(1), -1);
        assert_eq!(zigzag32(4294967295), i32::MIN);
        assert_eq!(zigzag64(2), 1);
    }
}
