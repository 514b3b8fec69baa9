//! The listeners: every door's sockets bound from the door registry, and
//! accepting one connection from each.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};

use super::tls::TlsStream;
use super::transport::Transport;
use crate::config::Config;
use crate::door::Opener;
use crate::doors::{BindAt, DOORS};

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

pub struct Listener {
    /// Index of its door in [`DOORS`].
    pub door_ix: u8,
    pub name: &'static str,
    socket: Socket,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Every listener `config` switches on, and the opener of each door (`None`
/// for a door without listeners).
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub openers: Vec<Option<Opener>>,
}

/// Binds every door's listeners, registers them with tokens from
/// `first_token` on, and prints `listening NAME ADDRESS` for each.
pub fn bind_all(config: &Config, registry: &Registry, first_token: usize) -> io::Result<Bound> {
    let mut listeners = Vec::new();
    let mut openers = Vec::new();
    for (ix, door) in DOORS.iter().enumerate() {
        let door_ix = u8::try_from(ix).map_err(|_| io::Error::other("too many doors"))?;
        let binds = (door.binds)(config);
        openers.push((!binds.is_empty()).then(|| (door.opener)(config)));
        for b in binds {
            let socket = match &b.at {
                BindAt::Tcp(addr) => Socket::Tcp(bind_tcp(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("{} {addr}: cannot listen: {e}", b.flag))
                })?),
                BindAt::Unix(path) => Socket::Unix(bind_unix(path, b.flag)?, path.clone()),
            };
            listeners.push(Listener {
                door_ix,
                name: b.name,
                socket,
                tls: b.tls,
            });
        }
    }
    if listeners.is_empty() {
        return Err(io::Error::other("every door is off: nothing to serve"));
    }
    let mut out = io::stdout().lock();
    for (i, l) in listeners.iter_mut().enumerate() {
        let token = Token(first_token + i);
        let shown = match &mut l.socket {
            Socket::Tcp(s) => {
                registry.register(s, token, Interest::READABLE)?;
                s.local_addr()?.to_string()
            }
            Socket::Unix(s, path) => {
                registry.register(s, token, Interest::READABLE)?;
                path.display().to_string()
            }
        };
        writeln!(out, "listening {} {}", l.name, shown)?;
        log::info!("{} door listening on {}", l.name, shown);
    }
    out.flush()?;
    Ok(Bound { listeners, openers })
}

impl Listener {
    /// Accepts one connection (`WouldBlock` when none is waiting).
    pub fn accept(&self) -> io::Result<Transport> {
        match &self.socket {
            Socket::Tcp(l) => l.accept().and_then(|(s, _)| {
                let _ = s.set_nodelay(true);
                match &self.tls {
                    Some(cfg) => {
                        TlsStream::new(s, cfg.clone()).map(|t| Transport::Tls(Box::new(t)))
                    }
                    None => Ok(Transport::Tcp(s)),
                }
            }),
            Socket::Unix(l, _) => l.accept().map(|(s, _)| Transport::Unix(s)),
        }
    }

    /// True for a TLS listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Gives a TLS listener new settings (a reloaded certificate): the
    /// connections it accepts from now on handshake with them; those
    /// accepted before keep theirs. A listener without TLS stays so.
    pub fn set_tls(&mut self, config: &Arc<rustls::ServerConfig>) {
        if let Some(tls) = &mut self.tls {
            *tls = Arc::clone(config);
        }
    }

    /// Removes the socket file of a Unix listener (at shutdown).
    pub fn remove_socket_file(&self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Connections the kernel may hold for a listener before it is accepted
/// from (capped by `net.core.somaxconn`). The standard library's 128 is
/// too few: on loopback a burst of connects fills it before the loop is
/// scheduled again, and every SYN dropped then costs its client a
/// 1-second retransmission.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listening socket bound to `addr`, with [`LISTEN_BACKLOG`].
fn listen_on(
    domain: socket2::Domain,
    addr: &socket2::SockAddr,
    reuse_address: bool,
) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if reuse_address {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// A TCP listener as mio's `TcpListener::bind` makes one (address reuse),
/// with a longer backlog.
fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = listen_on(socket2::Domain::for_address(addr), &addr.into(), true)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn bind_unix(path: &Path, flag: &str) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // A stale socket from an earlier run: nobody answers on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{flag} {}: another server is listening there",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{flag} {}: exists and is not a socket", path.display()),
            ));
        }
    }
    socket2::SockAddr::unix(path)
        .and_then(|addr| listen_on(socket2::Domain::UNIX, &addr, false))
        .map(|s| UnixListener::from_std(s.into()))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{flag} {}: cannot listen: {e}", path.display()),
            )
        })
}
