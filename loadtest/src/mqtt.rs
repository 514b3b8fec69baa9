//! MQTT 3.1.1 at QoS 0 as the load tools speak it, for comparisons with
//! MQTT brokers (mosquitto): encoders for `CONNECT`, `SUBSCRIBE`,
//! `PUBLISH`, `PINGREQ` and `DISCONNECT`, and a push parser for what the
//! broker sends (`CONNACK`, `SUBACK`, `PUBLISH`, `PINGRESP`).
//!
//! A subscriber sends `CONNECT` (clean session, no keep-alive) and
//! `SUBSCRIBE` at QoS 0: the `SUBACK` confirms it. A publisher sends
//! `CONNECT` and `PINGREQ` (ready at the `PINGRESP`), its `PUBLISH`es, and a
//! last `PINGREQ`: a broker handles a connection's packets in order, so its
//! `PINGRESP` comes after every `PUBLISH` before it was processed.
//! No IO; see `codec` for the parser contract.

use crate::codec::{Error, Event, Prefix};

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGRESP: u8 = 13;

/// Largest remaining length the protocol can express.
pub const MAX_REMAINING: usize = 268_435_455;

/// Longest packet other than `PUBLISH` accepted from the broker, and the
/// longest topic.
const MAX_HEAD: usize = 64 * 1024;

/// Appends the variable-length "remaining length".
fn encode_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// `CONNECT` as `client_id`, clean session, keep-alive off (the broker
/// never drops the connection for silence, and sends no pings).
pub fn encode_connect(out: &mut Vec<u8>, client_id: &str) {
    let id = client_id.as_bytes();
    out.push(CONNECT << 4);
    encode_len(out, 10 + 2 + id.len());
    encode_str(out, b"MQTT");
    out.push(4); // protocol level: 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&0u16.to_be_bytes());
    encode_str(out, id);
}

/// `SUBSCRIBE` to one topic at QoS 0.
pub fn encode_subscribe(out: &mut Vec<u8>, packet_id: u16, topic: &str) {
    let t = topic.as_bytes();
    out.push(0x82);
    encode_len(out, 2 + 2 + t.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    encode_str(out, t);
    out.push(0);
}

/// `PUBLISH` at QoS 0 (no packet id). The topic and body must fit in
/// `MAX_REMAINING` bytes; the callers' bodies are far smaller.
pub fn encode_publish(out: &mut Vec<u8>, topic: &str, body: &[u8]) {
    let t = topic.as_bytes();
    out.push(PUBLISH << 4);
    encode_len(out, 2 + t.len() + body.len());
    encode_str(out, t);
    out.extend_from_slice(body);
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0]);
}

pub fn encode_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xe0, 0]);
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first byte of a fixed header.
    #[default]
    Kind,
    /// The remaining length, `shift` bits read so far.
    Len { value: usize, shift: u32 },
    /// A PUBLISH's topic length (2 bytes) and topic, or a whole other
    /// packet: collecting `need` bytes into `head`.
    Head { need: usize },
    /// A PUBLISH's payload: bytes left.
    Payload { left: usize, len: usize },
}

/// Parses the broker-to-client direction of MQTT 3.1.1.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    kind: u8,
    flags: u8,
    remaining: usize,
    head: Vec<u8>,
    /// PUBLISH: where the topic lies in `head`.
    topic: (usize, usize),
    prefix: Prefix,
}

