//! Fuzzes the JSON bodies of the webhook API
//! (`switchboard::http::hooks::parse_call`).
//!
//! The first byte picks the route (`/connect`, `/send`, `/disconnect`); the
//! rest is the body. Parsing may not panic; a refusal is a bad request
//! (never "full": only doing the call can find the server full); an
//! accepted call has the form of its route and a URL within the limit.
//!
//! Run: `fuzz/run.sh hooks_json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::broker::hooks::url::MAX_URL;
use switchboard::broker::hooks::Refused;
use switchboard::http::hooks::{parse_call, Call};

const ROUTES: [&str; 3] = ["/connect", "/send", "/disconnect"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(first) % ROUTES.len()];
    match (route, parse_call(route, body)) {
        ("/connect", Ok(Call::Connect { url, .. })) => assert!(url.len() <= MAX_URL),
        ("/send", Ok(Call::Send { .. })) | ("/disconnect", Ok(Call::Disconnect { .. })) => {}
        (_, Err(Refused::Bad(why))) => assert!(!why.is_empty()),
        (route, other) => panic!("{route}: {other:?}"),
    }
});
