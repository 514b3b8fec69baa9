//! The examples of the README and of `docs/` run against the real server:
//! a doc change that breaks one fails here.
//!
//! Every fenced block of the README and of `docs/*.md` has a marker, an
//! HTML comment on the line before it, that says what runs it
//! (`every_block_of_the_docs_is_run_or_says_why` fails on a block without
//! one, and keeps the inventory table of docs/testing.md up to date):
//!
//! - `<!-- runs in CI -->`: a console session (below);
//! - `<!-- runs in CI: what background command N above prints -->`: what
//!   a background command of the console block above has printed so far
//!   (it keeps running: a subscriber);
//! - `<!-- runs in CI: transcript -->`: connections and their lines (see
//!   `transcript_steps`): `$ switchboard ARGS` starts the server (default:
//!   no flags), `A $ nc -C HOST PORT` opens connection A (a connection
//!   used without one goes to the line door), `A> TEXT` is what A sends,
//!   `A< TEXT` what A must receive next, `A< (closed)` that the server
//!   closed A, `A> (close)` that A goes away. Two or more spaces start a
//!   comment. A line ends in CR LF unless it shows its end: `\r\n` stands
//!   for CR LF anywhere, `\n` at the end of a line for LF, and a line with
//!   an escape is sent as it is. Before a connection sends after another
//!   one did, a barrier (two round trips on a private connection) makes
//!   sure the server has run what came before; at the end, after a
//!   barrier, no connection may hold anything the doc does not show;
//! - `<!-- runs in CI: the answer to `REQUEST` -->`: the block (escapes as
//!   above, line breaks of the block ignored) is exactly what the bus
//!   answers REQUEST; `the answers to `R1`, `R2`…`: each line of the block
//!   is the answer to one request, each on a connection of its own;
//! - `<!-- runs in CI: sent on one line connection, answered by nothing -->`;
//! - `nginx in front of the bus`, `--config and --print-config`,
//!   `promtool check config`, the webhook kinds, `JSON`: see the tests
//!   that run them below;
//! - `<!-- … by PATH -->`: another test or script runs it (PATH finds the
//!   block by this marker, or runs its lines verbatim);
//! - `<!-- not run: REASON -->`.
//!
//! In what a block shows the server print, `…` stands for a changing
//! figure (a count, a time, an id): it matches any run of characters on
//! one line. A reply address (`6B0297A4.1`) matches any reply address, and
//! the same one later stands for the one it matched.
//!
//! A console session is a ```` ```console ```` block right after a line
//! `<!-- runs in CI -->` (optionally `<!-- runs in CI: counts A=B ... -->`).
//! In it, a line `$ COMMAND` is run with `bash -c` in a fresh directory,
//! with the built `switchboard`, `switchboard-cli`, `flood-pub` and
//! `flood-sub` first on `PATH`; the lines after it, up to the next `$`, are
//! what it must print. Each block gets its own server:
//!
//! - `$ switchboard ARGS` starts it with ARGS (files the block made
//!   before are found in its directory); the `listening DOOR ADDRESS`
//!   lines after it, if any, must be its doors. Without such a line the
//!   block gets `switchboard` with no flags before its first command. Every door listens on an
//!   ephemeral loopback port, not on the default the docs show.
//! - So the addresses in commands (the defaults `127.0.0.1:9813` and
//!   `127.0.0.1:8888`, `127.0.0.1 9813` for `nc`, and each address the
//!   `switchboard` line gives a `--…-listen` flag) are replaced by the
//!   doors' real ones, `switchboard-cli` is given `--address`, `--bus` and
//!   `--switch`, and the flood tools `--address`, unless the command names
//!   them. In what a command prints, the real addresses are put back to the
//!   defaults before comparing.
//! - `NAME=VALUE` alone sets a variable for the commands after it (each
//!   command is a `bash -c` of its own).
//! - `counts A=B` replaces the number A by B in commands and in what they
//!   print (a load example runs smaller in CI).
//! - A command ending in `&` runs in the background. With a comment
//!   `# wait for "TEXT"` the next command waits until it has printed TEXT
//!   (standard output or error). `$ wait` waits for every background
//!   command to end; the lines after it are what they printed on standard
//!   output, in the order they were started. Background commands still
//!   running at the end of the block are stopped.
//! - What a command prints is its standard output; when it exits with an
//!   error, its standard error too (so an example may show an error
//!   message). Lines are compared whole, except that a reply address
//!   (`6B0297A4.1`: eight upper-case hex digits, a dot, a number) matches
//!   any reply address, and the same one on later lines and in later
//!   commands stands for the one that matched first.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Server, TempDir};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MARKER: &str = "<!-- runs in CI";
/// Longest a command (or a wait) may take.
const PATIENCE: Duration = Duration::from_secs(90);

/// One runnable block.
struct Example {
    file: String,
    line: usize,
    counts: Vec<(String, String)>,
    /// `(command, expected output lines)`.
    steps: Vec<(String, Vec<String>)>,
    /// Blocks after this one that show what one of its background
    /// commands prints while it keeps running: `(its number from 1, the
    /// lines, where the block is)`.
    printed: Vec<(usize, Vec<String>, String)>,
}

/// A fenced block of a doc, with the HTML comment on the line before it
/// (its marker), if any.
#[derive(Clone, Debug)]
struct DocBlock {
    file: String,
    /// The line of the opening fence, from 1.
    line: usize,
    lang: String,
    marker: Option<String>,
    body: Vec<String>,
}

impl DocBlock {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn blocks_in(file: &Path) -> Vec<DocBlock> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let name = file
        .strip_prefix(REPO)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{name}:{}: a block without its end",
            start + 1
        );
        let marker = start
            .checked_sub(1)
            .map(|k| lines[k].trim())
            .and_then(|l| l.strip_prefix("<!--")?.strip_suffix("-->"))
            .map(|m| m.trim().to_string());
        found.push(DocBlock {
            file: name.clone(),
            line: start + 1,
            lang: lang.trim().to_string(),
            marker,
            body: lines[start + 1..i].iter().map(|l| l.to_string()).collect(),
        });
        i += 1;
    }
    found
}

/// What a block's marker says about it.
#[derive(Debug, PartialEq)]
enum Kind {
    /// `runs in CI` (optionally `: counts A=B ...`): a console session.
    Console(Vec<(String, String)>),
    /// `runs in CI: transcript`: connections, what they send and receive.
    Transcript,
    /// `runs in CI: transcript, with tokens`: the same against a server
    /// with `--token-key`; a token shown cut short (`@ HEADER.PAYLOAD.…`)
    /// is sent as a token the test signs with the payload's claims.
    TokenTranscript,
    /// `runs in CI: what background command N above prints`: the output
    /// so far of a background command of the console block above, which
    /// keeps running.
    Printed(usize),
    /// `runs in CI: the answer to `REQUEST`` (or `the answers to `R1`,
    /// `R2`…`, one line of the block each): the exact bytes the bus
    /// answers.
    Answer(Vec<String>),
    /// `runs in CI: sent on one line connection, answered by nothing`.
    Sent,
    /// `runs in CI: nginx in front of the bus`.
    Nginx,
    /// `runs in CI: nginx's stream module in front of three nodes`.
    NginxStream,
    /// `runs in CI: HAProxy in front of three nodes`.
    Haproxy,
    /// `runs in CI: with an application myapp.py`: the WSGI adapter's
    /// command, serving a small application through the proxy door.
    Wsgi,
    /// `runs in CI: the shape of WHAT of the RPC pattern`: compared with
    /// the switch door's real answers (`same_shape`) in the RPC pattern.
    SwitchShape(String),
    /// `runs in CI: what `switchboard ARGS` prints, Redis away`: the
    /// start-up error (and exit status 2) with nothing listening at the
    /// Redis address of ARGS.
    StartError(String),
    /// `runs in CI: --config and --print-config`.
    Config,
    /// `runs in CI: a webhook receiver checks a real delivery`.
    HookCheck,
    /// `runs in CI: a webhook delivery`: what a receiver gets.
    HookDelivery,
    /// `runs in CI: a channel receiver`: a console block run after the
    /// webhook API example, with a receiver.
    HookChannel,
    /// `runs in CI: a channel delivery`: the body a channel receiver gets.
    HookChannelDelivery,
    /// `runs in CI: the shape of /dashboard/stats.json`: the keys of the
    /// webhook door's dashboard figures, after the deliveries above.
    HookDashboard,
    /// `runs in CI: the log line of a SIGTERM`.
    LogLine,
    /// `runs in CI: a token's claims`: a token with them (`exp` moved to
    /// the future) allows on the line protocol what they name, and no
    /// more.
    TokenClaims,
    /// `runs in CI: promtool check config`.
    Prometheus,
    /// `runs in CI: JSON`: parsed (one value, or one per line).
    Json,
    /// `… by PATH`: the test at PATH finds the block by this marker.
    Elsewhere(String),
    /// `not run: REASON`.
    NotRun(String),
}

