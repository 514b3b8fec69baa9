//! Wire forms that cross doors: a message published on the HTTP bus and
//! delivered on the line protocol keeps every line-protocol frame readable
//! by every client (`! LEN CHANNEL TYPE`, exactly four fields).

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
