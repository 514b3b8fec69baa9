//! `switchboard-cli`: the command-line client for switchboard's line
//! protocol (`send`, `ready` and `query` on queue addresses, `publish` and
//! `subscribe` on channels), for the HTTP bus' stats page (`stats`) and for
//! the message-switch API (`list`, `diagnostics`, `call`, `serve`, `ack`,
//! `destroy`, `trace`, with `--switch`).
//!
//! Owns argument parsing, reading bodies from stdin, running `serve`'s
//! program, printing what arrives (as the protocol frames it, or as JSON,
//! with or without time stamps) and exit codes (0 done, 1 a wait timed out,
//! 2 an error). All wire work goes through `switchboard::client`.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use switchboard::client::{host_of, tls_config, Client, Error, Event, Message, Publication};

const EXAMPLES: &str = "\
Examples:
  A worker and a caller (the caller's query carries a fresh reply address):
    switchboard-cli ready greeter             # terminal 1: waits, then prints
                                              #   > 5 30 greeter 1F0A9C2E.1
                                              #   hello
    switchboard-cli query greeter hello       # terminal 2: waits for the answer
    switchboard-cli send 1F0A9C2E.1 'hi yourself'
                                              # terminal 1 answers; terminal 2 prints
                                              #   > 11 30 1F0A9C2E.1
                                              #   hi yourself

  A message left for whoever comes next (it waits up to 60 s):
    switchboard-cli send jobs 'job 17' --timeout 60
    switchboard-cli ready --body-only --timeout 5 jobs urgent-jobs

  Channels (every current subscriber gets a copy; nothing is kept):
    switchboard-cli sub news weather
    switchboard-cli pub news 'extra!' --type text/plain
    date | switchboard-cli publish news -
    switchboard-cli sub --json --timestamps news   # one JSON object a line

  The server's counters (its HTTP bus, 127.0.0.1:8888 by default):
    switchboard-cli stats
    switchboard-cli stats --bus 127.0.0.1:8888 --json

  A Unix socket instead of TCP (a server started with --line-unix PATH):
    switchboard-cli --unix /tmp/switchboard.sock ready jobs

  message-switch's RPC pattern (a server started with
  --switch-listen 127.0.0.1:8080):
    switchboard-cli list                      # no queues yet
    switchboard-cli call foo --body hello     # blocks until foo is served
    switchboard-cli diagnostics               # shows the queued request
    switchboard-cli serve foo --program /bin/cat
                                              # the call prints `hello`
    switchboard-cli trace                     # follows sends, deliveries, acks

  TLS (a server started with --line-tls-listen 127.0.0.1:9814), trusting
  the CA certificate(s) in ca.pem:
    switchboard-cli --tls --ca ca.pem --address 127.0.0.1:9814 subscribe news
    switchboard-cli --tls --ca ca.pem --address 127.0.0.1:9814 \\
        --server-name bus.example publish news 'hello'
  The server's certificate must chain to a CA in the file, be valid now,
  and name the host of --address (an IP address or a DNS name) or the
  --server-name given.

Addresses:
  --address, --bus and --switch take HOST:PORT (127.0.0.1:9813,
  localhost:9813, [::1]:9813), or :PORT or PORT alone for 127.0.0.1.
  Before its first command the client checks that --address is a
  line-protocol door: an HTTP door, a port nobody listens on, or a server
  that does not answer within --connect-timeout is an error that names
  the address.

Short flags mean the same here as in flood-pub and flood-sub: -a the
  address, -t the content type; -n is a number of messages (subscribe's
  --count; the flood tools have --connections and no -n), -w a wait in
  seconds (--timeout), -q quiet, -v verbose.