impl Kind {
    fn parse(marker: &str) -> Result<Kind, String> {
        if let Some(reason) = marker.strip_prefix("not run:") {
            let reason = reason.trim();
            return if reason.is_empty() {
                Err("`not run:` without a reason".into())
            } else {
                Ok(Kind::NotRun(reason.to_string()))
            };
        }
        if let Some(rest) = marker.strip_prefix(MARKER.trim_start_matches("<!-- ")) {
            let spec = rest.trim();
            let spec = spec.strip_prefix(':').unwrap_or(spec).trim();
            if spec.is_empty() {
                return Ok(Kind::Console(Vec::new()));
            }
            if let Some(c) = spec.strip_prefix("counts") {
                let mut counts = Vec::new();
                for pair in c.split_whitespace() {
                    let (a, b) = pair.split_once('=').ok_or("counts A=B")?;
                    counts.push((a.to_string(), b.to_string()));
                }
                return Ok(Kind::Console(counts));
            }
            if spec == "transcript" {
                return Ok(Kind::Transcript);
            }
            if let Some(rest) = spec.strip_prefix("what `switchboard ") {
                if let Some(args) = rest.strip_suffix("` prints, Redis away") {
                    return Ok(Kind::StartError(args.to_string()));
                }
            }
            if spec == "transcript, with tokens" {
                return Ok(Kind::TokenTranscript);
            }
            if let Some(n) = spec
                .strip_prefix("what background command ")
                .and_then(|r| r.strip_suffix(" above prints"))
            {
                return n
                    .parse()
                    .map(Kind::Printed)
                    .map_err(|_| format!("not a number: {n:?}"));
            }
            if spec.starts_with("the answer") {
                let requests: Vec<String> = spec
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                if requests.is_empty() {
                    return Err("the answer to `REQUEST`: no request".into());
                }
                return Ok(Kind::Answer(requests));
            }
            return match spec {
                "sent on one line connection, answered by nothing" => Ok(Kind::Sent),
                "nginx in front of the bus" => Ok(Kind::Nginx),
                "nginx's stream module in front of three nodes" => Ok(Kind::NginxStream),
                "HAProxy in front of three nodes" => Ok(Kind::Haproxy),
                "with an application myapp.py" => Ok(Kind::Wsgi),
                what if what.starts_with("the shape of ")
                    && what.ends_with(" of the RPC pattern") =>
                {
                    Ok(Kind::SwitchShape(what.to_string()))
                }
                "--config and --print-config" => Ok(Kind::Config),
                "a webhook receiver checks a real delivery" => Ok(Kind::HookCheck),
                "a webhook delivery" => Ok(Kind::HookDelivery),
                "a channel receiver" => Ok(Kind::HookChannel),
                "a channel delivery" => Ok(Kind::HookChannelDelivery),
                "the shape of /dashboard/stats.json" => Ok(Kind::HookDashboard),
                "the log line of a SIGTERM" => Ok(Kind::LogLine),
                "a token's claims" => Ok(Kind::TokenClaims),
                "promtool check config" => Ok(Kind::Prometheus),
                "JSON" => Ok(Kind::Json),
                _ => Err(format!("unknown `runs in CI` marker {spec:?}")),
            };
        }
        if let Some((_, path)) = marker.rsplit_once(" by ") {
            let path = path.trim();
            if path.contains('/') && !path.contains(' ') {
                return Ok(Kind::Elsewhere(path.to_string()));
            }
        }
        Err(format!(
            "unknown marker {marker:?} (`runs in CI…`, `… by PATH` or `not run: REASON`)"
        ))
    }
}

/// Every block of the README and the docs, with its kind.
fn all_blocks() -> Vec<(DocBlock, Kind)> {
    let mut all = Vec::new();
    let mut bad = Vec::new();
    for file in doc_files() {
        for b in blocks_in(&file) {
            match b.marker.as_deref().map(Kind::parse) {
                Some(Ok(kind)) => all.push((b, kind)),
                Some(Err(e)) => bad.push(format!("{}: {e}", b.at())),
                None => bad.push(format!(
                    "{}: a ```{} block without a marker (`<!-- runs in CI… -->` or \
                     `<!-- not run: REASON -->` on the line before it)",
                    b.at(),
                    b.lang
                )),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    all
}

/// The `(command, expected output)` steps of a console block.
fn console_steps(b: &DocBlock) -> Vec<(String, Vec<String>)> {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < b.body.len() {
        let l = &b.body[i];
        match l.strip_prefix("$ ") {
            Some(cmd) => {
                let mut cmd = cmd.to_string();
                // A command continued on the next lines.
                while cmd.ends_with('\\') {
                    i += 1;
                    cmd.pop();
                    cmd.push(' ');
                    cmd.push_str(b.body[i].trim());
                }
                steps.push((cmd, Vec::new()));
            }
            None => steps
                .last_mut()
                .unwrap_or_else(|| {
                    panic!("{}:{}: output before any command", b.file, b.line + i + 1)
                })
                .1
                .push(l.to_string()),
        }
        i += 1;
    }
    steps
}

fn examples_in(file: &Path) -> Vec<Example> {
    let mut found = Vec::new();
    for b in blocks_in(file) {
        if let Some(Ok(Kind::Printed(n))) = b.marker.as_deref().map(Kind::parse) {
            let ex: &mut Example = found
                .last_mut()
                .unwrap_or_else(|| panic!("{}: no console block above", b.at()));
            ex.printed.push((n, b.body.clone(), b.at()));
            continue;
        }
        let Some(Ok(Kind::Console(counts))) = b.marker.as_deref().map(Kind::parse) else {
            continue;
        };
        assert_eq!(
            b.lang,
            "console",
            "{}: a runnable marker must be followed by a ```console block",
            b.at()
        );
        let steps = console_steps(&b);
        found.push(Example {
            file: b.file.clone(),
            line: b.line,
            counts,
            steps,
            printed: Vec::new(),
        });
    }
    found
}

/// Builds the tools the examples call (the flood tools are another
/// package's binaries) with this test's profile; returns their directory.
fn tool_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => panic!("the test runs from target/<profile>/deps"),
        };
        let mut build = Command::new(cargo);
        // cargo's variables for this test describe this package; a build
        // script that watches them would rebuild.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            {
                build.env_remove(name);
            }
        }
        let status = build
            .arg("build")
            .arg("--manifest-path")
            .arg(Path::new(REPO).join("Cargo.toml"))
            .args(["-p", "loadtest", "--bin", "flood-pub", "--bin", "flood-sub"])
            .args(["--profile", &profile])
            .stdin(Stdio::null())
            .status()
            .expect("run cargo build for the flood tools");
        assert!(status.success(), "cargo build of the flood tools failed");
        for tool in ["switchboard", "switchboard-cli", "flood-pub", "flood-sub"] {
            assert!(
                profile_dir.join(tool).is_file(),
                "{tool} is not in {}",
                profile_dir.display()
            );
        }
        profile_dir
    })
    .clone()
}

/// `NAME=VALUE` alone on a line (a shell variable later commands use).
fn assignment(cmd: &str) -> Option<(String, String)> {
    let (name, value) = cmd.split_once('=')?;
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        && !value.is_empty()
        && !value.contains([' ', '\'', '"', '$']);
    ok.then(|| (name.to_string(), value.to_string()))
}

/// Splits `# wait for "TEXT"` off a command line.
fn wait_text(cmd: &str) -> Option<String> {
    let (_, comment) = cmd.split_once('#')?;
    let rest = comment.trim().strip_prefix("wait for \"")?;
    rest.split_once('"').map(|(t, _)| t.to_string())
}

fn is_reply_address(w: &str) -> bool {
    match w.split_once('.') {
        Some((hex, n)) => {
            hex.len() == 8
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                && !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        }
        None => false,
    }
}

/// A running background command.
struct Job {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    seen: Arc<Mutex<String>>,
    cmd: String,
}

fn collect(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

struct Block<'a> {
    ex: &'a Example,
    dir: TempDir,
    path: String,
    /// Default address → real one.
    addrs: Vec<(String, String)>,
    /// Reply address in the doc → the real one.
    replies: HashMap<String, String>,
    jobs: Vec<Job>,
    waited: usize,
    server: Option<Server>,
    /// `NAME=VALUE` lines so far, the environment of later commands.
    env: Vec<(String, String)>,
    /// The flags the server was started with, as the doc gives them.
    server_args: Vec<String>,
    /// Flags the test adds to the server's, and addresses of its own
    /// (a doc's address → the real one).
    extra_args: Vec<String>,
    extra_addrs: Vec<(String, String)>,
}

