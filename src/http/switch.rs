//! The message-switch HTTP API door: message-switch's paths and JSON shapes
//! on the HTTP connection machine.
//!
//! Owns: the routes (`GET /login/T`, `/persistent/N`, `/transient/N`,
//! `/destroy/N`, `/ack/N/ID`, `/list/P`, `/list/alive/P`, `/trace`,
//! `/trace/FROM/TIMEOUT`, `GET /` diagnostics, `POST /transfer`,
//! `/request/N/REPLY_TO`, `/response/N/FROM_Q/FROM_N`, `/shutdown`), the
//! JSON each one reads and writes, and parking blocking transfers and trace
//! polls until the broker answers them or their timeout comes. Must not
//! touch: how requests are decoded, pipelined or kept alive (`conn.rs`),
//! sockets, other doors, the switch's rules (`broker/switch.rs`).
//!
//! JSON follows the conventions message-switch's encoder had: a tuple or a
//! variant is an array (`["q", 17]`, `["Request", "reply"]`), a top-level
//! option is `[]` or `[x]`, a record field that is `None` is left out, and a
//! `(string * t) list` is an object. Times are nanoseconds since the Unix
//! epoch, except a trace event's `time`, which is seconds (a float).

use std::rc::Rc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::codec::{self, Method, Request};
use super::conn::{Caller, HttpConn, Reply, Routes, Settings};
use super::response::Response;
use super::uri::path_segment;
use crate::broker::queues::MAX_TIMEOUT_S;
use crate::broker::switch::{
    check_name, ClusterReply, Event, Kind, Message, MessageId, Origin, Poll, Polled, Queue,
    SwitchError, SwitchWait, Traced, Transferred, MAX_TRANSFER_QUEUES,
};
use crate::broker::{Answer, Millis};
use crate::config::Config;
use crate::door::{Cx, Opener};

/// The realm name (the door takes no credentials: message-switch had none).
pub const REALM: &str = "message-switch";
/// The body of the `404` to a call that needs a session, as message-switch
/// wrote it.
pub const PLEASE_LOG_IN: &str = "Please log in.";
/// What `GET /trace` means: every event, waiting up to 5 s.
const DEFAULT_TRACE: (i64, f64) = (-1, 5.0);

/// What every connection of the door shares.
struct Shared {
    allow_shutdown: bool,
}

/// The door's constructor: settings from `config`, read once.
pub fn opener(config: &Config) -> Opener {
    let settings = Rc::new(Settings {
        checks_credentials: false,
        realm: REALM,
        limits: codec::Limits {
            max_head: config.limits.max_header,
            max_body: config.limits.max_body,
            ..codec::Limits::default()
        },
    });
    let shared = Rc::new(Shared {
        allow_shutdown: config.allow_shutdown,
    });
    Box::new(move || {
        let routes = SwitchRoutes {
            shared: Rc::clone(&shared),
        };
        Box::new(HttpConn::new(Rc::clone(&settings), routes))
    })
}

/// The routes of one connection.
pub struct SwitchRoutes {
    shared: Rc<Shared>,
}

/// A parked call.
#[derive(Debug)]
pub enum Held {
    Transfer {
        wait: SwitchWait,
        from: Option<u64>,
    },
    Trace {
        wait: SwitchWait,
        /// The wall clock at the server's start, for the events' times.
        epoch_ms: u64,
    },
    /// With `--cluster`: waits for Redis' answer to call `seq`.
    Cluster {
        seq: u64,
        /// A transfer that may wait (its deadline answers it with no
        /// messages, from `from`); other calls answer `503` at theirs.
        transfer: Option<Option<u64>>,
    },
}

/// How long a call with `--cluster` waits for Redis' answer.
pub const CLUSTER_ANSWER_MS: Millis = 10_000;

