//! `contrib/switchboard.service` passes `systemd-analyze verify` (from the
//! Debian package `systemd`; without it this test fails and says so).
//!
//! The unit names the installed binary (/usr/local/bin/switchboard), which
//! verify requires to exist: the copy checked here names the binary this
//! build made instead, and is otherwise the file as shipped. verify exits 0
//! even when it ignores a line it cannot parse, so any output is a failure.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::process::Command;

use common::TempDir;

const INSTALLED: &str = "ExecStart=/usr/local/bin/switchboard ";

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/switchboard.service"
    ))
    .unwrap();
    assert_eq!(
        unit.matches(INSTALLED).count(),
        1,
        "one ExecStart of the installed binary"
    );
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_switchboard"));
    let dir = TempDir::new("unit");
    let path = dir.path().join("switchboard.service");
    std::fs::write(&path, unit.replace(INSTALLED, &built)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install the Debian package `systemd`")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}: {said}",
        out.status
    );
    assert_eq!(said.trim(), "", "systemd-analyze verify found problems");
}
