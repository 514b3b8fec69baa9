//! Every flag of the server, its default and its validation.
//!
//! The rest of the server reads a [`Config`] and never the command line. Limits
//! live together in [`Limits`] so that each is one named, documented value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};

use crate::broker::hooks::{Secret, Settings as HookSettings};
pub use crate::store::Fsync;
use crate::store::Sizes as StoreSizes;

/// The msglite proxy door's defaults (the door uses them too).
pub mod proxy_defaults {
    /// The queue requests go to when no route matches (msglite's).
    pub const DEFAULT_QUEUE: &str = "msglite.httpRequests";

    /// Seconds to wait for a handler's head, and for each body message (msglite's).
    pub const DEFAULT_TIMEOUT_S: u64 = 180;

    /// Requests waiting for a handler's head at once, by default.
    pub const DEFAULT_MAX_PENDING: usize = 10_000;
}

/// A byte count for `--segment-bytes` or `--compact-min-bytes`: at least
/// 1 MiB, and at most `max` (1 GiB for a segment) when there is one.
fn parse_store_size(s: &str, max: Option<u64>) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (a whole number)"))?;
    let min = crate::store::MIN_SIZE;
    if n < min {
        return Err(format!("at least {min} (1 MiB)"));
    }
    if let Some(max) = max.filter(|&max| n > max) {
        return Err(format!("at most {max} (1 GiB)"));
    }
    Ok(n)
}

fn parse_segment_bytes(s: &str) -> Result<u64, String> {
    parse_store_size(s, Some(crate::store::MAX_SEGMENT))
}

fn parse_compact_min_bytes(s: &str) -> Result<u64, String> {
    parse_store_size(s, None)
}

/// A listen address that may be switched off with `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

/// A listen address: `HOST:PORT` (an IP address or a host name, resolved
/// once at start; the first address it resolves to is bound), `[::1]:PORT`,
/// `:PORT` or `PORT` alone (both meaning loopback, 127.0.0.1, as every
/// default does), or `off`.
fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(Listen::Off);
    }
    let bad = || {
        format!(
            "`{s}` is not a listen address: give HOST:PORT (127.0.0.1:9813, \
             localhost:9813, [::1]:9813), :PORT or PORT (loopback), or `off`"
        )
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Listen::At(addr));
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only.parse().map_err(|_| bad())?;
        return Ok(Listen::At(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(':') || host.bytes().any(|b| b <= b' ') {
        return Err(bad());
    }
    let mut found = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve {host}: {e}"))?;
    found
        .next()
        .map(Listen::At)
        .ok_or_else(|| format!("`{s}`: {host} resolves to no address"))
}

/// What happens to a subscriber whose unsent bytes pass the backlog limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SlowPolicy {
    /// Drop further messages for it, and count them.
    Drop,
    /// Close its connection.
    Disconnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// How log lines are written (on stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL [TARGET] MESSAGE`, for people.
    Text,
    /// One JSON object per line (`time`, `level`, `target`, `message`), for log shippers.
    Json,
}

/// `--heartbeat`'s default: below the 60 s read timeout of common proxies
/// (nginx' `proxy_read_timeout`, many load balancers).
pub const DEFAULT_HEARTBEAT_S: u64 = 30;

/// The explicit limits of the server, passed down to every door.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest command line on the line protocol, CRLF included.
    pub max_line: usize,
    /// Largest message body on any door.
    pub max_body: usize,
    /// Largest HTTP request head.
    pub max_header: usize,
    /// Most connections at once; accepting pauses at this count.
    pub max_connections: usize,
    /// Unsent bytes a subscriber may hold before the slow-subscriber policy acts.
    pub backlog: usize,
    pub slow_policy: SlowPolicy,
    /// Channels one line-protocol connection may subscribe to.
    pub max_subscriptions: usize,
    /// Seconds a connection may hold an incomplete request, command or TLS
    /// handshake before it is closed; 0 means never.
    pub request_timeout_s: u64,
    /// Bytes queued messages may hold, per address and in total.
    pub queues: crate::broker::queues::QueueLimits,
    /// Outbound connections open at once, those still connecting included:
    /// webhook deliveries and a cluster node's links to Redis.
    pub max_outbound: usize,
}

