//! The HTTP bus door: one connection's requests, routed to the bus, the
//! stats page or static files.
//!
//! A connection carries any number of requests (keep-alive, pipelining) until
//! one of them subscribes; from then on it is a stream of pushed messages and
//! further input is read and discarded, as in msgbus. Responses are written
//! into the connection's output queue through the broker's [`Outbox`], so they
//! stay in order with pushed messages.

use std::path::PathBuf;

use base64::Engine;
use bytes::{Bytes, BytesMut};

use super::codec::{self, Decoder, Event, Method, Request};
use super::files;
use super::response;
use crate::broker::filter::Filter;
use crate::broker::frames::{multipart_opening, Framing};
use crate::broker::{Broker, ConnId, Millis, Outbox, Subscription};
use crate::config::{Config, Limits};
use crate::door::{self, CloseReason, Cx, Door, Next, Opener, Stats as LoopStats};
use std::rc::Rc;

/// The path prefix of the bus.
pub const BUS_PREFIX: &str = "/msgbus/";
/// The stats page.
pub const STATS_PATH: &str = "/msgbus-stats";
/// `204` to an HTTP/1.1 keep-alive publish (msgbus' reason phrase).
const NO_CONTENT_KEEP_ALIVE: &[u8] = b"HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n";
const MULTIPART_TYPE: &str = "multipart/x-mixed-replace;boundary=00MsgBus00";

/// Settings shared by every HTTP connection.
pub struct HttpContext {
    pub secret: Option<String>,
    /// Canonical path of the document root.
    pub docroot: Option<PathBuf>,
    pub limits: codec::Limits,
    pub started: std::time::Instant,
}

impl HttpContext {
    pub fn new(config: &Config) -> HttpContext {
        HttpContext {
            secret: config.secret.clone(),
            docroot: config.docroot.as_ref().and_then(|d| d.canonicalize().ok()),
            limits: codec_limits(&config.limits),
            started: std::time::Instant::now(),
        }
    }
}

fn codec_limits(limits: &Limits) -> codec::Limits {
    codec::Limits {
        max_head: limits.max_header,
        max_body: limits.max_body,
        ..codec::Limits::default()
    }
}

enum State {
    Requests,
    /// Subscribed to a channel (`None`: every channel).
    Streaming(Option<Bytes>),
}

pub struct HttpSession {
    decoder: Decoder,
    state: State,
    closing: bool,
    ctx: Rc<HttpContext>,
}

/// The bus door's opener: settings shared by every bus connection are
/// prepared once.
pub fn opener(config: &Config) -> Opener {
    let ctx = Rc::new(HttpContext::new(config));
    let limits = config.limits.clone();
    Box::new(move || Box::new(HttpSession::new(&limits, ctx.clone())))
}

impl Door for HttpSession {
    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        let ctx = self.ctx.clone();
        self.on_input(cx.me, cx.now, input, cx.broker, cx.out, &ctx, cx.stats)
    }
    fn on_answer(&mut self, _answer: door::Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }
    fn is_paused(&self) -> bool {
        false
    }
    fn mid_request(&self) -> bool {
        self.decoder.mid_request()
    }
    fn on_close(&mut self, cx: &mut Cx<'_>) {
        HttpSession::on_close(self, cx.me, cx.broker, cx.out);
    }
    fn upgrade(&mut self) -> Option<Box<dyn Door>> {
        self.take_stream().map(|s| Box::new(s) as Box<dyn Door>)
    }
}

impl Door for Stream {
    fn on_input(&mut self, _cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        Stream::on_input(self, input)
    }
    fn on_answer(&mut self, _answer: door::Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }
    fn is_paused(&self) -> bool {
        false
    }
    fn on_close(&mut self, cx: &mut Cx<'_>) {
        Stream::on_close(self, cx.me, cx.broker, cx.out);
    }
}

/// A subscribed HTTP connection: pushed messages go out, input is read and
/// discarded (a subscriber's later requests are ignored, as in msgbus).
pub struct Stream {
    /// `None`: subscribed to every channel.
    channel: Option<Bytes>,
}

impl Stream {
    pub fn on_input(&mut self, input: &mut BytesMut) -> Next {
        input.clear();
        Next::Read
    }

