//! The message body flood-pub sends and flood-sub checks.
//!
//! A body starts with a fixed 45-byte ASCII header and is padded (or followed
//! by the contents of `-f FILE`):
//!
//! ```text
//! TTTTTTTTTTTTTTTTTTTT PPPPPPPPPPPP SSSSSSSSSS <padding or file>
//! ```
//!
//! `T` is the send time (`CLOCK_MONOTONIC` ns, 20 decimal digits), `P` the
//! publisher id (12 hex digits: one per publisher connection, unique across
//! processes), `S` the sequence number on that publisher (10 decimal digits,
//! from 0). Each field is followed by one space. This module owns the layout;
//! it knows nothing about sockets or protocols.

/// Length of the stamp header, and the smallest allowed `--size`.
pub const HEADER_LEN: usize = 45;

const TS_END: usize = 20;
const PUB_START: usize = 21;
const PUB_END: usize = 33;
const SEQ_START: usize = 34;
const SEQ_END: usize = 44;

/// What a subscriber reads back out of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub publisher: u64,
    pub seq: u64,
}

/// Largest sequence number that fits the 10-digit field.
pub const MAX_SEQ: u64 = 9_999_999_999;
/// Largest publisher id that fits the 12-hex-digit field.
pub const MAX_PUBLISHER: u64 = 0xffff_ffff_ffff;

/// A body template: the stamp header is rewritten in place for every message,
/// the rest (padding or file contents) is built once.
#[derive(Debug, Clone)]
pub struct Body {
    bytes: Vec<u8>,
}

impl Body {
    /// A body of exactly `size` bytes (`size >= HEADER_LEN`), padded with `x`.
    pub fn padded(size: usize) -> Body {
        let mut bytes = vec![b'x'; size.max(HEADER_LEN)];
        if let Some(sep) = bytes.get_mut(HEADER_LEN - 1) {
            *sep = b' ';
        }
        Body { bytes }
    }

    /// The stamp header followed by `content` (the `-f FILE` form).
    pub fn with_content(content: &[u8]) -> Body {
        let mut bytes = vec![b' '; HEADER_LEN];
        bytes.extend_from_slice(content);
        Body { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the header for one message and returns the whole body.
    pub fn stamp(&mut self, stamp: Stamp) -> &[u8] {
        if let Some(head) = self.bytes.get_mut(..HEADER_LEN) {
            write_decimal(&mut head[..TS_END], stamp.sent_ns);
            head[TS_END] = b' ';
            write_hex(&mut head[PUB_START..PUB_END], stamp.publisher);
            head[PUB_END] = b' ';
            write_decimal(&mut head[SEQ_START..SEQ_END], stamp.seq);
            head[SEQ_END] = b' ';
        }
        &self.bytes
    }
}

fn write_decimal(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn write_hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Eight ASCII digits to their value, all at once (SWAR): this runs twice
/// for every delivery, so it avoids a 20-step dependency chain.
fn eight_digits(chunk: [u8; 8]) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    let d = u64::from_le_bytes(chunk).wrapping_sub(ZEROS);
    // Each byte must be 0..=9: no high nibble, and none after adding 6.
    if (d & HIGH) | (d.wrapping_add(0x0606_0606_0606_0606) & HIGH) != 0 {
        return None;
    }
    // The first digit is the lowest byte: combine pairs, quads, then halves.
    let d = (d.wrapping_mul(10) + (d >> 8)) & 0x00ff_00ff_00ff_00ff;
    let d = (d.wrapping_mul(100) + (d >> 16)) & 0x0000_ffff_0000_ffff;
    Some((d.wrapping_mul(10_000) + (d >> 32)) & 0xffff_ffff)
}

/// Decimal digits to a number; `None` if any byte is not a digit. A value
/// above `u64::MAX` wraps (flood-pub never writes one).
fn read_decimal(field: &[u8]) -> Option<u64> {
    let head = field.len() % 8;
    let mut v: u64 = 0;
    for &b in &field[..head] {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
    }
    for chunk in field[head..].chunks_exact(8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        v = v
            .wrapping_mul(100_000_000)
            .wrapping_add(eight_digits(eight)?);
    }
    Some(v)
}

fn read_hex(field: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut bad = false;
    for &b in field {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                bad = true;
                0
            }
        };
        v = (v << 4) | u64::from(d);
    }
    (!bad).then_some(v)
}

