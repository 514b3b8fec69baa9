//! `switchboard-cli`: the command-line client for switchboard's line
//! protocol: `send`, `ready` and `query` on queue addresses, `publish` and
//! `subscribe` on channels.
//!
//! Owns argument parsing, reading bodies from stdin, printing what arrives
//! and exit codes (0 done, 1 a wait timed out, 2 an error). All wire work
//! goes through `switchboard::client`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard::client::{host_of, tls_config, Client, Error, Event, Message, Publication};

const EXAMPLES: &str = "\
Examples:
  A worker and a caller (the caller's query carries a fresh reply address):
    switchboard-cli ready 60 greeter          # terminal 1: waits, then prints
                                              #   > 5 60 greeter 1F0A9C2E.1
                                              #   hello
    switchboard-cli query hello 60 greeter    # terminal 2: waits for the answer
    switchboard-cli send 'hi yourself' 60 1F0A9C2E.1
                                              # terminal 1 answers; terminal 2 prints
                                              #   > 11 60 1F0A9C2E.1
                                              #   hi yourself

  A message left for whoever comes next (it waits up to 30 s):
    switchboard-cli send 'job 17' 30 jobs
    switchboard-cli ready --body-only 5 jobs urgent-jobs

  Channels (every current subscriber gets a copy; nothing is kept):
    switchboard-cli subscribe news weather
    switchboard-cli publish news 'extra!' --type text/plain
    date | switchboard-cli publish news -

  A Unix socket instead of TCP (a server started with --line-unix PATH):
    switchboard-cli --unix /tmp/switchboard.sock ready 10 jobs

  TLS (a server started with --line-tls-listen 127.0.0.1:9814), trusting
  the CA certificate(s) in ca.pem:
    switchboard-cli --tls --ca ca.pem --address 127.0.0.1:9814 subscribe news
    switchboard-cli --tls --ca ca.pem --address 127.0.0.1:9814 \
        --server-name bus.example publish news 'hello'
  The server's certificate must chain to a CA in the file, be valid now,
  and name the host of --address (an IP address or a DNS name) or the
  --server-name given.

Output:
  ready and query print a message as the protocol frames it, with a plain
  newline:  a line `> LEN TIMEOUT TO [REPLY]`, then, when LEN > 0, the LEN
  body bytes and a newline. A timeout prints `*`. With --body-only only the
  body bytes are printed, exactly.
  subscribe prints each publication as a line `! LEN CHANNEL TYPE`, then,
  when LEN > 0, the body and a newline; with --body-only, the body and a
  newline.

Exit status:
  0  done
  1  ready or query timed out
  2  error: bad arguments, cannot connect (the server's TLS certificate
     refused included), or the server refused a command";

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
        to every current subscriber).\n\n\
        A BODY of `-` is read from standard input. A body that starts \
        with `-` can be given after `--`."
)]
struct Cli {
    /// The server's line-protocol TCP door
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9813"
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a message to an address, without waiting for an answer
    ///
    /// The message waits up to TIMEOUT seconds for a receiver (a `ready`
    /// or a handler) and is dropped after that.
    Send {
        /// The message body; `-` reads it from standard input
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// Seconds the message may wait for a receiver
        #[arg(value_name = "TIMEOUT")]
        timeout_s: u64,
        /// The address to send to
        to: String,
        /// Where the receiver should send its answer
        reply: Option<String>,
    },

    /// Wait for one message on any of 1 to 8 addresses and print it
    ///
    /// Prints `> LEN TIMEOUT TO [REPLY]`, then the body and a newline. On
    /// timeout prints `*` and exits with status 1.
    Ready {
        #[command(flatten)]
        output: MessageOutput,
        /// Seconds to wait for a message
        #[arg(value_name = "TIMEOUT")]
        timeout_s: u64,
        /// The addresses to wait on (1 to 8)
        #[arg(value_name = "ADDR", required = true, num_args = 1..=8)]
        addrs: Vec<String>,
    },

    /// Send a message with a fresh reply address and print the answer
    ///
    /// Prints the answer as `ready` does. Without an answer within TIMEOUT
    /// seconds prints `*` and exits with status 1.
    Query {
        #[command(flatten)]
        output: MessageOutput,
        /// The message body; `-` reads it from standard input
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// Seconds to wait, for a receiver and for the answer
        #[arg(value_name = "TIMEOUT")]
        timeout_s: u64,
        /// The address to send to
        to: String,
    },

    /// Publish a message to every current subscriber of a channel
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
}

