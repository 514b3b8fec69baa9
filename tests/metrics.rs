//! `/metrics` and `/healthz` against the real server: the exposition is
//! parsed here and its counters move with traffic; `promtool check metrics`
//! accepts it; a real Prometheus scrapes `--metrics-listen` and its query
//! API shows `up == 1` and a counter that moved.
//!
//! `promtool` and `prometheus` come with the Debian package `prometheus`;
//! without them these tests fail and say so.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    connect, line_sync, read_exact_n, read_to_close, read_until, send, stat, RedisServer, Server,
    Stats, TempDir,
};

/// One HTTP/1.0 request (the answer ends with the connection, whatever
/// the peer): the status, the head and the body.
fn http(addr: &str, request: &str) -> (u16, String, String) {
    let mut s = connect(addr);
    send(&mut s, request.as_bytes());
    let got = String::from_utf8(read_to_close(&mut s)).expect("an answer in UTF-8");
    let (head, body) = got
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {got:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n"))
}

/// A parsed exposition: samples by `name{labels}` as written, and each
/// family's type.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.iter().any(|h| h == name), "TYPE before HELP: {line}");
                types.insert(name.to_string(), kind.to_string());
            } else {
                let (key, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample: {line:?}"));
                let name = key.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(types.contains_key(family), "no TYPE for {line:?}");
                assert!(name.starts_with("switchboard_"), "{line:?}");
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number: {line:?}"));
                assert!(samples.insert(key.to_string(), v).is_none(), "twice: {key}");
            }
        }
        for (name, kind) in &types {
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
        }
        Scrape { samples, types }
    }

    fn of(addr: &str) -> Scrape {
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200, "{head}\n{body}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        Scrape::parse(&body)
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}"))
    }
}