impl Limits {
    /// The largest frame one channel message may become in one framing:
    /// half as much again as the largest body, plus room for headers. An
    /// event stream or JSON framing of a body made of line breaks or control
    /// bytes would be several times the body; such a message is not
    /// delivered in that framing (see `Channels::with_max_frame`).
    pub fn max_frame(&self) -> usize {
        self.max_body
            .saturating_add(self.max_body / 2)
            .saturating_add(64 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 4096,
            max_body: 16 * 1024 * 1024,
            max_header: 16 * 1024,
            max_connections: 100_000,
            backlog: 1_000_000,
            slow_policy: SlowPolicy::Drop,
            max_subscriptions: 10_000,
            request_timeout_s: 60,
            queues: crate::broker::queues::QueueLimits::default(),
            max_outbound: 10_000,
        }
    }
}

const AFTER_HELP: &str = "\
Every listener binds to loopback unless told otherwise. At start the server
prints one line per door on stdout, `listening DOOR ADDRESS`, with the address
it actually bound (so a port of 0 can be used in tests and scripts).
An ADDR is HOST:PORT (127.0.0.1:9813, localhost:9813 -- a name is resolved
once, at start -- or [::1]:9813), :PORT or PORT alone (loopback), or `off`.

Examples:
  switchboard                                   line protocol on 127.0.0.1:9813, HTTP bus on 127.0.0.1:8888
  switchboard --line-unix /tmp/msglite.socket   also serve the line protocol on a Unix socket
  switchboard --line-listen 127.0.0.1:0 --bus-listen off
  switchboard --switch-listen 127.0.0.1:8080    also serve message-switch's HTTP API
";

