//! Fuzzes the JSON body of a message-switch transfer
//! (`switchboard::http::switch::parse_transfer`).
//!
//! Any bytes: parsing may not panic; a refusal is a `400`; an accepted body
//! names queues that were strings in it, and its timeout becomes a wait of
//! at most the longest the switch honours.
//!
//! Run: `fuzz/run.sh switch_json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::broker::queues::MAX_TIMEOUT_S;
use switchboard::http::switch::{parse_transfer, timeout_ms};

fuzz_target!(|body: &[u8]| {
    match parse_transfer(body) {
        Ok((_from, timeout_s, queues)) => {
            assert!(queues.iter().map(|q| q.len()).sum::<usize>() <= body.len());
            assert!(timeout_ms(timeout_s) <= MAX_TIMEOUT_S * 1000);
        }
        Err(response) => assert_eq!(response.status(), 400),
    }
});
