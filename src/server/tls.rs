//! TLS inside the loop: certificate loading at start, and a TLS stream that
//! reads and writes plaintext like any other transport.
//!
//! The stream follows rustls' own order: read TLS records until the socket
//! would block, process them, hand out plaintext; plaintext written goes into
//! rustls (bounded by its buffer limit) and the records it makes are written
//! to the socket as far as the socket takes them. Records that did not fit
//! stay in rustls, and [`TlsStream::has_pending`] tells the loop to wait for
//! writability. Handshakes progress through the same calls, so no connection
//! ever blocks another.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Plaintext and TLS bytes rustls may hold for one connection before writes
/// report `WouldBlock`.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Loads a certificate chain and its private key (PEM; both may be in one
/// file), and with `client_ca` requires every client to present a
/// certificate signed by one of the CA certificates in that file. The error
/// names the file and the problem.
pub fn load_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {}", cert.display(), pem_problem(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {}", cert.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block found in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "--tls-key {}: {}",
            key.display(),
            match e {
                rustls::pki_types::pem::Error::NoItemsFound if is_encrypted(key) =>
                    "the private key is encrypted; give an unencrypted key (for example from \
                     `openssl pkey -in KEY -out KEY.plain`)"
                        .to_string(),
                rustls::pki_types::pem::Error::NoItemsFound =>
                    "no PRIVATE KEY block found in the file (PKCS#8, PKCS#1 or SEC1 PEM expected)"
                        .to_string(),
                other => pem_problem(&other),
            }
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    builder
        .with_single_cert(certs, key_der)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {}",
                cert.display(),
                key.display(),
                match e {
                    rustls::Error::InconsistentKeys(_) =>
                        "the private key does not match the certificate".to_string(),
                    other => other.to_string(),
                }
            )
        })
}

/// A verifier that accepts only clients whose certificate chains to a CA in
/// the PEM file `ca`.
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let problem = |e: String| format!("--tls-client-ca {}: {e}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| problem(pem_problem(&e)))? {
        let cert = cert.map_err(|e| problem(pem_problem(&e)))?;
        roots
            .add(cert)
            .map_err(|e| problem(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(problem("no CERTIFICATE block found in the file".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| problem(e.to_string()))
}

/// True when the file holds a passphrase-protected key, which rustls skips.
fn is_encrypted(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|text| {
        memchr::memmem::find(&text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some()
            || memchr::memmem::find(&text, b"Proc-Type: 4,ENCRYPTED").is_some()
    })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM blocks found".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// The TLS settings of outbound connections: the CA certificates in the PEM
/// file `ca` are trusted, or else those of the system bundle (when there is
/// one). Read once at start, never in the loop.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (path, flag) = match ca {
        Some(p) => (Some(p), "--hooks-ca"),
        None => (
            SYSTEM_CA_FILES.iter().map(Path::new).find(|p| p.is_file()),
            "the system CA bundle",
        ),
    };
    if let Some(path) = path {
        let problem = |e: String| format!("{flag} {}: {e}", path.display());
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| problem(pem_problem(&e)))? {
            let cert = cert.map_err(|e| problem(pem_problem(&e)))?;
            // A bundle may hold certificates this verifier cannot use; the
            // others still count.
            let _ = roots.add(cert);
        }
        if roots.is_empty() && ca.is_some() {
            return Err(problem(
                "no usable CERTIFICATE block found in the file".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
}

/// Where Debian and its relatives keep the system's trusted CA certificates.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// A TLS connection over a TCP socket: the server side of an accepted
/// connection, or the client side of one the server opened.
pub struct TlsStream {
    pub sock: TcpStream,
    conn: Connection,
}

impl TlsStream {
    pub fn new(sock: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(TlsStream {
            sock,
            conn: conn.into(),
        })
    }

    /// The client side, checking that the server's certificate is valid for
    /// `name` (a DNS name or an IP address).
    pub fn client(sock: TcpStream, config: Arc<ClientConfig>, name: &str) -> io::Result<TlsStream> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid TLS server name"),
            )
        })?;
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(TlsStream {
            sock,
            conn: conn.into(),
        })
    }

    /// The handshake has not finished yet.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// TLS records made but not yet written to the socket.
    pub fn has_pending(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes queued TLS records until done or the socket would block.
    /// Returns true when nothing is left.
    pub fn flush_records(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues close_notify and writes what the socket takes.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush_records();
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // A last write so the peer sees the alert.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages and alerts go out as they are made.
            self.flush_records()?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush_records()?;
        let n = self.conn.writer().write_vectored(bufs)?;
        self.flush_records()?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records().map(|_| ())
    }
}
