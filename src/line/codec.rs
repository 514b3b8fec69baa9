//! The line protocol codec: bytes in, [`Command`]s out. No sockets here.
//!
//! A command is one line of whitespace-separated fields ending in `\r\n` (a
//! bare `\n` is accepted); commands with a non-zero length are followed by that
//! many body bytes and `\r\n`. The decoder is incremental: it remembers how far
//! it has scanned for the line end, so input split at any byte, or many
//! commands in one read, decode the same and no byte is scanned twice. Bodies
//! are split off the input buffer without copying.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::wire::{is_space, number};
use crate::broker::pattern::{self, PatternError};
use crate::broker::queues::MAX_ADDRESSES;

/// The most messages one `<<` may ask for.
pub const MAX_TAKE: u32 = 1024;

/// One client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `> LEN TIMEOUT TO [REPLY]` + body.
    Send {
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
    },
    /// `< TIMEOUT ADDR1 [.. ADDR8]` (`count` 1), or `<< COUNT TIMEOUT
    /// ADDR1 [.. ADDR8]`: the same wait, then up to `count - 1` more
    /// messages already queued on the addresses.
    Ready {
        timeout_s: u64,
        addresses: Vec<Bytes>,
        count: u32,
    },
    /// `? LEN TIMEOUT TO` + body.
    Query {
        timeout_s: u64,
        to: Bytes,
        body: Bytes,
    },
    /// `.`
    Quit,
    /// `+ CHANNEL [SINCE]`, or `+ *` for every channel; SINCE asks for the
    /// retained messages after that id first.
    Subscribe { channel: Bytes, since: Option<u64> },
    /// `~ CHANNEL`, or `~ *`.
    Unsubscribe { channel: Bytes },
    /// `= NAME`: how many subscribe to a channel or a pattern.
    Presence { name: Bytes },
    /// `! LEN CHANNEL [TYPE]` + body.
    Publish {
        channel: Bytes,
        content_type: Option<Bytes>,
        body: Bytes,
    },
    /// `@ CREDENTIAL`: the shared secret or a signed token.
    Auth { credential: Bytes },
}

/// Why input was refused; the text goes to the client as `- reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    InvalidCommand,
    ReadyFormat,
    TakeFormat,
    InvalidCount,
    MessageFormat,
    QueryFormat,
    SubscribeFormat,
    UnsubscribeFormat,
    PresenceFormat,
    InvalidSince,
    /// A since id while the server keeps no history.
    HistoryOff,
    PublishFormat,
    AuthFormat,
    InvalidLength,
    InvalidTimeout,
    TooManyAddresses,
    BodyNotTerminated,
    LineTooLong(usize),
    BodyTooLarge(usize),
    TooManySubscriptions(usize),
    /// A malformed pattern, a publish to one, or the pattern limit.
    Pattern(PatternError),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::InvalidCommand => f.write_str("invalid command"),
            LineError::ReadyFormat => {
                f.write_str("ready format: < timeout onAddr1 [onAddr2..onAddrN]")
            }
            LineError::TakeFormat => {
                f.write_str("take format: << count timeout onAddr1 [onAddr2..onAddrN]")
            }
            LineError::InvalidCount => write!(f, "invalid count format (1 to {MAX_TAKE})"),
            LineError::MessageFormat => {
                f.write_str("message format: > bodyLen timeout toAddr [replyAddr]")
            }
            LineError::QueryFormat => f.write_str("query format: ? bodyLen timeout toAddr"),
            LineError::SubscribeFormat => f.write_str("subscribe format: + channel [sinceId]"),
            LineError::UnsubscribeFormat => f.write_str("unsubscribe format: ~ channel"),
            LineError::PresenceFormat => f.write_str("presence format: = channel"),
            LineError::InvalidSince => f.write_str("invalid since id format"),
            LineError::HistoryOff => f.write_str("no history is kept (--history 0): no since id"),
            LineError::PublishFormat => {
                f.write_str("publish format: ! bodyLen channel [contentType]")
            }
            LineError::AuthFormat => f.write_str("auth format: @ credential"),
            LineError::InvalidLength => f.write_str("invalid body length format"),
            LineError::InvalidTimeout => f.write_str("invalid timeout format"),
            LineError::TooManyAddresses => {
                write!(f, "too many addresses (at most {MAX_ADDRESSES})")
            }
            LineError::BodyNotTerminated => f.write_str("body must be followed by \\r\\n"),
            LineError::LineTooLong(n) => write!(f, "line too long (limit {n} bytes)"),
            LineError::BodyTooLarge(n) => write!(f, "body too large (limit {n} bytes)"),
            LineError::TooManySubscriptions(n) => {
                write!(f, "too many subscriptions (limit {n} per connection)")
            }
            LineError::Pattern(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LineError {}

/// A command whose fields borrow the input buffer: decoding it costs no
/// allocation and no reference counting. [`Decoder::decode_raw`] returns it
/// with the number of input bytes it spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raw<'a> {
    /// An empty line: nothing to do but skip it.
    Blank,
    Send {
        to: &'a [u8],
        reply: Option<&'a [u8]>,
        timeout_s: u64,
        body: &'a [u8],
    },
    Ready {
        timeout_s: u64,
        addresses: Addresses<'a>,
        count: u32,
    },
    Query {
        timeout_s: u64,
        to: &'a [u8],
        body: &'a [u8],
    },
    Quit,
    Subscribe {
        channel: &'a [u8],
        since: Option<u64>,
    },
    Auth {
        credential: &'a [u8],
    },
    Unsubscribe {
        channel: &'a [u8],
    },
    Presence {
        name: &'a [u8],
    },
    Publish {
        channel: &'a [u8],
        content_type: Option<&'a [u8]>,
        body: &'a [u8],
    },
}