impl Block<'_> {
    fn at(&self, step: &str) -> String {
        format!("{}:{}: `{step}`", self.ex.file, self.ex.line)
    }

    fn start_server(&mut self, args: &[String]) {
        self.server_args = args.to_vec();
        let mut args: Vec<String> = args.to_vec();
        args.extend(self.extra_args.iter().cloned());
        // Each listen address the command gives, and the door it opens.
        let mut given: Vec<(String, String)> = Vec::new();
        for i in 0..args.len() {
            let Some(door) = args[i]
                .strip_prefix("--")
                .and_then(|f| f.strip_suffix("-listen"))
                .map(str::to_string)
            else {
                // Files the block made are in its directory.
                let local = self.dir.path().join(&args[i]);
                if !args[i].starts_with('-') && local.exists() {
                    args[i] = local.display().to_string();
                }
                continue;
            };
            if let Some(addr) = args.get(i + 1).filter(|v| *v != "off").cloned() {
                given.push((addr, door));
                args[i + 1] = "127.0.0.1:0".into();
            }
        }
        // The HTTPS bus opens by default (on 4444) with a certificate.
        if args.iter().any(|a| a == "--tls-cert") && !args.iter().any(|a| a == "--bus-tls-listen") {
            args.extend(["--bus-tls-listen".into(), "127.0.0.1:0".into()]);
            given.push(("127.0.0.1:4444".into(), "bus-tls".into()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&args);
        // The defaults of the two doors most examples use, when open.
        self.addrs = [("127.0.0.1:9813", "line"), ("127.0.0.1:8888", "bus")]
            .iter()
            .filter_map(|(doc, door)| Some((doc.to_string(), server.doors.get(*door)?.clone())))
            .collect();
        for (addr, door) in given {
            if let Some(real) = server.doors.get(&door) {
                self.addrs.push((addr, real.clone()));
            }
        }
        self.addrs.extend(self.extra_addrs.iter().cloned());
        self.server = Some(server);
    }

    /// The `listening DOOR ADDRESS` lines a `switchboard` line shows: each
    /// door opened, at the address shown (mapped to the real one).
    fn check_doors(&self, step: &str, want: &[String]) {
        let server = self.server.as_ref().unwrap();
        for line in want {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [listening, door, addr] = words[..] else {
                panic!(
                    "{}: a server shows `listening DOOR ADDRESS` lines, not {line:?}",
                    self.at(step)
                );
            };
            assert_eq!(listening, "listening", "{}", self.at(step));
            let real = server.doors.get(door).unwrap_or_else(|| {
                panic!("{}: no {door} door in {:?}", self.at(step), server.doors)
            });
            let shown = self
                .addrs
                .iter()
                .find(|(_, r)| r == real)
                .map(|(d, _)| d.as_str());
            assert_eq!(shown, Some(addr), "{}: the {door} door", self.at(step));
        }
        if !want.is_empty() {
            assert_eq!(
                want.len(),
                server.doors.len(),
                "{}: every door shown",
                self.at(step)
            );
        }
    }

    /// The command as it runs against this block's server.
    fn rewrite(&self, cmd: &str) -> String {
        let mut cmd = cmd.to_string();
        for (a, b) in &self.ex.counts {
            cmd = cmd
                .split(' ')
                .map(|w| if w == a { b.as_str() } else { w })
                .collect::<Vec<_>>()
                .join(" ");
        }
        for (doc, real) in &self.replies {
            cmd = cmd.replace(doc, real);
        }
        let default = |doc: &str| {
            self.addrs
                .iter()
                .find(|(d, _)| d == doc)
                .map(|(_, r)| r.clone())
        };
        let (Some(line), Some(bus)) = (default("127.0.0.1:9813"), default("127.0.0.1:8888")) else {
            // Before the block's server starts: nothing to point anywhere.
            return cmd;
        };
        let line = &line;
        if let Some((host, port)) = line.rsplit_once(':') {
            cmd = cmd.replace("127.0.0.1 9813", &format!("{host} {port}"));
        }
        let names = |flags: &[&str]| flags.iter().any(|f| cmd.split(' ').any(|w| w == *f));
        let mut cli_flags = String::new();
        if !names(&["--address", "-a", "--unix"]) {
            cli_flags.push_str(&format!(" --address {line}"));
        }
        if !names(&["--bus"]) {
            cli_flags.push_str(&format!(" --bus {bus}"));
        }
        let switch = self
            .server
            .as_ref()
            .and_then(|s| s.doors.get("switch").cloned());
        if let Some(switch) = switch {
            if !names(&["--switch"]) {
                cli_flags.push_str(&format!(" --switch {switch}"));
            }
        }
        let flood_addr = if cmd.contains("--proto line") {
            line.clone()
        } else {
            bus.clone()
        };
        let flood_named = names(&["--address", "-a", "-l", "-p", "--port"]);
        for (doc, real) in &self.addrs {
            cmd = cmd.replace(doc.as_str(), real);
        }
        let words: Vec<String> = cmd
            .split(' ')
            .map(|w| match w {
                "switchboard-cli" => format!("switchboard-cli{cli_flags}"),
                "flood-pub" | "flood-sub" if !flood_named => format!("{w} --address {flood_addr}"),
                _ => w.to_string(),
            })
            .collect();
        words.join(" ")
    }

    fn spawn(&self, cmd: &str) -> Child {
        Command::new(common::program("bash"))
            .arg("-c")
            .arg(cmd)
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that a pipeline is stopped whole.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.at(cmd)))
    }

    /// `line` with each whole number A of `counts A=B` replaced by B.
    fn scaled(&self, line: &str) -> String {
        if self.ex.counts.is_empty() {
            return line.to_string();
        }
        let mut out = String::new();
        let mut digits = String::new();
        let flush = |digits: &mut String, out: &mut String| {
            let n = std::mem::take(digits);
            match self.ex.counts.iter().find(|(a, _)| *a == n) {
                Some((_, b)) => out.push_str(b),
                None => out.push_str(&n),
            }
        };
        for c in line.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else {
                flush(&mut digits, &mut out);
                out.push(c);
            }
        }
        flush(&mut digits, &mut out);
        out
    }

    /// Compares what was printed with what the doc shows.
    fn check(&mut self, step: &str, want: &[String], got: &str) {
        // A smaller run in CI prints smaller numbers.
        let want: Vec<String> = want.iter().map(|w| self.scaled(w)).collect();
        let want = &want[..];
        let mut got_text = got.to_string();
        for (doc, real) in &self.addrs {
            got_text = got_text.replace(real.as_str(), doc);
        }
        let got: Vec<&str> = got_text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let at = self.at(step);
        let mismatch = || -> ! {
            panic!(
                "{at}: printed\n{}\nbut the doc shows\n{}",
                got.join("\n"),
                want.join("\n")
            )
        };
        if got.len() != want.len() {
            mismatch();
        }
        for (g, w) in got.iter().zip(want) {
            // `…` stands for a changing figure (a count, a time, an id).
            if w.contains('…') {
                if !seg_match(g, &segments(w), &mut self.replies) {
                    mismatch();
                }
                continue;
            }
            let (gw, ww): (Vec<&str>, Vec<&str>) = (g.split(' ').collect(), w.split(' ').collect());
            if gw.len() != ww.len() {
                mismatch();
            }
            for (a, b) in gw.iter().zip(&ww) {
                if a == b {
                    continue;
                }
                if is_reply_address(a) && is_reply_address(b) {
                    let bound = self
                        .replies
                        .entry(b.to_string())
                        .or_insert_with(|| a.to_string());
                    if bound == a {
                        continue;
                    }
                }
                mismatch();
            }
        }
    }

    fn run(&mut self) {
        let steps = self.ex.steps.clone();
        let is_server = |cmd: &str| cmd.split_whitespace().next() == Some("switchboard");
        // Without a `switchboard` line the block gets a default server
        // before its first command; with one, the server starts there.
        let mut started = !steps.iter().any(|(cmd, _)| is_server(cmd));
        if started {
            self.start_server(&[]);
        }
        for (cmd, want) in &steps {
            if is_server(cmd) {
                assert!(!started, "{}: a second server", self.at(cmd));
                let args: Vec<String> = cmd
                    .split_whitespace()
                    .skip(1)
                    .take_while(|w| *w != "&" && !w.starts_with('#'))
                    .map(|w| w.to_string())
                    .collect();
                self.start_server(&args);
                self.check_doors(cmd, want);
                started = true;
                continue;
            }
            if cmd.trim() == "wait" {
                self.wait_all(cmd, want);
                continue;
            }
            let code = cmd.split(" #").next().unwrap_or(cmd).trim_end();
            let real = self.rewrite(code);
            if let Some((name, value)) = assignment(&real) {
                assert!(
                    want.is_empty(),
                    "{}: an assignment prints nothing",
                    self.at(cmd)
                );
                self.env.push((name, value));
                continue;
            }
            if let Some(bg) = real.strip_suffix('&') {
                self.background(cmd, bg, want);
            } else {
                self.foreground(cmd, &real, want);
            }
        }
        for (n, want, at) in &self.ex.printed {
            let job = self
                .jobs
                .get(n - 1)
                .unwrap_or_else(|| panic!("{at}: no background command {n}"));
            // It has printed the lines shown (it prints as things arrive).
            let deadline = Instant::now() + PATIENCE;
            let printed = loop {
                let out = String::from_utf8_lossy(&job.stdout.lock().unwrap()).into_owned();
                if out.lines().count() >= want.len() && out.ends_with('\n') {
                    break out;
                }
                assert!(
                    Instant::now() < deadline,
                    "{at}: `{}` printed only {out:?}",
                    job.cmd
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            let cmd = job.cmd.clone();
            self.check(&format!("{cmd}` (shown at {at})"), want, &printed);
        }
        for job in &mut self.jobs {
            // Still running at the end (a subscriber, a server): stopped,
            // with everything it started.
            let _ = Command::new(common::program("kill"))
                .args(["-s", "KILL", "--"])
                .arg(format!("-{}", job.child.id()))
                .stderr(Stdio::null())
                .status();
            let _ = job.child.wait();
        }
    }

    fn foreground(&mut self, step: &str, real: &str, want: &[String]) {
        let mut child = self.spawn(real);
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let t1 = collect(child.stdout.take().unwrap(), out.clone());
        let t2 = collect(child.stderr.take().unwrap(), err.clone());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{}: did not end within {PATIENCE:?}", self.at(step));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        t1.join().unwrap();
        t2.join().unwrap();
        let mut printed = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        if !status.success() {
            printed.push_str(&String::from_utf8_lossy(&err.lock().unwrap()));
        }
        self.check(step, want, &printed);
    }

    fn background(&mut self, step: &str, real: &str, want: &[String]) {
        assert!(
            want.is_empty(),
            "{}: a background command shows no output of its own",
            self.at(step)
        );
        let mut child = self.spawn(real);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        let seen = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<()>();
        {
            let seen = seen.clone();
            let mut err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                    let _ = tx.send(());
                }
            });
        }
        if let Some(text) = wait_text(step) {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let out = String::from_utf8_lossy(&stdout.lock().unwrap()).into_owned();
                if seen.lock().unwrap().contains(&text) || out.contains(&text) {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "{}: never printed {text:?}", self.at(step));
                // Woken by stderr; stdout is looked at on each turn.
                let _ = rx.recv_timeout(Duration::from_millis(50).min(left));
            }
        }
        self.jobs.push(Job {
            child,
            stdout,
            seen,
            cmd: step.to_string(),
        });
    }

    fn wait_all(&mut self, step: &str, want: &[String]) {
        let deadline = Instant::now() + PATIENCE;
        let mut printed = String::new();
        for job in self.jobs.iter_mut().skip(self.waited) {
            let status = loop {
                if let Some(s) = job.child.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}:{}: `{}` did not end",
                    self.ex.file,
                    self.ex.line,
                    job.cmd
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            // Its stdout reader ends with the process.
            let until = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&job.stdout) > 1 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                status.success(),
                "{}:{}: `{}` failed ({status}): {}",
                self.ex.file,
                self.ex.line,
                job.cmd,
                job.seen.lock().unwrap()
            );
            printed.push_str(&String::from_utf8_lossy(&job.stdout.lock().unwrap()));
        }
        self.waited = self.jobs.len();
        self.check(step, want, &printed);
    }
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(REPO).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn the_examples_of_the_readme_and_the_docs_work() {
    let bin = tool_dir();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = Vec::new();
    for file in doc_files() {
        for ex in examples_in(&file) {
            let mut block = Block {
                ex: &ex,
                dir: TempDir::new("docs-example"),
                path: path.clone(),
                addrs: Vec::new(),
                replies: HashMap::new(),
                jobs: Vec::new(),
                waited: 0,
                server: None,
                env: Vec::new(),
                server_args: Vec::new(),
                extra_args: Vec::new(),
                extra_addrs: Vec::new(),
            };
            block.run();
            ran.push(format!("{}:{}", ex.file, ex.line));
        }
    }
    eprintln!("ran {} examples: {ran:?}", ran.len());
    // The README's tour and load example at least: a marker lost in an
    // edit must not make this test pass by running nothing.
    assert!(
        ran.iter().filter(|r| r.starts_with("README.md")).count() >= 5,
        "{ran:?}"
    );
    assert!(ran.iter().any(|r| r.starts_with("docs/")), "{ran:?}");
}

#[test]
fn reply_addresses_are_recognised() {
    assert!(is_reply_address("6B0297A4.1"));
    assert!(!is_reply_address("6b0297a4.1"));
    assert!(!is_reply_address("news"));
    assert!(!is_reply_address("6B0297A4."));
    assert_eq!(
        wait_text("x &   # wait for \"subscribed: news\""),
        Some("subscribed: news".into())
    );
}