Output:
  ready and query print a message as the protocol frames it, with a plain
  newline:  a line `> LEN TIMEOUT TO [REPLY]`, then, when LEN > 0, the LEN
  body bytes and a newline. A timeout prints `*`. With --body-only only the
  body bytes are printed, exactly.
  subscribe prints each publication as a line `! LEN CHANNEL TYPE`, then,
  when LEN > 0, the body and a newline; with --body-only, the body and a
  newline.
  --timestamps puts the time of arrival (UTC, RFC 3339, milliseconds)
  before each such line. --json prints one JSON object a line instead:
  {\"to\",\"timeout\",\"reply\",\"body\"} for a message, {\"timed_out\":true}
  for a timeout, {\"channel\",\"type\",\"body\"} for a publication, with
  \"time\" under --timestamps; a body that is not UTF-8 comes as
  \"body_base64\".

  stats prints the bus' counters, one `NAME VALUE` line each (nested
  names joined with dots); with --json, the server's JSON on one line.

  call prints the response's payload and a newline. serve runs PROGRAM
  (with `sh -c`) once per request, the payload on its standard input, and
  answers with its standard output (one final newline removed), then
  acknowledges the request.

Exit status:
  0  done
  1  ready, query or call timed out
  2  error: bad arguments, cannot connect (the server's TLS certificate
     refused, or the address not a line-protocol door, included), or the
     server refused a command";

/// The most of a stats answer read, in bytes.
const STATS_LIMIT: u64 = 1024 * 1024;

/// How long `send`, `ready` and `query` wait when no --timeout is given.
const DEFAULT_TIMEOUT_S: u64 = 30;

/// Command-line client for the switchboard message bus (line protocol).
#[derive(Debug, Parser)]
#[command(
    name = "switchboard-cli",
    version,
    after_long_help = EXAMPLES,
    long_about = "Command-line client for the switchboard message bus.\n\n\
        Speaks the line protocol: send, ready and query move messages \
        through queue addresses (each message goes to exactly one \
        receiver); publish and subscribe use channels (each message goes \
        to every current subscriber). The address or channel comes first, \
        then the body.\n\n\
        A BODY of `-` is read from standard input. A body that starts \
        with `-` can be given after `--`."
)]
struct Cli {
    /// The server's line-protocol door (HOST:PORT, :PORT or PORT)
    #[arg(
        long,
        short = 'a',
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9813",
        value_parser = parse_address
    )]
    address: String,

    /// Connect to this Unix socket instead of TCP
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "address")]
    unix: Option<PathBuf>,

    /// Speak TLS to --address (a server's line-protocol TLS door); needs --ca
    #[arg(long, global = true, requires = "ca", conflicts_with = "unix")]
    tls: bool,

    /// With --tls: PEM file of the CA certificate(s) to trust for the
    /// server's certificate
    #[arg(long, global = true, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,

    /// With --tls: the name the server's certificate must be valid for
    /// [default: the host part of --address]
    #[arg(long, global = true, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,

    /// Seconds to wait for the server to accept the connection and answer
    /// the first command
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    connect_timeout: u64,

    /// Print what arrives as one JSON object a line
    #[arg(long, global = true)]
    json: bool,

    /// Put the time of arrival (UTC) before what arrives
    #[arg(long, global = true)]
    timestamps: bool,

    /// Authenticate with the secret or token held in this environment
    /// variable (`@ CREDENTIAL`, for a server started with --secret or
    /// --token-key); nothing is sent when it is unset or empty
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        default_value = "SWITCHBOARD_CREDENTIAL"
    )]
    credential_env: String,

    /// The server's HTTP bus, for stats (HOST:PORT, :PORT or PORT)
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8888",
        value_parser = parse_address
    )]
    bus: String,

    /// The server's message-switch API door (`--switch-listen`), for list,
    /// diagnostics, call, serve, ack, destroy and trace; a path with a `/`
    /// is a Unix socket (`--switch-unix`)
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT|PATH",
        default_value = "127.0.0.1:8080"
    )]
    switch: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a message to an address, without waiting for an answer
    ///
    /// The message waits up to --timeout seconds for a receiver (a `ready`
    /// or a handler) and is dropped after that.
    Send {
        /// The address to send to
        to: String,
        /// The message body; `-` reads it from standard input
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// Seconds the message may wait for a receiver
        #[arg(long, short = 'w', value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_S)]
        timeout: u64,
        /// Where the receiver should send its answer
        #[arg(long, value_name = "ADDR")]
        reply: Option<String>,
        #[arg(hide = true, allow_hyphen_values = true)]
        old_order: Vec<String>,
    },

    /// Wait for one message on any of 1 to 8 addresses and print it
    ///
    /// Prints `> LEN TIMEOUT TO [REPLY]`, then the body and a newline. On
    /// timeout prints `*` and exits with status 1.
    Ready {
        #[command(flatten)]
        output: MessageOutput,
        /// Seconds to wait for a message
        #[arg(long, short = 'w', value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_S)]
        timeout: u64,
        /// The addresses to wait on (1 to 8)
        #[arg(value_name = "ADDR", required = true)]
        addrs: Vec<String>,
    },

    /// Send a message with a fresh reply address and print the answer
    ///
    /// Prints the answer as `ready` does. Without an answer within
    /// --timeout seconds prints `*` and exits with status 1.
    Query {
        #[command(flatten)]
        output: MessageOutput,
        /// The address to send to
        to: String,
        /// The message body; `-` reads it from standard input
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// Seconds to wait, for a receiver and for the answer
        #[arg(long, short = 'w', value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_S)]
        timeout: u64,
        #[arg(hide = true, allow_hyphen_values = true)]
        old_order: Vec<String>,
    },

    /// Publish a message to every current subscriber of a channel
    #[command(visible_alias = "pub")]
    Publish {
        /// The channel
        channel: String,
        /// The message body; `-` reads it from standard input
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// The body's content type, written without whitespace
        /// (`text/plain;charset=utf-8`) [server default:
        /// application/octet-stream]
        #[arg(long = "type", short = 't', value_name = "CONTENT-TYPE")]
        content_type: Option<String>,
    },

    /// Subscribe to channels and print each message as it arrives
    ///
    /// Runs until interrupted, or until --count messages were printed.
    /// Once the server has taken the subscriptions, `subscribed: CHANNEL...`
    /// is written to standard error (unless --quiet).
    #[command(visible_alias = "sub")]
    Subscribe {
        /// Exit after printing this many messages
        #[arg(long, short = 'n', value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Print only each body, followed by a newline
        #[arg(long)]
        body_only: bool,
        /// Do not announce the subscription on standard error
        #[arg(long, short = 'q')]
        quiet: bool,
        /// The channels to subscribe to
        #[arg(value_name = "CHANNEL", required = true)]
        channels: Vec<String>,
    },

    /// Print the server's counters (the HTTP bus' stats page, at --bus)
    Stats {
        /// The shared secret of a server started with --secret (sent as
        /// HTTP Basic auth)
        #[arg(long, value_name = "S")]
        secret: Option<String>,
    },

    /// message-switch: list queue names
    List {
        /// Only names starting with this
        #[arg(default_value = "")]
        prefix: String,
        /// Only queues some consumer has transferred from
        #[arg(long)]
        alive: bool,
    },

    /// message-switch: what the switch holds, for a person
    ///
    /// Which services are running, which were called but never started,
    /// which stopped transferring (crashed or stuck), with each queued
    /// message, who sent it and how long ago. With --json, the server's
    /// JSON document.
    Diagnostics {
        /// Print whole payloads (otherwise cut to 70 bytes)
        #[arg(long, short = 'v')]
        verbose: bool,
    },

    /// message-switch: call a service and print its response
    ///
    /// Sends a request to queue NAME (created if need be) with a reply
    /// queue of this process's own, and waits for the response.
    Call {
        /// The service's queue
        name: String,
        /// The request text
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        body: Option<String>,
        /// A file holding the request text
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Seconds to wait for the response [default: for ever]
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },

    /// message-switch: serve calls to queue NAME with a program
    ///
    /// Runs until interrupted.
    Serve {
        /// The service's queue (created if need be)
        name: String,
        /// The command run for each request (`sh -c COMMAND`): the
        /// payload on its standard input, the response its standard output
        #[arg(long, value_name = "COMMAND")]
        program: String,
    },

    /// message-switch: acknowledge (delete) message ID of queue NAME
    Ack { name: String, id: u64 },

    /// message-switch: delete queue NAME and its messages
    Destroy { name: String },

    /// message-switch: print trace events (sends, deliveries, acks) as they
    /// happen
    Trace {
        /// Print the events the server holds and exit
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Args)]
struct MessageOutput {
    /// Print only the body bytes, exactly as received (nothing on timeout)
    #[arg(long)]
    body_only: bool,
}

