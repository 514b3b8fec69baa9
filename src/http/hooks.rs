//! The webhook door: mq-go's JSON API on the HTTP connection machine, the
//! dashboard, and the door of the outbound connections that deliver.
//!
//! Owns: `POST /connect/`, `/send/`, `/disconnect/` (JSON in and out, keys
//! matched case-insensitively as Go's JSON does, a `400` with a reason for
//! anything wrong), `GET /dashboard/` (a live page) and
//! `/dashboard/stats.json` (what it shows), and [`HookLink`]: the door of a
//! connection to a receiver, which reads the answers to the requests the
//! engine writes and reports them. Must not touch: delivery rules (the
//! engine in `crate::broker::hooks` owns them), sockets, other doors.

use std::convert::Infallible;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::client::ResponseDecoder;
use super::codec::{Method, Request};
use super::conn::{Caller, HttpConn, Reply, Routes, Settings};
use super::response::Response;
use crate::broker::hooks::{ClientId, Mode, Refused, Reply as HookReply, LINK_DOOR};
use crate::config::Config;
use crate::door::{Answer, CloseReason, Cx, DialOpener, Door, Next, Opener};

/// The Basic auth realm (with `--secret`).
pub const REALM: &str = "hooks";
/// The name of the dial door (a row of `crate::doors::DIALS`).
pub const DIAL_DOOR: &str = LINK_DOOR;
/// The dashboard's data.
pub const STATS_PATH: &str = "/dashboard/stats.json";

const DASHBOARD: &str = include_str!("hooks_dashboard.html");

/// The API door's constructor.
pub fn opener(config: &Config) -> Opener {
    let settings = Rc::new(Settings::from_config(config, REALM));
    Box::new(move || Box::new(HttpConn::new(Rc::clone(&settings), Api)))
}

/// The links' door constructor: the tag of a dial is the engine's link id.
pub fn dial_opener(_config: &Config) -> DialOpener {
    Box::new(|link| Box::new(HookLink::new(link)))
}

/// The API routes of one connection.
pub struct Api;

impl Routes for Api {
    type Parked = Infallible;

    fn handle(&mut self, req: Request, _caller: Caller, cx: &mut Cx<'_>) -> Reply<Infallible> {
        let path = req.path();
        let route = path.strip_suffix('/').unwrap_or(path);
        let response = match (route, req.method) {
            ("/connect" | "/send" | "/disconnect", Method::Post) => {
                match api_call(route, &req.body, cx) {
                    Ok(v) => json_response(200, &v),
                    Err(Refused::Bad(why)) => json_response(400, &json!({ "error": why })),
                    Err(Refused::Full(why)) => json_response(503, &json!({ "error": why })),
                }
            }
            ("/connect" | "/send" | "/disconnect", _) => json_response(
                405,
                &json!({ "error": format!("{route}/ takes POST with a JSON body") }),
            )
            .header("Allow", "POST"),
            ("/dashboard", Method::Get | Method::Head) => {
                Response::new(200).header("Cache-Control", "no-cache").body(
                    "text/html; charset=utf-8",
                    Bytes::from_static(DASHBOARD.as_bytes()),
                )
            }
            _ if path == STATS_PATH && matches!(req.method, Method::Get | Method::Head) => {
                json_response(200, &dashboard_json(cx)).header("Cache-Control", "no-cache")
            }
            _ => json_response(
                404,
                &json!({ "error": "no such path: the API is POST /connect/, /send/, /disconnect/ and GET /dashboard/" }),
            ),
        };
        Reply::Respond(response)
    }
}

fn json_response(status: u16, v: &Value) -> Response {
    let mut text = v.to_string();
    text.push('\n');
    Response::new(status).body("application/json", text)
}

/// One API call as its JSON body asks for it, checked but not yet done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Connect {
        url: String,
        mode: Mode,
        channel: Option<String>,
    },
    Send {
        id: ClientId,
        body: String,
    },
    Disconnect {
        id: ClientId,
    },
}

