//! The HTTP bus door: its routes on the HTTP connection machine.
//!
//! Owns: `GET/HEAD /msgbus/CH` (subscribe: multipart, chunked or plain,
//! Server-Sent Events, their JSON form, `?type=` and `?sender=` filters),
//! `POST /msgbus/CH` (publish), `/msgbus-stats` (the stats page),
//! `/metrics` and `/healthz` (answered by `metrics.rs`), the dashboard
//! under `/switchboard/` (`dashboard.rs`), static
//! files for every other path (`files.rs`), the stream a subscribed
//! connection becomes ([`BusStream`]), the WebSocket a `GET` with `Upgrade:
//! websocket` becomes ([`WsStream`]: deliveries out, publishes in), and
//! what an idle stream sends as its heartbeat (when is the shell's: its
//! heartbeat sweep). Must not touch: how requests are decoded,
//! authenticated or pipelined (`conn.rs`), how WebSocket frames are parsed
//! (`websocket.rs`), sockets, other doors.
//!
//! A connection carries any number of requests (keep-alive, pipelining) until
//! one of them subscribes; from then on it is a [`BusStream`] of pushed
//! messages, and whatever it sends is read and discarded, as in msgbus; or a
//! [`WsStream`], whose client's messages are publishes to its channel.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::codec::{Method, Request};
use super::conn::{Caller, HttpConn, Reply, Routes, Settings};
use super::files;
use super::response::Response;
use super::uri::{query_param, query_params};
use super::websocket::{self, Event as WsEvent};
use crate::auth::Action;
use crate::broker::filter::Filter;
use crate::broker::frames::{multipart_opening, Framing, OP_CLOSE, OP_PONG};
use crate::broker::pattern::{self, Name};
use crate::broker::{Answer, Broker, Millis, PresenceKind, Subscription};
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
/// What an event stream opens with: how long a browser waits before it
/// reconnects (`retry:`, in ms), and a comment.
pub const SSE_OPENING: &[u8] = b"retry: 3000\n: subscribed\n\n";
/// The content types of what a WebSocket client publishes.
const WS_TEXT_TYPE: &[u8] = b"text/plain";
const WS_BINARY_TYPE: &[u8] = b"application/octet-stream";

/// What every bus connection shares, prepared once at start-up. (The
/// docroot is not here: a reload may change it, so it is read from
/// [`Cx::live`] per request.)
struct Shared {
    started: Instant,
    /// Names one subscription may list (`--max-subscriptions`).
    max_subscriptions: usize,
    /// The largest message a WebSocket client may send (`--max-body`).
    max_message: usize,
    /// The dashboard's latest snapshot, shared by its watchers.
    dashboard: Rc<super::dashboard::Snapshots>,
}

