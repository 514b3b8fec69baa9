//! What subscribers ask for, end to end against the real binary with real
//! clients: wildcard and multi-channel subscriptions (the line protocol and
//! curl), presence counts, and history with resume (curl, the line
//! protocol, and an EventSource in headless Chromium cut off mid-stream).
//!
//! Ordering is never left to timing: a subscription is known to be in place
//! from the stats page or the presence endpoint (each fetch a round trip
//! through the server's loop), and "nothing else arrived" is checked only
//! after a probe message that must arrive after anything that should not.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{connect, read_exact_n, read_to_close, read_until, send, stat, Server, Stats};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `curl`, which must be installed (.ci/run installs it).
fn curl() -> Command {
    let mut c = Command::new("curl");
    // A hung curl fails its test (exit 28) instead of hanging it.
    c.arg("--silent")
        .arg("--show-error")
        .args(["--max-time", "60"]);
    c
}

/// A child process whose stdout is read by a thread, so that a test can
/// wait for output with a deadline.
struct Streaming {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    got: Vec<u8>,
}

impl Streaming {
    fn spawn(mut cmd: Command) -> Streaming {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            rx,
            got: Vec::new(),
        }
    }

    /// Everything up to and including `needle`, waiting for it.
    fn until(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(i) = self.got.windows(needle.len()).position(|w| w == needle) {
                return self.got.drain(..i + needle.len()).collect();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.got.extend(bytes),
                Err(_) => panic!(
                    "no {:?} in the child's output: {}",
                    show(needle),
                    show(&self.got)
                ),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes over HTTP with curl; returns the status.
fn curl_publish(bus: &str, channel: &str, body: &str) -> String {
    let out = curl()
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Content-Type: text/plain", "--data-binary", body])
        .arg(format!("http://{bus}/msgbus/{channel}"))
        .output()
        .unwrap();
    show(&out.stdout)
}

/// Waits until the server holds `n` subscriptions in all.
fn wait_subscribers(stats: &mut Stats, n: u64) {
    stats.wait_for(&format!("{n} subscriptions"), |v| {
        stat(v, "subscribers") == n
    });
}

#[test]
fn wildcards_and_several_channels_on_the_line_and_over_curl() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut one = connect(server.line());
    send(&mut one, b"+ sensors.*.temp\r\n");
    let mut rest = connect(server.line());
    send(&mut rest, b"+ sensors.>\r\n");
    // A pattern, as multipart: each part names its channel.
    let mut multipart = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", &format!("http://{}/msgbus/sensors.>", server.bus())]);
        c
    });
    // Two names in one subscription, as an event stream: each event is
    // named after its channel.
    let mut sse = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "-H", "Accept: text/event-stream"])
            .arg(format!(
                "http://{}/msgbus/?channel=news&channel=sensors.*.temp",
                server.bus()
            ));
        c
    });
    wait_subscribers(&mut stats, 5);

    let mut publisher = connect(server.line());
    send(
        &mut publisher,
        b"! 2 sensors.a.temp text/plain\r\n21\r\n\
          ! 2 sensors.b.hum text/plain\r\n40\r\n\
          ! 1 news text/plain\r\nn\r\n\
          ! 1 sensors text/plain\r\ns\r\n\
          ! 1 other.a.temp text/plain\r\no\r\n",
    );
    // The probe: every subscriber hears it, after everything before it.
    assert_eq!(curl_publish(server.bus(), "sensors.z.temp", "end"), "204");

    let probe = b"! 3 sensors.z.temp text/plain\r\nend\r\n";
    assert_eq!(
        show(&read_until(&mut one, probe)),
        show(b"! 2 sensors.a.temp text/plain\r\n21\r\n! 3 sensors.z.temp text/plain\r\nend\r\n")
    );
    assert_eq!(
        show(&read_until(&mut rest, probe)),
        show(
            b"! 2 sensors.a.temp text/plain\r\n21\r\n! 2 sensors.b.hum text/plain\r\n40\r\n\
              ! 3 sensors.z.temp text/plain\r\nend\r\n"
        )
    );
    let parts = show(&multipart.until(b"end\r\n--00MsgBus00\r\n"));
    let locations: Vec<&str> = parts
        .lines()
        .filter_map(|l| l.strip_prefix("Content-Location: "))
        .collect();
    assert_eq!(
        locations,
        [
            "/msgbus/sensors.a.temp",
            "/msgbus/sensors.b.hum",
            "/msgbus/sensors.z.temp"
        ],
        "{parts}"
    );
    let events = show(&sse.until(b"data: end\n\n"));
    let names: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        ["sensors.a.temp", "news", "sensors.z.temp"],
        "{events}"
    );

    // A malformed pattern, and a publish to a wildcard name, on both doors.
    let mut bad = connect(server.line());
    send(&mut bad, b"+ a.>.b\r\n");
    assert_eq!(
        show(&read_to_close(&mut bad)),
        "- `>` may only be the last token of a pattern\r\n"
    );
    let mut bad = connect(server.line());
    send(&mut bad, b"! 1 sensors.*.temp\r\nx\r\n");
    assert_eq!(
        show(&read_to_close(&mut bad)),
        "- cannot publish to a channel name with a wildcard token (* or >)\r\n"
    );
    let refused = curl()
        .args(["-w", "\n%{http_code}", "-H", "Content-Type: text/plain"])
        .args(["--data-binary", "x"])
        .arg(format!("http://{}/msgbus/sensors.>", server.bus()))
        .output()
        .unwrap();
    assert_eq!(
        show(&refused.stdout),
        "400 Bad Request: cannot publish to a channel name with a wildcard token (* or >)\n\n400"
    );
    let listed_twice = curl()
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{}/msgbus/news?channel=x", server.bus()))
        .output()
        .unwrap();
    assert!(show(&listed_twice.stdout).ends_with("\n400"));

    // Unsubscribing a pattern stops it; the probe proves nothing came.
    send(&mut one, b"~ sensors.*.temp\r\n+ probe\r\n");
    common::line_sync(&mut one, "one");
    send(
        &mut publisher,
        b"! 1 sensors.c.temp\r\nx\r\n! 1 probe\r\np\r\n",
    );
    let want = b"! 1 probe application/octet-stream\r\np\r\n";
    assert_eq!(show(&read_exact_n(&mut one, want.len())), show(want));
}

