//! The byte pipe under a [`Client`](super::Client): TCP or a Unix socket
//! behind one `Read + Write` type.
//!
//! Owns connecting and socket options only; framing lives in `frame.rs`.
//! A TLS variant belongs here as one more arm, wrapping a TCP stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
#[cfg(unix)]
use std::path::Path;
use std::time::Duration;

/// A connected, blocking stream to the server.
#[derive(Debug)]
pub enum Transport {
    /// The line protocol over TCP.
    Tcp(TcpStream),
    /// The line protocol over a Unix stream socket.
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Transport {
    /// Connects over TCP to `addr` (`HOST:PORT`), trying each resolved
    /// address in turn. Nagle is switched off: the client writes whole
    /// frames and then waits for an answer.
    pub fn connect_tcp(addr: &str) -> io::Result<Self> {
        let mut last = None;
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect(sa) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Transport::Tcp(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} does not resolve to any address"),
            )
        }))
    }

    /// Connects to the Unix socket at `path`.
    #[cfg(unix)]
    pub fn connect_unix(path: &Path) -> io::Result<Self> {
        UnixStream::connect(path).map(Transport::Unix)
    }

    /// Bounds how long one read may block; `None` blocks for ever.
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.set_read_timeout(dur),
            #[cfg(unix)]
            Transport::Unix(s) => s.set_read_timeout(dur),
        }
    }

    /// Closes the writing half: the server reads end-of-file after what
    /// was already sent.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Write),
            #[cfg(unix)]
            Transport::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Transport::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Transport::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            Transport::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Transport::Unix(s) => s.flush(),
        }
    }
}
