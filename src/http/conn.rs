//! The HTTP connection machine that every HTTP door runs on.
//!
//! Owns: one connection's request decoding (with `codec.rs`), keep-alive,
//! pipelining with responses in request order, `100 Continue`, the request
//! limits, HTTP Basic auth (`--secret`), HEAD, error responses, and the three
//! ways a request is answered:
//!
//! - at once ([`Reply::Respond`], [`Reply::Framed`]);
//! - by turning the connection into a stream ([`Reply::Stream`]): the
//!   machine writes the stream's head and hands the connection over to the
//!   stream's own door, which drops the request parser;
//! - later ([`Reply::Park`]): the request waits for a broker answer
//!   ([`Routes::on_answer`]) or its deadline ([`Routes::on_deadline`]).
//!   Meanwhile the machine is paused: pipelined requests after the parked
//!   one stay unprocessed in the input and are answered after it, in order.
//!   An answer may also give only part of a response ([`Routes::on_part`],
//!   [`Part::More`]): it goes out at once, the request stays parked, and the
//!   door is resumed in the same turn ([`Routes::on_resume`]) to wait again,
//!   until a [`Part::Last`] or a whole response ends the request.
//!
//! What a door adds is its route table, a [`Routes`] value per connection.
//! Must not touch: sockets and the shell (it speaks to them only through
//! [`crate::door`]), any door's paths, and other doors.

use std::rc::Rc;

use base64::Engine;
use bytes::{Bytes, BytesMut};

use super::codec::{self, Decoder, Event, Method, Request};
use super::response::{Response, CONTINUE};
use crate::auth::{Access, Action, Grant, Refusal};
use crate::broker::{Answer, Millis};
use crate::config::Config;
use crate::door::{CloseReason, Cx, Door, Next};

/// Settings an HTTP door's connections share (one `Rc` per door).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The door asks for credentials: `--secret` and `--token-key`
    /// ([`crate::door::Live::access`], read per request, so a reload applies
    /// to the next request). With a secret, every request needs HTTP Basic
    /// credentials whose password is the secret (any user name), or a
    /// token; with a token key, a token (`Authorization: Bearer`, or
    /// `?token=`); with neither, credentials are optional and name the
    /// sender. A door that never asks for credentials sets `false`.
    pub checks_credentials: bool,
    /// The Basic auth realm of the `401` challenge.
    pub realm: &'static str,
    pub limits: codec::Limits,
}

impl Settings {
    /// The settings of a door that follows `--secret`, with `--max-header`
    /// and `--max-body`.
    pub fn from_config(config: &Config, realm: &'static str) -> Settings {
        Settings {
            checks_credentials: true,
            realm,
            limits: codec::Limits {
                max_head: config.limits.max_header,
                max_body: config.limits.max_body,
                ..codec::Limits::default()
            },
        }
    }
}

/// How a handler answers one request.
pub enum Reply<P> {
    /// This response, now. The machine sets the request's version, HEAD and
    /// keep-alive on it (a handler's `keep_alive(false)` closes even a
    /// keep-alive connection).
    Respond(Response),
    /// A response already framed as bytes for this request's version and
    /// keep-alive, sent as it is (a hot path's static answer).
    Framed(Bytes),
    /// The head of a stream (a [`Response::stream`]), after which the
    /// connection belongs to `door`. The machine queues the head when the
    /// handler returns, before anything else can reach the connection; it
    /// then discards any input left and hands over through
    /// [`Door::upgrade`]. Keep-alive does not apply: a stream never ends by
    /// itself.
    Stream(Response, Box<dyn Door>),
    /// No answer yet: `parked` waits for [`Routes::on_answer`], or for
    /// [`Routes::on_deadline`] once `deadline` has come.
    Park { parked: P, deadline: Option<Millis> },
}

/// What one broker answer gives a parked request (see [`Routes::on_part`]).
pub enum Part {
    /// The whole response, which ends the request. The machine sets the
    /// request's version, HEAD and keep-alive on it, as for
    /// [`Reply::Respond`].
    Whole(Response),
    /// Bytes of a response the door frames itself (its head, a chunk of its
    /// body), sent now. The request stays parked: the machine resumes the
    /// door ([`Routes::on_resume`]) in the same turn, where it may call the
    /// broker to wait for the next part.
    More(Bytes),
    /// The last bytes of a response the door framed itself (maybe none),
    /// which end the request. `keep_alive`: the response leaves the
    /// connection fit for another request (the request's own keep-alive is
    /// applied on top).
    Last { bytes: Bytes, keep_alive: bool },
}

