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
