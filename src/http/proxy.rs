//! The msglite HTTP proxy door: each HTTP request becomes a message to a
//! queue, and any line-protocol client (a *handler*) answers it.
//!
//! Owns: the request envelope and where it goes (the default queue, prefix
//! routes), the request body message, the checks of a handler's reply head,
//! the framing of its streamed body (chunked, by length, or to the close),
//! the cap on requests waiting for a handler, and the notice that tells
//! handlers a client went away. Must not touch: request decoding,
//! keep-alive and pipelining (`conn.rs`), sockets, other doors.
//!
//! A request's life: the door registers a wait on a fresh reply address,
//! sends the body to a fresh body address and the envelope to the queue
//! (with the reply address), and parks. The handler's first message on the
//! reply address is the head (`["STATUS", ["Name", "value", …]]`); the head
//! goes out at once, and so does each body message after it, until an empty
//! message ends the response. After every message the wait is registered
//! again (in [`Routes::on_resume`], in the same turn), so body messages sent
//! in between wait in the reply address' queue and are taken in order.
//! A first message that starts with `HTTP/` is a *whole reply* instead: the
//! complete response in one message ([`parse_whole`]), which ends it.
//! Pipelined requests behind the parked one wait in the input.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{Method, Request};
use super::conn::{Caller, HttpConn, Part, Reply, Routes, Settings};
use super::response::{Response, SERVER_LINE};
use crate::broker::frames::{decimal_len, put_decimal};
use crate::broker::{Answer, Parts, Ready, WaitId};
pub use crate::config::proxy_defaults::{DEFAULT_MAX_PENDING, DEFAULT_QUEUE, DEFAULT_TIMEOUT_S};
use crate::config::Config;
use crate::door::{Cx, Opener};

/// The channel on which the door publishes `{"id", "replyAddr"}` (JSON)
/// when an HTTP client goes away before its response has ended.
pub const CLOSED_CHANNEL: &str = "msglite.httpClosed";
/// The content type of the closed notice.
const NOTICE_TYPE: &[u8] = b"application/json";

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What every proxy connection shares, prepared once at start-up.
struct Shared {
    default_queue: Bytes,
    /// `(path prefix, queue)`, longest prefix first.
    routes: Vec<(String, Bytes)>,
    timeout_s: u64,
    max_pending: usize,
    /// Unsent bytes a client may hold while its response streams
    /// (`--backlog-limit`); past it the response is cut.
    max_unsent: usize,
    /// Requests sent to a handler whose head has not come.
    pending: Cell<usize>,
    /// Requests refused with 503 because `pending` was at the cap.
    refused: Cell<u64>,
    next_id: Cell<u64>,
    /// Makes request ids unique across restarts (the start time).
    id_prefix: Rc<str>,
    scratch: RefCell<Scratch>,
}

impl Shared {
    /// The queue of the longest route whose prefix starts `path`.
    fn queue_for(&self, path: &str) -> &Bytes {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(&self.default_queue, |(_, queue)| queue)
    }

    fn fresh_id(&self) -> RequestId {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        RequestId {
            prefix: Rc::clone(&self.id_prefix),
            n,
        }
    }
}

/// A request's id, `PREFIX-N` with N in lower-case hex: it names the request
/// in its envelope, in the logs and in the notice that its client went away.
/// Written out where it is shown, not kept as a string.
struct RequestId {
    prefix: Rc<str>,
    n: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:x}", self.prefix, self.n)
    }
}

impl RequestId {
    /// The id as a JSON string.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        json_string_body(out, &self.prefix);
        out.push(b'-');
        let digits = (64 - self.n.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            let d = (self.n >> (4 * i)) & 0xf;
            out.push(b"0123456789abcdef".get(d as usize).copied().unwrap_or(b'0'));
        }
        out.push(b'"');
    }
}

/// The proxy door's constructor: its settings are read from `config` once.
pub fn opener(config: &Config) -> Opener {
    // The Authorization header belongs to the application behind the
    // proxy: the bus' `--secret` does not apply here.
    let settings = Rc::new(Settings {
        checks_credentials: false,
        ..Settings::from_config(config, "switchboard")
    });
    let start_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let shared = Rc::new(Shared {
        default_queue: Bytes::from(config.proxy.queue.clone()),
        routes: config
            .proxy
            .routes
            .iter()
            .map(|(prefix, queue)| (prefix.clone(), Bytes::from(queue.clone())))
            .collect(),
        timeout_s: config.proxy.timeout_s,
        max_pending: config.proxy.max_pending,
        max_unsent: config.limits.backlog,
        pending: Cell::new(0),
        refused: Cell::new(0),
        next_id: Cell::new(0),
        id_prefix: format!("{start_s:x}").into(),
        scratch: RefCell::default(),
    });
    Box::new(move || {
        let routes = Proxy {
            shared: Rc::clone(&shared),
            spent: None,
        };
        Box::new(HttpConn::new(Rc::clone(&settings), routes))
    })
}

/// The proxy routes of one connection.
pub struct Proxy {
    shared: Rc<Shared>,
    /// The body address of the request whose response just ended, when its
    /// body was empty: the message there is dropped at the next call that
    /// reaches the broker ([`Routes::tidy`]).
    spent: Option<Bytes>,
}

/// A request waiting for its handler: what its response needs.
pub struct Pending {
    id: RequestId,
    reply: Bytes,
    /// The body address, when the body is empty: that message is dropped
    /// once the response has ended, read or not (a handler learns from the
    /// envelope that there is no body and need not read it).
    empty_body: Option<Bytes>,
    wait: WaitId,
    stage: Stage,
    minor_version: u8,
    head_only: bool,
    /// The client's keep-alive.
    keep_alive: bool,
    /// Holds one of the door's pending slots (until its head comes or it
    /// ends otherwise).
    counted: bool,
}

enum Stage {
    /// Waiting for the head.
    Head,
    /// The head went out; body messages follow.
    Body { framing: Framing, keep_alive: bool },
}

/// How body messages go to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// A response without a body (to HEAD, 204, 304): body messages are
    /// read and dropped.
    Discard,
    /// HTTP/1.1 without a Content-Length from the handler.
    Chunked,
    /// The handler gave a Content-Length: `left` bytes may still go out;
    /// `over`: the handler sent more than it said (the excess is dropped).
    Length { left: u64, over: bool },
    /// HTTP/1.0 without a Content-Length: the end of the body is the close.
    UntilClose,
}

impl Proxy {
    /// Gives back the request's pending slot, once.
    fn release(&self, p: &mut Pending) {
        if p.counted {
            p.counted = false;
            let n = self.shared.pending.get();
            self.shared.pending.set(n.saturating_sub(1));
        }
    }

    fn refuse_over_cap(&self) -> Reply<Pending> {
        let shared = &self.shared;
        let refused = shared.refused.get() + 1;
        shared.refused.set(refused);
        if refused.is_power_of_two() {
            log::warn!(
                "proxy: {} requests wait for a handler (--proxy-max-pending {}): 503; {refused} refused so far",
                shared.pending.get(),
                shared.max_pending
            );
        }
        let detail = format!(
            "{} requests wait for a handler (--proxy-max-pending {}); refused so far: {refused}",
            shared.pending.get(),
            shared.max_pending
        );
        Reply::Respond(Response::text(503, &detail).header("Retry-After", "1"))
    }
}

impl Routes for Proxy {
    type Parked = Pending;