/// `HOST:PORT` as given; `PORT` and `:PORT` mean 127.0.0.1 (as the
/// server's listen flags do).
fn parse_address(s: &str) -> Result<String, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| format!("`{s}`: a port is at most 65535"))?;
        return Ok(format!("127.0.0.1:{port}"));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!(
            "`{s}` is not HOST:PORT (127.0.0.1:9813, localhost:9813, [::1]:9813), :PORT or PORT"
        )),
    }
}

/// The host of `HOST:PORT` as written (brackets of an IPv6 address kept).
fn host_part(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Why the program stops early.
#[derive(Debug)]
enum Failure {
    Connect {
        target: String,
        err: Error,
    },
    /// The address answered, but not as a line-protocol door.
    NotLineDoor {
        target: String,
        why: String,
    },
    /// A message-switch or stats command failed in a way the user should
    /// read.
    Switch(String),
    Usage(String),
    Ca(Error),
    Client(Error),
    Stdin(io::Error),
    Stdout(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect {
                target,
                err: Error::Io(e),
            } if e.kind() == io::ErrorKind::ConnectionRefused => write!(
                f,
                "cannot connect to {target}: connection refused (nothing listens there: \
                 is switchboard running, with that door open?)"
            ),
            Failure::Connect {
                target,
                err: Error::Io(e),
            } if is_timeout(e) => write!(f, "cannot connect to {target}: no answer in time ({e})"),
            Failure::Connect {
                target,
                err: Error::Io(e),
            } => write!(f, "cannot connect to {target}: {e}"),
            Failure::Connect { target, err } => write!(f, "cannot connect to {target}: {err}"),
            Failure::NotLineDoor { target, why } => f.write_str(&format!("{target} {why}")),
            Failure::Ca(err) => write!(f, "--ca {err}"),
            Failure::Switch(what) | Failure::Usage(what) => f.write_str(what),
            Failure::Client(err) => err.fmt(f),
            Failure::Stdin(err) => write!(f, "cannot read the body from standard input: {err}"),
            Failure::Stdout(err) => write!(f, "cannot write to standard output: {err}"),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Client(err)
    }
}

/// How a run that did not fail ended.
enum Outcome {
    Done,
    TimedOut,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut) => ExitCode::from(1),
        // A reader that went away (`| head`) is not our error.
        Err(Failure::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-cli: {e}");
            ExitCode::from(2)
        }
    }
}

