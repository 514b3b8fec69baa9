//! The webhook dashboard in a real browser: headless Chromium driven
//! through chromedriver's WebDriver HTTP interface, against the real server
//! delivering to real receivers (`tests/hooks/receiver.py`).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` and `python3`
//! (`.ci/setup` installs them); without them the test fails and says so.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::webdriver::{http, try_http};
use common::{Server, TempDir};
use serde_json::{json, Value};

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hooks/receiver.py");
/// How long any one awaited condition may take.
const WAIT: Duration = Duration::from_secs(20);

/// A receiver process; its port.
struct Receiver(Child, u16);

impl Receiver {
    fn start(args: &[&str]) -> Receiver {
        let mut child = Command::new(common::program("python3"))
            .arg(RECEIVER)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).expect("a port");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .expect("listening PORT");
        // Keep its records flowing so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Receiver(child, port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver with one headless browser session.
struct Browser {
    driver: Child,
    addr: String,
    session: Option<String>,
    _profile: TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let chromium = common::program("chromium");
        // Port 0: chromedriver binds a free port and says which.
        let (driver, addr) = common::webdriver::start_chromedriver(WAIT);
        let profile = TempDir::new("hooks-browser");
        let mut b = Browser {
            driver,
            addr,
            session: None,
            _profile: profile,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = b.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            if TcpStream::connect(&b.addr).is_ok() {
                let (code, body) = http(&b.addr, "GET", "/status", None);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if code == 200 && v["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
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
            "--window-size=1000,600",
            &format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = b.call("POST", "/session", Some(&caps));
        b.session = Some(v["sessionId"].as_str().expect("a session").to_string());
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, raw) = http(&self.addr, method, path, body);
        let v: Value = serde_json::from_slice(&raw).expect("WebDriver JSON");
        assert_eq!(code, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().expect("session");
        self.call(method, &format!("/session/{id}{path}"), body)
    }

    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` until it returns true.
    fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        while self.script(script) != json!(true) {
            if Instant::now() > deadline {
                let text = self.script("return document.body.innerText;");
                panic!("timed out waiting for {what}; page: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self, id: &str) -> String {
        let v = self.script(&format!(
            "return document.getElementById('{id}').textContent;"
        ));
        v.as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Ends the browser (chromedriver answers once it has quit);
            // best effort when unwinding from a failure.
            let _ = try_http(&self.addr, "DELETE", &format!("/session/{id}"), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn api(hooks: &str, path: &str, body: Value) -> Value {
    let (status, raw) = http(hooks, "POST", path, Some(&body));
    let v: Value = serde_json::from_slice(&raw).expect("API JSON");
    assert_eq!(status, 200, "{path}: {v}");
    v
}

#[test]
fn the_dashboard_shows_live_counts() {
    let server = Server::start(&["--hooks-listen", "127.0.0.1:0", "--hook-retries", "1"]);
    let hooks = server.addr("hooks").to_string();
    let good = Receiver::start(&[]);
    let bad = Receiver::start(&["--fail-first", "1000"]);
    let good_url = format!("http://127.0.0.1:{}/ok", good.1);
    let bad_url = format!("http://127.0.0.1:{}/<b>failing</b>", bad.1);
    api(
        &hooks,
        "/connect/",
        json!({"ClientURL": good_url, "mode": "receive"}),
    );
    api(
        &hooks,
        "/connect/",
        json!({"ClientURL": bad_url, "mode": "receive"}),
    );
    let sender = api(
        &hooks,
        "/connect/",
        json!({"ClientURL": "the test", "mode": "send"}),
    )["id"]
        .clone();
    for i in 0..3 {
        api(
            &hooks,
            "/send/",
            json!({"id": sender, "body": format!("m{i}")}),
        );
    }

    let browser = Browser::launch();
    browser.session(
        "POST",
        "/url",
        Some(&json!({"url": format!("http://{hooks}/dashboard/")})),
    );
    assert_eq!(
        browser.script("return document.title;"),
        json!("switchboard webhooks")
    );
    browser.wait_until(
        "three completed sends",
        "return document.getElementById('completed').textContent === '3';",
    );
    assert_eq!(browser.text("readers"), "2");
    assert_eq!(browser.text("writers"), "1");
    // The URL is shown as text, not markup.
    let rows = browser.script(
        "return [...document.querySelectorAll('#receivers tr')].map(r => \
         [...r.children].map(td => td.textContent));",
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    assert_eq!(rows[1][1], json!(bad_url));
    assert_eq!(
        browser.script("return document.querySelectorAll('#receivers b').length;"),
        json!(0)
    );
    // Live: the failing receiver's messages fail one by one, and more sends
    // show up without a reload.
    browser.wait_until(
        "the failing receiver's three failures",
        "const r = document.querySelector('#receivers tr[data-id=\"2\"]'); \
         return !!r && r.children[7].textContent === '3' && r.children[7].className === 'bad';",
    );
    for i in 3..5 {
        api(
            &hooks,
            "/send/",
            json!({"id": sender, "body": format!("m{i}")}),
        );
    }
    browser.wait_until(
        "five completed sends",
        "return document.getElementById('completed').textContent === '5';",
    );
    browser.wait_until(
        "the failing receiver's five failures",
        "const r = document.querySelector('#receivers tr[data-id=\"2\"]'); \
         return !!r && r.children[7].textContent === '5';",
    );
    // Each failed message was tried twice (--hook-retries 1).
    assert_eq!(browser.text("retried"), "5");
    assert_eq!(browser.text("failed"), "5");

    let v = browser.session("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"));
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hooks-dashboard.png");
    std::fs::write(&shot, png).expect("write the screenshot");
    eprintln!("screenshot: {}", shot.display());
}
