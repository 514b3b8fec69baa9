//! Outbound connections: the shell's half of a [`Dial`].
//!
//! The broker asks for connections ([`LinkRequest::Dial`]) and for their end
//! ([`LinkRequest::HangUp`]); the shell takes those requests once per turn.
//! A dialed connection is a [`Conn`] like any other from the start: it gets
//! its slot, its generation and its door (made by the dial door's opener in
//! [`crate::doors::DIALS`]) at once, in [`Life::Connecting`] with no
//! socket, and it is closed with [`CloseReason::ConnectFailed`] if it never
//! gets one. Nothing here blocks:
//!
//! - a host name is looked up on the resolver's helper threads
//!   ([`super::resolve`]); the answer comes back through the loop's waker;
//! - the connect is mio's non-blocking one; its outcome is read from the
//!   socket (`SO_ERROR`, then the peer address) on its first event;
//! - one deadline covers the lookup and the connect; a TLS handshake then
//!   falls under the request timeout, as an accepted connection's does.
//!
//! The socket is registered once, as soon as it exists, like an accepted
//! one. From its connect on, the connection is read, written, timed and
//! closed by the same code as every other; its door hears of the outcome
//! through [`Door::on_connect`]. Outbound connections have their own cap
//! (`Limits::max_outbound`) and do not count against `--max-connections`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mio::{Token, Waker};

use super::{Deadline, Server};
use crate::broker::{ConnId, Dial, LinkRequest};
use crate::config::Config;
use crate::door::{CloseReason, DialOpener};
use crate::doors::{DIALS, DOORS};
use crate::server::conn::{Conn, Life};
use crate::server::resolve::Resolver;
use crate::server::tls::TlsStream;
use crate::server::transport::Transport;

/// The loop's waker: other threads (the name lookups, the store's writer)
/// wake `poll` with it.
pub(super) const WAKER: Token = Token(usize::MAX - 2);

/// What the shell keeps for outbound connections.
pub(super) struct Outbound {
    waker: Arc<Waker>,
    /// Started on the first lookup.
    resolver: Option<Resolver>,
    /// The opener of each dial door, in the order of [`DIALS`].
    openers: Vec<DialOpener>,
    /// TLS settings for `https` peers.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The TLS server name (or `None`: plain TCP) of each connection not
    /// yet connecting, until its socket is made.
    names: HashMap<ConnId, Option<String>>,
    /// The address each connecting socket is connecting to (a socket that
    /// is not connected has no peer address): for the failure's message.
    dialing: HashMap<ConnId, SocketAddr>,
}

impl Outbound {
    /// The loop's waker, for another helper thread.
    pub(super) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub(super) fn new(config: &Config, registry: &mio::Registry) -> io::Result<Outbound> {
        Ok(Outbound {
            waker: Arc::new(Waker::new(registry, WAKER)?),
            resolver: None,
            openers: DIALS.iter().map(|d| (d.opener)(config)).collect(),
            tls: config.client_tls.clone(),
            names: HashMap::new(),
            dialing: HashMap::new(),
        })
    }
}

/// Every door name the stats count open connections for: the listening
/// doors, then the dial doors (a dialed connection's `door_ix` is
/// `DOORS.len()` plus its row in [`DIALS`]).
pub(super) fn door_names() -> Vec<&'static str> {
    DOORS
        .iter()
        .map(|d| d.name)
        .chain(DIALS.iter().map(|d| d.name))
        .collect()
}

/// An IP literal (`[::1]` as well as `::1`) as an address.
fn literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

impl Server {
    /// Open outbound connections.
    pub(super) fn outbound_open(&self) -> usize {
        self.stats
            .open
            .get(DOORS.len()..)
            .map_or(0, |o| o.iter().sum::<u64>() as usize)
    }

    /// Accepted connections open (what `--max-connections` caps).
    pub(super) fn inbound_open(&self) -> usize {
        self.conns.len().saturating_sub(self.outbound_open())
    }

    /// Carries out what the broker asked about outbound connections. True
    /// when there was anything (it may have dirtied or closed connections).
    pub(super) fn run_link_requests(&mut self) -> bool {
        let requests = self.broker.take_links();
        if requests.is_empty() {
            return false;
        }
        for request in requests {
            match request {
                LinkRequest::Dial(dial) => self.dial(dial),
                LinkRequest::HangUp { conn, timed_out } => {
                    let reason = if timed_out {
                        CloseReason::ResponseTimeout
                    } else {
                        CloseReason::Quit
                    };
                    if self.conn_of(conn).is_some() {
                        self.mark_close(conn.key as usize, reason);
                    }
                }
            }
        }
        true
    }