impl Parser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.state {
                State::Kind => {
                    self.kind = data[0] >> 4;
                    self.flags = data[0] & 0x0f;
                    data = &data[1..];
                    self.state = State::Len { value: 0, shift: 0 };
                }
                State::Len { value, shift } => {
                    let b = data[0];
                    data = &data[1..];
                    let value = value | (usize::from(b & 0x7f) << shift);
                    if b & 0x80 != 0 {
                        if shift >= 21 {
                            return Err(Error::Protocol("MQTT remaining length over 4 bytes"));
                        }
                        self.state = State::Len {
                            value,
                            shift: shift + 7,
                        };
                        continue;
                    }
                    self.remaining = value;
                    self.start_body(on)?;
                }
                State::Head { need } => {
                    let n = (need - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == need {
                        self.head_done(on)?;
                    }
                }
                State::Payload { left, len } => {
                    let n = left.min(data.len());
                    self.prefix.push(&data[..n]);
                    data = &data[n..];
                    if n == left {
                        self.publish_done(len, on);
                    } else {
                        self.state = State::Payload {
                            left: left - n,
                            len,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// The fixed header is complete.
    fn start_body(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        self.head.clear();
        match self.kind {
            PUBLISH => {
                if self.flags & 0x06 == 0x06 {
                    return Err(Error::Protocol("MQTT PUBLISH with QoS 3"));
                }
                if self.remaining < 2 {
                    return Err(Error::Protocol("MQTT PUBLISH shorter than its topic"));
                }
                self.state = State::Head { need: 2 };
            }
            CONNACK | SUBACK | UNSUBACK | PUBACK | PINGRESP => {
                if self.remaining > MAX_HEAD {
                    return Err(Error::Protocol("MQTT packet too long"));
                }
                self.state = State::Head {
                    need: self.remaining,
                };
                if self.remaining == 0 {
                    self.head_done(on)?;
                }
            }
            _ => return Err(Error::Protocol("unexpected MQTT packet from the broker")),
        }
        Ok(())
    }

    /// `head` holds the `need` bytes asked for.
    fn head_done(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        let h = &self.head;
        match self.kind {
            PUBLISH if h.len() == 2 => {
                let topic_len = usize::from(u16::from_be_bytes([h[0], h[1]]));
                let id_len = if self.flags & 0x06 != 0 { 2 } else { 0 };
                if 2 + topic_len + id_len > self.remaining {
                    return Err(Error::Protocol("MQTT PUBLISH shorter than its topic"));
                }
                self.topic = (2, 2 + topic_len);
                self.state = State::Head {
                    need: 2 + topic_len + id_len,
                };
                if topic_len + id_len == 0 {
                    self.publish_payload(on);
                }
            }
            PUBLISH => self.publish_payload(on),
            CONNACK => {
                match h.as_slice() {
                    [_, 0] => {}
                    [_, code] => {
                        let why = match code {
                            1 => "unacceptable protocol version",
                            2 => "client identifier rejected",
                            3 => "server unavailable",
                            4 => "bad user name or password",
                            5 => "not authorised",
                            _ => "unknown return code",
                        };
                        return Err(Error::Refused(format!("CONNACK {code}: {why}")));
                    }
                    _ => return Err(Error::Protocol("MQTT CONNACK not 2 bytes")),
                }
                self.state = State::Kind;
            }
            SUBACK => {
                if h.len() < 3 {
                    return Err(Error::Protocol("MQTT SUBACK without a return code"));
                }
                if h[2..].contains(&0x80) {
                    return Err(Error::Refused("SUBACK: subscription refused".into()));
                }
                self.state = State::Kind;
                on(Event::Subscribed);
            }
            PINGRESP => {
                self.state = State::Kind;
                on(Event::Pong);
            }
            _ => self.state = State::Kind,
        }
        Ok(())
    }

    /// The topic (and packet id) of a PUBLISH are in `head`.
    fn publish_payload(&mut self, on: &mut dyn FnMut(Event<'_>)) {
        let len = self.remaining - self.head.len();
        self.prefix.clear();
        if len == 0 {
            self.publish_done(0, on);
        } else {
            self.state = State::Payload { left: len, len };
        }
    }

    fn publish_done(&mut self, len: usize, on: &mut dyn FnMut(Event<'_>)) {
        let len = len as u64;
        on(Event::Message {
            channel: self
                .head
                .get(self.topic.0..self.topic.1)
                .unwrap_or_default(),
            ctype: b"",
            prefix: self.prefix.get(len),
            len,
        });
        self.state = State::Kind;
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
        encode_connect(&mut out, "ab");
        assert_eq!(
            out,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 2, b'a', b'b']
        );
        out.clear();
        encode_subscribe(&mut out, 7, "fl");
        assert_eq!(out, [0x82, 7, 0, 7, 0, 2, b'f', b'l', 0]);
        out.clear();
        encode_publish(&mut out, "t", b"xyz");
        assert_eq!(out, [0x30, 6, 0, 1, b't', b'x', b'y', b'z']);
        out.clear();
        encode_pingreq(&mut out);
        encode_disconnect(&mut out);
        assert_eq!(out, [0xc0, 0, 0xe0, 0]);
    }

    #[test]
    fn remaining_length() {
        for (n, want) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 1]),
            (MAX_REMAINING, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            encode_len(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
        // A 200-byte body takes a 2-byte length, and parses back.
        let body = vec![b'b'; 200];
        let mut input = Vec::new();
        encode_publish(&mut input, "topic", &body);
        assert_eq!(&input[1..3], &[0xcf, 0x01]);
        for (seen, r) in run(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen.len(), 1);
            assert!(seen[0].starts_with("msg topic  200 bbbb"));
        }
    }

    #[test]
    fn broker_stream_split_at_every_byte() {
        let mut input = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0];
        encode_publish(&mut input, "flood", b"hello");
        // QoS 1 with a packet id, and an empty payload.
        input.extend_from_slice(&[0x32, 7, 0, 3, b'a', b'/', b'b', 0, 9]);
        input.extend_from_slice(&[0xd0, 0]);
        input.extend_from_slice(&[0x30, 2, 0, 0]);
        let want = vec![
            "subscribed".to_string(),
            "msg flood  5 hello".to_string(),
            "msg a/b  0 ".to_string(),
            "pong".to_string(),
            "msg   0 ".to_string(),
        ];
        for (seen, r) in run(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn refusals_and_errors() {
        for (seen, r) in run(&[0x20, 2, 0, 5]) {
            assert!(seen.is_empty());
            assert_eq!(
                r,
                Err(Error::Refused("CONNACK 5: not authorised".to_string()))
            );
        }
        for (_, r) in run(&[0x20, 2, 0, 0, 0x90, 3, 0, 1, 0x80]) {
            assert!(matches!(r, Err(Error::Refused(_))));
        }
        let bad: &[&[u8]] = &[
            &[0x30, 0xff, 0xff, 0xff, 0xff, 1],
            &[0x30, 1, 0],
            &[0x30, 3, 0, 5, b'a'],
            &[0x36, 2, 0, 0],
            &[0x10, 0],
            &[0x20, 3, 0, 0, 0],
            &[0x90, 2, 0, 1],
        ];
        for &c in bad {
            for (_, r) in run(c) {
                assert!(matches!(r, Err(Error::Protocol(_))), "{c:?}");
            }
        }
    }
}