/// The command line of `switchboard`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "switchboard",
    version,
    about = "A single-threaded message bus: msglite queues, pub/sub channels and msgbus-style HTTP server push in one process.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Read settings from this TOML file: each key is a flag's long name
    /// (`bus-listen = "127.0.0.1:8888"`); flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (the file, the flags and the
    /// defaults) as a file --config reads back, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Line protocol (TCP) listen address, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9813", value_parser = parse_listen)]
    pub line_listen: Listen,

    /// Also serve the line protocol on this Unix socket path (a stale socket file is removed first).
    #[arg(long, value_name = "PATH")]
    pub line_unix: Option<PathBuf>,

    /// HTTP bus listen address, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8888", value_parser = parse_listen)]
    pub bus_listen: Listen,

    /// TLS certificate chain (PEM). With --tls-key, opens the HTTPS bus.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1; may be the same file as --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// HTTPS bus listen address (used when --tls-cert and --tls-key are given), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4444", value_parser = parse_listen)]
    pub bus_tls_listen: Listen,

    /// Require TLS clients to present a certificate signed by a CA in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Line protocol over TLS on this address (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen, requires = "tls_cert")]
    pub line_tls_listen: Option<Listen>,

    /// message-switch's HTTP API on this address, or `off` (message-switch's
    /// clients use 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR", default_value = "off", value_parser = parse_listen)]
    pub switch_listen: Listen,

    /// Also serve message-switch's HTTP API on this Unix socket path (as
    /// message-switch did; a stale socket file is removed first).
    #[arg(long, value_name = "PATH")]
    pub switch_unix: Option<PathBuf>,

    /// Let `POST /shutdown` on the message-switch API stop the server.
    #[arg(long)]
    pub allow_shutdown: bool,

    /// Serve static files from this directory on the HTTP bus (paths outside /msgbus/).
    #[arg(long, value_name = "DIR")]
    pub docroot: Option<PathBuf>,

    /// Require HTTP Basic auth with this password on the HTTP bus (any user name; it becomes the sender),
    /// and `@ S` before any other command on the line protocol.
    #[arg(long, value_name = "S")]
    pub secret: Option<String>,

    /// Prometheus metrics (`/metrics`) and `/healthz` on their own address,
    /// with no credentials asked, or `off` (the HTTP bus serves both too).
    #[arg(long, value_name = "ADDR", default_value = "off", value_parser = parse_listen)]
    pub metrics_listen: Listen,

    /// Verify signed tokens (JWT) with this key: a PEM public key (RS256 or EdDSA), or a file
    /// holding an HS256 secret of at least 32 bytes. Tokens name the channels and queues a
    /// caller may use (docs/security.md); HTTP takes them from `Authorization: Bearer` or
    /// `?token=`, the line protocol from `@ TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub token_key: Option<PathBuf>,

    /// Seconds an HTTP bus stream may stay silent before the server sends a
    /// heartbeat (an SSE comment, a multipart header line, a WebSocket
    /// ping), so that proxies do not cut idle subscribers (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_HEARTBEAT_S)]
    pub heartbeat: u64,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Longest line-protocol command line, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_line)]
    pub max_line: usize,

    /// Largest message body, in bytes (line protocol and HTTP).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_body)]
    pub max_body: usize,

    /// Largest HTTP request head, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_header)]
    pub max_header: usize,

    /// Most client connections at once (accepting pauses at the limit).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,

    /// Unsent bytes a subscriber may hold before the slow-subscriber policy acts.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().backlog)]
    pub backlog_limit: usize,

    /// Channels and patterns one connection may subscribe to (a line
    /// connection in all, an HTTP subscription in its `?channel=` list).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_subscriptions)]
    pub max_subscriptions: usize,

    /// Publish a JSON event on `$presence.CHANNEL` whenever a subscription
    /// to CHANNEL starts or ends.
    #[arg(long)]
    pub presence_events: bool,

    /// Messages kept per channel for subscribers that resume (`?since=`,
    /// `Last-Event-ID`, `+ CH SINCE`); 0 keeps none and numbers nothing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: usize,

    /// Bytes the kept messages of one channel may hold.
    #[arg(long, value_name = "BYTES", default_value_t = HistoryLimits::default().per_channel_bytes)]
    pub history_bytes: usize,

    /// Bytes the kept messages of all channels may hold; the oldest go first.
    #[arg(long, value_name = "BYTES", default_value_t = HistoryLimits::default().total_bytes)]
    pub history_total_bytes: usize,

    /// Seconds a connection may sit on an incomplete request, command or TLS
    /// handshake before it is closed (0: never). Idle connections with
    /// nothing pending are never timed out.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().request_timeout_s)]
    pub request_timeout: u64,

    /// What to do with a subscriber over its backlog limit.
    #[arg(long, value_enum, default_value_t = SlowPolicy::Drop)]
    pub slow_subscriber: SlowPolicy,

    /// Bytes that messages waiting in queues may hold in total (each counts
    /// its body, its reply address and 64 bytes). A send past it is refused
    /// (`- queue full` on the line protocol); a waiting receiver still gets
    /// its message.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().queues.total)]
    pub max_queued_bytes: usize,

    /// Bytes that messages waiting on one queue address may hold.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().queues.per_address)]
    pub max_queued_bytes_per_address: usize,

    /// msglite HTTP proxy listen address, or `off`: each request becomes a
    /// message to a queue, answered by any line-protocol client.
    #[arg(long, value_name = "ADDR", default_value = "off", value_parser = parse_listen)]
    pub proxy_listen: Listen,

    /// The queue proxied requests go to (unless a --proxy-route matches).
    #[arg(long, value_name = "NAME", default_value = proxy_defaults::DEFAULT_QUEUE)]
    pub proxy_queue: String,

    /// Seconds the proxy waits for a handler's answer (its head, and each
    /// message of its body) before answering 504.
    #[arg(long, value_name = "SECONDS", default_value_t = proxy_defaults::DEFAULT_TIMEOUT_S)]
    pub proxy_timeout: u64,

    /// Requests whose path starts with PREFIX go to QUEUE (repeatable; the
    /// longest matching prefix wins), e.g. `--proxy-route /api=api.requests`.
    #[arg(long, value_name = "PREFIX=QUEUE")]
    pub proxy_route: Vec<String>,

    /// Most proxied requests waiting for a handler's answer at once; past
    /// it a request gets 503 at once (and is counted).
    #[arg(long, value_name = "N", default_value_t = proxy_defaults::DEFAULT_MAX_PENDING)]
    pub proxy_max_pending: usize,

    /// Webhook API (connect / send / disconnect, dashboard) listen address, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "off", value_parser = parse_listen)]
    pub hooks_listen: Listen,

    /// Sign every webhook delivery as Standard Webhooks does (webhook-id,
    /// webhook-timestamp, webhook-signature) with this key: `whsec_` and the
    /// base64 of 24 to 64 bytes.
    #[arg(long, value_name = "whsec_…")]
    pub hooks_secret: Option<String>,

    /// Webhook requests in flight overall (each receiver may always have one).
    #[arg(long, value_name = "N", default_value_t = HookSettings::default().workers)]
    pub hook_workers: usize,

    /// Webhook requests in flight per receiver (1 keeps each receiver's
    /// messages strictly in order).
    #[arg(long, value_name = "N", default_value_t = HookSettings::default().per_receiver)]
    pub hook_per_receiver: usize,

    /// Webhook messages that may wait while no receiver is connected (beyond
    /// it /send/ answers 503), and the length of each receiver's backlog.
    #[arg(long, value_name = "N", default_value_t = HookSettings::default().queue)]
    pub hook_queue: usize,

    /// Retries of a failed webhook delivery (back-off from 1 s, doubling up
    /// to 5 min), after which the message counts as failed.
    #[arg(long, value_name = "N", default_value_t = HookSettings::default().retries)]
    pub hook_retries: u32,

    /// Seconds a webhook delivery may take to connect, and then to be answered.
    #[arg(long, value_name = "SECONDS", default_value_t = HookSettings::default().timeout_ms / 1000)]
    pub hook_timeout: u64,

    /// Trust only the CA certificates in this PEM file for https receivers
    /// (default: the system's CA bundle).
    #[arg(long, value_name = "FILE")]
    pub hooks_ca: Option<PathBuf>,

    /// Outbound connections open at once, those still connecting included:
    /// webhook deliveries and a cluster node's links to Redis.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_outbound)]
    pub max_outbound: usize,

    /// Keep queued messages on disk in this directory (created if missing):
    /// line-protocol queued messages with their deadlines, message-switch
    /// persistent queues and unacknowledged messages, and the id counters
    /// survive a restart or a crash. Channels stay in memory. Without it
    /// nothing touches the disk.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// With --data-dir, when records are made durable: `always` before the
    /// answers that depend on them leave (one fsync per loop turn, on a
    /// helper thread), `everysec` within about a second, `no` when the
    /// operating system writes them back. Without --data-dir it changes nothing
    /// (so that `--print-config` output, which names it, reads back).
    #[arg(long, value_enum, default_value_t = Fsync::EverySec)]
    pub fsync: Fsync,

    /// With --data-dir, a log segment is closed and the next begun once it
    /// holds this many bytes (1 MiB to 1 GiB; a start reads each segment
    /// whole).
    #[arg(long, value_name = "BYTES", default_value_t = StoreSizes::default().segment,
          value_parser = parse_segment_bytes)]
    pub segment_bytes: u64,

    /// With --data-dir, the log is compacted (rewritten as a snapshot of
    /// the live messages, the older segments deleted) once its segments
    /// hold more than this many bytes and more than 4 times the live data
    /// (at least 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = StoreSizes::default().compact_min,
          value_parser = parse_compact_min_bytes)]
    pub compact_min_bytes: u64,

    /// Join the other nodes that name the same Redis: channel messages
    /// published on any node reach subscribers on every node
    /// (docs/cluster.md). `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`, or
    /// `rediss://` for TLS (roots from --hooks-ca or the system bundle).
    /// Redis unreachable or refusing the password at start stops the
    /// start, unless --cluster-optional.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// Prepended to every channel name in Redis (several deployments can
    /// share one Redis with different prefixes).
    #[arg(long, value_name = "PREFIX", default_value = "switchboard:")]
    pub cluster_prefix: String,

    /// With --cluster: start even when Redis is unreachable (serving local
    /// subscribers only) and join when it comes; `/healthz` then stays 200
    /// while the cluster link is down.
    #[arg(long, requires = "cluster")]
    pub cluster_optional: bool,

    /// With --cluster: channels go through Redis' sharded pub/sub
    /// (SSUBSCRIBE, SPUBLISH; Redis 7.0 or later, classic pub/sub when it
    /// lacks them). SPUBLISH does not reach patterns: pattern and
    /// all-channel subscribers then get only their own node's messages and
    /// classic ones. Give it to every node or to none (docs/cluster.md).
    #[arg(long, requires = "cluster")]
    pub cluster_sharded: bool,
}