/// A door's route table: what the HTTP connection machine asks of an HTTP
/// door. One value per connection (it may hold per-connection state and an
/// `Rc` of the door's shared settings).
pub trait Routes: 'static {
    /// What a parked request keeps while it waits (a wait id, what the
    /// answer needs). Use [`std::convert::Infallible`] when nothing parks.
    type Parked;

    /// Answers one complete request; the credentials are already checked
    /// (`caller`: who asks, and what a token allows).
    fn handle(&mut self, req: Request, caller: Caller, cx: &mut Cx<'_>) -> Reply<Self::Parked>;

    /// The broker answers the parked request's wait (see
    /// [`Door::on_answer`]: no broker calls here). `None` refuses the answer
    /// and the request stays parked.
    fn on_answer(&mut self, parked: &mut Self::Parked, answer: Answer<'_>) -> Option<Response> {
        let _ = (parked, answer);
        None
    }

    /// The broker answers the parked request's wait, for a door whose
    /// responses may come in parts (a streamed body). By default the whole
    /// response of [`Routes::on_answer`]. `None` refuses the answer.
    fn on_part(&mut self, parked: &mut Self::Parked, answer: Answer<'_>) -> Option<Part> {
        self.on_answer(parked, answer).map(Part::Whole)
    }

    /// After a [`Part::More`], in the same turn: the door may call the
    /// broker again (to wait for the next part). `None`: the request waits
    /// again (parked); `Some`: a part taken at once, handled as an answer
    /// (after another `More` the door is resumed again).
    fn on_resume(&mut self, parked: &mut Self::Parked, cx: &mut Cx<'_>) -> Option<Part> {
        let _ = (parked, cx);
        None
    }

    /// The parked request's deadline has come; withdraw what it holds in the
    /// broker and answer.
    fn on_deadline(&mut self, parked: &mut Self::Parked, cx: &mut Cx<'_>) -> Response {
        let _ = (parked, cx);
        Response::text(504, "no answer in time")
    }

    /// The connection is closing (`parked`: the request still waiting, if
    /// one is); withdraw everything held in the broker.
    fn on_close(&mut self, parked: Option<Self::Parked>, cx: &mut Cx<'_>) {
        let _ = (parked, cx);
    }

    /// After a part of a response (a response may end in
    /// [`Routes::on_part`], which has no broker): called before the
    /// connection's input runs and after a resumed request's parts, the
    /// first calls that have one. The door may tidy the broker up.
    fn tidy(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }
}

/// A parked request and what its response will need.
struct Parked<P> {
    route: P,
    minor_version: u8,
    head_only: bool,
    keep_alive: bool,
    deadline: Option<Millis>,
}

enum State<P> {
    /// Taking requests.
    Open,
    /// A request is parked: input waits.
    Parked(Parked<P>),
    /// A parked request got part of its response and is not yet waiting
    /// again: the door must be resumed ([`Routes::on_resume`]) before
    /// anything else.
    Resuming(Parked<P>),
    /// A response without keep-alive went out: nothing more is read.
    Done,
}

/// One HTTP connection of a door whose routes are `R`.
pub struct HttpConn<R: Routes> {
    settings: Rc<Settings>,
    decoder: Decoder,
    routes: R,
    state: State<R::Parked>,
    /// The door the connection becomes (after [`Reply::Stream`]).
    stream: Option<Box<dyn Door>>,
    /// The last token this connection presented and what it was verified
    /// to allow (see [`Verified`]).
    verified: Option<Box<Verified>>,
}

/// A token verified on a keep-alive connection: a later request with the
/// same token, under the same key, takes its grant without verifying the
/// signature again (about 45,000 instructions a request: an HMAC and two
/// JSON parses). Its expiry and what it allows are still checked per
/// request.
struct Verified {
    token: Vec<u8>,
    /// The key it was verified with (a reload loads a new one; holding it
    /// keeps it from being mistaken for a new key at the same address).
    key: Option<std::sync::Arc<crate::auth::Tokens>>,
    /// Shared with each request's [`Caller`]: a request costs no copy of
    /// the token's pattern lists.
    grant: Rc<Grant>,
}

impl<R: Routes> HttpConn<R> {
    pub fn new(settings: Rc<Settings>, routes: R) -> HttpConn<R> {
        HttpConn {
            decoder: Decoder::new(settings.limits),
            settings,
            routes,
            state: State::Open,
            stream: None,
            verified: None,
        }
    }

    /// Authenticates and routes one request, and sends or parks its answer.
    fn take(&mut self, req: Request, cx: &mut Cx<'_>) {
        let how = How {
            minor_version: req.minor_version,
            head_only: req.method == Method::Head,
            keep_alive: req.keep_alive,
        };
        let no_credentials = Access::default();
        let access = if self.settings.checks_credentials {
            &cx.live.access
        } else {
            &no_credentials
        };
        let caller = match authenticate(&req, access, &mut self.verified) {
            Ok(caller) => caller,
            Err(refusal) => {
                let refusal = unauthorized(&self.settings, access, &refusal);
                self.send(refusal, how, cx);
                return;
            }
        };
        match self.routes.handle(req, caller, cx) {
            Reply::Respond(response) => self.send(response, how, cx),
            Reply::Framed(bytes) => {
                queue(cx, bytes);
                if !how.keep_alive {
                    self.state = State::Done;
                }
            }
            Reply::Stream(head, door) => {
                let (head, _) = how.apply(head);
                cx.send(head.to_bytes());
                self.stream = Some(door);
            }
            Reply::Park { parked, deadline } => {
                if let Some(at) = deadline {
                    cx.wake_at(at);
                }
                self.state = State::Parked(Parked {
                    route: parked,
                    minor_version: how.minor_version,
                    head_only: how.head_only,
                    keep_alive: how.keep_alive,
                    deadline,
                });
            }
        }
    }

    fn send(&mut self, response: Response, how: How, cx: &mut Cx<'_>) {
        let (response, keep_alive) = how.apply(response);
        queue(cx, response.to_bytes());
        if !keep_alive {
            self.state = State::Done;
        }
    }

    /// What the connection does next when no request is parked.
    fn settled(&self) -> Next {
        match self.state {
            State::Open => Next::Read,
            State::Parked(_) | State::Resuming(_) => Next::Paused,
            State::Done => Next::Close(CloseReason::Quit),
        }
    }

    /// Resumes a request that got part of its response, until it waits
    /// again or is answered.
    fn resume_parked(&mut self, cx: &mut Cx<'_>) {
        while matches!(self.state, State::Resuming(_)) {
            let State::Resuming(mut parked) = std::mem::replace(&mut self.state, State::Done)
            else {
                return;
            };
            self.state = match self.routes.on_resume(&mut parked.route, cx) {
                None => State::Parked(parked),
                Some(part) => after_part(parked, part, &mut |frame| queue(cx, frame)),
            };
        }
        self.routes.tidy(cx);
    }
}