// ---------------------------------------------------------------------
// Transcripts: connections to the server's doors, what each sends and
// what it must receive.

/// The text of a transcript line without its comment: two or more spaces
/// start a comment (the annotation column of the docs).
fn uncomment(l: &str) -> &str {
    l.split("  ").next().unwrap_or("").trim_end()
}

/// `\r\n` anywhere stands for CR LF and a `\n` at the end for LF; any other
/// backslash is itself. Returns the bytes and whether an ending was given.
fn unescape(t: &str) -> (String, bool) {
    let mut s = t.replace("\\r\\n", "\r\n");
    if s.ends_with("\\n") {
        s.truncate(s.len() - 2);
        s.push('\n');
    }
    let ended = s.ends_with('\n');
    (s, ended)
}

#[derive(Debug, Clone)]
enum Step {
    /// `$ switchboard ARGS`, then the `listening` lines it shows.
    Server(Vec<String>, Vec<String>),
    /// `A $ nc -C HOST PORT`: connection A to that door.
    Open(String, String),
    /// `A> TEXT`: A sends TEXT (and CR LF unless it ends in an escape).
    Send(String, String),
    /// `A< TEXT`: the next thing A receives is TEXT (and CR LF unless
    /// it ends in an escape); `…` matches any run of characters on a line.
    Expect(String, String),
    /// `A< (closed)`: the server has closed A (after what A received).
    Closed(String),
    /// `A> (close)`: A goes away.
    Close(String),
}

fn transcript_steps(b: &DocBlock) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (n, raw) in b.body.iter().enumerate() {
        let at = || format!("{}:{}", b.file, b.line + n + 1);
        let l = uncomment(raw);
        if l.trim().is_empty() {
            continue;
        }
        if let Some(args) = l.strip_prefix("$ switchboard") {
            let args = args.split_whitespace().map(str::to_string).collect();
            steps.push(Step::Server(args, Vec::new()));
            continue;
        }
        if l.starts_with("listening ") {
            match steps.last_mut() {
                Some(Step::Server(_, doors)) => doors.push(l.to_string()),
                _ => panic!("{}: a `listening` line after no server", at()),
            }
            continue;
        }
        let name: String = l.chars().take_while(char::is_ascii_uppercase).collect();
        let rest = &l[name.len()..];
        assert!(!name.is_empty(), "{}: not a transcript line: {raw:?}", at());
        let opened = |steps: &[Step]| {
            steps
                .iter()
                .any(|s| matches!(s, Step::Open(n, _) if *n == name))
        };
        if let Some(target) = rest.strip_prefix(" $ nc -C ") {
            assert!(!opened(&steps), "{}: {name} opened twice", at());
            steps.push(Step::Open(name, target.trim().to_string()));
            continue;
        }
        // A connection used before any `nc` line is to the line door.
        if !opened(&steps) {
            steps.push(Step::Open(name.clone(), "127.0.0.1 9813".into()));
        }
        if rest.trim() == "> (close)" {
            steps.push(Step::Close(name));
        } else if let Some(text) = rest.strip_prefix('>') {
            let text = text.strip_prefix(' ').unwrap_or(text);
            let (mut text, ended) = unescape(text);
            // A line with an escape is sent as it is; any other ends in CR LF.
            if !ended && !text.contains("\r\n") {
                text.push_str("\r\n");
            }
            steps.push(Step::Send(name, text));
        } else if let Some(text) = rest.strip_prefix('<') {
            let text = text.strip_prefix(' ').unwrap_or(text);
            if text == "(closed)" {
                steps.push(Step::Closed(name));
                continue;
            }
            let (mut text, ended) = unescape(text);
            if !ended {
                text.push_str("\r\n");
            }
            for piece in text.split_inclusive('\n') {
                steps.push(Step::Expect(name.clone(), piece.to_string()));
            }
        } else {
            panic!("{}: not a transcript line: {raw:?}", at());
        }
    }
    steps
}

/// The steps of an answer block: each request on a connection of its own
/// to the bus; the block is the answer (one request), or each line of it
/// the answer to one request.
fn answer_steps(b: &DocBlock, requests: &[String]) -> Vec<Step> {
    let lines: Vec<String> = b
        .body
        .iter()
        .map(|l| uncomment(l))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (t, ended) = unescape(l);
            assert!(
                ended,
                "{}: each line of an answer ends in \\r\\n or \\n: {l:?}",
                b.at()
            );
            t
        })
        .collect();
    let answers: Vec<String> = if requests.len() == 1 {
        vec![lines.concat()]
    } else {
        assert_eq!(
            requests.len(),
            lines.len(),
            "{}: one line per request",
            b.at()
        );
        lines
    };
    let mut steps = Vec::new();
    for (i, (req, answer)) in requests.iter().zip(answers).enumerate() {
        let name = format!("R{i}");
        steps.push(Step::Open(name.clone(), "127.0.0.1 8888".into()));
        steps.push(Step::Send(name.clone(), unescape(req).0));
        for piece in answer.split_inclusive('\n') {
            steps.push(Step::Expect(name.clone(), piece.to_string()));
        }
    }
    steps
}

/// The steps of a block of commands sent on one line connection, each
/// line as it is (they end in `\r\n`).
fn sent_steps(b: &DocBlock) -> Vec<Step> {
    let mut steps = vec![Step::Open("A".into(), "127.0.0.1 9813".into())];
    for l in b
        .body
        .iter()
        .map(|l| uncomment(l))
        .filter(|l| !l.is_empty())
    {
        let (t, ended) = unescape(l);
        assert!(ended, "{}: each line ends in \\r\\n: {l:?}", b.at());
        steps.push(Step::Send("A".into(), t));
    }
    steps
}

/// A piece of an expected line.
enum Seg {
    Lit(String),
    /// `…`: any run of characters, line ends excepted.
    Any,
    /// A reply address as the doc shows it.
    Reply(String),
}

fn segments(want: &str) -> Vec<Seg> {
    let upper_hex = |c: char| c.is_ascii_digit() || ('A'..='F').contains(&c);
    let mut segs = Vec::new();
    for (i, piece) in want.split('…').enumerate() {
        if i > 0 {
            segs.push(Seg::Any);
        }
        // Reply addresses: `XXXXXXXX.N`, not inside a longer word.
        let mut lit = String::new();
        let chars: Vec<(usize, char)> = piece.char_indices().collect();
        let mut k = 0;
        while k < chars.len() {
            let (at, c) = chars[k];
            let starts_word = k == 0 || !chars[k - 1].1.is_ascii_alphanumeric();
            if starts_word && upper_hex(c) {
                let mut e = k;
                while e < chars.len() && (upper_hex(chars[e].1) || chars[e].1 == '.') {
                    e += 1;
                }
                let end = chars.get(e).map_or(piece.len(), |(p, _)| *p);
                let ends_word = chars.get(e).is_none_or(|(_, c)| !c.is_ascii_alphanumeric());
                if ends_word && is_reply_address(&piece[at..end]) {
                    segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    segs.push(Seg::Reply(piece[at..end].to_string()));
                    k = e;
                    continue;
                }
            }
            lit.push(c);
            k += 1;
        }
        segs.push(Seg::Lit(lit));
    }
    segs
}

fn seg_match(got: &str, segs: &[Seg], replies: &mut HashMap<String, String>) -> bool {
    match segs.first() {
        None => got.is_empty(),
        Some(Seg::Lit(l)) => got
            .strip_prefix(l.as_str())
            .is_some_and(|rest| seg_match(rest, &segs[1..], replies)),
        Some(Seg::Any) => {
            for (i, c) in got.char_indices() {
                if seg_match(&got[i..], &segs[1..], replies) {
                    return true;
                }
                if c == '\r' || c == '\n' {
                    return false;
                }
            }
            seg_match("", &segs[1..], replies)
        }
        Some(Seg::Reply(doc)) => {
            let end = got
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_digit() || ('A'..='F').contains(c) || *c == '.'))
                .map_or(got.len(), |(i, _)| i);
            let word = &got[..end];
            if !is_reply_address(word) {
                return false;
            }
            if replies.get(doc).is_some_and(|r| r != word) {
                return false;
            }
            if seg_match(&got[end..], &segs[1..], replies) {
                replies.insert(doc.clone(), word.to_string());
                return true;
            }
            false
        }
    }
}

