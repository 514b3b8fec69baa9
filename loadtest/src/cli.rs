//! Command-line pieces both tools share: where the server is, which door,
//! TLS and credentials. Turned into a `Target` once at start; errors here
//! end the program with a message (exit status 2).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::net::TlsSetup;

/// The door to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// The line protocol (`+ CHANNEL`, `! LEN CHANNEL TYPE`), default port 9813.
    Line,
    /// The HTTP bus (`GET`/`POST /msgbus/CHANNEL`), default port 8888 (4444 with --tls).
    Http,
    /// The HTTP bus' Server-Sent Events (subscribers only; publish with http).
    Sse,
    /// WebSocket on the HTTP bus (subscribe, and publish on its own connections).
    Ws,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Line => "line",
            Proto::Http => "http",
            Proto::Sse => "sse",
            Proto::Ws => "ws",
        }
    }
}

/// Flags that say where and how to connect.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Server address (name or IP)
    #[arg(
        short = 'l',
        long = "address",
        value_name = "ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub address: String,

    /// Server port [default: 9813 for line, 8888 for http, sse and ws, 4444 for those with --tls]
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// Protocol: the line protocol, or the HTTP bus as multipart (http),
    /// Server-Sent Events (sse) or WebSocket (ws)
    #[arg(long = "proto", value_enum, default_value = "http")]
    pub proto: Proto,

    /// Use TLS (needs --ca FILE or --insecure)
    #[arg(short = 's', long = "tls")]
    pub tls: bool,

    /// PEM file with the CA certificate(s) to trust for --tls
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Name to verify the server's certificate against (and to send as SNI)
    #[arg(long = "server-name", value_name = "NAME", default_value = "localhost")]
    pub server_name: String,

    /// With --tls: accept any server certificate (for self-signed test servers)
    #[arg(long = "insecure")]
    pub insecure: bool,

    /// HTTP: shared secret of a server started with --secret (sent as Basic auth)
    #[arg(long = "secret", value_name = "S")]
    pub secret: Option<String>,

    /// HTTP: user name for Basic auth (with --secret) [default: $USER]
    #[arg(long = "user", value_name = "NAME")]
    pub user: Option<String>,
}

/// A resolved target.
#[derive(Clone)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub host: String,
    pub tls: Option<TlsSetup>,
    /// `Authorization:` header value.
    pub auth: Option<String>,
}

impl TargetArgs {
    pub fn default_port(&self) -> u16 {
        match (self.proto, self.tls) {
            (Proto::Line, _) => 9813,
            (Proto::Http | Proto::Sse | Proto::Ws, false) => 8888,
            (Proto::Http | Proto::Sse | Proto::Ws, true) => 4444,
        }
    }

    pub fn resolve(&self) -> Result<Target, String> {
        let port = self.port.unwrap_or_else(|| self.default_port());
        let addr = (self.address.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("-l {}: {e}", self.address))?
            .next()
            .ok_or_else(|| format!("-l {}: no address", self.address))?;
        let tls = if self.tls {
            Some(crate::tls::setup(
                self.ca.as_deref(),
                self.insecure,
                &self.server_name,
            )?)
        } else {
            None
        };
        let auth = self.secret.as_ref().map(|secret| {
            let user = self
                .user
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_default();
            crate::http::basic_auth(&user, secret)
        });
        let host = if addr.is_ipv6() {
            format!("[{}]:{}", addr.ip(), port)
        } else {
            format!("{}:{}", self.address, port)
        };
        Ok(Target {
            proto: self.proto,
            addr,
            host,
            tls,
            auth,
        })
    }
}

/// Parses seconds, fractions allowed (`--duration 2.5`).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&v) || !v.is_finite() {
        return Err(format!("`{s}`: seconds must be between 0 and 1e9"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checks a channel name for the line protocol (no spaces or line breaks).
pub fn check_channel(ch: &str) -> Result<(), String> {
    if ch.is_empty() || ch.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "channel `{ch}`: must be non-empty, without spaces or control characters"
        ));
    }
    Ok(())
}

/// Prints an argument error and exits with status 2 (as clap does).
pub fn die(tool: &str, msg: &str) -> ! {
    eprintln!("{tool}: {msg}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs() {
        assert_eq!(parse_secs("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("x").is_err());
    }

    #[test]
    fn channels() {
        assert!(check_channel("flood").is_ok());
        assert!(check_channel("a b").is_err());
        assert!(check_channel("").is_err());
    }
}