    pub fn on_close(&mut self, me: ConnId, broker: &mut Broker, out: &mut (impl Outbox + ?Sized)) {
        match self.channel.take() {
            Some(channel) => {
                broker.channels.unsubscribe(me, &channel, out);
            }
            None => {
                broker.channels.unsubscribe_all(me, out);
            }
        }
    }
}

/// Sends the open fan-out batch before the connection's turn ends.
fn finish(env: Env<'_, impl Outbox + ?Sized>, next: Next) -> Next {
    env.broker.seal(env.out);
    next
}

/// Everything a request handler may touch.
struct Env<'a, O: Outbox + ?Sized> {
    me: ConnId,
    broker: &'a mut Broker,
    out: &'a mut O,
    ctx: &'a HttpContext,
    stats: &'a LoopStats,
}

impl<O: Outbox + ?Sized> Env<'_, O> {
    fn send(&mut self, bytes: BytesMut) {
        self.out.deliver(self.me, bytes.freeze(), 0);
    }
}

impl HttpSession {
    pub fn new(limits: &Limits, ctx: Rc<HttpContext>) -> HttpSession {
        HttpSession {
            decoder: Decoder::new(codec_limits(limits)),
            state: State::Requests,
            closing: false,
            ctx,
        }
    }

    pub fn is_subscriber(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn on_input(
        &mut self,
        me: ConnId,
        _now: Millis,
        input: &mut BytesMut,
        broker: &mut Broker,
        out: &mut (impl Outbox + ?Sized),
        ctx: &HttpContext,
        stats: &LoopStats,
    ) -> Next {
        let mut env = Env {
            me,
            broker,
            out,
            ctx,
            stats,
        };
        while !self.closing {
            if self.is_subscriber() {
                // A subscriber's later requests are ignored.
                input.clear();
                break;
            }
            match self.decoder.decode(input) {
                Ok(None) => break,
                Ok(Some(Event::Continue)) => {
                    let mut b = BytesMut::new();
                    response::write_continue(&mut b);
                    env.send(b);
                }
                Ok(Some(Event::Request(req))) => self.handle(req, &mut env),
                Err(e) => {
                    log::debug!("bus conn {}: {e}", me.key);
                    let mut b = BytesMut::new();
                    response::error_response(&mut b, e);
                    env.send(b);
                    input.clear();
                    return finish(env, Next::Close(CloseReason::ProtocolError));
                }
            }
        }
        finish(
            env,
            if self.closing {
                Next::Close(CloseReason::Quit)
            } else {
                Next::Read
            },
        )
    }

    pub fn on_close(&mut self, me: ConnId, broker: &mut Broker, out: &mut (impl Outbox + ?Sized)) {
        if let Some(mut stream) = self.take_stream() {
            stream.on_close(me, broker, out);
        }
    }

    /// Once the connection has subscribed, hands over the little state a
    /// stream needs, so the loop can drop the request parser: an idle
    /// subscriber then costs its [`Stream`] and nothing else.
    pub fn take_stream(&mut self) -> Option<Stream> {
        match std::mem::replace(&mut self.state, State::Requests) {
            State::Streaming(channel) => Some(Stream { channel }),
            State::Requests => None,
        }
    }

    fn handle(&mut self, req: Request, env: &mut Env<'_, impl Outbox + ?Sized>) {
        let head_only = req.method == Method::Head;
        let keep_alive = req.keep_alive;
        if !keep_alive {
            self.closing = true;
        }
        let user = match authenticate(&req, env.ctx.secret.as_deref()) {
            Ok(user) => user,
            Err(()) => {
                let mut b = BytesMut::new();
                response::simple(
                    &mut b,
                    req.minor_version,
                    401,
                    "Unauthorized",
                    &[("WWW-Authenticate", "Basic realm=\"msgbus\"")],
                    "text/html",
                    b"<h1>Unauthorized</h1>",
                    head_only,
                    keep_alive,
                );
                env.send(b);
                return;
            }
        };
        let path = req.path();
        if let Some(channel) = path.strip_prefix(BUS_PREFIX) {
            let channel = channel.as_bytes();
            match req.method {
                Method::Get | Method::Head => self.subscribe(&req, channel, env),
                Method::Post => publish(&req, channel, user, env),
                _ => {
                    let mut b = BytesMut::new();
                    response::simple(
                        &mut b,
                        req.minor_version,
                        501,
                        "Not Implemented",
                        &[],
                        "text/plain; charset=utf-8",
                        b"501 Not Implemented: the bus takes GET (subscribe) and POST (publish)\n",
                        head_only,
                        keep_alive,
                    );
                    env.send(b);
                }
            }
        } else if path == STATS_PATH && matches!(req.method, Method::Get | Method::Head) {
            let body = stats_json(env.broker, env.stats, env.ctx);
            let mut b = BytesMut::new();
            response::simple(
                &mut b,
                req.minor_version,
                200,
                "OK",
                &[("Cache-Control", "no-cache")],
                "application/json",
                body.as_bytes(),
                head_only,
                keep_alive,
            );
            env.send(b);
        } else {
            let mut b = BytesMut::new();
            files::serve(&mut b, &req, env.ctx.docroot.as_deref());
            env.send(b);
        }
    }

    fn subscribe(
        &mut self,
        req: &Request,
        channel: &[u8],
        env: &mut Env<'_, impl Outbox + ?Sized>,
    ) {
        let sse = req
            .header("Accept")
            .is_some_and(|v| contains_token(v, b"text/event-stream"));
        let json = query_param(req.query().unwrap_or(""), "format").as_deref() == Some(b"json");
        let framing = if sse && json {
            Framing::EventStreamJson
        } else if sse {
            Framing::EventStream
        } else if req.minor_version == 0 {
            Framing::MultipartPlain
        } else {
            Framing::MultipartChunked
        };
        let mut b = BytesMut::new();
        match framing {
            Framing::EventStream | Framing::EventStreamJson => response::write_head(
                &mut b,
                req.minor_version,
                200,
                "OK",
                &[
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                ],
            ),
            Framing::MultipartChunked => response::write_head(
                &mut b,
                1,
                200,
                "OK",
                &[
                    ("Content-Type", MULTIPART_TYPE),
                    ("Cache-Control", "no-cache"),
                    ("Transfer-Encoding", "chunked"),
                ],
            ),
            _ => response::write_head(
                &mut b,
                0,
                200,
                "OK",
                &[
                    ("Content-Type", MULTIPART_TYPE),
                    ("Cache-Control", "no-cache"),
                ],
            ),
        }
        if req.method == Method::Head {
            env.send(b);
            return;
        }
        match framing {
            Framing::EventStream | Framing::EventStreamJson => {
                b.extend_from_slice(b": subscribed\n\n")
            }
            f => b.extend_from_slice(multipart_opening(f == Framing::MultipartChunked)),
        }
        env.send(b);
        let query = req.query().unwrap_or("");
        let type_filter = query_param(query, "type");
        let sender_filter = query_param(query, "sender");
        let sub = Subscription {
            framing,
            filter: Filter::new(type_filter.as_deref(), sender_filter.as_deref()),
        };
        if channel.is_empty() {
            env.broker.channels.subscribe_all(env.me, sub, env.out);
            self.state = State::Streaming(None);
        } else {
            env.broker
                .channels
                .subscribe(env.me, Bytes::copy_from_slice(channel), sub, env.out);
            self.state = State::Streaming(Some(Bytes::copy_from_slice(channel)));
        }
        // A stream never ends by itself: keep-alive does not apply.
        self.closing = false;
    }
}

fn publish(
    req: &Request,
    channel: &[u8],
    user: Option<String>,
    env: &mut Env<'_, impl Outbox + ?Sized>,
) {
    let mut b = BytesMut::new();
    let Some(content_type) = req.header("Content-Type") else {
        response::simple(
            &mut b,
            req.minor_version,
            400,
            "Bad Request",
            &[],
            "text/plain; charset=utf-8",
            b"400 Bad Request: a publish needs a Content-Type\n",
            false,
            req.keep_alive,
        );
        env.send(b);
        return;
    };
    env.broker.channels.publish(
        channel,
        content_type,
        user.as_deref().map(str::as_bytes),
        &req.body,
        env.out,
    );
    if req.minor_version == 1 && req.keep_alive {
        // The common answer of a keep-alive publisher, never rebuilt.
        env.out
            .deliver(env.me, Bytes::from_static(NO_CONTENT_KEEP_ALIVE), 0);
        return;
    }
    response::simple(
        &mut b,
        req.minor_version,
        204,
        "OK",
        &[],
        "",
        b"",
        false,
        req.keep_alive,
    );
    env.send(b);
}

/// Checks HTTP Basic credentials. Returns the user name when credentials
/// were given (with a secret: only when the password is right), `Err` when a
/// secret is set and the credentials are missing or wrong.
fn authenticate(req: &Request, secret: Option<&str>) -> Result<Option<String>, ()> {
    let creds = req.header("Authorization").and_then(basic_credentials);
    match (secret, creds) {
        (None, creds) => Ok(creds.map(|(user, _)| user)),
        (Some(secret), Some((user, password))) if password == secret => Ok(Some(user)),
        (Some(_), _) => Err(()),
    }
}

/// `Basic base64(user:password)`, split at the first colon; a password that
/// itself holds a colon is refused, as msgbus did.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if password.contains(':') {
        return None;
    }
    // The user name is written into every part it publishes (`From:`, and
    // the SSE comment line): a CR or LF in it would let a publisher forge
    // delimiters, parts and events.
    if user.chars().any(char::is_control) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|part| {
        let media = part.split(|&b| b == b';').next().unwrap_or(b"");
        media.trim_ascii().eq_ignore_ascii_case(token)
    })
}