/// One connection of a transcript.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// The next line (through its `\n`), or the next `n` bytes when the
    /// expected text has no line end; `None` at the end of the stream.
    fn next_piece(&mut self, want: &str) -> Option<Vec<u8>> {
        loop {
            let have = if want.ends_with('\n') {
                self.buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
            } else {
                (self.buf.len() >= want.len()).then_some(want.len())
            };
            if let Some(n) = have {
                return Some(self.buf.drain(..n).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!(
                    "nothing more arrived ({e}); waiting for {want:?}, holding {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }
}

struct Transcript<'a> {
    at: String,
    block: Block<'a>,
    conns: HashMap<String, Conn>,
    /// Connections whose end the block may leave open or closed.
    may_close: bool,
    probe: Option<(TcpStream, Vec<u8>)>,
    /// The server checks tokens (`--token-key`).
    tokens: bool,
}

impl Transcript<'_> {
    /// Proves that the server has run everything sent so far and written
    /// what that made: two round trips on a private line connection (or
    /// HTTP keep-alive connection, without a line door). Whatever was sent
    /// before was in the server's socket buffers before the first probe,
    /// so it was read in the turn that answered it at the latest.
    fn barrier(&mut self) {
        let server = self.block.server.as_ref().unwrap();
        let line = server.doors.get("line").cloned();
        if self.probe.is_none() {
            let (addr, hello) = match &line {
                Some(a) => {
                    let secret = self.block_arg("--secret");
                    let token = self.tokens.then(|| {
                        let all = serde_json::json!([">"]);
                        signed(&serde_json::json!({
                            "exp": now() + 3600, "subscribe": all, "publish": all,
                            "send": all, "receive": all,
                        }))
                    });
                    (a.clone(), secret.or(token).map(|s| format!("@ {s}\r\n")))
                }
                None => (server.bus().to_string(), None),
            };
            let mut s = common::connect(&addr);
            if let Some(h) = hello {
                common::send(&mut s, h.as_bytes());
            }
            self.probe = Some((s, Vec::new()));
        }
        let (s, buf) = self.probe.as_mut().unwrap();
        for _ in 0..2 {
            let (req, end): (&[u8], &[u8]) = if line.is_some() {
                (b"= docs.probe\r\n", b"\r\n")
            } else {
                (b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n", b"ok")
            };
            common::send(s, req);
            let got = common::read_until(s, end);
            buf.clear();
            assert!(
                got.starts_with(b"= docs.probe ") || got.starts_with(b"HTTP/1.1 200 "),
                "{}: the probe got {:?}",
                self.at,
                String::from_utf8_lossy(&got)
            );
        }
    }

    fn block_arg(&self, flag: &str) -> Option<String> {
        // The flags the block's server was started with.
        self.block
            .server_args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.block.server_args.get(i + 1).cloned())
    }

    fn run(&mut self, steps: &[Step]) {
        if !steps.iter().any(|s| matches!(s, Step::Server(..))) {
            self.block.start_server(&[]);
        }
        let mut last_sender: Option<String> = None;
        for step in steps {
            let at = format!("{}: {step:?}", self.at);
            match step {
                Step::Server(args, doors) => {
                    assert!(self.block.server.is_none(), "{at}: a second server");
                    self.block.start_server(args);
                    self.block.check_doors("switchboard", doors);
                }
                Step::Open(name, target) => {
                    let addr = target.replacen(' ', ":", 1);
                    let real = self
                        .block
                        .addrs
                        .iter()
                        .find(|(doc, _)| *doc == addr)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| panic!("{at}: no door at {addr}"));
                    let conn = Conn {
                        s: common::connect(&real),
                        buf: Vec::new(),
                        closed: false,
                    };
                    assert!(
                        self.conns.insert(name.clone(), conn).is_none(),
                        "{at}: {name} twice"
                    );
                }
                Step::Send(name, text) => {
                    if last_sender.as_ref().is_some_and(|l| l != name) {
                        self.barrier();
                    }
                    last_sender = Some(name.clone());
                    let mut text = text.clone();
                    for (doc, real) in &self.block.replies {
                        text = text.replace(doc.as_str(), real);
                    }
                    if self.tokens {
                        text = with_signed_token(&text);
                    }
                    let conn = self
                        .conns
                        .get_mut(name)
                        .unwrap_or_else(|| panic!("{at}: no connection {name}"));
                    common::send(&mut conn.s, text.as_bytes());
                }
                Step::Expect(name, want) => {
                    let conn = self
                        .conns
                        .get_mut(name)
                        .unwrap_or_else(|| panic!("{at}: no connection {name}"));
                    let got = conn
                        .next_piece(want)
                        .unwrap_or_else(|| panic!("{at}: the server closed the connection"));
                    let got = String::from_utf8_lossy(&got).into_owned();
                    let segs = segments(want);
                    assert!(
                        seg_match(&got, &segs, &mut self.block.replies),
                        "{at}: received {got:?}, the doc shows {want:?}"
                    );
                }
                Step::Close(name) => {
                    let conn = self
                        .conns
                        .remove(name)
                        .unwrap_or_else(|| panic!("{at}: no connection {name}"));
                    assert!(
                        conn.buf.is_empty(),
                        "{at}: {name} received more than the doc shows: {:?}",
                        String::from_utf8_lossy(&conn.buf)
                    );
                    drop(conn);
                }
                Step::Closed(name) => {
                    let conn = self
                        .conns
                        .get_mut(name)
                        .unwrap_or_else(|| panic!("{at}: no connection {name}"));
                    assert!(
                        conn.buf.is_empty(),
                        "{at}: more arrived: {:?}",
                        String::from_utf8_lossy(&conn.buf)
                    );
                    let got = common::read_to_close(&mut conn.s);
                    assert!(
                        got.is_empty(),
                        "{at}: more arrived: {:?}",
                        String::from_utf8_lossy(&got)
                    );
                    conn.closed = true;
                }
            }
        }
        // Nothing more arrived anywhere, after a barrier.
        self.barrier();
        let mut names: Vec<&String> = self.conns.keys().collect();
        names.sort();
        for name in names {
            let conn = &self.conns[name];
            if conn.closed {
                continue;
            }
            assert!(
                conn.buf.is_empty(),
                "{}: {name} received more than the doc shows: {:?}",
                self.at,
                String::from_utf8_lossy(&conn.buf)
            );
            conn.s.set_nonblocking(true).unwrap();
            let mut one = [0u8; 4096];
            match (&conn.s).read(&mut one) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(0) if self.may_close => {}
                Ok(0) => panic!(
                    "{}: the server closed {name}, the doc does not show it",
                    self.at
                ),
                Ok(n) => panic!(
                    "{}: {name} received more than the doc shows: {:?}",
                    self.at,
                    String::from_utf8_lossy(&one[..n])
                ),
                Err(e) => panic!("{}: {name}: {e}", self.at),
            }
        }
    }
}

fn bare_block<'a>(ex: &'a Example) -> Block<'a> {
    Block {
        ex,
        dir: TempDir::new("docs-transcript"),
        path: String::new(),
        addrs: Vec::new(),
        replies: HashMap::new(),
        jobs: Vec::new(),
        waited: 0,
        server: None,
        env: Vec::new(),
        server_args: Vec::new(),
        extra_args: Vec::new(),
        extra_addrs: Vec::new(),
    }
}

#[test]
fn the_transcripts_of_the_docs_replay() {
    let mut ran = Vec::new();
    for (b, kind) in all_blocks() {
        let (steps, may_close) = match &kind {
            Kind::Transcript | Kind::TokenTranscript => (transcript_steps(&b), false),
            Kind::Answer(requests) => (answer_steps(&b, requests), true),
            Kind::Sent => (sent_steps(&b), false),
            _ => continue,
        };
        let ex = Example {
            file: b.file.clone(),
            line: b.line,
            counts: Vec::new(),
            steps: Vec::new(),
            printed: Vec::new(),
        };
        let mut t = Transcript {
            at: b.at(),
            block: bare_block(&ex),
            conns: HashMap::new(),
            may_close,
            probe: None,
            tokens: kind == Kind::TokenTranscript,
        };
        if t.tokens {
            let key = t.block.dir.path().join("token.key");
            std::fs::write(&key, TOKEN_SECRET).unwrap();
            t.block.extra_args = vec!["--token-key".into(), key.display().to_string()];
        }
        t.run(&steps);
        ran.push(b.at());
    }
    eprintln!("replayed {} transcripts: {ran:?}", ran.len());
    assert!(ran.iter().any(|r| r.starts_with("README.md")), "{ran:?}");
    assert!(
        ran.iter().any(|r| r.starts_with("docs/protocol.md")),
        "{ran:?}"
    );
    assert!(ran.iter().any(|r| r.starts_with("docs/http.md")), "{ran:?}");
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Best effort: the test has its answer by now.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_nginx_configurations_of_the_docs_serve() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Nginx {
            continue;
        }
        let server = Server::start(&[]);
        let dir = TempDir::new("docs-nginx");
        let socket = dir.path().join("nginx.sock");
        let block = b.body.join("\n");
        assert!(block.contains("127.0.0.1:8888"), "{}: names no bus", b.at());
        let block = block.replace("127.0.0.1:8888", server.bus());
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             server {{\n    listen unix:{};\n{block}\n}}\n}}\n",
            socket.display()
        );
        let _nginx = start_nginx(&dir, &conf, &[&socket], &b.at());
        let connect = || unix_connect(&socket);
        let mut sub = connect().unwrap();
        // A subscriber through nginx gets its head and the opening
        // delimiter at once (nothing held in a buffer), then a message
        // published through nginx.
        common::send(
            &mut sub,
            b"GET /msgbus/news HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        let head = common::read_until(&mut sub, b"\r\n\r\n");
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.starts_with("HTTP/1.1 200 OK\r\n") && !head.contains("--00MsgBus00") {
            common::read_until(&mut sub, b"--00MsgBus00");
        }
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}: {head}",
            b.at()
        );
        let mut publisher = connect().unwrap();
        common::send(
            &mut publisher,
            b"POST /msgbus/news HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
              Content-Length: 13\r\nConnection: close\r\n\r\nhello, nginx!",
        );
        let answer = common::read_to_close(&mut publisher);
        assert!(
            answer.starts_with(b"HTTP/1.1 204 "),
            "{}: {}",
            b.at(),
            String::from_utf8_lossy(&answer)
        );
        let part = common::read_until(&mut sub, b"hello, nginx!");
        let part = String::from_utf8_lossy(&part);
        assert!(
            part.contains("Content-Type: text/plain\r\n"),
            "{}: {part}",
            b.at()
        );
        ran += 1;
    }
    assert!(
        ran >= 1,
        "no nginx block marked `nginx in front of the bus`"
    );
}

/// `key = value` lines of a TOML file, whitespace removed from the value.
fn toml_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            Some((k.trim().to_string(), v))
        })
        .collect()
}

#[test]
fn the_configuration_files_of_the_docs_are_read() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Config {
            continue;
        }
        let dir = TempDir::new("docs-config");
        let file = dir.path().join("switchboard.toml");
        std::fs::write(&file, b.body.join("\n") + "\n").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&file)
            .arg("--print-config")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: --config refused it: {}",
            b.at(),
            String::from_utf8_lossy(&out.stderr)
        );
        let effective = toml_pairs(&printed);
        let given = toml_pairs(&b.body.join("\n"));
        assert!(!given.is_empty(), "{}: no settings", b.at());
        for (k, v) in given {
            assert!(
                effective.contains(&(k.clone(), v.clone())),
                "{}: `{k} = {v}` is not in the effective configuration:\n{printed}",
                b.at()
            );
        }
        ran += 1;
    }
    assert!(ran >= 1, "no block marked `--config and --print-config`");
}

#[test]
fn the_json_of_the_docs_parses() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Json {
            continue;
        }
        let text = b.body.join("\n");
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            for l in b.body.iter().filter(|l| !l.trim().is_empty()) {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(l) {
                    panic!("{}: neither the block nor {l:?} is JSON: {e}", b.at());
                }
            }
        }
        ran += 1;
    }
    assert!(ran >= 1);
}