/// Up to [`MAX_ADDRESSES`] borrowed addresses: the text of the line from the
/// first address on, split again when iterated (kept small so that a
/// [`Raw`] stays cheap to move).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses<'a> {
    text: &'a [u8],
    len: usize,
}

impl<'a> Addresses<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.text
            .split(|&b| is_space(b))
            .filter(|f| !f.is_empty())
            .take(self.len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Most fields kept from one line (`<< COUNT TIMEOUT` and its addresses); a
/// longer line is an error for every verb.
const MAX_FIELDS: usize = MAX_ADDRESSES + 3;

/// The fields of one command line.
struct Fields<'a> {
    list: [&'a [u8]; MAX_FIELDS],
    len: usize,
    /// More fields than `list` holds.
    overflow: bool,
}

impl<'a> Fields<'a> {
    fn split(line: &'a [u8]) -> Fields<'a> {
        let mut f = Fields {
            list: [&[]; MAX_FIELDS],
            len: 0,
            overflow: false,
        };
        let mut rest = line;
        loop {
            let start = rest
                .iter()
                .position(|&b| !is_space(b))
                .unwrap_or(rest.len());
            rest = rest.get(start..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let end = rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len());
            let (field, tail) = rest.split_at(end);
            match f.list.get_mut(f.len) {
                Some(slot) => {
                    *slot = field;
                    f.len += 1;
                }
                None => {
                    f.overflow = true;
                    break;
                }
            }
            rest = tail;
        }
        f
    }

    fn args(&self) -> &[&'a [u8]] {
        self.list.get(1..self.len).unwrap_or(&[])
    }
}

/// A parsed command line, before its body.
enum Head<'a> {
    Blank,
    Done(Raw<'a>),
    /// Needs a body of this length.
    Body(Raw<'a>, usize),
}

impl<'a> Raw<'a> {
    fn with_body(self, body: &'a [u8]) -> Raw<'a> {
        match self {
            Raw::Send {
                to,
                reply,
                timeout_s,
                ..
            } => Raw::Send {
                to,
                reply,
                timeout_s,
                body,
            },
            Raw::Query { timeout_s, to, .. } => Raw::Query {
                timeout_s,
                to,
                body,
            },
            Raw::Publish {
                channel,
                content_type,
                ..
            } => Raw::Publish {
                channel,
                content_type,
                body,
            },
            other => other,
        }
    }
}

/// The incremental decoder of one connection.
#[derive(Clone, Debug)]
pub struct Decoder {
    max_line: usize,
    max_body: usize,
    /// Bytes of the current line already searched for `\n`.
    scanned: usize,
    /// A complete line whose body has not fully arrived: (line length, total
    /// length of the command).
    body_wait: Option<(usize, usize)>,
}

impl Decoder {
    pub fn new(max_line: usize, max_body: usize) -> Decoder {
        Decoder {
            max_line,
            max_body,
            scanned: 0,
            body_wait: None,
        }
    }

    /// True when the decoder holds no partial command state.
    pub fn is_idle(&self) -> bool {
        self.scanned == 0 && self.body_wait.is_none()
    }

    /// Decodes the next command from the front of `buf`, consuming its bytes.
    /// `Ok(None)` means more input is needed; an error is final for the
    /// connection. Bodies and fields share `buf`'s memory.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, LineError> {
        loop {
            let Some((raw, n)) = self.decode_raw(buf)? else {
                return Ok(None);
            };
            let ranges = Ranges::of(&raw, buf);
            let frame = buf.split_to(n).freeze();
            if let Some(cmd) = ranges.to_command(&frame) {
                return Ok(Some(cmd));
            }
        }
    }

    /// Finds the next complete command at the front of `buf` without
    /// consuming anything; returns it with the number of bytes it spans,
    /// which the caller must remove from the front before the next call.
    pub fn decode_raw<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Raw<'a>, usize)>, LineError> {
        if let Some((line_end, total)) = self.body_wait {
            if buf.len() < total {
                return Ok(None);
            }
            self.body_wait = None;
            let line = buf.get(..line_end).unwrap_or_default();
            return match self.parse_line(line)? {
                Head::Body(raw, len) => self.attach_body(buf, raw, line_end, len).map(Some),
                _ => Ok(None),
            };
        }
        let start = self.scanned.min(buf.len());
        let Some(pos) = buf.get(start..).and_then(|b| memchr::memchr(b'\n', b)) else {
            self.scanned = buf.len();
            if buf.len() > self.max_line {
                return Err(LineError::LineTooLong(self.max_line));
            }
            return Ok(None);
        };
        let line_end = start + pos + 1;
        self.scanned = 0;
        if line_end > self.max_line {
            return Err(LineError::LineTooLong(self.max_line));
        }
        let line = buf.get(..line_end).unwrap_or_default();
        match self.parse_line(line)? {
            Head::Blank => Ok(Some((Raw::Blank, line_end))),
            Head::Done(raw) => Ok(Some((raw, line_end))),
            Head::Body(raw, 0) => Ok(Some((raw, line_end))),
            Head::Body(raw, len) => {
                let total = line_end + len + 2;
                if buf.len() < total {
                    self.body_wait = Some((line_end, total));
                    return Ok(None);
                }
                self.attach_body(buf, raw, line_end, len).map(Some)
            }
        }
    }

    fn attach_body<'a>(
        &self,
        buf: &'a [u8],
        raw: Raw<'a>,
        line_end: usize,
        len: usize,
    ) -> Result<(Raw<'a>, usize), LineError> {
        let body_end = line_end + len;
        if buf.get(body_end..body_end + 2) != Some(b"\r\n") {
            return Err(LineError::BodyNotTerminated);
        }
        let body = buf.get(line_end..body_end).unwrap_or_default();
        Ok((raw.with_body(body), body_end + 2))
    }

    fn parse_line<'a>(&self, line: &'a [u8]) -> Result<Head<'a>, LineError> {
        let fields = Fields::split(line);
        let Some(verb) = fields.list.first().filter(|_| fields.len > 0) else {
            return Ok(Head::Blank);
        };
        let args = fields.args();
        let overflow = fields.overflow;
        match *verb {
            b">" => {
                let [len, timeout, to, rest @ ..] = args else {
                    return Err(LineError::MessageFormat);
                };
                if rest.len() > 1 || overflow {
                    return Err(LineError::MessageFormat);
                }
                let len = self.length(len)?;
                Ok(Head::Body(
                    Raw::Send {
                        to,
                        reply: rest.first().copied(),
                        timeout_s: timeout_of(timeout)?,
                        body: &[],
                    },
                    len,
                ))
            }
            b"<" | b"<<" => {
                let (count, timeout, addresses) = match (*verb == b"<", args) {
                    (true, [timeout, addresses @ ..]) if !addresses.is_empty() => {
                        (1, timeout, addresses)
                    }
                    (true, _) => return Err(LineError::ReadyFormat),
                    (false, [count, timeout, addresses @ ..]) if !addresses.is_empty() => {
                        (count_of(count)?, timeout, addresses)
                    }
                    (false, _) => return Err(LineError::TakeFormat),
                };
                if addresses.len() > MAX_ADDRESSES || overflow {
                    return Err(LineError::TooManyAddresses);
                }
                let first = addresses.first().copied().unwrap_or_default();
                let from = (first.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
                Ok(Head::Done(Raw::Ready {
                    timeout_s: timeout_of(timeout)?,
                    addresses: Addresses {
                        text: line.get(from..).unwrap_or_default(),
                        len: addresses.len(),
                    },
                    count,
                }))
            }
            b"?" => {
                let [len, timeout, to] = args else {
                    return Err(LineError::QueryFormat);
                };
                if overflow {
                    return Err(LineError::QueryFormat);
                }
                let len = self.length(len)?;
                Ok(Head::Body(
                    Raw::Query {
                        timeout_s: timeout_of(timeout)?,
                        to,
                        body: &[],
                    },
                    len,
                ))
            }
            b"." => Ok(Head::Done(Raw::Quit)),
            b"+" => match args {
                [channel, since @ ..] if since.len() <= 1 && !overflow => {
                    let since = match since.first() {
                        Some(id) => Some(number(id).ok_or(LineError::InvalidSince)?),
                        None => None,
                    };
                    pattern::classify(channel).map_err(LineError::Pattern)?;
                    Ok(Head::Done(Raw::Subscribe { channel, since }))
                }
                _ => Err(LineError::SubscribeFormat),
            },
            b"~" => match args {
                [channel] if !overflow => Ok(Head::Done(Raw::Unsubscribe { channel })),
                _ => Err(LineError::UnsubscribeFormat),
            },
            b"@" => match args {
                [credential] if !overflow => Ok(Head::Done(Raw::Auth { credential })),
                _ => Err(LineError::AuthFormat),
            },
            b"=" => match args {
                [name] if !overflow => Ok(Head::Done(Raw::Presence { name })),
                _ => Err(LineError::PresenceFormat),
            },
            b"!" => {
                let [len, channel, rest @ ..] = args else {
                    return Err(LineError::PublishFormat);
                };
                if rest.len() > 1 || overflow {
                    return Err(LineError::PublishFormat);
                }
                let len = self.length(len)?;
                if pattern::is_wildcard(channel) {
                    return Err(LineError::Pattern(PatternError::PublishToPattern));
                }
                Ok(Head::Body(
                    Raw::Publish {
                        channel,
                        content_type: rest.first().copied(),
                        body: &[],
                    },
                    len,
                ))
            }
            _ => Err(LineError::InvalidCommand),
        }
    }

    fn length(&self, field: &[u8]) -> Result<usize, LineError> {
        let n = number(field).ok_or(LineError::InvalidLength)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.max_body => Ok(n),
            _ => Err(LineError::BodyTooLarge(self.max_body)),
        }
    }
}

