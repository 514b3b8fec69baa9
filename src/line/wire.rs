//! Line-protocol wire forms shared by every program that speaks it: the
//! server, `switchboard::client`, the load tools and the fuzz targets.
//!
//! Owns the rules both directions must agree on, as pure functions: what a
//! field separator is, what a number looks like, how a content type is
//! written as one field, and what a header line the server sends means
//! ([`parse_header`]: `> LEN TIMEOUT TO [REPLY]`, `! LEN CHANNEL TYPE`, `*`,
//! `- reason`). It must not touch IO or the broker; bodies are the caller's
//! to read.

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::broker::frames::{decimal_len, put_decimal};

// The content-type rule lives with the line framing of channel messages
// (the broker builds those frames once per message); the parser uses it.
pub use crate::broker::frames::{is_space, type_field, DEFAULT_CONTENT_TYPE};

/// A decimal number of at most 19 digits; no sign, no spaces.
pub fn number(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 19 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(field.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What one header line from the server announces. Fields borrow the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header<'a> {
    /// `> LEN TIMEOUT TO [REPLY]`, followed by a body when LEN > 0.
    Message {
        len: u64,
        timeout_s: u64,
        to: &'a [u8],
        reply: Option<&'a [u8]>,
    },
    /// `! LEN CHANNEL TYPE`, followed by a body when LEN > 0. A line without
    /// TYPE means [`DEFAULT_CONTENT_TYPE`] (the server always writes it).
    Publication {
        len: u64,
        channel: &'a [u8],
        content_type: &'a [u8],
    },
    /// `*`: a `<` or `?` wait ran out.
    Timeout,
    /// `- reason`: the server refused something and is closing. The reason
    /// is trimmed and may be empty.
    Error { reason: &'a [u8] },
}

/// Why a header line could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not one of the four header forms (blank lines included).
    Unknown,
    /// LEN is not a decimal number of at most 19 digits.
    BadLength,
    /// TIMEOUT is not a decimal number of at most 19 digits.
    BadTimeout,
}

impl HeaderError {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderError::Unknown => "unknown frame",
            HeaderError::BadLength => "bad body length",
            HeaderError::BadTimeout => "bad timeout",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HeaderError {}

/// Most fields of a header line (`> LEN TIMEOUT TO REPLY`); one more field
/// is kept only to see that there are too many.
const MAX_HEADER_FIELDS: usize = 5;

/// Appends the command line of a queue message the server sends,
/// `> LEN TIMEOUT TO [REPLY]\r\n`; its body (when LEN is not 0) and a CRLF
/// follow it.
pub fn message_head(
    out: &mut BytesMut,
    to: &[u8],
    reply: Option<&[u8]>,
    timeout_s: u64,
    len: usize,
) {
    out.reserve(message_head_len(to, reply, timeout_s, len));
    out.put_slice(b"> ");
    put_decimal(out, len as u64);
    out.put_u8(b' ');
    put_decimal(out, timeout_s);
    out.put_u8(b' ');
    out.put_slice(to);
    if let Some(r) = reply {
        out.put_u8(b' ');
        out.put_slice(r);
    }
    out.put_slice(b"\r\n");
}

/// The exact length of what [`message_head`] writes, so that a frame can
/// be allocated at its size (a frozen buffer with room to spare costs a
/// second allocation).
pub fn message_head_len(to: &[u8], reply: Option<&[u8]>, timeout_s: u64, len: usize) -> usize {
    // `> ` LEN ` ` TIMEOUT ` ` TO [` ` REPLY] CRLF
    2 + decimal_len(len as u64)
        + 1
        + decimal_len(timeout_s)
        + 1
        + to.len()
        + reply.map_or(0, |r| 1 + r.len())
        + 2
}

/// Reads one header line the server sent, with or without its line end.
/// Fields are separated by runs of [`is_space`]; a frame with a field too
/// many (a TYPE holding a space, say) is [`HeaderError::Unknown`].
pub fn parse_header(line: &[u8]) -> Result<Header<'_>, HeaderError> {
    if let Some((b'-', reason)) = line.split_first() {
        return Ok(Header::Error {
            reason: trim(reason),
        });
    }
    let mut fields = [&[] as &[u8]; MAX_HEADER_FIELDS + 1];
    let mut n = 0;
    for field in line.split(|&b| is_space(b)).filter(|f| !f.is_empty()) {
        match fields.get_mut(n) {
            Some(slot) => *slot = field,
            None => return Err(HeaderError::Unknown),
        }
        n += 1;
    }
    let length = |f: &[u8]| number(f).ok_or(HeaderError::BadLength);
    let timeout = |f: &[u8]| number(f).ok_or(HeaderError::BadTimeout);
    match fields.get(..n).unwrap_or_default() {
        [b"*"] => Ok(Header::Timeout),
        [b">", len, t, to] => Ok(Header::Message {
            len: length(len)?,
            timeout_s: timeout(t)?,
            to,
            reply: None,
        }),
        [b">", len, t, to, reply] => Ok(Header::Message {
            len: length(len)?,
            timeout_s: timeout(t)?,
            to,
            reply: Some(reply),
        }),
        [b"!", len, channel] => Ok(Header::Publication {
            len: length(len)?,
            channel,
            content_type: DEFAULT_CONTENT_TYPE,
        }),
        [b"!", len, channel, content_type] => Ok(Header::Publication {
            len: length(len)?,
            channel,
            content_type,
        }),
        _ => Err(HeaderError::Unknown),
    }
}

/// `s` without leading and trailing [`is_space`] bytes.
fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn type_field_has_no_whitespace() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"text/plain", b"text/plain"),
            (b"text/plain; charset=utf-8", b"text/plain;charset=utf-8"),
            (
                b" text/plain ;\tcharset = utf-8 ",
                b"text/plain;charset=utf-8",
            ),
            (b"", DEFAULT_CONTENT_TYPE),
            (b" \t ", DEFAULT_CONTENT_TYPE),
            (b"a\r\nb\x0cc", b"abc"),
            // Not whitespace on the line either: kept as they are.
            (b"x\x0by\xc3\xa9", b"x\x0by\xc3\xa9"),
        ];
        for &(input, want) in cases {
            assert_eq!(&type_field(input)[..], want, "{input:?}");
        }
    }

    #[test]
    fn type_field_copies_only_when_it_must() {
        assert!(matches!(type_field(b"text/plain"), Cow::Borrowed(_)));
        assert!(matches!(type_field(b""), Cow::Borrowed(_)));
        assert!(matches!(type_field(b"a; b"), Cow::Owned(_)));
    }

    #[test]
    fn message_head_len_is_what_message_head_writes() {
        for len in [0usize, 1, 9, 10, 99, 100, 65_535, 1 << 40] {
            for timeout in [0u64, 5, 10, 180, u64::MAX] {
                for reply in [None, Some(&b"r.1A"[..])] {
                    let mut out = BytesMut::new();
                    message_head(&mut out, b"jobs", reply, timeout, len);
                    let want = message_head_len(b"jobs", reply, timeout, len);
                    assert_eq!(out.len(), want, "{len} {timeout} {reply:?}");
                }
            }
        }
        let mut out = BytesMut::new();
        message_head(&mut out, b"jobs", Some(b"r.1A"), 180, 12);
        assert_eq!(&out[..], b"> 12 180 jobs r.1A\r\n");
    }

    fn publication<'a>(len: u64, channel: &'a [u8], content_type: &'a [u8]) -> Header<'a> {
        Header::Publication {
            len,
            channel,
            content_type,
        }
    }

    #[test]
    fn headers() {
        let ok: &[(&[u8], Header)] = &[
            (
                b"> 5 30 jobs",
                Header::Message {
                    len: 5,
                    timeout_s: 30,
                    to: b"jobs",
                    reply: None,
                },
            ),
            (
                b"> 0 7 a r.1\r\n",
                Header::Message {
                    len: 0,
                    timeout_s: 7,
                    to: b"a",
                    reply: Some(b"r.1"),
                },
            ),
            (
                b"! 3 news text/plain\r\n",
                publication(3, b"news", b"text/plain"),
            ),
            (
                b"!  3\tnews  text/plain \n",
                publication(3, b"news", b"text/plain"),
            ),
            (b"! 3 news", publication(3, b"news", DEFAULT_CONTENT_TYPE)),
            (
                b"! 3 foo text/plain;charset=utf-8",
                publication(3, b"foo", b"text/plain;charset=utf-8"),
            ),
            (b"*", Header::Timeout),
            (b"*\r\n", Header::Timeout),
            (
                b"- invalid timeout format\r\n",
                Header::Error {
                    reason: b"invalid timeout format",
                },
            ),
            (b"-", Header::Error { reason: b"" }),
            (b"-oops", Header::Error { reason: b"oops" }),
        ];
        for (line, want) in ok {
            assert_eq!(parse_header(line), Ok(*want), "{line:?}");
        }
    }

    #[test]
    fn bad_headers() {
        let bad: &[(&[u8], HeaderError)] = &[
            (b"", HeaderError::Unknown),
            (b"\r\n", HeaderError::Unknown),
            (b"hello", HeaderError::Unknown),
            (b"> x 1 a", HeaderError::BadLength),
            (b"> 1 -1 a", HeaderError::BadTimeout),
            (b"> +1 1 a", HeaderError::BadLength),
            (b"> 99999999999999999999 1 a", HeaderError::BadLength),
            (b"> 1 1", HeaderError::Unknown),
            (b"> 1 1 a b c", HeaderError::Unknown),
            (b"> 1 1 a b c d e f", HeaderError::Unknown),
            (b"! 1", HeaderError::Unknown),
            (b"! x c t", HeaderError::BadLength),
            // Five fields: the whitespace rule was broken.
            (b"! 3 foo text/plain; charset=utf-8", HeaderError::Unknown),
            (b"* *", HeaderError::Unknown),
            (b"\xff", HeaderError::Unknown),
        ];
        for &(line, want) in bad {
            assert_eq!(parse_header(line), Err(want), "{line:?}");
        }
        assert_eq!(HeaderError::Unknown.to_string(), "unknown frame");
    }

    mod props {
        use super::*;
        use crate::broker::frames::{line_publication, Publication};
        use crate::line::wire::message_head;
        use bytes::BytesMut;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                any::<u8>().prop_filter("no space", |&b| !is_space(b)),
                1..16,
            )
        }

        /// The header line of `frame`, with its line end.
        fn head(frame: &[u8]) -> &[u8] {
            let end = memchr::memchr(b'\n', frame).map_or(frame.len(), |i| i + 1);
            &frame[..end]
        }

        proptest! {
            /// Whatever the content type, the server's `!` frame reads back
            /// as the channel, the type as [`type_field`] writes it, and the
            /// length.
            #[test]
            fn publications_read_back(
                channel in field(),
                content_type in proptest::collection::vec(any::<u8>(), 0..24),
                body in proptest::collection::vec(any::<u8>(), 0..8),
            ) {
                // Line ends cannot reach a frame: no door accepts them in a type.
                let content_type: Vec<u8> = content_type
                    .into_iter()
                    .filter(|&b| b != b'\r' && b != b'\n')
                    .collect();
                let mut out = BytesMut::new();
                line_publication(&mut out, &Publication {
                    channel: &channel,
                    content_type: &content_type,
                    sender: None,
                    body: &body,
                    id: 0,
                });
                let written = type_field(&content_type);
                prop_assert_eq!(
                    parse_header(head(&out)),
                    Ok(publication(body.len() as u64, &channel, &written))
                );
            }

            #[test]
            fn messages_read_back(
                to in field(),
                reply in proptest::option::of(field()),
                timeout_s in any::<u64>(),
                len in 0usize..1 << 40,
            ) {
                let mut out = BytesMut::new();
                message_head(&mut out, &to, reply.as_deref(), timeout_s, len);
                let want = if timeout_s > 9_999_999_999_999_999_999 {
                    Err(HeaderError::BadTimeout)
                } else {
                    Ok(Header::Message {
                        len: len as u64,
                        timeout_s,
                        to: &to,
                        reply: reply.as_deref(),
                    })
                };
                prop_assert_eq!(parse_header(&out), want);
            }

            #[test]
            fn garbage_never_panics(line in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(Header::Publication { channel, content_type, .. }) = parse_header(&line) {
                    prop_assert!(!channel.is_empty() && !channel.iter().any(|&b| is_space(b)));
                    prop_assert!(!content_type.is_empty());
                    prop_assert!(!content_type.iter().any(|&b| is_space(b)));
                }
            }
        }
    }
}
