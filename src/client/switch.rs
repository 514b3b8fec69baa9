//! A small blocking client for the message-switch HTTP API, used by
//! `switchboard-cli --switch` and the tests.
//!
//! Owns one keep-alive HTTP/1.1 connection (TCP or a Unix socket), the
//! requests of the API with their path segments percent-encoded, and the
//! decoding of the JSON answers. It speaks only the wire API described in
//! `docs/switch.md`, never the server's insides.
//!
//! ```no_run
//! use switchboard::client::switch::SwitchClient;
//!
//! # fn main() -> Result<(), switchboard::client::Error> {
//! let mut c = SwitchClient::connect("127.0.0.1:8080")?;
//! c.login("me")?;
//! c.create_persistent("svc")?;
//! let id = c.request("svc", "", b"hello")?;
//! println!("{:?}", id);
//! # Ok(())
//! # }
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::transport::Transport;
use super::{Error, Result};

/// What a path segment keeps unescaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest response body accepted.
const MAX_BODY: usize = 512 * 1024 * 1024;

/// A message id: its queue and its number there.
pub type MessageId = (String, u64);

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A request; its response goes to this queue (empty: none expected).
    Request(String),
    /// The response to this request.
    Response(MessageId),
}

/// A message as a transfer returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub payload: String,
    pub kind: Kind,
}

/// What a transfer returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub messages: Vec<Message>,
    /// The `from` of the next transfer.
    pub next: String,
}

/// An answer of the server: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One connection to a message-switch API door.
#[derive(Debug)]
pub struct SwitchClient {
    conn: BufReader<Transport>,
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn protocol(what: impl Into<String>) -> Error {
    Error::Protocol(what.into())
}

fn parse_id(v: &Value) -> Option<MessageId> {
    let pair = v.as_array()?;
    let queue = pair.first()?.as_str()?.to_string();
    let n = pair.get(1)?.as_u64()?;
    Some((queue, n))
}

fn parse_kind(v: &Value) -> Option<Kind> {
    let a = v.as_array()?;
    match a.first()?.as_str()? {
        "Request" => Some(Kind::Request(a.get(1)?.as_str()?.to_string())),
        "Response" => Some(Kind::Response(parse_id(a.get(1)?)?)),
        _ => None,
    }
}

/// `{"payload": …, "kind": …}`.
pub fn parse_message(id: MessageId, v: &Value) -> Option<Message> {
    Some(Message {
        id,
        payload: v.get("payload")?.as_str()?.to_string(),
        kind: parse_kind(v.get("kind")?)?,
    })
}

/// A transfer's answer, `{"messages": [[id, message]…], "next": "N"}`.
pub fn parse_transfer(v: &Value) -> Option<Transfer> {
    let mut messages = Vec::new();
    for pair in v.get("messages")?.as_array()? {
        let pair = pair.as_array()?;
        let id = parse_id(pair.first()?)?;
        messages.push(parse_message(id, pair.get(1)?)?);
    }
    let next = v.get("next")?.as_str()?.to_string();
    Some(Transfer { messages, next })
}

impl SwitchClient {
    /// Connects to `target`: a Unix socket when it contains a `/`,
    /// otherwise a TCP `HOST:PORT`.
    pub fn connect(target: &str) -> Result<SwitchClient> {
        let transport = if target.contains('/') {
            Transport::connect_unix(target.as_ref())?
        } else {
            Transport::connect_tcp(target)?
        };
        Ok(SwitchClient {
            conn: BufReader::new(transport),
        })
    }

    /// Bounds how long one read may block (`None`: for ever).
    pub fn set_read_timeout(&mut self, dur: Option<Duration>) -> Result<()> {
        Ok(self.conn.get_ref().set_read_timeout(dur)?)
    }

    /// One request and its answer, whatever the status.
    pub fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Reply> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: switch\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.conn.get_mut().write_all(&req)?;
        self.conn.get_mut().flush()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Reply> {
        let mut status = None;
        let mut length = None;
        let mut head = 0;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.conn.read_line(&mut line)?;
            if n == 0 {
                return Err(Error::Closed);
            }
            head += n;
            if head > MAX_HEAD {
                return Err(protocol("a response head over 64 KiB"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status.is_none() {
                let code = l
                    .strip_prefix("HTTP/1.")
                    .and_then(|rest| rest.get(2..5))
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| protocol(format!("not an HTTP status line: {l:?}")))?;
                status = Some(code);
                continue;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    let len = v
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| protocol(format!("bad Content-Length: {v:?}")))?;
                    length = Some(len);
                }
            }
        }
        let status = status.ok_or_else(|| protocol("an empty response"))?;
        let length = length.ok_or_else(|| protocol("a response without Content-Length"))?;
        if length > MAX_BODY {
            return Err(protocol(format!("a {length}-byte response body")));
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body)?;
        Ok(Reply { status, body })
    }

    /// A request that must be answered `200`; its body.
    fn ok(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let reply = self.call(method, path, body)?;
        if reply.status != 200 {
            return Err(Error::Status(
                reply.status,
                String::from_utf8_lossy(&reply.body).trim_end().to_string(),
            ));
        }
        Ok(reply.body)
    }