/// The old `send BODY TIMEOUT TO [REPLY]` and `query BODY TIMEOUT TO`
/// orders, and `ready TIMEOUT ADDR...`, are refused with the new one
/// rather than read as something else.
fn check_order(command: &Command) -> Result<(), Failure> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match command {
        Command::Send { old_order, .. } if !old_order.is_empty() => Err(Failure::Usage(
            "send takes TO BODY [--timeout SECONDS] [--reply ADDR] \
             (the address first: `send jobs 'job 17' --timeout 30`)"
                .into(),
        )),
        Command::Query { old_order, .. } if !old_order.is_empty() => Err(Failure::Usage(
            "query takes TO BODY [--timeout SECONDS] \
             (the address first: `query clock 'what time is it?' --timeout 30`)"
                .into(),
        )),
        Command::Ready { addrs, .. } => match addrs.split_first() {
            Some((first, rest)) if !rest.is_empty() && digits(first) => {
                Err(Failure::Usage(format!(
                    "ready takes ADDR... [--timeout SECONDS]: `{first}` looks like a timeout \
                     (`ready {} --timeout {first}`)",
                    rest.join(" ")
                )))
            }
            _ if addrs.len() > switchboard::client::MAX_READY_ADDRS => {
                Err(Failure::Usage(format!(
                    "ready waits on at most {} addresses",
                    switchboard::client::MAX_READY_ADDRS
                )))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<Outcome, Failure> {
    check_order(&cli.command)?;
    if is_switch_command(&cli.command) {
        return switch_cli::run(&cli.switch, &cli.command, cli.json);
    }
    let printer = Printer {
        json: cli.json,
        timestamps: cli.timestamps,
    };
    if let Command::Stats { secret } = &cli.command {
        return stats(&cli.bus, secret.as_deref(), cli.connect_timeout, &printer);
    }
    // Read stdin before connecting: a slow producer should not hold a
    // connection open.
    let body = match &cli.command {
        Command::Send { body, .. }
        | Command::Query { body, .. }
        | Command::Publish { body, .. } => Some(read_body(body)?),
        _ => None,
    };
    let body = body.as_deref().unwrap_or_default();
    let mut client = connect(&cli)?;
    match &cli.command {
        Command::Send {
            timeout, to, reply, ..
        } => {
            client.send(body, *timeout, to, reply.as_deref())?;
            client.quit()?;
            Ok(Outcome::Done)
        }
        Command::Ready {
            output,
            timeout,
            addrs,
        } => {
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let answer = client.ready(*timeout, &addrs)?;
            finish_wait(client, answer, output, &printer)
        }
        Command::Query {
            output,
            timeout,
            to,
            ..
        } => {
            let answer = client.query(body, *timeout, to)?;
            finish_wait(client, answer, output, &printer)
        }
        Command::Publish {
            channel,
            content_type,
            ..
        } => {
            client.publish(channel, content_type.as_deref(), body)?;
            client.quit()?;
            Ok(Outcome::Done)
        }
        Command::Subscribe {
            count,
            body_only,
            quiet,
            channels,
        } => subscribe(client, channels, *count, *body_only, *quiet, &printer),
        // Handled above.
        _ => Ok(Outcome::Done),
    }
}

fn is_switch_command(c: &Command) -> bool {
    matches!(
        c,
        Command::List { .. }
            | Command::Diagnostics { .. }
            | Command::Call { .. }
            | Command::Serve { .. }
            | Command::Ack { .. }
            | Command::Destroy { .. }
            | Command::Trace { .. }
    )
}

/// Connects, then proves the far end speaks the line protocol with one
/// round trip (a zero-second `<` on a fresh address) bounded by
/// --connect-timeout: an HTTP door, or a server that answers nothing,
/// fails here with the address named, before any command is sent.
fn connect(cli: &Cli) -> Result<Client, Failure> {
    let (target, connected) = match &cli.unix {
        Some(path) => (path.display().to_string(), connect_unix(path)),
        None => (cli.address.clone(), connect_tcp(cli, tls_setup(cli)?)),
    };
    let mut client = connected.map_err(|err| Failure::Connect {
        target: target.clone(),
        err,
    })?;
    let patience = Duration::from_secs(cli.connect_timeout);
    client.set_read_timeout(Some(patience))?;
    if let Some(credential) = std::env::var(&cli.credential_env)
        .ok()
        .filter(|c| !c.is_empty())
    {
        client.authenticate(&credential)?;
    }
    match client.sync() {
        Ok(()) => {}
        // A token that does not let it wait on the probe's address: the
        // server spoke the line protocol all the same.
        Err(Error::Server(reason)) if reason.starts_with("forbidden") => {}
        Err(Error::HttpDoor(status)) => {
            let port = if cli.tls { 9814 } else { 9813 };
            return Err(Failure::NotLineDoor {
                why: format!(
                    "is an HTTP door, not the line protocol (it answered `{status}`; \
                     try --address {}:{port}, the line door's default port)",
                    host_part(&target)
                ),
                target,
            });
        }
        Err(Error::Io(e)) if is_timeout(&e) => {
            return Err(Failure::NotLineDoor {
                why: format!(
                    "did not answer the line protocol within {} s (--connect-timeout): \
                     is it switchboard's line door?",
                    cli.connect_timeout
                ),
                target,
            })
        }
        Err(Error::Closed) => {
            return Err(Failure::NotLineDoor {
                why: if cli.tls {
                    "closed the connection without answering the line protocol: \
                     is it switchboard's line door over TLS (--line-tls-listen)?"
                        .into()
                } else {
                    "closed the connection without answering the line protocol: \
                     is it switchboard's line door? (a TLS door needs --tls --ca FILE)"
                        .into()
                },
                target,
            })
        }
        Err(e) => return Err(Failure::Connect { target, err: e }),
    }
    client.set_read_timeout(None)?;
    Ok(client)
}

fn connect_tcp(cli: &Cli, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Client, Error> {
    match tls {
        Some(config) => {
            let name = cli
                .server_name
                .as_deref()
                .unwrap_or_else(|| host_of(&cli.address));
            Client::connect_tls(&cli.address, name, config)
        }
        None => Client::connect_tcp(&cli.address),
    }
}

/// The TLS configuration of --tls --ca FILE; none without --tls.
fn tls_setup(cli: &Cli) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    match (cli.tls, &cli.ca) {
        (false, _) => Ok(None),
        // clap refuses --tls without --ca; say so again rather than fall
        // back to plaintext.
        (true, None) => Err(Failure::Usage(
            "--tls needs --ca FILE, the CA certificate(s) to trust".into(),
        )),
        (true, Some(ca)) => tls_config(ca).map(Some).map_err(Failure::Ca),
    }
}

#[cfg(unix)]
fn connect_unix(path: &std::path::Path) -> Result<Client, Error> {
    Client::connect_unix(path)
}

#[cfg(not(unix))]
fn connect_unix(_path: &std::path::Path) -> Result<Client, Error> {
    Err(Error::InvalidInput(
        "Unix sockets are not available on this system".into(),
    ))
}

/// The body argument itself, or all of stdin for `-`.
fn read_body(arg: &str) -> Result<Vec<u8>, Failure> {
    if arg != "-" {
        return Ok(arg.as_bytes().to_vec());
    }
    let mut body = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut body)
        .map_err(Failure::Stdin)?;
    Ok(body)
}

/// How what arrives is printed.
struct Printer {
    json: bool,
    timestamps: bool,
}

impl Printer {
    /// The text before a printed line: the time and a space, or nothing.
    fn stamp(&self) -> String {
        if self.timestamps {
            format!("{} ", utc_now())
        } else {
            String::new()
        }
    }

    /// One JSON object a line, with the time first under --timestamps.
    fn json_line(&self, out: &mut impl Write, fields: Vec<(&str, Value)>) -> io::Result<()> {
        let mut m = Map::new();
        if self.timestamps {
            m.insert("time".into(), Value::String(utc_now()));
        }
        for (k, v) in fields {
            m.insert(k.into(), v);
        }
        writeln!(out, "{}", Value::Object(m))
    }

    fn message(&self, out: &mut impl Write, m: &Message, body_only: bool) -> io::Result<()> {
        if self.json {
            let mut fields = vec![
                ("to", json!(m.to)),
                ("timeout", json!(m.timeout_s)),
                ("reply", json!(m.reply)),
            ];
            fields.push(body_field(&m.body));
            return self.json_line(out, fields);
        }
        if body_only {
            out.write_all(self.stamp().as_bytes())?;
            return out.write_all(&m.body);
        }
        let stamp = self.stamp();
        match &m.reply {
            Some(reply) => writeln!(
                out,
                "{stamp}> {} {} {} {}",
                m.len(),
                m.timeout_s,
                m.to,
                reply
            )?,
            None => writeln!(out, "{stamp}> {} {} {}", m.len(), m.timeout_s, m.to)?,
        }
        write_body_line(out, &m.body)
    }

    fn timed_out(&self, out: &mut impl Write, body_only: bool) -> io::Result<()> {
        if self.json {
            return self.json_line(out, vec![("timed_out", json!(true))]);
        }
        if body_only {
            return Ok(());
        }
        writeln!(out, "{}*", self.stamp())
    }

    fn publication(
        &self,
        out: &mut impl Write,
        p: &Publication,
        body_only: bool,
    ) -> io::Result<()> {
        if self.json {
            let fields = vec![
                ("channel", json!(p.channel)),
                ("type", json!(p.content_type)),
                body_field(&p.body),
            ];
            return self.json_line(out, fields);
        }
        out.write_all(self.stamp().as_bytes())?;
        if body_only {
            out.write_all(&p.body)?;
            return out.write_all(b"\n");
        }
        writeln!(out, "! {} {} {}", p.body.len(), p.channel, p.content_type)?;
        write_body_line(out, &p.body)
    }
}

/// `"body": TEXT`, or `"body_base64"` for bytes that are not UTF-8.
fn body_field(body: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(body) {
        Ok(text) => ("body", json!(text)),
        Err(_) => {
            use base64::Engine;
            (
                "body_base64",
                json!(base64::engine::general_purpose::STANDARD.encode(body)),
            )
        }
    }
}

/// Now, UTC, as `2026-01-31T12:34:56.789Z`.
fn utc_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The calendar date of a count of days since 1970-01-01 (the proleptic
/// Gregorian calendar; days before 1970 do not occur here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that the year starts on 1 March: the leap day is last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Prints the answer of `ready` or `query` and says goodbye.
fn finish_wait(
    client: Client,
    answer: Option<Message>,
    output: &MessageOutput,
    printer: &Printer,
) -> Result<Outcome, Failure> {
    let mut out = io::stdout().lock();
    let outcome = match &answer {
        Some(m) => {
            printer
                .message(&mut out, m, output.body_only)
                .map_err(Failure::Stdout)?;
            Outcome::Done
        }
        None => {
            printer
                .timed_out(&mut out, output.body_only)
                .map_err(Failure::Stdout)?;
            Outcome::TimedOut
        }
    };
    out.flush().map_err(Failure::Stdout)?;
    client.quit()?;
    Ok(outcome)
}

/// The body and a newline; nothing for an empty body, as on the wire.
fn write_body_line(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if body.is_empty() {
        return Ok(());
    }
    out.write_all(body)?;
    out.write_all(b"\n")
}

fn subscribe(
    mut client: Client,
    channels: &[String],
    count: Option<u64>,
    body_only: bool,
    quiet: bool,
    printer: &Printer,
) -> Result<Outcome, Failure> {
    for channel in channels {
        client.subscribe(channel)?;
    }
    // After this the server delivers every publication to us.
    client.sync()?;
    if !quiet {
        eprintln!("subscribed: {}", channels.join(" "));
    }
    let mut printed = 0u64;
    while count.is_none_or(|n| printed < n) {
        match client.next_event()? {
            Event::Publication(p) => {
                let mut out = io::stdout().lock();
                printer
                    .publication(&mut out, &p, body_only)
                    .and_then(|()| out.flush())
                    .map_err(Failure::Stdout)?;
                printed += 1;
            }
            // Nothing but publications is due on a subscribed connection.
            Event::Message(_) | Event::Timeout => {}
        }
    }
    client.quit()?;
    Ok(Outcome::Done)
}

/// `GET /msgbus-stats` on the HTTP bus, printed.
fn stats(
    bus: &str,
    secret: Option<&str>,
    patience_s: u64,
    printer: &Printer,
) -> Result<Outcome, Failure> {
    let v = fetch_stats(bus, secret, Duration::from_secs(patience_s))?;
    let mut out = io::stdout().lock();
    let written = if printer.json {
        writeln!(out, "{v}")
    } else {
        let mut lines = Vec::new();
        flatten("", &v, &mut lines);
        lines.iter().try_for_each(|(k, v)| writeln!(out, "{k} {v}"))
    };
    written
        .and_then(|()| out.flush())
        .map_err(Failure::Stdout)?;
    Ok(Outcome::Done)
}

/// `NAME VALUE` pairs of a JSON document, nested names joined with dots.
fn flatten(prefix: &str, v: &Value, into: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, into);
            }
        }
        Value::String(s) => into.push((prefix.to_string(), s.clone())),
        other => into.push((prefix.to_string(), other.to_string())),
    }
}

