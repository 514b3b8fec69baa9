//! The HTTP bus door: its routes on the HTTP connection machine.
//!
//! Owns: `GET/HEAD /msgbus/CH` (subscribe: multipart, chunked or plain,
//! Server-Sent Events, their JSON form, `?type=` and `?sender=` filters),
//! `POST /msgbus/CH` (publish), `/msgbus-stats` (the stats page), static
//! files for every other path (`files.rs`), and the stream a subscribed
//! connection becomes ([`BusStream`]). Must not touch: how requests are
//! decoded, authenticated or pipelined (`conn.rs`), sockets, other doors.
//!
//! A connection carries any number of requests (keep-alive, pipelining) until
//! one of them subscribes; from then on it is a [`BusStream`] of pushed
//! messages, and whatever it sends is read and discarded, as in msgbus.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::codec::{Method, Request};
use super::conn::{HttpConn, Reply, Routes, Settings};
use super::files;
use super::response::Response;
use super::uri::{query_param, query_params};
use crate::broker::filter::Filter;
use crate::broker::frames::{multipart_opening, Framing};
use crate::broker::pattern;
use crate::broker::{Answer, Broker, PresenceKind, Subscription};
use crate::config::Config;
use crate::door::{CloseReason, Cx, Door, Next, Opener, Stats};

/// The path prefix of the bus.
pub const BUS_PREFIX: &str = "/msgbus/";
/// The stats page.
pub const STATS_PATH: &str = "/msgbus-stats";
/// The presence endpoint: `GET /msgbus-presence/NAME`.
pub const PRESENCE_PREFIX: &str = "/msgbus-presence/";
/// The Basic auth realm.
pub const REALM: &str = "msgbus";
/// `204` to an HTTP/1.1 keep-alive publish (msgbus' reason phrase), the
/// answer to nearly every publish: sent as this one static frame.
const NO_CONTENT_KEEP_ALIVE: &[u8] = b"HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n";
const MULTIPART_TYPE: &str = "multipart/x-mixed-replace;boundary=00MsgBus00";

/// What every bus connection shares, prepared once at start-up.
struct Shared {
    /// Canonical path of the document root.
    docroot: Option<PathBuf>,
    started: Instant,
    /// Names one subscription may list (`--max-subscriptions`).
    max_subscriptions: usize,
}

/// The bus door's constructor: its settings are read from `config` once.
pub fn opener(config: &Config) -> Opener {
    let settings = Rc::new(Settings::from_config(config, REALM));
    let shared = Rc::new(Shared {
        docroot: config.docroot.as_ref().and_then(|d| d.canonicalize().ok()),
        started: Instant::now(),
        max_subscriptions: config.limits.max_subscriptions,
    });
    Box::new(move || {
        let routes = Bus {
            shared: Rc::clone(&shared),
        };
        Box::new(HttpConn::new(Rc::clone(&settings), routes))
    })
}

/// The bus routes of one connection.
pub struct Bus {
    shared: Rc<Shared>,
}

/// A bus request waiting: a static file being read on a helper thread.
pub struct FileRead;

impl Routes for Bus {
    type Parked = FileRead;

    fn handle(&mut self, req: Request, user: Option<String>, cx: &mut Cx<'_>) -> Reply<FileRead> {
        let path = req.path();
        if let Some(channel) = path.strip_prefix(BUS_PREFIX) {
            let channel = channel.as_bytes();
            return match req.method {
                Method::Get | Method::Head => {
                    subscribe(&req, channel, self.shared.max_subscriptions, cx)
                }
                Method::Post => publish(&req, channel, user, cx),
                _ => Reply::Respond(Response::text(
                    501,
                    "the bus takes GET (subscribe) and POST (publish)",
                )),
            };
        }
        if let Some(name) = path.strip_prefix(PRESENCE_PREFIX) {
            if !matches!(req.method, Method::Get | Method::Head) {
                return Reply::Respond(Response::text(501, "presence takes GET"));
            }
            return Reply::Respond(presence(cx.broker, name.as_bytes()));
        }
        if path == STATS_PATH && matches!(req.method, Method::Get | Method::Head) {
            let body = stats_json(cx.broker, cx.stats, self.shared.started);
            return Reply::Respond(
                Response::new(200)
                    .header("Cache-Control", "no-cache")
                    .body("application/json", body),
            );
        }
        let segments = match files::check(&req, self.shared.docroot.as_deref()) {
            Ok(segments) => segments,
            Err(answer) => return Reply::Respond(answer),
        };
        let Some(root) = self.shared.docroot.clone() else {
            return Reply::Respond(files::busy());
        };
        // Opening and reading may block (a slow disk, a network file
        // system): a helper thread does it, and the request waits.
        let job = Box::new(move || {
            Box::new(files::load(&root, &segments)) as Box<dyn std::any::Any + Send>
        });
        if cx.run_blocking(job) {
            Reply::Park {
                parked: FileRead,
                deadline: None,
            }
        } else {
            Reply::Respond(files::busy())
        }
    }