/// `GET /msgbus-presence/NAME` as JSON, on a connection of its own.
fn presence(bus: &str, name: &str) -> serde_json::Value {
    let mut s = connect(bus);
    let req =
        format!("GET /msgbus-presence/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    send(&mut s, req.as_bytes());
    let got = read_to_close(&mut s);
    let text = show(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

/// `= NAME` on the line protocol: the answer line.
fn line_presence(s: &mut TcpStream, name: &str) -> String {
    send(s, format!("= {name}\r\n").as_bytes());
    show(&read_until(s, b"\r\n"))
}

#[test]
fn presence_counts_subscribers_as_they_come_and_go_on_both_doors() {
    let server = Server::start(&["--presence-events"]);
    let mut asker = connect(server.line());
    // Join and leave events of `room`, seen by a pattern subscriber.
    let mut watcher = connect(server.line());
    send(&mut watcher, b"+ $presence.>\r\n");
    assert_eq!(
        line_presence(&mut watcher, "$presence.>"),
        "= $presence.> 1 line=1 http=0 receivers=1\r\n"
    );
    assert_eq!(
        line_presence(&mut asker, "room"),
        "= room 0 line=0 http=0 receivers=0\r\n"
    );

    let mut a = connect(server.line());
    send(&mut a, b"+ room\r\n+ room.*\r\n");
    common::line_sync(&mut a, "a");
    let mut sse = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "-H", "Accept: text/event-stream"])
            .arg(format!("http://{}/msgbus/room", server.bus()));
        c
    });
    sse.until(b": subscribed\n\n");
    let mut multi = Streaming::spawn({
        let mut c = curl();
        c.args(["-N"]).arg(format!(
            "http://{}/msgbus/?channel=room&channel=room.*",
            server.bus()
        ));
        c
    });
    multi.until(b"--00MsgBus00");
    let v = presence(server.bus(), "room");
    assert_eq!(v["kind"], "channel");
    assert_eq!(v["subscribers"], 3, "{v}");
    assert_eq!(v["doors"]["line"], 1);
    assert_eq!(v["doors"]["http"], 2);
    assert_eq!(v["receivers"], 3);
    let v = presence(server.bus(), "room.*");
    assert_eq!(v["kind"], "pattern");
    assert_eq!(
        (v["subscribers"].as_u64(), v["doors"]["http"].as_u64()),
        (Some(2), Some(1))
    );
    // A channel the pattern matches: nobody subscribes to it by name.
    assert_eq!(
        line_presence(&mut asker, "room.7"),
        "= room.7 0 line=0 http=0 receivers=2\r\n"
    );

    // The event-stream subscriber goes away.
    drop(sse);
    let deadline = Instant::now() + IO_TIMEOUT;
    while presence(server.bus(), "room")["subscribers"] != 2 {
        assert!(Instant::now() < deadline, "the subscriber never left");
    }
    assert_eq!(presence(server.bus(), "room")["doors"]["http"], 1);
    send(&mut a, b"~ room\r\n");
    assert_eq!(
        line_presence(&mut a, "room"),
        "= room 1 line=0 http=1 receivers=1\r\n"
    );
    drop(multi);
    let deadline = Instant::now() + IO_TIMEOUT;
    while line_presence(&mut asker, "room") != "= room 0 line=0 http=0 receivers=0\r\n" {
        assert!(Instant::now() < deadline, "the last subscriber never left");
    }
    // Every join and leave of `room`, in order, as the watcher saw them.
    let mut events = Vec::new();
    let mut got = Vec::new();
    while events.len() < 6 {
        got.extend(read_until(&mut watcher, b"}\r\n"));
        let text = show(&got);
        events = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // The round trips through `sync.*` channels have events too.
            .filter(|v| v["channel"] == "room")
            .map(|v| format!("{} {}", v["event"].as_str().unwrap(), v["subscribers"]))
            .collect();
    }
    assert_eq!(
        events,
        ["join 1", "join 2", "join 3", "leave 2", "leave 1", "leave 0"]
    );
    assert!(show(&got).contains("! "));
}

