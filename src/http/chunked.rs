//! The chunked transfer coding (RFC 9112 §7.1), decoded as bytes arrive.
//!
//! Owns: chunk size lines, chunk extensions (skipped), chunk data, the
//! trailer section (checked and dropped) and the size limits on all of them.
//! It serves both directions: the request decoder (`codec.rs`) runs it on
//! request bodies, and a client of another server can run it on a response
//! body once it has read that response's head.
//!
//! Must not touch: sockets, heads, status codes (a request decoder maps
//! [`ChunkError`] to its own errors), or anything after the trailer section,
//! which belongs to the next message on the connection.
//!
//! Bare LF is accepted wherever CRLF is expected, as in a head.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions, line ending) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why a chunked body could not be decoded. The stream cannot go on after
/// it: what follows the error is not known to be a message boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The bytes are not the chunked coding (the detail says where).
    Malformed(&'static str),
    /// The chunk data add up to more than the body limit.
    BodyTooLarge,
    /// The trailer section is longer than its limit.
    TrailersTooLarge,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Malformed(detail) => write!(f, "malformed chunked body: {detail}"),
            ChunkError::BodyTooLarge => f.write_str("chunked body larger than the limit"),
            ChunkError::TrailersTooLarge => f.write_str("trailer section larger than the limit"),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Where the decoder is in the coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the hex digits of a chunk size (`digits` read so far).
    Size {
        digits: usize,
    },
    /// After the size: whitespace before `;` or the line end.
    SizeSpace,
    /// In chunk extensions, up to the line end.
    Extension,
    /// Saw CR at the end of a size line.
    SizeCr,
    /// In chunk data.
    Data {
        remaining: u64,
    },
    /// After chunk data, expecting CRLF (`cr`: the CR was seen).
    DataEnd {
        cr: bool,
    },
    /// In the trailer section. `empty`: nothing but maybe a CR on this line.
    Trailer {
        empty: bool,
        cr: bool,
    },
    Done,
}