    fn on_answer(&mut self, _: &mut FileRead, answer: Answer<'_>) -> Option<Response> {
        match answer {
            Answer::Done(done) => done.downcast_ref::<files::Loaded>().map(files::response),
            _ => None,
        }
    }
}

fn subscribe(
    req: &Request,
    channel: &[u8],
    max_subscriptions: usize,
    cx: &mut Cx<'_>,
) -> Reply<FileRead> {
    let query = req.query().unwrap_or("");
    let filter = match subscription_filter(query) {
        Ok(filter) => filter,
        Err(refusal) => return Reply::Respond(refusal),
    };
    let names = match subscription_names(channel, query, max_subscriptions) {
        Ok(names) => names,
        Err(refusal) => return Reply::Respond(refusal),
    };
    let sse = req
        .header("Accept")
        .is_some_and(|v| contains_token(v, b"text/event-stream"));
    let json = query_param(query, "format").as_deref() == Some("json");
    let framing = if sse && json {
        Framing::EventStreamJson
    } else if sse {
        Framing::EventStream
    } else if req.minor_version == 0 {
        Framing::MultipartPlain
    } else {
        Framing::MultipartChunked
    };
    let since = match resume_point(req, query, cx.broker.channels.keeps_history()) {
        Ok(since) => since,
        Err(refusal) => return Reply::Respond(refusal),
    };
    // The kept messages after `since` follow the opening bytes, before any
    // live message (see `Channels::replay`).
    let opening = |opening: &'static [u8]| -> Bytes {
        let Some(since) = since.filter(|_| req.method != Method::Head) else {
            return Bytes::from_static(opening);
        };
        let mut bytes = BytesMut::from(opening);
        cx.broker
            .channels
            .replay(&names, since, framing, &filter, &mut bytes);
        bytes.freeze()
    };
    let head = match framing {
        Framing::EventStream | Framing::EventStreamJson => Response::new(200)
            .header("Content-Type", "text/event-stream")
            .header("Cache-Control", "no-cache")
            .stream(opening(b": subscribed\n\n")),
        Framing::MultipartChunked => Response::new(200)
            .header("Content-Type", MULTIPART_TYPE)
            .header("Cache-Control", "no-cache")
            .header("Transfer-Encoding", "chunked")
            .stream(opening(multipart_opening(true))),
        Framing::MultipartPlain | Framing::Line | Framing::LineIds => Response::new(200)
            .header("Content-Type", MULTIPART_TYPE)
            .header("Cache-Control", "no-cache")
            .stream(opening(multipart_opening(false))),
    };
    if req.method == Method::Head {
        // The head a subscribe would get, and no subscription.
        return Reply::Respond(head);
    }
    // A subscriber of several names must be told which channel each
    // message came from.
    let named = names.len() > 1;
    for (i, name) in names.iter().enumerate() {
        let sub = Subscription {
            framing,
            filter: filter.clone(),
            named,
        };
        if let Err(e) = cx
            .broker
            .channels
            .subscribe(cx.me, name.clone(), sub, cx.out)
        {
            for done in names.iter().take(i) {
                cx.broker.channels.unsubscribe(cx.me, done, cx.out);
            }
            return Reply::Respond(Response::text(503, &e.to_string()));
        }
    }
    let names = match <[Bytes; 1]>::try_from(names) {
        Ok([one]) => Names::One(one),
        Err(many) => Names::Many(many.into_boxed_slice()),
    };
    Reply::Stream(head, Box::new(BusStream { names }))
}

