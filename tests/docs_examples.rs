//! The examples of the README and of `docs/` run against the real server:
//! a doc change that breaks one fails here.
//!
//! A runnable example is a ```` ```console ```` block right after a line
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
//! - `counts A=B` replaces the number A by B in commands (a load example
//!   runs smaller in CI).
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
}

fn examples_in(file: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(rest) = lines[i].trim().strip_prefix(MARKER) else {
            i += 1;
            continue;
        };
        let spec = rest.trim_end_matches("-->").trim();
        let spec = spec.strip_prefix(':').unwrap_or(spec).trim();
        let counts = spec
            .strip_prefix("counts")
            .map(|c| {
                c.split_whitespace()
                    .map(|pair| {
                        let (a, b) = pair.split_once('=').expect("counts A=B");
                        (a.to_string(), b.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            lines.get(i + 1).map(|l| l.trim()),
            Some("```console"),
            "{}:{}: a runnable marker must be followed by a ```console block",
            file.display(),
            i + 1
        );
        let start = i + 1;
        i += 2;
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            match l.strip_prefix("$ ") {
                Some(cmd) => {
                    let mut cmd = cmd.to_string();
                    // A command continued on the next lines.
                    while cmd.ends_with('\\') {
                        i += 1;
                        cmd.pop();
                        cmd.push(' ');
                        cmd.push_str(lines[i].trim());
                    }
                    steps.push((cmd, Vec::new()));
                }
                None => steps
                    .last_mut()
                    .unwrap_or_else(|| {
                        panic!("{}:{}: output before any command", file.display(), i + 1)
                    })
                    .1
                    .push(l.to_string()),
            }
            i += 1;
        }
        found.push(Example {
            file: file
                .strip_prefix(REPO)
                .unwrap_or(file)
                .display()
                .to_string(),
            line: start,
            counts,
            steps,
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
                && n.bytes().all(|b| b.is_ascii_digit())
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
}

impl Block<'_> {
    fn at(&self, step: &str) -> String {
        format!("{}:{}: `{step}`", self.ex.file, self.ex.line)
    }

    fn start_server(&mut self, args: &[String]) {
        let mut args: Vec<String> = args.to_vec();
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
                if !args[i].starts_with('-') && local.is_file() {
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
        self.addrs = vec![
            ("127.0.0.1:9813".into(), server.line().to_string()),
            ("127.0.0.1:8888".into(), server.bus().to_string()),
        ];
        for (addr, door) in given {
            if let Some(real) = server.doors.get(&door) {
                self.addrs.push((addr, real.clone()));
            }
        }
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
        let Some((_, line)) = self.addrs.first().cloned() else {
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
            cli_flags.push_str(&format!(" --bus {}", self.addrs[1].1));
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
            self.addrs[1].1.clone()
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
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.at(cmd)))
    }

    /// Compares what was printed with what the doc shows.
    fn check(&mut self, step: &str, want: &[String], got: &str) {
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
        for job in &mut self.jobs {
            // Still running at the end (a server example): stopped.
            let _ = job.child.kill();
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