/// One request of the API, its path decoded.
#[derive(Debug, PartialEq)]
enum Call {
    Diagnostics,
    Login(Bytes),
    Create {
        name: Bytes,
        transient: bool,
    },
    Destroy(Bytes),
    /// `None`: an id no message can have (a negative one).
    Ack(Bytes, Option<u64>),
    List {
        prefix: Bytes,
        alive: bool,
    },
    Trace {
        from: i64,
        timeout_s: f64,
    },
    Transfer,
    Request {
        name: Bytes,
        reply_to: Bytes,
    },
    Response {
        name: Bytes,
        request: MessageId,
    },
    Shutdown,
}

impl Call {
    /// With `--cluster`, these calls go to Redis.
    fn in_redis(&self) -> bool {
        matches!(
            self,
            Call::Create { .. }
                | Call::Destroy(_)
                | Call::Ack(_, Some(_))
                | Call::List { .. }
                | Call::Transfer
                | Call::Request { .. }
                | Call::Response { .. }
        )
    }

    /// Everything but login, diagnostics and trace needs a session.
    fn needs_session(&self) -> bool {
        !matches!(
            self,
            Call::Diagnostics | Call::Login(_) | Call::Trace { .. }
        )
    }
}

fn segment(raw: &str) -> Bytes {
    Bytes::copy_from_slice(&path_segment(raw))
}

fn bad(detail: &str) -> Response {
    Response::text(400, detail)
}

/// The call a method and path name, or the response that refuses them.
fn route(method: Method, path: &str) -> Result<Call, Response> {
    let segments: Vec<&str> = path.split('/').collect();
    let (call, post) = match segments.as_slice() {
        ["", ""] => (Call::Diagnostics, false),
        ["", "login", token] => (Call::Login(segment(token)), false),
        ["", "persistent", name] => (
            Call::Create {
                name: segment(name),
                transient: false,
            },
            false,
        ),
        ["", "transient", name] => (
            Call::Create {
                name: segment(name),
                transient: true,
            },
            false,
        ),
        ["", "destroy", name] => (Call::Destroy(segment(name)), false),
        ["", "ack", name, id] => {
            let id = match id.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) if id.parse::<i64>().is_ok() => None,
                Err(_) => return Err(bad("a message id is an integer")),
            };
            (Call::Ack(segment(name), id), false)
        }
        ["", "list", "alive", prefix] => (
            Call::List {
                prefix: segment(prefix),
                alive: true,
            },
            false,
        ),
        ["", "list", prefix] => (
            Call::List {
                prefix: segment(prefix),
                alive: false,
            },
            false,
        ),
        ["", "trace"] => (
            Call::Trace {
                from: DEFAULT_TRACE.0,
                timeout_s: DEFAULT_TRACE.1,
            },
            false,
        ),
        ["", "trace", from, timeout] => {
            let from = from
                .parse::<i64>()
                .map_err(|_| bad("/trace/FROM/TIMEOUT: FROM is an integer"))?;
            let timeout_s = timeout
                .parse::<f64>()
                .map_err(|_| bad("/trace/FROM/TIMEOUT: TIMEOUT is a number of seconds"))?;
            (Call::Trace { from, timeout_s }, false)
        }
        ["", "transfer"] => (Call::Transfer, true),
        ["", "request", name, reply_to] => (
            Call::Request {
                name: segment(name),
                reply_to: segment(reply_to),
            },
            true,
        ),
        ["", "response", name, from_q, from_n] => {
            let n = from_n
                .parse::<u64>()
                .map_err(|_| bad("/response/NAME/FROM_Q/FROM_N: FROM_N is a message id"))?;
            (
                Call::Response {
                    name: segment(name),
                    request: (segment(from_q), n),
                },
                true,
            )
        }
        ["", "shutdown"] => (Call::Shutdown, true),
        _ => {
            return Err(Response::text(
                404,
                "no such call in the message-switch API (see docs/switch.md)",
            ))
        }
    };
    let (want, allow) = if post {
        (Method::Post, "POST")
    } else {
        (Method::Get, "GET")
    };
    if method != want {
        return Err(Response::text(405, &format!("{path} takes {allow}")).header("Allow", allow));
    }
    Ok(call)
}