    fn handle(&mut self, req: Request, _caller: Caller, cx: &mut Cx<'_>) -> Reply<Pending> {
        let shared = Rc::clone(&self.shared);
        if shared.pending.get() >= shared.max_pending {
            return self.refuse_over_cap();
        }
        let queue = shared.queue_for(req.path()).clone();
        let id = shared.fresh_id();
        let timeout = shared.timeout_s;
        let (reply, wait) = cx.broker.wait_on_fresh(cx.now, cx.me, timeout, cx.out);
        let wait = match wait {
            Ready::Waiting(w) => w,
            // A fresh address holds nothing, and the timeout is not 0.
            Ready::Message(_) | Ready::TimedOut => {
                return Reply::Respond(Response::text(500, "the reply address was not fresh"))
            }
        };
        // The body, then the envelope that names its address. An empty body
        // (most requests) costs no queue: see `fresh_holding_empty`.
        let body_addr = if req.body.is_empty() {
            cx.broker.fresh_holding_empty(cx.now, timeout, cx.out)
        } else {
            let addr = cx.broker.queues.unique_address();
            cx.broker
                .send(
                    cx.now,
                    addr.clone(),
                    None,
                    timeout,
                    req.body.clone(),
                    cx.out,
                )
                .map(|()| addr)
        };
        let sent = body_addr.and_then(|body_addr| {
            let envelope = match shared.scratch.try_borrow_mut() {
                Ok(mut scratch) => envelope(&req, &id, &body_addr, &mut scratch),
                Err(_) => envelope(&req, &id, &body_addr, &mut Scratch::default()),
            };
            // Both made here for this message: queued without a copy.
            let sent = cx.broker.send_as(
                cx.now,
                queue.clone(),
                Some(reply.clone()),
                timeout,
                envelope,
                Parts::Made,
                cx.out,
            );
            if sent.is_err() {
                // Nobody learns the body's address: do not leave the body there.
                cx.broker.queues.discard(&body_addr);
            }
            sent.map(|()| body_addr)
        });
        let Ok(body_addr) = sent else {
            cx.broker.cancel(wait);
            log::warn!("proxy {id}: the queue is full (--max-queued-bytes): 503");
            return Reply::Respond(
                Response::text(503, "the handlers' queue is full").header("Retry-After", "1"),
            );
        };
        shared.pending.set(shared.pending.get() + 1);
        log::debug!(
            "proxy {id}: {} {} → {}",
            req.method_raw(),
            req.target(),
            String::from_utf8_lossy(&queue)
        );
        Reply::Park {
            parked: Pending {
                id,
                reply,
                empty_body: req.body.is_empty().then_some(body_addr),
                wait,
                stage: Stage::Head,
                minor_version: req.minor_version,
                head_only: req.method == Method::Head,
                keep_alive: req.keep_alive,
                counted: true,
            },
            deadline: None,
        }
    }

    fn on_part(&mut self, p: &mut Pending, answer: Answer<'_>) -> Option<Part> {
        let part = match (&mut p.stage, answer) {
            // A message-switch transfer's answer never goes to a proxy wait.
            (_, Answer::Switch(_) | Answer::Done(_)) => return None,
            (Stage::Head, Answer::Timeout) => {
                self.release(p);
                log::info!(
                    "proxy {}: no answer from a handler in {} s: 504",
                    p.id,
                    self.shared.timeout_s
                );
                Part::Whole(Response::text(504, "no answer from a handler in time"))
            }
            (Stage::Head, Answer::Message(d)) if d.body.starts_with(b"HTTP/") => {
                self.release(p);
                whole_reply(p, d.body)
            }
            (Stage::Head, Answer::Message(d)) => {
                self.release(p);
                match parse_head(d.body) {
                    Err(why) => {
                        log::info!("proxy {}: invalid reply head: {why}: 502", p.id);
                        Part::Whole(Response::text(502, &format!("invalid reply head: {why}")))
                    }
                    Ok(head) => {
                        log::debug!("proxy {}: {}", p.id, head.status);
                        let (bytes, framing, keep_alive) = write_head(&head, p);
                        p.stage = Stage::Body {
                            framing,
                            keep_alive,
                        };
                        Part::More(bytes)
                    }
                }
            }
            (Stage::Body { .. }, Answer::Timeout) => {
                log::info!(
                    "proxy {}: no body message from the handler in {} s: closing",
                    p.id,
                    self.shared.timeout_s
                );
                Part::Last {
                    bytes: Bytes::new(),
                    keep_alive: false,
                }
            }
            (
                Stage::Body {
                    framing,
                    keep_alive,
                },
                Answer::Message(d),
            ) => {
                if d.body.is_empty() {
                    end_of_body(*framing, *keep_alive, &p.id)
                } else {
                    Part::More(body_part(framing, d.body))
                }
            }
        };
        if !matches!(part, Part::More(_)) {
            self.spent = p.empty_body.take();
        }
        Some(part)
    }

    fn on_resume(&mut self, p: &mut Pending, cx: &mut Cx<'_>) -> Option<Part> {
        if cx.unsent() > self.shared.max_unsent {
            // A client that does not read its stream: its queue would grow
            // with whatever the handler sends.
            log::info!(
                "proxy {}: the client holds {} unsent bytes (--backlog-limit {}): cutting the response",
                p.id,
                cx.unsent(),
                self.shared.max_unsent
            );
            announce_closed(p, cx);
            if let Some(addr) = p.empty_body.take() {
                cx.broker.queues.discard(&addr);
            }
            return Some(Part::Last {
                bytes: Bytes::new(),
                keep_alive: false,
            });
        }
        let ready = cx.broker.ready(
            cx.now,
            cx.me,
            self.shared.timeout_s,
            vec![p.reply.clone()],
            cx.out,
        );
        match ready {
            Ready::Waiting(w) => {
                p.wait = w;
                None
            }
            Ready::Message(m) => self.on_part(p, Answer::Message(m.delivery())),
            Ready::TimedOut => self.on_part(p, Answer::Timeout),
        }
    }

    fn on_close(&mut self, parked: Option<Pending>, cx: &mut Cx<'_>) {
        self.tidy(cx);
        let Some(mut p) = parked else {
            return;
        };
        cx.broker.cancel(p.wait);
        self.release(&mut p);
        log::info!("proxy {}: the client went away before the end", p.id);
        announce_closed(&p, cx);
        if let Some(addr) = p.empty_body.take() {
            cx.broker.queues.discard(&addr);
        }
    }

    fn tidy(&mut self, cx: &mut Cx<'_>) {
        if let Some(addr) = self.spent.take() {
            cx.broker.queues.discard(&addr);
        }
    }
}

/// The response of a whole reply (see [`parse_whole`]): all of it at once.
fn whole_reply(p: &Pending, message: &[u8]) -> Part {
    match parse_whole(message, p.head_only) {
        Err(why) => {
            log::info!("proxy {}: invalid whole reply: {why}: 502", p.id);
            Part::Whole(Response::text(502, &format!("invalid reply: {why}")))
        }
        Ok((head, body)) => {
            log::debug!("proxy {}: {} (whole)", p.id, head.status);
            let (bytes, _, keep_alive) = write_head_and(&head, p, body);
            Part::Last { bytes, keep_alive }
        }
    }
}

/// Tells handlers (on [`CLOSED_CHANNEL`]) that nobody reads the answers to
/// request `p` any more.
fn announce_closed(p: &Pending, cx: &mut Cx<'_>) {
    let notice = serde_json::json!({
        "id": p.id.to_string(),
        "replyAddr": String::from_utf8_lossy(&p.reply),
    });
    let body = notice.to_string();
    cx.broker.channels.publish(
        CLOSED_CHANNEL.as_bytes(),
        NOTICE_TYPE,
        None,
        body.as_bytes(),
        cx.out,
    );
}

