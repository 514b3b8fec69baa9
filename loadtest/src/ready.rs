//! The readiness handshake between flood-sub and flood-pub, so that a
//! publisher started at the same time as its subscribers loses nothing.
//!
//! flood-sub publishes, once a second from the moment its first connection
//! is subscribed until it ends, one small message on the ready channel
//! (`CHANNEL.ready` unless told otherwise): `ID COUNT`, where ID names the
//! flood-sub process (its pid and start time) and COUNT is how many of its
//! connections are subscribed. flood-pub `--wait-subscribers N` subscribes
//! to the ready channel first, keeps the latest COUNT of each ID, and starts
//! publishing once they add up to N. Since flood-sub repeats itself, the two
//! may start in either order. Both go through the door the run loads (line
//! protocol or HTTP bus, TLS included), with blocking sockets: a handful of
//! messages a second needs no event loop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::cli::{Proto, Target};
use crate::codec::Event;
use crate::{http, line, peers};

/// The ready channel of a load channel, unless `--ready-channel` says
/// otherwise.
pub fn default_channel(channel: &str) -> String {
    format!("{channel}.ready")
}

/// flood-sub processes whose announcements are counted; more are ignored.
const MAX_ANNOUNCERS: usize = 10_000;

/// How long one connect, write or read of the handshake may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking connection to the door under load.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn open(target: &Target, read_timeout: Duration) -> io::Result<Stream> {
    let sock = TcpStream::connect_timeout(&target.addr, IO_TIMEOUT)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(read_timeout))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    match &target.tls {
        None => Ok(Stream::Plain(sock)),
        Some(t) => {
            let conn = rustls::ClientConnection::new(t.config.clone(), t.server_name.clone())
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
        }
    }
}

/// flood-sub's side: says how many connections are subscribed.
pub struct Announcer {
    target: Target,
    channel: String,
    id: String,
    /// The line-protocol connection, kept between announcements.
    line: Option<Stream>,
}

impl Announcer {
    pub fn new(target: &Target, channel: &str) -> Announcer {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Announcer {
            target: target.clone(),
            channel: channel.to_string(),
            id: format!("{}-{nanos:x}", std::process::id()),
            line: None,
        }
    }

    /// Publishes `ID COUNT` on the ready channel.
    pub fn announce(&mut self, subscribed: u64) -> Result<(), String> {
        let body = format!("{} {subscribed}", self.id);
        let what = |e: io::Error| format!("ready channel {}: {e}", self.channel);
        match self.target.proto {
            Proto::Line | Proto::Nats | Proto::Redis | Proto::Mqtt => {
                let proto = self.target.proto;
                let mut frame = Vec::new();
                if proto == Proto::Line {
                    line::encode_publish(&mut frame, &self.channel, "text/plain", body.as_bytes());
                } else {
                    peers::publish(&mut frame, proto, &self.channel, body.as_bytes());
                }
                // One retry on a fresh connection: the kept one may have
                // been closed since the last announcement.
                for attempt in 0..2 {
                    if self.line.is_none() {
                        let mut s = open(&self.target, IO_TIMEOUT).map_err(what)?;
                        // What the other servers want first (CONNECT); the
                        // answers are never read: this connection only
                        // writes, a few bytes a second.
                        let mut hello = Vec::new();
                        peers::start_publisher(&mut hello, proto, &peers::client_id("ready", 0));
                        s.write_all(&hello).map_err(what)?;
                        self.line = Some(s);
                    }
                    let sent = match self.line.as_mut() {
                        Some(s) => s.write_all(&frame).and_then(|()| s.flush()),
                        None => Ok(()),
                    };
                    match sent {
                        Ok(()) => return Ok(()),
                        Err(e) if attempt == 1 => return Err(what(e)),
                        Err(_) => self.line = None,
                    }
                }
                Ok(())
            }
            Proto::Http | Proto::Sse | Proto::Ws => {
                let mut s = open(&self.target, IO_TIMEOUT).map_err(what)?;
                let mut req = Vec::new();
                http::encode_publish(
                    &mut req,
                    &self.target.host,
                    &self.target.path_of(&self.channel),
                    "text/plain",
                    body.as_bytes(),
                    self.target.auth.as_deref(),
                );
                s.write_all(&req).and_then(|()| s.flush()).map_err(what)?;
                // The status line is enough; the connection is dropped.
                let mut head = [0u8; 12];
                s.read_exact(&mut head).map_err(what)?;
                let status = String::from_utf8_lossy(&head);
                match status.get(9..10) {
                    Some("2") => Ok(()),
                    _ => Err(format!(
                        "ready channel {}: the server answered {status}",
                        self.channel
                    )),
                }
            }
        }
    }
}

