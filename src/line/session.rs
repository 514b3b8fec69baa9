//! One line-protocol connection: its commands applied to the broker, and the
//! broker's answers framed for it. The line door of the [`Door`] contract.
//!
//! Commands run in order, one at a time: while a `<` or `?` waits for its
//! answer, the commands after it stay unread in the connection's buffer, as
//! in msglite, where each connection was served by one sequential loop.

use std::collections::HashSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{Command, Decoder, LineError, Ranges, Raw};
use super::wire::{message_head, message_head_len, DEFAULT_CONTENT_TYPE};
use crate::auth::{self, Action, Grant};
use crate::broker::filter::Filter;
use crate::broker::frames::Framing;
use crate::broker::pattern::{self, Name};
use crate::broker::{QueueFull, Ready, Subscription, WaitId};
use crate::config::Config;
use crate::door::{Answer, CloseReason, Cx, Door, Next, Opener};

/// The channel name that means "every channel" in `+` and `~`.
pub const ALL_CHANNELS: &[u8] = b"*";

/// The answer to a timed-out wait.
pub const TIMEOUT_FRAME: &[u8] = b"*\r\n";

/// The answer to a send refused because its queue is full; the connection
/// stays open.
pub const QUEUE_FULL_FRAME: &[u8] = b"- queue full\r\n";
/// The answer to a send the store could not record (`--data-dir`).
pub const STORE_FRAME: &[u8] = b"- store unavailable\r\n";

fn refused_frame(e: QueueFull) -> Bytes {
    Bytes::from_static(match e {
        QueueFull::Full => QUEUE_FULL_FRAME,
        QueueFull::Store => STORE_FRAME,
    })
}

/// Bodies from this size on are sent as they are, between a header frame
/// and a CRLF, instead of being copied into one frame.
const SHARED_BODY: usize = 16 * 1024;

/// The line door's opener: every connection gets the limits of `config`,
/// and must authenticate first when `--secret` or `--token-key` is set.
pub fn opener(config: &Config) -> Opener {
    let (max_line, max_body, max_subs) = (
        config.limits.max_line,
        config.limits.max_body,
        config.limits.max_subscriptions,
    );
    Box::new(move || Box::new(LineSession::new(max_line, max_body, max_subs)))
}

pub struct LineSession {
    max_subscriptions: usize,
    decoder: Decoder,
    waiting: Option<WaitId>,
    /// How many messages the wait may still get: a `<<`'s wait takes those
    /// of the turn that answers it, up to its count (see
    /// `Queues::wait_for`), and ends with the last of them or a `*`.
    left: u32,
    /// Its channels: a set, so that a repeated `+` or a `~` costs the same
    /// however many it holds.
    subscriptions: HashSet<Bytes>,
    /// Set once the connection must close (after `.`, or malformed input).
    closing: Option<CloseReason>,
    /// What a good `@` showed (boxed: most connections never show one, and
    /// an idle connection stays small). Whether credentials are required at
    /// all is read per command (`Cx::live`, so a reload applies to the next
    /// one).
    grant: Option<Box<Grant>>,
}

impl LineSession {
    pub fn new(max_line: usize, max_body: usize, max_subscriptions: usize) -> LineSession {
        LineSession {
            max_subscriptions,
            decoder: Decoder::new(max_line, max_body),
            waiting: None,
            left: 0,
            subscriptions: HashSet::new(),
            closing: None,
            grant: None,
        }
    }

    /// Refuses with `- unauthorized: reason` and closes.
    fn unauthorized(&mut self, cx: &mut Cx<'_>, why: &str) {
        log::info!("line connection {}: unauthorized: {why}", cx.me.key);
        let frame = format!("- unauthorized: {why}\r\n");
        cx.send(Bytes::from(frame));
        self.closing = Some(CloseReason::ProtocolError);
    }

