//! Reload on SIGHUP: the configuration is read again (the `--config` file
//! and the command line, which still wins), on a helper thread, and handed
//! back to the loop through its waker; the loop then swaps in what may
//! change while connections stay open (see [`RELOADS`]) and logs every
//! other setting that changed as needing a restart.
//!
//! Owns: reading and checking the new configuration off the loop (the
//! file, the TLS certificate and key, the docroot), and comparing it with
//! the running one, key by key. Must not touch: connections, listeners,
//! the doors (the loop applies the result). A reload that fails changes
//! nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;

use clap::Parser;
use mio::Waker;

use crate::config::{Args, Config};
use crate::config_file::{self, ArgsError};

/// The settings (keys of the configuration file, names of flags) a reload
/// applies. Every other key that changed is logged as needing a restart.
/// A setting that becomes reloadable is one more name here and one more
/// field of [`crate::door::Live`] (or of the listeners, as the certificate).
pub const RELOADS: &[&str] = &[
    "secret",
    "token-key",
    "docroot",
    "tls-cert",
    "tls-key",
    "tls-client-ca",
];

/// A configuration read again, checked, ready to be swapped in.
pub struct Reloaded {
    pub config: Config,
    /// The docroot, canonical (as the bus serves it).
    pub docroot: Option<std::path::PathBuf>,
    /// The effective configuration, key by key (see [`effective`]).
    pub effective: BTreeMap<String, String>,
}

/// What the loop keeps to reload: the command line it started with, the
/// effective settings it runs with, and a reload under way.
pub struct Reload {
    argv: Vec<OsString>,
    /// The running configuration, key by key: the keys of [`RELOADS`] as
    /// the last reload left them, the others as at start.
    pub running: BTreeMap<String, String>,
    pending: Option<Receiver<Result<Reloaded, String>>>,
    /// A SIGHUP came while a reload was under way: one more follows it.
    again: bool,
}

impl Reload {
    /// `argv`: the command line the server started with (program name
    /// first, before its `--config` file was read).
    pub fn new(argv: Vec<OsString>) -> Result<Reload, String> {
        let full = config_file::with_file(argv.clone()).map_err(describe)?;
        let running = effective(&full)?;
        Ok(Reload {
            argv,
            running,
            pending: None,
            again: false,
        })
    }

    /// Starts reading the configuration again on a helper thread, which
    /// wakes the loop with `waker` when done. While one reload is under
    /// way another waits for it (several signals make one more reload).
    pub fn start(&mut self, waker: Arc<Waker>) {
        if self.pending.is_some() {
            self.again = true;
            return;
        }
        let (tx, rx) = mpsc::channel();
        let argv = self.argv.clone();
        let spawned = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                // The loop may be gone (shutting down): nothing to tell.
                if tx.send(load(argv)).is_ok() {
                    let _ = waker.wake();
                }
            });
        match spawned {
            Ok(_) => self.pending = Some(rx),
            Err(e) => log::error!("reload: cannot start a thread to read the configuration: {e}"),
        }
    }

    /// The result of the reload under way, once there is one; and whether
    /// another should start.
    pub fn take(&mut self) -> Option<(Result<Reloaded, String>, bool)> {
        let rx = self.pending.as_ref()?;
        let result = match rx.try_recv() {
            Ok(result) => result,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                Err("the thread reading the configuration stopped".to_string())
            }
        };
        self.pending = None;
        Some((result, std::mem::take(&mut self.again)))
    }

    /// The keys (other than [`RELOADS`]) whose value in `new` differs from
    /// the running one: they need a restart.
    pub fn needs_restart(&self, new: &BTreeMap<String, String>) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.running.keys().chain(new.keys()).collect();
        keys.into_iter()
            .filter(|k| !RELOADS.contains(&k.as_str()))
            .filter(|k| self.running.get(*k) != new.get(*k))
            .cloned()
            .collect()
    }

    /// The keys of [`RELOADS`] whose value in `new` differs from the
    /// running one; the running configuration takes them.
    pub fn take_reloaded(&mut self, new: &BTreeMap<String, String>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for key in RELOADS {
            let (old, now) = (self.running.get(*key), new.get(*key));
            if old != now {
                changed.push(*key);
                match now {
                    Some(v) => self.running.insert(key.to_string(), v.clone()),
                    None => self.running.remove(*key),
                };
            }
        }
        changed
    }
}

fn describe(e: ArgsError) -> String {
    match e {
        ArgsError::Clap(e) => e.to_string().trim().to_string(),
        ArgsError::File(e) => e,
    }
}

/// Reads and checks the configuration of `argv` as at start: the file,
/// the flags, the TLS certificate and key, the docroot.
fn load(argv: Vec<OsString>) -> Result<Reloaded, String> {
    let full = config_file::with_file(argv).map_err(describe)?;
    let args = Args::try_parse_from(&full).map_err(|e| e.to_string().trim().to_string())?;
    let config = Config::from_args(args)?;
    let docroot = match &config.docroot {
        Some(dir) => Some(
            dir.canonicalize()
                .map_err(|e| format!("--docroot {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let effective = effective(&full)?;
    Ok(Reloaded {
        config,
        docroot,
        effective,
    })
}

/// The effective configuration of `argv` (its file in front), key by key:
/// each key's line of `--print-config`.
fn effective(argv: &[OsString]) -> Result<BTreeMap<String, String>, String> {
    let text = config_file::print(argv).map_err(|e| e.to_string().trim().to_string())?;
    Ok(by_key(&text))
}

/// The lines of a printed configuration by key (`key = value`, or `# key
/// is not set`); other comment lines are left out.
fn by_key(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let key = match line.strip_prefix("# ") {
                Some(rest) => rest.strip_suffix(" is not set")?,
                None => line.split_once(" = ")?.0,
            };
            Some((key.to_string(), line.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reload_of(text: &str) -> Reload {
        Reload {
            argv: Vec::new(),
            running: by_key(text),
            pending: None,
            again: false,
        }
    }

    #[test]
    fn keys_that_changed_are_sorted_into_reloaded_and_restart() {
        let mut r = reload_of(
            "# switchboard 1: the effective configuration\n\
             bus-listen = \"127.0.0.1:8888\"\n\
             secret = \"a\"\n\
             # docroot is not set\n\
             max-line = 100\n",
        );
        let new = by_key(
            "# switchboard 1: the effective configuration\n\
             bus-listen = \"127.0.0.1:9999\"\n\
             secret = \"b\"\n\
             docroot = \"/srv\"\n\
             max-line = 100\n",
        );
        assert_eq!(r.needs_restart(&new), ["bus-listen"]);
        assert_eq!(r.take_reloaded(&new), ["secret", "docroot"]);
        // The running configuration took the reloaded keys only: the
        // listener still differs, and is still reported.
        assert_eq!(r.running.get("secret").unwrap(), "secret = \"b\"");
        assert_eq!(r.needs_restart(&new), ["bus-listen"]);
        assert!(r.take_reloaded(&new).is_empty());
    }

    #[test]
    fn a_bad_file_is_an_error_that_names_it() {
        let dir = std::env::temp_dir().join(format!("sb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "no-such-key = 1\n").unwrap();
        let argv: Vec<OsString> = vec!["switchboard".into(), "--config".into(), file.into()];
        let err = load(argv).err().unwrap();
        assert!(err.contains("no-such-key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
