//! What the protocol parsers share: the events they report, their error type
//! and a bounded line accumulator.
//!
//! Parsers are push-based and never see a socket: `feed(&[u8], on_event)`
//! takes whatever one `read()` returned, frames split at any byte. They keep
//! only a header line and the first `PREFIX` bytes of a body (enough for the
//! stamp), so memory per connection stays small whatever the body size.

use std::fmt;

/// How many leading body bytes a parser keeps for the caller.
pub const PREFIX: usize = 64;

/// Longest line (line-protocol header, HTTP status or header line) accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// Something a parser recognised in the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// One delivered message: the channel (line protocol; empty for HTTP),
    /// its content type, its first bytes (at most `PREFIX`) and its length.
    Message {
        channel: &'a [u8],
        ctype: &'a [u8],
        prefix: &'a [u8],
        len: u64,
    },
    /// HTTP subscriber: the server answered 200 with a multipart stream.
    Subscribed,
    /// HTTP publisher: one complete final response.
    Response { status: u16 },
    /// WebSocket: the server's close frame, with its status code (1005
    /// when it had none).
    Closed { code: u16 },
    /// NATS: the server asks for a `PONG` (the caller writes it).
    Ping,
    /// NATS `PONG`, MQTT `PINGRESP`: the server has processed everything
    /// the connection sent before its ping.
    Pong,
}

/// Why a stream cannot be parsed further; the connection is then closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bytes do not follow the protocol; the text says where.
    Protocol(&'static str),
    /// A line longer than `MAX_LINE`.
    LineTooLong,
    /// The server reported an error (`- reason` on the line protocol).
    Server(String),
    /// HTTP: the subscribe request was not answered with a multipart 200.
    Refused(String),
    /// The server ended the stream (chunked end or closing delimiter).
    StreamEnded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(what) => write!(f, "protocol error: {what}"),
            Error::LineTooLong => write!(f, "protocol error: line longer than {MAX_LINE} bytes"),
            Error::Server(reason) => write!(f, "server error: {reason}"),
            Error::Refused(status) => write!(f, "subscription refused: {status}"),
            Error::StreamEnded => write!(f, "the server ended the stream"),
        }
    }
}

impl std::error::Error for Error {}

/// Collects one line across reads. `take` consumes input up to and including
/// the next `\n`; the finished line is then available without its line end
/// (`\r\n` or bare `\n`).
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    /// Consumes bytes from the front of `data`; returns true once a whole
    /// line is held. Call `clear` before collecting the next line.
    pub fn take(&mut self, data: &mut &[u8]) -> Result<bool, Error> {
        if self.done {
            return Ok(true);
        }
        let (chunk, complete) = match memchr::memchr(b'\n', data) {
            Some(p) => (&data[..p], p + 1),
            None => (*data, data.len()),
        };
        if self.buf.len() + chunk.len() > MAX_LINE {
            return Err(Error::LineTooLong);
        }
        self.buf.extend_from_slice(chunk);
        let found = complete > chunk.len();
        *data = &data[complete..];
        if found {
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            self.done = true;
        }
        Ok(found)
    }

    pub fn line(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the line; keeps the allocation unless it grew large.
    pub fn clear(&mut self) {
        self.done = false;
        if self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// Keeps the first `PREFIX` bytes of a body.
#[derive(Debug)]
pub struct Prefix {
    bytes: [u8; PREFIX],
    len: usize,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix {
            bytes: [0; PREFIX],
            len: 0,
        }
    }
}

impl Prefix {
    pub fn push(&mut self, data: &[u8]) {
        let room = PREFIX - self.len;
        let n = room.min(data.len());
        if n > 0 {
            self.bytes[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
        }
    }

    /// The kept bytes, cut to a body of `body_len` bytes.
    pub fn get(&self, body_len: u64) -> &[u8] {
        let n = usize::try_from(body_len)
            .unwrap_or(usize::MAX)
            .min(self.len);
        &self.bytes[..n]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Trims ASCII spaces and tabs at both ends.
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

/// Parses an unsigned decimal number (no sign, no spaces).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Some(v)
}

/// Runs `feed` over `input` cut at every position and whole, and returns the
/// events each way rendered as strings; a test helper for all parsers.
#[cfg(test)]
pub fn feed_every_split<P: Default>(
    input: &[u8],
    mut feed: impl FnMut(&mut P, &[u8], &mut Vec<String>) -> Result<(), Error>,
) -> Vec<(Vec<String>, Result<(), Error>)> {
    let mut out = Vec::new();
    for cut in 0..=input.len() {
        let mut p = P::default();
        let mut seen = Vec::new();
        let mut r = feed(&mut p, &input[..cut], &mut seen);
        if r.is_ok() {
            r = feed(&mut p, &input[cut..], &mut seen);
        }
        out.push((seen, r));
    }
    // One byte at a time.
    let mut p = P::default();
    let mut seen = Vec::new();
    let mut r = Ok(());
    for b in input.chunks(1) {
        r = feed(&mut p, b, &mut seen);
        if r.is_err() {
            break;
        }
    }
    out.push((seen, r));
    out
}

/// Renders an event for test comparisons.
#[cfg(test)]
pub fn show(ev: &Event<'_>) -> String {
    match ev {
        Event::Message {
            channel,
            ctype,
            prefix,
            len,
        } => format!(
            "msg {} {} {} {}",
            String::from_utf8_lossy(channel),
            String::from_utf8_lossy(ctype),
            len,
            String::from_utf8_lossy(prefix)
        ),
        Event::Subscribed => "subscribed".to_string(),
        Event::Response { status } => format!("response {status}"),
        Event::Closed { code } => format!("closed {code}"),
        Event::Ping => "ping".to_string(),
        Event::Pong => "pong".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere() {
        let input = b"abc\r\nde\nf";
        for cut in 0..=input.len() {
            let mut l = Lines::default();
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                let mut d: &[u8] = part;
                while !d.is_empty() {
                    if l.take(&mut d).unwrap() {
                        got.push(l.line().to_vec());
                        l.clear();
                    }
                }
            }
            assert_eq!(got, vec![b"abc".to_vec(), b"de".to_vec()], "cut {cut}");
        }
    }

    #[test]
    fn line_limit() {
        let mut l = Lines::default();
        let big = vec![b'a'; MAX_LINE + 1];
        let mut d: &[u8] = &big;
        assert_eq!(l.take(&mut d), Err(Error::LineTooLong));
    }

    #[test]
    fn helpers() {
        assert_eq!(trim(b"  a b \t"), b"a b");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(parse_u64(b"123"), Some(123));
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
        let mut p = Prefix::default();
        p.push(&[b'a'; 40]);
        p.push(&[b'b'; 40]);
        assert_eq!(p.get(1000).len(), PREFIX);
        assert_eq!(p.get(3), b"aaa");
    }
}
