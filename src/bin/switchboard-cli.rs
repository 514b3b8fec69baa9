//! `switchboard-cli`: the command-line client for switchboard's line
//! protocol (`send`, `ready` and `query` on queue addresses, `publish` and
//! `subscribe` on channels) and for the message-switch API (`list`,
//! `diagnostics`, `call`, `serve`, `ack`, `destroy`, `trace`, with
//! `--switch`).
//!
//! Owns argument parsing, reading bodies from stdin, running `serve`'s
//! program, printing what arrives and exit codes (0 done, 1 a wait timed
//! out, 2 an error). All wire work goes through `switchboard::client`.

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

  call prints the response's payload and a newline. serve runs PROGRAM
  (with `sh -c`) once per request, the payload on its standard input, and
  answers with its standard output (one final newline removed), then
  acknowledges the request.

Exit status:
  0  done
  1  ready, query or call timed out
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
    /// message, who sent it and how long ago.
    Diagnostics {
        /// Print the server's JSON document instead
        #[arg(long)]
        json: bool,
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

/// Why the program stops early.
#[derive(Debug)]
enum Failure {
    Connect {
        target: String,
        err: Error,
    },
    /// A message-switch command failed in a way the user should read.
    Switch(String),
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
            Failure::Switch(what) => f.write_str(what),
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
    if is_switch_command(&cli.command) {
        return switch_cli::run(&cli.switch, &cli.command);
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

    pub fn run(target: &str, command: &Command) -> Result<Outcome, Failure> {
        match command {
            Command::List { prefix, alive } => {
                let names = session(target)?.list(prefix, *alive)?;
                let mut o = io::stdout().lock();
                for n in names {
                    out(writeln!(o, "{n}"))?;
                }
                Ok(Outcome::Done)
            }
            Command::Diagnostics { json, verbose } => {
                let d = connect(target)?.diagnostics()?;
                let text = if *json {
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
