//! Receiver URLs: `http://HOST[:PORT][/PATH][?QUERY]` and `https://…`,
//! checked once when a receiver connects and kept in the form a request
//! needs (where to connect, the `Host` header, the request target).
//!
//! Must not touch: name lookups (the shell does them off the loop), sockets.

use std::fmt;

/// Longest receiver URL accepted, in bytes.
pub const MAX_URL: usize = 2048;

/// Where deliveries to one receiver go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// A name or an IP literal (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// The `Host` header: the authority as given, less any user info.
    pub host_header: String,
    /// The request target: the path and query (`/` when the URL has none).
    pub path: String,
}

/// Why a URL was refused; the text is the reason a `400` gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadUrl(pub &'static str);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Target {
    /// Parses a receiver URL.
    pub fn parse(url: &str) -> Result<Target, BadUrl> {
        if url.len() > MAX_URL {
            return Err(BadUrl("ClientURL is longer than 2048 bytes"));
        }
        if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(BadUrl(
                "ClientURL holds spaces or control characters (percent-encode them)",
            ));
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ci(url, "http://") {
            (false, r)
        } else if let Some(r) = strip_prefix_ci(url, "https://") {
            (true, r)
        } else {
            return Err(BadUrl("ClientURL must start with http:// or https://"));
        };
        // The fragment never goes to the server.
        let rest = rest.split('#').next().unwrap_or("");
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        if authority.contains('@') {
            return Err(BadUrl("ClientURL must not hold user info (user@host)"));
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(p) => p,
            None if tls => 443,
            None => 80,
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            host_header: authority.to_string(),
            path,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), BadUrl> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or(BadUrl("ClientURL has an unclosed [ in its host"))?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(BadUrl("ClientURL has an invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(BadUrl("ClientURL has text after its IPv6 address"))?,
            ),
        };
        (inside, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(BadUrl("ClientURL has no host"));
    }
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b == b':');
    if !name_ok || host.len() > 253 {
        return Err(BadUrl("ClientURL has an invalid host name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(BadUrl("ClientURL has an invalid port")),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn forms() {
        let a = t("http://127.0.0.1:8080/hook?x=1#frag");
        assert_eq!(
            a,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                host_header: "127.0.0.1:8080".into(),
                path: "/hook?x=1".into(),
            }
        );
        let b = t("HTTPS://example.com");
        assert!(b.tls);
        assert_eq!((b.port, b.path.as_str()), (443, "/"));
        assert_eq!(t("http://h?q").path, "/?q");
        let v6 = t("http://[::1]:9/p");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert_eq!(v6.host_header, "[::1]:9");
        assert_eq!(t("http://[::1]/").port, 80);
    }

    #[test]
    fn refusals() {
        for bad in [
            "ftp://x/",
            "svc.domain.tld/mqg",
            "http://",
            "http:///p",
            "http://u:p@h/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://h:/",
            "http://[::1/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://a b/",
            "http://h/a b",
            "http://h\u{e9}/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse(&format!("http://h/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn a_url_may_take_2048_bytes_and_no_more() {
        let longest = format!("http://h/{}", "a".repeat(MAX_URL - 9));
        assert_eq!(longest.len(), MAX_URL);
        assert_eq!(t(&longest).path.len(), MAX_URL - 8);
        assert_eq!(
            Target::parse(&format!("{longest}a")),
            Err(BadUrl("ClientURL is longer than 2048 bytes"))
        );
        assert_eq!(BadUrl("why").to_string(), "why");
    }

    #[test]
    fn a_host_name_may_take_253_bytes_and_no_more() {
        let longest = "h".repeat(253);
        assert_eq!(t(&format!("http://{longest}/")).host, longest);
        assert_eq!(
            Target::parse(&format!("http://{longest}h/")),
            Err(BadUrl("ClientURL has an invalid host name"))
        );
    }
}