/// Seconds as a JSON number → milliseconds, clamped to what the server
/// honours; a negative or NaN timeout is 0.
pub fn timeout_ms(seconds: f64) -> Millis {
    if seconds.is_nan() || seconds <= 0.0 {
        return 0;
    }
    let capped = seconds.min(MAX_TIMEOUT_S as f64);
    (capped * 1000.0).ceil() as Millis
}

/// A transfer's body: `{"from": "N"?, "timeout": seconds, "queues": [...]}`.
pub fn parse_transfer(body: &[u8]) -> Result<(Option<u64>, f64, Vec<Bytes>), Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(&format!("a transfer's body is JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(bad(
            "a transfer's body is an object {\"from\", \"timeout\", \"queues\"}",
        ));
    };
    let from = match obj.get("from") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => from_number(s.trim().parse::<i64>().ok())?,
        Some(Value::Number(n)) => from_number(n.as_i64())?,
        Some(_) => return Err(bad("a transfer's \"from\" is an id in a string")),
    };
    let timeout = obj
        .get("timeout")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("a transfer's \"timeout\" is a number of seconds"))?;
    let queues = obj
        .get("queues")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("a transfer's \"queues\" is a list of queue names"))?
        .iter()
        .map(|q| q.as_str().map(|s| Bytes::copy_from_slice(s.as_bytes())))
        .collect::<Option<Vec<Bytes>>>()
        .ok_or_else(|| bad("a transfer's \"queues\" is a list of strings"))?;
    Ok((from, timeout, queues))
}

/// A `from` id: negative means "from the start".
fn from_number(n: Option<i64>) -> Result<Option<u64>, Response> {
    let n = n.ok_or_else(|| bad("a transfer's \"from\" is an integer id"))?;
    Ok(u64::try_from(n).ok())
}

fn refusal(e: SwitchError) -> Response {
    match e {
        SwitchError::NotLoggedIn => not_logged_in(),
        SwitchError::BadName | SwitchError::TooManyTransferQueues => bad(&e.to_string()),
        SwitchError::TooManyQueues | SwitchError::Full | SwitchError::Store => {
            Response::text(503, &e.to_string())
        }
    }
}

fn not_logged_in() -> Response {
    Response::new(404).body("text/plain", PLEASE_LOG_IN)
}

fn ok() -> Response {
    Response::new(200)
}

fn json_response(v: &Value) -> Response {
    Response::new(200).body("application/json", v.to_string())
}