/// Where a returning subscriber resumes: `?since=ID`, else the
/// `Last-Event-ID` header an EventSource sends when it reconnects. Without
/// history `?since=` is refused and the header ignored.
fn resume_point(req: &Request, query: &str, history: bool) -> Result<Option<u64>, Response> {
    let bad = |what: &str| {
        Response::text(
            400,
            &format!("{what} must be a message id (a decimal number)"),
        )
    };
    if let Some(since) = query_param(query, "since") {
        if !history {
            return Err(Response::text(
                400,
                "no history is kept (--history 0): no ?since=",
            ));
        }
        return since.trim().parse().map(Some).map_err(|_| bad("?since="));
    }
    match req.header("Last-Event-ID") {
        Some(id) if history => std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| bad("Last-Event-ID")),
        _ => Ok(None),
    }
}

/// What one subscription names: the path's channel or pattern (`*` for
/// `/msgbus/`, every channel), or the `?channel=` list of a `/msgbus/`
/// subscription; each one checked, repeats dropped, at most
/// `max_subscriptions` of them.
fn subscription_names(
    channel: &[u8],
    query: &str,
    max_subscriptions: usize,
) -> Result<Vec<Bytes>, Response> {
    let listed = query_params(query, "channel");
    let mut names: Vec<Bytes> = if listed.is_empty() {
        let name = if channel.is_empty() { b"*" } else { channel };
        vec![Bytes::copy_from_slice(name)]
    } else if !channel.is_empty() {
        return Err(Response::text(
            400,
            "?channel= lists the channels of a subscription to /msgbus/ only",
        ));
    } else {
        listed
            .iter()
            .map(|c| Bytes::copy_from_slice(c.as_bytes()))
            .collect()
    };
    names.sort_unstable();
    names.dedup();
    if names.len() > max_subscriptions {
        return Err(Response::text(
            400,
            &format!("too many channels in one subscription (limit {max_subscriptions})"),
        ));
    }
    for name in &names {
        if name.is_empty() {
            return Err(Response::text(400, "?channel= names an empty channel"));
        }
        if let Err(e) = pattern::classify(name) {
            return Err(Response::text(400, &e.to_string()));
        }
    }
    Ok(names)
}

/// How many subscribe to a channel, a pattern, or (`/msgbus-presence/`)
/// every channel, as JSON.
fn presence(broker: &Broker, name: &[u8]) -> Response {
    let name = if name.is_empty() { &b"*"[..] } else { name };
    let p = match broker.channels.presence(name) {
        Some(p) => p,
        None => {
            let e = pattern::classify(name).err();
            let text = e.map_or_else(|| "malformed name".to_string(), |e| e.to_string());
            return Response::text(400, &text);
        }
    };
    let doors: serde_json::Map<String, serde_json::Value> = p
        .per_door()
        .iter()
        .map(|&(door, n)| (door.to_string(), serde_json::json!(n)))
        .collect();
    let kind = match p.kind {
        PresenceKind::Channel => "channel",
        PresenceKind::Pattern => "pattern",
        PresenceKind::All => "all",
    };
    let v = serde_json::json!({
        "name": String::from_utf8_lossy(name),
        "kind": kind,
        "subscribers": p.total(),
        "doors": doors,
        "receivers": p.receivers,
    });
    let mut body = v.to_string();
    body.push('\n');
    Response::new(200)
        .header("Cache-Control", "no-cache")
        .body("application/json", body)
}

/// The subscriber's filter from `?type=` and `?sender=`; patterns over the
/// limits (length, count) are a `400` that names the limit.
fn subscription_filter(query: &str) -> Result<Filter, Response> {
    let type_filter = query_param(query, "type");
    let sender_filter = query_param(query, "sender");
    Filter::parse(
        type_filter.as_deref().map(str::as_bytes),
        sender_filter.as_deref().map(str::as_bytes),
    )
    .map_err(|e| Response::text(400, &e.to_string()))
}