impl Config {
    /// The credentials doors check callers against.
    pub fn access(&self) -> crate::auth::Access {
        crate::auth::Access {
            secret: self.secret.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub line_listen: Listen,
    pub line_unix: Option<PathBuf>,
    pub bus_listen: Listen,
    pub metrics_listen: Listen,
    pub switch_listen: Listen,
    pub switch_unix: Option<PathBuf>,
    pub allow_shutdown: bool,
    /// The TLS doors, when a certificate and key were given.
    pub tls: Option<TlsDoors>,
    pub docroot: Option<PathBuf>,
    pub secret: Option<String>,
    /// The key of `--token-key`, loaded at start.
    pub tokens: Option<Arc<crate::auth::Tokens>>,

    /// Seconds of silence after which a bus stream gets a heartbeat (0: off).
    pub heartbeat_s: u64,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// The webhook API's listener.
    pub hooks_listen: Listen,
    /// The webhook engine's settings.
    pub hooks: HookSettings,
    /// TLS settings of outbound connections (with the webhook API on).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    pub proxy: ProxyConfig,
    /// `--data-dir`: where queued messages are kept; `None`: in memory only.
    pub data_dir: Option<PathBuf>,
    pub fsync: Fsync,
    /// `--segment-bytes`, `--compact-min-bytes`.
    pub store_sizes: StoreSizes,
    /// `--cluster`: the Redis the nodes share; `None`: this node alone.
    pub cluster: Option<crate::broker::cluster::Settings>,
    /// `--presence-events`.
    pub presence_events: bool,
    /// `--history`, `--history-bytes`, `--history-total-bytes`.
    pub history: HistoryLimits,
}

pub use crate::broker::history::HistoryLimits;

impl Config {
    /// The broker's channels as the flags set them up.
    pub fn channels(&self) -> crate::broker::Channels {
        crate::broker::Channels::default()
            .with_max_frame(self.limits.max_frame())
            .with_presence_events(self.presence_events)
            .with_history(self.history)
    }
}

/// The msglite HTTP proxy door's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: Listen,
    /// Where requests go when no route matches.
    pub queue: String,
    pub timeout_s: u64,
    /// `(path prefix, queue)`, longest prefix first.
    pub routes: Vec<(String, String)>,
    pub max_pending: usize,
}

/// A queue name the proxy may send to: it must be one field of a line
/// protocol command (no whitespace or control bytes) and not too long.
fn check_queue_name(flag: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{flag}: the queue name is empty"));
    }
    if name.len() > 256 {
        return Err(format!("{flag}: the queue name is longer than 256 bytes"));
    }
    if name.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{flag} `{name}`: a queue name has no spaces or control characters"
        ));
    }
    Ok(())
}