/// Reads the JSON body of the API call at `route` (`/connect`, `/send`;
/// any other route is `/disconnect`). Touches nothing: [`api_call`] does
/// the call.
pub fn parse_call(route: &str, body: &[u8]) -> Result<Call, Refused> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Bad(format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(Refused::Bad("the body must be a JSON object".into()));
    };
    match route {
        "/connect" => {
            let url = string(&obj, "ClientURL")?
                .ok_or_else(|| Refused::Bad("ClientURL is missing".into()))?;
            let mode = match string(&obj, "mode")? {
                Some(m) if m.eq_ignore_ascii_case("send") => Mode::Send,
                Some(m) if m.eq_ignore_ascii_case("receive") => Mode::Receive,
                Some(m) => {
                    return Err(Refused::Bad(format!(
                        "mode must be \"send\" or \"receive\", not {m:?}"
                    )))
                }
                None => {
                    return Err(Refused::Bad(
                        "mode is missing (\"send\" or \"receive\")".into(),
                    ))
                }
            };
            if url.len() > crate::broker::hooks::url::MAX_URL {
                return Err(Refused::Bad("ClientURL is longer than 2048 bytes".into()));
            }
            Ok(Call::Connect {
                url: url.to_string(),
                mode,
                channel: string(&obj, "channel")?.map(str::to_string),
            })
        }
        "/send" => {
            let id = client_id(&obj)?;
            let body =
                string(&obj, "body")?.ok_or_else(|| Refused::Bad("body is missing".into()))?;
            Ok(Call::Send {
                id,
                body: body.to_string(),
            })
        }
        _ => Ok(Call::Disconnect {
            id: client_id(&obj)?,
        }),
    }
}

/// One API call: its JSON object in, its answer out.
fn api_call(route: &str, body: &[u8], cx: &mut Cx<'_>) -> Result<Value, Refused> {
    let hooks = &mut cx.broker.hooks;
    match parse_call(route, body)? {
        Call::Connect { url, mode, channel } => {
            let id = hooks.connect(&url, mode, channel.as_deref(), &mut cx.broker.channels)?;
            Ok(json!({ "id": id }))
        }
        Call::Send { id, body } => {
            hooks.send(cx.now, id, &body, cx.out)?;
            Ok(json!({ "status": "Message enqueued.", "id": id }))
        }
        Call::Disconnect { id } => {
            hooks.disconnect(id, &mut cx.broker.channels)?;
            Ok(json!({ "id": id, "message": "Disconnected." }))
        }
    }
}

/// The field `name`: an exact match first, then one that differs in case
/// (as Go's encoding/json matches struct fields).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A string field; `Ok(None)` when absent, `Err` when not a string.
fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Refused> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refused::Bad(format!("{name} must be a string"))),
    }
}

fn client_id(obj: &Map<String, Value>) -> Result<ClientId, Refused> {
    match field(obj, "id") {
        None | Some(Value::Null) => Err(Refused::Bad("id is missing".into())),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Refused::Bad(format!("id must be a whole number, not {v}"))),
    }
}

/// What the dashboard shows.
fn dashboard_json(cx: &Cx<'_>) -> Value {
    let hooks = &cx.broker.hooks;
    let totals = hooks.totals();
    let receivers: Vec<Value> = hooks
        .receivers()
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "url": r.url,
                "channel": r.channel,
                "backlog": r.backlog,
                "in_flight": r.in_flight,
                "connections": r.links,
                "completed": r.counts.completed,
                "failed": r.counts.failed,
                "retried": r.counts.retried,
                "dropped": r.counts.dropped,
            })
        })
        .collect();
    let senders: Vec<Value> = hooks
        .senders()
        .into_iter()
        .map(|(id, url)| json!({ "id": id, "url": url }))
        .collect();
    json!({
        "readers": hooks.readers(),
        "writers": hooks.writers(),
        "queue_length": hooks.waiting(),
        "in_flight": hooks.in_flight(),
        "sent": hooks.sent(),
        "completed": totals.completed,
        "failed": totals.failed,
        "retried": totals.retried,
        "dropped": totals.dropped,
        "held_bytes": hooks.held_bytes(),
        "connections_out": cx.stats.open_of(DIAL_DOOR),
        "receivers": receivers,
        "senders": senders,
    })
}