/// Hop-by-hop headers: they describe one connection, not the message, and
/// are neither passed to handlers nor taken from them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &str, named_by_connection: &[String]) -> bool {
    // Most names are of no hop-by-hop header's length (`Content-Type`,
    // `Content-Length`): one comparison instead of ten.
    let listed = matches!(name.len(), 2 | 7 | 8 | 10 | 16..=19)
        && HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h));
    listed
        || named_by_connection
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// The header names a `Connection` value lists (besides `close` and
/// `keep-alive`): they are hop-by-hop too.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).into_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `content-type` → `Content-Type`, as msglite wrote header names.
fn canonical_name(name: &str) -> String {
    // Only ASCII letters change, so the bytes stay UTF-8.
    String::from_utf8_lossy(&canonical_bytes(name).collect::<Vec<u8>>()).into_owned()
}

/// Header fields an envelope looks up on the stack; a request with more
/// has them collected into a vector.
const ENVELOPE_INLINE_FIELDS: usize = 16;

/// Buffers an envelope is made in, kept from one request to the next.
#[derive(Default)]
struct Scratch {
    /// The request's headers that go into the envelope, by index (`None`:
    /// the `Content-Length` of a body that came chunked), sorted by their
    /// canonical names.
    order: Vec<Option<usize>>,
    /// The envelope, copied out at its exact size.
    out: Vec<u8>,
}

/// A larger envelope's buffer is not kept.
const SCRATCH_KEPT: usize = 64 * 1024;

/// The request as its handler sees it: msglite's JSON object (keys sorted,
/// header names canonical, repeated headers joined with `,`) plus `id`.
/// Hop-by-hop headers are left out; a body that came chunked is whole, and
/// its `Content-Length` says so.
fn envelope(req: &Request, id: &RequestId, body_addr: &[u8], scratch: &mut Scratch) -> Bytes {
    // The fields, looked up once: the sort below reads each name several
    // times.
    let mut inline = [("", &b""[..]); ENVELOPE_INLINE_FIELDS];
    let spilled: Vec<(&str, &[u8])>;
    let n = req.headers().len();
    let fields: &[(&str, &[u8])] = match inline.get_mut(..n) {
        Some(slots) => {
            for (slot, field) in slots.iter_mut().zip(req.headers()) {
                *slot = field;
            }
            slots
        }
        None => {
            spilled = req.headers().collect();
            &spilled
        }
    };
    let listed = connection_tokens(
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|&(_, v)| v),
    );
    let chunked = req.header("Transfer-Encoding").is_some();
    let length = chunked.then(|| req.body.len().to_string());
    let header = |i: Option<usize>| -> (&str, &[u8]) {
        match i.and_then(|i| fields.get(i)) {
            Some(&(name, value)) => (name, value),
            None => (
                "Content-Length",
                length.as_deref().unwrap_or_default().as_bytes(),
            ),
        }
    };
    // Sorted by canonical name; a stable sort keeps repeated headers in the
    // order received, for the join.
    let Scratch { order, out } = scratch;
    order.clear();
    order.extend(
        fields
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| !is_hop_by_hop(name, &listed))
            .filter(|(_, (name, _))| !(chunked && name.eq_ignore_ascii_case("content-length")))
            .map(|(i, _)| Some(i)),
    );
    if chunked {
        order.push(None);
    }
    order.sort_by(|&a, &b| canonical_cmp(header(a).0, header(b).0));
    out.clear();
    // The keys in order, as serde_json writes an object (a sorted map).
    out.extend_from_slice(b"{\"bodyAddr\":");
    json_string(out, &text(body_addr));
    out.extend_from_slice(b",\"headers\":{");
    let mut previous: Option<&str> = None;
    for &i in order.iter() {
        let (name, value) = header(i);
        if previous.is_some_and(|p| canonical_cmp(p, name).is_eq()) {
            // A repeated header: its values joined with `,`.
            out.pop();
            out.push(b',');
        } else {
            if previous.is_some() {
                out.push(b',');
            }
            canonical_json(out, name);
            out.extend_from_slice(b":\"");
        }
        json_string_body(out, &text(value));
        out.push(b'"');
        previous = Some(name);
    }
    out.extend_from_slice(b"},\"id\":");
    id.write_json(out);
    out.extend_from_slice(b",\"method\":");
    json_string(out, req.method_raw());
    out.extend_from_slice(b",\"protocol\":\"HTTP/1.");
    if req.minor_version < 10 {
        out.push(b'0' + req.minor_version);
    } else {
        out.extend_from_slice(req.minor_version.to_string().as_bytes());
    }
    out.extend_from_slice(b"\",\"url\":");
    json_string(out, req.target());
    out.push(b'}');
    let envelope = Bytes::copy_from_slice(out);
    if out.capacity() > SCRATCH_KEPT {
        *out = Vec::new();
    }
    envelope
}

/// The bytes of `name`'s canonical form: each letter upper-case after a
/// `-` or at the start, lower-case elsewhere.
fn canonical_bytes(name: &str) -> impl Iterator<Item = u8> + '_ {
    let mut upper = true;
    name.bytes().map(move |b| {
        let out = if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        upper = b == b'-';
        out
    })
}

/// Orders header names as their canonical forms order, without writing
/// them out.
fn canonical_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    canonical_bytes(a).cmp(canonical_bytes(b))
}

/// `name`'s canonical form as a JSON string. A token (every name that
/// came through the HTTP decoder) needs no escape.
fn canonical_json(out: &mut Vec<u8>, name: &str) {
    if name.bytes().all(is_token_byte) {
        out.push(b'"');
        out.extend(canonical_bytes(name));
        out.push(b'"');
    } else {
        json_string(out, &canonical_name(name));
    }
}

/// `b` as text: itself when it is UTF-8 (checked by the standard library's
/// fast check), else with U+FFFD for each invalid sequence.
fn text(b: &[u8]) -> Cow<'_, str> {
    std::str::from_utf8(b).map_or_else(|_| String::from_utf8_lossy(b), Cow::Borrowed)
}

/// `s` as a JSON string, quoted, escaped as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_string_body(out, s);
    out.push(b'"');
}

/// `s` escaped for inside a JSON string, exactly as serde_json writes it:
/// `"` and `\`, the short escapes `\b \f \n \r \t`, any other control
/// character as `\u00XX` (lowercase hex); everything else as it is.
fn json_string_body(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // Most strings (addresses, ids, methods, most header values) need no
    // escape: one pass that the compiler can vectorise, then one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(bytes.get(plain..i).unwrap_or_default());
        plain = i + 1;
        if escape.is_empty() {
            let hex = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
            out.extend_from_slice(b"\\u00");
            out.push(hex(b >> 4));
            out.push(hex(b & 0xf));
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(bytes.get(plain..).unwrap_or_default());
}

/// A handler's reply head, checked. Its strings borrow from the message
/// when they hold no escape.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub status: u16,
    pub reason: &'static str,
    /// End-to-end headers as given (hop-by-hop ones and Content-Length
    /// taken out).
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub content_length: Option<u64>,
    /// The handler named its own `Server`.
    pub has_server: bool,
}

/// A JSON value of a reply head as far as the head's checks look into it:
/// strings borrowed from the message where they can be, no object kept.
enum HeadValue<'a> {
    Str(Cow<'a, str>),
    Number(serde_json::Number),
    Array(Vec<HeadValue<'a>>),
    /// An object, a boolean or `null`.
    Other,
}

impl<'de> serde::Deserialize<'de> for HeadValue<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HeadValueVisitor)
    }
}