/// A [`Raw`] command remembered as offsets, so the input it borrowed can be
/// split off and its fields sliced out of the frozen frame.
pub struct Ranges {
    raw: Raw<'static>,
    /// Start and length of each field, in the order `to_command` takes them;
    /// at most [`MAX_FIELDS`] (a wait's addresses), kept inline: a command
    /// is decoded without an allocation for its offsets.
    offsets: [(usize, usize); MAX_FIELDS],
    len: usize,
}

impl Ranges {
    /// Records where each field of `raw` lies in `base`.
    pub fn of(raw: &Raw<'_>, base: &[u8]) -> Ranges {
        let mut offsets = [(0, 0); MAX_FIELDS];
        let mut len = 0;
        let mut at = |part: &[u8]| {
            let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
            if let Some(slot) = offsets.get_mut(len) {
                *slot = (start, part.len());
                len += 1;
            }
            &[] as &'static [u8]
        };
        let raw = match *raw {
            Raw::Blank => Raw::Blank,
            Raw::Quit => Raw::Quit,
            Raw::Send {
                to,
                reply,
                timeout_s,
                body,
            } => {
                let to = at(to);
                let reply_present = reply.is_some();
                if let Some(r) = reply {
                    at(r);
                }
                let body = at(body);
                Raw::Send {
                    to,
                    reply: reply_present.then_some(&[] as &'static [u8]),
                    timeout_s,
                    body,
                }
            }
            Raw::Ready {
                timeout_s,
                addresses,
                count,
            } => {
                for a in addresses.iter() {
                    at(a);
                }
                Raw::Ready {
                    timeout_s,
                    addresses: Addresses {
                        text: &[],
                        len: addresses.len,
                    },
                    count,
                }
            }
            Raw::Query {
                timeout_s,
                to,
                body,
            } => Raw::Query {
                timeout_s,
                to: at(to),
                body: at(body),
            },
            Raw::Subscribe { channel, since } => Raw::Subscribe {
                channel: at(channel),
                since,
            },
            Raw::Presence { name } => Raw::Presence { name: at(name) },
            Raw::Unsubscribe { channel } => Raw::Unsubscribe {
                channel: at(channel),
            },
            Raw::Auth { credential } => Raw::Auth {
                credential: at(credential),
            },
            Raw::Publish {
                channel,
                content_type,
                body,
            } => {
                let channel = at(channel);
                let ct_present = content_type.is_some();
                if let Some(ct) = content_type {
                    at(ct);
                }
                Raw::Publish {
                    channel,
                    content_type: ct_present.then_some(&[] as &'static [u8]),
                    body: at(body),
                }
            }
        };
        Ranges { raw, offsets, len }
    }

    /// The owned command, sliced out of `frame` (the bytes the command spans);
    /// `None` for a blank line.
    pub fn to_command(&self, frame: &Bytes) -> Option<Command> {
        let offsets = self.offsets.get(..self.len).unwrap_or(&[]);
        let mut parts = offsets.iter().map(|&(start, len)| {
            let start = start.min(frame.len());
            frame.slice(start..(start + len).min(frame.len()))
        });
        let mut next = || parts.next().unwrap_or_default();
        Some(match self.raw {
            Raw::Blank => return None,
            Raw::Quit => Command::Quit,
            Raw::Send {
                reply, timeout_s, ..
            } => {
                let to = next();
                let reply = reply.map(|_| next());
                Command::Send {
                    to,
                    reply,
                    timeout_s,
                    body: next(),
                }
            }
            Raw::Ready {
                timeout_s,
                addresses,
                count,
            } => Command::Ready {
                timeout_s,
                addresses: (0..addresses.len).map(|_| next()).collect(),
                count,
            },
            Raw::Query { timeout_s, .. } => {
                let to = next();
                Command::Query {
                    timeout_s,
                    to,
                    body: next(),
                }
            }
            Raw::Subscribe { since, .. } => Command::Subscribe {
                channel: next(),
                since,
            },
            Raw::Presence { .. } => Command::Presence { name: next() },
            Raw::Unsubscribe { .. } => Command::Unsubscribe { channel: next() },
            Raw::Auth { .. } => Command::Auth { credential: next() },
            Raw::Publish { content_type, .. } => {
                let channel = next();
                let content_type = content_type.map(|_| next());
                Command::Publish {
                    channel,
                    content_type,
                    body: next(),
                }
            }
        })
    }
}

fn timeout_of(field: &[u8]) -> Result<u64, LineError> {
    number(field).ok_or(LineError::InvalidTimeout)
}

/// The COUNT of `<<`: 1 to [`MAX_TAKE`].
fn count_of(field: &[u8]) -> Result<u32, LineError> {
    number(field)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=MAX_TAKE).contains(n))
        .ok_or(LineError::InvalidCount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn decoder() -> Decoder {
        Decoder::new(4096, 1 << 20)
    }

    /// Decodes all of `input` fed in the given pieces; returns the commands and
    /// the first error, if any.
    fn decode_pieces(pieces: &[&[u8]]) -> (Vec<Command>, Option<LineError>) {
        let mut d = decoder();
        let mut buf = BytesMut::new();
        let mut cmds = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(c)) => cmds.push(c),
                    Ok(None) => break,
                    Err(e) => return (cmds, Some(e)),
                }
            }
        }
        (cmds, None)
    }

    const SAMPLE: &[u8] = b"> 5 30 a r\r\nhello\r\n< 10 a b c\r\n? 4 5 svc\r\nping\r\n> 0 1 z\r\n\
+ news\r\n! 3 news text/plain\r\nabc\r\n! 0 news\n~ news\r\n\r\n.\r\n";

    fn sample_commands() -> Vec<Command> {
        vec![
            Command::Send {
                to: b("a"),
                reply: Some(b("r")),
                timeout_s: 30,
                body: b("hello"),
            },
            Command::Ready {
                timeout_s: 10,
                addresses: vec![b("a"), b("b"), b("c")],
                count: 1,
            },
            Command::Query {
                timeout_s: 5,
                to: b("svc"),
                body: b("ping"),
            },
            Command::Send {
                to: b("z"),
                reply: None,
                timeout_s: 1,
                body: Bytes::new(),
            },
            Command::Subscribe {
                channel: b("news"),
                since: None,
            },
            Command::Publish {
                channel: b("news"),
                content_type: Some(b("text/plain")),
                body: b("abc"),
            },
            Command::Publish {
                channel: b("news"),
                content_type: None,
                body: Bytes::new(),
            },
            Command::Unsubscribe { channel: b("news") },
            Command::Quit,
        ]
    }

    #[test]
    fn whole_input_pipelined() {
        assert_eq!(decode_pieces(&[SAMPLE]), (sample_commands(), None));
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for i in 0..=SAMPLE.len() {
            let (a, rest) = SAMPLE.split_at(i);
            assert_eq!(
                decode_pieces(&[a, rest]),
                (sample_commands(), None),
                "split at {i}"
            );
        }
    }

    #[test]
    fn byte_by_byte() {
        let pieces: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(decode_pieces(&pieces), (sample_commands(), None));
    }

    #[test]
    fn trailing_partial_stays_in_the_buffer() {
        let mut d = decoder();
        let mut buf = BytesMut::from(&b"+ a\r\n> 5 1 q\r\nhel"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Ok(Some(Command::Subscribe { .. }))
        ));
        assert_eq!(d.decode(&mut buf), Ok(None));
        // Nothing of an incomplete command is consumed.
        assert_eq!(&buf[..], b"> 5 1 q\r\nhel");
        assert!(!d.is_idle());
    }

    fn first_error(input: &[u8]) -> Option<LineError> {
        decode_pieces(&[input]).1
    }

    #[test]
    fn malformed_input() {
        assert_eq!(first_error(b"hello\r\n"), Some(LineError::InvalidCommand));
        assert_eq!(first_error(b"> x 1 a\r\n"), Some(LineError::InvalidLength));
        assert_eq!(first_error(b"> -1 1 a\r\n"), Some(LineError::InvalidLength));
        assert_eq!(
            first_error(b"> 1 -1 a\r\n"),
            Some(LineError::InvalidTimeout)
        );
        assert_eq!(first_error(b"> 1 x a\r\n"), Some(LineError::InvalidTimeout));
        assert_eq!(
            first_error(b"> 99999999999999999999 1 a\r\n"),
            Some(LineError::InvalidLength)
        );
        assert_eq!(
            first_error(b"> 9999999999 1 a\r\n"),
            Some(LineError::BodyTooLarge(1 << 20))
        );
        assert_eq!(first_error(b"> 1 1\r\n"), Some(LineError::MessageFormat));
        assert_eq!(
            first_error(b"> 1 1 a b c\r\n"),
            Some(LineError::MessageFormat)
        );
        assert_eq!(first_error(b"<\r\n"), Some(LineError::ReadyFormat));
        assert_eq!(first_error(b"< 5\r\n"), Some(LineError::ReadyFormat));
        assert_eq!(
            first_error(b"< 5 1 2 3 4 5 6 7 8 9\r\n"),
            Some(LineError::TooManyAddresses)
        );
        assert_eq!(first_error(b"? 1 1\r\n"), Some(LineError::QueryFormat));
        assert_eq!(
            first_error(b"> 2 1 a\r\nabX\n"),
            Some(LineError::BodyNotTerminated)
        );
        assert_eq!(first_error(b"+\r\n"), Some(LineError::SubscribeFormat));
        assert_eq!(
            first_error(b"~ a b\r\n"),
            Some(LineError::UnsubscribeFormat)
        );
        assert_eq!(first_error(b"! 1\r\n"), Some(LineError::PublishFormat));
        assert_eq!(
            first_error(b"\x00\xff\xfe garbage\n"),
            Some(LineError::InvalidCommand)
        );
    }

    #[test]
    fn eight_addresses_are_fine() {
        let (cmds, err) = decode_pieces(&[b"< 5 1 2 3 4 5 6 7 8\r\n"]);
        assert_eq!(err, None);
        let [Command::Ready { addresses, .. }] = &cmds[..] else {
            panic!("not one wait: {cmds:?}");
        };
        let want: Vec<Bytes> = (1..=8).map(|i| Bytes::from(i.to_string())).collect();
        assert_eq!(addresses, &want);
    }

    #[test]
    fn line_limit_is_enforced_before_the_line_ends() {
        let mut d = Decoder::new(16, 100);
        let mut buf = BytesMut::from(&b"< 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::LineTooLong(16)));
        let mut d = Decoder::new(16, 100);
        let mut buf = BytesMut::from(&b"< 1 aaaaaaaaaaaaaaaaa\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::LineTooLong(16)));
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            LineError::BodyNotTerminated.to_string(),
            "body must be followed by \\r\\n"
        );
        assert_eq!(LineError::InvalidCommand.to_string(), "invalid command");
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_fine() {
        let mut d = Decoder::new(16, 100);
        let mut buf = BytesMut::from(&b"< 1 aaaaaaaaaa\r\n"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Ok(Some(Command::Ready { .. }))
        ));
        // Unfinished: 16 bytes wait for more, 17 are refused.
        let mut buf = BytesMut::from(&b"< 1 aaaaaaaaaaaa"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"a");
        assert_eq!(d.decode(&mut buf), Err(LineError::LineTooLong(16)));
    }

    #[test]
    fn a_publish_with_a_field_too_many_is_refused() {
        assert_eq!(
            first_error(b"! 1 ch text/plain x\r\n"),
            Some(LineError::PublishFormat)
        );
    }

    #[test]
    fn idle_only_between_commands() {
        let mut d = decoder();
        assert!(d.is_idle());
        let mut buf = BytesMut::from(&b"+ a"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(!d.is_idle());
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(
            d.decode(&mut buf),
            Ok(Some(Command::Subscribe { .. }))
        ));
        assert!(d.is_idle());
    }

    #[test]
    fn take_is_a_ready_with_a_count() {
        let mut d = decoder();
        let mut input = BytesMut::from(&b"<< 16 60 q r\r\n< 5 q\r\n"[..]);
        assert_eq!(
            d.decode(&mut input),
            Ok(Some(Command::Ready {
                timeout_s: 60,
                addresses: vec![b("q"), b("r")],
                count: 16,
            }))
        );
        assert_eq!(
            d.decode(&mut input),
            Ok(Some(Command::Ready {
                timeout_s: 5,
                addresses: vec![b("q")],
                count: 1,
            }))
        );
        for (line, err) in [
            (&b"<< 0 5 q\r\n"[..], LineError::InvalidCount),
            (b"<< 1025 5 q\r\n", LineError::InvalidCount),
            (b"<< 99999999999999999999 5 q\r\n", LineError::InvalidCount),
            (b"<< 2 5\r\n", LineError::TakeFormat),
            (b"<< 2 x q\r\n", LineError::InvalidTimeout),
        ] {
            let mut d = decoder();
            let mut input = BytesMut::from(line);
            assert_eq!(d.decode(&mut input), Err(err), "{line:?}");
        }
        let mut input = BytesMut::from(&b"<< 1024 5 q\r\n"[..]);
        assert!(matches!(
            decoder().decode(&mut input),
            Ok(Some(Command::Ready { count: 1024, .. }))
        ));
    }

    #[test]
    fn raw_ready_borrows_its_addresses() {
        let mut d = decoder();
        let line = b"< 5  a\tbb c \r\n";
        let Ok(Some((
            Raw::Ready {
                timeout_s,
                addresses,
                count: 1,
            },
            n,
        ))) = d.decode_raw(line)
        else {
            panic!("not a ready command");
        };
        assert_eq!((timeout_s, n), (5, line.len()));
        assert_eq!((addresses.len(), addresses.is_empty()), (3, false));
        let got: Vec<&[u8]> = addresses.iter().collect();
        assert_eq!(got, vec![&b"a"[..], b"bb", b"c"]);
        let none = Addresses { text: b"", len: 0 };
        assert_eq!((none.len(), none.is_empty()), (0, true));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9._/-]{1,12}"
        }

        fn command() -> impl Strategy<Value = (Vec<u8>, Command)> {
            prop_oneof![
                (
                    field(),
                    proptest::option::of(field()),
                    0u64..100000,
                    proptest::collection::vec(any::<u8>(), 0..64)
                )
                    .prop_map(|(to, reply, t, body)| {
                        let mut w = format!("> {} {} {}", body.len(), t, to);
                        if let Some(r) = &reply {
                            w.push(' ');
                            w.push_str(r);
                        }
                        w.push_str("\r\n");
                        let mut wire = w.into_bytes();
                        if !body.is_empty() {
                            wire.extend_from_slice(&body);
                            wire.extend_from_slice(b"\r\n");
                        }
                        let cmd = Command::Send {
                            to: Bytes::from(to),
                            reply: reply.map(Bytes::from),
                            timeout_s: t,
                            body: Bytes::from(body),
                        };
                        (wire, cmd)
                    }),
                (0u64..1000, proptest::collection::vec(field(), 1..=8)).prop_map(|(t, addrs)| {
                    let wire = format!("< {} {}\n", t, addrs.join(" ")).into_bytes();
                    let cmd = Command::Ready {
                        timeout_s: t,
                        addresses: addrs.into_iter().map(Bytes::from).collect(),
                        count: 1,
                    };
                    (wire, cmd)
                }),
                (field(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(ch, body)| {
                    let mut wire = format!("! {} {} text/plain\r\n", body.len(), ch).into_bytes();
                    if !body.is_empty() {
                        wire.extend_from_slice(&body);
                        wire.extend_from_slice(b"\r\n");
                    }
                    let cmd = Command::Publish {
                        channel: Bytes::from(ch),
                        content_type: Some(b("text/plain")),
                        body: Bytes::from(body),
                    };
                    (wire, cmd)
                }),
                field().prop_map(|ch| (
                    format!("+ {ch}\r\n").into_bytes(),
                    Command::Subscribe {
                        channel: Bytes::from(ch),
                        since: None,
                    }
                )),
            ]
        }

        proptest! {
            #[test]
            fn random_commands_split_anywhere(
                cmds in proptest::collection::vec(command(), 1..20),
                cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            ) {
                let wire: Vec<u8> = cmds.iter().flat_map(|(w, _)| w.clone()).collect();
                let want: Vec<Command> = cmds.into_iter().map(|(_, c)| c).collect();
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
                points.sort_unstable();
                let mut pieces = Vec::new();
                let mut last = 0;
                for p in points {
                    pieces.push(&wire[last..p]);
                    last = p;
                }
                pieces.push(&wire[last..]);
                prop_assert_eq!(decode_pieces(&pieces), (want, None));
            }

            #[test]
            fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_pieces(&[&input]);
            }
        }
    }
}