fn proxy_config(args: &Args) -> Result<ProxyConfig, String> {
    check_queue_name("--proxy-queue", &args.proxy_queue)?;
    if args.proxy_timeout == 0 {
        return Err("--proxy-timeout must be at least 1 second".into());
    }
    if args.proxy_max_pending == 0 {
        return Err("--proxy-max-pending must be at least 1".into());
    }
    let mut routes: Vec<(String, String)> = Vec::new();
    for route in &args.proxy_route {
        let Some((prefix, queue)) = route.split_once('=') else {
            return Err(format!(
                "--proxy-route `{route}`: expected PREFIX=QUEUE, e.g. /api=api.requests"
            ));
        };
        if !prefix.starts_with('/') {
            return Err(format!(
                "--proxy-route `{route}`: the prefix must start with `/`"
            ));
        }
        check_queue_name("--proxy-route", queue)?;
        if routes.iter().any(|(p, _)| p == prefix) {
            return Err(format!(
                "--proxy-route `{route}`: the prefix {prefix} is routed twice"
            ));
        }
        routes.push((prefix.to_string(), queue.to_string()));
    }
    // Longest prefix first: the first match is the longest.
    routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(ProxyConfig {
        listen: args.proxy_listen.clone(),
        queue: args.proxy_queue.clone(),
        timeout_s: args.proxy_timeout,
        routes,
        max_pending: args.proxy_max_pending,
    })
}

