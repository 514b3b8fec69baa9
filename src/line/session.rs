//! One line-protocol connection's state, and its commands applied to the broker.
//!
//! Commands run in order, one at a time: while a `<` or `?` waits for its
//! answer, the commands after it stay unread in the connection's buffer, as
//! in msglite, where each connection was served by one sequential loop.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{Command, Decoder, LineError, Ranges, Raw};
use crate::broker::{Broker, ConnId, Millis, Outbox, Subscription, WaitId};

/// The content type of a publish that names none.
pub const DEFAULT_CONTENT_TYPE: &[u8] = b"application/octet-stream";

/// The channel name that means "every channel" in `+` and `~`.
pub const ALL_CHANNELS: &[u8] = b"*";

/// What the connection should do after its input was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read more input.
    Read,
    /// A wait is pending; leave further input unread until it is answered.
    Paused,
    /// Flush what is queued, then close (after `.`).
    Close,
    /// Flush the error answer that is queued, then close.
    Refused,
}

pub struct LineSession {
    max_subscriptions: usize,
    decoder: Decoder,
    waiting: Option<WaitId>,
    subscriptions: Vec<Bytes>,
    closing: bool,
    /// Closing because of malformed input.
    refused: bool,
}

impl LineSession {
    pub fn new(max_line: usize, max_body: usize, max_subscriptions: usize) -> LineSession {
        LineSession {
            max_subscriptions,
            decoder: Decoder::new(max_line, max_body),
            waiting: None,
            subscriptions: Vec::new(),
            closing: false,
            refused: false,
        }
    }

    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Withdraws the pending wait unanswered: its client went away.
    pub fn withdraw_wait(&mut self, broker: &mut Broker) {
        if let Some(w) = self.waiting.take() {
            broker.queues.cancel(w);
        }
    }

