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
    /// Another server: NATS (`SUB`/`PUB`), default port 4222.
    Nats,
    /// Another server: Redis pub/sub (`SUBSCRIBE`/`PUBLISH`), default port 6379.
    Redis,
    /// Another server: an MQTT 3.1.1 broker at QoS 0, default port 1883.
    Mqtt,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Line => "line",
            Proto::Http => "http",
            Proto::Sse => "sse",
            Proto::Ws => "ws",
            Proto::Nats => "nats",
            Proto::Redis => "redis",
            Proto::Mqtt => "mqtt",
        }
    }

    /// A protocol of another server (not one of switchboard's doors).
    pub fn is_peer(self) -> bool {
        matches!(self, Proto::Nats | Proto::Redis | Proto::Mqtt)
    }

    /// Channels travel in a line or a length-prefixed field with no room
    /// for spaces or line breaks.
    pub fn needs_plain_channel(self) -> bool {
        matches!(self, Proto::Line | Proto::Nats | Proto::Redis | Proto::Mqtt)
    }
}

/// Flags that say where and how to connect.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Server address: HOST:PORT, HOST alone (the port from --port or the
    /// door's default), or PORT / :PORT alone (127.0.0.1)
    #[arg(
        short = 'a',
        long = "address",
        short_alias = 'l',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1"
    )]
    pub address: String,

    /// Server port, when --address has none [default: 9813 for line, 8888
    /// for http, sse and ws, 4444 for those with --tls; 4222 nats, 6379
    /// redis, 1883 mqtt]
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// Protocol: the line protocol, or the HTTP bus as multipart (http),
    /// Server-Sent Events (sse) or WebSocket (ws); or, to load the servers
    /// switchboard is compared with, NATS, Redis pub/sub or MQTT 3.1.1
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

    /// HTTP, SSE, WebSocket: the request path is PREFIX followed by the
    /// channel (`/sub/` for an nginx + nchan location `/sub/CHANNEL`)
    #[arg(long = "http-path", value_name = "PREFIX", default_value = "/msgbus/")]
    pub http_path: String,
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
    /// What comes before the channel in an HTTP request path.
    pub http_path: String,
}

impl Target {
    /// The HTTP request path of `channel`.
    pub fn path_of(&self, channel: &str) -> String {
        format!("{}{channel}", self.http_path)
    }
}

impl TargetArgs {
    pub fn default_port(&self) -> u16 {
        match (self.proto, self.tls) {
            (Proto::Line, _) => 9813,
            (Proto::Nats, _) => 4222,
            (Proto::Redis, _) => 6379,
            (Proto::Mqtt, _) => 1883,
            (Proto::Http | Proto::Sse | Proto::Ws, false) => 8888,
            (Proto::Http | Proto::Sse | Proto::Ws, true) => 4444,
        }
    }

    /// The host and the port of --address (with --port, or the door's
    /// default port, when it has none).
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let a = self.address.as_str();
        let bad = || {
            format!(
                "--address {a}: give HOST:PORT (127.0.0.1:9813, localhost:9813, [::1]:9813), \
                 HOST, or PORT"
            )
        };
        let port_only = a.strip_prefix(':').unwrap_or(a);
        if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
            let port = port_only.parse().map_err(|_| bad())?;
            return Ok(("127.0.0.1".into(), port));
        }
        let fallback = self.port.unwrap_or_else(|| self.default_port());
        if let Some(rest) = a.strip_prefix('[') {
            // [v6] or [v6]:PORT
            let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
            return match tail {
                "" => Ok((host.to_string(), fallback)),
                _ => {
                    let port = tail.strip_prefix(':').ok_or_else(bad)?;
                    Ok((host.to_string(), port.parse().map_err(|_| bad())?))
                }
            };
        }
        match a.split_once(':') {
            None if !a.is_empty() => Ok((a.to_string(), fallback)),
            Some((host, port)) if !host.is_empty() && !port.contains(':') => {
                Ok((host.to_string(), port.parse().map_err(|_| bad())?))
            }
            // A bare IPv6 address.
            Some(_) if a.parse::<std::net::Ipv6Addr>().is_ok() => Ok((a.to_string(), fallback)),
            _ => Err(bad()),
        }
    }

    pub fn resolve(&self) -> Result<Target, String> {
        let (host_name, port) = self.host_port()?;
        let addr = (host_name.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("--address {}: {e}", self.address))?
            .next()
            .ok_or_else(|| format!("--address {}: no address", self.address))?;
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
        let host = if host_name.contains(':') {
            format!("[{host_name}]:{port}")
        } else {
            format!("{host_name}:{port}")
        };
        if !self.http_path.starts_with('/')
            || self.http_path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(format!(
                "--http-path {}: must start with / and hold no spaces or control characters",
                self.http_path
            ));
        }
        Ok(Target {
            proto: self.proto,
            addr,
            host,
            tls,
            auth,
            http_path: self.http_path.clone(),
        })
    }
}