impl SwitchRoutes {
    fn run(&mut self, call: Call, body: Bytes, cx: &mut Cx<'_>) -> Reply<Held> {
        let (me, now) = (cx.me, cx.now);
        let respond = Reply::Respond;
        if call.needs_session() && cx.broker.switch.session_of(me).is_none() {
            return respond(not_logged_in());
        }
        let done = |r: Result<(), SwitchError>| match r {
            Ok(()) => respond(ok()),
            Err(e) => respond(refusal(e)),
        };
        if cx.broker.cluster.is_on() && call.in_redis() {
            return run_in_redis(call, body, cx);
        }
        match call {
            Call::Diagnostics => respond(json_response(&diagnostics_json(cx, now))),
            Call::Login(token) => done(cx.broker.switch_login(me, &token)),
            Call::Create { name, transient } => {
                match cx.broker.switch_create(now, me, &name, transient, cx.out) {
                    Ok(()) => respond(ok().body("text/plain", name)),
                    Err(e) => respond(refusal(e)),
                }
            }
            Call::Destroy(name) => done(cx.broker.switch.destroy(me, &name)),
            Call::Ack(_, None) => respond(ok()),
            Call::Ack(name, Some(id)) => done(cx.broker.switch_ack(now, me, &name, id, cx.out)),
            Call::List { prefix, alive } => match cx.broker.switch.list(me, &prefix, alive) {
                Ok(names) => {
                    let names: Vec<Value> = names.iter().map(|n| text(n)).collect();
                    respond(json_response(&Value::Array(names)))
                }
                Err(e) => respond(refusal(e)),
            },
            Call::Trace { from, timeout_s } => {
                let epoch_ms = cx.broker.switch.epoch_ms();
                let timeout = timeout_ms(timeout_s);
                match cx.broker.switch.trace_poll(me, from, timeout) {
                    Poll::Ready(events) => respond(json_response(&trace_json(&events, epoch_ms))),
                    Poll::Waiting(wait) => Reply::Park {
                        parked: Held::Trace { wait, epoch_ms },
                        deadline: Some(now.saturating_add(timeout)),
                    },
                }
            }
            Call::Transfer => {
                let (from, timeout_s, queues) = match parse_transfer(&body) {
                    Ok(t) => t,
                    Err(refused) => return respond(refused),
                };
                let timeout = timeout_ms(timeout_s);
                match cx
                    .broker
                    .switch_transfer(now, me, from, timeout, queues, cx.out)
                {
                    Ok(Poll::Ready(t)) => respond(json_response(&transfer_json(&t))),
                    Ok(Poll::Waiting(wait)) => Reply::Park {
                        parked: Held::Transfer { wait, from },
                        deadline: Some(now.saturating_add(timeout)),
                    },
                    Err(e) => respond(refusal(e)),
                }
            }
            Call::Request { name, reply_to } => {
                let message = Message {
                    payload: body,
                    kind: Kind::Request(reply_to),
                };
                respond(sent(cx.broker.switch_send(now, me, name, message, cx.out)))
            }
            Call::Response { name, request } => {
                let message = Message {
                    payload: body,
                    kind: Kind::Response(request),
                };
                respond(sent(cx.broker.switch_send(now, me, name, message, cx.out)))
            }
            Call::Shutdown => {
                if !self.shared.allow_shutdown {
                    return respond(Response::text(
                        403,
                        "shutdown is off: start the server with --allow-shutdown",
                    ));
                }
                log::info!("message-switch API: shutdown requested");
                cx.stop_server();
                respond(ok())
            }
        }
    }
}

/// A call with `--cluster`: written to Redis, parked until its answer.
fn run_in_redis(call: Call, body: Bytes, cx: &mut Cx<'_>) -> Reply<Held> {
    let (me, now) = (cx.me, cx.now);
    let Some(session) = cx.broker.switch.session_of(me).cloned() else {
        return Reply::Respond(not_logged_in());
    };
    if let Some(why) = cx.broker.cluster.switch_unavailable() {
        return Reply::Respond(Response::text(503, why));
    }
    let park = |seq: Option<u64>, transfer: Option<Option<u64>>, deadline: Millis| match seq {
        Some(seq) => Reply::Park {
            parked: Held::Cluster { seq, transfer },
            deadline: Some(deadline),
        },
        None => Reply::Respond(Response::text(
            503,
            "the cluster's queue link to Redis is down; try again",
        )),
    };
    let answer_by = now.saturating_add(CLUSTER_ANSWER_MS);
    let cluster = &mut cx.broker.cluster;
    let reply = match call {
        Call::Create { name, transient } => {
            if let Err(e) = check_name(&name) {
                return Reply::Respond(refusal(e));
            }
            let owner = transient.then_some(&session);
            park(cluster.switch_create(me, &name, owner), None, answer_by)
        }
        Call::Destroy(name) => park(cluster.switch_destroy(me, &name), None, answer_by),
        Call::Ack(name, Some(id)) => park(cluster.switch_ack(me, &name, id), None, answer_by),
        Call::List { prefix, alive } => {
            park(cluster.switch_list(me, &prefix, alive), None, answer_by)
        }
        Call::Transfer => {
            let (from, timeout_s, queues) = match parse_transfer(&body) {
                Ok(t) => t,
                Err(refused) => return Reply::Respond(refused),
            };
            if queues.len() > MAX_TRANSFER_QUEUES {
                return Reply::Respond(refusal(SwitchError::TooManyTransferQueues));
            }
            let timeout = timeout_ms(timeout_s);
            let seq = cluster.switch_transfer(me, from, timeout > 0, queues);
            if timeout > 0 {
                park(seq, Some(from), now.saturating_add(timeout))
            } else {
                park(seq, None, answer_by)
            }
        }
        Call::Request { name, reply_to } => {
            let message = Message {
                payload: body,
                kind: Kind::Request(reply_to),
            };
            send_in_redis(cx, &session, name, &message)
        }
        Call::Response { name, request } => {
            let message = Message {
                payload: body,
                kind: Kind::Response(request),
            };
            send_in_redis(cx, &session, name, &message)
        }
        Call::Diagnostics
        | Call::Login(_)
        | Call::Ack(_, None)
        | Call::Trace { .. }
        | Call::Shutdown => Reply::Respond(Response::text(500, "not a call for Redis")),
    };
    cx.broker.seal(cx.out);
    reply
}