#[test]
fn the_prometheus_configurations_of_the_docs_check() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Prometheus {
            continue;
        }
        let dir = TempDir::new("docs-prometheus");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, b.body.join("\n") + "\n").unwrap();
        let out = Command::new(common::program("promtool"))
            .args(["check", "config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: promtool check config: {}{}",
            b.at(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 1);
}

/// The inventory table of docs/testing.md: per file, its blocks by what
/// runs them.
fn inventory(all: &[(DocBlock, Kind)]) -> String {
    let mut rows: Vec<(String, [usize; 7])> = Vec::new();
    for (b, k) in all {
        let col = match k {
            Kind::Console(_) | Kind::Printed(_) => 0,
            Kind::Transcript | Kind::TokenTranscript | Kind::Answer(_) | Kind::Sent => 1,
            Kind::HookChannel => 0,
            Kind::HookDelivery | Kind::HookChannelDelivery => 1,
            Kind::HookDashboard | Kind::LogLine | Kind::TokenClaims => 2,
            Kind::SwitchShape(_) => 1,
            Kind::StartError(_) | Kind::Wsgi => 0,
            Kind::Nginx
            | Kind::NginxStream
            | Kind::Haproxy
            | Kind::Config
            | Kind::HookCheck
            | Kind::Prometheus => 2,
            Kind::Json => 3,
            Kind::Elsewhere(_) => 4,
            Kind::NotRun(_) => 5,
        };
        if rows.last().is_none_or(|(f, _)| *f != b.file) {
            rows.push((b.file.clone(), [0; 7]));
        }
        let row = &mut rows.last_mut().unwrap().1;
        row[col] += 1;
        row[6] += 1;
    }
    let mut total = [0; 7];
    let mut out = String::from(
        "| file | blocks | console sessions | transcripts, answers | configs, code | JSON parsed | run by another test | not run |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let cells = |c: &[usize; 7]| {
        [c[6], c[0], c[1], c[2], c[3], c[4], c[5]]
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    for (f, c) in &rows {
        for i in 0..7 {
            total[i] += c[i];
        }
        out.push_str(&format!("| `{f}` | {} |\n", cells(c)));
    }
    out.push_str(&format!("| all | {} |\n", cells(&total)));
    out
}

#[test]
fn every_block_of_the_docs_is_run_or_says_why() {
    let all = all_blocks();
    for (b, k) in &all {
        if let Kind::Elsewhere(path) = k {
            let text = std::fs::read_to_string(Path::new(REPO).join(path))
                .unwrap_or_else(|e| panic!("{}: {path}: {e}", b.at()));
            // It finds the block by its marker, or runs its lines verbatim.
            let marker = format!("<!-- {} -->", b.marker.as_ref().unwrap());
            let verbatim = b
                .body
                .iter()
                .filter(|l| !l.trim().is_empty())
                .all(|l| text.contains(l.trim()));
            assert!(
                text.contains(&marker) || verbatim,
                "{}: {path} neither looks for {marker} nor runs the block's lines",
                b.at()
            );
        }
    }
    let table = inventory(&all);
    let testing = std::fs::read_to_string(Path::new(REPO).join("docs/testing.md")).unwrap();
    assert!(
        testing.contains(&table),
        "docs/testing.md's inventory of the docs' blocks is out of date; it is now\n{table}"
    );
}

/// One HTTP request a receiver got: its head (lines, without CR LF) and
/// its body.
struct Received {
    head: Vec<String>,
    body: Vec<u8>,
}

/// A webhook receiver on an ephemeral port: answers `204` to every
/// request and passes each on.
fn receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        let head = head.lines().map(str::to_string).collect();
                        if tx.send(Received { head, body }).is_err() {
                            return;
                        }
                        if std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The key of `--hooks-secret` (24 bytes, base64).
const HOOKS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn the_webhook_examples_of_the_docs_deliver() {
    let all = all_blocks();
    let of = |k: &Kind| -> DocBlock {
        let found: Vec<&DocBlock> = all.iter().filter(|(_, x)| x == k).map(|(b, _)| b).collect();
        assert_eq!(found.len(), 1, "one block marked {k:?}");
        found[0].clone()
    };
    let channel = of(&Kind::HookChannel);
    let delivery = of(&Kind::HookDelivery);
    let check = of(&Kind::HookCheck);
    let channel_delivery = of(&Kind::HookChannelDelivery);
    // The API example, the console block before the channel receiver's.
    let api = all
        .iter()
        .filter(|(b, k)| {
            b.file == channel.file && b.line < channel.line && matches!(k, Kind::Console(_))
        })
        .map(|(b, _)| b.clone())
        .next_back()
        .expect("the webhook API example");
    let (recv_addr, deliveries) = receiver();
    // The API example, then the channel receiver's commands, against one
    // server with a receiver at the docs' 127.0.0.1:9000.
    let mut steps = console_steps(&api);
    steps.extend(console_steps(&channel));
    let ex = Example {
        file: api.file.clone(),
        line: api.line,
        counts: Vec::new(),
        steps,
        printed: Vec::new(),
    };
    let bin = tool_dir();
    let mut block = bare_block(&ex);
    block.path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    block.extra_args = vec!["--hooks-secret".into(), HOOKS_SECRET.into()];
    block.extra_addrs = vec![("127.0.0.1:9000".into(), recv_addr.clone())];
    block.run();
    let mut got: HashMap<String, Received> = HashMap::new();
    while got.len() < 2 {
        let r = deliveries
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{}: deliveries {:?}", delivery.at(), got.keys()));
        got.insert(r.head[0].clone(), r);
    }
    let hook = got
        .remove("POST /hook HTTP/1.1")
        .unwrap_or_else(|| panic!("no POST /hook: {:?}", got.keys()));
    let news = got
        .remove("POST /news HTTP/1.1")
        .unwrap_or_else(|| panic!("no POST /news: {:?}", got.keys()));

    // The delivery as the doc shows it: the head line by line, then the body.
    let shown: Vec<String> = delivery
        .body
        .iter()
        .map(|l| l.replace("127.0.0.1:9000", &recv_addr))
        .collect();
    let blank = shown
        .iter()
        .position(|l| l.is_empty())
        .expect("a blank line");
    let mut replies = HashMap::new();
    assert_eq!(hook.head.len(), blank, "{}: {:?}", delivery.at(), hook.head);
    for (g, w) in hook.head.iter().zip(&shown[..blank]) {
        assert!(
            seg_match(g, &segments(w), &mut replies),
            "{}: the receiver got {g:?}, the doc shows {w:?}",
            delivery.at()
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&hook.body),
        shown[blank + 1..].join("\n"),
        "{}",
        delivery.at()
    );

    // The receiver's check, in Python, over that delivery.
    let code = check.body.join("\n");
    assert!(code.contains("\"whsec_...\""), "{}: {code}", check.at());
    let code = code.replace("\"whsec_...\"", &format!("\"{HOOKS_SECRET}\""));
    let headers: serde_json::Map<String, serde_json::Value> = hook.head[1..]
        .iter()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let dir = TempDir::new("docs-hooks");
    std::fs::write(dir.path().join("body"), &hook.body).unwrap();
    std::fs::write(
        dir.path().join("headers.json"),
        serde_json::Value::Object(headers).to_string(),
    )
    .unwrap();
    let program = format!(
        "import json\nbody_bytes = open('body', 'rb').read()\n\
         request_headers = json.load(open('headers.json'))\n{code}\nprint('verified')\n"
    );
    let out = Command::new(common::program("python3"))
        .arg("-c")
        .arg(&program)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"verified\n",
        "{}: {}",
        check.at(),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same check fails on a body changed by one byte: it checks.
    let mut bad = hook.body.clone();
    bad[0] ^= 1;
    std::fs::write(dir.path().join("body"), &bad).unwrap();
    let out = Command::new(common::program("python3"))
        .arg("-c")
        .arg(&program)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}: a changed body verified",
        check.at()
    );

    // What the channel receiver got.
    assert_eq!(
        String::from_utf8_lossy(&news.body),
        channel_delivery.body.join("\n"),
        "{}",
        channel_delivery.at()
    );

    // The dashboard's figures have the keys the doc shows.
    let dashboard = of(&Kind::HookDashboard);
    let hooks = block.server.as_ref().unwrap().addr("hooks").to_string();
    let mut s = common::connect_and_send(
        &hooks,
        b"GET /dashboard/stats.json HTTP/1.0\r\nHost: x\r\n\r\n",
    );
    let answer = common::read_to_close(&mut s);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
    let real: serde_json::Value = serde_json::from_str(body).unwrap();
    let shown: serde_json::Value = serde_json::from_str(&dashboard.body.join("\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", dashboard.at()));
    if let Err(e) = same_shape(&shown, &real, "") {
        panic!("{}: {e}; the server answered {real}", dashboard.at());
    }
}

/// The doc's JSON has the keys of the real one, recursively (arrays by
/// their first elements), with values of the same kinds; `null` on either
/// side matches anything.
fn same_shape(doc: &serde_json::Value, real: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match (doc, real) {
        (Value::Null, _) | (_, Value::Null) => Ok(()),
        (Value::Object(d), Value::Object(r)) => {
            let dk: Vec<&String> = d.keys().collect();
            let rk: Vec<&String> = r.keys().collect();
            if dk != rk {
                return Err(format!("{at}: the doc has keys {dk:?}, the server {rk:?}"));
            }
            for (k, v) in d {
                same_shape(v, &r[k], &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(r)) => match (d.first(), r.first()) {
            (Some(a), Some(b)) => same_shape(a, b, &format!("{at}[0]")),
            _ => Ok(()),
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        _ => Err(format!("{at}: the doc shows {doc}, the server {real}")),
    }
}

#[test]
fn the_log_lines_of_the_docs_are_logged() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::LogLine {
            continue;
        }
        let shown: serde_json::Value =
            serde_json::from_str(&b.body.join("\n")).unwrap_or_else(|e| panic!("{}: {e}", b.at()));
        let mut server = Server::start(&["--log-format", "json", "--log-level", "info"]);
        let status = server.terminate();
        assert!(
            status.success(),
            "{}: exit status {status}: {}",
            b.at(),
            server.stderr_text()
        );
        let logged = server.stderr_text();
        let line = logged
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == shown["message"])
            .unwrap_or_else(|| panic!("{}: no such line in {logged}", b.at()));
        same_shape(&shown, &line, "").unwrap_or_else(|e| panic!("{}: {e}", b.at()));
        for key in ["level", "message", "target"] {
            assert_eq!(line[key], shown[key], "{}: {key}", b.at());
        }
        // RFC 3339, UTC, milliseconds: 2026-01-02T03:04:05.678Z.
        let time = line["time"].as_str().unwrap();
        let ok = time.len() == 24
            && time.ends_with('Z')
            && time.bytes().enumerate().all(|(i, c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'.',
                23 => c == b'Z',
                _ => c.is_ascii_digit(),
            });
        assert!(ok, "{}: time {time:?}", b.at());
        ran += 1;
    }
    assert!(ran >= 1, "no block marked `the log line of a SIGTERM`");
}

