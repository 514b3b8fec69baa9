//! The protocols of the servers switchboard is compared with (NATS, Redis
//! pub/sub, MQTT 3.1.1), behind one face for the event loops: what a
//! subscriber or a publisher sends first, how a message is published, how a
//! publisher asks for proof that everything before was processed, and one
//! parser type. The codecs are `nats`, `resp` and `mqtt`.
//!
//! How each connection knows where it stands:
//!
//! | | subscribed | publisher ready | publishes processed |
//! |---|---|---|---|
//! | nats | `PONG` after `SUB` | `PONG` after `CONNECT` | `PONG` after the last `PUB` |
//! | redis | the `subscribe` reply | at connect | every `PUBLISH` answered |
//! | mqtt | `SUBACK` | `PINGRESP` after `CONNECT` | `PINGRESP` after the last `PUBLISH` |

use crate::cli::Proto;
use crate::codec::{Error, Event};
use crate::{mqtt, nats, resp};

/// A client name for the protocols that want one (MQTT's client id must be
/// unique on the broker: a second connection with the same id takes the
/// first one's place).
pub fn client_id(role: &str, index: usize) -> String {
    format!("flood-{role}-{}-{index}", std::process::id())
}

/// What a subscriber sends once connected.
pub fn subscribe(out: &mut Vec<u8>, proto: Proto, channel: &str, client: &str) {
    match proto {
        Proto::Nats => {
            nats::encode_connect(out, client);
            nats::encode_sub(out, channel, 1);
            nats::encode_ping(out);
        }
        Proto::Redis => resp::encode_subscribe(out, channel),
        Proto::Mqtt => {
            mqtt::encode_connect(out, client);
            mqtt::encode_subscribe(out, 1, channel);
        }
        _ => {}
    }
}

/// What a publisher sends once connected. True when it must then wait for
/// a `Pong` before publishing; false when it is ready at once.
pub fn start_publisher(out: &mut Vec<u8>, proto: Proto, client: &str) -> bool {
    match proto {
        Proto::Nats => {
            nats::encode_connect(out, client);
            nats::encode_ping(out);
            true
        }
        Proto::Mqtt => {
            mqtt::encode_connect(out, client);
            mqtt::encode_pingreq(out);
            true
        }
        _ => false,
    }
}

/// Appends one publish of `body` on `channel`.
pub fn publish(out: &mut Vec<u8>, proto: Proto, channel: &str, body: &[u8]) {
    match proto {
        Proto::Nats => nats::encode_pub(out, channel, body),
        Proto::Redis => resp::encode_publish(out, channel, body),
        Proto::Mqtt => mqtt::encode_publish(out, channel, body),
        _ => {}
    }
}

/// A publisher's last words: a ping whose `Pong` proves every publish
/// before it was processed. False for Redis, whose every publish is
/// answered (the loop counts the answers instead).
pub fn end_publisher(out: &mut Vec<u8>, proto: Proto) -> bool {
    match proto {
        Proto::Nats => {
            nats::encode_ping(out);
            true
        }
        Proto::Mqtt => {
            mqtt::encode_pingreq(out);
            true
        }
        _ => false,
    }
}

/// The answer to the server's `Event::Ping`.
pub fn answer_ping(out: &mut Vec<u8>, proto: Proto) {
    if proto == Proto::Nats {
        nats::encode_pong(out);
    }
}

/// A parser of what one of these servers sends.
#[derive(Debug)]
pub enum Parser {
    Nats(nats::Parser),
    Redis(resp::Parser),
    Mqtt(mqtt::Parser),
}

impl Parser {
    /// `None` for switchboard's own doors.
    pub fn new(proto: Proto) -> Option<Parser> {
        match proto {
            Proto::Nats => Some(Parser::Nats(nats::Parser::default())),
            Proto::Redis => Some(Parser::Redis(resp::Parser::default())),
            Proto::Mqtt => Some(Parser::Mqtt(mqtt::Parser::default())),
            _ => None,
        }
    }

    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        match self {
            Parser::Nats(p) => p.feed(data, on),
            Parser::Redis(p) => p.feed(data, on),
            Parser::Mqtt(p) => p.feed(data, on),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings() {
        let mut out = Vec::new();
        subscribe(&mut out, Proto::Redis, "c", "x");
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n");
        out.clear();
        subscribe(&mut out, Proto::Nats, "c", "x");
        assert!(out.ends_with(b"\r\nSUB c 1\r\nPING\r\n"));
        out.clear();
        assert!(start_publisher(&mut out, Proto::Mqtt, "x"));
        assert!(out.ends_with(&[0xc0, 0]));
        out.clear();
        assert!(!start_publisher(&mut out, Proto::Redis, "x"));
        assert!(out.is_empty());
        assert!(!end_publisher(&mut out, Proto::Redis));
        assert!(end_publisher(&mut out, Proto::Nats));
        assert_eq!(out, b"PING\r\n");
        assert!(Parser::new(Proto::Line).is_none());
    }
}