    /// True when the command may run: always without credentials required;
    /// else when `@` showed a credential that has not expired and allows
    /// `action` on each of `names` (`- forbidden: …` otherwise; the
    /// connection stays open). `None` checks only the credential.
    fn allowed<N: AsRef<[u8]>>(
        &mut self,
        cx: &mut Cx<'_>,
        action: Option<Action>,
        names: &[N],
    ) -> bool {
        if !cx.live.access.required() {
            return true;
        }
        let Some(grant) = &self.grant else {
            self.unauthorized(cx, "authenticate first: @ credential");
            return false;
        };
        if grant.expired(auth::now_s()) {
            self.unauthorized(cx, "token expired");
            return false;
        }
        let Some(action) = action else {
            return true;
        };
        if let Some(name) = names.iter().find(|n| !grant.allows(action, n.as_ref())) {
            let frame = format!(
                "- forbidden: {} {}\r\n",
                action.as_str(),
                String::from_utf8_lossy(name.as_ref())
            );
            cx.send(Bytes::from(frame));
            return false;
        }
        true
    }

    /// The sender written into this connection's publishes: a token's subject.
    fn sender(&self) -> Option<&[u8]> {
        self.grant
            .as_ref()
            .and_then(|g| g.subject.as_deref())
            .map(str::as_bytes)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    fn fail(&mut self, cx: &mut Cx<'_>, e: LineError) {
        log::debug!("line connection {}: {e}", cx.me.key);
        let mut frame = BytesMut::with_capacity(64);
        frame.put_slice(b"- ");
        frame.put_slice(e.to_string().as_bytes());
        frame.put_slice(b"\r\n");
        cx.send(frame.freeze());
        self.closing = Some(CloseReason::ProtocolError);
    }

    /// Frames what a wait got at once.
    fn took(&mut self, cx: &mut Cx<'_>, ready: Ready) {
        match ready {
            Ready::Message(m) => {
                let me = cx.me;
                let out = &mut *cx.out;
                write_answer(Answer::Message(m.delivery()), &mut |f| {
                    out.deliver(me, f, 0);
                });
            }
            Ready::TimedOut => {
                cx.send(Bytes::from_static(TIMEOUT_FRAME));
            }
            Ready::Waiting(w) => {
                self.waiting = Some(w);
                self.left = 1;
            }
        }
    }

    /// The rest of a `<<` whose first message was queued: the messages
    /// already queued on `addresses`, up to `left`, then `*` if fewer came.
    /// It stops early, with `*`, once the connection's unsent output
    /// reaches the backlog limit.
    fn take_more(&mut self, cx: &mut Cx<'_>, addresses: &[Bytes], left: u32) {
        let mut taken = 0;
        while taken < left && !cx.backlogged() {
            let Some(message) = cx.broker.poll(cx.now, addresses, cx.out) else {
                break;
            };
            self.took(cx, Ready::Message(message));
            taken += 1;
        }
        if taken < left {
            cx.send(Bytes::from_static(TIMEOUT_FRAME));
        }
    }

    fn apply(&mut self, cx: &mut Cx<'_>, cmd: Command) {
        let (me, now) = (cx.me, cx.now);
        match cmd {
            Command::Send {
                to,
                reply,
                timeout_s,
                body,
            } => {
                if !self.allowed(cx, Some(Action::Send), &[&to]) {
                    return;
                }
                if let Err(e) = cx.broker.send(now, to, reply, timeout_s, body, cx.out) {
                    cx.send(refused_frame(e));
                }
            }
            Command::Ready {
                timeout_s,
                addresses,
                count,
            } => {
                if !self.allowed(cx, Some(Action::Receive), &addresses) {
                    // The client reads `- forbidden` instead of a message.
                    return;
                }
                // A `<<` that finds a message queued takes the rest of its
                // count from the queues at once (no copy of its addresses
                // for later: a wait takes the rest through `on_answer`).
                if count > 1 {
                    if let Some(first) = cx.broker.poll(now, &addresses, cx.out) {
                        self.took(cx, Ready::Message(first));
                        self.take_more(cx, &addresses, count - 1);
                        return;
                    }
                }
                let ready = cx
                    .broker
                    .ready_for(now, me, timeout_s, addresses, count, cx.out);
                self.took(cx, ready);
                if self.waiting.is_some() {
                    self.left = count;
                }
            }
            Command::Query {
                timeout_s,
                to,
                body,
            } => {
                if !self.allowed(cx, Some(Action::Send), &[&to]) {
                    return;
                }
                match cx.broker.query(now, me, timeout_s, to, body, cx.out) {
                    Ok(ready) => self.took(cx, ready),
                    Err(e) => {
                        cx.send(refused_frame(e));
                    }
                }
            }
            Command::Quit => self.closing = Some(CloseReason::Quit),
            Command::Presence { name } => {
                // Counts say who listens: the token must let it listen too.
                if !self.allowed(cx, Some(Action::Subscribe), &[&name]) {
                    return;
                }
                let answer = presence_line(cx, &name);
                cx.send(answer);
            }
            Command::Subscribe { channel, since } => {
                if since.is_some() && !cx.broker.channels.keeps_history() {
                    self.fail(cx, LineError::HistoryOff);
                    return;
                }
                // `*` and `>` alone are one subscription: every channel.
                let channel = match pattern::classify(&channel) {
                    Ok(Name::All) => Bytes::from_static(ALL_CHANNELS),
                    _ => channel,
                };
                // Every channel is the pattern `>` to a token.
                let asked: &[u8] = if channel == ALL_CHANNELS {
                    b">"
                } else {
                    &channel
                };
                if !self.allowed(cx, Some(Action::Subscribe), &[asked]) {
                    return;
                }
                let known = self.subscriptions.contains(&channel);
                if known && since.is_none() {
                    return;
                }
                // Patterns count as subscriptions like channels do.
                if !known && self.subscriptions.len() >= self.max_subscriptions {
                    self.fail(cx, LineError::TooManySubscriptions(self.max_subscriptions));
                    return;
                }
                // A subscription that resumes gets each message's id (the
                // fifth field of `!`), to resume from again later.
                let sub = match since {
                    Some(_) => Subscription::new(Framing::LineIds, Filter::default()),
                    None => Subscription::line(),
                };
                let subscribed = cx
                    .broker
                    .channels
                    .subscribe(me, channel.clone(), sub, cx.out);
                if let Err(e) = subscribed {
                    self.fail(cx, LineError::Pattern(e));
                    return;
                }
                if let Some(since) = since {
                    let mut replay = BytesMut::new();
                    let names = std::slice::from_ref(&channel);
                    let framing = Framing::LineIds;
                    cx.broker.channels.replay(
                        names,
                        since,
                        framing,
                        &Filter::default(),
                        &mut replay,
                    );
                    if !replay.is_empty() {
                        cx.send(replay.freeze());
                    }
                }
                // An exact-size copy: a slice would keep the whole read
                // buffer it came from alive for as long as the subscription
                // lasts.
                self.subscriptions.insert(Bytes::copy_from_slice(&channel));
            }
            Command::Unsubscribe { channel } => {
                if !self.allowed::<&[u8]>(cx, None, &[]) {
                    return;
                }
                let channel = match pattern::classify(&channel) {
                    Ok(Name::All) => Bytes::from_static(ALL_CHANNELS),
                    _ => channel,
                };
                unsubscribe(cx, &channel);
                self.subscriptions.remove(&channel);
                if self.subscriptions.len() * 2 < self.subscriptions.capacity() {
                    self.subscriptions.shrink_to_fit();
                }
            }
            // Never built here: `on_input` publishes straight from the
            // input buffer (`Raw::Publish`) and never makes this command.
            Command::Publish { .. } => {}
            Command::Auth { credential } => {
                if !cx.live.access.required() {
                    // Nothing is required: an `@` changes nothing.
                    return;
                }
                match cx.live.access.check(&credential) {
                    Ok(grant) => self.grant = Some(Box::new(grant)),
                    Err(refusal) => self.unauthorized(cx, &refusal.to_string()),
                }
            }
        }
    }
}

/// `= NAME TOTAL line=N http=N receivers=N`: the subscriptions to a
/// channel or pattern, per door, and (for a channel) how many subscriptions
/// a message published there reaches. A malformed pattern counts nothing.
fn presence_line(cx: &Cx<'_>, name: &[u8]) -> Bytes {
    let p = cx.broker.channels.presence(name).unwrap_or_default();
    let mut line = BytesMut::with_capacity(name.len() + 64);
    line.put_slice(b"= ");
    line.put_slice(name);
    line.put_slice(format!(" {}", p.total()).as_bytes());
    for (door, n) in p.per_door() {
        line.put_slice(format!(" {door}={n}").as_bytes());
    }
    line.put_slice(format!(" receivers={}\r\n", p.receivers).as_bytes());
    line.freeze()
}

fn unsubscribe(cx: &mut Cx<'_>, channel: &[u8]) {
    cx.broker.channels.unsubscribe(cx.me, channel, cx.out);
}

impl Door for LineSession {
    /// Runs every complete command in `input`, leaving a partial one there.
    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        // Output backpressure: commands stay in the input until what was
        // answered so far has drained (the shell resumes the door then).
        // Checked on entry and after each command that answers: a publish
        // queues nothing for its own connection until the batch is sealed,
        // so the per-message fast path makes no such call.
        let mut backlogged = cx.backlogged();
        while self.closing.is_none() && self.waiting.is_none() && !backlogged {
            let (raw, n) = match self.decoder.decode_raw(input) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    self.fail(cx, e);
                    input.clear();
                    break;
                }
            };
            cx.progress();
            // The fast path: a publish is framed straight from the input
            // buffer, with no allocation and no reference counting.
            if let Raw::Publish {
                channel,
                content_type,
                body,
            } = raw
            {
                // With credentials required, the grant is checked and its
                // subject is the sender; without, nothing is checked.
                if self.allowed(cx, Some(Action::Publish), &[channel]) {
                    let content_type = content_type.unwrap_or(DEFAULT_CONTENT_TYPE);
                    cx.broker
                        .channels
                        .publish(channel, content_type, self.sender(), body, cx.out);
                }
                input.advance(n);
                continue;
            }
            let ranges = Ranges::of(&raw, input);
            let frame = input.split_to(n).freeze();
            if let Some(cmd) = ranges.to_command(&frame) {
                self.apply(cx, cmd);
                backlogged = cx.backlogged();
            }
        }
        if let Some(reason) = self.closing {
            Next::Close(reason)
        } else if self.waiting.is_some() {
            Next::Paused
        } else {
            Next::Read
        }
    }

    fn on_answer(&mut self, answer: Answer<'_>, send: &mut dyn FnMut(Bytes)) -> bool {
        if matches!(answer, Answer::Switch(_) | Answer::Done(_)) || self.waiting.is_none() {
            return false;
        }
        // A `<<` waits on until its last message or a `*` (which ends the
        // turn's batch, or a timeout before any message).
        self.left = self.left.saturating_sub(1);
        if matches!(answer, Answer::Timeout) || self.left == 0 {
            self.waiting = None;
        }
        write_answer(answer, send);
        true
    }

    fn is_paused(&self) -> bool {
        self.waiting.is_some()
    }

    fn mid_request(&self) -> bool {
        false
    }

    /// Withdraws everything the connection holds in the broker.
    fn on_close(&mut self, cx: &mut Cx<'_>) {
        if let Some(w) = self.waiting.take() {
            cx.broker.cancel(w);
        }
        for channel in std::mem::take(&mut self.subscriptions) {
            unsubscribe(cx, &channel);
        }
    }
}

