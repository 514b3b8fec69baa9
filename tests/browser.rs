//! The chat example in a real browser: headless Chromium driven through
//! chromedriver's WebDriver HTTP interface, against the real server serving
//! `examples/chat` as its docroot.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run`
//! installs them); without them the test fails and says so.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::webdriver::Browser;
use common::{connect, read_until, send, Server};
use serde_json::json;

/// A JavaScript string literal for `s`.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The script that is true once `#messages` holds an item whose text
/// contains `needle`.
fn has_message(needle: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#messages li')]\
         .some(li => li.textContent.includes({}));",
        js_str(needle)
    )
}

fn curl_publish(bus: &str, channel: &str, body: &str) {
    curl_publish_as(bus, channel, body, None);
}

/// Publishes with real curl, as `user` (Basic credentials) when given.
fn curl_publish_as(bus: &str, channel: &str, body: &str, user: Option<&str>) {
    let mut cmd = Command::new("curl");
    if let Some(user) = user {
        cmd.args(["-u", &format!("{user}:")]);
    }
    let out = cmd
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "Content-Type: text/plain", "--data-binary", body])
        .arg(format!("http://{bus}/msgbus/{channel}"))
        .output()
        .expect("run curl (install the curl package)");
    assert!(out.status.success(), "curl failed: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "204",
        "publish status"
    );
}

#[test]
fn chat_page_sends_and_receives() {
    let docroot = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat");
    let server = Server::start(&["--docroot", docroot.to_str().unwrap()]);
    let bus = server.bus().to_string();
    let browser = Browser::launch();

    browser.navigate(&format!("http://{bus}/"));
    let title = browser.script("return document.title;");
    assert_eq!(title, json!("switchboard chat"));
    browser.wait_until(
        "the EventSource to open",
        "return document.body.dataset.ready === 'true';",
    );

    // From an ordinary HTTP client to the page. The markup must show as text.
    let from_curl = "hello from curl <b>not bold</b> & co";
    curl_publish(&bus, "chat", from_curl);
    browser.wait_until("the curl message on the page", &has_message(from_curl));
    let bold = browser.script("return document.querySelectorAll('#messages b').length;");
    assert_eq!(bold, json!(0), "a message body was parsed as HTML");

    // A line break in a body survives the event stream.
    curl_publish(&bus, "chat", "two\nlines");
    browser.wait_until(
        "the two-line message",
        "return [...document.querySelectorAll('#messages .body')]\
         .some(b => b.textContent === 'two\\nlines');",
    );

    // From the page to a raw multipart subscriber.
    let mut raw = connect(&bus);
    send(&mut raw, b"GET /msgbus/chat HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = read_until(&mut raw, b"--00MsgBus00\r\n");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "subscribe answer: {head}");

    let from_page = "hello from the browser";
    browser.type_into("#name", "alice");
    browser.type_into("#text", from_page);
    browser.click("#send");
    let got = read_until(&mut raw, from_page.as_bytes());
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("Content-Type: text/plain"), "part: {got}");
    assert!(got.contains("From: alice"), "the name is the sender: {got}");
    browser.wait_until(
        "the page's own message with its sender",
        "return [...document.querySelectorAll('#messages li.mine')]\
         .some(li => li.querySelector('.sender').textContent === 'alice' \
                  && li.querySelector('.body').textContent === 'hello from the browser');",
    );
    let cleared = browser.script("return document.getElementById('text').value;");
    assert_eq!(
        cleared,
        json!(""),
        "the message field is cleared after sending"
    );

    // Someone else's message carries their name (the JSON event stream).
    curl_publish_as(&bus, "chat", "hi from bob", Some("bob"));
    browser.wait_until(
        "bob's message with his name",
        "return [...document.querySelectorAll('#messages li')]\
         .some(li => li.querySelector('.sender') \
                  && li.querySelector('.sender').textContent === 'bob' \
                  && li.querySelector('.body').textContent === 'hi from bob');",
    );

    let count = browser.script("return document.querySelectorAll('#messages li').length;");
    assert_eq!(count, json!(4), "each message appears once");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-chat.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
}
