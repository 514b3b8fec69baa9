//! Wire forms that cross doors: a message published on the HTTP bus and
//! delivered on the line protocol keeps every line-protocol frame readable
//! by every client (`! LEN CHANNEL TYPE`, exactly four fields).

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{connect, line_sync, read_exact_n, read_until, send, Server};

const CLI: &str = env!("CARGO_BIN_EXE_switchboard-cli");

/// Longest any step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// POSTs `body` to `/msgbus/CHANNEL` with a raw `Content-Type` header line
/// value and checks the `204`.
fn http_publish(server: &Server, channel: &str, content_type: &str, body: &[u8]) {
    let mut s = connect(server.bus());
    let head = format!(
        "POST /msgbus/{channel} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    send(&mut s, head.as_bytes());
    send(&mut s, body);
    let got = read_until(&mut s, b"\r\n\r\n");
    assert!(
        got.starts_with(b"HTTP/1.1 204 "),
        "publish answered {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A raw line-protocol connection subscribed to `channel`.
fn line_subscriber(server: &Server, channel: &str) -> TcpStream {
    let mut s = connect(server.line());
    send(&mut s, format!("+ {channel}\r\n").as_bytes());
    line_sync(&mut s, channel);
    s
}

#[test]
fn http_content_type_with_spaces_reaches_line_subscribers_as_four_fields() {
    let server = Server::start(&[]);
    let mut raw = line_subscriber(&server, "foo");

    let mut cli = Command::new(CLI)
        .args([
            "--address",
            server.line(),
            "subscribe",
            "--count",
            "2",
            "foo",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard-cli");
    // The CLI announces its subscription once the server has taken it.
    let stderr = cli.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let announced = rx
        .recv_timeout(PATIENCE)
        .expect("switchboard-cli subscribed");
    assert_eq!(announced, "subscribed: foo");

    http_publish(&server, "foo", "text/plain; charset=utf-8", b"abc");
    // Tabs are whitespace too; an empty type is the default type.
    http_publish(&server, "foo", "text/plain;\tcharset=utf-8", b"");

    let want = b"! 3 foo text/plain;charset=utf-8\r\nabc\r\n! 0 foo text/plain;charset=utf-8\r\n";
    let got = read_exact_n(&mut raw, want.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));

    let mut stdout = cli.stdout.take().expect("stdout");
    let (out_tx, out_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        let read = stdout.read_to_string(&mut out).map(|_| out);
        let _ = out_tx.send(read);
    });
    let out = match out_rx.recv_timeout(PATIENCE) {
        Ok(read) => read.expect("read the CLI's output"),
        Err(_) => {
            let _ = cli.kill();
            panic!("switchboard-cli did not finish");
        }
    };
    let status = cli.wait().expect("wait for switchboard-cli");
    let errors: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        out, "! 3 foo text/plain;charset=utf-8\nabc\n! 0 foo text/plain;charset=utf-8\n",
        "stderr: {errors:?}"
    );
    assert_eq!(status.code(), Some(0), "stderr: {errors:?}");
}

#[test]
fn empty_http_content_type_reaches_line_subscribers_as_the_default() {
    let server = Server::start(&[]);
    let mut raw = line_subscriber(&server, "bar");
    http_publish(&server, "bar", "", b"x");
    http_publish(&server, "bar", " \t ", b"y");
    let want =
        b"! 1 bar application/octet-stream\r\nx\r\n! 1 bar application/octet-stream\r\ny\r\n";
    let got = read_exact_n(&mut raw, want.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[test]
fn cli_publish_writes_the_type_as_delivered() {
    let server = Server::start(&[]);
    let mut raw = line_subscriber(&server, "baz");
    let out = Command::new(CLI)
        .args(["--address", server.line(), "publish", "baz", "abc"])
        .args(["--type", "text/plain; charset=utf-8"])
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard-cli publish");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let want = b"! 3 baz text/plain;charset=utf-8\r\nabc\r\n";
    let got = read_exact_n(&mut raw, want.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

/// Filter patterns over the limits are refused with a 400 that names the
/// limit, before anything is subscribed; a pattern at the limit, worst case
/// for a backtracking matcher, is taken and filters as it should.
#[test]
fn filter_patterns_are_bounded() {
    let server = Server::start(&[]);
    let get = |query: &str| {
        let mut s = connect(server.bus());
        send(
            &mut s,
            format!("GET /msgbus/f?{query} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        s
    };
    let long = format!("*{}b", "a".repeat(300));
    let mut s = get(&format!("type={long}"));
    let got = read_until(&mut s, b"bytes\n");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("type pattern longer than 256 bytes"),
        "{text}"
    );
    let many = vec!["x"; 17].join(",");
    let mut s = get(&format!("sender={many}"));
    let got = read_until(&mut s, b"patterns\n");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("more than 16 sender patterns"), "{text}");

    // At the limit: `*aaa…b` against a long type of `a`s does not match; the
    // same type ending in `b` does. The subscriber must see only the second.
    let at_limit = format!("*{}b", "a".repeat(254));
    let mut sub = get(&format!("type={at_limit}"));
    read_until(&mut sub, b"\r\n\r\n");
    let a_type = "a".repeat(8000);
    http_publish(&server, "f", &a_type, b"no");
    http_publish(&server, "f", &format!("{a_type}b"), b"yes");
    let got = read_until(&mut sub, b"yes");
    assert!(
        !got.windows(2).any(|w| w == b"no"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