/// The id of each `! LEN CHANNEL TYPE ID` frame in `frames` (a line
/// subscriber's that resumed).
fn line_ids(frames: &str) -> Vec<u64> {
    frames
        .lines()
        .filter(|l| l.starts_with("! "))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn history_resumes_on_every_framing_and_tells_of_gaps() {
    let server = Server::start(&["--history", "3"]);
    // A watcher that resumes from 0 (everything kept: nothing yet) learns
    // the ids: they start after the server's epoch, not at 1.
    let mut watcher = connect(server.line());
    send(&mut watcher, b"+ news 0\r\n");
    line_presence(&mut watcher, "news");
    let mut publisher = connect(server.line());
    for i in 1..=5 {
        send(
            &mut publisher,
            format!("! 2 news text/plain\r\nm{i}\r\n").as_bytes(),
        );
    }
    // A round trip (that publishes nothing, so takes no id).
    line_presence(&mut publisher, "news");
    let seen = show(&read_until(&mut watcher, b"m5\r\n"));
    let ids = line_ids(&seen);
    assert_eq!(ids.len(), 5, "{seen}");
    let base = ids[0] - 1;
    assert_eq!(ids, (1..=5).map(|k| base + k).collect::<Vec<_>>());
    // Larger than any id a run that started earlier could have given,
    // and still a safe integer for JavaScript.
    assert!(base > 1_700_000_000_000_000 && base < 1 << 53, "{base}");
    let id = |k: u64| base + k;

    // Ids 3, 4, 5 are kept (1 and 2 are gone). Resuming after 3 on the
    // event stream: 4 and 5, with their ids, then live ones.
    let mut sse = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "-H", "Accept: text/event-stream", "-H"])
            .arg(format!("Last-Event-ID: {}", id(3)))
            .arg(format!("http://{}/msgbus/news", server.bus()));
        c
    });
    let replayed = show(&sse.until(b"data: m5\n\n"));
    assert_eq!(
        replayed,
        format!(
            "retry: 3000\n: subscribed\n\n\
             : channel=news type=text/plain\nid: {}\ndata: m4\n\n\
             : channel=news type=text/plain\nid: {}\ndata: m5\n\n",
            id(4),
            id(5)
        )
    );
    // Resuming after 1 on multipart: a gap part first (2 is gone; the
    // first it gets is 3).
    let mut multipart = Streaming::spawn({
        let mut c = curl();
        c.arg("-N").arg(format!(
            "http://{}/msgbus/news?since={}",
            server.bus(),
            id(1)
        ));
        c
    });
    let parts = show(&multipart.until(b"m5\r\n--00MsgBus00\r\n"));
    assert!(
        parts.starts_with(&format!(
            "--00MsgBus00\r\nContent-Type: application/x-msgbus-gap\r\nGap-First-Id: {}\r\n\
             Content-Length: 0\r\n\r\n\r\n--00MsgBus00\r\nEvent-Id: {}\r\n",
            id(3),
            id(3)
        )),
        "{parts}"
    );
    let ids: Vec<u64> = parts
        .lines()
        .filter_map(|l| l.strip_prefix("Event-Id: "))
        .map(|i| i.parse().unwrap())
        .collect();
    assert_eq!(ids, [id(3), id(4), id(5)]);
    // The line protocol: `+ CH SINCE`, ids as a fifth field; `@` for a gap.
    let mut line = connect(server.line());
    send(&mut line, format!("+ news {}\r\n", id(4)).as_bytes());
    let want = format!("! 2 news text/plain {}\r\nm5\r\n", id(5));
    assert_eq!(show(&read_exact_n(&mut line, want.len())), want);
    let mut behind = connect(server.line());
    send(&mut behind, b"+ news 0\r\n");
    let want = format!(
        "@ news {}\r\n! 2 news text/plain {}\r\nm3\r\n",
        id(3),
        id(3)
    );
    assert_eq!(show(&read_exact_n(&mut behind, want.len())), want);

    // Live messages follow, once, with the next id.
    send(&mut publisher, b"! 2 news text/plain\r\nm6\r\n");
    assert_eq!(
        show(&sse.until(b"data: m6\n\n")),
        format!(
            ": channel=news type=text/plain\nid: {}\ndata: m6\n\n",
            id(6)
        )
    );
    let want = format!("! 2 news text/plain {}\r\nm6\r\n", id(6));
    assert_eq!(show(&read_exact_n(&mut line, want.len())), want);
    let want = format!(
        "! 2 news text/plain {}\r\nm4\r\n! 2 news text/plain {}\r\nm5\r\n! 2 news text/plain {}\r\nm6\r\n",
        id(4),
        id(5),
        id(6)
    );
    assert_eq!(show(&read_exact_n(&mut behind, want.len())), want);

    // Malformed ids are refused.
    let bad = curl()
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{}/msgbus/news?since=x", server.bus()))
        .output()
        .unwrap();
    assert!(
        show(&bad.stdout).ends_with("\n400"),
        "{}",
        show(&bad.stdout)
    );
    let mut bad = connect(server.line());
    send(&mut bad, b"+ news -1\r\n");
    assert_eq!(
        show(&read_to_close(&mut bad)),
        "- invalid since id format\r\n"
    );
}

