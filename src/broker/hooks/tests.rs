//! The engine driven with a virtual clock: dials and hang-ups are read from
//! its requests, requests from a recording outbox, answers fed by hand.

use super::*;
use crate::broker::RecordingOutbox;

struct World {
    hooks: Hooks,
    channels: Channels,
    out: RecordingOutbox,
    now: Millis,
    next_key: u32,
}

fn ok() -> Reply {
    Reply {
        status: 204,
        retry_after_s: None,
        keep_alive: true,
    }
}

fn status(s: u16) -> Reply {
    Reply { status: s, ..ok() }
}

impl World {
    fn new(settings: Settings) -> World {
        World {
            hooks: Hooks::new(settings, 1_700_000_000),
            channels: Channels::default(),
            out: RecordingOutbox::default(),
            now: 1_000,
            next_key: 0,
        }
    }

    fn receiver(&mut self, port: u16) -> ClientId {
        let url = format!("http://127.0.0.1:{port}/in");
        self.hooks
            .connect(&url, Mode::Receive, None, &mut self.channels)
            .unwrap()
    }

    fn sender(&mut self) -> ClientId {
        self.hooks
            .connect("anything", Mode::Send, None, &mut self.channels)
            .unwrap()
    }

    fn send(&mut self, from: ClientId, body: &str) -> Result<(), Refused> {
        self.hooks.send(self.now, from, body, &mut self.out)
    }

    /// Dials asked for since the last call: (link, port).
    fn dials(&mut self) -> Vec<(u64, u16)> {
        self.hooks
            .take_links()
            .into_iter()
            .filter_map(|r| match r {
                LinkRequest::Dial(d) => {
                    assert_eq!(d.door, LINK_DOOR);
                    Some((d.tag, d.port))
                }
                LinkRequest::HangUp { .. } => None,
            })
            .collect()
    }

    /// A receiver on port 1 and a sender whose first message, `body`, has
    /// its link dialled and up: (receiver, sender, link, its connection).
    fn delivering(&mut self, body: &str) -> (ClientId, ClientId, u64, ConnId) {
        let r = self.receiver(1);
        let s = self.sender();
        self.send(s, body).unwrap();
        let (link, _) = self.dials()[0];
        let conn = self.up(link);
        (r, s, link, conn)
    }

    /// Connects link `link`; returns its connection.
    fn up(&mut self, link: u64) -> ConnId {
        self.next_key += 1;
        let conn = ConnId {
            key: self.next_key,
            gen: 1,
        };
        assert!(self.hooks.link_up(link, conn, self.now, &mut self.out));
        conn
    }

    /// The bodies of the requests written to `conn` since the last call.
    fn bodies(&mut self, conn: ConnId) -> Vec<String> {
        let text = String::from_utf8(self.out.bytes_for(conn)).unwrap();
        self.out.frames.retain(|(c, _, _)| *c != conn);
        text.split("POST ")
            .filter(|r| !r.is_empty())
            .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
            .collect()
    }

    fn heads(&mut self, conn: ConnId) -> Vec<String> {
        let text = String::from_utf8(self.out.bytes_for(conn)).unwrap();
        self.out.frames.retain(|(c, _, _)| *c != conn);
        text.split("POST ")
            .filter(|r| !r.is_empty())
            .map(|r| r.split("\r\n\r\n").next().unwrap_or("").to_string())
            .collect()
    }

    fn reply(&mut self, link: u64, reply: Reply) -> bool {
        self.hooks.on_reply(link, reply, self.now, &mut self.out)
    }

    /// The one link request is to hang up `conn`'s link.
    fn hung_up(&mut self, conn: ConnId, timed_out: bool) {
        assert_eq!(
            self.hooks.take_links(),
            vec![LinkRequest::HangUp { conn, timed_out }]
        );
    }

    fn at(&mut self, now: Millis) {
        self.now = now;
        self.hooks.on_timers(now, &mut self.out);
    }

    fn counts(&self, id: ClientId) -> Counts {
        self.hooks
            .receivers()
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.counts)
            .unwrap()
    }
}