struct HeadValueVisitor;

impl<'de> serde::de::Visitor<'de> for HeadValueVisitor {
    type Value = HeadValue<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(HeadValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(HeadValue::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(HeadValue::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(HeadValue::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(HeadValue::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(HeadValue::Other, HeadValue::Number))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(HeadValue::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(HeadValue::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(HeadValue::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(HeadValue::Other)
    }
}

/// The common head read without serde_json: `[STATUS, [strings…]]` (or
/// `[STATUS]`) where STATUS is a string or a number of at most 19 digits and
/// every string is printable ASCII without escapes, with JSON whitespace
/// anywhere between. Gives the value serde_json would give, or `None` for
/// anything else (escapes, other bytes, other shapes, bad JSON), which then
/// goes to serde_json, so that its errors and reasons stay the same.
fn plain_head(body: &[u8]) -> Option<HeadValue<'_>> {
    let mut r = Plain { b: body, at: 0 };
    r.byte(b'[')?;
    let status = match r.peek()? {
        b'"' => HeadValue::Str(Cow::Borrowed(r.string()?)),
        b'0'..=b'9' => {
            let start = r.at;
            while matches!(r.b.get(r.at), Some(b'0'..=b'9')) {
                r.at += 1;
            }
            let digits = r.b.get(start..r.at)?;
            // serde_json rejects leading zeros; fractions, exponents and
            // long numbers are left to it too.
            if digits.len() > 19 || (digits.len() > 1 && digits.first() == Some(&b'0')) {
                return None;
            }
            let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
            HeadValue::Number(n.into())
        }
        _ => return None,
    };
    let mut items = Vec::with_capacity(2);
    items.push(status);
    match r.peek()? {
        b']' => r.at += 1,
        b',' => {
            r.at += 1;
            r.byte(b'[')?;
            let mut list = Vec::new();
            if r.peek()? == b']' {
                r.at += 1;
            } else {
                loop {
                    list.push(HeadValue::Str(Cow::Borrowed(r.string()?)));
                    match r.peek()? {
                        b',' => r.at += 1,
                        b']' => {
                            r.at += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            items.push(HeadValue::Array(list));
            r.byte(b']')?;
        }
        _ => return None,
    }
    r.skip_ws();
    (r.at == body.len()).then_some(HeadValue::Array(items))
}

/// A cursor for [`plain_head`].
struct Plain<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Plain<'a> {
    fn skip_ws(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }
    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.at).copied()
    }
    fn byte(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.at += 1)
    }
    /// A string of printable ASCII without escapes, after whitespace.
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.at;
        loop {
            match *self.b.get(self.at)? {
                b'"' => break,
                b'\\' => return None,
                b' '..=b'~' => self.at += 1,
                _ => return None,
            }
        }
        let s = std::str::from_utf8(self.b.get(start..self.at)?).ok()?;
        self.at += 1;
        Some(s)
    }
}

/// Checks `["STATUS", ["Name", "value", …]]`. The status is a string of
/// three digits (msglite's form) or a number, and must be a final status
/// with a registered meaning.
pub fn parse_head(body: &[u8]) -> Result<Head<'_>, String> {
    let value: HeadValue<'_> = match plain_head(body) {
        Some(value) => value,
        None => serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?,
    };
    check_head(value)
}

/// Header lines a whole reply may hold.
const MAX_WHOLE_HEADERS: usize = 100;

/// A whole reply: one message that is a complete HTTP/1.x response (status
/// line, header lines, a blank line, the body), as Mongrel2's handlers
/// answer. Gives the head, checked as [`parse_head`] checks a JSON head,
/// and the body. The response's own framing is the message's: its
/// `Content-Length`, if it gives one, must be the length of the bytes after
/// the head (a `HEAD` or `204`/`304` response may give one and no body).
pub fn parse_whole(body: &[u8], bodiless: bool) -> Result<(Head<'_>, &[u8]), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_WHOLE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let end = match resp.parse(body) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => {
            return Err("an HTTP head without its end (a blank line)".into())
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_WHOLE_HEADERS} header lines"))
        }
        Err(e) => return Err(format!("not an HTTP/1.x response ({e})")),
    };
    let status = resp.code.unwrap_or_default();
    let reason = final_status(status)?;
    let mut pairs = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| format!("the value of {} is not UTF-8", h.name))?;
        pairs.push((Cow::Borrowed(h.name), Cow::Borrowed(value)));
    }
    let mut head = head_of(status, reason, pairs)?;
    let rest = body.get(end..).unwrap_or_default();
    let bodiless = bodiless || status == 204 || status == 304;
    if !bodiless {
        let len = rest.len() as u64;
        if head.content_length.is_some_and(|n| n != len) {
            return Err(format!(
                "Content-Length {} but {len} bytes follow the head",
                head.content_length.unwrap_or_default()
            ));
        }
        head.content_length = Some(len);
    }
    Ok((head, rest))
}

/// The checks of [`parse_head`] on the value read.
fn check_head(value: HeadValue<'_>) -> Result<Head<'_>, String> {
    let HeadValue::Array(items) = value else {
        return Err("not a JSON array".into());
    };
    if items.len() > 2 {
        return Err(format!("{} items, expected [STATUS, HEADERS]", items.len()));
    }
    let mut items = items.into_iter();
    let status = match items.next() {
        None => return Err("an empty array".into()),
        Some(HeadValue::Str(s)) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u16>()
            .map_err(|_| format!("status {s:?} is not a number"))?,
        Some(HeadValue::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("status {n} is not a status code"))?,
        Some(HeadValue::Str(s)) => {
            let shown: String = s.chars().take(32).collect();
            return Err(format!("status {shown:?} is not a number"));
        }
        Some(_) => return Err("the status is not a string or a number".into()),
    };
    let reason = final_status(status)?;
    let list = match items.next() {
        None => Vec::new(),
        Some(HeadValue::Array(list)) => list,
        Some(_) => return Err("the headers are not an array".into()),
    };
    if !list.len().is_multiple_of(2) {
        return Err("an odd number of header items".into());
    }
    let mut pairs = Vec::with_capacity(list.len() / 2);
    let mut list = list.into_iter();
    while let (Some(name), Some(value)) = (list.next(), list.next()) {
        let (HeadValue::Str(name), HeadValue::Str(value)) = (name, value) else {
            return Err("a header name or value that is not a string".into());
        };
        pairs.push((name, value));
    }
    head_of(status, reason, pairs)
}

/// The reason phrase of `status` if it is a final status with a registered
/// meaning.
fn final_status(status: u16) -> Result<&'static str, String> {
    if status < 200 {
        return Err(format!("status {status} is not a final status"));
    }
    status_reason(status).ok_or_else(|| format!("unknown status {status}"))
}