/// Ids go on increasing across a restart, and a subscriber that resumes
/// from an id the previous run gave (by then higher than 1 plus what the
/// new run published, as ids restarting at 1 would have made it) is told
/// of a gap, with the first id it gets, on the event stream and on the
/// line protocol.
#[test]
fn an_id_from_before_a_restart_is_a_gap() {
    let publish_three = |server: &Server| -> Vec<u64> {
        let mut watcher = connect(server.line());
        send(&mut watcher, b"+ news 0\r\n");
        line_presence(&mut watcher, "news");
        let mut publisher = connect(server.line());
        for i in 1..=3 {
            send(
                &mut publisher,
                format!("! 2 news text/plain\r\nm{i}\r\n").as_bytes(),
            );
        }
        line_ids(&show(&read_until(&mut watcher, b"m3\r\n")))
    };
    let mut first = Server::start(&["--history", "10"]);
    let old = publish_three(&first);
    assert_eq!(old.len(), 3);
    // The last id a subscriber of the first run saw.
    let last_seen = old[2];
    assert_eq!(first.interrupt().code(), Some(0));

    let second = Server::start(&["--history", "10"]);
    let new = publish_three(&second);
    assert_eq!(new.len(), 3);
    assert!(new[0] > last_seen, "{new:?} after {old:?}");

    // SSE: Last-Event-ID from the first run (what a browser sends when it
    // reconnects to the restarted server): a gap naming the first id kept,
    // then every kept message.
    let mut sse = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "-H", "Accept: text/event-stream", "-H"])
            .arg(format!("Last-Event-ID: {last_seen}"))
            .arg(format!("http://{}/msgbus/news", second.bus()));
        c
    });
    assert_eq!(
        show(&sse.until(b"data: m3\n\n")),
        format!(
            "retry: 3000\n: subscribed\n\n\
             event: gap\ndata: {0}\n\n\
             : channel=news type=text/plain\nid: {0}\ndata: m1\n\n\
             : channel=news type=text/plain\nid: {1}\ndata: m2\n\n\
             : channel=news type=text/plain\nid: {2}\ndata: m3\n\n",
            new[0], new[1], new[2]
        )
    );
    // The line protocol, on every channel too.
    for name in ["news", "*"] {
        let mut line = connect(second.line());
        send(&mut line, format!("+ {name} {}\r\n", old[0]).as_bytes());
        let want = format!(
            "@ {name} {0}\r\n! 2 news text/plain {0}\r\nm1\r\n! 2 news text/plain {1}\r\nm2\r\n\
             ! 2 news text/plain {2}\r\nm3\r\n",
            new[0], new[1], new[2]
        );
        assert_eq!(show(&read_exact_n(&mut line, want.len())), want);
    }
}

