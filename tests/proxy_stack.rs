//! The whole stack: Debian's nginx reverse-proxying to the proxy door, a WSGI
//! application behind it through the Python adapter, fetched with curl.
//!
//! Everything is started here, on ephemeral loopback ports (nginx listens on
//! a Unix socket of its own), and stopped at the end. The nginx
//! configuration is the one docs/proxy.md prints. A missing program is a
//! failure that names its Debian package, never a skip.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TempDir};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DOC_MARKER: &str = "<!-- nginx configuration used by tests/proxy_stack.rs -->";

/// A program on PATH or in /usr/sbin, or a failure naming its package.
fn program(name: &str) -> PathBuf {
    common::program(name)
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Guard {
    child: Child,
    name: &'static str,
}

impl Guard {
    /// SIGTERM and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new(program("kill"))
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The nginx block of docs/proxy.md.
fn doc_config() -> String {
    let doc =
        std::fs::read_to_string(Path::new(REPO).join("docs/proxy.md")).expect("docs/proxy.md");
    let after = doc
        .split_once(DOC_MARKER)
        .expect("the nginx marker in docs/proxy.md")
        .1;
    let start = after
        .find("```nginx\n")
        .expect("an nginx block after the marker")
        + 9;
    let len = after[start..]
        .find("\n```")
        .expect("the end of the nginx block");
    after[start..start + len].to_string()
}

/// The whole nginx.conf: the documented block, pointed at this test's
/// proxy and socket, inside a main section that keeps every file in `dir`.
fn nginx_conf(dir: &Path, proxy: &str, socket: &Path) -> String {
    let block = doc_config();
    assert!(block.contains("server 127.0.0.1:8090;"), "{block}");
    assert!(block.contains("listen 80;"), "{block}");
    let block = block
        .replace("server 127.0.0.1:8090;", &format!("server {proxy};"))
        .replace("listen 80;", &format!("listen unix:{};", socket.display()));
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{block}\n}}\n"
    )
}

fn curl(curl: &Path, socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "30", "--unix-socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The head and the body of `curl -i` output.
fn split(out: &Output) -> (String, Vec<u8>) {
    let all = &out.stdout;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(all)));
    (
        String::from_utf8_lossy(&all[..at]).into_owned(),
        all[at + 4..].to_vec(),
    )
}

#[test]
fn nginx_in_front_of_the_proxy_and_a_wsgi_app_behind() {
    let nginx = program("nginx");
    let curl_bin = program("curl");
    let python = program("python3");

    let server = Server::start(&["--proxy-listen", "127.0.0.1:0"]);
    let dir = TempDir::new("proxy-stack");

    // The WSGI application, through the adapter, two workers.
    let py = Path::new(REPO).join("clients/python");
    let adapter = Command::new(&python)
        .args([
            "-m",
            "switchboard_client.wsgi",
            "hello_app:app",
            "--workers",
            "2",
        ])
        .args(["--connect", server.line()])
        .env(
            "PYTHONPATH",
            format!("{}:{}", py.display(), py.join("examples").display()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("start the WSGI adapter");
    let mut adapter = Guard {
        child: adapter,
        name: "the WSGI adapter",
    };

    // nginx, on a Unix socket.
    let socket = dir.path().join("nginx.sock");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), server.addr("proxy"), &socket)).unwrap();
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut nginx_proc = Guard {
        child,
        name: "nginx",
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = nginx_proc.child.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            panic!("nginx exited ({status}): {log}");
        }
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A GET with a query.
    let out = curl(
        &curl_bin,
        &socket,
        &["-i", "http://localhost/hello?name=stack"],
    );
    let (head, body) = split(&out);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert_eq!(body, b"hello, stack\n");

    // A POST of 200 KB, echoed.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let data = format!("@{}", file.display());
    let out = curl(
        &curl_bin,
        &socket,
        &[
            "--data-binary",
            &data,
            "-H",
            "Content-Type: application/octet-stream",
            "http://localhost/echo",
        ],
    );
    assert!(
        out.stdout == payload,
        "the echo differs ({} bytes)",
        out.stdout.len()
    );

    // A streamed response, through nginx without buffering.
    let out = curl(
        &curl_bin,
        &socket,
        &["-N", "-i", "http://localhost/clock?n=4"],
    );
    let (head, body) = split(&out);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(body, b"tick 0\ntick 1\ntick 2\ntick 3\n");

    // The standard library's demo page shows what the application saw.
    let out = curl(
        &curl_bin,
        &socket,
        &["-H", "X-Trace: t-1", "http://localhost/demo/page?a=b"],
    );
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(page.starts_with("Hello world!"), "{page}");
    for want in [
        "PATH_INFO = '/demo/page'",
        "QUERY_STRING = 'a=b'",
        "HTTP_X_TRACE = 't-1'",
        "HTTP_X_FORWARDED_FOR = '",
        "wsgi.url_scheme = 'http'",
    ] {
        assert!(page.contains(want), "{want} not in {page}");
    }

    // Several requests on one client connection (nginx keeps its upstream
    // connections to the proxy alive).
    let out = curl(
        &curl_bin,
        &socket,
        &[
            "http://localhost/hello?name=a",
            "http://localhost/hello?name=b",
        ],
    );
    assert_eq!(out.stdout, b"hello, a\nhello, b\n");

    assert!(nginx_proc.stop().success(), "nginx did not exit cleanly");
    assert!(adapter.stop().success(), "the adapter did not exit cleanly");
}