    fn json(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Value> {
        let body = self.ok(method, path, body)?;
        serde_json::from_slice(&body).map_err(|e| protocol(format!("bad JSON: {e}")))
    }

    /// Binds this connection to session `token`.
    pub fn login(&mut self, token: &str) -> Result<()> {
        self.ok("GET", &format!("/login/{}", seg(token)), b"")
            .map(drop)
    }

    /// Creates (if need be) a queue that outlives every session.
    pub fn create_persistent(&mut self, name: &str) -> Result<String> {
        let body = self.ok("GET", &format!("/persistent/{}", seg(name)), b"")?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Creates (if need be) a queue that goes when this session's last
    /// connection closes.
    pub fn create_transient(&mut self, name: &str) -> Result<String> {
        let body = self.ok("GET", &format!("/transient/{}", seg(name)), b"")?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Removes a queue and its messages.
    pub fn destroy(&mut self, name: &str) -> Result<()> {
        self.ok("GET", &format!("/destroy/{}", seg(name)), b"")
            .map(drop)
    }

    /// Deletes a message (an unknown id is ignored).
    pub fn ack(&mut self, (queue, n): &MessageId) -> Result<()> {
        self.ok("GET", &format!("/ack/{}/{n}", seg(queue)), b"")
            .map(drop)
    }

    /// Queue names starting with `prefix`; with `alive`, only those some
    /// transfer has named.
    pub fn list(&mut self, prefix: &str, alive: bool) -> Result<Vec<String>> {
        let path = if alive {
            format!("/list/alive/{}", seg(prefix))
        } else {
            format!("/list/{}", seg(prefix))
        };
        let v = self.json("GET", &path, b"")?;
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|n| n.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            })
            .ok_or_else(|| protocol("a list that is not a list of names"))
    }

    /// The diagnostics document, as the server wrote it.
    pub fn diagnostics(&mut self) -> Result<Value> {
        self.json("GET", "/", b"")
    }

    /// Messages with ids above `from` in `queues`; waits up to `timeout_s`
    /// seconds for one when there is none.
    pub fn transfer(
        &mut self,
        from: Option<&str>,
        timeout_s: f64,
        queues: &[&str],
    ) -> Result<Transfer> {
        let mut req = json!({ "timeout": timeout_s, "queues": queues });
        if let (Some(from), Some(obj)) = (from, req.as_object_mut()) {
            obj.insert("from".into(), json!(from));
        }
        let v = self.json("POST", "/transfer", req.to_string().as_bytes())?;
        parse_transfer(&v).ok_or_else(|| protocol(format!("not a transfer: {v}")))
    }

    /// Trace events from `from` on (waits up to `timeout_s` for one).
    pub fn trace(&mut self, from: i64, timeout_s: f64) -> Result<Value> {
        self.json("GET", &format!("/trace/{from}/{timeout_s}"), b"")
    }

    fn sent(v: &Value) -> Result<Option<MessageId>> {
        let a = v
            .as_array()
            .ok_or_else(|| protocol(format!("not an optional id: {v}")))?;
        match a.first() {
            None => Ok(None),
            Some(id) => parse_id(id)
                .map(Some)
                .ok_or_else(|| protocol(format!("not a message id: {id}"))),
        }
    }

    /// Sends a request to `name` whose response goes to `reply_to`; `None`
    /// when nothing took it (no such queue, nobody waiting).
    pub fn request(
        &mut self,
        name: &str,
        reply_to: &str,
        payload: &[u8],
    ) -> Result<Option<MessageId>> {
        let path = format!("/request/{}/{}", seg(name), seg(reply_to));
        let v = self.json("POST", &path, payload)?;
        Self::sent(&v)
    }

    /// Sends the response to request `to` into queue `name`.
    pub fn response(
        &mut self,
        name: &str,
        (queue, n): &MessageId,
        payload: &[u8],
    ) -> Result<Option<MessageId>> {
        let path = format!("/response/{}/{}/{n}", seg(name), seg(queue));
        let v = self.json("POST", &path, payload)?;
        Self::sent(&v)
    }

    /// Asks the server to stop (it must run with `--allow-shutdown`).
    pub fn shutdown(&mut self) -> Result<()> {
        self.ok("POST", "/shutdown", b"").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("a b/c%d"), "a%20b%2Fc%25d");
        assert_eq!(seg("org.xen.xapi-1_~"), "org.xen.xapi-1_~");
    }

    #[test]
    fn transfers_parse() {
        let v: Value = serde_json::from_str(
            r#"{"messages":[[["svc",4],{"payload":"hi","kind":["Request","r"]}],
                [["r",0],{"payload":"ok","kind":["Response",["svc",4]]}]],"next":"4"}"#,
        )
        .unwrap();
        let t = parse_transfer(&v).unwrap();
        assert_eq!(t.next, "4");
        assert_eq!(
            t.messages.first().map(|m| m.kind.clone()),
            Some(Kind::Request("r".into()))
        );
        assert_eq!(
            t.messages.get(1).map(|m| m.kind.clone()),
            Some(Kind::Response(("svc".into(), 4)))
        );
        assert!(parse_transfer(&json!({"messages": [1], "next": "1"})).is_none());
    }
}
