//! RESP2, the Redis serialization protocol, without IO: commands are
//! encoded as arrays of bulk strings, answers decoded from a byte buffer.
//!
//! The decoder is bounded: a bulk string longer than [`Limits::max_bulk`],
//! an array of more than [`Limits::max_array`] elements, arrays nested
//! deeper than [`Limits::max_depth`] or a line (simple string, error,
//! integer, length) longer than [`MAX_LINE`] are errors, never allocations.
//! A frame is first measured (no allocation), then taken off the buffer
//! whole and its strings are slices of that one `Bytes`.

use bytes::{BufMut, Bytes, BytesMut};

/// The longest line: a simple string, an error, an integer or a length.
pub const MAX_LINE: usize = 64 * 1024;

/// One decoded RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`, or `$-1` (`None`).
    Bulk(Option<Bytes>),
    /// `*2\r\n...`, or `*-1` (`None`).
    Array(Option<Vec<Frame>>),
}

impl Frame {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::Simple(b) | Frame::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

/// How large a frame the decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bulk: usize,
    pub max_array: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 64 * 1024 * 1024,
            max_array: 1024,
            max_depth: 4,
        }
    }
}

/// Why input is not RESP2 within the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    /// A type byte that RESP2 does not have.
    Type(u8),
    /// A length or integer that is not a decimal number.
    Number,
    /// A line past [`MAX_LINE`].
    LongLine,
    /// A bulk string past the limit.
    LongBulk(i64),
    /// An array past the limit.
    LongArray(i64),
    /// Arrays nested past the limit.
    Deep,
    /// A bulk string not followed by CRLF.
    NoCrlf,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Type(b) => write!(f, "not RESP2: a frame starts with byte {b:#04x}"),
            RespError::Number => write!(f, "not RESP2: a length or integer is not a number"),
            RespError::LongLine => write!(f, "a line longer than {MAX_LINE} bytes"),
            RespError::LongBulk(n) => write!(f, "a bulk string of {n} bytes is over the limit"),
            RespError::LongArray(n) => write!(f, "an array of {n} elements is over the limit"),
            RespError::Deep => write!(f, "arrays nested too deep"),
            RespError::NoCrlf => write!(f, "a bulk string is not followed by CRLF"),
        }
    }
}

impl std::error::Error for RespError {}

/// Appends one command (an array of bulk strings) to `buf`.
pub fn command(buf: &mut BytesMut, args: &[&[u8]]) {
    header(buf, b'*', args.len());
    for a in args {
        header(buf, b'$', a.len());
        buf.put_slice(a);
        buf.put_slice(b"\r\n");
    }
}

/// Appends one command: `cmd` and then each of `args`.
pub fn command_with(buf: &mut BytesMut, cmd: &[u8], args: &[&[u8]]) {
    header(buf, b'*', args.len() + 1);
    for a in std::iter::once(&cmd).chain(args) {
        header(buf, b'$', a.len());
        buf.put_slice(a);
        buf.put_slice(b"\r\n");
    }
}

/// Appends `*N\r\n` or `$N\r\n`: for a command whose last argument the
/// caller writes in parts.
pub fn header(buf: &mut BytesMut, kind: u8, n: usize) {
    buf.put_u8(kind);
    buf.put_slice(n.to_string().as_bytes());
    buf.put_slice(b"\r\n");
}

/// Decodes one frame off the front of `buf`: `Ok(None)` while it is
/// incomplete (nothing is taken), an error when it cannot be RESP2 within
/// `limits` (the connection must then be closed: the stream has no
/// resynchronisation point).
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, RespError> {
    let Some(len) = measure(buf, 0, 0, limits)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(len).freeze();
    let (frame, used) = build(&bytes, 0);
    debug_assert_eq!(used, len);
    Ok(Some(frame))
}

/// The line starting at `at`, without its CRLF, and where the next begins.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let window = rest.get(..rest.len().min(MAX_LINE + 2)).unwrap_or(rest);
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((rest.get(..i).unwrap_or(&[]), at + i + 2))),
        None if rest.len() > MAX_LINE + 1 => Err(RespError::LongLine),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    let s = std::str::from_utf8(digits).map_err(|_| RespError::Number)?;
    if s.is_empty() || s.starts_with('+') {
        return Err(RespError::Number);
    }
    s.parse::<i64>().map_err(|_| RespError::Number)
}

