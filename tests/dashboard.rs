//! The live dashboard (`/switchboard/`): its paths and credentials over
//! plain HTTP, its event stream, and the page in a real browser (headless
//! Chromium through chromedriver) while flood-pub and flood-sub load the
//! server; a screenshot is saved as `target/tmp/dashboard.png`.
//!
//! The browser test needs the Debian packages `chromium` and
//! `chromium-driver`; the flood tools are built by cargo from this
//! workspace (the `loadtest` package) when the test starts.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::webdriver::{http, try_http};
use common::{connect, read_to_close, read_until, Server, TempDir};
use serde_json::{json, Value};
use switchboard::client::Client;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one awaited condition may take.
const WAIT: Duration = Duration::from_secs(30);

/// `GET path` with `Connection: close` and maybe Basic credentials
/// (`user:password`, already base64); the status and the whole answer.
fn get(addr: &str, path: &str, basic: Option<&str>) -> (u16, String) {
    let mut s = connect(addr);
    let auth = basic.map_or(String::new(), |b| format!("Authorization: Basic {b}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let raw = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    (raw[9..12].parse().unwrap(), raw)
}

/// The JSON of the next `data:` event on an open event stream.
fn next_event(s: &mut TcpStream, seen: &mut Vec<u8>) -> Value {
    loop {
        if let Some(start) = find(seen, b"data: ") {
            if let Some(len) = find(&seen[start..], b"\n\n") {
                let json = serde_json::from_slice(&seen[start + 6..start + len]).unwrap();
                seen.drain(..start + len + 2);
                return json;
            }
        }
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).expect("read the event stream");
        assert!(n > 0, "the event stream closed");
        seen.extend_from_slice(&buf[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn paths_credentials_and_the_event_stream() {
    let server = Server::start(&["--secret", "pw", "--metrics-listen", "127.0.0.1:0"]);
    let bus = server.bus();
    let good = base64::engine::general_purpose::STANDARD.encode("ops:pw");
    // Behind --secret like every bus path.
    assert_eq!(get(bus, "/switchboard/", None).0, 401);
    assert_eq!(get(bus, "/switchboard/events", None).0, 401);
    let (status, page) = get(bus, "/switchboard/", Some(&good));
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Content-Type: text/html; charset=utf-8"),
        "{page}"
    );
    assert!(page.contains("new EventSource(\"events\")"), "{page}");
    // Nothing is fetched from elsewhere: no URL in the page at all.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page links out"
    );
    let (status, moved) = get(bus, "/switchboard", Some(&good));
    assert_eq!(status, 301);
    assert!(moved.contains("Location: /switchboard/\r\n"), "{moved}");
    assert_eq!(get(bus, "/switchboard/nothing", Some(&good)).0, 404);
    // The metrics listener serves it too, without credentials.
    let (status, page) = get(server.addr("metrics"), "/switchboard/", None);
    assert_eq!(status, 200, "{page}");

    // The stream: a snapshot at once, then one a second, with the counters.
    let mut line = Client::connect_tcp(server.line()).unwrap();
    // With --secret the line protocol asks for it first.
    line.authenticate("pw").unwrap();
    line.subscribe("watched").unwrap();
    line.sync().unwrap();
    line.send(b"job", 60, "work", None).unwrap();
    line.sync().unwrap();
    let mut s = connect(bus);
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /switchboard/events HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {good}\r\n\r\n"
    )
    .unwrap();
    let head = read_until(&mut s, b"\r\n\r\n");
    let head_text = String::from_utf8_lossy(&head).into_owned();
    assert!(head_text.starts_with("HTTP/1.1 200 "), "{head_text}");
    assert!(
        head_text.contains("Content-Type: text/event-stream"),
        "{head_text}"
    );
    let mut seen = head[find(&head, b"\r\n\r\n").unwrap() + 4..].to_vec();
    let first = next_event(&mut s, &mut seen);
    assert_eq!(first["top_channels"][0]["name"], "watched", "{first}");
    assert_eq!(first["top_channels"][0]["subscribers"], 1, "{first}");
    assert_eq!(first["queues"]["top"][0]["name"], "work", "{first}");
    assert_eq!(first["queues"]["depth"], 1, "{first}");
    assert!(first["cluster"].is_null());
    let doors: Vec<&str> = first["doors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        doors.contains(&"line") && doors.contains(&"bus"),
        "{doors:?}"
    );
    let published = first["messages_in"].as_u64().unwrap();
    line.publish("watched", None, b"tick").unwrap();
    line.sync().unwrap();
    // The next events come by the timer; one of them counts the publish.
    let mut later = next_event(&mut s, &mut seen);
    while later["messages_in"].as_u64().unwrap() == published {
        assert!(later["t_ms"].as_u64() > first["t_ms"].as_u64(), "{later}");
        later = next_event(&mut s, &mut seen);
    }
    assert_eq!(later["messages_in"].as_u64().unwrap(), published + 1);
    assert!(later["t_ms"].as_u64().unwrap() >= first["t_ms"].as_u64().unwrap() + 1000);

    // On the metrics address (no credentials): counts, but no names.
    let mut m = connect(server.addr("metrics"));
    m.set_read_timeout(Some(WAIT)).unwrap();
    write!(m, "GET /switchboard/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_until(&mut m, b"\r\n\r\n");
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    let mut seen = head[find(&head, b"\r\n\r\n").unwrap() + 4..].to_vec();
    let event = next_event(&mut m, &mut seen);
    assert_eq!(event["top_channels"][0]["subscribers"], 1, "{event}");
    assert!(event["top_channels"][0]["name"].is_null(), "{event}");
    assert!(event["queues"]["top"][0]["name"].is_null(), "{event}");
    assert_eq!(event["queues"]["top"][0]["depth"], 1, "{event}");
}

// ---------------------------------------------------------------------
// The page in a browser, under load

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// flood-pub and flood-sub, built by cargo from this workspace with this
/// test's profile (nothing to do when they are up to date).
fn flood_tools() -> (PathBuf, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let exe = std::env::current_exe().unwrap();
    // target/<profile dir>/deps/dashboard-<hash>; `debug` is the dev profile.
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .map(|name| if name == "debug" { "dev" } else { name })
        .unwrap()
        .to_string();
    let mut build = Command::new(cargo);
    // The variables cargo set for this test describe this package; build
    // scripts that watch them would take them for a change and rebuild.
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
    let out = build
        .arg("build")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["-p", "loadtest", "--bin", "flood-pub", "--bin", "flood-sub"])
        .args(["--profile", &profile])
        .args(["--message-format", "json-render-diagnostics"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build for the flood tools");
    assert!(
        out.status.success(),
        "cargo build -p loadtest: {}",
        out.status
    );
    let built = |bin: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
    };
    (built("flood-pub"), built("flood-sub"))
}

/// Starts flood-sub with `args` and waits until its connections are
/// subscribed (it says `ready:` on stderr).
fn start_sub(bin: &Path, args: &[&str]) -> Guard {
    let mut child = Guard(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flood-sub"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Nobody listens once it is ready: keep draining.
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(l) if l.contains("ready:") => return child,
            Ok(l) => seen.push(l),
            Err(e) => panic!("flood-sub did not become ready ({e}): {seen:#?}"),
        }
    }
}

/// chromedriver with one headless browser session; both end on drop.
struct Browser {
    _driver: Guard,
    addr: String,
    session: Option<String>,
    _profile: TempDir,
}

impl Browser {
    fn launch() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: install the Debian package {package}"
            );
        }
        // Port 0: chromedriver binds a free port and says which.
        let mut driver = Guard(
            Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let stdout = driver.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port = loop {
            let line = rx
                .recv_timeout(WAIT)
                .expect("chromedriver said on which port it listens");
            if let Some((_, rest)) = line.split_once("started successfully on port ") {
                break rest.trim_end_matches('.').parse::<u16>().unwrap();
            }
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = driver.0.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            if TcpStream::connect(&addr).is_ok() {
                let (code, body) = http(&addr, "GET", "/status", None);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if code == 200 && v["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = TempDir::new("dashboard-browser");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-proxy-server",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut b = Browser {
            _driver: driver,
            addr,
            session: None,
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = b.call("POST", "/session", Some(&caps));
        b.session = Some(v["sessionId"].as_str().expect("a session").to_string());
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, raw) = http(&self.addr, method, path, body);
        let v: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        });
        assert_eq!(code, 200, "WebDriver {method} {path} failed: {v}");
        v["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().expect("session");
        self.call(method, &format!("/session/{id}{path}"), body)
    }

    fn navigate(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until it returns `true`; fails with `what` after [`WAIT`].
    fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.script(script) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.script("return document.body.innerText;");
                panic!("timed out waiting for {what}; page text: {body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, to: &Path) {
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Ends the browser; best effort when unwinding from a failure.
            let _ = try_http(&self.addr, "DELETE", &format!("/session/{id}"), None);
        }
    }
}

#[test]
fn the_page_shows_the_server_under_load() {
    let (flood_pub, flood_sub) = flood_tools();
    let server = Server::start(&[]);
    let line_port = server.line().rsplit_once(':').unwrap().1.to_string();
    let bus_port = server.bus().rsplit_once(':').unwrap().1.to_string();

    // Subscribers: 20 on the line protocol and 5 over HTTP on `flood`, 3
    // on `quotes`; each stops after its count or when killed at the end.
    let _subs = [
        start_sub(
            &flood_sub,
            &[
                "--proto",
                "line",
                "-p",
                &line_port,
                "-c",
                "flood",
                "--connections",
                "20",
                "--count",
                "12000",
            ],
        ),
        start_sub(
            &flood_sub,
            &[
                "--proto",
                "http",
                "-p",
                &bus_port,
                "-c",
                "flood",
                "--connections",
                "5",
                "--count",
                "12000",
            ],
        ),
        start_sub(
            &flood_sub,
            &[
                "--proto",
                "line",
                "-p",
                &line_port,
                "-c",
                "quotes",
                "--connections",
                "3",
                "--count",
                "1",
            ],
        ),
    ];
    // Queue messages nobody takes yet.
    let mut sender = Client::connect_tcp(server.line()).unwrap();
    for i in 0..4 {
        sender
            .send(format!("job {i}").as_bytes(), 300, "work.orders", None)
            .unwrap();
    }
    sender.sync().unwrap();
    // 200 messages a second for at most 60 s: the page must see them.
    let _publisher = Guard(
        Command::new(&flood_pub)
            .args(["--proto", "line", "-p", &line_port, "-c", "flood"])
            .args(["--rate", "200", "--count", "12000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flood-pub"),
    );

    let browser = Browser::launch();
    browser.navigate(&format!("http://{}/switchboard/", server.bus()));
    browser.wait_until(
        "the stream to be live",
        "return document.getElementById('status').textContent === 'live';",
    );
    browser.wait_until(
        "non-zero rates in and out, and ten seconds of plot",
        "const v = (id) => Number(document.getElementById(id).dataset.value);
         return v('rate-in') > 0 && v('rate-out') > v('rate-in') && samples.length >= 10;",
    );
    let text = |id: &str| {
        browser
            .script(&format!(
                "return document.getElementById({}).innerText;",
                serde_json::to_string(id).unwrap()
            ))
            .as_str()
            .unwrap()
            .to_string()
    };
    let channels = text("top-channels");
    let first = channels.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("flood\t25"),
        "busiest channel: {channels}"
    );
    assert!(channels.contains("quotes\t3"), "{channels}");
    let queues = text("queues");
    assert!(queues.contains("work.orders\t4"), "{queues}");
    let doors = text("doors");
    assert!(doors.contains("line") && doors.contains("bus"), "{doors}");
    assert_eq!(text("cluster"), "no cluster");
    let connections: u64 = text("connections").parse().unwrap();
    // 28 subscribers, the publisher, the queue sender, the page's stream.
    assert!(connections >= 31, "{connections} connections shown");
    assert!(text("version").starts_with(env!("CARGO_PKG_VERSION")));

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    eprintln!("dashboard screenshot: {}", shot.display());
}
