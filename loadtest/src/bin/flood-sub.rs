//! flood-sub: holds many subscriber connections to switchboard (line
//! protocol or HTTP bus), checks every delivery and reports delivered
//! msgs/s, latency percentiles, lost and duplicated messages. Successor of
//! msgbus' test-sub. The work is in `loadtest::subscriber` (one process) and
//! `loadtest::workers` (`--procs`); this file is flags and output.

use std::time::Duration;

use clap::Parser;

use loadtest::cli::{self, parse_secs, TargetArgs};
use loadtest::hist::Histogram;
use loadtest::net;
use loadtest::ready;
use loadtest::report::{self, RunInfo, SubTotals};
use loadtest::subscriber::{self, Report, SubOptions};
use loadtest::workers;

#[derive(Debug, Parser)]
#[command(
    name = "flood-sub",
    version,
    args_override_self = true,
    about = "Subscribe many connections to a switchboard channel and measure what arrives",
    long_about = "Subscribe many connections to a switchboard channel and measure what arrives.\n\n\
        Each delivery must carry the stamp flood-pub writes (send time and sequence number); \
        flood-sub reports delivered msgs/s every --interval seconds on stderr and, at the end, \
        latency percentiles and lost / duplicated counts on stdout (one JSON line with --json).\n\n\
        Once every connection is subscribed it prints `flood-sub: ready: ...` on stderr. From \
        its first subscribed connection to its end it also publishes, every second, `ID COUNT` \
        on the ready channel (CHANNEL.ready), which flood-pub --wait-subscribers N waits for: \
        the two can be started together.\n\n\
        Exit status: 0 when all went well; 1 on a connection error, an unreadable delivery, a \
        duplicate, or (with --count) a lost message; 2 on bad arguments.",
    after_help = "Example:\n  flood-sub --proto line --connections 1000 --count 10000 &\n  \
        flood-pub --proto line --wait-subscribers 1000 --count 10000 -r 5000"
)]
struct Args {
    #[command(flatten)]
    target: TargetArgs,

    /// Channel to subscribe to
    #[arg(short = 'c', long = "channel", default_value = "flood")]
    channel: String,

    /// Spread over this many channels, CHANNEL.0 ... CHANNEL.K-1 (1: CHANNEL
    /// itself): connection i subscribes to CHANNEL.(i mod K)
    #[arg(long = "channels", value_name = "K", default_value_t = 1)]
    channels: usize,

    /// Number of subscriber connections (over all processes)
    #[arg(long = "connections", value_name = "N", default_value_t = 1)]
    connections: usize,

    /// The channel to announce readiness on, for flood-pub
    /// --wait-subscribers [default: CHANNEL.ready]
    #[arg(long = "ready-channel", value_name = "NAME")]
    ready_channel: Option<String>,

    /// Do not announce readiness on the ready channel
    #[arg(long = "no-announce", conflicts_with = "ready_channel")]
    no_announce: bool,

    /// Messages each connection expects; the run ends when all have them
    #[arg(long = "count", value_name = "N")]
    count: Option<u64>,

    /// Stop this many seconds after all connections are subscribed
    #[arg(long = "duration", value_name = "S", value_parser = parse_secs)]
    duration: Option<Duration>,

    /// Print one JSON line as the summary instead of text
    #[arg(long = "json")]
    json: bool,

    /// Expected content type; deliveries of another type count as unreadable
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    expect_type: Option<String>,

    /// HTTP: subscribe with HTTP/1.0 (a plain stream, parts with Content-Length)
    #[arg(long = "http10")]
    http10: bool,

    /// Spread connections over source addresses 127.0.0.1 ... 127.0.0.N (0: let the kernel choose)
    #[arg(long = "sources", value_name = "N", default_value_t = 0)]
    sources: usize,

    /// Split the connections over K processes (each has its own file limit)
    #[arg(long = "procs", value_name = "K", default_value_t = 1)]
    procs: usize,

    /// Connections being set up (connecting or subscribing) at once, per process
    #[arg(long = "concurrency", value_name = "C", default_value_t = 256)]
    concurrency: usize,