fn send_in_redis(cx: &mut Cx<'_>, session: &Bytes, name: Bytes, message: &Message) -> Reply<Held> {
    if let Err(e) = check_name(&name) {
        return Reply::Respond(refusal(e));
    }
    if let Kind::Request(r) = &message.kind {
        if !r.is_empty() {
            if let Err(e) = check_name(r) {
                return Reply::Respond(refusal(e));
            }
        }
    }
    let limits = cx.broker.switch_limits();
    match cx
        .broker
        .cluster
        .switch_send(cx.me, &name, session, message, limits)
    {
        Ok(seq) => Reply::Park {
            parked: Held::Cluster {
                seq,
                transfer: None,
            },
            deadline: Some(cx.now.saturating_add(CLUSTER_ANSWER_MS)),
        },
        Err(why) => Reply::Respond(Response::text(503, why)),
    }
}

/// The response to Redis' answer.
fn cluster_response(reply: &ClusterReply) -> Response {
    match reply {
        ClusterReply::Done => ok(),
        ClusterReply::Created(name) => ok().body("text/plain", name.clone()),
        ClusterReply::Sent(id) => sent(Ok(id.clone())),
        ClusterReply::List(names) => {
            let names: Vec<Value> = names.iter().map(|n| text(n)).collect();
            json_response(&Value::Array(names))
        }
        ClusterReply::Transfer(t) => json_response(&transfer_json(t)),
        ClusterReply::Unavailable(why) => Response::text(503, why),
    }
}

/// The answer to a send: `[["NAME", n]]`, or `[]` when it was dropped.
fn sent(r: Result<Option<MessageId>, SwitchError>) -> Response {
    match r {
        Ok(Some(id)) => json_response(&json!([id_json(&id)])),
        Ok(None) => json_response(&json!([])),
        Err(e) => refusal(e),
    }
}

impl Routes for SwitchRoutes {
    type Parked = Held;

    fn handle(&mut self, req: Request, _caller: Caller, cx: &mut Cx<'_>) -> Reply<Held> {
        let call = match route(req.method, req.path()) {
            Ok(call) => call,
            Err(refused) => return Reply::Respond(refused),
        };
        if req.method == Method::Get && !req.body.is_empty() {
            return Reply::Respond(bad("a GET of the message-switch API takes no body"));
        }
        self.run(call, req.body, cx)
    }

