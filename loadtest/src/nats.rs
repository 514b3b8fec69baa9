//! The NATS text protocol as the load tools speak it, for comparisons with
//! nats-server: encoders for `CONNECT`, `SUB`, `PUB`, `PING` and `PONG`,
//! and a push parser for what the server sends (`INFO`, `MSG`, `PING`,
//! `PONG`, `+OK`, `-ERR`).
//!
//! A subscriber sends `CONNECT`, `SUB SUBJECT 1` and `PING`: the `PONG`
//! proves the subscription is in place. A publisher sends `CONNECT` and
//! `PING` (ready at the `PONG`), its `PUB`s, and a last `PING`: its `PONG`
//! comes once the server has processed every `PUB` before it. The server's
//! own `PING`s are reported (`Event::Ping`) for the caller to answer.
//! No IO; see `codec` for the parser contract.

use crate::codec::{parse_u64, Error, Event, Lines, Prefix};

/// `CONNECT` without acknowledgements (`verbose` off), with `name`.
pub fn encode_connect(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":0}\r\n");
}

/// `SUB SUBJECT SID\r\n`
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(sid.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `PUB SUBJECT LEN\r\n` + body + `\r\n`
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, body: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

pub fn encode_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn encode_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Line,
    Body {
        left: u64,
        len: u64,
    },
    /// After the payload: `\r\n` expected.
    End {
        len: u64,
        seen_cr: bool,
    },
}

/// Parses the server-to-client direction of the NATS protocol.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    line: Lines,
    /// Where the subject lies in the held `MSG` line.
    subject: (usize, usize),
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
                    self.control(on)?;
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
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\r' if !seen_cr => self.state = State::End { len, seen_cr: true },
                        b'\n' if seen_cr => {
                            let line = self.line.line();
                            let subject = line.get(self.subject.0..self.subject.1);
                            on(Event::Message {
                                channel: subject.unwrap_or_default(),
                                ctype: b"",
                                prefix: self.prefix.get(len),
                                len,
                            });
                            self.state = State::Line;
                            self.line.clear();
                        }
                        _ => return Err(Error::Protocol("NATS payload not followed by CRLF")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles a complete control line held in `self.line`.
    fn control(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        let line = self.line.line();
        let verb_end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let verb = line[..verb_end].to_ascii_uppercase();
        match verb.as_slice() {
            b"MSG" => {
                // MSG SUBJECT SID [REPLY-TO] LEN
                let mut fields = Vec::with_capacity(5);
                let mut pos = 0;
                for part in line.split(|&b| b == b' ' || b == b'\t') {
                    if !part.is_empty() {
                        fields.push((pos, pos + part.len()));
                    }
                    pos += part.len() + 1;
                }
                if !(4..=5).contains(&fields.len()) {
                    return Err(Error::Protocol("NATS MSG line without 3 or 4 fields"));
                }
                let (a, b) = fields[fields.len() - 1];
                let len = parse_u64(&line[a..b])
                    .ok_or(Error::Protocol("NATS MSG length not a number"))?;
                self.subject = fields[1];
                self.prefix.clear();
                self.state = State::Body { left: len, len };
                if len == 0 {
                    self.state = State::End {
                        len: 0,
                        seen_cr: false,
                    };
                }
                return Ok(());
            }
            b"PING" => on(Event::Ping),
            b"PONG" => on(Event::Pong),
            b"INFO" | b"+OK" | b"" => {}
            b"-ERR" => {
                let reason = String::from_utf8_lossy(line[verb_end..].trim_ascii()).into_owned();
                return Err(Error::Server(reason));
            }
            _ => return Err(Error::Protocol("unknown NATS operation")),
        }
        self.line.clear();
        Ok(())
    }
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
        encode_sub(&mut out, "flood", 1);
        encode_pub(&mut out, "flood", b"hi");
        encode_ping(&mut out);
        encode_pong(&mut out);
        assert_eq!(out, b"SUB flood 1\r\nPUB flood 2\r\nhi\r\nPING\r\nPONG\r\n");
        let mut c = Vec::new();
        encode_connect(&mut c, "flood-sub");
        assert!(c.starts_with(b"CONNECT {\"verbose\":false,"));
        assert!(c.ends_with(b"}\r\n"));
    }

    #[test]
    fn stream_split_at_every_byte() {
        let input: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
            PONG\r\nMSG flood 1 5\r\nhello\r\nPING\r\n+OK\r\n\
            MSG flood.ready 9 _INBOX.x 0\r\n\r\nmsg  a  1   3\r\n\r\n\n\r\n";
        let want = vec![
            "pong".to_string(),
            "msg flood  5 hello".to_string(),
            "ping".to_string(),
            "msg flood.ready  0 ".to_string(),
            "msg a  3 \r\n\n".to_string(),
        ];
        for (seen, r) in run(input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn long_body_keeps_a_prefix() {
        let body = vec![b'z'; 1000];
        let mut input = b"MSG s 1 1000\r\n".to_vec();
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n");
        for (seen, r) in run(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen.len(), 1);
            assert!(seen[0].starts_with("msg s  1000 zzzz"));
        }
    }

    #[test]
    fn errors() {
        for (seen, r) in run(b"PONG\r\n-ERR 'Authorization Violation'\r\n") {
            assert_eq!(seen, vec!["pong".to_string()]);
            assert_eq!(r, Err(Error::Server("'Authorization Violation'".into())));
        }
        let bad: &[&[u8]] = &[
            b"MSG a 1 x\r\n",
            b"MSG a\r\n",
            b"MSG a 1 2 3 4 5\r\n",
            b"MSG a 1 2\r\nabXY",
            b"WHAT\r\n",
        ];
        for &c in bad {
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