#[test]
fn counters_move_after_traffic() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.addr("metrics");
    let before = Scrape::one_of_each(server.bus(), metrics);
    assert_eq!(
        before.types["switchboard_loop_turn_duration_seconds"],
        "histogram"
    );
    assert_eq!(before.types["switchboard_connections_open"], "gauge");

    // A line subscriber, and 5 publications from another line connection.
    let mut sub = connect(server.line());
    send(&mut sub, b"+ news\r\n");
    line_sync(&mut sub, "sub");
    let mut publisher = connect(server.line());
    for _ in 0..5 {
        send(&mut publisher, b"! 2 news\r\nhi\r\n");
    }
    line_sync(&mut publisher, "pub");
    let want = "! 2 news application/octet-stream\r\nhi\r\n".repeat(5);
    assert_eq!(read_exact_n(&mut sub, want.len()), want.as_bytes());
    // One HTTP publication to the same channel.
    let (status, _, _) = http(
        server.bus(),
        "POST /msgbus/news HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nho",
    );
    assert_eq!(status, 204);
    read_until(&mut sub, b"ho\r\n");
    // One queued message nobody takes.
    send(&mut publisher, b"> 3 60 jobs\r\nabc\r\n");
    line_sync(&mut publisher, "queued");
    // A connection that says goodbye.
    let mut quitter = connect(server.line());
    send(&mut quitter, b".\r\n");
    read_to_close(&mut quitter);

    let after = Scrape::of(metrics);
    let grew = |key: &str| after.get(key) - before.get(key);
    // 5 publications and a sync message per line_sync (3), 1 queued send.
    assert_eq!(grew("switchboard_messages_in_total{door=\"line\"}"), 9.0);
    assert_eq!(grew("switchboard_messages_in_total{door=\"bus\"}"), 1.0);
    // The subscriber got 6 news and its own sync message.
    assert_eq!(
        grew("switchboard_messages_delivered_total{door=\"line\"}"),
        9.0
    );
    assert_eq!(grew("switchboard_published_total"), 9.0);
    assert_eq!(
        grew("switchboard_connections_accepted_total{door=\"line\"}"),
        3.0
    );
    assert!(grew("switchboard_connections_accepted_total{door=\"bus\"}") >= 1.0);
    assert_eq!(
        after.get("switchboard_connections_open{door=\"line\"}"),
        2.0
    );
    // The quitter, the HTTP/1.0 publish and the first scrape of the metrics door.
    assert_eq!(
        grew("switchboard_connections_closed_total{reason=\"quit\"}"),
        3.0
    );
    assert!(grew("switchboard_bytes_in_total{door=\"line\"}") >= 5.0 * 14.0);
    assert!(grew("switchboard_bytes_out_total{door=\"line\"}") >= want.len() as f64);
    assert_eq!(after.get("switchboard_channels"), 1.0);
    assert_eq!(after.get("switchboard_subscribers"), 1.0);
    assert_eq!(after.get("switchboard_queue_depth"), 1.0);
    assert_eq!(grew("switchboard_queue_sent_total"), 1.0);
    assert!(after.get("switchboard_queue_oldest_message_age_seconds") >= 0.0);
    // Every turn falls in +Inf; the buckets never go down.
    let count = after.get("switchboard_loop_turn_duration_seconds_count");
    assert!(count > before.get("switchboard_loop_turn_duration_seconds_count"));
    assert_eq!(
        after.get("switchboard_loop_turn_duration_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    let mut last = 0.0;
    for (key, v) in sorted_buckets(&after) {
        assert!(v >= last, "{key} {v} < {last}");
        last = v;
    }
    assert_eq!(
        after.get(&format!(
            "switchboard_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

/// The histogram's buckets, by bound.
fn sorted_buckets(s: &Scrape) -> Vec<(String, f64)> {
    let prefix = "switchboard_loop_turn_duration_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, String, f64)> = s
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            Some((bound, k.clone(), *v))
        })
        .collect();
    assert_eq!(buckets.len(), 15);
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    buckets.into_iter().map(|(_, k, v)| (k, v)).collect()
}

impl Scrape {
    /// Scrapes the bus door and the metrics door, checks that they carry the
    /// same families, and returns the later scrape.
    fn one_of_each(bus: &str, metrics: &str) -> Scrape {
        let a = Scrape::of(bus);
        let b = Scrape::of(metrics);
        let mut fa: Vec<_> = a.types.keys().collect();
        let mut fb: Vec<_> = b.types.keys().collect();
        fa.sort();
        fb.sort();
        assert_eq!(fa, fb);
        b
    }
}

/// The cluster's counters as the stats page has them: `copies` (the further
/// copies of one message Redis sends a node whose subscriptions match its
/// channel more than once) and `sharded`.
#[test]
fn cluster_copies_and_sharded_as_on_the_stats_page() {
    const N: u64 = 30;
    let redis = RedisServer::start("--port", &[]);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let a = Server::start(&["--cluster", &url]);
    let b = Server::start(&["--cluster", &url]);
    // Two subscriptions of b match sensors.x.temp: Redis sends b two
    // copies of each message, b delivers the first and counts the second.
    let mut exact = connect(b.line());
    send(&mut exact, b"+ sensors.x.temp\r\n");
    let mut pattern = connect(b.line());
    send(&mut pattern, b"+ sensors.*.temp\r\n");
    let joined = |n: &Server, subscriptions: u64| {
        Stats::open(n.bus()).wait_for("the cluster link", |v| {
            v["cluster"]["up"] == true && stat(v, "cluster.confirmed") == subscriptions
        })
    };
    joined(&a, 0);
    joined(&b, 2);
    let scrape = Scrape::of(b.bus());
    assert_eq!(scrape.get("switchboard_cluster_copies_total"), 0.0);
    assert_eq!(scrape.get("switchboard_cluster_sharded"), 0.0);
    assert_eq!(scrape.types["switchboard_cluster_sharded"], "gauge");
    let mut publisher = connect(a.line());
    for i in 0..N {
        send(
            &mut publisher,
            format!("! 2 sensors.x.temp text/plain\r\n{i:02}\r\n").as_bytes(),
        );
    }
    for sub in [&mut exact, &mut pattern] {
        read_until(sub, format!("\r\n{:02}\r\n", N - 1).as_bytes());
    }
    let v = Stats::open(b.bus()).wait_for("every copy", |v| stat(v, "cluster.copies") == N);
    let scrape = Scrape::of(b.bus());
    assert_eq!(
        scrape.get("switchboard_cluster_copies_total"),
        N as f64,
        "{v}"
    );
    assert_eq!(
        scrape.get("switchboard_cluster_received_total"),
        N as f64,
        "{v}"
    );
    // The publishing node got no copies (its own messages are echoes).
    assert_eq!(
        Scrape::of(a.bus()).get("switchboard_cluster_copies_total"),
        0.0
    );

    // Sharded pub/sub on both links: 1, as on the stats page (Redis 7
    // has it; an older one is refused and the links stay classic).
    let c = Server::start(&["--cluster", &url, "--cluster-sharded"]);
    let v = Stats::open(c.bus()).wait_for("the cluster link", |v| v["cluster"]["up"] == true);
    let sharded = v["cluster"]["sharded"] == true;
    assert_eq!(
        Scrape::of(c.bus()).get("switchboard_cluster_sharded"),
        if sharded { 1.0 } else { 0.0 },
        "{v}"
    );
    let version = Command::new(common::program("redis-server"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no version in {version:?}"));
    assert_eq!(sharded, major >= 7, "{version} {v}");
}

#[test]
fn healthz_and_the_metrics_door() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0", "--secret", "pw"]);
    let metrics = server.addr("metrics");
    for path in ["/healthz", "/metrics"] {
        // The metrics door asks for no credentials; the bus keeps its secret.
        let (status, _, _) = get(metrics, path);
        assert_eq!(status, 200, "{path} on the metrics door");
        let (status, _, _) = get(server.bus(), path);
        assert_eq!(status, 401, "{path} on the bus without credentials");
        let (status, _, body) = http(
            server.bus(),
            &format!("GET {path} HTTP/1.0\r\nAuthorization: Basic dTpwdw==\r\n\r\n"),
        );
        assert_eq!(status, 200, "{path} on the bus with credentials");
        if path == "/healthz" {
            assert_eq!(body, "ok\n");
        }
    }
    // Nothing else is served there, and nothing but GET and HEAD.
    let (status, _, _) = get(metrics, "/msgbus-stats");
    assert_eq!(status, 404);
    let (status, _, _) = http(
        metrics,
        "POST /metrics HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(status, 404);
    let (status, head, body) = http(metrics, "HEAD /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
}

#[test]
fn the_stats_page_has_version_and_uptime() {
    let server = Server::start(&[]);
    let v = common::Stats::open(server.bus()).get();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["uptime_s"].is_u64(), "{v}");
    // The fields that were there before are still there.
    assert!(v["connections"]["total"].is_u64(), "{v}");
}

/// The path of `program`, or a failure that names the package to install.
fn require(program: &str) -> String {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p.to_string_lossy().into_owned(),
        None => panic!(
            "`{program}` is not installed: install the Debian package `prometheus` \
             (apt-get install prometheus), which .ci/run installs"
        ),
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let promtool = require("promtool");
    let server = Server::start(&[]);
    // Some traffic first, so that the counters are not all zero.
    let mut c = connect(server.line());
    send(&mut c, b"> 1 60 q\r\nx\r\n");
    line_sync(&mut c, "a");
    let (status, _, text) = get(server.bus(), "/metrics");
    assert_eq!(status, 200);
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 0 and says nothing when the metrics are clean; lint
    // findings (naming, units) come with exit status 3, errors with 1.
    assert!(out.status.success(), "promtool: {}: {said}", out.status);
    assert_eq!(said.trim(), "", "promtool found problems");
}

/// A Prometheus server started for one test, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second. It listens on port
    /// 0 and logs the port it got (`msg="Listening on" address=…`), which
    /// is read from its log: no port is chosen here.
    fn start(target: &str) -> Prometheus {
        let binary = require("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Nobody listens once the address is known: keep draining.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut log = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                let _ = child.kill();
                panic!(
                    "prometheus did not say where it listens ({e}):\n{}",
                    log.join("\n")
                )
            });
            if line.contains("msg=\"Listening on\"") {
                if let Some(a) = line.split("address=").nth(1) {
                    break a.split_whitespace().next().unwrap().to_string();
                }
            }
            log.push(line);
        };
        // Dropped (killed) from here on, should a check below fail.
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        // It answers 503 until it has loaded its storage and configuration.
        loop {
            let (status, _, body) = get(&prometheus.addr, "/-/ready");
            if status == 200 {
                break;
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "prometheus is not ready: {status} {body}"
            );
            // As in wait_for: polling, no ordering depends on the pause.
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of an instant query that yields one sample, or `None` when
    /// it yields none (yet).
    fn query(&self, expr: &str) -> Option<f64> {
        let q: String = form_urlencoded_query(expr);
        let (status, head, body) = get(&self.addr, &format!("/api/v1/query?query={q}"));
        assert_eq!(status, 200, "{head}\n{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        let result = v["data"]["result"].as_array().unwrap();
        assert!(result.len() <= 1, "{expr}: {v}");
        result
            .first()
            .map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Queries `expr` until `done` holds for its value; fails after 60 s.
    fn wait_for(&self, expr: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.query(expr);
            if let Some(v) = got.filter(|v| done(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never saw it: {expr} = {got:?}"
            );
            // Polling Prometheus' API, whose scrapes run on its own clock:
            // nothing here depends on the length of the pause.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` percent-encoded for a query string.
fn form_urlencoded_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_switchboard() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let prometheus = Prometheus::start(server.addr("metrics"));
    prometheus.wait_for("up{job=\"switchboard\"}", |v| v == 1.0);
    let counter = "switchboard_messages_in_total{job=\"switchboard\",door=\"line\"}";
    let first = prometheus.wait_for(counter, |_| true);
    let mut c = connect(server.line());
    for _ in 0..7 {
        send(&mut c, b"! 1 somewhere\r\nx\r\n");
    }
    line_sync(&mut c, "a");
    // The 7 publications and the sync message.
    prometheus.wait_for(counter, |v| v >= first + 8.0);
    assert_eq!(prometheus.query("up{job=\"switchboard\"}"), Some(1.0));
}