fn fetch_stats(bus: &str, secret: Option<&str>, patience: Duration) -> Result<Value, Failure> {
    use std::net::{TcpStream, ToSocketAddrs};
    let failed = |e: io::Error| Failure::Connect {
        target: bus.to_string(),
        err: Error::Io(e),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    let mut stream = None;
    for sa in bus.to_socket_addrs().map_err(failed)? {
        match TcpStream::connect_timeout(&sa, patience) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| failed(last))?;
    s.set_read_timeout(Some(patience)).map_err(failed)?;
    let auth = match secret {
        Some(secret) => {
            use base64::Engine;
            let user = std::env::var("USER").unwrap_or_else(|_| "switchboard-cli".into());
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            format!("Authorization: Basic {token}\r\n")
        }
        None => String::new(),
    };
    let request =
        format!("GET /msgbus-stats HTTP/1.0\r\nHost: {bus}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(failed)?;
    let mut reader = io::BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| {
        if is_timeout(&e) {
            Failure::NotLineDoor {
                target: bus.to_string(),
                why: "did not answer an HTTP request in time: is it switchboard's HTTP bus?".into(),
            }
        } else {
            failed(e)
        }
    })?;
    let status = status.trim_end();
    if !status.starts_with("HTTP/1.") {
        return Err(Failure::NotLineDoor {
            target: bus.to_string(),
            why: format!(
                "is not an HTTP door (it answered `{status}`; the bus is on port 8888 by \
                 default: try --bus {}:8888)",
                host_part(bus)
            ),
        });
    }
    // The stats page is a few KiB; a server that sends more is not one.
    let mut rest = Vec::new();
    reader
        .take(STATS_LIMIT)
        .read_to_end(&mut rest)
        .map_err(failed)?;
    let text = String::from_utf8_lossy(&rest);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if status.split(' ').nth(1) != Some("200") {
        return Err(Failure::Switch(format!(
            "{bus} answered the stats request with `{status}`: {}",
            body.trim()
        )));
    }
    serde_json::from_str(body)
        .map_err(|e| Failure::Switch(format!("{bus}: the stats page is not JSON: {e}")))
}

/// The message-switch commands.
mod switch_cli {
    use std::io::{self, Write};
    use std::process::{Command as Process, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use switchboard::client::switch::{Kind, SwitchClient};

    use super::{Command, Failure, Outcome};

    /// How long one transfer waits before it is asked again.
    const POLL_S: f64 = 5.0;
    /// A service whose last transfer should have returned this long ago
    /// is taken for crashed or stuck (message-switch's rule).
    const STUCK_NS: u64 = 30_000_000_000;
    /// Payload bytes diagnostics prints without --verbose.
    const PAYLOAD_SHOWN: usize = 70;

    fn connect(target: &str) -> Result<SwitchClient, Failure> {
        SwitchClient::connect(target).map_err(|err| Failure::Connect {
            target: target.to_string(),
            err,
        })
    }

    /// This process's session token, also the name of its reply queue.
    fn token() -> String {
        format!("switchboard-cli.{}", std::process::id())
    }

    /// A client logged in to a session of its own.
    fn session(target: &str) -> Result<SwitchClient, Failure> {
        let mut c = connect(target)?;
        c.login(&token())?;
        Ok(c)
    }

    fn out(result: io::Result<()>) -> Result<(), Failure> {
        result.map_err(Failure::Stdout)
    }

    pub fn run(target: &str, command: &Command, json: bool) -> Result<Outcome, Failure> {
        match command {
            Command::List { prefix, alive } => {
                let names = session(target)?.list(prefix, *alive)?;
                let mut o = io::stdout().lock();
                for n in names {
                    out(writeln!(o, "{n}"))?;
                }
                Ok(Outcome::Done)
            }
            Command::Diagnostics { verbose } => {
                let d = connect(target)?.diagnostics()?;
                let text = if json {
                    format!("{d:#}\n")
                } else {
                    summary(&d, *verbose)
                };
                out(io::stdout().lock().write_all(text.as_bytes()))?;
                Ok(Outcome::Done)
            }
            Command::Call {
                name,
                body,
                file,
                timeout,
            } => {
                let payload = match (body, file) {
                    (Some(b), _) => b.as_bytes().to_vec(),
                    (None, Some(path)) => std::fs::read(path)
                        .map_err(|e| Failure::Switch(format!("--file {}: {e}", path.display())))?,
                    (None, None) => {
                        return Err(Failure::Switch("call needs --body or --file".into()))
                    }
                };
                call(target, name, &payload, *timeout)
            }
            Command::Serve { name, program } => serve(target, name, program),
            Command::Ack { name, id } => {
                session(target)?.ack(&(name.clone(), *id))?;
                Ok(Outcome::Done)
            }
            Command::Destroy { name } => {
                session(target)?.destroy(name)?;
                Ok(Outcome::Done)
            }
            Command::Trace { once } => trace(target, *once),
            _ => Ok(Outcome::Done),
        }
    }

    /// The RPC pattern: a reply queue of our own, the service's queue
    /// created in case it is new, the request, then transfers on the reply
    /// queue until the response to our request comes.
    fn call(
        target: &str,
        name: &str,
        payload: &[u8],
        timeout: Option<f64>,
    ) -> Result<Outcome, Failure> {
        // A timeout too large to count (or infinite) waits for ever.
        let deadline = timeout
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
            .and_then(|d| Instant::now().checked_add(d));
        let mut c = session(target)?;
        let reply = c.create_transient(&token())?;
        c.create_persistent(name)?;
        let Some(id) = c.request(name, &reply, payload)? else {
            return Err(Failure::Switch(format!(
                "the queue {name} has been deleted"
            )));
        };
        let mut from: Option<String> = None;
        loop {
            let wait = match deadline {
                None => POLL_S,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
                    if left <= 0.0 {
                        eprintln!("switchboard-cli: no response from {name} in time");
                        return Ok(Outcome::TimedOut);
                    }
                    left.min(POLL_S)
                }
            };
            let t = c.transfer(from.as_deref(), wait, &[&reply])?;
            for m in &t.messages {
                c.ack(&m.id)?;
                if m.kind == Kind::Response(id.clone()) {
                    let mut o = io::stdout().lock();
                    out(writeln!(o, "{}", m.payload))?;
                    out(o.flush())?;
                    return Ok(Outcome::Done);
                }
            }
            from = Some(t.next);
        }
    }

    /// Transfers from the service's queue for ever; each request is
    /// answered with the program's output, then acknowledged.
    fn serve(target: &str, name: &str, program: &str) -> Result<Outcome, Failure> {
        let mut c = session(target)?;
        c.create_persistent(name)?;
        let mut from: Option<String> = None;
        loop {
            let t = c.transfer(from.as_deref(), POLL_S, &[name])?;
            for m in &t.messages {
                if let Kind::Request(reply_to) = &m.kind {
                    let response = run_program(program, m.payload.as_bytes())?;
                    if !reply_to.is_empty() {
                        c.response(reply_to, &m.id, &response)?;
                    }
                }
                c.ack(&m.id)?;
            }
            from = Some(t.next);
        }
    }

    /// `sh -c PROGRAM` with `input` on its standard input; its standard
    /// output, one final newline removed.
    fn run_program(program: &str, input: &[u8]) -> Result<Vec<u8>, Failure> {
        let failed = |e: io::Error| Failure::Switch(format!("--program {program}: {e}"));
        let mut child = Process::new("sh")
            .arg("-c")
            .arg(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(failed)?;
        // Written from a thread: a program that writes before it has read
        // everything must not dead-lock against us.
        let writer = child.stdin.take().map(|mut stdin| {
            let input = input.to_vec();
            std::thread::spawn(move || {
                // A program that does not read its input is its business.
                let _ = stdin.write_all(&input);
            })
        });
        let output = child.wait_with_output().map_err(failed)?;
        if let Some(w) = writer {
            // The writer only ends; its result was ignored on purpose.
            let _ = w.join();
        }
        if !output.status.success() {
            eprintln!("switchboard-cli: --program {program}: {}", output.status);
        }
        let mut stdout = output.stdout;
        if stdout.last() == Some(&b'\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Follows the trace ring, one line per event.
    fn trace(target: &str, once: bool) -> Result<Outcome, Failure> {
        let mut c = connect(target)?;
        let mut from: i64 = 0;
        let mut first_time: Option<f64> = None;
        loop {
            let v = c.trace(from, if once { 0.0 } else { POLL_S })?;
            let events = v.get("events").and_then(Value::as_array).cloned();
            let mut o = io::stdout().lock();
            for pair in events.unwrap_or_default() {
                let (Some(n), Some(e)) = (pair.get(0).and_then(Value::as_i64), pair.get(1)) else {
                    continue;
                };
                from = from.max(n.saturating_add(1));
                let time = e.get("time").and_then(Value::as_f64).unwrap_or(0.0);
                let start = *first_time.get_or_insert(time);
                out(writeln!(o, "{}", event_line(time - start, e)))?;
            }
            out(o.flush())?;
            if once {
                return Ok(Outcome::Done);
            }
        }
    }

    fn field<'a>(e: &'a Value, key: &str) -> &'a str {
        e.get(key).and_then(Value::as_str).unwrap_or("-")
    }

    /// `SECONDS INPUT -> QUEUE -> OUTPUT [PROCESSING] QUEUE.ID:PAYLOAD`.
    fn event_line(seconds: f64, e: &Value) -> String {
        let (input, queue, output) = (field(e, "input"), field(e, "queue"), field(e, "output"));
        let m = e.get("message");
        let tag = m
            .and_then(|m| m.get(0))
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = m.and_then(|m| m.get(1));
        let id_text = match id {
            Some(id) => format!(
                "{}.{}",
                id.get(0).and_then(Value::as_str).unwrap_or("?"),
                id.get(1).and_then(Value::as_u64).unwrap_or(0)
            ),
            None => "?".into(),
        };
        let what = match tag {
            "Ack" => format!("{id_text}:ack"),
            _ => {
                let payload = m
                    .and_then(|m| m.get(2))
                    .and_then(|b| b.get("payload"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{id_text}:{}", payload.escape_debug())
            }
        };
        let processing = e
            .get("processing_time")
            .and_then(Value::as_u64)
            .map(|ns| format!(" ({:.3} s)", ns as f64 / 1e9))
            .unwrap_or_default();
        format!("{seconds:.3} {input} -> {queue} -> {output}{processing} {what}")
    }

    /// "3 mins and 4 seconds ago".
    fn ago(ns: u64) -> String {
        let s = ns / 1_000_000_000;
        let parts = [
            (s / 86_400, "day"),
            (s / 3_600 % 24, "hour"),
            (s / 60 % 60, "min"),
            (s % 60, "second"),
        ];
        let words: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        match words.split_last() {
            None => "less than a second ago".into(),
            Some((last, [])) => format!("{last} ago"),
            Some((last, rest)) => format!("{} and {last} ago", rest.join(", ")),
        }
    }

    #[derive(PartialEq)]
    enum State {
        NeverServed,
        Stuck(u64),
        Served,
    }

    fn state(q: &Value, now: u64) -> State {
        match q.get("next_transfer_expected").and_then(Value::as_u64) {
            None => State::NeverServed,
            Some(t) if t.saturating_add(STUCK_NS) < now => State::Stuck(t),
            Some(_) => State::Served,
        }
    }

    fn queues(d: &Value, key: &str) -> Vec<(String, Value)> {
        d.get(key)
            .and_then(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn contents(q: &Value) -> Vec<Value> {
        q.get("queue_contents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The human summary of a diagnostics document.
    pub fn summary(d: &Value, verbose: bool) -> String {
        let now = d.get("current_time").and_then(Value::as_u64).unwrap_or(0);
        let started = d.get("start_time").and_then(Value::as_u64).unwrap_or(now);
        let permanent = queues(d, "permanent_queues");
        let transient = queues(d, "transient_queues");
        let mut s = format!("Switch started {}\n", ago(now.saturating_sub(started)));
        let section = |s: &mut String, title: &str, list: &[&(String, Value)]| {
            if list.is_empty() {
                return;
            }
            s.push_str(&format!("\n{title}\n"));
            for (name, q) in list {
                queue_lines(s, name, q, now, &transient, verbose);
            }
        };
        if permanent.is_empty() {
            s.push_str("There are no known services (yet).\n");
        } else {
            let of = |want: fn(&State) -> bool| -> Vec<&(String, Value)> {
                permanent
                    .iter()
                    .filter(|(_, q)| want(&state(q, now)))
                    .collect()
            };
            let served = of(|s| *s == State::Served);
            if served.is_empty() {
                s.push_str("No known services are running.\n");
            }
            section(&mut s, "The following services are running:", &served);
            section(
                &mut s,
                "The following services have been called but have never started:",
                &of(|s| *s == State::NeverServed),
            );
            section(
                &mut s,
                "The following services have crashed or are stuck:",
                &of(|s| matches!(s, State::Stuck(_))),
            );
        }
        // Reply queues a caller is waiting on, empty, are not worth a line.
        let awaited: Vec<String> = permanent
            .iter()
            .flat_map(|(_, q)| contents(q))
            .filter_map(|e| {
                let kind = e.get(1)?.get("message")?.get("kind")?;
                (kind.get(0)?.as_str()? == "Request")
                    .then(|| kind.get(1)?.as_str().map(str::to_string))?
            })
            .collect();
        let shown: Vec<&(String, Value)> = transient
            .iter()
            .filter(|(n, q)| !awaited.contains(n) || !contents(q).is_empty())
            .collect();
        section(&mut s, "Temporary queues holding replies:", &shown);
        s
    }

    fn queue_lines(
        s: &mut String,
        name: &str,
        q: &Value,
        now: u64,
        transient: &[(String, Value)],
        verbose: bool,
    ) {
        match state(q, now) {
            State::Stuck(t) => s.push_str(&format!(
                "- {name}: crashed or stuck, expected back {}\n",
                ago(now.saturating_sub(t))
            )),
            _ => s.push_str(&format!("- {name}\n")),
        }
        for e in contents(q) {
            let id = e
                .get(0)
                .and_then(|id| id.get(1))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let entry = e.get(1).cloned().unwrap_or(Value::Null);
            let origin = match entry.get("origin") {
                Some(o) if o.get(0).and_then(Value::as_str) == Some("Anonymous") => {
                    format!(
                        "anonymous-{}",
                        o.get(1).and_then(Value::as_str).unwrap_or("?")
                    )
                }
                Some(o) => o.get(1).and_then(Value::as_str).unwrap_or("?").to_string(),
                None => "?".into(),
            };
            let sent = entry.get("time").and_then(Value::as_u64).unwrap_or(now);
            s.push_str(&format!(
                "    {id}: from {origin}, sent {}\n",
                ago(now.saturating_sub(sent))
            ));
            let message = entry.get("message").cloned().unwrap_or(Value::Null);
            let payload = message.get("payload").and_then(Value::as_str).unwrap_or("");
            let cut: String = if verbose {
                payload.to_string()
            } else {
                payload.chars().take(PAYLOAD_SHOWN).collect()
            };
            s.push_str(&format!("      - {}\n", cut.escape_debug()));
            let kind = message.get("kind");
            if kind.and_then(|k| k.get(0)).and_then(Value::as_str) != Some("Request") {
                continue;
            }
            let Some(reply) = kind.and_then(|k| k.get(1)).and_then(Value::as_str) else {
                continue;
            };
            if reply.is_empty() {
                continue;
            }
            match transient.iter().find(|(n, _)| n == reply) {
                None => s.push_str(&format!("      - {reply} appears to have gone away\n")),
                Some((_, rq)) => match state(rq, now) {
                    State::NeverServed => {
                        s.push_str(&format!("      - {reply} has not started waiting\n"))
                    }
                    State::Stuck(t) => s.push_str(&format!(
                        "      - {reply} crashed or is stuck, expected back {}\n",
                        ago(now.saturating_sub(t))
                    )),
                    State::Served => {
                        s.push_str(&format!("      - {reply} is waiting for a response\n"))
                    }
                },
            }
        }
    }
}