    /// Makes the connection of `dial` and starts its lookup or connect.
    fn dial(&mut self, dial: Dial) {
        let Some(ix) = DIALS.iter().position(|d| d.name == dial.door) else {
            log::error!("dial: no dial door called {}", dial.door);
            return;
        };
        let Some(opener) = self.outbound.openers.get(ix) else {
            return;
        };
        let Ok(door_ix) = u8::try_from(DOORS.len() + ix) else {
            return;
        };
        // Connections closed while connecting (a hang-up, the shutdown)
        // leave their address behind: dropped here, so the map holds no
        // more than the connections connecting.
        let conns = &self.conns;
        self.outbound
            .dialing
            .retain(|id, _| conns.get(id.key as usize).is_some_and(|c| c.id == *id));
        let door = opener(dial.tag);
        self.next_gen = self.next_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = ConnId {
            key: key as u32,
            gen: self.next_gen,
        };
        entry.insert(Conn::new(
            id,
            Transport::Unconnected,
            door,
            door_ix,
            Life::Connecting,
            false,
        ));
        if let Some(n) = self.stats.open.get_mut(usize::from(door_ix)) {
            *n += 1;
        }
        if let Some(d) = self.stats.door_mut(door_ix) {
            d.accepted += 1;
        }
        let now = self.now();
        self.timers
            .add(now + dial.timeout_ms, Deadline::Connect(id));
        log::debug!(
            "conn {key}: {} door, dialing {}:{}{}",
            dial.door,
            dial.host,
            dial.port,
            if dial.tls { " (TLS)" } else { "" }
        );
        if self.outbound_open() > self.limits.max_outbound {
            let e = io::Error::other(format!(
                "{} outbound connections are open already (the limit)",
                self.limits.max_outbound
            ));
            self.connect_failed(key, e);
            return;
        }
        if self.shutting_down {
            self.connect_failed(key, io::Error::other("the server is shutting down"));
            return;
        }
        let server_name = dial.tls.then(|| dial.host.clone());
        self.outbound.names.insert(id, server_name);
        match literal(&dial.host) {
            Some(ip) => self.connect_to(key, SocketAddr::new(ip, dial.port)),
            None => {
                let waker = Arc::clone(&self.outbound.waker);
                let resolver = self
                    .outbound
                    .resolver
                    .get_or_insert_with(|| Resolver::new(waker));
                if let Err(e) = resolver.lookup(id, &dial.host, dial.port) {
                    self.connect_failed(key, e);
                }
            }
        }
    }

    /// The waker rang: name lookups have answered.
    pub(super) fn on_wake(&mut self) {
        let Some(resolver) = self.outbound.resolver.as_mut() else {
            return;
        };
        for answer in resolver.answers() {
            let key = answer.conn.key as usize;
            let waiting = self.conn_of(answer.conn).is_some_and(|c| {
                c.life == Life::Connecting && matches!(c.transport, Transport::Unconnected)
            });
            if !waiting {
                continue;
            }
            match answer.result {
                Ok(addr) => self.connect_to(key, addr),
                Err(e) => self.connect_failed(key, e),
            }
        }
    }

    /// Starts the non-blocking connect of connection `key` to `addr` and
    /// registers its socket.
    fn connect_to(&mut self, key: usize, addr: SocketAddr) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let server_name = self.outbound.names.remove(&c.id).flatten();
        let made = mio::net::TcpStream::connect(addr).and_then(|sock| {
            let _ = sock.set_nodelay(true);
            match server_name {
                None => Ok(Transport::Tcp(sock)),
                Some(name) => {
                    let config = self.outbound.tls.clone().ok_or_else(|| {
                        io::Error::other("TLS is not set up for outbound connections")
                    })?;
                    TlsStream::client(sock, config, &name).map(|t| Transport::Tls(Box::new(t)))
                }
            }
        });
        let mut transport = match made {
            Ok(t) => t,
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("connect {addr}: {e}"));
                return self.connect_failed(key, e);
            }
        };
        if let Err(e) = transport.register(self.poll.registry(), Token(key)) {
            return self.connect_failed(key, e);
        }
        self.outbound.dialing.insert(c.id, addr);
        c.transport = transport;
    }

    /// An event on a connecting connection: the connect has finished, or
    /// the event was early and it goes on.
    pub(super) fn on_connect_event(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Some(result) = c.transport.connect_result() else {
            return;
        };
        let addr = self.outbound.dialing.remove(&c.id);
        if let Err(e) = result {
            let to = addr.map_or_else(|| c.transport.peer(), |a| a.to_string());
            let e = io::Error::new(e.kind(), format!("connect {to}: {e}"));
            return self.connect_failed(key, e);
        }
        c.life = Life::Open;
        c.readable = true;
        c.writable = true;
        log::debug!("conn {key}: connected to {}", c.transport.peer());
        let Some((next, _)) = self.with_door(key, |door, cx| door.on_connect(cx, Ok(()))) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(key) {
            // Output queued while connecting, and a TLS client's hello.
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
        if self.after_input(key, next) {
            self.on_readable(key, false);
        }
        let now = self.now();
        self.note_progress(key, now, false);
    }

    /// The deadline of a dial: a connection still connecting fails.
    pub(super) fn check_connect(&mut self, id: ConnId) {
        let connecting = self.conn_of(id).is_some_and(|c| c.life == Life::Connecting);
        if connecting {
            let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            self.connect_failed(id.key as usize, e);
        }
    }

    /// Tells the door its connect failed, and closes the connection.
    fn connect_failed(&mut self, key: usize, e: io::Error) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let id = c.id;
        self.outbound.names.remove(&id);
        self.outbound.dialing.remove(&id);
        log::debug!("conn {key}: {e}");
        self.with_door(key, |door, cx| door.on_connect(cx, Err(&e)));
        self.mark_close(key, CloseReason::ConnectFailed);
    }
}

