//! Redis pub/sub (RESP2) as the load tools speak it, for comparisons with
//! redis-server: commands as arrays of bulk strings (`SUBSCRIBE CHANNEL`,
//! `PUBLISH CHANNEL BODY`), and a push parser for the replies.
//!
//! A subscriber's confirmation is the `subscribe` reply; its deliveries are
//! `message` arrays. A publisher's `PUBLISH` is answered with an integer
//! (the number of receivers); each reply is reported as a `Response` with
//! status 200, so the publisher loop counts them as it counts HTTP answers.
//! An error reply (`-ERR ...`) ends the connection. No IO; see `codec`.

use crate::codec::{parse_u64, Error, Event, Lines, Prefix, MAX_LINE};

/// A command: `*N\r\n` then `$LEN\r\nARG\r\n` for each argument.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

pub fn encode_subscribe(out: &mut Vec<u8>, channel: &str) {
    encode_command(out, &[b"SUBSCRIBE", channel.as_bytes()]);
}

pub fn encode_publish(out: &mut Vec<u8>, channel: &str, body: &[u8]) {
    encode_command(out, &[b"PUBLISH", channel.as_bytes(), body]);
}

/// Elements of a push array kept whole (the kind and the channel); the
/// rest keep only their first `PREFIX` bytes.
const KEPT: usize = 2;

/// Longest array a reply may have (a pub/sub push has 3 or 4).
const MAX_ARRAY: u64 = 16;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a type line (top level, or the next array element).
    #[default]
    Line,
    /// Inside a bulk string: bytes left.
    Bulk { left: u64, len: u64 },
    /// After a bulk string: `\r\n` expected.
    End { len: u64, seen_cr: bool },
}

/// Parses what a Redis server sends a subscriber or a publisher.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    line: Lines,
    /// In an array: elements still to come (0 at the top level).
    remaining: u64,
    /// Index of the current element in its array.
    index: usize,
    /// The kept elements of the current array, whole.
    kept: [Vec<u8>; KEPT],
    /// The first bytes of the body (the third element, or a top-level
    /// bulk string), and its length.
    prefix: Prefix,
    body_len: u64,
    in_array: bool,
}

