//! The browser tests' WebDriver side: a minimal HTTP/1.1 client for
//! chromedriver's calls and the pages they check (one exchange per
//! connection), and [`Browser`], one headless Chromium session.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::TempDir;

/// Starts chromedriver on a port it chooses (`--port=0`) and returns it
/// with the address it said it listens on.
pub fn start_chromedriver(patience: Duration) -> (Child, String) {
    let mut driver = Command::new(super::program("chromedriver"))
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let stdout = driver.stdout.take().expect("chromedriver stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Nobody listens once the port is known: keep draining.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + patience;
    let port = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("chromedriver said on which port it listens");
        if let Some(rest) = line.split_once("started successfully on port ") {
            break rest
                .1
                .trim_end_matches('.')
                .parse::<u16>()
                .unwrap_or_else(|e| panic!("chromedriver's port in {line:?}: {e}"));
        }
    };
    (driver, format!("127.0.0.1:{port}"))
}

/// One HTTP/1.1 exchange with `Connection: close`: status and body.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    try_http(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    // Read the head, then the body by its length (chromedriver may keep
    // the connection open), by chunks, or to the close.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).map_err(|e| format!("read a head: {e}"))?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) => {
            while raw.len() < split + 4 + n {
                let got = s.read(&mut buf).map_err(|e| format!("read a body: {e}"))?;
                if got == 0 {
                    return Err("closed inside a body".into());
                }
                raw.extend_from_slice(&buf[..got]);
            }
            raw.truncate(split + 4 + n);
        }
        None => {
            s.read_to_end(&mut raw)
                .map_err(|e| format!("read to the close: {e}"))?;
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let text = String::from_utf8_lossy(&raw[..eol]).to_string();
        let size =
            usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// How long any one awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(15);
/// The W3C WebDriver key of an element reference.
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: String,
    session: Option<String>,
    profile: TempDir,
}

impl Browser {
    pub fn launch() -> Browser {
        let chromium = super::program("chromium");
        // Port 0: chromedriver binds a free port and says which.
        let (driver, addr) = start_chromedriver(WAIT);
        let profile = TempDir::new("browser-profile");
        let mut browser = Browser {
            driver,
            addr,
            session: None,
            profile,
        };
        browser.wait_for_driver();
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
            "--window-size=900,700",
            &format!("--user-data-dir={}", browser.profile.path().display()),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chromium, "args": args },
                }
            }
        });
        let v = browser.call("POST", "/session", Some(&caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_string();
        browser.session = Some(id);
        browser
    }

    pub fn wait_for_driver(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            if TcpStream::connect(&self.addr).is_ok() {
                let (code, body) = http(&self.addr, "GET", "/status", None);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if code == 200 && v["value"]["ready"] == json!(true) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A WebDriver command; returns its `value`, panics on an error answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
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

    pub fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().expect("session");
        self.call(method, &format!("/session/{id}{path}"), body)
    }

    pub fn navigate(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    pub fn element(&self, css: &str) -> String {
        let v = self.session_call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css);
        self.session_call("POST", &format!("/element/{el}/clear"), Some(&json!({})));
        self.session_call(
            "POST",
            &format!("/element/{el}/value"),
            Some(&json!({ "text": text })),
        );
    }

    pub fn click(&self, css: &str) {
        let el = self.element(css);
        self.session_call("POST", &format!("/element/{el}/click"), Some(&json!({})));
    }

    /// Polls `script` until it returns `true`; panics with `what` after [`WAIT`].
    pub fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.script(script) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.script("return document.body.innerText;");
                panic!("timed out waiting for {what}; page text: {body}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn screenshot(&self, to: &Path) {
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).expect("create screenshot dir");
        }
        std::fs::write(to, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // Ends the browser; best effort when unwinding from a failure.
            let _ = try_http(&self.addr, "DELETE", &format!("/session/{id}"), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
