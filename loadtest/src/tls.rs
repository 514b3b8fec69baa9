//! TLS client configuration for `-s` / `--tls`: which CA to trust (`--ca`
//! PEM file), or no verification at all (`--insecure`, for self-signed test
//! servers). Uses rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::net::TlsSetup;

/// Builds the client side: trusts the certificates in `ca` (PEM), or any
/// certificate with `insecure`. One of the two is required.
pub fn setup(ca: Option<&Path>, insecure: bool, server_name: &str) -> Result<TlsSetup, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match (ca, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        (Some(path), false) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--ca {}: no certificate in the file",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, false) => {
            return Err(
                "--tls needs --ca FILE (a PEM CA certificate to trust) or --insecure".into(),
            )
        }
    };
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("--server-name {server_name}: {e}"))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
    })
}

/// Accepts every server certificate (but still checks handshake signatures).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! The TLS client against a small in-test HTTPS server that speaks just
    //! enough of the HTTP bus: one subscription, then stamped parts.

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use crate::cli::Proto;
    use crate::stamp::{Body, Stamp};
    use crate::subscriber::{self, SubOptions};

    const MESSAGES: u64 = 50;

    /// Serves one connection: reads the request head, answers with a
    /// multipart stream of `MESSAGES` stamped parts, then waits for close.
    fn serve_once(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
        let Ok((sock, _)) = listener.accept() else {
            return;
        };
        let Ok(conn) = rustls::ServerConnection::new(config) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        assert!(req.starts_with(b"GET /msgbus/tls HTTP/1.1\r\n"));
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
            Transfer-Encoding: chunked\r\n\r\nd\r\n--00MsgBus00\n\r\n"
                .to_vec();
        let mut body = Body::padded(60);
        for seq in 0..MESSAGES {
            let mut part = b"Content-Type: text/plain\n\n".to_vec();
            part.extend_from_slice(body.stamp(Stamp {
                sent_ns: crate::clock::now_ns(),
                publisher: 7,
                seq,
            }));
            part.extend_from_slice(b"--00MsgBus00\n");
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(&part);
            out.extend_from_slice(b"\r\n");
        }
        if tls.write_all(&out).and_then(|_| tls.flush()).is_err() {
            return;
        }
        // Hold the stream open until the client goes.
        while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn run_against(server_name: &str) -> crate::report::SubTotals {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir =
            std::env::temp_dir().join(format!("loadtest-tls-{}-{server_name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, key.cert.pem()).unwrap();

        let server_config = server_config(&key);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || serve_once(listener, Arc::new(server_config)));

        let opts = SubOptions {
            proto: Proto::Http,
            addr,
            host: addr.to_string(),
            channel: "tls".into(),
            channels: 1,
            http_path: "/msgbus/".into(),
            range: 0..1,
            count: Some(MESSAGES),
            duration: None,
            idle_timeout: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(20)),
            setup_timeout: Duration::from_secs(10),
            sources: 0,
            http10: false,
            auth: None,
            expect_type: Some("text/plain".into()),
            tls: Some(super::setup(Some(&ca), false, server_name).unwrap()),
            concurrency: 1,
            interval: Duration::from_secs(60),
        };
        let totals = subscriber::run(&opts, &mut |_| {}).unwrap();
        drop(opts);
        let _ = server.join();
        let _ = std::fs::remove_dir_all(&dir);
        totals
    }

    /// A test server's TLS settings for the self-signed `key`.
    fn server_config(key: &rcgen::CertifiedKey) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair.serialize_der())),
            )
            .unwrap()
    }

    #[test]
    fn subscriber_over_tls() {
        let t = run_against("localhost");
        assert_eq!(t.errors, 0, "{:?}", t.first_error);
        assert_eq!(t.received, MESSAGES);
        assert_eq!(t.lost, 0);
        assert_eq!(t.duplicated, 0);
        assert_eq!(t.bad, 0);
    }

    #[test]
    fn wrong_server_name_is_refused() {
        let t = run_against("not-localhost.example");
        assert_eq!(t.errors, 1);
        assert_eq!(t.received, 0);
        let e = t.first_error.unwrap_or_default();
        assert!(e.contains("TLS"), "{e}");
    }

    /// Serves one publisher: answers `204` to every complete POST.
    fn answer_posts(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> u64 {
        let Ok((sock, _)) = listener.accept() else {
            return 0;
        };
        let Ok(conn) = rustls::ServerConnection::new(config) else {
            return 0;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = 0;
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return answered,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if pending.len() < end + 4 + len {
                    break;
                }
                pending.drain(..end + 4 + len);
                answered += 1;
                if tls
                    .write_all(b"HTTP/1.1 204 OK\r\nServer: test\r\n\r\n")
                    .is_err()
                {
                    return answered;
                }
            }
        }
    }

    #[test]
    fn publisher_over_tls() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let server_config = server_config(&key);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || answer_posts(listener, Arc::new(server_config)));
        let opts = crate::publisher::PubOptions {
            proto: Proto::Http,
            addr,
            host: addr.to_string(),
            channel: "tls".into(),
            channels: 1,
            http_path: "/msgbus/".into(),
            ctype: "text/plain".into(),
            body: Body::padded(100),
            connections: 1,
            count: Some(500),
            duration: None,
            rate: None,
            pipeline: 16,
            auth: None,
            tls: Some(super::setup(None, true, "localhost").unwrap()),
            sources: 0,
            interval: Duration::from_secs(60),
            setup_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(10),
        };
        let t = crate::publisher::run(&opts, &mut |_| {}).unwrap();
        assert_eq!(t.errors, 0, "{:?}", t.first_error);
        assert_eq!(t.sent, 500);
        assert_eq!(t.confirmed, 500);
        drop(opts);
        // The publisher is gone once `run` returns: the server sees the close.
        assert_eq!(server.join().unwrap(), 500);
    }

    #[test]
    fn setup_needs_a_trust_decision() {
        assert!(super::setup(None, false, "localhost").is_err());
        assert!(super::setup(None, true, "localhost").is_ok());
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        assert!(super::setup(Some(missing), false, "localhost").is_err());
    }
}