/// flood-pub's side: returns once the subscribers announced on `channel`
/// add up to `want` connections, or fails after `patience`. `progress` is
/// told the count each time it changes.
pub fn wait_for(
    target: &Target,
    channel: &str,
    want: u64,
    patience: Duration,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let what = |e: io::Error| format!("ready channel {channel}: {e}");
    let mut s = open(target, Duration::from_millis(200)).map_err(what)?;
    let mut req = Vec::new();
    match target.proto {
        Proto::Line => line::encode_subscribe(&mut req, channel),
        Proto::Nats | Proto::Redis | Proto::Mqtt => {
            peers::subscribe(
                &mut req,
                target.proto,
                channel,
                &peers::client_id("wait", 0),
            );
        }
        Proto::Http | Proto::Sse | Proto::Ws => http::encode_subscribe(
            &mut req,
            &target.host,
            &target.path_of(channel),
            false,
            target.auth.as_deref(),
        ),
    }
    s.write_all(&req).and_then(|()| s.flush()).map_err(what)?;
    let mut line_parser = line::Parser::default();
    let mut http_parser = http::SubParser::default();
    let mut peer_parser = peers::Parser::new(target.proto);
    let mut pings = 0u32;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    let deadline = Instant::now() + patience;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if total >= want {
            return Ok(total);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "--wait-subscribers {want}: {total} subscribed after {:.0} s \
                 (is flood-sub running against the same server and channel?)",
                patience.as_secs_f64()
            ));
        }
        if crate::net::stop_requested() {
            return Err("stopped while waiting for subscribers".into());
        }
        let n = match s.read(&mut buf) {
            Ok(0) => return Err(format!("ready channel {channel}: the server closed")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(what(e)),
        };
        let data = buf.get(..n).unwrap_or_default();
        let mut on = |ev: Event<'_>| {
            if ev == Event::Ping {
                pings += 1;
            }
            if let Event::Message { prefix, .. } = ev {
                let text = String::from_utf8_lossy(prefix);
                let mut words = text.split_whitespace();
                if let (Some(id), Some(Ok(count))) = (words.next(), words.next().map(str::parse)) {
                    // Anyone may publish here: past MAX_ANNOUNCERS new
                    // names are ignored, so the table stays bounded.
                    if counts.len() < MAX_ANNOUNCERS || counts.contains_key(id) {
                        counts.insert(id.to_string(), count);
                    }
                }
            }
        };
        let fed = match (target.proto, peer_parser.as_mut()) {
            (Proto::Line, _) => line_parser.feed(data, &mut on),
            (_, Some(p)) => p.feed(data, &mut on),
            _ => http_parser.feed(data, &mut on),
        };
        fed.map_err(|e| format!("ready channel {channel}: {e}"))?;
        if pings > 0 {
            let mut pong = Vec::new();
            for _ in 0..std::mem::take(&mut pings) {
                peers::answer_ping(&mut pong, target.proto);
            }
            s.write_all(&pong).map_err(what)?;
        }
        let now = counts.values().sum();
        if now != total {
            total = now;
            progress(total);
        }
    }
}