fn publish(
    req: &Request,
    channel: &[u8],
    user: Option<String>,
    cx: &mut Cx<'_>,
) -> Reply<FileRead> {
    let Some(content_type) = req.header("Content-Type") else {
        return Reply::Respond(Response::text(400, "a publish needs a Content-Type"));
    };
    if pattern::is_wildcard(channel) {
        let refusal = pattern::PatternError::PublishToPattern;
        return Reply::Respond(Response::text(400, &refusal.to_string()));
    }
    cx.broker.channels.publish(
        channel,
        content_type,
        user.as_deref().map(str::as_bytes),
        &req.body,
        cx.out,
    );
    if req.minor_version == 1 && req.keep_alive {
        return Reply::Framed(Bytes::from_static(NO_CONTENT_KEEP_ALIVE));
    }
    Reply::Respond(Response::new(204).reason("OK"))
}

/// A subscribed bus connection: pushed messages go out, input is read and
/// discarded. It is all an idle subscriber costs.
pub struct BusStream {
    names: Names,
}

/// What a stream is subscribed to: channels, patterns, or `*` (every
/// channel).
enum Names {
    One(Bytes),
    Many(Box<[Bytes]>),
}

impl Door for BusStream {
    fn on_input(&mut self, _cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        // A subscriber's later requests are ignored.
        input.clear();
        Next::Read
    }

    fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }

    fn is_paused(&self) -> bool {
        false
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        let names = std::mem::replace(&mut self.names, Names::Many(Box::default()));
        let names = match &names {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        };
        for name in names {
            cx.broker.channels.unsubscribe(cx.me, name, cx.out);
        }
    }
}

/// True when the comma-separated media list `value` names `token`
/// (parameters such as `;q=0.9` aside).
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|part| {
        let media = part.split(|&b| b == b';').next().unwrap_or(b"");
        media.trim_ascii().eq_ignore_ascii_case(token)
    })
}

