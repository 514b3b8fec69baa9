//! flood-pub: publishes stamped messages to a switchboard channel (line
//! protocol or HTTP bus), pipelined, as fast as possible or at a fixed
//! rate, and reports the publish rate. Successor of msgbus' test-pub. The
//! work is in `loadtest::publisher`; this file is flags and output.

use std::time::Duration;

use clap::Parser;

use loadtest::cli::{self, parse_secs, TargetArgs};
use loadtest::net;
use loadtest::publisher::{self, PubOptions, PubReport};
use loadtest::ready;
use loadtest::report::{self, RunInfo};
use loadtest::stamp::{self, Body};

#[derive(Debug, Parser)]
#[command(
    name = "flood-pub",
    version,
    args_override_self = true,
    about = "Publish stamped messages to a switchboard channel and measure the publish rate",
    long_about = "Publish stamped messages to a switchboard channel and measure the publish rate.\n\n\
        Every body starts with a 45-byte stamp (send time on CLOCK_MONOTONIC, publisher id, \
        sequence number) that flood-sub reads to measure latency, loss and duplicates; the \
        rest is padding up to --size, or the contents of -f FILE.\n\n\
        With --wait-subscribers N it first waits until flood-sub processes have announced N \
        subscribed connections on the ready channel (CHANNEL.ready: flood-sub publishes `ID COUNT` \
        there every second), so both may be started at once.\n\n\
        Runs until --count messages are sent, --duration seconds have passed, or Ctrl-C; then \
        waits until the server has confirmed every publish and prints a summary on stdout \
        (one JSON line with --json). Progress lines go to stderr, every --interval seconds.\n\n\
        Exit status: 0 when every publish was confirmed; 1 on a connection error, a non-2xx \
        answer or an unconfirmed publish; 2 on bad arguments.",
    after_help = "Example:\n  flood-sub --proto line --connections 100 --count 100000 &\n  \
        flood-pub --proto line --wait-subscribers 100 --count 100000 -r 20000 --size 128\n\n\
        Short flags mean the same in flood-pub, flood-sub and switchboard-cli: -a --address, \
        -c --channel, -n --count (switchboard-cli only), -t --type; connections have no short flag."
)]
struct Args {
    #[command(flatten)]
    target: TargetArgs,

    /// Channel to publish to
    #[arg(short = 'c', long = "channel", default_value = "flood")]
    channel: String,

    /// Body: the stamp followed by this file's contents (instead of --size padding)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<std::path::PathBuf>,

    /// Messages per second over all connections [default: as fast as possible]
    #[arg(short = 'r', long = "rate", value_name = "MSGS_PER_SEC")]
    rate: Option<f64>,

    /// Spread over this many channels, CHANNEL.0 ... CHANNEL.K-1 (1: CHANNEL
    /// itself): message n of connection j goes to
    /// CHANNEL.((n × N + j) mod K), N connections; with --count a multiple of
    /// K and N every channel gets COUNT / K messages
    #[arg(long = "channels", value_name = "K", default_value_t = 1)]
    channels: usize,

    /// Number of publisher connections (messages and rate are split evenly)
    #[arg(long = "connections", value_name = "N", default_value_t = 1)]
    connections: usize,

    /// Before publishing, wait until flood-sub processes have announced N
    /// subscribed connections on the ready channel
    #[arg(long = "wait-subscribers", value_name = "N")]
    wait_subscribers: Option<u64>,

    /// The channel flood-sub announces readiness on [default: CHANNEL.ready]
    #[arg(long = "ready-channel", value_name = "NAME")]
    ready_channel: Option<String>,

    /// With --wait-subscribers: fail after this many seconds
    #[arg(long = "wait-timeout", value_name = "S", default_value = "60", value_parser = parse_secs)]
    wait_timeout: Duration,

    /// Content type of the messages
    #[arg(
        short = 't',
        long = "type",
        value_name = "TYPE",
        default_value = "text/plain"
    )]
    ctype: String,

    /// Body size in bytes (at least 45, the stamp)
    #[arg(long = "size", value_name = "BYTES", default_value_t = 64)]
    size: usize,

    /// Messages to send in all, then stop
    #[arg(long = "count", value_name = "N")]
    count: Option<u64>,

    /// Stop sending after this many seconds
    #[arg(long = "duration", value_name = "S", value_parser = parse_secs)]
    duration: Option<Duration>,

    /// Print one JSON line as the summary instead of text
    #[arg(long = "json")]
    json: bool,

    /// HTTP and Redis: most unanswered POSTs (PUBLISHes) per connection
    #[arg(long = "pipeline", value_name = "N", default_value_t = 64)]
    pipeline: u64,

    /// Spread connections over source addresses 127.0.0.1 ... 127.0.0.N (0: let the kernel choose)
    #[arg(long = "sources", value_name = "N", default_value_t = 0)]
    sources: usize,

    /// Seconds between progress lines on stderr
    #[arg(long = "interval", value_name = "S", default_value = "1", value_parser = parse_secs)]
    interval: Duration,

    /// Connections not ready after this long fail
    #[arg(long = "setup-timeout", value_name = "S", default_value = "30", value_parser = parse_secs)]
    setup_timeout: Duration,

    /// After the last publish, wait this long for the server's confirmations
    #[arg(long = "confirm-timeout", value_name = "S", default_value = "30", value_parser = parse_secs)]
    confirm_timeout: Duration,
}

