//! Varint length-delimited files: the framing of protobuf-java's `writeDelimitedTo` (and
//! `parseDelimitedFrom`), C++ `SerializeDelimitedToOstream`, Go `protodelim`: each record is a
//! varint byte length followed by that many bytes. A zero-length frame is a legal empty message.
//!
//! Records are handed out as slices of the read buffer when they fit in it (no copy), so a
//! reader streams files of any size in bounded memory. A record longer than `max_record_bytes`
//! is skipped without being held in memory and reported as [`Frame::Oversized`]; a file cut
//! inside a frame ends with [`Frame::Truncated`].

use std::io::{self, BufRead, Read};

/// One frame of a delimited file.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Record(&'a [u8]),
    /// The length prefix announced more than the allowed record size; the bytes were skipped.
    Oversized {
        len: u64,
    },
    /// The file ends inside this frame (its length prefix or its body); these are the bytes
    /// that were there. Nothing follows.
    Truncated {
        expected: Option<u64>,
        partial: Vec<u8>,
    },
}

pub struct DelimitedReader<R> {
    reader: R,
    max_record_bytes: usize,
    /// Bytes of the buffer handed out by the last `next` and not yet consumed.
    pending: usize,
    /// Used when a record straddles the read buffer's end.
    scratch: Vec<u8>,
    next_index: u64,
    bytes_read: u64,
    done: bool,
}

impl<R: BufRead> DelimitedReader<R> {
    pub fn new(reader: R, max_record_bytes: usize) -> Self {
        DelimitedReader {
            reader,
            max_record_bytes,
            pending: 0,
            scratch: Vec::new(),
            next_index: 0,
            bytes_read: 0,
            done: false,
        }
    }

    /// Bytes consumed from the underlying reader so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read + self.pending as u64
    }

    /// The next frame and its 0-based index, or None at the end of the input.
    #[inline]
    pub fn next_frame(&mut self) -> io::Result<Option<(u64, Frame<'_>)>> {
        if self.pending > 0 {
            self.reader.consume(self.pending);
            self.bytes_read += self.pending as u64;
            self.pending = 0;
        }
        // Usual case, kept small enough to inline into the caller's loop: the length prefix and
        // the whole record are in the buffer.
        if !self.done {
            let buf = self.reader.fill_buf()?;
            if let Some((len, start)) = whole_prefix(buf) {
                if len <= self.max_record_bytes as u64 && (len as usize) <= buf.len() - start {
                    let len = len as usize;
                    self.reader.consume(start);
                    self.bytes_read += start as u64;
                    self.pending = len;
                    let index = self.next_index;
                    self.next_index += 1;
                    let buf = self.reader.fill_buf()?;
                    return Ok(Some((index, Frame::Record(&buf[..len]))));
                }
            }
        }
        self.next_frame_slow()
    }

    /// [`next_frame`](Self::next_frame) when the record is not wholly in the buffer, is too
    /// large, or the input ends.
    #[inline(never)]
    fn next_frame_slow(&mut self) -> io::Result<Option<(u64, Frame<'_>)>> {
        if self.done {
            return Ok(None);
        }
        let index = self.next_index;
        let len = match self.read_length()? {
            LengthPrefix::End => {
                self.done = true;
                return Ok(None);
            }
            LengthPrefix::Cut(partial) => {
                self.done = true;
                return Ok(Some((index, Frame::Truncated { expected: None, partial })));
            }
            LengthPrefix::Len(len) => len,
        };
        self.next_index += 1;
        if len > self.max_record_bytes as u64 {
            let skipped = io::copy(&mut (&mut self.reader).take(len), &mut io::sink())?;
            self.bytes_read += skipped;
            if skipped < len {
                self.done = true;
                return Ok(Some((index, Frame::Truncated { expected: Some(len), partial: Vec::new() })));
            }
            return Ok(Some((index, Frame::Oversized { len })));
        }
        let len = len as usize;
        let available = self.reader.fill_buf()?.len();
        if available >= len {
            self.pending = len;
            let buf = self.reader.fill_buf()?;
            return Ok(Some((index, Frame::Record(&buf[..len]))));
        }
        self.scratch.clear();
        let got = (&mut self.reader).take(len as u64).read_to_end(&mut self.scratch)?;
        self.bytes_read += got as u64;
        if got < len {
            self.done = true;
            let partial = std::mem::take(&mut self.scratch);
            return Ok(Some((index, Frame::Truncated { expected: Some(len as u64), partial })));
        }
        Ok(Some((index, Frame::Record(&self.scratch))))
    }

    fn read_length(&mut self) -> io::Result<LengthPrefix> {
        // Usual case: the whole prefix is in the buffer, read in one step.
        let buf = self.reader.fill_buf()?;
        if let Some((value, prefix)) = whole_prefix(buf) {
            self.reader.consume(prefix);
            self.bytes_read += prefix as u64;
            return Ok(LengthPrefix::Len(value));
        }
        // The prefix straddles the buffer's end (or is malformed): byte by byte.
        let mut value: u64 = 0;
        let mut seen = [0u8; 10];
        for shift in 0..10 {
            let buf = self.reader.fill_buf()?;
            let Some(&b) = buf.first() else {
                return Ok(if shift == 0 { LengthPrefix::End } else { LengthPrefix::Cut(seen[..shift].to_vec()) });
            };
            self.reader.consume(1);
            self.bytes_read += 1;
            seen[shift] = b;
            value |= u64::from(b & 0x7f) << (7 * shift);
            if b < 0x80 {
                return Ok(LengthPrefix::Len(value));
            }
        }
        // A length prefix longer than 10 bytes: the file is not delimited protobuf from here on.
        Ok(LengthPrefix::Cut(seen.to_vec()))
    }
}

