//! A small blocking client for the line protocol, used by `switchboard-cli`
//! and the integration tests.
//!
//! Owns one connection: writing commands, reading the frames that answer
//! them, and keeping channel publications that arrive while a `<` or `?` is
//! waiting for its answer. It must not touch the server's internals: it
//! speaks only the wire protocol described in `docs/protocol.md`.
//!
//! ```no_run
//! use switchboard::client::Client;
//!
//! # fn main() -> Result<(), switchboard::client::Error> {
//! let mut client = Client::connect_tcp("127.0.0.1:9813")?;
//! if let Some(reply) = client.query(b"hello", 10, "greeter")? {
//!     println!("{}", String::from_utf8_lossy(&reply.body));
//! }
//! client.quit()
//! # }
//! ```

mod error;
mod frame;
pub mod switch;
mod transport;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
#[cfg(unix)]
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use error::{Error, Result};
pub use frame::{DEFAULT_CONTENT_TYPE, MAX_READY_ADDRS};
pub use transport::{host_of, tls_config, Transport, HANDSHAKE_TIMEOUT};

use frame::Header;

/// The longest header line accepted from the server. Real header lines are
/// a few hundred bytes at most; this only stops a runaway peer.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The largest body accepted from the server unless changed with
/// [`Client::set_max_body`].
pub const DEFAULT_MAX_BODY: usize = 256 * 1024 * 1024;

/// Bodies up to this size are copied next to their header line and written
/// with one call; larger ones are written in place.
const COALESCE_BELOW: usize = 64 * 1024;

/// How long [`Client::quit`] waits for the server to close.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// A message on a queue address, as `<` and `?` deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The seconds the sender allowed it to wait for a receiver.
    pub timeout_s: u64,
    /// The address it was sent to.
    pub to: String,
    /// Where the sender waits for an answer, if anywhere.
    pub reply: Option<String>,
    pub body: Vec<u8>,
}

impl Message {
    /// The body length, the `LEN` of its frame.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// A message on a channel, delivered to every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub channel: String,
    /// Always present on delivery; `application/octet-stream` when the
    /// publisher gave none.
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Something the server sent without being asked for it in the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `!` frame on a subscribed channel.
    Publication(Publication),
    /// A `>` frame.
    Message(Message),
    /// A `*` frame.
    Timeout,
}

/// A frame read off the wire, body included.
enum Frame {
    Message(Message),
    Publication(Publication),
    Timeout,
}

/// One connection to a switchboard line-protocol door.
///
/// Calls block. The server answers only `<` and `?`, so `send`, `publish`,
/// `subscribe` and `unsubscribe` return once the bytes are written; a
/// refusal of one of them shows up as [`Error::Server`] on a later call
/// (at the latest on [`Client::quit`]).
#[derive(Debug)]
pub struct Client {
    conn: BufReader<Transport>,
    /// Publications read while waiting for the answer to `<` or `?`,
    /// handed out by [`Client::next_event`] in the order they came.
    pending: VecDeque<Publication>,
    max_line: usize,
    max_body: usize,
}

impl Client {
    /// Connects to a TCP line-protocol door, e.g. `127.0.0.1:9813`.
    pub fn connect_tcp(addr: &str) -> Result<Self> {
        Ok(Self::new(Transport::connect_tcp(addr)?))
    }