/// The HS256 key of `transcript, with tokens` (at least 32 bytes).
const TOKEN_SECRET: &str = "the docs' examples sign their tokens with this";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims`, signed with [`TOKEN_SECRET`].
fn signed(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url, decoded.
fn base64url(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {text:?}"),
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// `@ HEADER.PAYLOAD.…` (a token cut short) → `@ TOKEN`, a token the test
/// signs with the claims of PAYLOAD; any other line unchanged.
fn with_signed_token(line: &str) -> String {
    let Some(token) = line.strip_prefix("@ ").map(|t| t.trim_end()) else {
        return line.to_string();
    };
    let Some(payload) = token.strip_suffix(".…").and_then(|t| t.split('.').nth(1)) else {
        return line.to_string();
    };
    let claims: serde_json::Value = serde_json::from_slice(&base64url(payload))
        .unwrap_or_else(|e| panic!("the payload of {token:?} is not JSON: {e}"));
    format!("@ {}\r\n", signed(&claims))
}

/// A name a pattern matches: `*` → `x`, a last `>` → `x.y`.
fn instance(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|t| match t {
            "*" => "x",
            ">" => "x.y",
            t => t,
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn the_token_claims_of_the_docs_allow_what_they_name() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::TokenClaims {
            continue;
        }
        let mut claims: serde_json::Value =
            serde_json::from_str(&b.body.join("\n")).unwrap_or_else(|e| panic!("{}: {e}", b.at()));
        assert!(claims["exp"].is_u64(), "{}: no exp", b.at());
        claims["exp"] = (now() + 3600).into();
        let dir = TempDir::new("docs-claims");
        let key = dir.path().join("token.key");
        std::fs::write(&key, TOKEN_SECRET).unwrap();
        let server = Server::start(&["--token-key", key.to_str().unwrap()]);
        let mut s = common::connect(server.line());
        let mut sent = format!("@ {}\r\n", signed(&claims));
        let mut want = String::new();
        let names = |k: &str| -> Vec<String> {
            claims[k]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no list {k}", b.at()))
                .iter()
                .map(|v| instance(v.as_str().unwrap()))
                .collect()
        };
        let denied = "not.named";
        for name in names("subscribe") {
            sent.push_str(&format!("+ {name}\r\n"));
        }
        sent.push_str(&format!("+ {denied}\r\n"));
        want.push_str(&format!("- forbidden: subscribe {denied}\r\n"));
        for name in names("publish") {
            sent.push_str(&format!("! 1 {name}\r\nx\r\n"));
        }
        sent.push_str(&format!("! 1 {denied}\r\nx\r\n"));
        want.push_str(&format!("- forbidden: publish {denied}\r\n"));
        for name in names("send") {
            sent.push_str(&format!("> 1 0 {name}\r\nx\r\n"));
        }
        sent.push_str(&format!("> 1 0 {denied}\r\nx\r\n"));
        want.push_str(&format!("- forbidden: send {denied}\r\n"));
        for name in names("receive") {
            sent.push_str(&format!("< 0 {name}\r\n"));
            want.push_str("*\r\n");
        }
        sent.push_str(&format!("< 0 {denied}\r\n"));
        want.push_str(&format!("- forbidden: receive {denied}\r\n"));
        // The last answer comes after every other: nothing else came.
        let last = names("subscribe").remove(0);
        sent.push_str(&format!("= {last}\r\n"));
        want.push_str(&format!("= {last} 1 line=1 http=0 receivers=1\r\n"));
        common::send(&mut s, sent.as_bytes());
        let end = format!("= {last} ");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got);
            if text.find(&end).is_some_and(|i| text[i..].ends_with("\r\n")) {
                break;
            }
            let n = s.read(&mut chunk).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; received {text:?}, the claims make {want:?}",
                    b.at()
                )
            });
            assert!(n > 0, "{}: closed after {text:?}", b.at());
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), want, "{}", b.at());
        common::assert_nothing_pending(&s, &b.at());
        ran += 1;
    }
    assert!(ran >= 1, "no block marked `a token's claims`");
}

/// Starts nginx with `conf` in `dir` and waits until it listens on every
/// socket of `sockets`.
fn start_nginx(dir: &TempDir, conf: &str, sockets: &[&Path], at: &str) -> Killed {
    let conf_file = dir.path().join("nginx.conf");
    std::fs::write(&conf_file, conf).unwrap();
    let mut nginx = Killed(
        Command::new(common::program("nginx"))
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for socket in sockets {
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = nginx.0.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("{at}: nginx exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "{at}: nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    nginx
}

fn unix_connect(socket: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Debian's redis-server on a free loopback port (one a listener bound
/// to port 0 was given, then released; a start that loses it to another
/// process is tried again on another).
fn start_redis(dir: &TempDir) -> (Killed, u16) {
    use std::io::BufRead;
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(common::program("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<bool>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let redis = Killed(child);
        if rx.recv_timeout(Duration::from_secs(20)) == Ok(true) {
            return (redis, port);
        }
    }
    panic!("redis-server did not start on any of 20 free ports");
}

#[test]
fn the_nginx_stream_configurations_of_the_docs_balance_nodes() {
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    assert!(
        module.is_file(),
        "{} is missing: install the Debian package `libnginx-mod-stream` (`.ci/setup` does)",
        module.display()
    );
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::NginxStream {
            continue;
        }
        let dir = TempDir::new("docs-stream");
        let (_redis, port) = start_redis(&dir);
        let url = format!("redis://127.0.0.1:{port}");
        let nodes: Vec<Server> = (0..3)
            .map(|_| Server::start(&["--cluster", &url]))
            .collect();
        let mut stats: Vec<common::Stats> =
            nodes.iter().map(|n| common::Stats::open(n.bus())).collect();
        for s in &mut stats {
            s.wait_for("the cluster link", |v| v["cluster"]["up"] == true);
        }
        let line_sock = dir.path().join("line.sock");
        let bus_sock = dir.path().join("bus.sock");
        let mut block = b.body.join("\n");
        for (i, n) in nodes.iter().enumerate() {
            for (doc, real) in [(":9813;", n.line()), (":8888;", n.bus())] {
                let doc = format!("server 10.0.0.{}{doc}", i + 1);
                assert!(block.contains(&doc), "{}: no `{doc}`", b.at());
                block = block.replace(&doc, &format!("server {real};"));
            }
        }
        for (doc, sock) in [("listen 9813;", &line_sock), ("listen 8888;", &bus_sock)] {
            assert!(block.contains(doc), "{}: no `{doc}`", b.at());
            block = block.replace(doc, &format!("listen unix:{};", sock.display()));
        }
        let d = dir.path().display();
        let conf = format!(
            "load_module {};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n{block}\n",
            module.display()
        );
        let _nginx = start_nginx(&dir, &conf, &[&line_sock, &bus_sock], &b.at());
        three_nodes_as_one(&mut stats, &line_sock, &bus_sock, &b.at());
        ran += 1;
    }
    assert!(
        ran >= 1,
        "no block marked `nginx's stream module in front of three nodes`"
    );
}

/// Three line subscribers through the balancer's line socket land on the
/// three nodes (each node's subscription confirmed by Redis), and a
/// publish through its bus socket reaches them all.
fn three_nodes_as_one(stats: &mut [common::Stats], line_sock: &Path, bus_sock: &Path, at: &str) {
    // One at a time: each subscriber is on its node before the next
    // connects, so that the balancer's least-connections choice sees it.
    let mut subs = Vec::new();
    for n in 1..=3u64 {
        let mut s = unix_connect(line_sock).unwrap();
        common::send(&mut s, b"+ news\r\n");
        subs.push(s);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let total: u64 = stats
                .iter_mut()
                .map(|st| st.get()["subscribers"].as_u64().unwrap_or(0))
                .sum();
            if total == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{at}: subscriber {n} did not reach a node ({total} subscribed)"
            );
            // Polls the nodes' stats pages; no ordering depends on this pause.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for s in stats.iter_mut() {
        s.wait_for("a subscriber confirmed on each node", |v| {
            v["subscribers"] == 1 && v["cluster"]["confirmed"] == 1
        });
    }
    let mut publisher = unix_connect(bus_sock).unwrap();
    common::send(
        &mut publisher,
        b"POST /msgbus/news HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let answer = common::read_to_close(&mut publisher);
    assert!(
        answer.starts_with(b"HTTP/1.1 204 "),
        "{at}: {}",
        String::from_utf8_lossy(&answer)
    );
    for s in &mut subs {
        let want = b"! 5 news text/plain\r\nhello\r\n";
        assert_eq!(common::read_exact_n(s, want.len()), want, "{at}");
    }
}

#[test]
fn the_haproxy_configurations_of_the_docs_balance_nodes() {
    let haproxy = common::program("haproxy");
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Haproxy {
            continue;
        }
        let dir = TempDir::new("docs-haproxy");
        let (mut redis, port) = start_redis(&dir);
        let url = format!("redis://127.0.0.1:{port}");
        let nodes: Vec<Server> = (0..3)
            .map(|_| Server::start(&["--cluster", &url, "--metrics-listen", "127.0.0.1:0"]))
            .collect();
        let mut stats: Vec<common::Stats> =
            nodes.iter().map(|n| common::Stats::open(n.bus())).collect();
        for s in &mut stats {
            s.wait_for("the cluster link", |v| v["cluster"]["up"] == true);
        }
        let line_sock = dir.path().join("line.sock");
        let bus_sock = dir.path().join("bus.sock");
        // Each node's doors, and its metrics port for the health checks
        // (the nodes share one host here, so each has a port of its own).
        let mut conf = String::new();
        for l in &b.body {
            let mut l = l.clone();
            // HAProxy wants twice maxconn open files; CI has fewer.
            if l.trim() == "maxconn 200000" {
                l = l.replace("200000", "1000");
            }
            if l.trim_start().starts_with("default-server") {
                assert!(l.contains(" port 9100"), "{}: {l}", b.at());
                l = l.replace(" port 9100", "");
            }
            for (i, n) in nodes.iter().enumerate() {
                for (doc, real) in [(":9813", n.line()), (":8888", n.bus())] {
                    let doc = format!(" 10.0.0.{}{doc}", i + 1);
                    if l.ends_with(&doc) {
                        let metrics = n.addr("metrics").rsplit_once(':').unwrap().1;
                        l = l.replace(&doc, &format!(" {real} port {metrics}"));
                    }
                }
            }
            for (doc, sock) in [("bind :9813", &line_sock), ("bind :8888", &bus_sock)] {
                if l.trim() == doc {
                    l = format!("    bind unix@{}", sock.display());
                }
            }
            conf.push_str(&l);
            conf.push('\n');
            // A socket of the test's own, to read HAProxy's view.
            if l.trim() == "global" {
                let admin = dir.path().join("admin.sock");
                conf.push_str(&format!("    stats socket {}\n", admin.display()));
            }
        }
        for n in 1..=3 {
            assert!(!conf.contains(&format!("10.0.0.{n}")), "{}: {conf}", b.at());
        }
        let conf_file = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_file, &conf).unwrap();
        let mut child = Killed(
            Command::new(&haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&conf_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start haproxy"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for sock in [&line_sock, &bus_sock] {
            while std::os::unix::net::UnixStream::connect(sock).is_err() {
                if let Ok(Some(status)) = child.0.try_wait() {
                    let mut err = String::new();
                    child
                        .0
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("{}: haproxy exited ({status}): {err}", b.at());
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: haproxy did not listen",
                    b.at()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // HAProxy's health checks pass on all six servers.
        let admin = dir.path().join("admin.sock");
        let servers = |want: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut s = unix_connect(&admin).unwrap();
                common::send(&mut s, b"show stat\n");
                let csv = String::from_utf8_lossy(&common::read_to_close(&mut s)).into_owned();
                let rows: Vec<&str> = csv
                    .lines()
                    .filter(|r| r.starts_with("line_nodes,n") || r.starts_with("bus_nodes,n"))
                    .collect();
                if rows.len() == 6 && rows.iter().all(|r| r.contains(want)) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: not every server shows {want}: {csv}",
                    b.at()
                );
                // Polls HAProxy's checks, which run every 2 s.
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        servers(",L7OK,");
        three_nodes_as_one(&mut stats, &line_sock, &bus_sock, &b.at());
        // Redis gone: every node's /healthz answers 503, HAProxy's checks
        // take the nodes out, and a new connection through it is closed
        // without an answer.
        redis.0.kill().unwrap();
        redis.0.wait().unwrap();
        servers(",DOWN,");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut s = unix_connect(&line_sock).unwrap();
            // HAProxy may close the connection before the probe is
            // written: that is the closing this waits for.
            match std::io::Write::write_all(&mut s, b"= probe\r\n") {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    break
                }
                Err(e) => panic!("{}: {e}", b.at()),
            }
            let mut got = [0u8; 64];
            match s.read(&mut got) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Ok(_) => {}
                Err(e) => panic!("{}: {e}", b.at()),
            }
            assert!(
                Instant::now() < deadline,
                "{}: HAProxy still passes connections with Redis gone",
                b.at()
            );
            // Polls for HAProxy's checks (every 2 s) to take the nodes out.
            std::thread::sleep(Duration::from_millis(200));
        }
        ran += 1;
    }
    assert!(
        ran >= 1,
        "no block marked `HAProxy in front of three nodes`"
    );
}

#[test]
fn the_start_up_errors_of_the_docs_are_printed() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        let Kind::StartError(args) = kind else {
            continue;
        };
        // A loopback port nothing listens on: one the kernel gave a
        // listener, which is then closed.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let doc_addr = "127.0.0.1:6379";
        assert!(args.contains(doc_addr), "{}: {args}", b.at());
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args.replace(doc_addr, &free).split_whitespace())
            .args([
                "--line-listen",
                "127.0.0.1:0",
                "--bus-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}: the exit status", b.at());
        let printed = String::from_utf8_lossy(&out.stderr).replace(&free, doc_addr);
        let printed: Vec<&str> = printed.lines().collect();
        assert_eq!(printed, b.body, "{}: what it printed", b.at());
        assert!(out.stdout.is_empty(), "{}: it printed on stdout", b.at());
        ran += 1;
    }
    assert!(
        ran >= 1,
        "no block marked `what `switchboard …` prints, Redis away`"
    );
}