/// The TLS settings: loaded and checked before any listener opens.
#[derive(Clone, Debug)]
pub struct TlsDoors {
    pub config: Arc<rustls::ServerConfig>,
    pub bus_listen: Listen,
    pub line_listen: Listen,
}

impl Config {
    /// The webhook engine's settings.
    pub fn hooks_settings(&self) -> HookSettings {
        self.hooks.clone()
    }

    /// Checks the arguments and builds the configuration; the error names the flag.
    pub fn from_args(args: Args) -> Result<Config, String> {
        if args.max_line < 16 {
            return Err("--max-line must be at least 16 bytes".into());
        }
        if args.max_header < 256 {
            return Err("--max-header must be at least 256 bytes".into());
        }
        if args.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if let Some(dir) = &args.docroot {
            if !dir.is_dir() {
                return Err(format!("--docroot {}: not a directory", dir.display()));
            }
        }
        if args.hook_workers == 0 || args.hook_per_receiver == 0 {
            return Err("--hook-workers and --hook-per-receiver must be at least 1".into());
        }
        if args.hook_queue == 0 {
            return Err("--hook-queue must be at least 1".into());
        }
        if args.hook_timeout == 0 {
            return Err("--hook-timeout must be at least 1 second".into());
        }
        let secret = match &args.hooks_secret {
            Some(text) => Some(Secret::parse(text).map_err(|e| format!("--hooks-secret: {e}"))?),
            None => None,
        };
        let cluster = match &args.cluster {
            Some(url) => {
                let crate::broker::cluster::url::RedisUrl {
                    host,
                    port,
                    tls,
                    db,
                    auth,
                } = crate::broker::cluster::url::parse(url)
                    .map_err(|e| format!("--cluster: {e}"))?;
                if args.cluster_prefix.is_empty() {
                    return Err("--cluster-prefix: an empty prefix would subscribe to every channel of the Redis".to_string());
                }
                Some(crate::broker::cluster::Settings {
                    host,
                    port,
                    tls,
                    db,
                    prefix: bytes::Bytes::from(args.cluster_prefix.clone().into_bytes()),
                    optional: args.cluster_optional,
                    max_pending: crate::broker::cluster::DEFAULT_MAX_PENDING,
                    max_body: args.max_body,
                    auth,
                    sharded: args.cluster_sharded,
                })
            }
            None => None,
        };
        let needs_client_tls =
            matches!(args.hooks_listen, Listen::At(_)) || cluster.as_ref().is_some_and(|c| c.tls);
        let client_tls = if needs_client_tls {
            Some(crate::server::tls::client_config(args.hooks_ca.as_deref())?)
        } else {
            None
        };
        let hooks = HookSettings {
            workers: args.hook_workers,
            per_receiver: args.hook_per_receiver,
            queue: args.hook_queue,
            max_bytes: args.max_queued_bytes,
            retries: args.hook_retries,
            timeout_ms: args.hook_timeout.saturating_mul(1000),
            secret,
            ..HookSettings::default()
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsDoors {
                config: crate::server::tls::load_config(cert, key, args.tls_client_ca.as_deref())?,
                bus_listen: args.bus_tls_listen.clone(),
                line_listen: args.line_tls_listen.clone().unwrap_or(Listen::Off),
            }),
            _ => None,
        };
        let proxy = proxy_config(&args)?;
        let tokens = match &args.token_key {
            Some(path) => Some(Arc::new(
                crate::auth::Tokens::load(path).map_err(|e| format!("--token-key {e}"))?,
            )),
            None => None,
        };
        if args.secret.as_deref() == Some("") {
            return Err("--secret: an empty secret would let anyone in".to_string());
        }
        Ok(Config {
            tokens,
            proxy,
            tls,
            data_dir: args.data_dir,
            fsync: args.fsync,
            store_sizes: StoreSizes {
                segment: args.segment_bytes,
                compact_min: args.compact_min_bytes,
            },
            cluster,
            line_listen: args.line_listen,
            line_unix: args.line_unix,
            bus_listen: args.bus_listen,
            metrics_listen: args.metrics_listen,
            switch_listen: args.switch_listen,
            switch_unix: args.switch_unix,
            allow_shutdown: args.allow_shutdown,
            docroot: args.docroot,
            heartbeat_s: args.heartbeat,
            secret: args.secret,
            log_level: args.log_level,
            log_format: args.log_format,
            hooks_listen: args.hooks_listen,
            hooks,
            client_tls,
            presence_events: args.presence_events,
            history: HistoryLimits {
                messages: args.history,
                per_channel_bytes: args.history_bytes,
                total_bytes: args.history_total_bytes,
            },
            limits: Limits {
                max_line: args.max_line,
                max_body: args.max_body,
                max_header: args.max_header,
                max_connections: args.max_connections,
                backlog: args.backlog_limit,
                slow_policy: args.slow_subscriber,
                max_subscriptions: args.max_subscriptions,
                request_timeout_s: args.request_timeout,
                queues: crate::broker::queues::QueueLimits {
                    per_address: args.max_queued_bytes_per_address,
                    total: args.max_queued_bytes,
                },
                max_outbound: args.max_outbound,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker built without a configuration (`Channels::default()`)
    /// holds frames to the limit the server's defaults give.
    #[test]
    fn the_channels_default_frame_limit_is_the_default_configurations() {
        let limits = Limits::default();
        assert_eq!(limits.max_body, 16 * 1024 * 1024);
        assert_eq!(
            limits.max_frame(),
            crate::broker::channels::DEFAULT_MAX_FRAME
        );
        assert_eq!(limits.max_frame(), 24 * 1024 * 1024 + 64 * 1024);
    }

    #[test]
    fn defaults_match_the_spec() {
        let args = Args::try_parse_from(["switchboard"]).unwrap();
        let cfg = Config::from_args(args).unwrap();
        assert_eq!(
            cfg.line_listen,
            Listen::At("127.0.0.1:9813".parse().unwrap())
        );
        assert_eq!(
            cfg.bus_listen,
            Listen::At("127.0.0.1:8888".parse().unwrap())
        );
        assert_eq!(cfg.limits.backlog, 1_000_000);
        assert_eq!(cfg.switch_listen, Listen::Off);
        assert!(!cfg.allow_shutdown);
        assert_eq!(cfg.proxy.listen, Listen::Off);
        assert_eq!(cfg.proxy.queue, "msglite.httpRequests");
        assert_eq!(cfg.proxy.timeout_s, 180);
        assert!(cfg.proxy.routes.is_empty());
    }

    #[test]
    fn proxy_routes_longest_prefix_first_and_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["switchboard"];
            argv.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(argv).unwrap())
        };
        let cfg = parse(&[
            "--proxy-route",
            "/api=api.requests",
            "--proxy-route",
            "/api/admin=admin.requests",
            "--proxy-route",
            "/a=a.requests",
        ])
        .unwrap();
        let prefixes: Vec<&str> = cfg.proxy.routes.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(prefixes, ["/api/admin", "/api", "/a"]);
        for (bad, says) in [
            (&["--proxy-route", "/api"][..], "PREFIX=QUEUE"),
            (&["--proxy-route", "api=q"][..], "start with `/`"),
            (&["--proxy-route", "/api="][..], "empty"),
            (&["--proxy-route", "/api=a b"][..], "no spaces"),
            (
                &["--proxy-route", "/x=a", "--proxy-route", "/x=b"][..],
                "twice",
            ),
            (&["--proxy-queue", "a\tb"][..], "no spaces"),
            (&["--proxy-timeout", "0"][..], "--proxy-timeout"),
            (&["--proxy-max-pending", "0"][..], "--proxy-max-pending"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn off_and_bad_addresses() {
        let args = Args::try_parse_from(["switchboard", "--bus-listen", "off"]).unwrap();
        assert_eq!(args.bus_listen, Listen::Off);
        assert!(Args::try_parse_from(["switchboard", "--line-listen", "nowhere"]).is_err());
    }

    #[test]
    fn listen_address_forms() {
        let at = |s: &str| match parse_listen(s) {
            Ok(Listen::At(a)) => a,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(at("10.1.2.3:9000"), "10.1.2.3:9000".parse().unwrap());
        assert_eq!(at("[::1]:9000"), "[::1]:9000".parse().unwrap());
        assert_eq!(at(":9000"), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(at("9000"), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(at("0"), "127.0.0.1:0".parse().unwrap());
        let local = at("localhost:9000");
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 9000);
        assert_eq!(parse_listen("OFF"), Ok(Listen::Off));
        for bad in [
            "",
            ":",
            "99999",
            ":99999",
            "localhost",
            "localhost:",
            "localhost:x",
            "a b:9000",
            "::1:9000",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn store_sizes_have_a_floor_and_a_segment_a_ceiling() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["switchboard"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(|a| Config::from_args(a).unwrap().store_sizes)
        };
        let default = parse(&[]).unwrap();
        assert_eq!(default.segment, 64 << 20);
        assert_eq!(default.compact_min, 64 << 20);
        let set = parse(&[
            "--segment-bytes",
            "1048576",
            "--compact-min-bytes",
            "2000000",
        ])
        .unwrap();
        assert_eq!(set.segment, 1 << 20);
        assert_eq!(set.compact_min, 2_000_000);
        assert_eq!(
            parse(&["--compact-min-bytes", "1099511627776"])
                .unwrap()
                .compact_min,
            1 << 40
        );
        for (flag, bad, why) in [
            ("--segment-bytes", "1048575", "at least 1048576"),
            ("--compact-min-bytes", "0", "at least 1048576"),
            ("--segment-bytes", "1073741825", "at most 1073741824"),
            ("--compact-min-bytes", "64M", "not a byte count"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(err.contains(why), "{flag} {bad}: {err}");
        }
    }
}