/// Reads the stamp from the first bytes of a body; `None` if the body was not
/// written by flood-pub (or was damaged on the way).
pub fn parse(body: &[u8]) -> Option<Stamp> {
    let head = body.get(..HEADER_LEN)?;
    if head[TS_END] != b' ' || head[PUB_END] != b' ' || head[SEQ_END] != b' ' {
        return None;
    }
    Some(Stamp {
        sent_ns: read_decimal(&head[..TS_END])?,
        publisher: read_hex(&head[PUB_START..PUB_END])?,
        seq: read_decimal(&head[SEQ_START..SEQ_END])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut body = Body::padded(64);
        let s = Stamp {
            sent_ns: 123_456_789_012,
            publisher: 0xabc_0001,
            seq: 42,
        };
        let bytes = body.stamp(s).to_vec();
        assert_eq!(bytes.len(), 64);
        assert_eq!(
            &bytes[..HEADER_LEN],
            b"00000000123456789012 00000abc0001 0000000042 "
        );
        assert!(bytes[HEADER_LEN..].iter().all(|&b| b == b'x'));
        assert_eq!(parse(&bytes), Some(s));
    }

    #[test]
    fn extremes() {
        let mut body = Body::padded(HEADER_LEN);
        let s = Stamp {
            sent_ns: u64::MAX,
            publisher: MAX_PUBLISHER,
            seq: MAX_SEQ,
        };
        assert_eq!(parse(body.stamp(s)), Some(s));
    }

    #[test]
    fn file_content_follows_header() {
        let mut body = Body::with_content(b"<h1>hi</h1>");
        let s = Stamp {
            sent_ns: 1,
            publisher: 2,
            seq: 3,
        };
        let bytes = body.stamp(s).to_vec();
        assert!(bytes.ends_with(b"<h1>hi</h1>"));
        assert_eq!(parse(&bytes), Some(s));
    }

    #[test]
    fn decimal_fields() {
        for v in [
            0u64,
            7,
            12_345_678,
            99_999_999,
            100_000_000,
            1_234_567_890_123,
            u64::MAX,
        ] {
            let text = format!("{v:020}");
            assert_eq!(read_decimal(text.as_bytes()), Some(v), "{text}");
            let short = format!("{:010}", v % 10_000_000_000);
            assert_eq!(read_decimal(short.as_bytes()), Some(v % 10_000_000_000));
        }
        for bad in [
            &b"0000000/"[..],
            b"000000:0",
            b"12a45678",
            b"1234567 ",
            b"x",
            b"00000000000000000 01",
        ] {
            assert_eq!(
                read_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Every non-digit byte in every position of an 8-digit chunk.
        for pos in 0..8 {
            for b in 0..=255u8 {
                let mut field = *b"12345678";
                field[pos] = b;
                let want = b
                    .is_ascii_digit()
                    .then(|| std::str::from_utf8(&field).unwrap().parse::<u64>().unwrap());
                assert_eq!(read_decimal(&field), want, "pos {pos} byte {b}");
            }
        }
    }

    #[test]
    fn rejects_foreign_bodies() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(&[b'a'; 64]), None);
        let mut good = Body::padded(50)
            .stamp(Stamp {
                sent_ns: 1,
                publisher: 1,
                seq: 1,
            })
            .to_vec();
        good[3] = b'z';
        assert_eq!(parse(&good), None);
    }
}
