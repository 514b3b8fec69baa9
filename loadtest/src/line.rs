//! The line protocol as the load tools speak it: encoders for `+`, `~` and
//! `!` commands, and a push parser for what a subscriber receives
//! (`! LEN CHANNEL TYPE` + body + CRLF, or `- reason`).
//!
//! No IO; see `codec` for the parser contract. Header lines are read by the
//! server's own parser (`switchboard::line::wire::parse_header`); this file
//! only streams bodies, keeping the prefix the stamp needs.

use switchboard::line::wire::{self, Header};

use crate::codec::{trim, Error, Event, Lines, Prefix};

/// The content type a `!` frame means when it names none.
pub const DEFAULT_TYPE: &[u8] = wire::DEFAULT_CONTENT_TYPE;

/// `+ CHANNEL\r\n`
pub fn encode_subscribe(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"+ ");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `~ CHANNEL\r\n`
pub fn encode_unsubscribe(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(b"~ ");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `! LEN CHANNEL TYPE\r\n` + body + `\r\n` (no body and no CRLF when empty).
/// TYPE is written as the server writes it on delivery: without whitespace.
pub fn encode_publish(out: &mut Vec<u8>, channel: &str, ctype: &str, body: &[u8]) {
    out.extend_from_slice(b"! ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(channel.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&wire::type_field(ctype.as_bytes()));
    out.extend_from_slice(b"\r\n");
    if !body.is_empty() {
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a command line.
    #[default]
    Line,
    /// Inside a body: bytes left.
    Body { left: u64, len: u64 },
    /// After the body: expecting `\r\n` (or a bare `\n`).
    End { len: u64, seen_cr: bool },
}

/// Parses the server-to-client direction of the line protocol.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    line: Lines,
    /// Where the channel and type are inside the held header line.
    channel: (usize, usize),
    ctype: Option<(usize, usize)>,
    prefix: Prefix,
}

impl Parser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.state {
                State::Line => {
                    if !self.line.take(&mut data)? {
                        return Ok(());
                    }
                    self.header(on)?;
                }
                State::Body { left, len } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    self.prefix.push(&data[..n]);
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::End {
                            len,
                            seen_cr: false,
                        }
                    } else {
                        State::Body { left, len }
                    };
                }
                State::End { len, seen_cr } => {
                    if !seen_cr && data.starts_with(b"\r\n") {
                        data = &data[2..];
                        self.emit(len, on);
                        self.state = State::Line;
                        self.line.clear();
                        continue;
                    }
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\r' if !seen_cr => self.state = State::End { len, seen_cr: true },
                        b'\n' => {
                            self.emit(len, on);
                            self.state = State::Line;
                            self.line.clear();
                        }
                        _ => return Err(Error::Protocol("message body not followed by CRLF")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles a complete line held in `self.line`.
    fn header(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        let line = self.line.line();
        if trim(line).is_empty() {
            self.line.clear();
            return Ok(());
        }
        let (len, channel, ctype) = match wire::parse_header(line) {
            Ok(Header::Publication {
                len,
                channel,
                content_type,
            }) => (len, channel, content_type),
            Ok(Header::Error { reason }) => {
                return Err(Error::Server(String::from_utf8_lossy(reason).into_owned()))
            }
            Ok(Header::Message { .. } | Header::Timeout) => {
                return Err(Error::Protocol("unexpected frame from the server"))
            }
            Err(e) => return Err(Error::Protocol(e.as_str())),
        };
        // Kept as places in the held line: the body comes first.
        self.channel = span(line, channel).unwrap_or_default();
        self.ctype = span(line, ctype);
        self.prefix.clear();
        if len == 0 {
            self.emit(0, on);
            self.line.clear();
        } else {
            self.state = State::Body { left: len, len };
        }
        Ok(())
    }

    fn emit(&self, len: u64, on: &mut dyn FnMut(Event<'_>)) {
        let line = self.line.line();
        let channel = line.get(self.channel.0..self.channel.1).unwrap_or_default();
        let ctype = match self.ctype {
            Some((a, b)) => line.get(a..b).unwrap_or_default(),
            None => DEFAULT_TYPE,
        };
        on(Event::Message {
            channel,
            ctype,
            prefix: self.prefix.get(len),
            len,
        });
    }
}

/// Where `part` lies in `line`, when it is a slice of it (the parser's
/// default type is not).
fn span(line: &[u8], part: &[u8]) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= line.len()).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{feed_every_split, show};

    fn run(input: &[u8]) -> Vec<(Vec<String>, Result<(), Error>)> {
        feed_every_split::<Parser>(input, |p, d, seen| {
            p.feed(d, &mut |ev| seen.push(show(&ev)))
        })
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, "flood");
        encode_publish(&mut out, "flood", "text/plain", b"hi");
        encode_publish(&mut out, "flood", "text/plain", b"");
        encode_unsubscribe(&mut out, "flood");
        assert_eq!(
            out,
            b"+ flood\r\n! 2 flood text/plain\r\nhi\r\n! 0 flood text/plain\r\n~ flood\r\n"
        );
    }

    #[test]
    fn frames_split_at_every_byte() {
        let input: &[u8] = b"! 5 flood text/plain\r\nhello\r\n! 0 flood t\r\n\
              ! 3 ch.probe application/octet-stream\n\r\n\n\n! 2 x\r\nab\r\n";
        let want = vec![
            "msg flood text/plain 5 hello".to_string(),
            "msg flood t 0 ".to_string(),
            "msg ch.probe application/octet-stream 3 \r\n\n".to_string(),
            "msg x application/octet-stream 2 ab".to_string(),
        ];
        for (seen, r) in run(input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn body_may_hold_anything() {
        let mut body = vec![0u8; 300];
        for (i, b) in body.iter_mut().enumerate() {
            *b = (i % 256) as u8;
        }
        let mut input = Vec::new();
        encode_publish(&mut input, "c", "a/b", &body);
        for (seen, r) in run(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen.len(), 1);
            assert!(seen[0].starts_with("msg c a/b 300 "));
        }
    }

    #[test]
    fn type_holds_no_spaces() {
        for (seen, r) in run(b"! 1 c text/plain;charset=utf-8 \r\nz\r\n") {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, vec!["msg c text/plain;charset=utf-8 1 z".to_string()]);
        }
        // Five fields break the rule every reader of the line follows.
        for (seen, r) in run(b"! 1 c text/plain; charset=utf-8\r\nz\r\n") {
            assert!(seen.is_empty());
            assert_eq!(r, Err(Error::Protocol("unknown frame")));
        }
        let mut out = Vec::new();
        encode_publish(&mut out, "c", "text/plain; charset=utf-8", b"z");
        assert_eq!(out, b"! 1 c text/plain;charset=utf-8\r\nz\r\n");
    }

    #[test]
    fn server_error_line() {
        for (seen, r) in run(b"! 1 c t\r\nz\r\n- bad command\r\n") {
            assert_eq!(seen.len(), 1);
            assert_eq!(r, Err(Error::Server("bad command".into())));
        }
    }

    #[test]
    fn malformed() {
        let cases: &[&[u8]] = &[
            b"! x c t\r\n",
            b"! 1\r\n",
            b"> 1 0 q\r\na\r\n",
            b"! 2 c t\r\nabXY",
            b"! -1 c t\r\n",
        ];
        for &c in cases {
            for (_, r) in run(c) {
                assert!(
                    matches!(r, Err(Error::Protocol(_))),
                    "{:?}",
                    String::from_utf8_lossy(c)
                );
            }
        }
    }
}