/// Frames an answer: `> LEN TIMEOUT TO [REPLY]` + body, or `*`. A large body
/// goes out as the shared `Bytes` it is, between its command line and a CRLF.
pub fn write_answer(answer: Answer<'_>, send: &mut dyn FnMut(Bytes)) {
    let d = match answer {
        Answer::Timeout => {
            send(Bytes::from_static(TIMEOUT_FRAME));
            return;
        }
        Answer::Message(d) => d,
        // Never a line wait's answer (refused in `on_answer`).
        Answer::Switch(_) | Answer::Done(_) => return,
    };
    // The head line and a copied body in one allocation of their exact size
    // (frozen with room to spare, it would cost a second one).
    let line = message_head_len(d.to, d.reply, d.timeout_s, d.body.len());
    if d.body.len() < SHARED_BODY {
        let body = if d.body.is_empty() {
            0
        } else {
            d.body.len() + 2
        };
        let mut head = BytesMut::with_capacity(line + body);
        message_head(&mut head, d.to, d.reply, d.timeout_s, d.body.len());
        if !d.body.is_empty() {
            head.put_slice(d.body);
            head.put_slice(b"\r\n");
        }
        send(head.freeze());
        return;
    }
    let mut head = BytesMut::with_capacity(line);
    message_head(&mut head, d.to, d.reply, d.timeout_s, d.body.len());
    send(head.freeze());
    send(d.body.clone());
    send(Bytes::from_static(b"\r\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, ConnId, RecordingOutbox};
    use crate::door::{Delivery, Stats};

    fn run(
        session: &mut LineSession,
        me: ConnId,
        now: u64,
        input: &mut BytesMut,
        broker: &mut Broker,
        out: &mut RecordingOutbox,
    ) -> Next {
        let stats = Stats::default();
        let mut cx = Cx::new(me, now, broker, out, &stats);
        let next = session.on_input(&mut cx, input);
        cx.broker.seal(cx.out);
        next
    }

    #[test]
    fn wait_pauses_the_commands_after_it() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"< 5 a\r\n+ ch\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Paused
        );
        assert!(s.is_paused());
        assert_eq!(&buf[..], b"+ ch\r\n");
        assert_eq!(broker.channels.subscription_count(), 0);
        broker.queues.on_timers(5000, &mut out);
        assert_eq!(out.answers_for(me), vec![None]);
        let mut sent = Vec::new();
        assert!(s.on_answer(Answer::Timeout, &mut |f| sent.push(f)));
        assert_eq!(sent, vec![Bytes::from_static(b"*\r\n")]);
        // Nothing waits any more: a second answer is refused.
        assert!(!s.on_answer(Answer::Timeout, &mut |f| sent.push(f)));
        assert_eq!(
            run(&mut s, me, 5000, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(broker.channels.subscription_count(), 1);
    }

    #[test]
    fn a_queued_message_is_framed_at_once() {
        let (me, other) = (ConnId { key: 1, gen: 1 }, ConnId { key: 2, gen: 1 });
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"> 2 30 a r\r\nhi\r\n"[..]);
        let mut sender = LineSession::new(4096, 1 << 20, 100);
        run(&mut sender, other, 0, &mut buf, &mut broker, &mut out);
        let mut buf = BytesMut::from(&b"< 5 a\r\n< 0 a\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 1, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(out.bytes_for(me), b"> 2 30 a r\r\nhi\r\n*\r\n");
    }

    #[test]
    fn large_bodies_are_not_copied_into_the_frame() {
        let body = Bytes::from(vec![b'x'; SHARED_BODY]);
        let d = Delivery {
            to: b"a",
            reply: None,
            timeout_s: 1,
            body: &body,
        };
        let mut sent = Vec::new();
        write_answer(Answer::Message(d), &mut |f| sent.push(f));
        assert_eq!(sent.len(), 3);
        assert_eq!(&sent[0][..], format!("> {SHARED_BODY} 1 a\r\n").as_bytes());
        assert_eq!(sent[1].as_ptr(), body.as_ptr());
        assert_eq!(&sent[2][..], b"\r\n");
    }

    #[test]
    fn bodies_under_16_kib_are_copied_into_one_frame() {
        let body = Bytes::from(vec![b'y'; 16 * 1024 - 1]);
        let d = Delivery {
            to: b"a",
            reply: Some(b"r"),
            timeout_s: 2,
            body: &body,
        };
        let mut sent = Vec::new();
        write_answer(Answer::Message(d), &mut |f| sent.push(f));
        assert_eq!(sent.len(), 1);
        let mut want = format!("> {} 2 a r\r\n", body.len()).into_bytes();
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
        assert_eq!(&sent[0][..], &want[..]);
        // From 16 KiB on, the body goes as it is, between two frames.
        let body = Bytes::from(vec![b'y'; 16 * 1024]);
        let d = Delivery {
            to: b"a",
            reply: None,
            timeout_s: 2,
            body: &body,
        };
        let mut sent = Vec::new();
        write_answer(Answer::Message(d), &mut |f| sent.push(f));
        assert_eq!(sent.len(), 3);
        // An empty body is the command line alone.
        let empty = Bytes::new();
        let d = Delivery {
            to: b"a",
            reply: None,
            timeout_s: 2,
            body: &empty,
        };
        let mut sent = Vec::new();
        write_answer(Answer::Message(d), &mut |f| sent.push(f));
        assert_eq!(sent, vec![Bytes::from_static(b"> 0 2 a\r\n")]);
    }

    #[test]
    fn star_and_greater_than_are_one_subscription() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"+ *\r\n+ >\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(s.subscription_count(), 1);
        let mut buf = BytesMut::from(&b"~ >\r\n"[..]);
        run(&mut s, me, 0, &mut buf, &mut broker, &mut out);
        assert_eq!(s.subscription_count(), 0);
        assert_eq!(broker.channels.subscription_count(), 0);
    }

    #[test]
    fn a_line_connection_never_holds_a_request() {
        // Only a wait pauses it, and a wait is not a request in progress:
        // the request timeout never closes a line connection.
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"> 5 30 a\r\nhel"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert!(!s.mid_request());
        assert!(!s.is_paused());
        let mut buf = BytesMut::from(&b"< 5 b\r\n"[..]);
        let mut t = LineSession::new(4096, 1 << 20, 100);
        let other = ConnId { key: 2, gen: 1 };
        assert_eq!(
            run(&mut t, other, 0, &mut buf, &mut broker, &mut out),
            Next::Paused
        );
        assert!(t.is_paused());
        assert!(!t.mid_request());
    }

    #[test]
    fn errors_answer_and_close() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b"bogus\r\n> 1 1 a\r\nx\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Close(CloseReason::ProtocolError)
        );
        assert_eq!(out.bytes_for(me), b"- invalid command\r\n");
        assert_eq!(broker.queues.queued(), 0);
    }

    #[test]
    fn a_full_queue_is_refused_and_the_connection_stays() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker {
            queues: crate::broker::Queues::new(1).with_limits(crate::broker::queues::QueueLimits {
                per_address: 100,
                total: 1000,
            }),
            ..Broker::default()
        };
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(
            &b"> 3 60 a\r\none\r\n> 3 60 a\r\ntwo\r\n? 3 60 a\r\nthr\r\n+ c\r\n"[..],
        );
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(out.bytes_for(me), b"- queue full\r\n- queue full\r\n");
        assert_eq!(broker.queues.queued(), 1);
        assert_eq!(broker.queues.waiting(), 0);
        assert_eq!(s.subscription_count(), 1);
    }

    #[test]
    fn quit_closes() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 100);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let mut buf = BytesMut::from(&b".\r\n+ a\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Close(CloseReason::Quit)
        );
        assert_eq!(s.subscription_count(), 0);
    }

    #[test]
    fn subscriptions_per_connection_are_limited() {
        let me = ConnId { key: 1, gen: 1 };
        let mut s = LineSession::new(4096, 1 << 20, 2);
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        // A repeated subscription does not count twice.
        let mut buf = BytesMut::from(&b"+ a\r\n+ a\r\n+ b\r\n~ b\r\n+ c\r\n+ d\r\n"[..]);
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Close(CloseReason::ProtocolError)
        );
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
        let mut buf = BytesMut::from(
            &b"+ CH\r\n+ CH.c7\r\n! 1 CH.c7 application/octet-stream\r\nc\r\n~ CH.c7\r\n"[..],
        );
        assert_eq!(
            run(&mut s, me, 0, &mut buf, &mut broker, &mut out),
            Next::Read
        );
        assert_eq!(
            out.bytes_for(me),
            b"! 1 CH.c7 application/octet-stream\r\nc\r\n"
        );
        assert_eq!(broker.channels.subscription_count(), 1);
        let stats = Stats::default();
        s.on_close(&mut Cx::new(me, 0, &mut broker, &mut out, &stats));
        assert_eq!(broker.channels.subscription_count(), 0);
    }
}