/// The percent-decoded value of the first `name=` in a query string; a name
/// without `=` counts as absent.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v.as_bytes()))
    })
}

/// Decodes `%XX` escapes and `+` as a space; a bad escape stays as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b'%' => {
                let hex = s.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(c),
                }
            }
            b'+' => out.push(b' '),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

fn stats_json(broker: &Broker, stats: &LoopStats, ctx: &HttpContext) -> String {
    let b = broker.stats();
    let v = serde_json::json!({
        "uptime_s": ctx.started.elapsed().as_secs(),
        "connections": {
            "line": stats.open_of("line"),
            "bus": stats.open_of("bus"),
            "total": stats.open_total(),
            "accepted": stats.accepted,
            "accept_errors": stats.accept_errors,
            "closed_by": CloseReason::ALL
                .iter()
                .map(|r| (r.key(), serde_json::json!(stats.closed_by.get(*r as usize).copied().unwrap_or(0))))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "closed": stats.closed,
        },
        "channels": broker.channels.channel_count(),
        "subscribers": broker.channels.subscription_count(),
        "queues": {
            "queued": broker.queues.queued(),
            "waiting": broker.queues.waiting(),
            "sent": b.queued_in,
            "delivered": b.queued_out,
            "expired": b.expired,
            "full": broker.queues.refused_full(),
            "bytes": broker.queues.queued_bytes(),
        },
        "messages_in": b.queued_in + b.published,
        "messages_out": b.queued_out + b.fanned_out,
        "published": b.published,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "drops": stats.dropped.get(),
        "slow_disconnects": stats.slow_disconnects.get(),
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            basic_credentials(enc("bob:secret").as_bytes()),
            Some(("bob".into(), "secret".into()))
        );
        assert_eq!(
            basic_credentials(enc(":secret").as_bytes()),
            Some(("".into(), "secret".into()))
        );
        assert_eq!(basic_credentials(enc("bob:secret:extra").as_bytes()), None);
        assert_eq!(basic_credentials(enc("nocolon").as_bytes()), None);
        assert_eq!(basic_credentials(enc("a\r\n\r\nb:secret").as_bytes()), None);
        assert_eq!(basic_credentials(enc("a\x00:secret").as_bytes()), None);
        assert_eq!(basic_credentials(b"Digest abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert!(basic_credentials(format!("basic {}", &enc("a:b")[6..]).as_bytes()).is_some());
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_param("type=text/*,image/*&x=1", "type"),
            Some(b"text/*,image/*".to_vec())
        );
        assert_eq!(query_param("type=a&type=b", "type"), Some(b"a".to_vec()));
        assert_eq!(query_param("type", "type"), None);
        assert_eq!(
            query_param("sender=%21bob", "sender"),
            Some(b"!bob".to_vec())
        );
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4".to_vec());
    }

    #[test]
    fn the_static_204_is_what_the_builder_writes() {
        let mut b = BytesMut::new();
        response::simple(&mut b, 1, 204, "OK", &[], "", b"", false, true);
        assert_eq!(&b[..], NO_CONTENT_KEEP_ALIVE);
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
}