const TOOL: &str = "flood-pub";

fn main() {
    cli::refuse_old_short_flags(TOOL);
    let args = Args::parse();
    if args.connections == 0 || args.connections > 65_536 {
        cli::die(TOOL, "--connections must be between 1 and 65536");
    }
    if args.size < stamp::HEADER_LEN {
        cli::die(
            TOOL,
            &format!("--size must be at least {} (the stamp)", stamp::HEADER_LEN),
        );
    }
    if let Some(r) = args.rate {
        if !(r > 0.0 && r.is_finite()) {
            cli::die(TOOL, "-r must be a positive number of messages per second");
        }
    }
    if args.channels == 0 || args.channels > cli::MAX_CHANNELS {
        cli::die(
            TOOL,
            &format!("--channels must be between 1 and {}", cli::MAX_CHANNELS),
        );
    }
    if args.channels > 1 && args.target.proto == cli::Proto::Ws {
        cli::die(
            TOOL,
            "--channels: a WebSocket publisher is bound to the channel of its connection",
        );
    }
    if args.pipeline == 0 {
        cli::die(TOOL, "--pipeline must be at least 1");
    }
    if args.sources > 254 {
        cli::die(TOOL, "--sources must be at most 254");
    }
    if args.ctype.is_empty() || args.ctype.bytes().any(|b| b == b'\r' || b == b'\n') {
        cli::die(TOOL, "-t must be a non-empty content type on one line");
    }
    if args.target.proto.needs_plain_channel() {
        if let Err(e) = cli::check_channel(&args.channel) {
            cli::die(TOOL, &e);
        }
    }
    if args.target.proto == cli::Proto::Sse {
        cli::die(
            TOOL,
            "--proto sse only subscribes: publish with --proto http (or ws)",
        );
    }
    let body = match &args.file {
        Some(path) => match std::fs::read(path) {
            Ok(content) => Body::with_content(&content),
            Err(e) => cli::die(TOOL, &format!("-f {}: {e}", path.display())),
        },
        None => Body::padded(args.size),
    };
    let target = args.target.resolve().unwrap_or_else(|e| cli::die(TOOL, &e));
    if args.sources > 0 && !matches!(target.addr.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback())
    {
        cli::die(
            TOOL,
            "--sources needs an IPv4 loopback server address (127.x.x.x)",
        );
    }
    let limit = net::raise_nofile_limit();
    if args.connections as u64 + 32 > limit {
        cli::die(
            TOOL,
            &format!(
                "{} connections need more open files than the limit ({limit})",
                args.connections
            ),
        );
    }
    net::install_stop_handler(false);

    if let Some(want) = args.wait_subscribers {
        let channel = args
            .ready_channel
            .clone()
            .unwrap_or_else(|| ready::default_channel(&args.channel));
        eprintln!("{TOOL}: waiting for {want} subscribers (announced on {channel})");
        let waited = ready::wait_for(&target, &channel, want, args.wait_timeout, &mut |n| {
            eprintln!("{TOOL}: {n} of {want} subscribers ready");
        });
        if let Err(e) = waited {
            eprintln!("{TOOL}: {e}");
            std::process::exit(1);
        }
    }

    let info = RunInfo {
        tool: TOOL,
        proto: target.proto.name(),
        address: target.addr.to_string(),
        channel: args.channel.clone(),
        procs: 1,
        sources: args.sources,
    };
    let opts = PubOptions {
        proto: target.proto,
        addr: target.addr,
        host: target.host.clone(),
        channel: args.channel.clone(),
        channels: args.channels,
        http_path: target.http_path.clone(),
        ctype: args.ctype.clone(),
        body,
        connections: args.connections,
        count: args.count,
        duration: args.duration,
        rate: args.rate,
        pipeline: args.pipeline,
        auth: target.auth.clone(),
        tls: target.tls.clone(),
        sources: args.sources,
        interval: args.interval,
        setup_timeout: args.setup_timeout,
        confirm_timeout: args.confirm_timeout,
    };
    let mut last = (0.0f64, 0u64);
    let totals = publisher::run(&opts, &mut |r| match r {
        PubReport::Started { connected, secs } => eprintln!(
            "{TOOL}: publishing: {connected} of {} connections ready in {secs:.2} s",
            args.connections
        ),
        PubReport::Tick {
            elapsed_s,
            sent,
            confirmed,
            errors,
        } => {
            let dt = (elapsed_s - last.0).max(1e-3);
            let rate = sent.saturating_sub(last.1) as f64 / dt;
            last = (elapsed_s, sent);
            let mut line = format!(
                "{TOOL}: {elapsed_s:7.1} s  sent {rate:.0} msgs/s  total {sent}  confirmed {confirmed}"
            );
            if errors > 0 {
                line.push_str(&format!("  errors {errors}"));
            }
            eprintln!("{line}");
        }
    })
    .unwrap_or_else(|e| {
        eprintln!("{TOOL}: {e}");
        std::process::exit(1);
    });
    if args.json {
        println!("{}", report::pub_json(&info, &totals));
    } else {
        print!("{}", report::pub_human(&info, &totals));
    }
    if let Some(f) = totals.failure() {
        eprintln!("{TOOL}: FAILED: {f}");
        std::process::exit(1);
    }
}