#[test]
fn since_is_refused_without_history() {
    let server = Server::start(&[]);
    let out = curl()
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{}/msgbus/news?since=1", server.bus()))
        .output()
        .unwrap();
    assert_eq!(
        show(&out.stdout),
        "400 Bad Request: no history is kept (--history 0): no ?since=\n\n400"
    );
    let mut line = connect(server.line());
    send(&mut line, b"+ news 1\r\n");
    assert_eq!(
        show(&read_to_close(&mut line)),
        "- no history is kept (--history 0): no since id\r\n"
    );
}

/// A TCP relay between a client and the server that the test can cut, as a
/// network that drops connections does: both sides see their connection end.
struct Relay {
    addr: String,
    live: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let upstream = upstream.to_string();
        let registry = live.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut live = registry.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        // Ends when either side is closed or cut.
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, live }
    }

    /// Cuts every connection relayed so far.
    fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            s.shutdown(std::net::Shutdown::Both).unwrap_or(());
        }
    }
}

const RESUME_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>resume</title>
<style>body{font:16px sans-serif} li{margin:2px}</style></head>
<body><h1>EventSource resume</h1><p id="state">connecting</p><ol id="got"></ol>
<script>
window.seen = []; window.opens = 0; window.gaps = 0;
const state = document.getElementById('state');
const es = new EventSource('/msgbus/feed');
es.onopen = () => { window.opens++; state.textContent = 'open (' + window.opens + ')'; };
es.onerror = () => { state.textContent = 'reconnecting'; };
es.addEventListener('gap', () => { window.gaps++; });
es.onmessage = (e) => {
  window.seen.push(e.data + '@' + e.lastEventId);
  const li = document.createElement('li');
  li.textContent = e.data + ' (id ' + e.lastEventId + ')';
  document.getElementById('got').appendChild(li);
};
</script></body></html>
"#;

