//! The door registry: which doors exist, which listeners open each of them,
//! and how each makes the state of a new connection.
//!
//! This is the one table the IO shell reads to know its doors; adding a door
//! is one row here (and the door's own file). It sits above the doors (it
//! names their openers) and below the shell.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Listen};
use crate::door::{DialOpener, Opener};

/// Where a listener binds.
#[derive(Clone, Debug)]
pub enum BindAt {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One listener a door asks for, as the configuration switches it on.
pub struct Bind {
    /// The listener's name, printed at start (`listening NAME ADDRESS`).
    pub name: &'static str,
    /// The flag that sets it, for error messages.
    pub flag: &'static str,
    pub at: BindAt,
    /// TLS settings, for a TLS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One door: its name (logs and the stats page), its listeners, its opener.
pub struct DoorSpec {
    pub name: &'static str,
    /// The listeners `config` switches on for this door (maybe none).
    pub binds: fn(&Config) -> Vec<Bind>,
    /// Called once at start-up when the door has a listener.
    pub opener: fn(&Config) -> Opener,
}

/// Every door, in the order their listeners are opened.
pub const DOORS: &[DoorSpec] = &[
    DoorSpec {
        name: "line",
        binds: line_binds,
        opener: crate::line::session::opener,
    },
    DoorSpec {
        name: "bus",
        binds: bus_binds,
        opener: crate::http::bus::opener,
    },
    DoorSpec {
        name: "proxy",
        binds: proxy_binds,
        opener: crate::http::proxy::opener,
    },
    DoorSpec {
        name: "switch",
        binds: switch_binds,
        opener: crate::http::switch::opener,
    },
    DoorSpec {
        name: "hooks",
        binds: hooks_binds,
        opener: crate::http::hooks::opener,
    },
    DoorSpec {
        name: "metrics",
        binds: metrics_binds,
        opener: crate::http::metrics::opener,
    },
];

/// A door that runs on connections the server opens itself (a
/// [`crate::broker::Dial`] names it).
pub struct DialSpec {
    /// Its name (logs, and the stats page's open count).
    pub name: &'static str,
    /// Called once at start-up.
    pub opener: fn(&Config) -> DialOpener,
}

/// Every dial door.
pub const DIALS: &[DialSpec] = &[
    DialSpec {
        name: crate::http::hooks::DIAL_DOOR,
        opener: crate::http::hooks::dial_opener,
    },
    DialSpec {
        name: crate::cluster::DIAL_DOOR,
        opener: crate::cluster::dial_opener,
    },
];

fn tcp(name: &'static str, flag: &'static str, listen: &Listen) -> Option<Bind> {
    match listen {
        Listen::At(addr) => Some(Bind {
            name,
            flag,
            at: BindAt::Tcp(*addr),
            tls: None,
        }),
        Listen::Off => None,
    }
}

/// A TLS listener, when `--tls-cert` and `--tls-key` are given.
fn tls(
    config: &Config,
    name: &'static str,
    flag: &'static str,
    listen: impl Fn(&crate::config::TlsDoors) -> &Listen,
) -> Option<Bind> {
    let t = config.tls.as_ref()?;
    tcp(name, flag, listen(t)).map(|b| Bind {
        tls: Some(t.config.clone()),
        ..b
    })
}

fn line_binds(config: &Config) -> Vec<Bind> {
    let mut binds: Vec<Bind> = [
        tcp("line", "--line-listen", &config.line_listen),
        tls(config, "line-tls", "--line-tls-listen", |t| &t.line_listen),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(path) = &config.line_unix {
        binds.push(Bind {
            name: "line-unix",
            flag: "--line-unix",
            at: BindAt::Unix(path.clone()),
            tls: None,
        });
    }
    binds
}

fn bus_binds(config: &Config) -> Vec<Bind> {
    [
        tcp("bus", "--bus-listen", &config.bus_listen),
        tls(config, "bus-tls", "--bus-tls-listen", |t| &t.bus_listen),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn proxy_binds(config: &Config) -> Vec<Bind> {
    tcp("proxy", "--proxy-listen", &config.proxy.listen)
        .into_iter()
        .collect()
}

fn switch_binds(config: &Config) -> Vec<Bind> {
    let mut binds: Vec<Bind> = tcp("switch", "--switch-listen", &config.switch_listen)
        .into_iter()
        .collect();
    if let Some(path) = &config.switch_unix {
        binds.push(Bind {
            name: "switch-unix",
            flag: "--switch-unix",
            at: BindAt::Unix(path.clone()),
            tls: None,
        });
    }
    binds
}

fn hooks_binds(config: &Config) -> Vec<Bind> {
    tcp("hooks", "--hooks-listen", &config.hooks_listen)
        .into_iter()
        .collect()
}

fn metrics_binds(config: &Config) -> Vec<Bind> {
    tcp("metrics", "--metrics-listen", &config.metrics_listen)
        .into_iter()
        .collect()
}