impl Parser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.state {
                State::Line => {
                    if !self.line.take(&mut data)? {
                        return Ok(());
                    }
                    self.type_line(on)?;
                }
                State::Bulk { left, len } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let chunk = &data[..n];
                    match self.kept.get_mut(self.index) {
                        Some(k) if self.in_array => {
                            if k.len() + chunk.len() > MAX_LINE {
                                return Err(Error::LineTooLong);
                            }
                            k.extend_from_slice(chunk);
                        }
                        _ => self.prefix.push(chunk),
                    }
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::End {
                            len,
                            seen_cr: false,
                        }
                    } else {
                        State::Bulk { left, len }
                    };
                }
                State::End { len, seen_cr } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\r' if !seen_cr => self.state = State::End { len, seen_cr: true },
                        b'\n' if seen_cr => {
                            self.state = State::Line;
                            if self.in_array && self.index >= KEPT {
                                self.body_len = len;
                            }
                            self.element_done(on)?;
                        }
                        _ => return Err(Error::Protocol("RESP bulk string not followed by CRLF")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles a complete type line held in `self.line`.
    fn type_line(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        let line = self.line.line();
        let Some((&kind, rest)) = line.split_first() else {
            return Err(Error::Protocol("empty RESP line"));
        };
        match kind {
            b'-' => {
                return Err(Error::Server(
                    String::from_utf8_lossy(rest).trim().to_string(),
                ))
            }
            b'*' if !self.in_array => {
                let n = parse_u64(rest).ok_or(Error::Protocol("RESP array length not a number"))?;
                if n > MAX_ARRAY {
                    return Err(Error::Protocol("RESP array longer than a pub/sub reply"));
                }
                self.line.clear();
                self.in_array = true;
                self.remaining = n;
                self.index = 0;
                self.body_len = 0;
                self.prefix.clear();
                for k in &mut self.kept {
                    k.clear();
                }
                if n == 0 {
                    self.in_array = false;
                    on(Event::Response { status: 200 });
                }
                return Ok(());
            }
            b'*' => return Err(Error::Protocol("nested RESP array")),
            b'$' => {
                let len = if rest == b"-1" {
                    None
                } else {
                    Some(parse_u64(rest).ok_or(Error::Protocol("RESP bulk length not a number"))?)
                };
                self.line.clear();
                match len {
                    Some(len) => {
                        if !(self.in_array && self.index < KEPT) {
                            self.prefix.clear();
                        }
                        self.state = if len == 0 {
                            State::End {
                                len,
                                seen_cr: false,
                            }
                        } else {
                            State::Bulk { left: len, len }
                        };
                    }
                    // A null bulk string: an element with nothing in it.
                    None => self.element_done(on)?,
                }
                return Ok(());
            }
            b'+' | b':' => {
                self.line.clear();
                self.element_done(on)?;
            }
            _ => return Err(Error::Protocol("unknown RESP type")),
        }
        Ok(())
    }

    /// One value is complete: a reply at the top level, or the next element
    /// of an array (which may complete the array).
    fn element_done(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        self.line.clear();
        if !self.in_array {
            on(Event::Response { status: 200 });
            return Ok(());
        }
        self.index += 1;
        self.remaining -= 1;
        if self.remaining > 0 {
            return Ok(());
        }
        self.in_array = false;
        let kind = self.kept[0].to_ascii_lowercase();
        match kind.as_slice() {
            b"message" if self.index == 3 => on(Event::Message {
                channel: &self.kept[1],
                ctype: b"",
                prefix: self.prefix.get(self.body_len),
                len: self.body_len,
            }),
            b"subscribe" => on(Event::Subscribed),
            b"message" => return Err(Error::Protocol("RESP message without 3 elements")),
            // Other pushes (unsubscribe, pong) and array replies.
            _ => on(Event::Response { status: 200 }),
        }
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
        encode_subscribe(&mut out, "flood");
        encode_publish(&mut out, "flood", b"hi\r\n");
        assert_eq!(
            out,
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nflood\r\n\
              *3\r\n$7\r\nPUBLISH\r\n$5\r\nflood\r\n$4\r\nhi\r\n\r\n"
        );
    }

    #[test]
    fn subscriber_stream_split_at_every_byte() {
        let input: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nflood\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$5\r\nflood\r\n$5\r\nhello\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$0\r\n\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$4\r\n\r\n\r\n\r\n";
        let want = vec![
            "subscribed".to_string(),
            "msg flood  5 hello".to_string(),
            "msg x  0 ".to_string(),
            "msg x  4 \r\n\r\n".to_string(),
        ];
        for (seen, r) in run(input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn publisher_replies() {
        for (seen, r) in run(b":0\r\n:1000\r\n+OK\r\n$-1\r\n") {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, vec!["response 200".to_string(); 4]);
        }
    }

    #[test]
    fn long_body_keeps_a_prefix() {
        let mut input = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$300\r\n".to_vec();
        input.extend_from_slice(&[b'q'; 300]);
        input.extend_from_slice(b"\r\n");
        for (seen, r) in run(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen.len(), 1);
            assert!(seen[0].starts_with("msg c  300 qqq"));
        }
    }

    #[test]
    fn errors() {
        for (seen, r) in run(b":1\r\n-ERR unknown command\r\n") {
            assert_eq!(seen, vec!["response 200".to_string()]);
            assert_eq!(r, Err(Error::Server("ERR unknown command".into())));
        }
        let bad: &[&[u8]] = &[
            b"*x\r\n",
            b"*99\r\n",
            b"*2\r\n*1\r\n",
            b"$3\r\nabcXY",
            b"?\r\n",
            b"\r\n",
            b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n",
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