#[test]
fn an_event_source_cut_off_mid_stream_resumes_without_loss_or_repeat() {
    use common::webdriver::Browser;

    let docroot = common::TempDir::new("resume-page");
    std::fs::write(docroot.path().join("resume.html"), RESUME_PAGE).unwrap();
    let server = Server::start(&[
        "--history",
        "100",
        "--docroot",
        docroot.path().to_str().unwrap(),
    ]);
    let relay = Relay::start(server.bus());
    let browser = Browser::launch();
    browser.navigate(&format!("http://{}/resume.html", relay.addr));
    browser.wait_until("the EventSource to open", "return window.opens === 1;");
    let subscribed = |n: u64| {
        let deadline = Instant::now() + IO_TIMEOUT;
        while presence(server.bus(), "feed")["subscribers"] != n {
            assert!(Instant::now() < deadline, "never {n} subscribers of feed");
        }
    };
    subscribed(1);
    let mut publisher = connect(server.line());
    let publish = |p: &mut TcpStream, range: std::ops::RangeInclusive<u32>| {
        for i in range {
            send(p, format!("! 3 feed text/plain\r\nm{i:02}\r\n").as_bytes());
        }
    };
    publish(&mut publisher, 1..=5);
    browser.wait_until("five messages", "return window.seen.length === 5;");

    // The connection drops mid-stream; the server sees its subscriber go.
    relay.cut();
    subscribed(0);
    // Published while the page is cut off.
    publish(&mut publisher, 6..=10);
    // They were published while nobody subscribed.
    assert_eq!(
        line_presence(&mut publisher, "feed"),
        "= feed 0 line=0 http=0 receivers=0\r\n"
    );
    // The EventSource reconnects by itself, with Last-Event-ID.
    browser.wait_until("the EventSource to reopen", "return window.opens === 2;");
    subscribed(1);
    publish(&mut publisher, 11..=15);
    browser.wait_until("fifteen messages", "return window.seen.length >= 15;");

    let seen = browser.script("return window.seen;");
    // Ids follow one another from the run's first.
    let first: u64 = seen[0]
        .as_str()
        .unwrap()
        .split('@')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let want: Vec<String> = (1..=15u64)
        .map(|i| format!("m{i:02}@{}", first - 1 + i))
        .collect();
    assert_eq!(
        seen,
        serde_json::json!(want),
        "every message once, in order"
    );
    assert_eq!(browser.script("return window.gaps;"), serde_json::json!(0));
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/subscribers-resume.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
}

// ---------------------------------------------------------------------
// What the mutation round of src/http/bus.rs found untested

/// Without history a `Last-Event-ID` header is ignored, whatever it holds
/// (an `EventSource` sends back whatever id it last saw), while `?since=`
/// is refused (`since_is_refused_without_history`).
#[test]
fn a_last_event_id_is_ignored_without_history() {
    let server = Server::start(&[]);
    let mut s = connect(server.bus());
    send(
        &mut s,
        b"GET /msgbus/news HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\
          Last-Event-ID: not a number\r\n\r\n",
    );
    let head = show(&read_until(&mut s, b"\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/event-stream\r\n"),
        "{head}"
    );
}

/// `?channel=` may list exactly `--max-subscriptions` channels; one more is
/// refused with the limit named.
#[test]
fn a_subscription_lists_at_most_max_subscriptions_channels() {
    let server = Server::start(&["--max-subscriptions", "3"]);
    let mut ok = connect(server.bus());
    send(
        &mut ok,
        b"GET /msgbus/?channel=a&channel=b&channel=c HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let head = show(&read_until(&mut ok, b"\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut over = connect(server.bus());
    send(
        &mut over,
        b"GET /msgbus/?channel=a&channel=b&channel=c&channel=d HTTP/1.1\r\n\
          Host: t\r\nConnection: close\r\n\r\n",
    );
    let answer = show(&read_to_close(&mut over));
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("too many channels in one subscription (limit 3)"),
        "{answer}"
    );
}

/// What a subscriber sends after its request is read and dropped, however
/// much it is: the server does not hold it, nor stop reading (32 MiB, far
/// more than the sockets' buffers, written with a write timeout), and the
/// subscription goes on.
#[test]
fn a_subscribers_later_bytes_are_read_and_dropped() {
    let server = Server::start(&[]);
    let mut s = connect(server.bus());
    send(&mut s, b"GET /msgbus/news HTTP/1.0\r\n\r\n");
    read_until(&mut s, b"--00MsgBus00\r\n");
    let mut writer = s.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let junk = vec![b'j'; 64 * 1024];
    for i in 0..512 {
        std::io::Write::write_all(&mut writer, &junk)
            .unwrap_or_else(|e| panic!("write {i} of 64 KiB: {e}"));
    }
    assert_eq!(curl_publish(server.bus(), "news", "still here"), "204");
    let want =
        "Content-Type: text/plain\r\nContent-Length: 10\r\n\r\nstill here\r\n--00MsgBus00\r\n";
    assert_eq!(show(&read_exact_n(&mut s, want.len())), want);
}