/// The checks every reply head shares, whatever its form: header names are
/// tokens, values hold no control character, hop-by-hop headers go, one
/// Content-Length at most.
fn head_of<'a>(
    status: u16,
    reason: &'static str,
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
) -> Result<Head<'a>, String> {
    for (name, value) in &pairs {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            let shown: String = name.chars().take(32).collect();
            return Err(format!("header name {shown:?} is not a token"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(format!(
                "the value of {name} holds a control character (CR, LF, …)"
            ));
        }
    }
    let listed = connection_tokens(
        pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_bytes()),
    );
    let (mut content_length, mut has_server) = (None, false);
    for (name, value) in &pairs {
        if is_hop_by_hop(name, &listed) {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            let n = if !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) {
                v.parse::<u64>().ok()
            } else {
                None
            };
            let Some(n) = n else {
                return Err(format!("Content-Length {value:?} is not a number"));
            };
            if content_length.is_some_and(|m| m != n) {
                return Err("two different Content-Length values".into());
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("server") {
            has_server = true;
        }
    }
    // What goes out as it came, in the pairs' own vector.
    let mut headers = pairs;
    headers.retain(|(name, _)| {
        !is_hop_by_hop(name, &listed) && !name.eq_ignore_ascii_case("content-length")
    });
    Ok(Head {
        status,
        reason,
        headers,
        content_length,
        has_server,
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    TCHAR
        .get(usize::from(b >> 6))
        .is_some_and(|bits| (bits >> (b & 63)) & 1 == 1)
}

/// [`is_token_byte`] as one bit per ASCII byte, in two words: a header name
/// is checked a byte at a time, on every response.
const TCHAR: [u64; 2] = {
    let mut bits = [0u64; 2];
    let mut c = 0u8;
    while c < 128 {
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            if c < 64 {
                bits[0] |= 1 << c;
            } else {
                bits[1] |= 1 << (c - 64);
            }
        }
        c += 1;
    }
    bits
};

/// Frames the head for the request `p`; returns it, how the body goes out,
/// and whether the connection stays open after the response.
fn write_head(head: &Head, p: &Pending) -> (Bytes, Framing, bool) {
    write_head_and(head, p, &[])
}

/// [`write_head`] with `body` after the head (when the response has a body),
/// in one allocation of their exact size (frozen with room to spare, a
/// buffer costs a second one).
fn write_head_and(head: &Head, p: &Pending, body: &[u8]) -> (Bytes, Framing, bool) {
    let bodiless = p.head_only || head.status == 204 || head.status == 304;
    let framing = if bodiless {
        Framing::Discard
    } else if let Some(n) = head.content_length {
        Framing::Length {
            left: n,
            over: false,
        }
    } else if p.minor_version >= 1 {
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    let keep_alive = p.keep_alive && framing != Framing::UntilClose;
    let body = if framing == Framing::Discard {
        &[]
    } else {
        body
    };
    let length_header = match (framing, head.content_length) {
        (Framing::Chunked, _) => "Transfer-Encoding: chunked\r\n".len(),
        (_, Some(n)) if head.status != 204 => "Content-Length: \r\n".len() + decimal_len(n),
        _ => 0,
    };
    let connection_header = match (p.minor_version == 0, keep_alive) {
        (false, false) => "Connection: close\r\n".len(),
        (true, true) => "Connection: keep-alive\r\n".len(),
        _ => 0,
    };
    let size = "HTTP/1.1 \r\n".len()
        + decimal_len(u64::from(head.status))
        + 1
        + head.reason.len()
        + if head.has_server {
            0
        } else {
            SERVER_LINE.len()
        }
        + head
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
        + length_header
        + connection_header
        + 2
        + body.len();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(if p.minor_version == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    put_decimal(&mut out, u64::from(head.status));
    out.put_u8(b' ');
    out.put_slice(head.reason.as_bytes());
    out.put_slice(b"\r\n");
    if !head.has_server {
        out.put_slice(SERVER_LINE.as_bytes());
    }
    for (name, value) in &head.headers {
        put_header(&mut out, name, value);
    }
    match (framing, head.content_length) {
        (Framing::Chunked, _) => put_header(&mut out, "Transfer-Encoding", "chunked"),
        (_, Some(n)) if head.status != 204 => {
            out.put_slice(b"Content-Length: ");
            put_decimal(&mut out, n);
            out.put_slice(b"\r\n");
        }
        _ => {}
    }
    match (p.minor_version == 0, keep_alive) {
        (false, false) => put_header(&mut out, "Connection", "close"),
        (true, true) => put_header(&mut out, "Connection", "keep-alive"),
        _ => {}
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
    debug_assert_eq!(out.len(), size, "the size of a head written for a reply");
    (out.freeze(), framing, keep_alive)
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// One body message as it goes to the client.
fn body_part(framing: &mut Framing, chunk: &Bytes) -> Bytes {
    match framing {
        Framing::Discard => Bytes::new(),
        Framing::UntilClose => chunk.clone(),
        Framing::Chunked => {
            let size = format!("{:X}\r\n", chunk.len());
            let mut out = BytesMut::with_capacity(size.len() + chunk.len() + 2);
            out.put_slice(size.as_bytes());
            out.put_slice(chunk);
            out.put_slice(b"\r\n");
            out.freeze()
        }
        Framing::Length { left, over } => {
            let len = chunk.len() as u64;
            if len > *left {
                *over = true;
            }
            let take = len.min(*left);
            *left -= take;
            chunk.slice(..usize::try_from(take).unwrap_or(chunk.len()))
        }
    }
}

/// The empty message: the end of the response. A body shorter or longer
/// than its Content-Length ends the connection too, so that the client
/// sees it was cut.
fn end_of_body(framing: Framing, keep_alive: bool, id: &RequestId) -> Part {
    match framing {
        Framing::Chunked => Part::Last {
            bytes: Bytes::from_static(LAST_CHUNK),
            keep_alive,
        },
        Framing::Discard => Part::Last {
            bytes: Bytes::new(),
            keep_alive,
        },
        Framing::UntilClose => Part::Last {
            bytes: Bytes::new(),
            keep_alive: false,
        },
        Framing::Length { left, over } => {
            let exact = left == 0 && !over;
            if !exact {
                log::info!(
                    "proxy {id}: the body did not match its Content-Length ({}): closing",
                    if over { "longer" } else { "shorter" }
                );
            }
            Part::Last {
                bytes: Bytes::new(),
                keep_alive: keep_alive && exact,
            }
        }
    }
}

/// The reason phrase of a final status with a registered meaning (RFC 9110
/// and the IANA registry), `None` for any other.
fn status_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookups that make the reply's checks cheap say what the plain
    /// definitions say.
    #[test]
    fn token_table_and_hop_by_hop_filter_match_their_definitions() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "byte {b}");
        }
        for h in HOP_BY_HOP {
            assert!(is_hop_by_hop(h, &[]), "{h}");
            assert!(is_hop_by_hop(&h.to_ascii_uppercase(), &[]), "{h}");
        }
        for name in [
            "Content-Type",
            "Content-Length",
            "Server",
            "X-Connection",
            "Tee",
        ] {
            assert!(!is_hop_by_hop(name, &[]), "{name}");
        }
        assert!(is_hop_by_hop("x-trace", &["X-Trace".to_string()]));
        assert_eq!(
            SERVER_LINE,
            format!("Server: {}\r\n", super::super::response::SERVER)
        );
    }
    use serde_json::{Map, Value};

    /// The head read without serde_json gives what serde_json gives, and
    /// leaves to it everything it does not take.
    #[test]
    fn plain_head_matches_serde_json() {
        let taken: &[&[u8]] = &[
            br#"["200",["Content-Type","text/plain","Content-Length","2"]]"#,
            br#" [ 200 , [ "X-A" , "b c" ] ] "#,
            br#"["404"]"#,
            br#"[204,[]]"#,
            b"[\"200\",\t[\"Connection\",\"close, x\",\"x\",\"1\"]]\r\n",
            br#"["200",["Content-Length","1","content-length","2"]]"#,
            br#"["abc",[]]"#,
            br#"[0]"#,
            br#"["200",["a","b","c"]]"#,
            br#"["200",["bad name","v"]]"#,
            br#"[9999999999999999999]"#,
            br#"["200",["Server","x"]]"#,
        ];
        let left: &[&[u8]] = &[
            b"",
            b"[",
            br#"[]"#,
            br#"{}"#,
            br#""200""#,
            br#"[200.0]"#,
            br#"[-1]"#,
            br#"[0200]"#,
            br#"[200e0]"#,
            br#"[184467440737095516150]"#,
            br#"["200",["X","a\r\nb"]]"#,
            br#"["200",["X","caf\u00e9"]]"#,
            "[\"200\",[\"X\",\"café\"]]".as_bytes(),
            b"[\"200\",[\"X\",\"a\x01\"]]",
            br#"["200",["X",1]]"#,
            br#"["200",["X","y",]]"#,
            br#"["200",[],3]"#,
            br#"["200",{}]"#,
            br#"["200"] x"#,
            br#"["200",["X","y"]"#,
            br#"[null]"#,
            br#"["200",[],]"#,
        ];
        for (body, plain) in taken
            .iter()
            .map(|b| (b, true))
            .chain(left.iter().map(|b| (b, false)))
        {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(plain_head(body).is_some(), plain, "{shown}");
            let by_serde = serde_json::from_slice::<HeadValue>(body)
                .map_err(|e| format!("not JSON ({e})"))
                .and_then(check_head);
            assert_eq!(parse_head(body), by_serde, "{shown}");
        }
    }

    /// The envelope as msglite's object built through `serde_json::Value`
    /// (how it was first written): the direct writer must match it byte
    /// for byte.
    fn envelope_by_value(req: &Request, id: &str, body_addr: &[u8]) -> String {
        let listed = connection_tokens(
            req.headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .map(|(_, v)| v),
        );
        let mut headers = Map::new();
        for (name, value) in req.headers() {
            if is_hop_by_hop(name, &listed) {
                continue;
            }
            let value = String::from_utf8_lossy(value);
            match headers.get_mut(&canonical_name(name)) {
                Some(Value::String(old)) => {
                    old.push(',');
                    old.push_str(&value);
                }
                _ => {
                    headers.insert(canonical_name(name), Value::String(value.into_owned()));
                }
            }
        }
        if req.header("Transfer-Encoding").is_some() {
            headers.insert(
                "Content-Length".into(),
                Value::String(req.body.len().to_string()),
            );
        }
        let mut env = Map::new();
        env.insert(
            "bodyAddr".into(),
            Value::String(String::from_utf8_lossy(body_addr).into_owned()),
        );
        env.insert("headers".into(), Value::Object(headers));
        env.insert("id".into(), Value::String(id.to_string()));
        env.insert("method".into(), Value::String(req.method_raw().to_owned()));
        env.insert(
            "protocol".into(),
            Value::String(format!("HTTP/1.{}", req.minor_version)),
        );
        env.insert("url".into(), Value::String(req.target().to_owned()));
        Value::Object(env).to_string()
    }

    #[test]
    fn the_envelope_is_written_as_serde_json_writes_it() {
        // More fields than the envelope looks up on the stack.
        let mut many =
            b"POST /many HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: X-H3\r\n".to_vec();
        for i in 0..ENVELOPE_INLINE_FIELDS + 4 {
            many.extend_from_slice(format!("x-h{}: {i}\r\n", i % 7).as_bytes());
        }
        many.extend_from_slice(b"\r\n1\r\nz\r\n0\r\n\r\n");
        let heads: &[&[u8]] = &[
            &many,
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a?b=\"c\"&d=\\ HTTP/1.0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nB: 2\r\nA: 1\r\nb: 3\r\nX-Q: \"q\" \\ \tz\r\n\
              X-U: caf\xc3\xa9 \xe2\x82\xac\r\nX-Bad: \xff\xfe\xc3\r\nContent-Length: 3\r\n\r\nabc",
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n1\r\nz\r\n0\r\n\r\n",
            b"DELETE /d HTTP/1.1\r\nConnection: X-A, close\r\nX-A: 1\r\nx-b: 2\r\nX-B: 3\r\nX-b: 4\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Empty: \r\nx-empty: a\r\n\r\n",
        ];
        // One scratch for all: nothing of an envelope stays in the next.
        let mut scratch = Scratch::default();
        for raw in heads {
            let mut decoder = super::super::codec::Decoder::new(Default::default());
            let mut buf = BytesMut::from(*raw);
            let req = match decoder.decode(&mut buf) {
                Ok(Some(super::super::codec::Event::Request(r))) => r,
                other => panic!(
                    "not a request: {other:?} ({})",
                    String::from_utf8_lossy(raw)
                ),
            };
            for (prefix, n, addr) in [("1", 0xa, &b"AB.2"[..]), ("\"\n", 0, b"\xffq\"\\")] {
                let id = RequestId {
                    prefix: prefix.into(),
                    n,
                };
                let direct = envelope(&req, &id, addr, &mut scratch);
                assert_eq!(
                    std::str::from_utf8(&direct).unwrap(),
                    envelope_by_value(&req, &id.to_string(), addr),
                    "{}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        // Every character that serde_json escapes, and some it does not.
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{2028}\u{fffd}");
        let mut out = Vec::new();
        json_string(&mut out, &all);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
    }

    fn request(raw: &str) -> Request {
        let mut decoder = super::super::codec::Decoder::new(Default::default());
        let mut buf = BytesMut::from(raw);
        match decoder.decode(&mut buf) {
            Ok(Some(super::super::codec::Event::Request(r))) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn the_envelope_is_msglites_object_plus_an_id() {
        let req = request(
            "POST /p?q=1 HTTP/1.1\r\nHost: h\r\ncontent-type: text/plain\r\n\
             X-Two: a\r\nx-two: b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: 5\r\nContent-Length: 2\r\n\r\nhi",
        );
        let id = RequestId {
            prefix: "abc".into(),
            n: 1,
        };
        let env = envelope(&req, &id, b"AB.2", &mut Scratch::default());
        assert_eq!(
            std::str::from_utf8(&env).unwrap(),
            r#"{"bodyAddr":"AB.2","headers":{"Content-Length":"2","Content-Type":"text/plain","Host":"h","X-Two":"a,b"},"id":"abc-1","method":"POST","protocol":"HTTP/1.1","url":"/p?q=1"}"#
        );
        // A chunked body arrives whole: its length, not its coding.
        let req = request(
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let id = RequestId {
            prefix: "i".into(),
            n: 0,
        };
        let env: Value =
            serde_json::from_slice(&envelope(&req, &id, b"b", &mut Scratch::default())).unwrap();
        assert_eq!(
            env["headers"],
            serde_json::json!({"Content-Length": "5"}),
            "{env}"
        );
        assert_eq!(env["protocol"], "HTTP/1.1");
        assert_eq!(canonical_name("x-FORWARDED-for"), "X-Forwarded-For");
    }

    #[test]
    fn good_heads() {
        let h = parse_head(br#"["200", ["Content-Type", "text/plain", "X-A", "1"]]"#).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.reason, "OK");
        assert_eq!(h.content_length, None);
        assert_eq!(h.headers.len(), 2);
        let h = parse_head(br#"[404]"#).unwrap();
        assert_eq!((h.status, h.reason, h.headers.len()), (404, "Not Found", 0));
        let h = parse_head(
            br#"["200", ["Content-Length", "5", "content-length", "5", "Connection", "close, X-Private",
                "X-Private", "p", "Transfer-Encoding", "chunked", "Keep-Alive", "1",
                "Upgrade", "h2c", "Server", "mine"]]"#,
        )
        .unwrap();
        assert_eq!(h.content_length, Some(5));
        assert_eq!(h.headers, vec![(Cow::from("Server"), Cow::from("mine"))]);
        assert!(h.has_server);
        // Escaped strings, a number status, whitespace.
        let h = parse_head(b" [ 200 , [\"X-\\u0041\", \"a\\\"b\\u00e9\\t\"] ] ").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(
            h.headers,
            vec![(Cow::from("X-A"), Cow::from("a\"b\u{e9}\t"))]
        );
    }

    #[test]
    fn every_registered_final_status_has_its_reason_phrase() {
        // RFC 9110 section 15 and the IANA registry: a handler may answer
        // with any of them, and the client reads the registered phrase.
        for (status, reason) in [
            (200, "OK"),
            (201, "Created"),
            (202, "Accepted"),
            (203, "Non-Authoritative Information"),
            (204, "No Content"),
            (205, "Reset Content"),
            (206, "Partial Content"),
            (207, "Multi-Status"),
            (208, "Already Reported"),
            (226, "IM Used"),
            (300, "Multiple Choices"),
            (301, "Moved Permanently"),
            (302, "Found"),
            (303, "See Other"),
            (304, "Not Modified"),
            (305, "Use Proxy"),
            (307, "Temporary Redirect"),
            (308, "Permanent Redirect"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (402, "Payment Required"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (406, "Not Acceptable"),
            (407, "Proxy Authentication Required"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (410, "Gone"),
            (411, "Length Required"),
            (412, "Precondition Failed"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (415, "Unsupported Media Type"),
            (416, "Range Not Satisfiable"),
            (417, "Expectation Failed"),
            (421, "Misdirected Request"),
            (422, "Unprocessable Content"),
            (423, "Locked"),
            (424, "Failed Dependency"),
            (425, "Too Early"),
            (426, "Upgrade Required"),
            (428, "Precondition Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (451, "Unavailable For Legal Reasons"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
            (506, "Variant Also Negotiates"),
            (507, "Insufficient Storage"),
            (508, "Loop Detected"),
            (510, "Not Extended"),
            (511, "Network Authentication Required"),
        ] {
            let head = format!("[\"{status}\", []]");
            let h = parse_head(head.as_bytes()).unwrap();
            assert_eq!((h.status, h.reason), (status, reason));
        }
        // Unassigned codes are refused (a 502 with the reason).
        for status in [209, 299, 306, 309, 418, 420, 430, 509, 599] {
            let head = format!("[{status}, []]");
            let err = parse_head(head.as_bytes()).unwrap_err();
            assert!(err.contains("unknown status"), "{status}: {err}");
        }
    }

    #[test]
    fn every_kind_of_bad_head_says_why() {
        for (head, says) in [
            (&b"not json"[..], "not JSON"),
            (b"{\"status\": 200}", "not a JSON array"),
            (b"\"200\"", "not a JSON array"),
            (b"[]", "an empty array"),
            (b"[\"abc\", []]", "is not a number"),
            (b"[\"20x\", []]", "is not a number"),
            (b"[true, []]", "not a string or a number"),
            (b"[{\"a\": [1]}, []]", "not a string or a number"),
            (b"[-200, []]", "not a status code"),
            (b"[200.5, []]", "not a status code"),
            (b"[\"299\", []]", "unknown status 299"),
            (b"[99999, []]", "not a status code"),
            (b"[\"101\", []]", "not a final status"),
            (b"[\"200\", {}]", "not an array"),
            (b"[\"200\", [\"A\"]]", "odd number"),
            (b"[\"200\", [\"A\", 1]]", "not a string"),
            (b"[\"200\", [null, \"v\"]]", "not a string"),
            (b"[\"200\", [\"A\\r\\nB\", \"v\"]]", "not a token"),
            (b"[\"200\", [\"A B\", \"v\"]]", "not a token"),
            (b"[\"200\", [\"\", \"v\"]]", "not a token"),
            (
                b"[\"200\", [\"A\", \"v\\r\\nSet-Cookie: x\"]]",
                "control character",
            ),
            (b"[\"200\", [\"A\", \"v\\n\"]]", "control character"),
            (b"[\"200\", [\"Content-Length\", \"x\"]]", "not a number"),
            (b"[\"200\", [\"Content-Length\", \"-1\"]]", "not a number"),
            (
                b"[\"200\", [\"Content-Length\", \"1\", \"Content-Length\", \"2\"]]",
                "two different",
            ),
            (b"[\"200\", [], 3]", "3 items"),
            // Only three digits: what `u16::from_str` would also take (a
            // sign, a leading zero) is not a status.
            (b"[\"+200\", []]", "is not a number"),
            (b"[\"0200\", []]", "is not a number"),
            (b"[\"+20\", []]", "is not a number"),
            // Only digits: the same for Content-Length.
            (b"[\"200\", [\"Content-Length\", \"+5\"]]", "not a number"),
        ] {
            let err = parse_head(head).unwrap_err();
            assert!(
                err.contains(says),
                "{}: {err}",
                String::from_utf8_lossy(head)
            );
        }
    }

    fn pending(minor_version: u8, head_only: bool, keep_alive: bool) -> Pending {
        Pending {
            id: RequestId {
                prefix: "t".into(),
                n: 1,
            },
            reply: Bytes::from_static(b"r"),
            empty_body: None,
            wait: {
                let mut q = crate::broker::Queues::new(0);
                match q.ready(
                    0,
                    crate::broker::ConnId { key: 0, gen: 0 },
                    1,
                    vec![Bytes::from_static(b"r")],
                ) {
                    Ready::Waiting(w) => w,
                    _ => unreachable!(),
                }
            },
            stage: Stage::Head,
            minor_version,
            head_only,
            keep_alive,
            counted: false,
        }
    }

    #[test]
    fn request_ids_are_the_prefix_and_a_count_in_hex() {
        let shared = Shared {
            default_queue: Bytes::new(),
            routes: Vec::new(),
            timeout_s: 1,
            max_pending: 1,
            max_unsent: 1,
            pending: Cell::new(0),
            refused: Cell::new(0),
            next_id: Cell::new(0),
            id_prefix: "6a1f".into(),
            scratch: RefCell::default(),
        };
        // As shown in the logs, and as a JSON string in the envelope.
        let shown = |id: &RequestId| {
            let mut json = Vec::new();
            id.write_json(&mut json);
            (id.to_string(), String::from_utf8(json).unwrap())
        };
        let one = ("6a1f-1".to_string(), "\"6a1f-1\"".to_string());
        assert_eq!(shown(&shared.fresh_id()), one);
        for n in [9, 15, 16, 255, 0xabc_def0, u64::MAX - 1] {
            shared.next_id.set(n);
            let id = format!("6a1f-{:x}", n + 1);
            assert_eq!(shown(&shared.fresh_id()), (id.clone(), format!("\"{id}\"")));
        }
    }

    #[test]
    fn decimals_are_written_whole() {
        for n in [0, 7, 10, 200, 1_000_007, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn heads_and_bodies_are_framed_for_the_request() {
        let head = parse_head(br#"["200", ["Content-Type", "text/plain"]]"#).unwrap();
        let (bytes, framing, keep) = write_head(&head, &pending(1, false, true));
        assert_eq!(
            &bytes[..],
            b"HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
              Transfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!((framing, keep), (Framing::Chunked, true));
        let mut f = framing;
        assert_eq!(
            &body_part(&mut f, &Bytes::from_static(b"hello, world!"))[..],
            b"D\r\nhello, world!\r\n"
        );
        // HTTP/1.0 without a length: to the close.
        let (bytes, framing, keep) = write_head(&head, &pending(0, false, true));
        assert!(bytes.starts_with(b"HTTP/1.0 200 OK\r\n"));
        assert!(!bytes.windows(10).any(|w| w == b"Connection"));
        assert_eq!((framing, keep), (Framing::UntilClose, false));
        // With a length, HTTP/1.0 keeps alive when asked.
        let head = parse_head(br#"["201", ["Content-Length", "4"]]"#).unwrap();
        let (bytes, framing, keep) = write_head(&head, &pending(0, false, true));
        assert_eq!(
            &bytes[..],
            b"HTTP/1.0 201 Created\r\nServer: switchboard\r\nContent-Length: 4\r\n\
              Connection: keep-alive\r\n\r\n"
        );
        assert!(keep);
        let mut f = framing;
        assert_eq!(&body_part(&mut f, &Bytes::from_static(b"abc"))[..], b"abc");
        assert_eq!(&body_part(&mut f, &Bytes::from_static(b"def"))[..], b"d");
        assert!(matches!(
            end_of_body(
                f,
                keep,
                &RequestId {
                    prefix: "t".into(),
                    n: 1
                }
            ),
            Part::Last {
                keep_alive: false,
                ..
            }
        ));
        // HTTP/1.1 without keep-alive says so; HEAD discards the body.
        let (bytes, framing, keep) = write_head(&head, &pending(1, true, false));
        assert!(bytes.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
        assert_eq!((framing, keep), (Framing::Discard, false));
        // 204 carries no length.
        let head = parse_head(br#"["204", ["Content-Length", "0"]]"#).unwrap();
        let (bytes, framing, _) = write_head(&head, &pending(1, false, true));
        assert_eq!(
            &bytes[..],
            b"HTTP/1.1 204 No Content\r\nServer: switchboard\r\n\r\n"
        );
        assert_eq!(framing, Framing::Discard);
    }

    /// `write_head_and` sizes its buffer before writing (checked by its
    /// debug assertion, which the tests run with): every framing, both
    /// protocol versions, with and without a body and a `Server`.
    #[test]
    fn heads_are_written_in_one_buffer_of_their_exact_size() {
        let heads = [
            r#"["200", []]"#,
            r#"["200", ["Content-Type", "text/plain", "X-A", ""]]"#,
            r#"["404", ["Server", "mine", "Content-Length", "12345678901"]]"#,
            r#"["204", ["Content-Length", "0"]]"#,
            r#"["304", []]"#,
            r#"["500", ["Content-Length", "5", "Connection", "close"]]"#,
        ];
        for text in heads {
            let head = parse_head(text.as_bytes()).unwrap();
            for (minor, head_only, keep) in [
                (1, false, true),
                (1, false, false),
                (0, false, true),
                (0, true, false),
                (1, true, true),
            ] {
                for body in [&b""[..], b"hello"] {
                    let p = pending(minor, head_only, keep);
                    let (bytes, framing, _) = write_head_and(&head, &p, body);
                    let (alone, _, _) = write_head(&head, &p);
                    let body = if framing == Framing::Discard {
                        &b""[..]
                    } else {
                        body
                    };
                    assert_eq!(
                        &bytes[..],
                        [&alone[..], body].concat(),
                        "{text} {minor} {head_only}"
                    );
                }
            }
        }
    }

    fn show(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn whole(p: &Pending, message: &'static [u8]) -> (Vec<u8>, bool) {
        match whole_reply(p, message) {
            Part::Last { bytes, keep_alive } => (bytes.to_vec(), keep_alive),
            Part::Whole(r) => (r.to_bytes().to_vec(), false),
            Part::More(_) => panic!("a whole reply is never in parts"),
        }
    }

    /// A whole reply: the head checked as a JSON head is, the length of
    /// what follows the head as its Content-Length, and all of it at once.
    #[test]
    fn whole_replies_are_framed_by_their_length() {
        // (HTTP minor version, HEAD, the client's keep-alive), the message,
        // what the client gets, and whether the connection stays.
        type Case = ((u8, bool, bool), &'static [u8], &'static str, bool);
        let cases: [Case; 6] = [
            // The handler's Connection is hop-by-hop; the length is added.
            (
                (1, false, true),
                b"HTTP/1.1 201 Made\r\nContent-Type: text/plain\r\nConnection: close\r\nX-A: 1\r\n\r\nhello",
                "HTTP/1.1 201 Created\r\nServer: switchboard\r\nContent-Type: text/plain\r\nX-A: 1\r\n\
                 Content-Length: 5\r\n\r\nhello",
                true,
            ),
            // A matching Content-Length is kept; HTTP/1.0 asked for keep-alive.
            (
                (0, false, true),
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nServer: mine\r\n\r\nok",
                "HTTP/1.0 200 OK\r\nServer: mine\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
                true,
            ),
            // No body: Content-Length 0.
            (
                (1, false, false),
                b"HTTP/1.1 404 Not Found\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
            ),
            // HEAD: the handler's length, no body even if it sends one.
            (
                (1, true, true),
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello",
                "HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Length: 9\r\n\r\n",
                true,
            ),
            // 304: the handler's length (of the representation), no body.
            (
                (1, false, true),
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: \"x\"\r\n\r\n",
                "HTTP/1.1 304 Not Modified\r\nServer: switchboard\r\nETag: \"x\"\r\nContent-Length: 7\r\n\r\n",
                true,
            ),
            // 204: no length, no body.
            (
                (1, false, true),
                b"HTTP/1.1 204 No Content\r\n\r\nx",
                "HTTP/1.1 204 No Content\r\nServer: switchboard\r\n\r\n",
                true,
            ),
        ];
        for ((minor, head_only, keep_alive), message, expected, stays) in cases {
            let (out, keep) = whole(&pending(minor, head_only, keep_alive), message);
            assert_eq!(show(&out), expected);
            assert_eq!(keep, stays, "{expected}");
        }
    }

    #[test]
    fn every_kind_of_bad_whole_reply_says_why() {
        let many: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\n{}\r\n",
                "X-A: 1\r\n".repeat(MAX_WHOLE_HEADERS + 1)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        for (message, says) in [
            (&b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"[..], "without its end"),
            (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x response"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x response"),
            (
                b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n",
                "not an HTTP/1.x response",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
                "not an HTTP/1.x response",
            ),
            (b"HTTP/1.1 299 Odd\r\n\r\n", "unknown status 299"),
            (b"HTTP/1.1 103 Early Hints\r\n\r\n", "not a final status"),
            (b"HTTP/1.1 200 OK\r\nX-A: \xff\r\n\r\n", "not UTF-8"),
            (
                b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n",
                "invalid header value",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab",
                "Content-Length 3 but 2 bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
                "Content-Length 1 but 2 bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "not a number",
            ),
            (many, "more than 100 header lines"),
        ] {
            let (out, keep) = whole(&pending(1, false, true), message);
            let out = show(&out);
            assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
            assert!(
                out.contains("invalid reply: ") && out.contains(says),
                "{says}: {out}"
            );
            assert!(!keep);
        }
        // A status line without a reason phrase is a reply too.
        assert_eq!(
            parse_whole(b"HTTP/1.1 200\r\n\r\nok", false).unwrap().1,
            b"ok"
        );
        // At the cap of header lines, still a reply.
        let at_cap = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_WHOLE_HEADERS)
        );
        assert!(parse_whole(at_cap.as_bytes(), false).is_ok());
    }
}
