//! `--config FILE` and `--print-config` against the real binary: the file's
//! settings take effect, flags on the command line win, bad files are
//! refused with the key and its line, and what `--print-config` prints
//! reads back to the same configuration.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{connect, read_until, send, Server, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_switchboard");

/// Runs the server binary to its exit (for `--print-config` and errors).
fn run(args: &[&str]) -> Output {
    Command::new(SERVER)
        .args(args)
        .output()
        .expect("run switchboard")
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_file_takes_effect_and_flags_win() {
    let dir = TempDir::new("config");
    // The file turns the doors off; the command line (the harness adds
    // --line-listen and --bus-listen 127.0.0.1:0) turns them on again. The
    // file's --max-line stays.
    let file = write(
        &dir,
        "switchboard.toml",
        "line-listen = \"off\"\nbus-listen = \"off\"\nmax-line = 32\n",
    );
    let server = Server::start(&["--config", &file]);
    // Both doors listen: the harness' --line-listen and --bus-listen won.
    assert_eq!(server.doors.len(), 2, "{:?}", server.doors);
    let mut c = connect(server.line());
    send(&mut c, format!("< 1 {}\r\n", "a".repeat(40)).as_bytes());
    read_until(&mut c, b"line too long (limit 32 bytes)");
}

#[test]
fn print_config_reads_back_the_same() {
    let dir = TempDir::new("config");
    let file = write(
        &dir,
        "a.toml",
        "# a comment\nmax-line = 100\nproxy-route = [\"/api=api.q\", \"/b=\\\"odd\\\"q\"]\n\
         allow-shutdown = true\nsecret = \"p w\"\nslow-subscriber = \"disconnect\"\n",
    );
    let first = run(&["--config", &file, "--print-config", "--max-body", "1234"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let printed = text(&first.stdout);
    for line in [
        "max-line = 100",
        "max-body = 1234",
        "allow-shutdown = true",
        "secret = \"p w\"",
        "slow-subscriber = \"disconnect\"",
        "bus-listen = \"127.0.0.1:8888\"",
        "# docroot is not set",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in:\n{printed}"
        );
    }
    // The odd route was refused by no one: --config only checks types.
    assert!(
        printed.contains("proxy-route = [\"/api=api.q\", "),
        "{printed}"
    );
    let again = write(&dir, "b.toml", &printed);
    let second = run(&["--config", &again, "--print-config"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), printed);
    // And without any file: the defaults, which read back as well.
    let defaults = run(&["--print-config"]);
    assert!(defaults.status.success());
    let file = write(&dir, "c.toml", &text(&defaults.stdout));
    let back = run(&["--config", &file, "--print-config"]);
    assert_eq!(text(&back.stdout), text(&defaults.stdout));
}

/// Runs with `contents` as the config file; it must exit 2 and say `says`.
fn refused(contents: &str, says: &str) {
    let dir = TempDir::new("config");
    let file = write(&dir, "bad.toml", contents);
    let out = run(&["--config", &file, "--print-config"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{contents:?}: {err}");
    assert!(err.contains(says), "{contents:?}: {err}");
    assert!(err.contains(&file), "the file is named: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_files_name_the_key_and_the_line() {
    refused(
        "bus-listen = \"off\"\n# nothing\nlisten-bus = \"off\"\n",
        "line 3: unknown key `listen-bus`",
    );
    refused(
        "max-line = \"long\"\n",
        "line 1: `max-line`: invalid value 'long'",
    );
    refused("max-line = -1\n", "line 1: `max-line`: invalid value '-1'");
    refused(
        "allow-shutdown = 1\n",
        "`allow-shutdown` is true or false, not an integer",
    );
    refused(
        "bus-listen = \"nowhere\"\n",
        "`bus-listen`: invalid value 'nowhere'",
    );
    refused("bus-listen = [\"off\"]\n", "takes one value, not a list");
    refused("[line]\nlisten = \"off\"\n", "line 1: unknown key `line`");
    refused("max-line = 1\nmax-line = 2\n", "not valid TOML");
    // Values the flags refuse after parsing are refused the same way.
    let dir = TempDir::new("config");
    let file = write(&dir, "small.toml", "max-line = 8\n");
    let out = run(&["--config", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--max-line must be at least 16"));
}

#[test]
fn a_missing_file_is_named() {
    let missing = Path::new("/nonexistent/switchboard.toml");
    let out = run(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--config /nonexistent/switchboard.toml"),
        "{err}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(SERVER)
        .args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "off",
            "--log-level",
            "info",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has said where it listens, it runs; a signal then makes it
    // log its shutdown.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .strip_prefix("listening line ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .trim()
        .to_string();
    // A round trip: the loop serves, so its signal handling is in place.
    let mut c = connect(&addr);
    common::line_sync(&mut c, "up");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("shutting down")),
        "no shutdown line in {log:?}"
    );
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        let o = v.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["level", "message", "target", "time"], "{line}");
        assert_eq!(v["level"], "INFO", "{line}");
        assert!(
            v["target"].as_str().unwrap().starts_with("switchboard"),
            "{line}"
        );
        let time = v["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "{time}"
        );
    }
}

/// A flag on the command line that needs another one the file gives
/// (`--cluster-optional` needs `--cluster`): the two are checked together,
/// once merged; without the file the same command line is refused.
#[test]
fn a_flag_may_need_what_the_file_gives() {
    let dir = TempDir::new("config-requires");
    let conf = write(&dir, "c.toml", "cluster = \"redis://127.0.0.1:1\"\n");
    let out = run(&["--config", &conf, "--cluster-optional", "--print-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.lines().any(|l| l == "cluster-optional = true"),
        "{printed}"
    );
    assert!(
        printed
            .lines()
            .any(|l| l == "cluster = \"redis://127.0.0.1:1\""),
        "{printed}"
    );
    let alone = run(&["--cluster-optional", "--print-config"]);
    assert!(!alone.status.success());
    assert!(
        text(&alone.stderr).contains("--cluster"),
        "{}",
        text(&alone.stderr)
    );
}