    /// Connects to a Unix-socket line-protocol door.
    #[cfg(unix)]
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Transport::connect_unix(path.as_ref())?))
    }

    /// Connects to a line-protocol door over TLS (a server started with
    /// `--line-tls-listen`), checking its certificate against `config`
    /// (see [`tls_config`]) and `server_name`, a DNS name or an IP
    /// address ([`host_of`] gives the host part of `addr`).
    ///
    /// ```no_run
    /// use switchboard::client::{host_of, tls_config, Client};
    ///
    /// # fn main() -> Result<(), switchboard::client::Error> {
    /// let config = tls_config("ca.pem".as_ref())?;
    /// let addr = "127.0.0.1:9814";
    /// let mut client = Client::connect_tls(addr, host_of(addr), config)?;
    /// client.publish("news", Some("text/plain"), b"hello")?;
    /// client.quit()
    /// # }
    /// ```
    pub fn connect_tls(
        addr: &str,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        Ok(Self::new(Transport::connect_tls(
            addr,
            server_name,
            config,
        )?))
    }

    /// Wraps an already connected transport.
    pub fn new(transport: Transport) -> Self {
        Client {
            conn: BufReader::new(transport),
            pending: VecDeque::new(),
            max_line: DEFAULT_MAX_LINE,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Refuses bodies from the server larger than `max` bytes (the
    /// connection is then unusable: the rest of the body is not read).
    pub fn set_max_body(&mut self, max: usize) {
        self.max_body = max;
    }

    /// Bounds how long one read from the server may block; `None`, the
    /// default, waits for ever. A read that runs out fails with
    /// [`Error::Io`] of kind `WouldBlock` or `TimedOut`.
    pub fn set_read_timeout(&mut self, dur: Option<Duration>) -> Result<()> {
        Ok(self.conn.get_ref().set_read_timeout(dur)?)
    }

    /// Sends `body` to address `to`, where it waits at most `timeout_s`
    /// seconds for a receiver. `reply` tells the receiver where to answer.
    pub fn send(
        &mut self,
        body: &[u8],
        timeout_s: u64,
        to: &str,
        reply: Option<&str>,
    ) -> Result<()> {
        let line = frame::send_line(body.len(), timeout_s, to, reply)?;
        self.write_frame(&line, body)
    }

    /// Waits up to `timeout_s` seconds for one message on any of `addrs`
    /// (1 to 8). `None` means the wait ran out.
    pub fn ready(&mut self, timeout_s: u64, addrs: &[&str]) -> Result<Option<Message>> {
        let line = frame::ready_line(timeout_s, addrs)?;
        self.write_frame(&line, &[])?;
        self.read_answer()
    }

    /// Sends `body` to `to` with a fresh reply address and waits up to
    /// `timeout_s` seconds for the answer. `None` means no answer came.
    pub fn query(&mut self, body: &[u8], timeout_s: u64, to: &str) -> Result<Option<Message>> {
        let line = frame::query_line(body.len(), timeout_s, to)?;
        self.write_frame(&line, body)?;
        self.read_answer()
    }

    /// Publishes `body` to every current subscriber of `channel`.
    /// `content_type` defaults to `application/octet-stream` on the server.
    pub fn publish(
        &mut self,
        channel: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<()> {
        let line = frame::publish_line(body.len(), channel, content_type)?;
        self.write_frame(&line, body)
    }

    /// Subscribes this connection to `channel`; publications then arrive
    /// through [`Client::next_event`]. Call [`Client::sync`] to know the
    /// server has taken the subscription.
    pub fn subscribe(&mut self, channel: &str) -> Result<()> {
        let line = frame::channel_line(true, channel)?;
        self.write_frame(&line, &[])
    }

    /// Ends this connection's subscription to `channel`.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<()> {
        let line = frame::channel_line(false, channel)?;
        self.write_frame(&line, &[])
    }

    /// Authenticates with the server's `--secret` or a token (`@
    /// CREDENTIAL`, docs/protocol.md). Nothing is answered when it is taken;
    /// a refusal arrives as [`Error::Server`] at the next read, and the
    /// server closes the connection.
    pub fn authenticate(&mut self, credential: &str) -> Result<()> {
        frame::check_field("credential", credential)?;
        self.write_frame(&format!("@ {credential}\r\n"), &[])
    }

    /// Returns once the server has handled every command sent before it.
    ///
    /// The server handles one connection's commands in order and answers
    /// only waits, so this sends a zero-second `<` on an address no one
    /// else uses and reads its answer. Useful after `subscribe`, before
    /// telling someone else to publish.
    pub fn sync(&mut self) -> Result<()> {
        let addr = fresh_sync_address();
        // Anything sent to that address is nobody's message but ours.
        self.ready(0, &[&addr]).map(|_| ())
    }

    /// The next frame the server sends unasked: a publication on a
    /// subscribed channel first of all. Blocks until one arrives.
    pub fn next_event(&mut self) -> Result<Event> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Event::Publication(p));
        }
        Ok(match self.read_frame()? {
            Frame::Message(m) => Event::Message(m),
            Frame::Publication(p) => Event::Publication(p),
            Frame::Timeout => Event::Timeout,
        })
    }

    /// Says goodbye (`.`) and waits briefly for the server to close, so
    /// that a refusal of an earlier `send` or `publish` is reported here
    /// rather than lost. Publications still in flight are dropped.
    pub fn quit(mut self) -> Result<()> {
        self.write_frame(".\r\n", &[])?;
        let transport = self.conn.get_mut();
        // The server closes on `.`; these only make the wait finite.
        let _ = transport.shutdown_write();
        transport.set_read_timeout(Some(QUIT_GRACE))?;
        loop {
            match self.read_frame() {
                Ok(_) => continue,
                Err(Error::Closed) => return Ok(()),
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until the answer to a `<` or `?`, keeping publications that
    /// arrive first.
    fn read_answer(&mut self) -> Result<Option<Message>> {
        loop {
            match self.read_frame()? {
                Frame::Message(m) => return Ok(Some(m)),
                Frame::Timeout => return Ok(None),
                Frame::Publication(p) => self.pending.push_back(p),
            }
        }
    }

    fn write_frame(&mut self, line: &str, body: &[u8]) -> Result<()> {
        let w = self.conn.get_mut();
        if body.is_empty() {
            w.write_all(line.as_bytes())?;
        } else if body.len() < COALESCE_BELOW {
            let mut buf = Vec::with_capacity(line.len() + body.len() + 2);
            buf.extend_from_slice(line.as_bytes());
            buf.extend_from_slice(body);
            buf.extend_from_slice(b"\r\n");
            w.write_all(&buf)?;
        } else {
            w.write_all(line.as_bytes())?;
            w.write_all(body)?;
            w.write_all(b"\r\n")?;
        }
        w.flush()?;
        Ok(())
    }

    fn read_frame(&mut self) -> Result<Frame> {
        let line = self.read_line()?;
        if line.starts_with(b"HTTP/") {
            return Err(Error::HttpDoor(String::from_utf8_lossy(&line).into_owned()));
        }
        match frame::parse_header(&line)? {
            Header::Error(reason) => Err(Error::Server(reason)),
            Header::Timeout => Ok(Frame::Timeout),
            Header::Message {
                len,
                timeout_s,
                to,
                reply,
            } => Ok(Frame::Message(Message {
                timeout_s,
                to,
                reply,
                body: self.read_body(len)?,
            })),
            Header::Publication {
                len,
                channel,
                content_type,
            } => Ok(Frame::Publication(Publication {
                channel,
                content_type,
                body: self.read_body(len)?,
            })),
        }
    }

    /// One line without its `\r\n` or `\n`.
    fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let limit = u64::try_from(self.max_line)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        (&mut self.conn).take(limit).read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            if line.len() > self.max_line {
                return Err(Error::Protocol(format!(
                    "a header line longer than {} bytes",
                    self.max_line
                )));
            }
            return Err(Error::Closed);
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    /// `len` body bytes and the `\r\n` after them; nothing when `len` is 0.
    fn read_body(&mut self, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if len > self.max_body {
            return Err(Error::Protocol(format!(
                "a {len}-byte body, over the client's limit of {} bytes",
                self.max_body
            )));
        }
        // Grow with what actually arrives, not with what the header claims.
        let mut body = Vec::with_capacity(len.min(COALESCE_BELOW));
        let want = u64::try_from(len).unwrap_or(u64::MAX);
        (&mut self.conn).take(want).read_to_end(&mut body)?;
        if body.len() < len {
            return Err(Error::Closed);
        }
        let mut crlf = [0u8; 2];
        self.conn.read_exact(&mut crlf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Closed
            } else {
                Error::Io(e)
            }
        })?;
        if &crlf != b"\r\n" {
            return Err(Error::Protocol(
                "a body not followed by \\r\\n (wrong length?)".into(),
            ));
        }
        Ok(body)
    }
}