/// The varint length prefix at the start of `buf` and its size in bytes, when it is wholly there.
/// The length prefix at the start of `buf`: (the record's length, the prefix's bytes), or None
/// when `buf` ends inside it or it runs past 10 bytes.
#[inline]
pub fn length_prefix(buf: &[u8]) -> Option<(u64, usize)> {
    whole_prefix(buf)
}

#[inline]
fn whole_prefix(buf: &[u8]) -> Option<(u64, usize)> {
    // Records under 16 KiB, nearly all of them, have a prefix of one or two bytes: read those
    // directly, since every record of a file passes here (once in a backfill's reader, once in
    // its worker).
    match *buf {
        [b0, ..] if b0 < 0x80 => Some((u64::from(b0), 1)),
        [b0, b1, ..] if b1 < 0x80 => Some((u64::from(b0 & 0x7f) | (u64::from(b1) << 7), 2)),
        _ => long_prefix(buf),
    }
}

/// [`whole_prefix`] of three bytes or more (or none).
#[inline(never)]
fn long_prefix(buf: &[u8]) -> Option<(u64, usize)> {
    let end = buf.iter().take(10).position(|b| *b < 0x80)?;
    let value = buf[..=end].iter().rev().fold(0u64, |v, b| (v << 7) | u64::from(b & 0x7f));
    Some((value, end + 1))
}

enum LengthPrefix {
    End,
    Cut(Vec<u8>),
    Len(u64),
}

/// Writes records in the same framing (for tests, samples and benchmarks).
pub fn write_delimited(out: &mut impl io::Write, record: &[u8]) -> io::Result<()> {
    let (prefix, n) = encode_length(record.len() as u64);
    out.write_all(&prefix[..n])?;
    out.write_all(record)
}

/// The varint length prefix of a `len`-byte record, and how many of its bytes are used.
fn encode_length(mut len: u64) -> ([u8; 10], usize) {
    let mut prefix = [0u8; 10];
    let mut n = 0;
    while len >= 0x80 {
        prefix[n] = (len as u8) | 0x80;
        len >>= 7;
        n += 1;
    }
    prefix[n] = len as u8;
    (prefix, n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], max: usize, buffer: usize) -> Vec<(u64, String)> {
        let mut r = DelimitedReader::new(io::BufReader::with_capacity(buffer, bytes), max);
        let mut out = Vec::new();
        while let Some((i, f)) = r.next_frame().unwrap() {
            out.push((i, format!("{f:?}")));
        }
        out
    }

    #[test]
    fn reads_frames_including_empty_ones_across_buffer_ends() {
        let mut file = Vec::new();
        for rec in [&b"abc"[..], b"", &[7u8; 300][..], b"z"] {
            write_delimited(&mut file, rec).unwrap();
        }
        for buffer in [1, 2, 5, 64, 4096] {
            let f = frames(&file, 1000, buffer);
            assert_eq!(f.len(), 4, "buffer {buffer}");
            assert_eq!(f[0], (0, "Record([97, 98, 99])".into()));
            assert_eq!(f[1], (1, "Record([])".into()));
            assert!(f[2].1.starts_with("Record([7, 7"));
            assert_eq!(f[3], (3, "Record([122])".into()));
        }
    }

    #[test]
    fn oversized_records_are_skipped_and_reported() {
        let mut file = Vec::new();
        write_delimited(&mut file, &[1u8; 50]).unwrap();
        write_delimited(&mut file, b"ok").unwrap();
        let f = frames(&file, 10, 8);
        assert_eq!(f, vec![(0, "Oversized { len: 50 }".into()), (1, "Record([111, 107])".into())]);
    }

    #[test]
    fn a_cut_file_ends_with_a_truncated_frame() {
        let mut file = Vec::new();
        write_delimited(&mut file, b"first").unwrap();
        write_delimited(&mut file, b"second").unwrap();
        file.truncate(file.len() - 2);
        let f = frames(&file, 100, 4);
        assert_eq!(f[1], (1, "Truncated { expected: Some(6), partial: [115, 101, 99, 111] }".into()));
        // Cut inside the length prefix.
        let f = frames(&[0x03, b'a', b'b', b'c', 0x80], 100, 4);
        assert_eq!(f[1], (1, "Truncated { expected: None, partial: [128] }".into()));
    }

    #[test]
    fn a_length_prefix_of_more_than_ten_bytes_ends_the_file() {
        let mut file = vec![0x01, b'x'];
        file.extend([0xff; 12]);
        for buffer in [1, 3, 64] {
            let f = frames(&file, 100, buffer);
            assert_eq!(f.len(), 2, "buffer {buffer}");
            assert_eq!(f[0], (0, "Record([120])".into()));
            assert_eq!(f[1], (1, format!("Truncated {{ expected: None, partial: {:?} }}", [0xffu8; 10])));
        }
    }

    #[test]
    fn length_prefixes_of_every_size_read_back_and_cut_ones_do_not() {
        let lengths = [0u64, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152, 1 << 35, u64::MAX];
        for len in lengths {
            let (bytes, n) = encode_length(len);
            let prefix = &bytes[..n];
            let mut buf = prefix.to_vec();
            buf.extend([0xff, 0x01]); // what follows the prefix does not count
            assert_eq!(length_prefix(&buf), Some((len, prefix.len())), "length {len}");
            for cut in 0..prefix.len() {
                assert_eq!(length_prefix(&prefix[..cut]), None, "length {len} cut after {cut} bytes");
            }
        }
        assert_eq!(length_prefix(&[0x80; 11]), None, "more than ten bytes");
    }
}