/// Most channels `--channels` may name.
pub const MAX_CHANNELS: usize = 100_000;

/// The name of channel `k` of `count`: the channel itself when there is
/// one, `CHANNEL.k` when there are several (`--channels`).
pub fn channel_name(base: &str, k: usize, count: usize) -> String {
    if count <= 1 {
        base.to_string()
    } else {
        format!("{base}.{k}")
    }
}

/// The names of all `count` channels.
pub fn channel_names(base: &str, count: usize) -> Vec<String> {
    (0..count.max(1))
        .map(|k| channel_name(base, k, count))
        .collect()
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

/// `-n` meant the number of connections in the flood tools and a message
/// count in switchboard-cli; it is gone from the flood tools, and an old
/// command line that still has it is refused with what to write instead.
pub fn refuse_old_short_flags(tool: &str) {
    for arg in std::env::args().skip(1) {
        if arg == "--" {
            return;
        }
        if arg == "-n" || (arg.starts_with("-n") && arg.len() > 2) {
            die(
                tool,
                "-n is gone: write --connections N for the number of connections \
                 (--count N is the number of messages)",
            );
        }
    }
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

    fn target(address: &str, port: Option<u16>) -> TargetArgs {
        TargetArgs {
            address: address.into(),
            port,
            proto: Proto::Line,
            tls: false,
            ca: None,
            server_name: "localhost".into(),
            insecure: false,
            secret: None,
            user: None,
            http_path: "/msgbus/".into(),
        }
    }

    #[test]
    fn address_forms() {
        let hp = |a: &str, p: Option<u16>| target(a, p).host_port();
        let at = |h: &str, p: u16| Ok((h.to_string(), p));
        assert_eq!(hp("127.0.0.1:9000", None), at("127.0.0.1", 9000));
        assert_eq!(hp("localhost:9000", Some(1)), at("localhost", 9000));
        assert_eq!(hp("127.0.0.1", None), at("127.0.0.1", 9813));
        assert_eq!(hp("127.0.0.1", Some(7)), at("127.0.0.1", 7));
        assert_eq!(hp("9000", None), at("127.0.0.1", 9000));
        assert_eq!(hp(":9000", None), at("127.0.0.1", 9000));
        assert_eq!(hp("[::1]:9000", None), at("::1", 9000));
        assert_eq!(hp("[::1]", None), at("::1", 9813));
        assert_eq!(hp("::1", None), at("::1", 9813));
        for bad in ["", "a:b", "host:", "[::1", "[::1]x", "99999"] {
            assert!(hp(bad, None).is_err(), "{bad}");
        }
        let t = target("[::1]:9000", None).resolve().unwrap();
        assert_eq!(t.host, "[::1]:9000");
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn channels() {
        assert_eq!(channel_names("f", 1), vec!["f".to_string()]);
        assert_eq!(channel_names("f", 3), vec!["f.0", "f.1", "f.2"]);
        assert!(check_channel("flood").is_ok());
        assert!(check_channel("a b").is_err());
        assert!(check_channel("").is_err());
    }
}