/// The bus door's constructor: its settings are read from `config` once.
pub fn opener(config: &Config) -> Opener {
    let settings = Rc::new(Settings::from_config(config, REALM));
    let shared = Rc::new(Shared {
        started: Instant::now(),
        max_subscriptions: config.limits.max_subscriptions,
        max_message: config.limits.max_body,
        dashboard: Rc::new(super::dashboard::Snapshots::new(true)),
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

    fn handle(&mut self, req: Request, caller: Caller, cx: &mut Cx<'_>) -> Reply<FileRead> {
        let path = req.path();
        if let Some(channel) = path.strip_prefix(BUS_PREFIX) {
            let channel = channel.as_bytes();
            return match req.method {
                Method::Get | Method::Head => {
                    // What a token must cover: each name subscribed to;
                    // every channel is the pattern `>`.
                    let listed = query_params(req.query().unwrap_or(""), "channel");
                    let asked: Vec<&[u8]> = if !channel.is_empty() {
                        vec![token_name(channel)]
                    } else if listed.is_empty() {
                        vec![b">"]
                    } else {
                        listed.iter().map(|c| token_name(c.as_bytes())).collect()
                    };
                    if let Some(name) = asked.iter().find(|n| !caller.may(Action::Subscribe, n)) {
                        return Reply::Respond(Caller::forbidden(Action::Subscribe, name));
                    }
                    if req.method == Method::Get && wants_websocket(&req) {
                        return websocket_subscribe(&req, channel, caller, &self.shared, cx);
                    }
                    subscribe(&req, channel, &self.shared, cx)
                }
                Method::Post if !caller.may(Action::Publish, channel) => {
                    Reply::Respond(Caller::forbidden(Action::Publish, channel))
                }
                Method::Post => publish(&req, channel, caller.user, cx),
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
            // Counts say who listens: a token must let its holder listen.
            if !caller.may(Action::Subscribe, token_name(name.as_bytes())) {
                return Reply::Respond(Caller::forbidden(Action::Subscribe, name.as_bytes()));
            }
            return Reply::Respond(presence(cx.broker, name.as_bytes()));
        }
        if let Some(response) = super::metrics::route(&req, cx) {
            return Reply::Respond(response);
        }
        if let Some(reply) = super::dashboard::route(&req, cx, &self.shared.dashboard) {
            return reply;
        }
        if path == STATS_PATH && matches!(req.method, Method::Get | Method::Head) {
            let body = stats_json(cx.broker, cx.stats, self.shared.started);
            return Reply::Respond(
                Response::new(200)
                    .header("Cache-Control", "no-cache")
                    .body("application/json", body),
            );
        }
        let segments = match files::check(&req, cx.live.docroot.as_deref()) {
            Ok(segments) => segments,
            Err(answer) => return Reply::Respond(answer),
        };
        let Some(root) = cx.live.docroot.clone() else {
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

/// What a subscribing request asks for, read and checked before anything
/// is subscribed: its names, its filter, where it resumes.
struct Asked {
    names: Vec<Bytes>,
    filter: Filter,
    since: Option<u64>,
}

impl Asked {
    fn read(
        req: &Request,
        channel: &[u8],
        shared: &Shared,
        cx: &Cx<'_>,
    ) -> Result<Asked, Response> {
        let query = req.query().unwrap_or("");
        Ok(Asked {
            filter: subscription_filter(query)?,
            names: subscription_names(channel, query, shared.max_subscriptions)?,
            since: resume_point(req, query, cx.broker.channels.keeps_history())?,
        })
    }

    /// The kept messages after the resume point in `framing`, appended to
    /// `out` (nothing when it does not resume).
    fn replay(&self, framing: Framing, cx: &Cx<'_>, out: &mut BytesMut) {
        if let Some(since) = self.since {
            cx.broker
                .channels
                .replay(&self.names, since, framing, &self.filter, out);
        }
    }

    /// Subscribes the connection to every name in `framing`; returns what
    /// it must unsubscribe from when it closes, or a `503` (and nothing
    /// subscribed) when one name is refused.
    fn subscribe(self, framing: Framing, cx: &mut Cx<'_>) -> Result<Names, Response> {
        // A subscriber of several names must be told which channel each
        // message came from.
        let named = self.names.len() > 1;
        let mut held: Vec<Bytes> = Vec::with_capacity(self.names.len());
        for name in self.names {
            let sub = Subscription {
                framing,
                filter: self.filter.clone(),
                named,
            };
            match cx.broker.channels.subscribe(cx.me, name, sub, cx.out) {
                Ok(name) => held.push(name),
                Err(e) => {
                    for done in &held {
                        cx.broker.channels.unsubscribe(cx.me, done, cx.out);
                    }
                    return Err(Response::text(503, &e.to_string()));
                }
            }
        }
        Ok(match <[Bytes; 1]>::try_from(held) {
            Ok([one]) => Names::One(one),
            Err(many) => Names::Many(many.into_boxed_slice()),
        })
    }
}

fn subscribe(req: &Request, channel: &[u8], shared: &Shared, cx: &mut Cx<'_>) -> Reply<FileRead> {
    let asked = match Asked::read(req, channel, shared, cx) {
        Ok(asked) => asked,
        Err(refusal) => return Reply::Respond(refusal),
    };
    let sse = req
        .header("Accept")
        .is_some_and(|v| contains_token(v, b"text/event-stream"));
    let json = query_param(req.query().unwrap_or(""), "format").as_deref() == Some("json");
    let framing = if sse && json {
        Framing::EventStreamJson
    } else if sse {
        Framing::EventStream
    } else if req.minor_version == 0 {
        Framing::MultipartPlain
    } else {
        Framing::MultipartChunked
    };
    // The kept messages after `since` follow the opening bytes, before any
    // live message (see `Channels::replay`).
    let opening = |opening: &'static [u8]| -> Bytes {
        if asked.since.is_none() || req.method == Method::Head {
            return Bytes::from_static(opening);
        }
        let mut bytes = BytesMut::from(opening);
        asked.replay(framing, cx, &mut bytes);
        bytes.freeze()
    };
    let head = match framing {
        Framing::EventStream | Framing::EventStreamJson => Response::new(200)
            .header("Content-Type", "text/event-stream")
            .header("Cache-Control", "no-cache")
            .stream(opening(SSE_OPENING)),
        Framing::MultipartChunked => Response::new(200)
            .header("Content-Type", MULTIPART_TYPE)
            .header("Cache-Control", "no-cache")
            .header("Transfer-Encoding", "chunked")
            .stream(opening(multipart_opening(true))),
        Framing::MultipartPlain
        | Framing::Line
        | Framing::LineIds
        | Framing::WebSocket
        | Framing::WebSocketJson => Response::new(200)
            .header("Content-Type", MULTIPART_TYPE)
            .header("Cache-Control", "no-cache")
            .stream(opening(multipart_opening(false))),
    };
    if req.method == Method::Head {
        // The head a subscribe would get, and no subscription.
        return Reply::Respond(head);
    }
    let beat = match framing {
        Framing::EventStream | Framing::EventStreamJson => Beat::EventStream,
        Framing::MultipartChunked => Beat::MultipartChunked,
        _ => Beat::MultipartPlain,
    };
    let names = match asked.subscribe(framing, cx) {
        Ok(names) => names,
        Err(refusal) => return Reply::Respond(refusal),
    };
    let stream = BusStream {
        names,
        heartbeat: Heartbeat::new(beat),
    };
    Reply::Stream(head, Box::new(stream))
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

/// The name a token must cover for a subscription to `name`: `*` and `>`
/// alone mean every channel, the pattern `>`.
fn token_name(name: &[u8]) -> &[u8] {
    if name == b"*" || name == b">" {
        b">"
    } else {
        name
    }
}

/// True for a request that asks for a WebSocket (`Upgrade: websocket`).
fn wants_websocket(req: &Request) -> bool {
    header_has_token(req, "Upgrade", b"websocket")
}

/// True when some `name` header of `req` lists `token` (comma-separated,
/// case-insensitive).
fn header_has_token(req: &Request, name: &str, token: &[u8]) -> bool {
    req.headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .any(|(_, v)| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
}

/// The refusal of a plain WebSocket subscription whose messages come from
/// more than one channel (a pattern, a `?channel=` list): its frames would
/// carry bodies with nothing to tell their channels apart.
pub const WS_NEEDS_JSON: &str = "a WebSocket subscription to a pattern or to several channels \
     needs ?format=json: plain frames carry the body alone, not its channel";

/// Plain frames carry no ids to resume from, and a gap notice among them
/// could not be told from a message.
pub const WS_RESUME_NEEDS_JSON: &str = "resuming a WebSocket (?since=) needs ?format=json: \
     plain frames carry no ids, and a gap notice could not be told from a message";

/// The opening handshake (RFC 6455 §4.2): a `101` and a [`WsStream`]
/// subscribed to the request's names (as [`subscribe`] reads them), or the
/// status that says what is wrong with the request.
fn websocket_subscribe(
    req: &Request,
    channel: &[u8],
    caller: Caller,
    shared: &Shared,
    cx: &mut Cx<'_>,
) -> Reply<FileRead> {
    if req.minor_version == 0 {
        return Reply::Respond(Response::text(400, "a WebSocket needs HTTP/1.1"));
    }
    if !header_has_token(req, "Connection", b"upgrade") {
        return Reply::Respond(Response::text(
            400,
            "a WebSocket handshake needs Connection: Upgrade",
        ));
    }
    if req.header("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Reply::Respond(
            Response::text(426, "only WebSocket version 13 is spoken")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = req
        .header("Sec-WebSocket-Key")
        .map(<[u8]>::trim_ascii)
        .filter(|k| websocket::valid_key(k))
    else {
        return Reply::Respond(Response::text(
            400,
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        ));
    };
    let asked = match Asked::read(req, channel, shared, cx) {
        Ok(asked) => asked,
        Err(refusal) => return Reply::Respond(refusal),
    };
    // Where the client's messages go: its one channel (the path's, or the
    // only one listed), the empty channel for the root `/msgbus/` (as a
    // `POST /msgbus/` does), nowhere for a pattern (`*` and `>` included)
    // or several channels. The token's publish right is checked here, once
    // for the connection's life.
    let one = match asked.names.as_slice() {
        [name] => pattern::classify(name).ok(),
        _ => None,
    };
    let listed = !query_params(req.query().unwrap_or(""), "channel").is_empty();
    let target = match (one, asked.names.first()) {
        (Some(Name::Exact), Some(name)) => Some((Publish::Channel, &name[..])),
        (Some(Name::All), _) if channel.is_empty() && !listed => Some((Publish::Root, &b""[..])),
        _ => None,
    };
    let publish = match target {
        Some((target, name)) if caller.may(Action::Publish, name) => target,
        Some(_) => Publish::Denied,
        None => Publish::Nowhere,
    };
    let json = query_param(req.query().unwrap_or(""), "format").as_deref() == Some("json");
    if !json && matches!(one, Some(Name::Pattern) | None) {
        return Reply::Respond(Response::text(400, WS_NEEDS_JSON));
    }
    if !json && asked.since.is_some() {
        return Reply::Respond(Response::text(400, WS_RESUME_NEEDS_JSON));
    }
    let framing = if json {
        Framing::WebSocketJson
    } else {
        Framing::WebSocket
    };
    let mut opening = BytesMut::new();
    asked.replay(framing, cx, &mut opening);
    let names = match asked.subscribe(framing, cx) {
        Ok(names) => names,
        Err(refusal) => return Reply::Respond(refusal),
    };
    let head = Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", websocket::accept_key(key))
        .stream(opening.freeze());
    let stream = WsStream {
        names,
        sender: caller.user.map(|u| u.into_bytes().into_boxed_slice()),
        decoder: websocket::Decoder::new(shared.max_message),
        publish,
    };
    Reply::Stream(head, Box::new(stream))
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
/// discarded. It is all an idle subscriber costs besides its connection:
/// 40 bytes (a 48-byte allocation), no timer (see [`Door::heartbeat`]).
pub struct BusStream {
    names: Names,
    heartbeat: Heartbeat,
}

/// What a stream is subscribed to: channels, patterns, or `*` (every
/// channel). A channel's name is the broker's own key, shared, not a copy.
enum Names {
    One(Bytes),
    Many(Box<[Bytes]>),
}

impl Names {
    fn as_slice(&self) -> &[Bytes] {
        match self {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        }
    }

    /// Ends every subscription (once: the names are gone afterwards).
    fn unsubscribe(&mut self, cx: &mut Cx<'_>) {
        let names = std::mem::replace(self, Names::Many(Box::default()));
        for name in names.as_slice() {
            cx.broker.channels.unsubscribe(cx.me, name, cx.out);
        }
    }
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

    fn heartbeat(&mut self, now: Millis, last_write: Millis) -> Option<&'static [u8]> {
        Some(self.heartbeat.next(now, last_write))
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        self.names.unsubscribe(cx);
    }
}

/// Where a WebSocket client's messages are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Publish {
    /// To its one channel (the path's, or the only one listed).
    Channel,
    /// To the empty channel: the root subscription `/msgbus/` (as a `POST
    /// /msgbus/` does).
    Root,
    /// The handshake's token does not allow publishing there: a message
    /// from the client closes the connection with 1008.
    Denied,
    /// A pattern or several channels: nowhere to publish to, and a message
    /// from the client closes the connection with 1008.
    Nowhere,
}

/// A bus connection that became a WebSocket: channel messages go out as
/// WebSocket messages (framed once by the broker for every WebSocket
/// subscriber), the client's messages are published to the channel, and
/// control frames are answered. 72 bytes (an 80-byte allocation).
pub struct WsStream {
    names: Names,
    /// The Basic auth user or the token's subject of the handshake: the
    /// sender of what it publishes.
    sender: Option<Box<[u8]>>,
    decoder: websocket::Decoder,
    publish: Publish,
}

impl WsStream {
    /// Fails the connection (RFC 6455 §7.1.7): a close frame with the code
    /// of `err`, then the connection closes without reading more.
    fn fail(cx: &mut Cx<'_>, input: &mut BytesMut, err: websocket::WsError) -> Next {
        log::debug!("websocket conn {}: {err}", cx.me.key);
        cx.send(websocket::close_frame(err.close_code(), &err.to_string()));
        input.clear();
        Next::Close(CloseReason::ProtocolError)
    }

    /// The channel the client's messages go to, if any.
    fn target(&self) -> Option<&[u8]> {
        match (self.publish, &self.names) {
            (Publish::Channel, Names::One(name)) => Some(name),
            (Publish::Root, _) => Some(b""),
            _ => None,
        }
    }
}

impl Door for WsStream {
    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        loop {
            // Output backpressure: a client that sends pings (or publishes
            // to its own channel) and does not read is not read either.
            if cx.backlogged() {
                return Next::Read;
            }
            let event = match self.decoder.decode(input) {
                Ok(Some(event)) => event,
                Ok(None) => return Next::Read,
                Err(err) => return WsStream::fail(cx, input, err),
            };
            cx.progress();
            match event {
                WsEvent::Message { text, data } => {
                    let Some(channel) = self.target() else {
                        let reason = if self.publish == Publish::Denied {
                            "the token does not allow publish on this channel"
                        } else {
                            "a subscription to a pattern or to several channels does not publish"
                        };
                        log::debug!("websocket conn {}: {reason}", cx.me.key);
                        cx.send(websocket::close_frame(websocket::CLOSE_POLICY, reason));
                        input.clear();
                        return Next::Close(CloseReason::ProtocolError);
                    };
                    let content_type = if text { WS_TEXT_TYPE } else { WS_BINARY_TYPE };
                    cx.broker.channels.publish(
                        channel,
                        content_type,
                        self.sender.as_deref(),
                        &data,
                        cx.out,
                    );
                }
                WsEvent::Ping(payload) => {
                    cx.send(websocket::control_frame(OP_PONG, &payload));
                }
                WsEvent::Pong(_) => {}
                WsEvent::Close { code, .. } => {
                    // The close handshake: the client's code echoed (none
                    // for none), then the server closes the TCP connection.
                    let payload = code.map(u16::to_be_bytes);
                    cx.send(websocket::control_frame(
                        OP_CLOSE,
                        payload.as_ref().map_or(&[][..], |p| &p[..]),
                    ));
                    input.clear();
                    return Next::Close(CloseReason::Quit);
                }
            }
        }
    }

    fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }

    fn is_paused(&self) -> bool {
        false
    }

    /// A fragmented message is a request under way: the request timeout
    /// runs while one is unfinished.
    fn mid_request(&self) -> bool {
        self.decoder.mid_message()
    }

    fn heartbeat(&mut self, _now: Millis, _last_write: Millis) -> Option<&'static [u8]> {
        Some(WS_HEARTBEAT)
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        self.names.unsubscribe(cx);
    }
}

/// What an idle stream sends as its heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Beat {
    /// A comment line (`: heartbeat`), which `EventSource` ignores.
    EventStream,
    /// A header line of the next part (`X-Heartbeat: 1`), which multipart
    /// parsers skip as an unknown header (see [`MAX_HEARTBEAT_LINES`]).
    MultipartChunked,
    MultipartPlain,
}

/// After this many heartbeat lines in a row (no part in between), the next
/// heartbeat ends the header block as an empty part (`Content-Length: 0`),
/// so a long silence cannot grow the next part's head without bound.
const MAX_HEARTBEAT_LINES: u8 = 16;

const SSE_HEARTBEAT: &[u8] = b": heartbeat\n\n";
const MULTIPART_HEARTBEAT: &[u8] = b"X-Heartbeat: 1\r\n";
const MULTIPART_HEARTBEAT_CHUNK: &[u8] = b"10\r\nX-Heartbeat: 1\r\n\r\n";
const MULTIPART_HEARTBEAT_END: &[u8] = b"Content-Length: 0\r\n\r\n\r\n--00MsgBus00\r\n";
const MULTIPART_HEARTBEAT_END_CHUNK: &[u8] =
    b"25\r\nContent-Length: 0\r\n\r\n\r\n--00MsgBus00\r\n\r\n";
/// A ping frame, which clients answer and do not pass on.
const WS_HEARTBEAT: &[u8] = b"\x89\x00";

/// A stream's heartbeat. When to send one is the shell's (its sweep, see
/// [`Door::heartbeat`]); the stream picks the bytes, and a multipart stream
/// counts the lines the next part's head holds.
struct Heartbeat {
    beat: Beat,
    /// Multipart heartbeat lines since the last part.
    lines: u8,
    /// The second of the server's clock after the one in which the last
    /// heartbeat was queued (4 bytes, not 8: every idle stream holds it).
    after_s: u32,
}

impl Heartbeat {
    fn new(beat: Beat) -> Heartbeat {
        Heartbeat {
            beat,
            lines: 0,
            after_s: 0,
        }
    }

    /// The heartbeat to queue at `now` on a stream last written to at
    /// `last_write`.
    fn next(&mut self, now: Millis, last_write: Millis) -> &'static [u8] {
        // A write more than a second after the last heartbeat was queued
        // was not that heartbeat's: a part went out, and the count starts
        // again. (A part sooner after it is not noticed: the count goes
        // on, and the empty part comes sooner, never later.)
        if last_write / 1000 > u64::from(self.after_s) {
            self.lines = 0;
        }
        self.after_s = u32::try_from(now / 1000 + 1).unwrap_or(u32::MAX);
        let chunked = self.beat == Beat::MultipartChunked;
        match self.beat {
            Beat::EventStream => SSE_HEARTBEAT,
            Beat::MultipartChunked | Beat::MultipartPlain => {
                if self.lines < MAX_HEARTBEAT_LINES {
                    self.lines += 1;
                    if chunked {
                        MULTIPART_HEARTBEAT_CHUNK
                    } else {
                        MULTIPART_HEARTBEAT
                    }
                } else {
                    self.lines = 0;
                    if chunked {
                        MULTIPART_HEARTBEAT_END_CHUNK
                    } else {
                        MULTIPART_HEARTBEAT_END
                    }
                }
            }
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

/// The cluster link's state and counters (`null` without `--cluster`).
fn cluster_json(broker: &Broker) -> serde_json::Value {
    if !broker.cluster.is_on() {
        return serde_json::Value::Null;
    }
    let c = broker.cluster.stats();
    serde_json::json!({
        "up": c.up,
        "links_up": c.links_up,
        "node": String::from_utf8_lossy(broker.cluster.node_id()),
        "sent": c.sent,
        "received": c.received,
        "echoes": c.echoes,
        "copies": c.copies,
        "dropped": c.dropped,
        "link_downs": c.link_downs,
        "errors": c.errors,
        "subscriptions": c.subscriptions,
        "confirmed": c.confirmed,
        "sharded": c.sharded,
        "queues": {
            "up": c.queue_up,
            "sent": c.queue_sent,
            "read": c.queue_read,
            "expired": c.queue_expired,
            "local": c.queue_local,
            "kept": c.queue_kept,
            "kept_dropped": c.queue_local_full,
            "trimmed": c.queue_trimmed,
            "unconfirmed": c.queue_unconfirmed,
            "watched": broker.cluster.queue_watches(),
            "listening": broker.cluster.queue_listening(),
            "in_flight": broker.cluster.queue_in_flight(),
            "switch_waiting": broker.cluster.switch_waits(),
            "switch_listening": broker.cluster.switch_listening(),
        },
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
        "version": super::metrics::VERSION,
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
        "subscribers": broker.channels.subscription_count(),
        "patterns": broker.channels.pattern_count(),
        "history": {
            "messages": broker.channels.history_size().0,
            "bytes": broker.channels.history_size().1,
            "channels": broker.channels.history_size().2,
        },
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
        "cluster": cluster_json(broker),
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
            checks_credentials: false,
            realm: REALM,
            limits: codec::Limits::default(),
        });
        let shared = Rc::new(Shared {
            started: Instant::now(),
            max_subscriptions: 100,
            max_message: 1 << 20,
            dashboard: Rc::new(crate::http::dashboard::Snapshots::new(true)),
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
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn multipart_heartbeat_chunks_hold_their_lines() {
        for (plain, chunk) in [
            (MULTIPART_HEARTBEAT, MULTIPART_HEARTBEAT_CHUNK),
            (MULTIPART_HEARTBEAT_END, MULTIPART_HEARTBEAT_END_CHUNK),
        ] {
            let mut want = format!("{:x}\r\n", plain.len()).into_bytes();
            want.extend_from_slice(plain);
            want.extend_from_slice(b"\r\n");
            assert_eq!(chunk, &want[..]);
        }
    }

    #[test]
    fn each_kind_of_stream_has_its_heartbeat() {
        assert_eq!(
            Heartbeat::new(Beat::EventStream).next(5_000, 0),
            SSE_HEARTBEAT
        );
        assert_eq!(
            Heartbeat::new(Beat::MultipartChunked).next(5_000, 0),
            MULTIPART_HEARTBEAT_CHUNK
        );
        assert_eq!(
            Heartbeat::new(Beat::MultipartPlain).next(5_000, 0),
            MULTIPART_HEARTBEAT
        );
    }

    #[test]
    fn multipart_heartbeat_lines_are_bounded() {
        let mut hb = Heartbeat::new(Beat::MultipartPlain);
        let mut now = 0;
        for _ in 0..MAX_HEARTBEAT_LINES {
            now += 10_000;
            // Each heartbeat is the last write.
            assert_eq!(hb.next(now, now - 10_000), MULTIPART_HEARTBEAT);
        }
        now += 10_000;
        assert_eq!(hb.next(now, now - 10_000), MULTIPART_HEARTBEAT_END);
        now += 10_000;
        assert_eq!(hb.next(now, now - 10_000), MULTIPART_HEARTBEAT);
        // A part written after a heartbeat starts the count again.
        for _ in 1..MAX_HEARTBEAT_LINES {
            now += 10_000;
            hb.next(now, now - 10_000);
        }
        let part_at = now + 5_000;
        now = part_at + 10_000;
        assert_eq!(hb.next(now, part_at), MULTIPART_HEARTBEAT);
        for _ in 1..MAX_HEARTBEAT_LINES {
            now += 10_000;
            assert_eq!(hb.next(now, now - 10_000), MULTIPART_HEARTBEAT);
        }
        // One written in the second after the heartbeat is not noticed:
        // the empty part comes one line sooner, never later.
        let part_at = now + 500;
        now += 10_000;
        assert_eq!(hb.next(now, part_at), MULTIPART_HEARTBEAT_END);
    }

    /// What an idle subscriber's door costs: keep it small.
    #[test]
    fn idle_streams_are_small() {
        let (bus, ws) = (
            std::mem::size_of::<BusStream>(),
            std::mem::size_of::<WsStream>(),
        );
        eprintln!("BusStream {bus} bytes, WsStream {ws} bytes");
        // With the allocator's 8-byte header, 40 bytes take a 48-byte
        // block and 72 an 80-byte one.
        assert!(bus <= 40, "BusStream grew to {bus} bytes");
        assert!(ws <= 72, "WsStream grew to {ws} bytes");
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

    /// A multipart stream's heartbeat lines are counted until a part goes
    /// out: the 17th in a row is the empty part that ends them. A write
    /// within the second after a heartbeat's is taken for that heartbeat's
    /// (not noticed: the empty part only comes sooner); a later one was a
    /// part, and the count starts again.
    #[test]
    fn heartbeat_lines_are_counted_until_a_part() {
        let mut hb = Heartbeat::new(Beat::MultipartPlain);
        let mut last_write = 0;
        let mut t = 0;
        for i in 0..16 {
            t += 30_000;
            assert_eq!(hb.next(t, last_write), MULTIPART_HEARTBEAT, "line {i}");
            // Written in the second after the heartbeat's.
            last_write = t + 1_500;
        }
        t += 30_000;
        assert_eq!(hb.next(t, last_write), MULTIPART_HEARTBEAT_END);
        // A line again; then a part 5 s after it: 16 lines again.
        t += 30_000;
        assert_eq!(hb.next(t, t - 30_000), MULTIPART_HEARTBEAT);
        last_write = t + 5_000;
        for i in 0..16 {
            t += 30_000;
            assert_eq!(
                hb.next(t, last_write),
                MULTIPART_HEARTBEAT,
                "line {i} after the part"
            );
            last_write = t;
        }
        t += 30_000;
        assert_eq!(hb.next(t, last_write), MULTIPART_HEARTBEAT_END);
        // Chunked, the same in chunks; event streams have no count.
        let mut hb = Heartbeat::new(Beat::MultipartChunked);
        for _ in 0..16 {
            assert_eq!(hb.next(0, 0), MULTIPART_HEARTBEAT_CHUNK);
        }
        assert_eq!(hb.next(0, 0), MULTIPART_HEARTBEAT_END_CHUNK);
        let mut hb = Heartbeat::new(Beat::EventStream);
        for _ in 0..20 {
            assert_eq!(hb.next(0, 0), SSE_HEARTBEAT);
        }
    }
}