    fn on_answer(&mut self, parked: &mut Held, answer: Answer<'_>) -> Option<Response> {
        match (parked, answer) {
            (Held::Transfer { .. }, Answer::Switch(Polled::Transfer(t))) => {
                Some(json_response(&transfer_json(t)))
            }
            (Held::Trace { epoch_ms, .. }, Answer::Switch(Polled::Trace(events))) => {
                Some(json_response(&trace_json(events, *epoch_ms)))
            }
            (Held::Cluster { seq, .. }, Answer::Switch(Polled::Cluster { seq: s, reply }))
                if seq == s =>
            {
                Some(cluster_response(reply))
            }
            _ => None,
        }
    }

    fn on_deadline(&mut self, parked: &mut Held, cx: &mut Cx<'_>) -> Response {
        match parked {
            Held::Transfer { wait, from } => {
                cx.broker.seal(cx.out);
                let t = cx
                    .broker
                    .switch
                    .transfer_deadline(cx.now, *wait, cx.out)
                    .unwrap_or_else(|| Transferred {
                        messages: Vec::new(),
                        next: from.map_or(-1, |f| i64::try_from(f).unwrap_or(i64::MAX)),
                    });
                json_response(&transfer_json(&t))
            }
            Held::Trace { wait, epoch_ms } => {
                let events = cx.broker.switch.trace_deadline(*wait).unwrap_or_default();
                json_response(&trace_json(&events, *epoch_ms))
            }
            Held::Cluster { seq, transfer } => {
                cx.broker.cluster.switch_cancel(*seq);
                match transfer {
                    Some(from) => json_response(&transfer_json(&Transferred {
                        messages: Vec::new(),
                        next: from.map_or(-1, |f| i64::try_from(f).unwrap_or(i64::MAX)),
                    })),
                    None => Response::text(
                        503,
                        "Redis did not answer in time; the call may or may not have been done",
                    ),
                }
            }
        }
    }

    fn on_close(&mut self, parked: Option<Held>, cx: &mut Cx<'_>) {
        match parked {
            Some(Held::Transfer { wait, .. } | Held::Trace { wait, .. }) => {
                cx.broker.switch.cancel(wait);
            }
            Some(Held::Cluster { seq, .. }) => cx.broker.cluster.switch_cancel(seq),
            None => {}
        }
        cx.broker.switch_close(cx.me);
    }
}

/// Bytes as a JSON string (bytes that are not UTF-8 become U+FFFD).
fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

/// Milliseconds on the server's clock → nanoseconds since the Unix epoch.
fn ns(epoch_ms: u64, t: Millis) -> u64 {
    epoch_ms.saturating_add(t).saturating_mul(1_000_000)
}

fn id_json((queue, n): &MessageId) -> Value {
    json!([text(queue), n])
}

fn kind_json(kind: &Kind) -> Value {
    match kind {
        Kind::Request(reply_to) => json!(["Request", text(reply_to)]),
        Kind::Response(id) => json!(["Response", id_json(id)]),
    }
}

fn message_json(m: &Message) -> Value {
    json!({ "payload": text(&m.payload), "kind": kind_json(&m.kind) })
}

/// `{"messages": [[id, message]...], "next": "N"}`.
fn transfer_json(t: &Transferred) -> Value {
    let messages: Vec<Value> = t
        .messages
        .iter()
        .map(|(id, m)| json!([id_json(id), message_json(m)]))
        .collect();
    json!({ "messages": messages, "next": t.next.to_string() })
}

fn event_json(e: &Event, epoch_ms: u64) -> Value {
    let mut o = Map::new();
    let seconds = epoch_ms.saturating_add(e.time) as f64 / 1000.0;
    o.insert("time".into(), json!(seconds));
    if let Some(input) = &e.input {
        o.insert("input".into(), text(input));
    }
    o.insert("queue".into(), text(&e.queue));
    if let Some(output) = &e.output {
        o.insert("output".into(), text(output));
    }
    let message = match &e.message {
        Traced::Message(id, m) => json!(["Message", id_json(id), message_json(m)]),
        Traced::Ack(id) => json!(["Ack", id_json(id)]),
    };
    o.insert("message".into(), message);
    if let Some(ms) = e.processing_time {
        o.insert(
            "processing_time".into(),
            json!(ms.saturating_mul(1_000_000)),
        );
    }
    Value::Object(o)
}