/// The length of the frame at `at`, when it is complete.
fn measure(
    buf: &[u8],
    at: usize,
    depth: usize,
    limits: &Limits,
) -> Result<Option<usize>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(Some(next - at)),
        b':' => {
            number(text)?;
            Ok(Some(next - at))
        }
        b'$' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some(next - at));
            }
            if n < 0 || n as u64 > limits.max_bulk as u64 {
                return Err(RespError::LongBulk(n));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(RespError::NoCrlf);
            }
            Ok(Some(end + 2 - at))
        }
        b'*' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some(next - at));
            }
            if n < 0 || n as u64 > limits.max_array as u64 {
                return Err(RespError::LongArray(n));
            }
            if n > 0 && depth + 1 > limits.max_depth {
                return Err(RespError::Deep);
            }
            let mut pos = next;
            for _ in 0..n {
                match measure(buf, pos, depth + 1, limits)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos - at))
        }
        other => Err(RespError::Type(other)),
    }
}

/// Builds the frame at `at` of a buffer [`measure`] accepted.
fn build(bytes: &Bytes, at: usize) -> (Frame, usize) {
    let kind = bytes.get(at).copied().unwrap_or(b'+');
    let end = bytes
        .get(at..)
        .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
        .map_or(bytes.len(), |i| at + i);
    let text = bytes.slice(at + 1..end);
    let next = (end + 2).min(bytes.len());
    match kind {
        b'+' => (Frame::Simple(text), next - at),
        b'-' => (Frame::Error(text), next - at),
        b':' => (Frame::Integer(number(&text).unwrap_or(0)), next - at),
        b'$' => {
            let n = number(&text).unwrap_or(-1);
            if n < 0 {
                return (Frame::Bulk(None), next - at);
            }
            let stop = (next + n as usize).min(bytes.len());
            (
                Frame::Bulk(Some(bytes.slice(next..stop))),
                (stop + 2).min(bytes.len()) - at,
            )
        }
        _ => {
            let n = number(&text).unwrap_or(-1);
            if n < 0 {
                return (Frame::Array(None), next - at);
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = next;
            for _ in 0..n {
                let (f, used) = build(bytes, pos);
                items.push(f);
                pos += used;
            }
            (Frame::Array(Some(items)), pos - at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn all(input: &[u8]) -> Result<Vec<Frame>, RespError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = decode(&mut buf, &Limits::default())? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut buf = BytesMut::new();
        command(&mut buf, &[b"PUBLISH", b"ch", b""]);
        assert_eq!(&buf[..], b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_kind_decodes() {
        let frames = all(b"+OK\r\n-ERR no\r\n:-12\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n*0\r\n").unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Simple(b("OK")),
                Frame::Error(b("ERR no")),
                Frame::Integer(-12),
                Frame::Bulk(Some(b("a\r\n"))),
                Frame::Bulk(None),
                Frame::Array(None),
                Frame::Array(Some(vec![])),
            ]
        );
    }

    #[test]
    fn a_pubsub_message_decodes() {
        let input = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        let frames = all(input).unwrap();
        assert_eq!(
            frames,
            vec![Frame::Array(Some(vec![
                Frame::Bulk(Some(b("message"))),
                Frame::Bulk(Some(b("ch"))),
                Frame::Bulk(Some(b("hello"))),
            ]))]
        );
    }

    #[test]
    fn every_split_waits_then_decodes_the_same() {
        let input: &[u8] = b"*2\r\n*1\r\n:7\r\n$4\r\nab\r\n\r\n+PONG\r\n";
        let whole = all(input).unwrap();
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode(&mut buf, &Limits::default()).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&input[cut..]);
            while let Some(f) = decode(&mut buf, &Limits::default()).unwrap() {
                got.push(f);
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn limits_are_errors() {
        let small = Limits {
            max_bulk: 4,
            max_array: 2,
            max_depth: 2,
        };
        let cases: &[(&[u8], RespError)] = &[
            (b"$5\r\n", RespError::LongBulk(5)),
            (b"*3\r\n", RespError::LongArray(3)),
            (b"*1\r\n*1\r\n*1\r\n", RespError::Deep),
            (b"$-2\r\n", RespError::LongBulk(-2)),
            (b"$2\r\nabcd", RespError::NoCrlf),
            (b"%1\r\n", RespError::Type(b'%')),
            (b":x\r\n", RespError::Number),
            (b"$\r\n", RespError::Number),
            (b"$+1\r\n", RespError::Number),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(*input);
            assert_eq!(decode(&mut buf, &small), Err(want.clone()), "{input:?}");
        }
        let mut long = BytesMut::from(&b"+"[..]);
        long.extend_from_slice(&vec![b'a'; MAX_LINE + 10]);
        assert_eq!(
            decode(&mut long, &Limits::default()),
            Err(RespError::LongLine)
        );
        let mut short = BytesMut::from(&b"+"[..]);
        short.extend_from_slice(&vec![b'a'; MAX_LINE - 10]);
        assert_eq!(decode(&mut short, &Limits::default()), Ok(None));
    }

    #[test]
    fn an_array_holds_every_kind() {
        let input = b"*9\r\n+OK\r\n-ERR x\r\n:5\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n*1\r\n+in\r\n$1\r\nz\r\n+after\r\n";
        let frames = all(input).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Array(Some(vec![
                    Frame::Simple(b("OK")),
                    Frame::Error(b("ERR x")),
                    Frame::Integer(5),
                    Frame::Bulk(Some(b(""))),
                    Frame::Bulk(None),
                    Frame::Array(None),
                    Frame::Array(Some(vec![])),
                    Frame::Array(Some(vec![Frame::Simple(b("in"))])),
                    Frame::Bulk(Some(b("z"))),
                ])),
                Frame::Simple(b("after")),
            ]
        );
        assert_eq!(frames[0].as_bytes(), None);
        let Frame::Array(Some(items)) = &frames[0] else {
            unreachable!()
        };
        let words: Vec<_> = items.iter().map(Frame::as_bytes).collect();
        let (ok, z) = (b("OK"), b("z"));
        assert_eq!(
            words,
            [
                Some(&ok),
                None,
                None,
                Some(&b("")),
                None,
                None,
                None,
                None,
                Some(&z)
            ]
        );
    }

    #[test]
    fn frames_at_the_limits_are_taken() {
        let small = Limits {
            max_bulk: 4,
            max_array: 2,
            max_depth: 2,
        };
        let cases: &[(&[u8], Frame)] = &[
            (b"$4\r\nabcd\r\n", Frame::Bulk(Some(b("abcd")))),
            (
                b"*2\r\n:1\r\n:2\r\n",
                Frame::Array(Some(vec![Frame::Integer(1), Frame::Integer(2)])),
            ),
            (
                b"*1\r\n*1\r\n:1\r\n",
                Frame::Array(Some(vec![Frame::Array(Some(vec![Frame::Integer(1)]))])),
            ),
            // An empty array holds nothing nested: it is not too deep.
            (
                b"*1\r\n*1\r\n*0\r\n",
                Frame::Array(Some(vec![Frame::Array(Some(vec![Frame::Array(Some(
                    vec![],
                ))]))])),
            ),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(*input);
            assert_eq!(
                decode(&mut buf, &small),
                Ok(Some(want.clone())),
                "{input:?}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_line_may_hold_64_kib_and_no_more() {
        let line = |n: usize, end: &[u8]| {
            let mut buf = BytesMut::from(&b"+"[..]);
            buf.extend_from_slice(&vec![b'a'; n]);
            buf.extend_from_slice(end);
            buf
        };
        let limits = Limits::default();
        let mut buf = line(65536, b"\r\n");
        let Ok(Some(Frame::Simple(text))) = decode(&mut buf, &limits) else {
            panic!("a line of 64 KiB is refused");
        };
        assert_eq!(text.len(), 65536);
        assert_eq!(decode(&mut line(65536, b"\r"), &limits), Ok(None));
        assert_eq!(decode(&mut line(65537, b""), &limits), Ok(None));
        assert_eq!(
            decode(&mut line(65537, b"\r"), &limits),
            Err(RespError::LongLine)
        );
        assert_eq!(
            decode(&mut line(65537, b"\r\n"), &limits),
            Err(RespError::LongLine)
        );
    }

    #[test]
    fn every_error_says_what_is_wrong() {
        let texts: Vec<String> = [
            RespError::Type(b'%'),
            RespError::Number,
            RespError::LongLine,
            RespError::LongBulk(5),
            RespError::LongArray(3),
            RespError::Deep,
            RespError::NoCrlf,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            texts,
            [
                "not RESP2: a frame starts with byte 0x25",
                "not RESP2: a length or integer is not a number",
                "a line longer than 65536 bytes",
                "a bulk string of 5 bytes is over the limit",
                "an array of 3 elements is over the limit",
                "arrays nested too deep",
                "a bulk string is not followed by CRLF",
            ]
        );
    }
}
