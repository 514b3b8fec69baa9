//! The byte pipe under a [`Client`](super::Client): TCP, a Unix socket or
//! TLS over TCP behind one `Read + Write` type.
//!
//! Owns connecting, the TLS handshake and socket options only; framing
//! lives in `frame.rs`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::error::{Error, Result};

/// How long the TLS handshake may wait for the server before
/// [`Transport::connect_tls`] gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to one resolved address may take (an address that
/// drops packets would otherwise hold the caller for minutes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS session over a blocking TCP stream.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A connected, blocking stream to the server.
#[derive(Debug)]
pub enum Transport {
    /// The line protocol over TCP.
    Tcp(TcpStream),
    /// The line protocol over a Unix stream socket.
    #[cfg(unix)]
    Unix(UnixStream),
    /// The line protocol over TLS over TCP; the handshake is complete and
    /// the server's certificate checked.
    Tls(Box<TlsStream>),
}

/// A TLS client configuration that trusts exactly the CA certificates in
/// the PEM file `ca_file` (ring provider, TLS 1.2 and 1.3).
///
/// The error names the file and says what is wrong with it.
pub fn tls_config(ca_file: &Path) -> Result<Arc<ClientConfig>> {
    let shown = ca_file.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| Error::InvalidInput(format!("{shown}: {}", pem_problem(e))))?;
    for cert in certs {
        let cert = cert.map_err(|e| Error::InvalidInput(format!("{shown}: {}", pem_problem(e))))?;
        roots.add(cert).map_err(|e| {
            Error::InvalidInput(format!("{shown}: not a usable CA certificate: {e}"))
        })?;
    }
    if roots.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{shown}: no CERTIFICATE block found in the file"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no CERTIFICATE block found in the file".into()
        }
        other => format!("not valid PEM: {other}"),
    }
}

/// The name a server at `addr` (`HOST:PORT`) is expected to hold a
/// certificate for: its host part, without the brackets of an IPv6
/// address. `127.0.0.1:9813` gives `127.0.0.1`, `[::1]:9813` gives `::1`.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Connects to each address `addr` resolves to in turn.
fn tcp_connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
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

impl Transport {
    /// Connects over TCP to `addr` (`HOST:PORT`), trying each resolved
    /// address in turn. Nagle is switched off: the client writes whole
    /// frames and then waits for an answer.
    pub fn connect_tcp(addr: &str) -> io::Result<Self> {
        tcp_connect(addr).map(Transport::Tcp)
    }

    /// Connects to the Unix socket at `path`.
    #[cfg(unix)]
    pub fn connect_unix(path: &Path) -> io::Result<Self> {
        UnixStream::connect(path).map(Transport::Unix)
    }

    /// Connects over TCP to `addr` and completes a TLS handshake, checking
    /// that the server's certificate chains to a root of `config` and is
    /// valid for `server_name` (a DNS name or an IP address) now.
    ///
    /// A refused certificate is [`Error::Tls`]; a server that does not
    /// answer the handshake within [`HANDSHAKE_TIMEOUT`] is
    /// [`Error::Io`] of kind `WouldBlock` or `TimedOut`.
    pub fn connect_tls(addr: &str, server_name: &str, config: Arc<ClientConfig>) -> Result<Self> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            Error::InvalidInput(format!(
                "`{server_name}` is not a DNS name or an IP address (TLS server name)"
            ))
        })?;
        let conn = ClientConnection::new(config, name).map_err(Error::Tls)?;
        let sock = tcp_connect(addr)?;
        let mut tls = StreamOwned::new(conn, sock);
        tls.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    )))
                }
                Err(e) => return Err(Error::from(e)),
            }
        }
        // Anything the handshake left to send (TLS 1.2's last flight).
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut tls.sock)?;
        }
        tls.sock.set_read_timeout(None)?;
        Ok(Transport::Tls(Box::new(tls)))
    }

    /// Bounds how long one read may block; `None` blocks for ever.
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.set_read_timeout(dur),
            #[cfg(unix)]
            Transport::Unix(s) => s.set_read_timeout(dur),
            Transport::Tls(s) => s.sock.set_read_timeout(dur),
        }
    }

    /// Closes the writing half: the server reads end-of-file after what
    /// was already sent. TLS sends close_notify first.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Write),
            #[cfg(unix)]
            Transport::Unix(s) => s.shutdown(Shutdown::Write),
            Transport::Tls(s) => {
                s.conn.send_close_notify();
                s.flush()?;
                s.sock.shutdown(Shutdown::Write)
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Transport::Unix(s) => s.read(buf),
            // A server that closes without close_notify: the framing of
            // the line protocol already tells a cut frame from a whole one.
            Transport::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Transport::Unix(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            Transport::Unix(s) => s.write_vectored(bufs),
            Transport::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Transport::Unix(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:9813"), "127.0.0.1");
        assert_eq!(host_of("localhost:4444"), "localhost");
        assert_eq!(host_of("[::1]:9813"), "::1");
        assert_eq!(host_of("bus.example"), "bus.example");
    }

    #[test]
    fn ca_file_problems_name_the_file() {
        let missing = Path::new("/nonexistent/switchboard-ca.pem");
        match tls_config(missing) {
            Err(Error::InvalidInput(m)) => {
                assert!(m.starts_with("/nonexistent/switchboard-ca.pem: "), "{m}")
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }
}