/// The stats page: the loop's and the broker's counters as one JSON object.
fn stats_json(broker: &Broker, stats: &Stats, started: Instant) -> String {
    let b = broker.stats();
    let closed_by: serde_json::Map<String, serde_json::Value> = CloseReason::ALL
        .iter()
        .map(|r| {
            let n = stats.closed_by.get(*r as usize).copied().unwrap_or(0);
            (r.key(), serde_json::json!(n))
        })
        .collect();
    let v = serde_json::json!({
        "uptime_s": started.elapsed().as_secs(),
        "connections": {
            "line": stats.open_of("line"),
            "bus": stats.open_of("bus"),
            "total": stats.open_total(),
            "accepted": stats.accepted,
            "accept_errors": stats.accept_errors,
            "closed_by": closed_by,
            "closed": stats.closed,
        },
        "channels": broker.channels.channel_count(),
        "patterns": broker.channels.pattern_count(),
        "history": {
            "messages": broker.channels.history_size().0,
            "bytes": broker.channels.history_size().1,
            "channels": broker.channels.history_size().2,
        },
        "subscribers": broker.channels.subscription_count(),
        "oversized": broker.channels.oversized(),
        "queues": {
            "queued": broker.queues.queued(),
            "waiting": broker.queues.waiting(),
            "sent": b.queued_in,
            "delivered": b.queued_out,
            "expired": b.expired,
            "full": broker.queues.refused_full(),
            "bytes": broker.queues.queued_bytes(),
        },
        "switch": {
            "queues": broker.switch.queue_count(),
            "stored": broker.switch.stored(),
            "bytes": broker.switch.stored_bytes(),
            "full": broker.switch.refused_full(),
            "sessions": broker.switch.session_count(),
            "parked_transfers": broker.switch.parked_transfers(),
            "parked_traces": broker.switch.parked_traces(),
        },
        "messages_in": b.queued_in + b.published,
        "messages_out": b.queued_out + b.fanned_out,
        "published": b.published,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "drops": stats.dropped.get(),
        "slow_disconnects": stats.slow_disconnects.get(),
        "loop_turn_max_us": stats.turn_max_us,
        "loop_turn_max_10s_us": stats.turn_max_recent_us,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{ConnId, RecordingOutbox};
    use crate::http::codec;

    const ME: ConnId = ConnId { key: 3, gen: 1 };
    const OTHER: ConnId = ConnId { key: 4, gen: 1 };

    fn bus_conn() -> Box<dyn Door> {
        let settings = Rc::new(Settings {
            secret: None,
            realm: REALM,
            limits: codec::Limits::default(),
        });
        let shared = Rc::new(Shared {
            docroot: None,
            started: Instant::now(),
            max_subscriptions: 100,
        });
        Box::new(HttpConn::new(settings, Bus { shared }))
    }

    /// Runs `door` over `input` as connection `me`, as the shell does.
    fn run(
        door: &mut Box<dyn Door>,
        me: ConnId,
        input: &[u8],
        broker: &mut Broker,
        out: &mut RecordingOutbox,
        stats: &Stats,
    ) -> Next {
        let mut buf = BytesMut::from(input);
        let mut cx = Cx::new(me, 0, broker, out, stats);
        let next = door.on_input(&mut cx, &mut buf);
        broker.seal(out);
        if let Some(stream) = door.upgrade() {
            *door = stream;
        }
        next
    }

    #[test]
    fn the_static_204_is_what_the_builder_writes() {
        let built = Response::new(204).reason("OK").to_bytes();
        assert_eq!(&built[..], NO_CONTENT_KEEP_ALIVE);
    }

    #[test]
    fn pipelined_publishes_share_one_batch_and_the_static_204() {
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let stats = Stats::default();
        let mut sub = bus_conn();
        let next = run(
            &mut sub,
            OTHER,
            b"GET /msgbus/foo HTTP/1.0\r\n\r\n",
            &mut broker,
            &mut out,
            &stats,
        );
        assert_eq!(next, Next::Read);
        out.frames.clear();
        let post =
            "POST /msgbus/foo HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx";
        let mut publisher = bus_conn();
        let next = run(
            &mut publisher,
            ME,
            post.repeat(3).as_bytes(),
            &mut broker,
            &mut out,
            &stats,
        );
        assert_eq!(next, Next::Read);
        assert_eq!(out.bytes_for(ME), NO_CONTENT_KEEP_ALIVE.repeat(3));
        // One frame carrying all three messages for the subscriber.
        let to_sub: Vec<_> = out.frames.iter().filter(|(c, _, _)| *c == OTHER).collect();
        assert_eq!(to_sub.len(), 1);
        assert_eq!(to_sub.first().map(|f| f.2), Some(3));
        // The subscriber's stream unsubscribes on close.
        assert_eq!(broker.channels.subscription_count(), 1);
        let mut cx = Cx::new(OTHER, 0, &mut broker, &mut out, &stats);
        sub.on_close(&mut cx);
        assert_eq!(broker.channels.subscription_count(), 0);
    }

    #[test]
    fn stats_page_keys() {
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        let stats = Stats {
            door_names: vec!["line", "bus"],
            open: vec![2, 5],
            ..Stats::default()
        };
        stats.dropped.set(4);
        let mut conn = bus_conn();
        run(
            &mut conn,
            ME,
            b"GET /msgbus-stats HTTP/1.1\r\n\r\n",
            &mut broker,
            &mut out,
            &stats,
        );
        let text = out.bytes_for(ME);
        let body_at = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let v: serde_json::Value = serde_json::from_slice(&text[body_at..]).unwrap();
        assert_eq!(v["connections"]["line"], 2);
        assert_eq!(v["connections"]["bus"], 5);
        assert_eq!(v["connections"]["total"], 7);
        assert_eq!(v["connections"]["closed_by"]["peer_closed"], 0);
        assert_eq!(v["connections"]["closed_by"]["request_timeout"], 0);
        assert_eq!(v["queues"]["full"], 0);
        assert_eq!(v["queues"]["bytes"], 0);
        assert_eq!(v["switch"]["parked_transfers"], 0);
        assert_eq!(v["drops"], 4);
        assert!(v["uptime_s"].is_u64());
    }

    #[test]
    fn accept_tokens() {
        assert!(contains_token(b"text/event-stream", b"text/event-stream"));
        assert!(contains_token(
            b"text/html, text/event-stream;q=0.9",
            b"text/event-stream"
        ));
        assert!(!contains_token(b"*/*", b"text/event-stream"));
    }

    #[test]
    fn filters_decode_plus_as_space_in_queries() {
        let f = subscription_filter("type=text/plain;+charset=utf-8&sender=%21bob").unwrap();
        assert_eq!(
            f,
            Filter::new(Some(b"text/plain; charset=utf-8"), Some(b"!bob"))
        );
        assert!(subscription_filter("").unwrap().is_empty());
    }
}