/// `{"events": [[n, event]...]}`.
fn trace_json(events: &[(u64, Event)], epoch_ms: u64) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|(n, e)| json!([n, event_json(e, epoch_ms)]))
        .collect();
    json!({ "events": events })
}

fn queue_json(name: &Bytes, q: &Queue, epoch_ms: u64) -> Value {
    let contents: Vec<Value> = q
        .entries()
        .map(|(id, e)| {
            let origin = match &e.origin {
                Origin::Anonymous(who) => json!(["Anonymous", text(who)]),
                Origin::Name(session) => json!(["Name", text(session)]),
            };
            let entry = json!({
                "origin": origin,
                "time": ns(epoch_ms, e.time),
                "message": message_json(&e.message),
            });
            json!([id_json(&(name.clone(), id)), entry])
        })
        .collect();
    let mut o = Map::new();
    if let Some(at) = q.next_transfer_expected() {
        o.insert("next_transfer_expected".into(), json!(ns(epoch_ms, at)));
    }
    o.insert("queue_contents".into(), Value::Array(contents));
    Value::Object(o)
}

/// `GET /`: the start time, the time now, and every queue with its
/// contents, persistent and transient apart.
fn diagnostics_json(cx: &Cx<'_>, now: Millis) -> Value {
    let switch = &cx.broker.switch;
    let epoch_ms = switch.epoch_ms();
    let mut permanent = Map::new();
    let mut transient = Map::new();
    for (name, q) in switch.queues() {
        let key = String::from_utf8_lossy(name).into_owned();
        let v = queue_json(name, q, epoch_ms);
        match q.owner() {
            None => permanent.insert(key, v),
            Some(_) => transient.insert(key, v),
        };
    }
    json!({
        "start_time": ns(epoch_ms, 0),
        "current_time": ns(epoch_ms, now),
        "permanent_queues": permanent,
        "transient_queues": transient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: Method, path: &str) -> Call {
        route(method, path).unwrap_or_else(|r| panic!("{path}: {}", r.status()))
    }

    fn status(method: Method, path: &str) -> u16 {
        match route(method, path) {
            Ok(c) => panic!("{path} routed to {c:?}"),
            Err(r) => r.status(),
        }
    }

    #[test]
    fn paths_as_message_switch_defines_them() {
        use Method::{Get, Post};
        assert_eq!(call(Get, "/"), Call::Diagnostics);
        assert_eq!(
            call(Get, "/login/me%20too"),
            Call::Login(Bytes::from("me too"))
        );
        assert_eq!(
            call(Get, "/transient/a%2Fb"),
            Call::Create {
                name: Bytes::from("a/b"),
                transient: true
            }
        );
        assert_eq!(
            call(Get, "/ack/q/17"),
            Call::Ack(Bytes::from("q"), Some(17))
        );
        assert_eq!(call(Get, "/ack/q/-1"), Call::Ack(Bytes::from("q"), None));
        assert_eq!(
            call(Get, "/list/alive/x"),
            Call::List {
                prefix: Bytes::from("x"),
                alive: true
            }
        );
        // `/list/alive` lists the queues whose names start with "alive".
        assert_eq!(
            call(Get, "/list/alive"),
            Call::List {
                prefix: Bytes::from("alive"),
                alive: false
            }
        );
        assert_eq!(
            call(Get, "/list/"),
            Call::List {
                prefix: Bytes::new(),
                alive: false
            }
        );
        assert_eq!(
            call(Get, "/trace"),
            Call::Trace {
                from: -1,
                timeout_s: 5.0
            }
        );
        assert_eq!(
            call(Get, "/trace/12/0.5"),
            Call::Trace {
                from: 12,
                timeout_s: 0.5
            }
        );
        assert_eq!(call(Post, "/transfer"), Call::Transfer);
        assert_eq!(
            call(Post, "/response/r/svc/3"),
            Call::Response {
                name: Bytes::from("r"),
                request: (Bytes::from("svc"), 3)
            }
        );
        assert_eq!(call(Post, "/shutdown"), Call::Shutdown);
        assert_eq!(status(Get, "/nothing"), 404);
        assert_eq!(status(Get, "/list"), 404);
        assert_eq!(status(Get, "/login/a/b"), 404);
        assert_eq!(status(Get, "/ack/q/x"), 400);
        assert_eq!(status(Get, "/trace/1/soon"), 400);
        assert_eq!(status(Post, "/response/r/svc/-3"), 400);
        assert_eq!(status(Post, "/login/x"), 405);
        assert_eq!(status(Get, "/transfer"), 405);
    }

    #[test]
    fn transfer_bodies() {
        let ok = |s: &str| parse_transfer(s.as_bytes()).map_err(|r| r.status());
        assert_eq!(
            ok(r#"{"from": "3", "timeout": 1.5, "queues": ["a", "b"]}"#),
            Ok((Some(3), 1.5, vec![Bytes::from("a"), Bytes::from("b")]))
        );
        assert_eq!(
            ok(r#"{"timeout": 5, "queues": []}"#),
            Ok((None, 5.0, vec![]))
        );
        assert_eq!(
            ok(r#"{"from": "-1", "timeout": 0, "queues": []}"#),
            Ok((None, 0.0, vec![]))
        );
        assert_eq!(
            ok(r#"{"from": null, "timeout": 0, "queues": []}"#),
            Ok((None, 0.0, vec![]))
        );
        for body in [
            "",
            "nope",
            "[]",
            r#"{"queues": []}"#,
            r#"{"timeout": "5", "queues": []}"#,
            r#"{"timeout": 5}"#,
            r#"{"timeout": 5, "queues": [1]}"#,
            r#"{"from": "x", "timeout": 5, "queues": []}"#,
            r#"{"from": true, "timeout": 5, "queues": []}"#,
        ] {
            assert_eq!(ok(body).err(), Some(400), "{body}");
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_ms(1.5), 1_500);
        assert_eq!(timeout_ms(0.0001), 1);
        assert_eq!(timeout_ms(-3.0), 0);
        assert_eq!(timeout_ms(f64::NAN), 0);
        assert_eq!(timeout_ms(f64::INFINITY), MAX_TIMEOUT_S * 1000);
    }

    #[test]
    fn json_shapes() {
        let request = Message {
            payload: Bytes::from("hello"),
            kind: Kind::Request(Bytes::from("reply")),
        };
        let response = Message {
            payload: Bytes::from("hi"),
            kind: Kind::Response((Bytes::from("svc"), 4)),
        };
        let t = Transferred {
            messages: vec![
                ((Bytes::from("svc"), 4), request),
                ((Bytes::from("reply"), 0), response.clone()),
            ],
            next: 4,
        };
        assert_eq!(
            transfer_json(&t).to_string(),
            r#"{"messages":[[["svc",4],{"kind":["Request","reply"],"payload":"hello"}],[["reply",0],{"kind":["Response",["svc",4]],"payload":"hi"}]],"next":"4"}"#
        );
        let e = Event {
            time: 500,
            input: None,
            queue: Bytes::from("reply"),
            output: Some(Bytes::from("s1")),
            message: Traced::Message((Bytes::from("reply"), 0), response),
            processing_time: Some(3),
        };
        let v = trace_json(&[(7, e)], 1_000);
        assert_eq!(
            v.to_string(),
            r#"{"events":[[7,{"message":["Message",["reply",0],{"kind":["Response",["svc",4]],"payload":"hi"}],"output":"s1","processing_time":3000000,"queue":"reply","time":1.5}]]}"#
        );
        assert_eq!(sent(Ok(None)).status(), 200);
    }
}