/// An address for [`Client::sync`] that no other client picks: process id,
/// a per-process counter and the clock.
fn fresh_sync_address() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("switchboard.sync.{}.{n}.{nanos:x}", std::process::id())
}

#[cfg(all(test, unix))]
mod tests {
    //! The client against a scripted peer on a socket pair: framing only.

    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// A client whose server writes `script` and returns everything the
    /// client wrote, once the client hangs up.
    fn scripted(script: &'static [u8]) -> (Client, thread::JoinHandle<Vec<u8>>) {
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => panic!("socketpair: {e}"),
        };
        let peer = thread::spawn(move || {
            let mut theirs = theirs;
            let _ = theirs.write_all(script);
            let mut seen = Vec::new();
            let _ = theirs.read_to_end(&mut seen);
            seen
        });
        (Client::new(Transport::Unix(ours)), peer)
    }

    fn written(peer: thread::JoinHandle<Vec<u8>>) -> String {
        match peer.join() {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => panic!("peer thread panicked"),
        }
    }

    #[test]
    fn ready_returns_the_message_and_keeps_earlier_publications() -> Result<()> {
        let (mut c, peer) = scripted(b"! 2 news text/plain\r\nhi\r\n> 5 30 jobs r.1\r\nhello\r\n");
        let m = c.ready(10, &["jobs", "other"])?;
        assert_eq!(
            m,
            Some(Message {
                timeout_s: 30,
                to: "jobs".into(),
                reply: Some("r.1".into()),
                body: b"hello".to_vec(),
            })
        );
        assert_eq!(
            c.next_event()?,
            Event::Publication(Publication {
                channel: "news".into(),
                content_type: "text/plain".into(),
                body: b"hi".to_vec(),
            })
        );
        c.quit()?;
        assert_eq!(written(peer), "< 10 jobs other\r\n.\r\n");
        Ok(())
    }

    #[test]
    fn timeout_is_none_and_bare_newlines_are_accepted() -> Result<()> {
        let (mut c, peer) = scripted(b"*\n> 0 1 a\n");
        assert_eq!(c.query(b"", 1, "svc")?, None);
        let m = c.query(b"ping", 1, "svc")?;
        assert_eq!(m.map(|m| (m.to, m.body)), Some(("a".into(), Vec::new())));
        c.quit()?;
        assert_eq!(written(peer), "? 0 1 svc\r\n? 4 1 svc\r\nping\r\n.\r\n");
        Ok(())
    }

    #[test]
    fn writes_send_publish_and_subscriptions() -> Result<()> {
        let (mut c, peer) = scripted(b"");
        c.send(b"abc", 5, "to", Some("back"))?;
        c.send(b"", 5, "to", None)?;
        c.publish("news", Some("text/plain"), b"x")?;
        c.publish("news", None, b"")?;
        c.subscribe("a")?;
        c.unsubscribe("a")?;
        c.quit()?;
        assert_eq!(
            written(peer),
            "> 3 5 to back\r\nabc\r\n> 0 5 to\r\n! 1 news text/plain\r\nx\r\n! 0 news\r\n+ a\r\n~ a\r\n.\r\n"
        );
        Ok(())
    }

    #[test]
    fn large_bodies_round_trip() -> Result<()> {
        let big = vec![b'z'; 3 * COALESCE_BELOW + 7];
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => panic!("socketpair: {e}"),
        };
        // An echo peer: turns each `>` it reads into the same frame back.
        let peer = thread::spawn(move || -> Result<()> {
            let mut server = Client::new(Transport::Unix(theirs));
            if let Event::Message(m) = server.next_event()? {
                server.send(&m.body, m.timeout_s, &m.to, None)?;
            }
            Ok(())
        });
        let mut c = Client::new(Transport::Unix(ours));
        c.send(&big, 1, "echo", None)?;
        match c.next_event()? {
            Event::Message(m) => assert_eq!(m.body, big),
            other => panic!("expected a message, got {other:?}"),
        }
        match peer.join() {
            Ok(r) => r,
            Err(_) => panic!("peer thread panicked"),
        }
    }

    #[test]
    fn server_errors_carry_the_reason() {
        let (mut c, _peer) = scripted(b"- invalid timeout format\r\n");
        match c.ready(1, &["a"]) {
            Err(Error::Server(reason)) => assert_eq!(reason, "invalid timeout format"),
            other => panic!("expected a server error, got {other:?}"),
        }
    }

    #[test]
    fn quit_reports_a_refusal_of_an_earlier_send() {
        let (mut c, _peer) = scripted(b"- body too large\r\n");
        assert!(c.send(b"x", 1, "a", None).is_ok());
        assert!(matches!(c.quit(), Err(Error::Server(_))));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for script in [
            &b"> 3 1 a\r\nabcXY"[..],
            b"> 3 1 a\r\nab",
            b"> 3 1",
            b"nonsense\r\n",
            b"> 99999999999999999999999 1 a\r\n",
        ] {
            let (ours, mut theirs) = match UnixStream::pair() {
                Ok(pair) => pair,
                Err(e) => panic!("socketpair: {e}"),
            };
            let _ = theirs.write_all(script);
            drop(theirs);
            let mut c = Client::new(Transport::Unix(ours));
            assert!(c.ready(1, &["a"]).is_err(), "{script:?}");
        }
    }

    #[test]
    fn oversized_bodies_and_lines_are_refused() {
        let (mut c, _peer) = scripted(b"> 100 1 a\r\n");
        c.set_max_body(10);
        assert!(matches!(c.ready(1, &["a"]), Err(Error::Protocol(_))));

        // The peer stays open until the client hangs up: had it closed
        // first, the client's own write could fail (broken pipe) before it
        // ever read the long line.
        let (ours, mut theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => panic!("socketpair: {e}"),
        };
        let long = vec![b'x'; DEFAULT_MAX_LINE + 10];
        let peer = thread::spawn(move || -> std::io::Result<Vec<u8>> {
            theirs.write_all(&long)?;
            let mut seen = Vec::new();
            theirs.read_to_end(&mut seen)?;
            Ok(seen)
        });
        let mut c = Client::new(Transport::Unix(ours));
        match c.ready(1, &["a"]) {
            Err(Error::Protocol(why)) => assert!(why.contains("longer than"), "{why}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        drop(c);
        match peer.join() {
            Ok(Ok(seen)) => assert_eq!(seen, b"< 1 a\r\n"),
            Ok(Err(e)) => panic!("peer: {e}"),
            Err(_) => panic!("peer thread panicked"),
        }
    }

    #[test]
    fn invalid_arguments_send_nothing() {
        let (mut c, peer) = scripted(b"");
        assert!(matches!(
            c.send(b"x", 1, "two words", None),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(c.ready(1, &[]), Err(Error::InvalidInput(_))));
        drop(c);
        assert_eq!(written(peer), "");
    }

    #[test]
    fn sync_uses_a_fresh_zero_second_wait() -> Result<()> {
        let (mut c, peer) = scripted(b"*\r\n");
        c.sync()?;
        c.quit()?;
        let w = written(peer);
        assert!(w.starts_with("< 0 switchboard.sync."), "{w}");
        Ok(())
    }
}
