//! A minimal HTTP/1.1 client for the browser tests' WebDriver calls
//! (chromedriver) and the pages they check: one exchange per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