/// Whether the cluster's Redis answers at start (`--cluster` without
/// `--cluster-optional`): a blocking connect, the TLS handshake with `tls`
/// (`rediss://`, the outbound client settings), `AUTH` (with credentials)
/// and `PING`, each within `timeout`: what the links will do, so that a
/// password or certificate Redis refuses stops the start. Run before the
/// loop starts. The message never holds the password.
pub fn check_redis(
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: Option<&crate::broker::cluster::url::Auth>,
    timeout: Duration,
) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                return match &tls {
                    None => hello_redis(s, addr, auth),
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(host.to_string())
                            .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
                        let conn = rustls::ClientConnection::new(config.clone(), name)
                            .map_err(|e| format!("{addr}: TLS: {e}"))?;
                        hello_redis(rustls::StreamOwned::new(conn, s), addr, auth)
                            .map_err(|e| format!("over TLS: {e}"))
                    }
                };
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// `AUTH` (with credentials) and `PING` on a connection to Redis, as a
/// link's first commands; `Ok` at `PONG`.
fn hello_redis<S: io::Read + io::Write>(
    mut s: S,
    addr: SocketAddr,
    auth: Option<&crate::broker::cluster::url::Auth>,
) -> Result<(), String> {
    if let Some(a) = auth {
        let mut command = bytes::BytesMut::new();
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(a.user.as_deref().map(str::as_bytes));
        args.push(a.password.as_bytes());
        crate::broker::cluster::resp::command(&mut command, &args);
        s.write_all(&command).map_err(|e| format!("{addr}: {e}"))?;
        let answer = answer_line(&mut s, addr, "AUTH")?;
        if !answer.starts_with("+OK") {
            return Err(format!(
                "{addr} refused the user and password of the URL: {}",
                answer.trim_start_matches('-')
            ));
        }
    }
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let answer = answer_line(&mut s, addr, "PING")?;
    if answer.starts_with("+PONG") {
        Ok(())
    } else if answer.starts_with("-NOAUTH") {
        Err(format!(
            "{addr} wants a password: give it in the URL, redis://:PASSWORD@HOST:PORT"
        ))
    } else {
        Err(format!("{addr} answered PING with {answer:?}"))
    }
}

/// The first line of an answer (without its CRLF), read a byte at a time
/// so that nothing after it is taken; at most 256 bytes.
fn answer_line(s: &mut impl io::Read, addr: SocketAddr, command: &str) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && line.len() < 256 {
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "{addr} closed the connection without answering {command}"
                ))
            }
            Ok(_) => line.extend_from_slice(&byte),
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(literal("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(literal("[::1]"), "::1".parse().ok());
        assert_eq!(literal("::1"), "::1".parse().ok());
        assert_eq!(literal("localhost"), None);
        assert_eq!(literal("[localhost]"), None);
    }

    #[test]
    fn dial_doors_follow_listening_doors() {
        let names = door_names();
        assert_eq!(names.len(), DOORS.len() + DIALS.len());
        for (i, d) in DIALS.iter().enumerate() {
            assert_eq!(names.get(DOORS.len() + i), Some(&d.name));
        }
    }

    #[test]
    fn an_answer_line_ends_at_its_crlf_or_at_256_bytes() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 6379));
        let mut s = io::Cursor::new(b"+PONG\r\n+OK\r\n".to_vec());
        assert_eq!(answer_line(&mut s, addr, "PING").unwrap(), "+PONG");
        // Nothing after the line was taken.
        assert_eq!(s.position(), 7);
        let mut long = io::Cursor::new(vec![b'x'; 300]);
        assert_eq!(
            answer_line(&mut long, addr, "PING").unwrap(),
            "x".repeat(256)
        );
        let mut cut = io::Cursor::new(b"+PON".to_vec());
        assert_eq!(
            answer_line(&mut cut, addr, "PING").unwrap_err(),
            "127.0.0.1:6379 closed the connection without answering PING"
        );
    }
}