/// The application the WSGI command of the docs serves in CI.
const MYAPP: &str = "def app(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [b'hello from ' + environ['PATH_INFO'].encode() + b'\\n']\n";

#[test]
fn the_wsgi_commands_of_the_docs_serve() {
    let mut ran = 0;
    for (b, kind) in all_blocks() {
        if kind != Kind::Wsgi {
            continue;
        }
        let server = Server::start(&["--proxy-listen", "127.0.0.1:0"]);
        let dir = TempDir::new("docs-wsgi");
        std::fs::write(dir.path().join("myapp.py"), MYAPP).unwrap();
        let [cmd] = &b.body[..] else {
            panic!("{}: one command", b.at());
        };
        assert!(cmd.contains("127.0.0.1:9813"), "{}: {cmd}", b.at());
        let cmd = cmd.replace("127.0.0.1:9813", server.line());
        let clients = Path::new(REPO).join("clients/python");
        let mut adapter = Command::new(common::program("bash"))
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .current_dir(dir.path())
            .env("PYTHONPATH", format!("{}:.", clients.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its workers in its group, so that all of them are stopped.
            .process_group(0)
            .spawn()
            .unwrap();
        let group = format!("-{}", adapter.id());
        let signal_group = |sig: &str| {
            Command::new(common::program("kill"))
                .args(["-s", sig, "--", &group])
                .stderr(Stdio::null())
                .status()
                .unwrap()
        };
        // A request waits in the queue until a worker takes it.
        for path in ["/first", "/second"] {
            let mut s = common::connect_and_send(
                server.addr("proxy"),
                format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes(),
            );
            let answer = String::from_utf8_lossy(&common::read_to_close(&mut s)).into_owned();
            assert!(
                answer.starts_with("HTTP/1.0 200 OK\r\n"),
                "{}: {answer}",
                b.at()
            );
            assert!(
                answer.ends_with(&format!("\r\n\r\nhello from {path}\n")),
                "{}: {answer}",
                b.at()
            );
        }
        // SIGTERM stops the workers after their request, then the adapter.
        assert!(signal_group("TERM").success(), "{}", b.at());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = adapter.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                signal_group("KILL");
                panic!("{}: the adapter did not stop on SIGTERM", b.at());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever is left of the group (nothing, when it stopped well).
        signal_group("KILL");
        assert!(status.success(), "{}: the adapter exited {status}", b.at());
        ran += 1;
    }
    assert!(ran >= 1, "no block marked `with an application myapp.py`");
}

/// A keep-alive HTTP/1.1 connection to the switch door: one session.
struct Session {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Session {
    fn open(addr: &str, name: &str) -> Session {
        let mut session = Session {
            s: common::connect(addr),
            buf: Vec::new(),
        };
        session.call("GET", &format!("/login/{name}"), "");
        session
    }

    /// A request and its answer's body, as JSON when it is.
    fn call(&mut self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        common::send(&mut self.s, req.as_bytes());
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "{path}: closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "{method} {path}: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "{path}: closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..end + len).skip(end).collect();
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into())
    }
}

#[test]
fn the_json_of_the_switch_docs_is_what_the_rpc_pattern_gets() {
    let shown: Vec<(DocBlock, String)> = all_blocks()
        .into_iter()
        .filter_map(|(b, k)| match k {
            Kind::SwitchShape(what) => Some((b, what)),
            _ => None,
        })
        .collect();
    let server = Server::start(&["--switch-listen", "127.0.0.1:0"]);
    let door = server.addr("switch").to_string();
    // The RPC pattern of switch.md, call by call.
    let mut client = Session::open(&door, "client");
    client.call("GET", "/transient/client.reply", "");
    client.call("GET", "/persistent/svc", "");
    client.call("POST", "/request/svc/client.reply", "hello");
    let mut service = Session::open(&door, "service");
    let request = service.call("POST", "/transfer", r#"{"timeout": 5, "queues": ["svc"]}"#);
    let response_ids = service.call("POST", "/response/client.reply/svc/0", "HELLO");
    assert_eq!(response_ids, serde_json::json!([["client.reply", 0]]));
    service.call("GET", "/ack/svc/0", "");
    let response = client.call(
        "POST",
        "/transfer",
        r#"{"timeout": 5, "queues": ["client.reply"]}"#,
    );
    client.call("GET", "/ack/client.reply/0", "");
    client.call("POST", "/request/svc/client.reply", "again");
    let trace = Session::open(&door, "reader").call("GET", "/trace/0/5", "");
    let diagnostics = Session::open(&door, "reader2").call("GET", "/", "");
    let answers = [
        (
            "the shape of the transfer's answer of the RPC pattern",
            vec![request.clone()],
        ),
        ("the shape of a trace of the RPC pattern", vec![trace]),
        (
            "the shape of the diagnostics of the RPC pattern",
            vec![diagnostics],
        ),
        (
            "the shape of an id and the messages of the RPC pattern",
            vec![
                request["messages"][0][0].clone(),
                request["messages"][0][1].clone(),
                response["messages"][0][1].clone(),
            ],
        ),
    ];
    let mut ran = 0;
    for (b, what) in &shown {
        let (_, real) = answers
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("{}: no answer for {what:?}", b.at()));
        let docs: Vec<serde_json::Value> = if real.len() == 1 {
            vec![serde_json::from_str(&b.body.join("\n"))
                .unwrap_or_else(|e| panic!("{}: {e}", b.at()))]
        } else {
            b.body
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", b.at())))
                .collect()
        };
        assert_eq!(docs.len(), real.len(), "{}: one value per answer", b.at());
        for (d, r) in docs.iter().zip(real) {
            if let Err(e) = same_shape(d, r, "") {
                panic!("{}: {e}; the server answered {r}", b.at());
            }
        }
        ran += 1;
    }
    assert_eq!(
        ran,
        answers.len(),
        "every answer has its block in switch.md"
    );
}