    /// The pending wait was answered by the broker.
    pub fn wait_answered(&mut self) {
        self.waiting = None;
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Runs every complete command in `input`, leaving a partial one there.
    pub fn on_input(
        &mut self,
        me: ConnId,
        now: Millis,
        input: &mut BytesMut,
        broker: &mut Broker,
        out: &mut impl Outbox,
    ) -> Next {
        while !self.closing && self.waiting.is_none() {
            let (raw, n) = match self.decoder.decode_raw(input) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    self.fail(me, e, broker, out);
                    input.clear();
                    break;
                }
            };
            // The fast path: a publish is framed straight from the input
            // buffer, with no allocation and no reference counting.
            if let Raw::Publish {
                channel,
                content_type,
                body,
            } = raw
            {
                let content_type = content_type.unwrap_or(DEFAULT_CONTENT_TYPE);
                broker
                    .channels
                    .publish(channel, content_type, None, body, out);
                input.advance(n);
                continue;
            }
            let ranges = Ranges::of(&raw, input);
            let frame = input.split_to(n).freeze();
            if let Some(cmd) = ranges.to_command(&frame) {
                self.apply(me, now, cmd, broker, out);
            }
        }
        broker.seal(out);
        if self.refused {
            Next::Refused
        } else if self.closing {
            Next::Close
        } else if self.waiting.is_some() {
            Next::Paused
        } else {
            Next::Read
        }
    }

    fn fail(&mut self, me: ConnId, e: LineError, broker: &mut Broker, out: &mut impl Outbox) {
        log::debug!("line connection {}: {e}", me.key);
        broker.seal(out);
        let mut frame = BytesMut::with_capacity(64);
        frame.put_slice(b"- ");
        frame.put_slice(e.to_string().as_bytes());
        frame.put_slice(b"\r\n");
        out.deliver(me, frame.freeze(), 0);
        self.closing = true;
        self.refused = true;
    }

    fn apply(
        &mut self,
        me: ConnId,
        now: Millis,
        cmd: Command,
        broker: &mut Broker,
        out: &mut impl Outbox,
    ) {
        if !matches!(cmd, Command::Publish { .. }) {
            broker.seal(out);
        }
        match cmd {
            Command::Send {
                to,
                reply,
                timeout_s,
                body,
            } => broker.queues.send(now, to, reply, timeout_s, body, out),
            Command::Ready {
                timeout_s,
                addresses,
            } => self.waiting = broker.queues.ready(now, me, timeout_s, addresses, out),
            Command::Query {
                timeout_s,
                to,
                body,
            } => self.waiting = broker.queues.query(now, me, timeout_s, to, body, out),
            Command::Quit => self.closing = true,
            Command::Subscribe { channel } => {
                if self.subscriptions.contains(&channel) {
                    return;
                }
                if self.subscriptions.len() >= self.max_subscriptions {
                    self.fail(
                        me,
                        LineError::TooManySubscriptions(self.max_subscriptions),
                        broker,
                        out,
                    );
                    return;
                }
                if channel == ALL_CHANNELS {
                    broker.channels.subscribe_all(me, Subscription::line(), out);
                } else {
                    broker
                        .channels
                        .subscribe(me, channel.clone(), Subscription::line(), out);
                }
                // An exact-size copy: a slice would keep the whole read
                // buffer it came from alive for as long as the subscription
                // lasts.
                self.subscriptions.push(Bytes::copy_from_slice(&channel));
            }
            Command::Unsubscribe { channel } => {
                self.unsubscribe(me, &channel, broker, out);
                self.subscriptions.retain(|c| *c != channel);
                if self.subscriptions.len() * 2 < self.subscriptions.capacity() {
                    self.subscriptions.shrink_to_fit();
                }
            }
            Command::Publish {
                channel,
                content_type,
                body,
            } => {
                let content_type = content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
                broker
                    .channels
                    .publish(&channel, content_type, None, &body, out);
            }
        }
    }

    fn unsubscribe(&self, me: ConnId, channel: &[u8], broker: &mut Broker, out: &mut impl Outbox) {
        if channel == ALL_CHANNELS {
            broker.channels.unsubscribe_all(me, out);
        } else {
            broker.channels.unsubscribe(me, channel, out);
        }
    }

    /// Withdraws everything the connection holds in the broker; call once, as
    /// it closes.
    pub fn on_close(&mut self, me: ConnId, broker: &mut Broker, out: &mut impl Outbox) {
        if let Some(w) = self.waiting.take() {
            broker.queues.cancel(w);
        }
        for channel in std::mem::take(&mut self.subscriptions) {
            self.unsubscribe(me, &channel, broker, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::RecordingOutbox;

    fn run(
        session: &mut LineSession,
        me: ConnId,
        input: &[u8],
        broker: &mut Broker,
        out: &mut RecordingOutbox,
    ) -> Next {
        let mut buf = BytesMut::from(input);
        session.on_input(me, 0, &mut buf, broker, out)
    }

    #[test]
    fn wait_pauses_the_commands_after_it() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"< 5 a\r\n+ ch\r\n"[..]);
        assert_eq!(
            s.on_input(me, 0, &mut buf, &mut broker, &mut out),
            Next::Paused
        );
        assert_eq!(&buf[..], b"+ ch\r\n");
        assert_eq!(broker.channels.subscription_count(), 0);
        broker.queues.on_timers(5000, &mut out);
        s.wait_answered();
        assert_eq!(
            s.on_input(me, 5000, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(broker.channels.subscription_count(), 1);
        assert_eq!(out.bytes_for(me), b"*\r\n");
    }

    #[test]
    fn errors_answer_and_close() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        assert_eq!(
            run(
                &mut s,
                me,
                b"bogus\r\n> 1 1 a\r\nx\r\n",
                &mut broker,
                &mut out
            ),
            Next::Refused
        );
        assert_eq!(out.bytes_for(me), b"- invalid command\r\n");
        assert_eq!(broker.queues.queued(), 0);
    }

    #[test]
    fn subscriptions_per_connection_are_limited() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 2);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        // A repeated subscription does not count twice.
        let input = b"+ a\r\n+ a\r\n+ b\r\n~ b\r\n+ c\r\n+ d\r\n";
        assert_eq!(run(&mut s, me, input, &mut broker, &mut out), Next::Refused);
        assert_eq!(
            out.bytes_for(me),
            b"- too many subscriptions (limit 2 per connection)\r\n"
        );
        assert_eq!(broker.channels.subscription_count(), 2);
    }

    #[test]
    fn self_subscription_probe_round_trip() {
        let me = ConnId { key: 7, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let probe = b"+ CH\r\n+ CH.c7\r\n! 1 CH.c7 application/octet-stream\r\nc\r\n~ CH.c7\r\n";
        assert_eq!(run(&mut s, me, probe, &mut broker, &mut out), Next::Read);
        assert_eq!(
            out.bytes_for(me),
            b"! 1 CH.c7 application/octet-stream\r\nc\r\n"
        );
        assert_eq!(broker.channels.subscription_count(), 1);
        s.on_close(me, &mut broker, &mut out);
        assert_eq!(broker.channels.subscription_count(), 0);
    }
}