    /// Seconds between progress lines on stderr
    #[arg(long = "interval", value_name = "S", default_value = "1", value_parser = parse_secs)]
    interval: Duration,

    /// With --count: stop after this long without any delivery (once one has arrived)
    #[arg(long = "idle-timeout", value_name = "S", default_value = "10", value_parser = parse_secs)]
    idle_timeout: Duration,

    /// Stop after this long in all, whatever else happens
    #[arg(long = "timeout", value_name = "S", value_parser = parse_secs)]
    timeout: Option<Duration>,

    /// A connection not subscribed after this long fails
    #[arg(long = "setup-timeout", value_name = "S", default_value = "30", value_parser = parse_secs)]
    setup_timeout: Duration,

    /// Internal: run as worker I of --procs (set by the parent process)
    #[arg(long = "worker-index", value_name = "I", hide = true)]
    worker_index: Option<usize>,
}

const TOOL: &str = "flood-sub";

fn main() {
    cli::refuse_old_short_flags(TOOL);
    let args = Args::parse();
    if args.connections == 0 {
        cli::die(TOOL, "--connections must be at least 1");
    }
    if args.procs == 0 || args.procs > args.connections {
        cli::die(
            TOOL,
            "--procs must be between 1 and the number of connections",
        );
    }
    if args.sources > 254 {
        cli::die(
            TOOL,
            "--sources must be at most 254 (127.0.0.1 ... 127.0.0.254)",
        );
    }
    if args.concurrency == 0 {
        cli::die(TOOL, "--concurrency must be at least 1");
    }
    if args.channels == 0 || args.channels > cli::MAX_CHANNELS {
        cli::die(
            TOOL,
            &format!("--channels must be between 1 and {}", cli::MAX_CHANNELS),
        );
    }
    if args.count == Some(0) {
        cli::die(TOOL, "--count must be at least 1");
    }
    if args.target.proto.needs_plain_channel() {
        if let Err(e) = cli::check_channel(&args.channel) {
            cli::die(TOOL, &e);
        }
    }
    if args.target.proto == cli::Proto::Ws && args.expect_type.is_some() {
        cli::die(
            TOOL,
            "--expect-type: a WebSocket message carries no content type",
        );
    }
    if args.target.proto.is_peer() && args.expect_type.is_some() {
        cli::die(
            TOOL,
            &format!(
                "--type: a {} message carries no content type",
                args.target.proto.name()
            ),
        );
    }
    let target = args.target.resolve().unwrap_or_else(|e| cli::die(TOOL, &e));
    if args.sources > 0 && !matches!(target.addr.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback())
    {
        cli::die(
            TOOL,
            "--sources needs an IPv4 loopback server address (127.x.x.x)",
        );
    }
    let limit = net::raise_nofile_limit();
    let per_proc = args.connections.div_ceil(args.procs) as u64;
    if per_proc + 32 > limit {
        cli::die(
            TOOL,
            &format!(
                "{per_proc} connections in one process need about {} open files, but the limit is {limit}: \
                 use --procs {} (or raise ulimit -n)",
                per_proc + 32,
                (args.connections as u64).div_ceil(limit.saturating_sub(32).max(1))
            ),
        );
    }

    let info = RunInfo {
        tool: TOOL,
        proto: target.proto.name(),
        address: target.addr.to_string(),
        channel: args.channel.clone(),
        procs: args.procs,
        sources: args.sources,
    };
    let mut opts = SubOptions {
        proto: target.proto,
        addr: target.addr,
        host: target.host.clone(),
        channel: args.channel.clone(),
        channels: args.channels,
        http_path: target.http_path.clone(),
        range: 0..args.connections,
        count: args.count,
        duration: args.duration,
        idle_timeout: args.idle_timeout,
        timeout: args.timeout,
        setup_timeout: args.setup_timeout,
        sources: args.sources,
        http10: args.http10,
        auth: target.auth.clone(),
        expect_type: args.expect_type.clone(),
        tls: target.tls.clone(),
        concurrency: args.concurrency,
        interval: args.interval,
    };

    if let Some(i) = args.worker_index {
        net::install_stop_handler(true);
        net::die_with_parent();
        opts.range = workers::share(args.connections, args.procs, i);
        opts.interval = Duration::from_secs(1).min(args.interval);
        match subscriber::run(&opts, &mut workers::worker_report) {
            Ok(t) => workers::worker_done(&t),
            Err(e) => {
                eprintln!("{TOOL}: worker {i}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }

    net::install_stop_handler(false);
    let announcer = std::cell::RefCell::new((!args.no_announce).then(|| {
        let channel = args
            .ready_channel
            .clone()
            .unwrap_or_else(|| ready::default_channel(&args.channel));
        Announcer::new(ready::Announcer::new(&target, &channel))
    }));
    let announce = |subscribed: u64| {
        if let Some(a) = announcer.borrow_mut().as_mut() {
            a.tell(subscribed);
        }
    };
    let mut progress = Progress::new(args.connections as u64);
    let totals = if args.procs > 1 {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let mut on_ready = |s: u64, f: u64, secs: f64| {
            print_ready(s, f, args.connections as u64, secs);
            announce(s);
        };
        let mut on_tick = |el: f64, sub: u64, rec: u64, err: u64, h: &Histogram| {
            progress.tick(el, sub, rec, err, h);
            announce(sub);
        };
        let mut on_subscribed = |sub: u64| announce(sub);
        workers::run_parent(
            &argv,
            args.procs,
            args.connections,
            args.count,
            args.interval,
            workers::ParentReports {
                on_ready: &mut on_ready,
                on_tick: &mut on_tick,
                on_subscribed: &mut on_subscribed,
            },
        )
    } else {
        subscriber::run(&opts, &mut |r| match r {
            Report::Ready {
                subscribed,
                failed,
                secs,
            } => {
                print_ready(subscribed, failed, args.connections as u64, secs);
                announce(subscribed);
            }
            Report::Subscribed { subscribed } => announce(subscribed),
            Report::Tick {
                elapsed_s,
                subscribed,
                received,
                errors,
                interval,
            } => {
                progress.tick(elapsed_s, subscribed, received, errors, interval);
                announce(subscribed);
            }
        })
    };
    let totals: SubTotals = totals.unwrap_or_else(|e| {
        eprintln!("{TOOL}: {e}");
        std::process::exit(1);
    });
    if args.json {
        println!("{}", report::sub_json(&info, &totals));
    } else {
        print!("{}", report::sub_human(&info, &totals));
    }
    if let Some(f) = totals.failure() {
        eprintln!("{TOOL}: FAILED: {f}");
        std::process::exit(1);
    }
}

fn print_ready(subscribed: u64, failed: u64, total: u64, secs: f64) {
    eprintln!("{TOOL}: ready: {subscribed} of {total} connections subscribed ({failed} failed) in {secs:.2} s");
}

/// Announces readiness at most once a second, and says once when it
/// cannot (the run goes on: announcing is a courtesy to flood-pub).
struct Announcer {
    inner: ready::Announcer,
    last: Option<std::time::Instant>,
    warned: bool,
}

impl Announcer {
    fn new(inner: ready::Announcer) -> Announcer {
        Announcer {
            inner,
            last: None,
            warned: false,
        }
    }

    fn tell(&mut self, subscribed: u64) {
        let now = std::time::Instant::now();
        if subscribed == 0
            || self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(900))
        {
            return;
        }
        self.last = Some(now);
        if let Err(e) = self.inner.announce(subscribed) {
            if !self.warned {
                eprintln!("{TOOL}: cannot announce readiness: {e}");
                self.warned = true;
            }
        }
    }
}

/// Turns cumulative counts into per-interval rates.
struct Progress {
    total: u64,
    last_received: u64,
    last_elapsed: f64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            last_received: 0,
            last_elapsed: 0.0,
        }
    }

    fn tick(&mut self, elapsed: f64, subscribed: u64, received: u64, errors: u64, h: &Histogram) {
        let dt = (elapsed - self.last_elapsed).max(1e-3);
        let rate = received.saturating_sub(self.last_received) as f64 / dt;
        self.last_received = received;
        self.last_elapsed = elapsed;
        eprintln!(
            "{}",
            report::sub_progress(elapsed, subscribed, self.total, received, rate, h, errors)
        );
    }
}
