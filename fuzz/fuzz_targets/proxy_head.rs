//! Fuzzes the check of a proxy handler's reply head
//! (`switchboard::http::proxy::parse_head`, `["STATUS", ["Name", "value",
//! ...]]` in JSON).
//!
//! Any bytes: parsing may not panic. An accepted head has a final status
//! with a reason, and headers the server can write as they are: token
//! names, values without control characters, no Content-Length and no
//! hop-by-hop header among them.
//!
//! Run: `fuzz/run.sh proxy_head`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::http::proxy::parse_head;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fuzz_target!(|body: &[u8]| {
    let Ok(head) = parse_head(body) else {
        return;
    };
    assert!((200..=999).contains(&head.status));
    assert!(!head.reason.is_empty());
    for (name, value) in &head.headers {
        assert!(
            !name.is_empty() && name.bytes().all(is_token_byte),
            "{name:?}"
        );
        assert!(
            !value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f),
            "{value:?}"
        );
        assert!(
            !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)),
            "{name} passed through"
        );
    }
});