#[derive(Debug, Args)]
struct MessageOutput {
    /// Print only the body bytes, exactly as received (nothing on timeout)
    #[arg(long)]
    body_only: bool,
}

/// Why the program stops early.
#[derive(Debug)]
enum Failure {
    Connect { target: String, err: Error },
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
            } => write!(f, "cannot connect to {target}: {e}"),
            Failure::Connect { target, err } => write!(f, "cannot connect to {target}: {err}"),
            Failure::Ca(err) => write!(f, "--ca {err}"),
            Failure::Client(err) => err.fmt(f),
            Failure::Stdin(err) => write!(f, "cannot read the body from standard input: {err}"),
            Failure::Stdout(err) => write!(f, "cannot write to standard output: {err}"),
        }
    }
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

fn run(cli: Cli) -> Result<Outcome, Failure> {
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
            timeout_s,
            to,
            reply,
            ..
        } => {
            client.send(body, *timeout_s, to, reply.as_deref())?;
            client.quit()?;
            Ok(Outcome::Done)
        }
        Command::Ready {
            output,
            timeout_s,
            addrs,
        } => {
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let answer = client.ready(*timeout_s, &addrs)?;
            finish_wait(client, answer, output)
        }
        Command::Query {
            output,
            timeout_s,
            to,
            ..
        } => {
            let answer = client.query(body, *timeout_s, to)?;
            finish_wait(client, answer, output)
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
        } => subscribe(client, channels, *count, *body_only, *quiet),
    }
}

fn connect(cli: &Cli) -> Result<Client, Failure> {
    if let Some(path) = &cli.unix {
        return connect_unix(path);
    }
    let connected = match (cli.tls, &cli.ca) {
        // clap refuses --tls without --ca; say so again rather than fall
        // back to plaintext.
        (true, None) => Err(Error::InvalidInput(
            "--tls needs --ca FILE, the CA certificate(s) to trust".into(),
        )),
        (true, Some(ca)) => {
            let config = tls_config(ca).map_err(Failure::Ca)?;
            let name = cli
                .server_name
                .as_deref()
                .unwrap_or_else(|| host_of(&cli.address));
            Client::connect_tls(&cli.address, name, config)
        }
        (false, _) => Client::connect_tcp(&cli.address),
    };
    connected.map_err(|err| Failure::Connect {
        target: cli.address.clone(),
        err,
    })
}

#[cfg(unix)]
fn connect_unix(path: &std::path::Path) -> Result<Client, Failure> {
    Client::connect_unix(path).map_err(|err| Failure::Connect {
        target: path.display().to_string(),
        err,
    })
}

#[cfg(not(unix))]
fn connect_unix(path: &std::path::Path) -> Result<Client, Failure> {
    Err(Failure::Connect {
        target: path.display().to_string(),
        err: Error::InvalidInput("Unix sockets are not available on this system".into()),
    })
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

/// Prints the answer of `ready` or `query` and says goodbye.
fn finish_wait(
    client: Client,
    answer: Option<Message>,
    output: &MessageOutput,
) -> Result<Outcome, Failure> {
    let mut out = io::stdout().lock();
    let outcome = match &answer {
        Some(m) if output.body_only => {
            out.write_all(&m.body).map_err(Failure::Stdout)?;
            Outcome::Done
        }
        Some(m) => {
            write_message(&mut out, m).map_err(Failure::Stdout)?;
            Outcome::Done
        }
        None if output.body_only => Outcome::TimedOut,
        None => {
            out.write_all(b"*\n").map_err(Failure::Stdout)?;
            Outcome::TimedOut
        }
    };
    out.flush().map_err(Failure::Stdout)?;
    client.quit()?;
    Ok(outcome)
}

fn write_message(out: &mut impl Write, m: &Message) -> io::Result<()> {
    match &m.reply {
        Some(reply) => writeln!(out, "> {} {} {} {}", m.len(), m.timeout_s, m.to, reply)?,
        None => writeln!(out, "> {} {} {}", m.len(), m.timeout_s, m.to)?,
    }
    write_body_line(out, &m.body)
}

fn write_publication(out: &mut impl Write, p: &Publication, body_only: bool) -> io::Result<()> {
    if body_only {
        out.write_all(&p.body)?;
        return out.write_all(b"\n");
    }
    writeln!(out, "! {} {} {}", p.body.len(), p.channel, p.content_type)?;
    write_body_line(out, &p.body)
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
                write_publication(&mut out, &p, body_only)
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