#[test]
fn delivers_in_order_on_one_kept_alive_link() {
    let mut w = World::new(Settings::default());
    let r = w.receiver(9000);
    let s = w.sender();
    assert_eq!((r, s), (1, 2));
    w.send(s, "one \"1\"\n").unwrap();
    w.send(s, "two").unwrap();
    let dials = w.dials();
    assert_eq!(dials.len(), 1, "one link for one at a time");
    let (link, port) = dials[0];
    assert_eq!(port, 9000);
    assert_eq!(w.hooks.in_flight(), 1);
    let conn = w.up(link);
    let heads = w.heads(conn);
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with(
            "/in HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUser-Agent: switchboard\r\n\
             Content-Type: application/json\r\nContent-Length: 22"
        ),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("webhook-"));
    assert!(w.reply(link, ok()));
    assert_eq!(w.bodies(conn), vec![r#"{"body":"two"}"#.to_string()]);
    assert!(w.reply(link, ok()));
    assert!(w.dials().is_empty());
    assert_eq!(w.counts(r).completed, 2);
    assert_eq!(w.hooks.in_flight(), 0);
    assert_eq!(w.hooks.held_bytes(), 0);
    // Idle for 30 s: hung up.
    w.at(w.now + IDLE_MS);
    w.hung_up(conn, false);
}

#[test]
fn messages_wait_for_a_receiver_and_the_wait_is_bounded() {
    let mut w = World::new(Settings {
        queue: 2,
        ..Settings::default()
    });
    let s = w.sender();
    w.send(s, "a").unwrap();
    w.send(s, "b").unwrap();
    assert!(matches!(w.send(s, "c"), Err(Refused::Full(_))));
    assert_eq!(w.hooks.waiting(), 2);
    assert!(w.dials().is_empty());
    let r = w.receiver(1);
    assert_eq!(w.hooks.waiting(), 0);
    assert_eq!(w.hooks.next_deadline(), Some(0));
    w.at(w.now);
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert!(w.reply(link, ok()));
    assert_eq!(w.bodies(conn).len(), 2);
    assert!(w.reply(link, ok()));
    assert_eq!(w.counts(r).completed, 2);
    // A receiver's own backlog is bounded too: the third is dropped for it.
    w.send(s, "1").unwrap();
    w.send(s, "2").unwrap();
    assert!(matches!(w.send(s, "3"), Err(Refused::Full(_))));
    assert_eq!(w.counts(r).dropped, 1);
}

#[test]
fn bad_calls_are_refused() {
    let mut w = World::new(Settings::default());
    let r = w.receiver(1);
    assert!(matches!(w.send(r, "x"), Err(Refused::Bad(_))));
    assert!(matches!(w.send(99, "x"), Err(Refused::Bad(_))));
    for url in ["ftp://x/", "localhost:80/x", ""] {
        assert!(matches!(
            w.hooks.connect(url, Mode::Receive, None, &mut w.channels),
            Err(Refused::Bad(_))
        ));
    }
    assert!(matches!(
        w.hooks
            .connect("x", Mode::Send, Some("ch"), &mut w.channels),
        Err(Refused::Bad(_))
    ));
    assert!(w.hooks.disconnect(99, &mut w.channels).is_err());
    assert!(w.hooks.disconnect(r, &mut w.channels).is_ok());
    assert!(w.hooks.disconnect(r, &mut w.channels).is_err());
}

#[test]
fn failures_are_retried_with_backoff_then_given_up() {
    let mut w = World::new(Settings {
        retries: 2,
        ..Settings::default()
    });
    let (r, _, link, conn) = w.delivering("m");
    assert_eq!(w.bodies(conn).len(), 1);
    let t0 = w.now;
    assert!(w.reply(link, status(500)));
    assert_eq!(w.counts(r).retried, 1);
    let due = w.hooks.next_deadline().unwrap();
    assert!((t0 + 750..=t0 + 1250).contains(&due), "{due}");
    // Nothing before its time.
    w.at(due - 1);
    assert!(w.bodies(conn).is_empty());
    w.at(due);
    assert_eq!(w.bodies(conn).len(), 1, "the retry reuses the link");
    let t1 = w.now;
    assert!(w.reply(link, status(502)));
    let due = w.hooks.next_deadline().unwrap();
    assert!((t1 + 1500..=t1 + 2500).contains(&due), "{due}");
    w.at(due);
    assert_eq!(w.bodies(conn).len(), 1);
    assert!(w.reply(link, status(500)));
    let c = w.counts(r);
    assert_eq!((c.failed, c.retried, c.completed), (1, 2, 0));
    assert_eq!(w.hooks.held_bytes(), 0);
}

#[test]
fn retry_after_is_honoured_and_410_disconnects() {
    let mut w = World::new(Settings::default());
    let (r, s, link, conn) = w.delivering("m");
    w.bodies(conn);
    let t0 = w.now;
    let throttled = Reply {
        status: 429,
        retry_after_s: Some(7),
        keep_alive: true,
    };
    assert!(w.reply(link, throttled));
    assert_eq!(w.hooks.next_deadline(), Some(t0 + 7_000));
    w.at(t0 + 6_999);
    assert!(w.bodies(conn).is_empty());
    w.at(t0 + 7_000);
    assert_eq!(w.bodies(conn).len(), 1);
    // 410: the receiver is gone, and its link closes.
    assert!(!w.reply(link, status(410)));
    assert_eq!(w.hooks.readers(), 0);
    assert!(w.hooks.disconnect(r, &mut w.channels).is_err());
    w.send(s, "later").unwrap();
    assert_eq!(w.hooks.waiting(), 1);
}

#[test]
fn a_dead_receiver_holds_only_its_own_share() {
    let mut w = World::new(Settings {
        workers: 1,
        ..Settings::default()
    });
    let slow = w.receiver(1);
    let fast = w.receiver(2);
    let s = w.sender();
    for i in 0..3 {
        w.send(s, &i.to_string()).unwrap();
    }
    let dials = w.dials();
    assert_eq!(dials.len(), 2, "each receiver gets its first request");
    let slow_link = dials.iter().find(|d| d.1 == 1).unwrap().0;
    let fast_link = dials.iter().find(|d| d.1 == 2).unwrap().0;
    let slow_conn = w.up(slow_link);
    let fast_conn = w.up(fast_link);
    for _ in 0..3 {
        assert_eq!(w.bodies(fast_conn).len(), 1);
        w.reply(fast_link, ok());
    }
    assert_eq!(w.counts(fast).completed, 3);
    assert_eq!(w.bodies(slow_conn).len(), 1);
    // The slow one never answers: after the timeout its link is hung up
    // and the attempt counts.
    w.at(w.now + 15_000);
    w.hung_up(slow_conn, true);
    assert_eq!(w.counts(slow).retried, 1);
    // Its connection's close is then reported, and changes nothing.
    w.hooks.link_closed(slow_link, false, w.now, &mut w.out);
    assert_eq!(w.counts(slow).retried, 1);
}

#[test]
fn more_in_flight_per_receiver_when_allowed() {
    let mut w = World::new(Settings {
        workers: 4,
        per_receiver: 3,
        ..Settings::default()
    });
    let r = w.receiver(1);
    let s = w.sender();
    for i in 0..5 {
        w.send(s, &i.to_string()).unwrap();
    }
    let links: Vec<u64> = w.dials().into_iter().map(|d| d.0).collect();
    assert_eq!(links.len(), 3);
    assert_eq!(w.hooks.in_flight(), 3);
    let conns: Vec<ConnId> = links.iter().map(|&l| w.up(l)).collect();
    let firsts: Vec<String> = conns.iter().flat_map(|&c| w.bodies(c)).collect();
    assert_eq!(
        firsts,
        vec![r#"{"body":"0"}"#, r#"{"body":"1"}"#, r#"{"body":"2"}"#]
    );
    // The second link answers: it takes the next message.
    w.reply(links[1], ok());
    assert_eq!(w.bodies(conns[1]), vec![r#"{"body":"3"}"#.to_string()]);
    assert_eq!(w.counts(r).completed, 1);
}

#[test]
fn a_reused_link_closed_before_an_answer_sends_again_uncounted() {
    let mut w = World::new(Settings::default());
    let (r, s, link, conn) = w.delivering("a");
    w.bodies(conn);
    w.reply(link, ok());
    w.send(s, "b").unwrap();
    assert_eq!(w.bodies(conn).len(), 1);
    // The peer had closed the idle connection: no answer at all.
    w.hooks.link_closed(link, false, w.now, &mut w.out);
    assert_eq!(w.counts(r).retried, 0);
    let (link2, _) = w.dials()[0];
    let conn2 = w.up(link2);
    assert_eq!(w.bodies(conn2), vec![r#"{"body":"b"}"#.to_string()]);
    // On a fresh link a close counts.
    w.hooks.link_closed(link2, true, w.now, &mut w.out);
    assert_eq!(w.counts(r).retried, 1);
}

#[test]
fn connect_failures_count_and_disconnect_hangs_up() {
    let mut w = World::new(Settings::default());
    let r = w.receiver(1);
    let s = w.sender();
    w.send(s, "a").unwrap();
    let (link, _) = w.dials()[0];
    w.hooks.link_failed(link, "refused", w.now, &mut w.out);
    assert_eq!(w.counts(r).retried, 1);
    w.at(w.hooks.next_deadline().unwrap());
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert_eq!(w.bodies(conn).len(), 1);
    w.hooks.disconnect(r, &mut w.channels).unwrap();
    w.hung_up(conn, false);
    assert_eq!(w.hooks.in_flight(), 0);
    assert_eq!(w.hooks.totals().dropped, 1);
    // A link that comes up for a receiver that is gone is not wanted.
    w.receiver(3);
    w.send(s, "b").unwrap();
    let (orphan, _) = w.dials()[0];
    w.hooks.disconnect(3, &mut w.channels).unwrap();
    let conn = ConnId { key: 77, gen: 1 };
    assert!(!w.hooks.link_up(orphan, conn, w.now, &mut w.out));
    assert!(w.out.bytes_for(conn).is_empty());
}

#[test]
fn signed_requests_carry_the_standard_headers() {
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let mut w = World::new(Settings {
        secret: Some(secret.clone()),
        ..Settings::default()
    });
    w.receiver(1);
    let s = w.sender();
    w.send(s, "x").unwrap();
    let (link, _) = w.dials()[0];
    w.at(5_500);
    let conn = w.up(link);
    let head = w.heads(conn).remove(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap()
    };
    let id = header("webhook-id");
    assert_eq!(id, format!("msg_{:x}_1", 1_700_000_000u64));
    assert_eq!(header("webhook-timestamp"), "1700000005");
    assert_eq!(
        header("webhook-signature"),
        secret.sign(&id, 1_700_000_005, br#"{"body":"x"}"#)
    );
    // A retry keeps the id.
    w.reply(link, status(500));
    w.at(w.hooks.next_deadline().unwrap());
    let again = w.heads(conn).remove(0);
    assert!(again.contains(&format!("webhook-id: {id}\r\n")));
}

#[test]
fn channel_receivers_get_publications() {
    let mut w = World::new(Settings::default());
    let r = w
        .hooks
        .connect("http://h/ch", Mode::Receive, Some("news"), &mut w.channels)
        .unwrap();
    let plain = w.receiver(2);
    w.channels
        .publish(b"news", b"text/plain", Some(b"ann"), b"hi\n", &mut w.out);
    w.channels
        .publish(b"other", b"text/plain", None, b"no", &mut w.out);
    w.hooks.take_published(&mut w.channels);
    assert_eq!(w.hooks.next_deadline(), Some(0));
    w.at(w.now);
    let dials = w.dials();
    assert_eq!(dials.len(), 1, "only the channel's receiver");
    let conn = w.up(dials[0].0);
    let body: serde_json::Value = serde_json::from_str(&w.bodies(conn)[0]).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"body": "hi\n", "channel": "news", "type": "text/plain", "from": "ann"})
    );
    // After a disconnect the channel is no longer kept.
    w.hooks.disconnect(r, &mut w.channels).unwrap();
    w.channels.publish(b"news", b"t", None, b"x", &mut w.out);
    assert!(w.channels.take_published().is_empty());
    assert_eq!(w.counts(plain).completed, 0);
}

#[test]
fn backoff_grows_and_is_capped() {
    assert_eq!(backoff(1, 0.5), 1_000);
    assert_eq!(backoff(2, 0.5), 2_000);
    assert_eq!(backoff(5, 0.0), 12_000);
    assert_eq!(backoff(40, 0.5), RETRY_MAX_MS);
    assert!(backoff(3, 0.999) <= 5_000);
}

#[test]
fn a_receiver_waiting_for_a_retry_keeps_one_timer() {
    let mut w = World::new(Settings::default());
    let (_, s, link, conn) = w.delivering("first");
    w.bodies(conn);
    w.reply(link, status(500));
    let timers = w.hooks.timers.len();
    // Many sends while the first message waits for its retry: each looks
    // at the receiver, none adds a deadline.
    for i in 0..1000 {
        w.send(s, &i.to_string()).unwrap();
    }
    assert_eq!(w.hooks.timers.len(), timers);
    assert!(
        w.bodies(conn).is_empty(),
        "in order: nothing overtakes the retry"
    );
    w.at(w.hooks.next_deadline().unwrap());
    assert_eq!(w.bodies(conn), vec![r#"{"body":"first"}"#.to_string()]);
}

#[test]
fn a_busy_link_holds_one_deadline() {
    let mut w = World::new(Settings::default());
    let (_, s, link, conn) = w.delivering("0");
    w.bodies(conn);
    let timers = w.hooks.timers.len();
    for i in 1..1000 {
        w.send(s, &i.to_string()).unwrap();
        w.now += 1;
        assert!(w.reply(link, ok()));
        assert_eq!(w.bodies(conn).len(), 1);
    }
    assert!(
        w.hooks.timers.len() <= timers + 1,
        "{}",
        w.hooks.timers.len()
    );
    // The answer deadline still works after all those moves.
    w.at(w.now + 14_999);
    assert!(w.hooks.take_links().is_empty());
    w.at(w.now + 1);
    w.hung_up(conn, true);
}

// The limits at their edges, the dashboard's figures, and the paths where a
// link goes away before its request is written or answered.

#[test]
fn a_channel_name_may_take_1024_bytes_and_no_more() {
    let mut w = World::new(Settings::default());
    let longest = "c".repeat(1024);
    assert!(w
        .hooks
        .connect("http://h/", Mode::Receive, Some(&longest), &mut w.channels)
        .is_ok());
    let over = "c".repeat(1025);
    assert_eq!(
        w.hooks
            .connect("http://h/", Mode::Receive, Some(&over), &mut w.channels),
        Err(Refused::Bad("channel is longer than 1024 bytes".into()))
    );
}

#[test]
fn the_byte_budget_takes_a_message_that_fills_it_exactly() {
    // `{"body":"a"}` is 12 bytes: two fill 24, a third does not fit.
    let mut w = World::new(Settings {
        max_bytes: 24,
        ..Settings::default()
    });
    let s = w.sender();
    w.send(s, "a").unwrap();
    assert_eq!(w.hooks.held_bytes(), 12);
    w.send(s, "b").unwrap();
    assert_eq!(w.hooks.held_bytes(), 24);
    assert!(matches!(w.send(s, "c"), Err(Refused::Full(_))));
    assert_eq!(w.hooks.held_bytes(), 24);
    assert_eq!(w.hooks.waiting(), 2);
}

#[test]
fn the_dashboard_counts_every_path() {
    let mut w = World::new(Settings {
        queue: 1,
        ..Settings::default()
    });
    let s = w
        .hooks
        .connect("http://sender/", Mode::Send, None, &mut w.channels)
        .unwrap();
    assert_eq!(w.hooks.senders(), vec![(s, "http://sender/".to_string())]);
    assert_eq!((w.hooks.writers(), w.hooks.readers()), (1, 0));
    // Kept for a receiver to come: sent, and its bytes held.
    w.send(s, "a").unwrap();
    assert_eq!((w.hooks.sent(), w.hooks.held_bytes()), (1, 12));
    let r = w.receiver(1);
    assert_eq!((w.hooks.writers(), w.hooks.readers()), (1, 1));
    // The receiver's backlog (1) holds "a": "b" is dropped, not sent.
    assert!(matches!(w.send(s, "b"), Err(Refused::Full(_))));
    assert_eq!(w.hooks.sent(), 1);
    assert_eq!((w.counts(r).dropped, w.hooks.totals().dropped), (1, 1));
    w.at(w.now);
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert!(w.reply(link, ok()));
    assert_eq!(w.bodies(conn), vec![r#"{"body":"a"}"#.to_string()]);
    assert_eq!(w.hooks.totals().completed, 1);
    assert_eq!(w.hooks.held_bytes(), 0);
    // Taken by a receiver at once.
    w.send(s, "c").unwrap();
    assert_eq!(w.hooks.sent(), 2);
    assert!(w.reply(link, ok()));
    assert_eq!(w.hooks.totals().completed, 2);
    // From a channel: the first publication is taken, the second finds the
    // channel receiver's backlog full (nothing started it yet).
    let cr = w
        .hooks
        .connect("http://h/ch", Mode::Receive, Some("news"), &mut w.channels)
        .unwrap();
    w.channels
        .publish(b"news", b"text/plain", None, b"1", &mut w.out);
    w.hooks.take_published(&mut w.channels);
    assert_eq!(w.hooks.sent(), 3);
    w.channels
        .publish(b"news", b"text/plain", None, b"2", &mut w.out);
    w.hooks.take_published(&mut w.channels);
    assert_eq!(w.hooks.sent(), 3);
    assert_eq!((w.counts(cr).dropped, w.hooks.totals().dropped), (1, 2));
    assert_eq!(w.hooks.readers(), 2);
}

#[test]
fn a_publication_over_the_byte_budget_is_dropped_for_its_receivers() {
    let mut w = World::new(Settings {
        max_bytes: 10,
        ..Settings::default()
    });
    let cr = w
        .hooks
        .connect("http://h/ch", Mode::Receive, Some("news"), &mut w.channels)
        .unwrap();
    w.channels
        .publish(b"news", b"text/plain", None, b"x", &mut w.out);
    w.hooks.take_published(&mut w.channels);
    assert_eq!((w.counts(cr).dropped, w.hooks.totals().dropped), (1, 1));
    assert_eq!((w.hooks.sent(), w.hooks.held_bytes()), (0, 0));
    assert_eq!(w.hooks.receivers()[0].backlog, 0);
}

#[test]
fn workers_bound_the_requests_beyond_each_receivers_first() {
    let mut w = World::new(Settings {
        workers: 1,
        per_receiver: 3,
        ..Settings::default()
    });
    w.receiver(1);
    let s = w.sender();
    for i in 0..3 {
        w.send(s, &i.to_string()).unwrap();
    }
    // The first is the receiver's own; a second would make 2 > 1 worker.
    assert_eq!(w.dials().len(), 1);
    assert_eq!(w.hooks.in_flight(), 1);
}

#[test]
fn a_fresh_link_closed_without_an_answer_counts_the_attempt() {
    let mut w = World::new(Settings::default());
    let (r, s, link, conn) = w.delivering("a");
    assert_eq!(w.bodies(conn).len(), 1);
    // Not a reused link: the close is the receiver's doing, and counts.
    w.hooks.link_closed(link, false, w.now, &mut w.out);
    assert_eq!(w.counts(r).retried, 1);
    assert!(w.dials().is_empty(), "not sent again at once");
    // A reused link that closes after bytes of an answer counts too.
    w.at(w.hooks.next_deadline().unwrap());
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert!(w.reply(link, ok()));
    w.send(s, "b").unwrap();
    assert_eq!(w.bodies(conn).len(), 2);
    w.hooks.link_closed(link, true, w.now, &mut w.out);
    assert_eq!(w.counts(r).retried, 2);
    assert!(w.dials().is_empty());
}

#[test]
fn a_link_timed_out_is_let_go_and_the_retry_dials_anew() {
    let mut w = World::new(Settings::default());
    let (r, _, link, conn) = w.delivering("a");
    w.bodies(conn);
    w.at(w.now + 15_000);
    assert_eq!(w.counts(r).retried, 1);
    assert_eq!(w.hooks.receivers()[0].links, 0);
    w.hooks.take_links();
    w.at(w.hooks.next_deadline().unwrap());
    let (again, _) = w.dials()[0];
    assert_ne!(again, link);
    let conn = w.up(again);
    assert_eq!(w.bodies(conn), vec![r#"{"body":"a"}"#.to_string()]);
}

#[test]
fn a_request_refused_by_a_closing_connection_goes_out_on_a_new_link() {
    let mut w = World::new(Settings::default());
    let r = w.receiver(1);
    let s = w.sender();
    // Refused as the link comes up: nothing started it again yet, so the
    // receiver waits to be started at once.
    w.send(s, "a").unwrap();
    let (link, _) = w.dials()[0];
    let closing = ConnId { key: 90, gen: 1 };
    w.out.refuse.push(closing);
    assert!(!w.hooks.link_up(link, closing, w.now, &mut w.out));
    assert_eq!(w.hooks.next_deadline(), Some(0));
    w.at(w.now);
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert_eq!(w.bodies(conn), vec![r#"{"body":"a"}"#.to_string()]);
    // Refused after an answer: the link is not kept, and the next message
    // goes out on a new one, not counted as an attempt.
    w.send(s, "b").unwrap();
    w.out.refuse.push(conn);
    assert!(!w.reply(link, ok()));
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    assert_eq!(w.bodies(conn), vec![r#"{"body":"b"}"#.to_string()]);
    assert_eq!(w.counts(r).retried, 0);
    assert_eq!(w.hooks.receivers()[0].links, 1);
}

#[test]
fn an_answer_deadline_earlier_than_the_idle_one_is_kept() {
    let mut w = World::new(Settings::default());
    w.receiver(1);
    let s = w.sender();
    let t0 = w.now;
    w.send(s, "a").unwrap();
    let (link, _) = w.dials()[0];
    let conn = w.up(link);
    w.bodies(conn);
    // Answered after 14 s: idle until t0 + 44 s; the first deadline (15 s)
    // moves the link's timer there.
    w.now = t0 + 14_000;
    assert!(w.reply(link, ok()));
    w.at(t0 + 15_000);
    // A request at 20 s is due by 35 s, before the idle deadline.
    w.now = t0 + 20_000;
    w.send(s, "b").unwrap();
    assert_eq!(w.bodies(conn).len(), 1);
    w.at(t0 + 34_999);
    assert!(w.hooks.take_links().is_empty());
    w.at(t0 + 35_000);
    w.hung_up(conn, true);
}

#[test]
fn requests_at_the_same_instant_hold_one_link_deadline() {
    let mut w = World::new(Settings::default());
    let (_, s, link, conn) = w.delivering("0");
    w.bodies(conn);
    let timers = w.hooks.timers.len();
    for i in 1..100 {
        w.send(s, &i.to_string()).unwrap();
        assert!(w.reply(link, ok()));
        assert_eq!(w.bodies(conn).len(), 1);
    }
    assert_eq!(w.hooks.timers.len(), timers);
}

#[test]
fn totals_count_retries_and_failures() {
    let mut w = World::new(Settings {
        retries: 1,
        ..Settings::default()
    });
    let (_, _, link, conn) = w.delivering("m");
    w.bodies(conn);
    assert!(w.reply(link, status(500)));
    w.at(w.hooks.next_deadline().unwrap());
    assert_eq!(w.bodies(conn).len(), 1);
    assert!(w.reply(link, status(500)));
    assert_eq!(
        w.hooks.totals(),
        Counts {
            completed: 0,
            failed: 1,
            retried: 1,
            dropped: 0
        }
    );
}

#[test]
fn a_receivers_retry_timer_is_its_earliest_retry() {
    let mut w = World::new(Settings {
        workers: 4,
        per_receiver: 4,
        ..Settings::default()
    });
    w.receiver(1);
    let s = w.sender();
    for m in ["a", "b", "c", "d"] {
        w.send(s, m).unwrap();
    }
    let links: Vec<u64> = w.dials().into_iter().map(|d| d.0).collect();
    assert_eq!(links.len(), 4);
    for &l in &links {
        w.up(l);
    }
    let timers = w.hooks.timers.len();
    let t0 = w.now;
    let throttled = Reply {
        status: 503,
        retry_after_s: Some(60),
        keep_alive: true,
    };
    // A retry at 60 s: one timer; another at the same instant: none more.
    assert!(w.reply(links[0], throttled));
    assert!(w.reply(links[1], throttled));
    assert_eq!(w.hooks.timers.len(), timers + 1);
    // A retry due earlier gets one of its own, and comes first.
    assert!(w.reply(links[2], status(500)));
    assert_eq!(w.hooks.timers.len(), timers + 2);
    let due = w.hooks.next_deadline().unwrap();
    assert!((t0 + 750..=t0 + 1250).contains(&due), "{due}");
    // One due later than that needs none.
    assert!(w.reply(links[3], throttled));
    assert_eq!(w.hooks.timers.len(), timers + 2);
    assert_eq!(w.hooks.next_deadline(), Some(due));
}

#[test]
fn the_jitter_spreads_evenly() {
    let mut h = Hooks::new(Settings::default(), 1_700_000_000);
    let draws: Vec<f64> = (0..1000).map(|_| h.jitter()).collect();
    assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
    let distinct: std::collections::BTreeSet<u64> = draws.iter().map(|j| j.to_bits()).collect();
    assert_eq!(distinct.len(), 1000);
    for q in 0..4 {
        let (lo, hi) = (f64::from(q) / 4.0, f64::from(q + 1) / 4.0);
        let n = draws.iter().filter(|&&j| lo <= j && j < hi).count();
        assert!((210..=290).contains(&n), "quarter {q}: {n} of 1000");
    }
}

#[test]
fn a_link_not_kept_alive_is_let_go() {
    let mut w = World::new(Settings::default());
    let (_, s, link, conn) = w.delivering("a");
    w.bodies(conn);
    let close = Reply {
        keep_alive: false,
        ..ok()
    };
    assert!(!w.reply(link, close));
    assert_eq!(w.hooks.receivers()[0].links, 0);
    // The next message goes out on a new link, not on the closing one.
    w.send(s, "b").unwrap();
    assert!(w.bodies(conn).is_empty());
    let (again, _) = w.dials()[0];
    assert_ne!(again, link);
    let conn = w.up(again);
    assert_eq!(w.bodies(conn), vec![r#"{"body":"b"}"#.to_string()]);
}

#[test]
fn a_channels_other_receivers_stay_when_one_goes() {
    let mut w = World::new(Settings::default());
    let mut on_news = || {
        w.hooks
            .connect("http://h/ch", Mode::Receive, Some("news"), &mut w.channels)
            .unwrap()
    };
    let (first, second) = (on_news(), on_news());
    w.hooks.disconnect(first, &mut w.channels).unwrap();
    w.channels
        .publish(b"news", b"text/plain", None, b"x", &mut w.out);
    w.hooks.take_published(&mut w.channels);
    let view = w.hooks.receivers();
    assert_eq!(view.len(), 1);
    assert_eq!((view[0].id, view[0].backlog), (second, 1));
}

#[test]
fn a_refused_url_says_why() {
    let mut w = World::new(Settings::default());
    assert_eq!(
        w.hooks
            .connect("ftp://x/", Mode::Receive, None, &mut w.channels),
        Err(Refused::Bad(
            "ClientURL must start with http:// or https://".into()
        ))
    );
}