/// Incremental decoder of one chunked body; it keeps the decoded data until
/// the body is complete.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
    /// Size of the chunk whose size line is being read.
    size: u64,
    /// Bytes of the current size line.
    line_len: usize,
    /// Sum of chunk sizes so far.
    total: u64,
    /// Bytes of trailer section so far.
    trailer_len: usize,
    max_body: usize,
    max_trailers: usize,
    body: BytesMut,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `max_body` bytes of data, followed by
    /// a trailer section of at most `max_trailers` bytes.
    pub fn new(max_body: usize, max_trailers: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: Chunk::Size { digits: 0 },
            size: 0,
            line_len: 0,
            total: 0,
            trailer_len: 0,
            max_body,
            max_trailers,
            body: BytesMut::new(),
        }
    }

    /// True once the last chunk and the trailer section have been decoded.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Decodes from the front of `buf`, consuming every byte it decodes.
    /// Returns the whole body once the last chunk and its trailer section are
    /// in; the bytes after them stay in `buf`. `Ok(None)`: more bytes are
    /// needed. Once the body has been returned the decoder is spent: later
    /// calls consume nothing and return an empty body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        if self.is_done() {
            return Ok(Some(Bytes::new()));
        }
        let used = self.feed(buf)?;
        buf.advance(used.min(buf.len()));
        if self.is_done() {
            return Ok(Some(std::mem::take(&mut self.body).freeze()));
        }
        Ok(None)
    }

    /// Decodes from `input`, keeping chunk data. Returns how many bytes of
    /// `input` were used; stops right after the trailer section.
    fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut used = 0;
        while used < input.len() {
            if let Chunk::Data { remaining } = self.state {
                let avail = input.len() - used;
                let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                self.body
                    .extend_from_slice(input.get(used..used + take).unwrap_or_default());
                used += take;
                let remaining = remaining.saturating_sub(take as u64);
                self.state = if remaining == 0 {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data { remaining }
                };
                continue;
            }
            let Some(&b) = input.get(used) else { break };
            used += 1;
            self.byte(b)?;
            if self.state == Chunk::Done {
                break;
            }
        }
        Ok(used)
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        const BAD_SIZE: ChunkError = ChunkError::Malformed("invalid chunk size line");
        if matches!(
            self.state,
            Chunk::Size { .. } | Chunk::SizeSpace | Chunk::Extension | Chunk::SizeCr
        ) {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkError::Malformed("chunk size line too long"));
            }
        }
        self.state = match self.state {
            Chunk::Size { digits } => {
                if let Some(d) = hex_value(b) {
                    let room = (self.max_body as u64).saturating_sub(self.total);
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .filter(|&s| s <= room)
                        .ok_or(ChunkError::BodyTooLarge)?;
                    Chunk::Size { digits: digits + 1 }
                } else if digits == 0 {
                    return Err(BAD_SIZE);
                } else {
                    self.after_size(b)?
                }
            }
            Chunk::SizeSpace => self.after_size(b)?,
            Chunk::Extension => match b {
                b'\r' => Chunk::SizeCr,
                b'\n' => self.size_line_done(),
                _ => Chunk::Extension,
            },
            Chunk::SizeCr => match b {
                b'\n' => self.size_line_done(),
                _ => return Err(BAD_SIZE),
            },
            Chunk::DataEnd { cr } => match b {
                b'\n' => self.next_size_line(),
                b'\r' if !cr => Chunk::DataEnd { cr: true },
                _ => return Err(ChunkError::Malformed("chunk data not followed by CRLF")),
            },
            Chunk::Trailer { empty, cr } => {
                self.trailer_len += 1;
                if self.trailer_len > self.max_trailers {
                    return Err(ChunkError::TrailersTooLarge);
                }
                match b {
                    b'\n' if empty => Chunk::Done,
                    b'\n' => Chunk::Trailer {
                        empty: true,
                        cr: false,
                    },
                    _ if cr => return Err(ChunkError::Malformed("stray CR in trailer section")),
                    b'\r' => Chunk::Trailer { empty, cr: true },
                    _ => Chunk::Trailer {
                        empty: false,
                        cr: false,
                    },
                }
            }
            // Data is handled in bulk by `feed`; Done takes no more bytes.
            state @ (Chunk::Data { .. } | Chunk::Done) => state,
        };
        Ok(())
    }

    /// The byte after a chunk size's digits (or after whitespace there).
    fn after_size(&mut self, b: u8) -> Result<Chunk, ChunkError> {
        match b {
            b' ' | b'\t' => Ok(Chunk::SizeSpace),
            b';' => Ok(Chunk::Extension),
            b'\r' => Ok(Chunk::SizeCr),
            b'\n' => Ok(self.size_line_done()),
            _ => Err(ChunkError::Malformed("invalid chunk size line")),
        }
    }

    fn size_line_done(&mut self) -> Chunk {
        let size = self.size;
        self.total = self.total.saturating_add(size);
        if size == 0 {
            Chunk::Trailer {
                empty: true,
                cr: false,
            }
        } else {
            Chunk::Data { remaining: size }
        }
    }

    fn next_size_line(&mut self) -> Chunk {
        self.size = 0;
        self.line_len = 0;
        Chunk::Size { digits: 0 }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after another; returns the body (or the error)
    /// and the bytes left after it.
    fn run(pieces: &[&[u8]]) -> (Result<Option<Bytes>, ChunkError>, Vec<u8>) {
        let mut d = ChunkedDecoder::new(1 << 20, 1024);
        let mut buf = BytesMut::new();
        let mut last = Ok(None);
        for piece in pieces {
            buf.extend_from_slice(piece);
            // Once the body is out, later bytes are the next message's.
            if matches!(last, Ok(None)) {
                last = d.decode(&mut buf);
            }
        }
        (last, buf.to_vec())
    }

    /// What a server sends back: a head (read by the caller), then a chunked
    /// body, then the next response on the same connection.
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        4\r\nWiki\r\n6;lang=en\r\npedia \r\nD\r\nin\r\n\r\nchunks.\r\n0\r\nX-Checksum: 1\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n";

    #[test]
    fn decodes_a_chunked_response_body_however_it_arrives() {
        let head_end = RESPONSE.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &RESPONSE[head_end..];
        let want: &[u8] = b"Wikipedia in\r\n\r\nchunks.";
        let next: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

        let (got, left) = run(&[body]);
        assert_eq!(got.unwrap().as_deref(), Some(want));
        assert_eq!(left, next);

        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let (got, _) = run(&bytes);
        assert_eq!(got.unwrap().as_deref(), Some(want));

        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            let (got, left) = run(&[a, b]);
            assert_eq!(got.unwrap().as_deref(), Some(want), "split at {at}");
            assert_eq!(left, next, "split at {at}");
        }
    }

    #[test]
    fn partial_body_waits_and_spent_decoder_takes_nothing() {
        let mut d = ChunkedDecoder::new(100, 100);
        let mut buf = BytesMut::from(&b"3\r\nab"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.is_empty(), "decoded bytes are consumed");
        buf.extend_from_slice(b"c\n0\n\nrest");
        assert_eq!(d.decode(&mut buf), Ok(Some(Bytes::from_static(b"abc"))));
        assert!(d.is_done());
        assert_eq!(d.decode(&mut buf), Ok(Some(Bytes::new())));
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn limits_are_inclusive_and_a_cr_in_an_extension_must_end_the_line() {
        let decode = |input: &[u8]| {
            let mut d = ChunkedDecoder::new(100, 16);
            d.decode(&mut BytesMut::from(input))
        };
        // A size line of exactly MAX_CHUNK_LINE bytes, CRLF included, is
        // taken; one byte more is not.
        let line = |len: usize| {
            let mut l = b"1;".to_vec();
            l.resize(len - 2, b'x');
            l.extend_from_slice(b"\r\n");
            [l, b"a\r\n0\r\n\r\n".to_vec()].concat()
        };
        assert_eq!(
            decode(&line(MAX_CHUNK_LINE)),
            Ok(Some(Bytes::from_static(b"a")))
        );
        assert_eq!(
            decode(&line(MAX_CHUNK_LINE + 1)),
            Err(ChunkError::Malformed("chunk size line too long"))
        );
        // Trailers of exactly the limit (16 bytes with the final CRLF),
        // and one byte more.
        assert_eq!(decode(b"0\r\nX-Trailer: 1\r\n\r\n"), Ok(Some(Bytes::new())));
        assert_eq!(
            decode(b"0\r\nX-Trailer: 12\r\n\r\n"),
            Err(ChunkError::TrailersTooLarge)
        );
        // A CR inside an extension ends the size line: anything but LF
        // after it is refused.
        assert_eq!(
            decode(b"1;a\rb\r\nx\r\n0\r\n\r\n"),
            Err(ChunkError::Malformed("invalid chunk size line"))
        );
    }

    #[test]
    fn errors_and_limits() {
        let err = |max_body: usize, input: &[u8]| {
            let mut d = ChunkedDecoder::new(max_body, 16);
            d.decode(&mut BytesMut::from(input))
        };
        assert_eq!(
            err(100, b"zz\r\n"),
            Err(ChunkError::Malformed("invalid chunk size line"))
        );
        assert_eq!(
            err(100, b"3\r\nabcd"),
            Err(ChunkError::Malformed("chunk data not followed by CRLF"))
        );
        assert_eq!(err(4, b"5\r\n"), Err(ChunkError::BodyTooLarge));
        assert_eq!(err(8, b"4\r\nabcd\r\n5\r\n"), Err(ChunkError::BodyTooLarge));
        assert_eq!(
            err(100, b"0\r\nX-Long-Trailer: 0123456789\r\n\r\n"),
            Err(ChunkError::TrailersTooLarge)
        );
        let long = [&b"1;"[..], &[b'x'; MAX_CHUNK_LINE]].concat();
        assert_eq!(
            err(100, &long),
            Err(ChunkError::Malformed("chunk size line too long"))
        );
        assert_eq!(
            ChunkError::BodyTooLarge.to_string(),
            "chunked body larger than the limit"
        );
    }
}
