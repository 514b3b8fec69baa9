//! The byte stream under a connection: TCP, a Unix socket or TLS over TCP,
//! behind one interface, so the doors above never know which. Outbound
//! connections use the same types (TLS as a client), with
//! [`Transport::connect_result`] to learn how their connect went.

use std::io::{self, IoSlice, Read, Write};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use super::tls::TlsStream;

pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
    /// An outbound connection whose peer's name is still being resolved:
    /// no socket yet. Reads and writes would block.
    Unconnected,
}

impl Transport {
    /// Registers once, for both directions, edge-triggered; never re-registered.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let both = Interest::READABLE | Interest::WRITABLE;
        match self {
            Transport::Tcp(s) => registry.register(s, token, both),
            Transport::Unix(s) => registry.register(s, token, both),
            Transport::Tls(s) => registry.register(&mut s.sock, token, both),
            Transport::Unconnected => Ok(()),
        }
    }

    /// How a non-blocking connect went: `None` while it is still under
    /// way, then its outcome (the socket's pending error, read once).
    pub fn connect_result(&self) -> Option<io::Result<()>> {
        let sock = match self {
            Transport::Tcp(s) => s,
            Transport::Tls(s) => &s.sock,
            Transport::Unix(_) => return Some(Ok(())),
            Transport::Unconnected => return None,
        };
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Err(e)),
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Output made below the plaintext level (TLS records) but not yet
    /// written: the connection must wait for writability even with an empty
    /// output queue.
    pub fn has_pending(&self) -> bool {
        match self {
            Transport::Tls(s) => s.has_pending(),
            _ => false,
        }
    }

    /// A TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Tls(s) => s.is_handshaking(),
            _ => false,
        }
    }

    /// Writes what [`Transport::has_pending`] reports; true when all of it went.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Tls(s) => s.flush_records(),
            _ => Ok(true),
        }
    }

    /// Reads and discards what the peer has already sent (a bounded amount),
    /// so that closing does not reset the connection under the peer's feet.
    pub fn drain(&mut self) {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match self.read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// The polite end of a stream: TLS sends close_notify.
    pub fn close(&mut self) {
        if let Transport::Tls(s) = self {
            s.close();
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Transport::Tcp(s) => registry.deregister(s),
            Transport::Unix(s) => registry.deregister(s),
            Transport::Tls(s) => registry.deregister(&mut s.sock),
            Transport::Unconnected => Ok(()),
        };
    }

    /// A TCP or Unix stream socket: one read takes all it holds, up to the
    /// buffer's size, so a short read means it is empty.
    pub fn is_plain_socket(&self) -> bool {
        matches!(self, Transport::Tcp(_) | Transport::Unix(_))
    }

    /// The peer, for logs.
    pub fn peer(&self) -> String {
        match self {
            Transport::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Transport::Tls(s) => s
                .sock
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Transport::Unix(_) => "unix".into(),
            Transport::Unconnected => "unconnected".into(),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Unix(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
            Transport::Unconnected => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Unix(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
            Transport::Unconnected => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(bufs),
            Transport::Unix(s) => s.write_vectored(bufs),
            Transport::Tls(s) => s.write_vectored(bufs),
            Transport::Unconnected => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