/// Sends what a part of a parked request's response says and returns the
/// machine's next state.
fn after_part<P>(parked: Parked<P>, part: Part, send: &mut dyn FnMut(Bytes)) -> State<P> {
    match part {
        Part::Whole(response) => {
            let (response, keep_alive) = How::of(&parked).apply(response);
            send(response.to_bytes());
            if keep_alive {
                State::Open
            } else {
                State::Done
            }
        }
        Part::More(bytes) => {
            if !bytes.is_empty() {
                send(bytes);
            }
            State::Resuming(parked)
        }
        Part::Last { bytes, keep_alive } => {
            if !bytes.is_empty() {
                send(bytes);
            }
            if keep_alive && parked.keep_alive {
                State::Open
            } else {
                State::Done
            }
        }
    }
}

/// The request's side of its response: version, HEAD, keep-alive.
#[derive(Clone, Copy)]
struct How {
    minor_version: u8,
    head_only: bool,
    keep_alive: bool,
}

impl How {
    fn of<P>(parked: &Parked<P>) -> How {
        How {
            minor_version: parked.minor_version,
            head_only: parked.head_only,
            keep_alive: parked.keep_alive,
        }
    }

    /// The response as it goes out, and whether the connection stays open.
    fn apply(self, response: Response) -> (Response, bool) {
        let keep_alive = self.keep_alive && response.keeps_alive();
        let response = response
            .version(self.minor_version)
            .head_only(self.head_only)
            .keep_alive(keep_alive);
        (response, keep_alive)
    }
}

impl<R: Routes> Door for HttpConn<R> {
    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        self.routes.tidy(cx);
        loop {
            if self.stream.is_some() {
                // Whatever a subscriber sends after its subscribe is ignored.
                input.clear();
                return Next::Read;
            }
            if matches!(self.state, State::Resuming(_)) {
                self.resume_parked(cx);
            }
            if !matches!(self.state, State::Open) {
                return self.settled();
            }
            // Output backpressure: requests stay in the input until what was
            // answered so far has drained (the shell resumes the door then).
            if cx.backlogged() {
                return Next::Read;
            }
            match self.decoder.decode(input) {
                Ok(None) => return Next::Read,
                Ok(Some(Event::Continue)) => {
                    queue(cx, Bytes::from_static(CONTINUE));
                }
                Ok(Some(Event::Request(req))) => {
                    cx.progress();
                    self.take(req, cx);
                }
                Err(err) => {
                    log::debug!("http conn {}: {err}", cx.me.key);
                    queue(cx, Response::error(err).to_bytes());
                    input.clear();
                    return Next::Close(CloseReason::ProtocolError);
                }
            }
        }
    }

    fn on_answer(&mut self, answer: Answer<'_>, send: &mut dyn FnMut(Bytes)) -> bool {
        let State::Parked(parked) = &mut self.state else {
            return false;
        };
        let Some(part) = self.routes.on_part(&mut parked.route, answer) else {
            return false;
        };
        let State::Parked(parked) = std::mem::replace(&mut self.state, State::Done) else {
            return false;
        };
        self.state = after_part(parked, part, send);
        true
    }

    fn is_paused(&self) -> bool {
        matches!(self.state, State::Parked(_))
    }

    fn mid_request(&self) -> bool {
        self.decoder.mid_request()
    }

    /// A request (head or body) started and was not finished in time: `408`
    /// and close, as RFC 9110 §15.5.9 has it. An idle keep-alive connection
    /// never gets here (it holds nothing).
    fn on_request_timeout(&mut self, cx: &mut Cx<'_>) -> Next {
        if self.stream.is_none() && matches!(self.state, State::Open) {
            let response = Response::text(
                408,
                "the request was not complete within the server's --request-timeout",
            )
            .keep_alive(false);
            queue(cx, response.to_bytes());
        }
        Next::Close(CloseReason::RequestTimeout)
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Next {
        if matches!(self.state, State::Resuming(_)) {
            self.resume_parked(cx);
        }
        let State::Parked(parked) = &mut self.state else {
            return self.settled();
        };
        let Some(deadline) = parked.deadline else {
            return Next::Paused;
        };
        if cx.now < deadline {
            // An earlier wake (of a request answered since): ask again.
            cx.wake_at(deadline);
            return Next::Paused;
        }
        let response = self.routes.on_deadline(&mut parked.route, cx);
        let how = How::of(parked);
        self.state = State::Open;
        self.send(response, how, cx);
        self.settled()
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        let parked = match std::mem::replace(&mut self.state, State::Done) {
            State::Parked(p) | State::Resuming(p) => Some(p.route),
            State::Open | State::Done => None,
        };
        self.routes.on_close(parked, cx);
    }

    fn upgrade(&mut self) -> Option<Box<dyn Door>> {
        self.stream.take()
    }
}

/// Queues a response (or `100 Continue`) for the connection.
///
/// Unlike [`Cx::send`] this leaves the broker's open fan-out batch open: a
/// connection that takes requests is subscribed to no channel (subscribing
/// hands it over to a stream door, and a stream's head goes out with
/// [`Cx::send`]), so no batch holds frames for it and order cannot suffer,
/// while a burst of pipelined publishes keeps gathering into one batch, one
/// frame per subscriber instead of one per message. The shell seals after
/// the call.
fn queue(cx: &mut Cx<'_>, frame: Bytes) {
    let len = frame.len();
    if cx.out.deliver(cx.me, frame, 0) {
        cx.note_queued(len);
    }
}