/// The door of one connection to a receiver: the engine writes requests
/// onto it; this reads the answers, in order, and reports each.
pub struct HookLink {
    link: u64,
    decoder: ResponseDecoder,
}

impl HookLink {
    pub fn new(link: u64) -> HookLink {
        HookLink {
            link,
            decoder: ResponseDecoder::new(),
        }
    }
}

impl Door for HookLink {
    fn on_connect(&mut self, cx: &mut Cx<'_>, result: Result<(), &std::io::Error>) -> Next {
        match result {
            Ok(()) => {
                if cx.broker.hooks.link_up(self.link, cx.me, cx.now, cx.out) {
                    Next::Read
                } else {
                    Next::Close(CloseReason::Quit)
                }
            }
            Err(e) => {
                let why = e.to_string();
                cx.broker.hooks.link_failed(self.link, &why, cx.now, cx.out);
                Next::Close(CloseReason::ConnectFailed)
            }
        }
    }

    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        loop {
            match self.decoder.decode(input) {
                Ok(None) => return Next::Read,
                Ok(Some(a)) => {
                    cx.progress();
                    let reply = HookReply {
                        status: a.status,
                        retry_after_s: a.retry_after_s,
                        keep_alive: a.keep_alive,
                    };
                    if !cx.broker.hooks.on_reply(self.link, reply, cx.now, cx.out) {
                        input.clear();
                        return Next::Close(CloseReason::Quit);
                    }
                }
                Err(e) => {
                    log::info!("webhook link {}: {e}; closing it", self.link);
                    input.clear();
                    return Next::Close(CloseReason::ProtocolError);
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

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        if let Some(a) = self.decoder.at_close() {
            let reply = HookReply {
                status: a.status,
                retry_after_s: a.retry_after_s,
                keep_alive: false,
            };
            cx.broker.hooks.on_reply(self.link, reply, cx.now, cx.out);
        }
        let answered = self.decoder.started();
        cx.broker
            .hooks
            .link_closed(self.link, answered, cx.now, cx.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_without_case() {
        let v: Value = serde_json::from_str(
            r#"{"clienturl": "a", "ClientURL": "b", "MODE": "send", "Id": 3}"#,
        )
        .unwrap();
        let Value::Object(obj) = v else { panic!() };
        assert_eq!(string(&obj, "ClientURL").unwrap(), Some("b"));
        assert_eq!(string(&obj, "mode").unwrap(), Some("send"));
        assert_eq!(client_id(&obj).unwrap(), 3);
        assert_eq!(string(&obj, "body").unwrap(), None);
        let v: Value = serde_json::from_str(r#"{"id": "3", "body": 5}"#).unwrap();
        let Value::Object(obj) = v else { panic!() };
        assert!(client_id(&obj).is_err());
        assert!(string(&obj, "body").is_err());
    }

    #[test]
    fn a_client_url_may_take_2048_bytes_and_no_more() {
        let connect = |len: usize| {
            let url = format!("http://h/{}", "a".repeat(len - "http://h/".len()));
            let body = json!({ "ClientURL": url, "mode": "receive" }).to_string();
            parse_call("/connect", body.as_bytes())
        };
        assert!(
            matches!(connect(2048), Ok(Call::Connect { url, .. }) if url.len() == 2048),
            "{:?}",
            connect(2048)
        );
        assert_eq!(
            connect(2049),
            Err(Refused::Bad("ClientURL is longer than 2048 bytes".into()))
        );
    }
}