/// Who made a request, once its credentials are checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The sender of what it publishes: the Basic auth user name, or a
    /// token's `sub`.
    pub user: Option<String>,
    /// What its credentials allow; `None` when the door requires none.
    pub grant: Option<Rc<Grant>>,
}

impl Caller {
    /// True when the caller may do `action` on `name`.
    pub fn may(&self, action: Action, name: &[u8]) -> bool {
        self.grant.as_ref().is_none_or(|g| g.allows(action, name))
    }

    /// The `403` for an action the caller's token does not allow.
    pub fn forbidden(action: Action, name: &[u8]) -> Response {
        Response::text(
            403,
            &format!(
                "the token does not allow {} on `{}`",
                action.as_str(),
                String::from_utf8_lossy(name)
            ),
        )
    }
}

/// Checks the credentials of a request: HTTP Basic (the password must be
/// the secret), or a bearer token (`Authorization: Bearer T` or
/// `?token=T`: a token, or the secret itself). Without a secret and a
/// token key nothing is required and Basic credentials only name the user.
fn authenticate(
    req: &Request,
    access: &Access,
    verified: &mut Option<Box<Verified>>,
) -> Result<Caller, Refusal> {
    let header = req.header("Authorization");
    if !access.required() {
        let user = header.and_then(basic_credentials).map(|(user, _)| user);
        return Ok(Caller { user, grant: None });
    }
    if let Some((user, password)) = header.and_then(basic_credentials) {
        if access.is_secret(password.as_bytes()) {
            return Ok(Caller {
                user: Some(user),
                grant: Some(everything()),
            });
        }
        return Err(Refusal::Invalid("wrong password".to_string()));
    }
    let query_token = || {
        req.query()
            .and_then(|q| super::uri::query_param(q, "token"))
            .map(|t| t.into_owned().into_bytes())
    };
    let bearer = header.and_then(bearer_token).map(<[u8]>::to_vec);
    let Some(token) = bearer.or_else(query_token) else {
        return Err(Refusal::Missing);
    };
    let key = access.tokens.clone();
    if let Some(v) = verified.as_deref() {
        let same_key = match (&v.key, &key) {
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if v.token == token && same_key {
            if v.grant.expired(crate::auth::now_s()) {
                return Err(Refusal::Expired);
            }
            return Ok(Caller {
                user: v.grant.subject.clone(),
                grant: Some(Rc::clone(&v.grant)),
            });
        }
    }
    // The secret itself (a bearer of `--secret`) is checked every time: it
    // costs nothing, and a reload may change it.
    if access.is_secret(&token) {
        return Ok(Caller {
            user: None,
            grant: Some(everything()),
        });
    }
    let grant = Rc::new(access.check(&token)?);
    *verified = Some(Box::new(Verified {
        token,
        key,
        grant: Rc::clone(&grant),
    }));
    Ok(Caller {
        user: grant.subject.clone(),
        grant: Some(grant),
    })
}

/// The grant of the secret's bearers, made once per thread.
fn everything() -> Rc<Grant> {
    thread_local! {
        static EVERYTHING: Rc<Grant> = Rc::new(Grant::everything());
    }
    EVERYTHING.with(Rc::clone)
}

/// `Bearer TOKEN`.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// The `401` for a request whose credentials are missing or refused.
fn unauthorized(settings: &Settings, access: &Access, refusal: &Refusal) -> Response {
    if access.tokens.is_none() {
        // The shared secret alone: HTTP Basic, as msgbus answered.
        let challenge = format!("Basic realm=\"{}\"", settings.realm);
        return Response::new(401)
            .header("WWW-Authenticate", challenge)
            .body("text/html", &b"<h1>Unauthorized</h1>"[..]);
    }
    let error = match refusal {
        Refusal::Missing => String::new(),
        Refusal::Expired => ", error=\"invalid_token\", error_description=\"expired\"".to_string(),
        Refusal::Invalid(_) => ", error=\"invalid_token\"".to_string(),
    };
    Response::text(401, &format!("401 Unauthorized: {refusal}")).header(
        "WWW-Authenticate",
        format!("Bearer realm=\"{}\"{error}", settings.realm),
    )
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
    // The user name is written into what it publishes (a multipart `From:`,
    // an SSE comment line): a CR or LF in it would let a client forge
    // delimiters, parts and events.
    if user.chars().any(char::is_control) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    //! The machine driven without IO: a broker, a recording outbox, and a
    //! route table that answers at once, parks on a queue wait or a timer,
    //! and turns into a stream.

    use super::*;
    use crate::broker::{Broker, ConnId, Delivery, Outbox, Ready, RecordingOutbox, WaitId};
    use crate::door::Stats;

    const ME: ConnId = ConnId { key: 7, gen: 1 };

    /// What a parked test request waits for.
    #[derive(Debug)]
    enum Held {
        /// A queue message (`GET /wait/ADDR`).
        Wait(WaitId),
        /// Only its deadline (`GET /sleep`).
        Sleep,
        /// Parts of a response, each a message on `addr`
        /// (`GET /parts/ADDR`): `end` ends it, `close` ends it and the
        /// connection, anything else goes out as it is.
        Parts { wait: WaitId, addr: Bytes },
    }

    impl TestRoutes {
        fn part(body: &Bytes) -> Part {
            match &body[..] {
                b"end" => Part::Last {
                    bytes: Bytes::from_static(b"<end>"),
                    keep_alive: true,
                },
                b"close" => Part::Last {
                    bytes: Bytes::new(),
                    keep_alive: false,
                },
                _ => Part::More(body.clone()),
            }
        }
    }

    struct TestRoutes;

    impl Routes for TestRoutes {
        type Parked = Held;

        fn handle(&mut self, req: Request, caller: Caller, cx: &mut Cx<'_>) -> Reply<Held> {
            let path = req.path().to_string();
            if let Some(addr) = path.strip_prefix("/parts/") {
                let addr = Bytes::copy_from_slice(addr.as_bytes());
                return match cx
                    .broker
                    .ready(cx.now, cx.me, 30, vec![addr.clone()], cx.out)
                {
                    Ready::Waiting(wait) => Reply::Park {
                        parked: Held::Parts { wait, addr },
                        deadline: None,
                    },
                    _ => Reply::Respond(Response::new(500)),
                };
            }
            if let Some(addr) = path.strip_prefix("/wait/") {
                let addresses = vec![Bytes::copy_from_slice(addr.as_bytes())];
                return match cx.broker.ready(cx.now, cx.me, 30, addresses, cx.out) {
                    Ready::Waiting(id) => Reply::Park {
                        parked: Held::Wait(id),
                        deadline: None,
                    },
                    Ready::Message(m) => {
                        Reply::Respond(Response::new(200).body("text/plain", m.body))
                    }
                    Ready::TimedOut => Reply::Respond(Response::new(504)),
                };
            }
            match path.as_str() {
                "/sleep" => Reply::Park {
                    parked: Held::Sleep,
                    deadline: Some(cx.now + 1000),
                },
                "/stream" => Reply::Stream(
                    Response::new(200).stream(&b"opened\n"[..]),
                    Box::new(TestStream),
                ),
                "/user" => Reply::Respond(
                    Response::new(200).body("text/plain", caller.user.unwrap_or_default()),
                ),
                "/bye" => Reply::Respond(Response::new(200).keep_alive(false)),
                "/framed" => Reply::Framed(Bytes::from_static(b"FRAMED\n")),
                _ => Reply::Respond(Response::new(200).body("text/plain", req.target().to_owned())),
            }
        }

        fn on_answer(&mut self, parked: &mut Held, answer: Answer<'_>) -> Option<Response> {
            match (parked, answer) {
                (Held::Wait(_), Answer::Message(d)) => {
                    Some(Response::new(200).body("text/plain", d.body.clone()))
                }
                (Held::Wait(_), Answer::Timeout) => Some(Response::new(504)),
                (Held::Sleep | Held::Parts { .. }, _)
                | (Held::Wait(_), Answer::Switch(_) | Answer::Done(_)) => None,
            }
        }

        fn on_part(&mut self, parked: &mut Held, answer: Answer<'_>) -> Option<Part> {
            match (&*parked, answer) {
                (Held::Parts { .. }, Answer::Message(d)) => Some(TestRoutes::part(d.body)),
                (Held::Parts { .. }, Answer::Timeout) => Some(Part::Whole(Response::new(504))),
                _ => self.on_answer(parked, answer).map(Part::Whole),
            }
        }

        fn on_resume(&mut self, parked: &mut Held, cx: &mut Cx<'_>) -> Option<Part> {
            let Held::Parts { wait, addr } = parked else {
                return None;
            };
            match cx
                .broker
                .ready(cx.now, cx.me, 30, vec![addr.clone()], cx.out)
            {
                Ready::Waiting(w) => {
                    *wait = w;
                    None
                }
                Ready::Message(m) => Some(TestRoutes::part(&m.body)),
                Ready::TimedOut => Some(Part::Whole(Response::new(504))),
            }
        }

        fn on_close(&mut self, parked: Option<Held>, cx: &mut Cx<'_>) {
            if let Some(Held::Wait(id) | Held::Parts { wait: id, .. }) = parked {
                cx.broker.cancel(id);
            }
        }
    }

    struct TestStream;

    impl Door for TestStream {
        fn on_input(&mut self, _cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
            input.clear();
            Next::Read
        }
        fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
            false
        }
        fn is_paused(&self) -> bool {
            false
        }
        fn on_close(&mut self, _cx: &mut Cx<'_>) {}
    }

    /// Plays the shell for one connection.
    struct Shell {
        broker: Broker,
        out: RecordingOutbox,
        stats: Stats,
        live: crate::door::Live,
        door: Box<dyn Door>,
        input: BytesMut,
        now: Millis,
        wake: Option<Millis>,
        progressed: bool,
        upgraded: bool,
    }

    impl Shell {
        fn new(secret: Option<&str>) -> Shell {
            let settings = Rc::new(Settings {
                checks_credentials: true,
                realm: "test",
                limits: codec::Limits::default(),
            });
            Shell {
                broker: Broker::new(),
                out: RecordingOutbox::default(),
                stats: Stats::default(),
                live: crate::door::Live {
                    access: crate::auth::Access {
                        secret: secret.map(str::to_string),
                        tokens: None,
                    },
                    docroot: None,
                },
                door: Box::new(HttpConn::new(settings, TestRoutes)),
                input: BytesMut::new(),
                now: 1_000,
                wake: None,
                progressed: false,
                upgraded: false,
            }
        }

        fn after(&mut self, cx_wake: Option<Millis>, progressed: bool) {
            self.wake = cx_wake;
            self.progressed = progressed;
            self.broker.seal(&mut self.out);
            if let Some(next) = self.door.upgrade() {
                self.door = next;
                self.upgraded = true;
            }
        }

        /// Appends `bytes` to the input and runs the door over it.
        fn feed(&mut self, bytes: &[u8]) -> Next {
            self.input.extend_from_slice(bytes);
            self.resume()
        }

        /// Runs the door over the input it holds.
        fn resume(&mut self) -> Next {
            let mut cx = Cx::new(ME, self.now, &mut self.broker, &mut self.out, &self.stats)
                .with_live(&self.live);
            let next = self.door.on_input(&mut cx, &mut self.input);
            let (wake, progressed) = (cx.wake_requested(), cx.progressed());
            self.after(wake, progressed);
            next
        }

        fn timer(&mut self, now: Millis) -> Next {
            self.now = now;
            let mut cx = Cx::new(ME, self.now, &mut self.broker, &mut self.out, &self.stats)
                .with_live(&self.live);
            let next = self.door.on_timer(&mut cx);
            let (wake, progressed) = (cx.wake_requested(), cx.progressed());
            self.after(wake, progressed);
            next
        }

        fn close(&mut self) {
            let mut cx = Cx::new(ME, self.now, &mut self.broker, &mut self.out, &self.stats)
                .with_live(&self.live);
            self.door.on_close(&mut cx);
        }

        /// Another connection sends a queue message to `to`; an answer the
        /// broker gives this connection is handed to its door, as the shell
        /// does. Returns whether the door took it.
        fn message(&mut self, to: &str, body: &str) -> Option<bool> {
            let sent = self.broker.send(
                self.now,
                Bytes::copy_from_slice(to.as_bytes()),
                None,
                30,
                Bytes::copy_from_slice(body.as_bytes()),
                &mut self.out,
            );
            assert!(sent.is_ok());
            self.forward_answers()
        }

        fn forward_answers(&mut self) -> Option<bool> {
            let answers = std::mem::take(&mut self.out.answers);
            let mut took = None;
            for (conn, answer) in answers {
                assert_eq!(conn, ME);
                let out = &mut self.out;
                let mut send = |frame: Bytes| {
                    out.deliver(ME, frame, 0);
                };
                let taken = match &answer {
                    Some((to, reply, timeout_s, body)) => self.door.on_answer(
                        Answer::Message(Delivery {
                            to,
                            reply: reply.as_deref(),
                            timeout_s: *timeout_s,
                            body,
                        }),
                        &mut send,
                    ),
                    None => self.door.on_answer(Answer::Timeout, &mut send),
                };
                took = Some(taken);
            }
            took
        }

        /// Everything sent to this connection so far, then forgotten.
        fn output(&mut self) -> String {
            let text = String::from_utf8(self.out.bytes_for(ME)).unwrap();
            self.out.frames.clear();
            text
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const GATEWAY_TIMEOUT: &str = "HTTP/1.1 504 Gateway Timeout\r\nServer: switchboard\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Length: 39\r\n\r\n\
        504 Gateway Timeout: no answer in time\n";

    #[test]
    fn answers_at_once_in_order() {
        let mut s = Shell::new(None);
        let two = format!("{}{}", get("/a"), get("/b?x=1"));
        assert_eq!(s.feed(two.as_bytes()), Next::Read);
        assert!(s.progressed);
        assert_eq!(s.output(), format!("{}{}", ok("/a"), ok("/b?x=1")));
        // Half a request: nothing taken, nothing said.
        assert_eq!(s.feed(b"GET /c HTTP/1.1\r\n"), Next::Read);
        assert!(!s.progressed);
        assert_eq!(s.output(), "");
        assert_eq!(s.feed(b"\r\n"), Next::Read);
        assert_eq!(s.output(), ok("/c"));
    }

    #[test]
    fn parked_request_holds_the_pipeline_until_its_answer() {
        let mut s = Shell::new(None);
        let input = format!("{}{}{}", get("/x"), get("/wait/q"), get("/y"));
        assert_eq!(s.feed(input.as_bytes()), Next::Paused);
        assert!(s.door.is_paused());
        // The request before the parked one is answered; the one after waits.
        assert_eq!(s.output(), ok("/x"));
        assert_eq!(&s.input[..], get("/y").as_bytes());
        // Resumed with nothing answered: still paused, still in order.
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.output(), "");
        // A message for the wait: the parked response goes out first.
        assert_eq!(s.message("q", "hello"), Some(true));
        assert!(!s.door.is_paused());
        assert_eq!(s.resume(), Next::Read);
        assert_eq!(s.output(), format!("{}{}", ok("hello"), ok("/y")));
        assert!(s.input.is_empty());
        // Nothing parked: an answer is refused, and the message stays queued
        // for the next receiver.
        let mut cx_out = RecordingOutbox::default();
        let refused = s.door.on_answer(Answer::Timeout, &mut |f| {
            cx_out.deliver(ME, f, 0);
        });
        assert!(!refused);
        assert!(cx_out.frames.is_empty());
        assert_eq!(s.message("q", "later"), None);
        assert_eq!(s.broker.queues.queued(), 1);
    }

    #[test]
    fn a_message_already_queued_answers_at_once() {
        let mut s = Shell::new(None);
        assert_eq!(s.message("q", "early"), None);
        assert_eq!(s.feed(get("/wait/q").as_bytes()), Next::Read);
        assert_eq!(s.output(), ok("early"));
    }

    #[test]
    fn parked_request_times_out_by_its_deadline() {
        let mut s = Shell::new(None);
        let input = format!("{}{}", get("/sleep"), get("/after"));
        assert_eq!(s.feed(input.as_bytes()), Next::Paused);
        assert_eq!(s.wake, Some(2_000));
        // A wake before the deadline (left from something else) re-arms it.
        assert_eq!(s.timer(1_500), Next::Paused);
        assert_eq!(s.wake, Some(2_000));
        assert_eq!(s.output(), "");
        // The sleeping request refuses broker answers.
        let mut frames = Vec::new();
        assert!(!s.door.on_answer(Answer::Timeout, &mut |f| frames.push(f)));
        assert!(frames.is_empty());
        // The deadline: 504, then the pipelined request.
        assert_eq!(s.timer(2_000), Next::Read);
        assert!(!s.door.is_paused());
        assert_eq!(s.output(), GATEWAY_TIMEOUT);
        assert_eq!(s.resume(), Next::Read);
        assert_eq!(s.output(), ok("/after"));
        // A late timer with nothing parked does nothing.
        assert_eq!(s.timer(3_000), Next::Read);
        assert_eq!(s.output(), "");
    }

    #[test]
    fn parked_request_without_keep_alive_closes_after_its_answer() {
        let mut s = Shell::new(None);
        let input = b"GET /wait/q HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n";
        assert_eq!(s.feed(input), Next::Paused);
        assert_eq!(s.message("q", "hi"), Some(true));
        assert_eq!(s.resume(), Next::Close(CloseReason::Quit));
        assert_eq!(
            s.output(),
            "HTTP/1.0 200 OK\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\nhi"
        );
        // The same through the deadline.
        let mut s = Shell::new(None);
        assert_eq!(
            s.feed(b"GET /sleep HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Next::Paused
        );
        assert_eq!(s.timer(2_000), Next::Close(CloseReason::Quit));
        assert!(s.output().contains("\r\nConnection: close\r\n"));
    }

    #[test]
    fn broker_timeout_answers_a_parked_request() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/wait/q").as_bytes()), Next::Paused);
        s.broker.on_timers(s.now + 30_000, &mut s.out);
        assert_eq!(s.forward_answers(), Some(true));
        assert_eq!(
            s.output(),
            "HTTP/1.1 504 Gateway Timeout\r\nServer: switchboard\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn closing_while_parked_withdraws_the_wait() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/wait/q").as_bytes()), Next::Paused);
        assert_eq!(s.broker.queues.waiting(), 1);
        s.close();
        assert_eq!(s.broker.queues.waiting(), 0);
        // A message now waits in the queue instead of reaching the door.
        assert_eq!(s.message("q", "nobody"), None);
        assert_eq!(s.broker.queues.queued(), 1);
    }

    #[test]
    fn a_response_in_parts_goes_out_as_they_come_and_the_pipeline_waits() {
        let mut s = Shell::new(None);
        let input = format!("{}{}", get("/parts/p"), get("/y"));
        assert_eq!(s.feed(input.as_bytes()), Next::Paused);
        assert_eq!(s.output(), "");
        assert_eq!(s.broker.queues.waiting(), 1);
        // The first part goes out at once; the request stays parked, but the
        // door is not paused until it has been resumed and waits again.
        assert_eq!(s.message("p", "head;"), Some(true));
        assert_eq!(s.output(), "head;");
        assert!(!s.door.is_paused());
        assert_eq!(s.broker.queues.waiting(), 0);
        // A part sent before the resume waits in the queue...
        assert_eq!(s.message("p", "a;"), None);
        assert_eq!(s.broker.queues.queued(), 1);
        // ...and the resume takes it at once, then waits again.
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.output(), "a;");
        assert_eq!(s.broker.queues.queued(), 0);
        assert_eq!(s.broker.queues.waiting(), 1);
        assert!(s.door.is_paused());
        assert_eq!(&s.input[..], get("/y").as_bytes());
        // Resumed with nothing new: still parked, nothing said.
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.output(), "");
        assert_eq!(s.message("p", "b;"), Some(true));
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.output(), "b;");
        // The last part ends it; the pipelined request follows.
        assert_eq!(s.message("p", "end"), Some(true));
        assert_eq!(s.resume(), Next::Read);
        assert_eq!(s.output(), format!("<end>{}", ok("/y")));
        assert_eq!(s.broker.queues.waiting(), 0);
        assert!(s.input.is_empty());
    }

    #[test]
    fn parts_taken_at_once_on_resume_run_to_the_end() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/parts/p").as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "1;"), Some(true));
        // Everything else arrives before the resume.
        for body in ["2;", "3;", "end"] {
            assert_eq!(s.message("p", body), None);
        }
        assert_eq!(s.resume(), Next::Read);
        assert_eq!(s.output(), "1;2;3;<end>");
        assert_eq!(s.broker.queues.waiting(), 0);
        assert_eq!(s.broker.queues.queued(), 0);
        // A whole response can end a request in parts too.
        assert_eq!(s.feed(get("/parts/p").as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "x;"), Some(true));
        assert_eq!(s.resume(), Next::Paused);
        s.broker.on_timers(s.now + 30_000, &mut s.out);
        assert_eq!(s.forward_answers(), Some(true));
        assert_eq!(s.resume(), Next::Read);
        assert_eq!(
            s.output(),
            "x;HTTP/1.1 504 Gateway Timeout\r\nServer: switchboard\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_last_part_without_keep_alive_closes() {
        let mut s = Shell::new(None);
        let input = format!("{}{}", get("/parts/p"), get("/never"));
        assert_eq!(s.feed(input.as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "h;"), Some(true));
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.message("p", "close"), Some(true));
        assert_eq!(s.resume(), Next::Close(CloseReason::Quit));
        assert_eq!(s.output(), "h;");
        // A keep-alive part on a request without keep-alive closes too.
        let mut s = Shell::new(None);
        assert_eq!(s.feed(b"GET /parts/p HTTP/1.0\r\n\r\n"), Next::Paused);
        assert_eq!(s.message("p", "end"), Some(true));
        assert_eq!(s.resume(), Next::Close(CloseReason::Quit));
        assert_eq!(s.output(), "<end>");
    }

    #[test]
    fn a_timer_before_the_resume_resumes_first() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/parts/p").as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "h;"), Some(true));
        assert_eq!(s.timer(s.now + 1), Next::Paused);
        assert_eq!(s.broker.queues.waiting(), 1);
        assert_eq!(s.output(), "h;");
    }

    #[test]
    fn closing_mid_response_withdraws_the_wait() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/parts/p").as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "h;"), Some(true));
        assert_eq!(s.resume(), Next::Paused);
        assert_eq!(s.broker.queues.waiting(), 1);
        s.close();
        assert_eq!(s.broker.queues.waiting(), 0);
        assert_eq!(s.message("p", "late"), None);
        assert_eq!(s.broker.queues.queued(), 1);
        // Closed between a part and its resume: nothing waits either.
        let mut s = Shell::new(None);
        assert_eq!(s.feed(get("/parts/p").as_bytes()), Next::Paused);
        assert_eq!(s.message("p", "h;"), Some(true));
        s.close();
        assert_eq!(s.broker.queues.waiting(), 0);
    }

    #[test]
    fn mid_request_while_a_body_is_held() {
        let mut s = Shell::new(None);
        assert_eq!(
            s.feed(b"POST /p HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc"),
            Next::Read
        );
        assert!(s.door.mid_request());
        assert!(!s.progressed);
        assert_eq!(s.feed(b"def"), Next::Read);
        assert!(!s.door.mid_request());
        assert!(s.progressed);
        assert_eq!(s.output(), ok("/p"));
        // A head alone in the input is not held by the door.
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\n"), Next::Read);
        assert!(!s.door.mid_request());
    }

    #[test]
    fn continue_then_body() {
        let mut s = Shell::new(None);
        let head = b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(s.feed(head), Next::Read);
        assert_eq!(s.output(), "HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(s.feed(b"ok"), Next::Read);
        assert_eq!(s.output(), ok("/p"));
    }

    #[test]
    fn head_keep_alive_and_close() {
        let mut s = Shell::new(None);
        assert_eq!(s.feed(b"HEAD /h HTTP/1.1\r\n\r\n"), Next::Read);
        assert_eq!(
            s.output(),
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\n"
        );
        // HTTP/1.0 keep-alive, then a handler that closes.
        let input = b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
            GET /bye HTTP/1.1\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
        assert_eq!(s.feed(input), Next::Close(CloseReason::Quit));
        assert_eq!(
            s.output(),
            "HTTP/1.0 200 OK\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\n\r\n/k\
             HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        // Once done, nothing more is answered.
        assert_eq!(s.resume(), Next::Close(CloseReason::Quit));
        assert_eq!(s.output(), "");
        // A framed answer without keep-alive closes too.
        let mut s = Shell::new(None);
        assert_eq!(
            s.feed(b"GET /framed HTTP/1.0\r\n\r\n"),
            Next::Close(CloseReason::Quit)
        );
        assert_eq!(s.output(), "FRAMED\n");
    }

    #[test]
    fn malformed_request_is_answered_and_closed() {
        let mut s = Shell::new(None);
        let input = format!("{}GET / HTTP/9.9\r\n\r\n{}", get("/ok"), get("/never"));
        assert_eq!(
            s.feed(input.as_bytes()),
            Next::Close(CloseReason::ProtocolError)
        );
        let out = s.output();
        assert!(out.starts_with(&ok("/ok")), "{out}");
        assert!(
            out.ends_with("Connection: close\r\n\r\n505 HTTP Version Not Supported: only HTTP/1.0 and HTTP/1.1 are supported\n"),
            "{out}"
        );
        assert!(s.input.is_empty());
    }

    #[test]
    fn basic_auth_with_a_secret() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut s = Shell::new(Some("pw"));
        assert_eq!(s.feed(get("/user").as_bytes()), Next::Read);
        assert_eq!(
            s.output(),
            "HTTP/1.1 401 Unauthorized\r\nServer: switchboard\r\n\
             WWW-Authenticate: Basic realm=\"test\"\r\nContent-Type: text/html\r\n\
             Content-Length: 21\r\n\r\n<h1>Unauthorized</h1>"
        );
        let with = |user_pass: &str| {
            format!(
                "GET /user HTTP/1.1\r\nAuthorization: Basic {}\r\n\r\n",
                enc(user_pass)
            )
        };
        assert_eq!(s.feed(with("bob:wrong").as_bytes()), Next::Read);
        assert!(s.output().starts_with("HTTP/1.1 401 "));
        assert_eq!(s.feed(with("bob:pw").as_bytes()), Next::Read);
        assert_eq!(s.output(), ok("bob"));
        // Without a secret, credentials only name the user.
        let mut s = Shell::new(None);
        assert_eq!(s.feed(with("alice:any").as_bytes()), Next::Read);
        assert_eq!(s.output(), ok("alice"));
        assert_eq!(s.feed(get("/user").as_bytes()), Next::Read);
        assert_eq!(s.output(), ok(""));
    }

    #[test]
    fn stream_hands_the_connection_over() {
        let mut s = Shell::new(None);
        let input = format!("{}{}", get("/stream"), get("/ignored"));
        assert_eq!(s.feed(input.as_bytes()), Next::Read);
        assert!(s.upgraded);
        assert_eq!(
            s.output(),
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\n\r\nopened\n"
        );
        assert!(s.input.is_empty());
        assert_eq!(s.feed(get("/more").as_bytes()), Next::Read);
        assert_eq!(s.output(), "");
    }

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
}
