//! The `--cluster` URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or
//! `rediss://…` for TLS.
//!
//! The credentials never appear in an error message, a log line or a
//! `Debug` print: an error names the URL as [`shown`] gives it, with
//! `***` for them, and [`Auth`]'s `Debug` leaves the password out.

/// Redis credentials: `AUTH PASSWORD` (the default user), or `AUTH USER
/// PASSWORD` (an ACL user, Redis 6 and later).
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// What a `--cluster` URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub db: u32,
    pub auth: Option<Auth>,
}

/// The URL with its credentials, if any, as `***`: for messages.
pub fn shown(url: &str) -> String {
    // A scheme is a letter, then letters, digits, `+`, `-` and `.`; what
    // is not (`:pw` in `:pw://@host`) may be a password's piece.
    let is_scheme = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    let split = url
        .split_once("://")
        .filter(|(scheme, _)| is_scheme(scheme));
    let Some((scheme, rest)) = split else {
        return if url.contains('@') {
            "(a URL with credentials)".to_string()
        } else {
            url.to_string()
        };
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

/// Parses a `--cluster` URL. The port is 6379 when left out; `[::1]` is
/// an IPv6 host. The user and password may hold any character, `%XX`
/// escapes decoded (`%25` for `%` itself); the password may also hold
/// `:`, `@` and `/` as they are. A user without a password is refused.
pub fn parse(url: &str) -> Result<RedisUrl, String> {
    let show = shown(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else {
        return Err(format!(
            "{show:?} is not a redis:// or rediss:// URL (redis://[[USER]:PASSWORD@]HOST:PORT[/DB])"
        ));
    };
    // Hosts and databases hold no '@': the last one ends the credentials.
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(credentials(userinfo, &show)?), after),
        None => (None, rest),
    };
    let (authority, db) = match rest.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, db)) => (
            a,
            db.parse::<u32>()
                .map_err(|_| format!("{show:?}: the database {db:?} is not a number"))?,
        ),
        None => (rest, 0),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{show:?}: an IPv6 host without its ']'"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{show:?}: no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{show:?}: the port {p:?} is not a port number"))?,
        None => 6379,
    };
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        tls,
        db,
        auth,
    })
}

/// `USER:PASSWORD` or `:PASSWORD`, escapes decoded.
fn credentials(userinfo: &str, show: &str) -> Result<Auth, String> {
    let Some((user, password)) = userinfo.split_once(':') else {
        return Err(format!(
            "{show:?}: a user without a password (redis://USER:PASSWORD@HOST, or redis://:PASSWORD@HOST for the default user)"
        ));
    };
    let user = decode(user).ok_or_else(|| format!("{show:?}: a bad %-escape in the user"))?;
    let password =
        decode(password).ok_or_else(|| format!("{show:?}: a bad %-escape in the password"))?;
    if password.is_empty() {
        return Err(format!("{show:?}: an empty password"));
    }
    Ok(Auth {
        user: (!user.is_empty()).then_some(user),
        password,
    })
}

/// Decodes `%XX` escapes; `None` for a `%` not followed by two hex digits
/// or a result that is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(user: Option<&str>, password: &str) -> Option<Auth> {
        Some(Auth {
            user: user.map(str::to_string),
            password: password.to_string(),
        })
    }

    #[test]
    fn hosts_ports_and_databases() {
        let u = parse("redis://h:7/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls, u.db), ("h", 7, false, 2));
        assert_eq!(u.auth, None);
        let u = parse("rediss://[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls, u.db),
            ("::1", 6379, true, 0)
        );
        for bad in [
            "http://h",
            "redis://:1",
            "redis://h:0",
            "redis://h:x",
            "redis://h/x",
            "redis://[::1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_read_and_never_shown() {
        let u = parse("redis://:s3cret@h:7/1").unwrap();
        assert_eq!(u.auth, auth(None, "s3cret"));
        assert_eq!((u.host.as_str(), u.port, u.db), ("h", 7, 1));
        let u = parse("rediss://alice:p%40ss:w/rd@[::1]:9").unwrap();
        assert_eq!(u.auth, auth(Some("alice"), "p@ss:w/rd"));
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = parse("redis://bob:a@b@h").unwrap();
        assert_eq!(u.auth, auth(Some("bob"), "a@b"));
        assert!(!format!("{u:?}").contains("a@b"));
        for bad in [
            "redis://s3cret@h",
            "redis://:@h",
            "redis://:s3cret%zz@h",
            "redis://:s3cret@h:x",
            "redis://:s3cret@h/x",
            "http://:s3cret@h",
            "redis://:s3cret@",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert_eq!(shown("redis://u:p@h:1/2"), "redis://***@h:1/2");
        assert_eq!(shown("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn auth_prints_its_user_and_stars_for_the_password() {
        let a = Auth {
            user: Some("alice".into()),
            password: "s3cret".into(),
        };
        assert_eq!(
            format!("{a:?}"),
            r#"Auth { user: Some("alice"), password: "***" }"#
        );
    }

    #[test]
    fn escapes_are_decoded_in_either_case() {
        let u = parse("redis://%41l%69ce%2f:p%7e%25%3A@h").unwrap();
        assert_eq!(u.auth, auth(Some("Alice/"), "p~%:"));
        for bad in ["redis://:%4@h", "redis://:%g0@h", "redis://:%ff@h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    use proptest::prelude::*;

    /// Found by the property below: a password holding `://` in a URL
    /// without a scheme was shown as if its first part were the scheme.
    #[test]
    fn a_password_that_looks_like_a_scheme_is_not_shown() {
        for (url, password) in [
            (":aAa://@h", "aAa"),
            ("alice:x://y@h:7", "x:"),
            (":pw://@", "pw"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(!e.contains(password), "{url}: {e}");
            assert_eq!(shown(url), "(a URL with credentials)");
        }
        assert_eq!(shown("redis://:pw@h:7"), "redis://***@h:7");
        assert_eq!(shown("rediss://h"), "rediss://h");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any password, in any URL around it, well formed or not: parsing
        /// never panics, a URL that parses gives the password back, and an
        /// error never holds it.
        #[test]
        fn a_password_comes_back_or_stays_hidden(
            password in "[ -~]{6,24}",
            scheme in prop::sample::select(vec!["redis://", "rediss://", "http://", ""]),
            user in prop::sample::select(vec!["", "alice"]),
            rest in prop::sample::select(vec!["h", "h:7", "h:7/1", "[::1]:9", "", "h:x", "h/x", "[::1"]),
        ) {
            // Written as a client should: `%` escaped.
            let escaped = password.replace('%', "%25");
            let url = format!("{scheme}{user}:{escaped}@{rest}");
            match parse(&url) {
                Ok(u) => {
                    let auth = u.auth.clone().unwrap();
                    prop_assert_eq!(auth.password, password.clone());
                    prop_assert_eq!(auth.user.as_deref(), (!user.is_empty()).then_some(user));
                    // Its Debug print does not depend on the password.
                    let other = parse(&format!("{scheme}{user}:x@{rest}")).unwrap();
                    prop_assert_eq!(format!("{u:?}"), format!("{other:?}"));
                }
                Err(e) => {
                    prop_assert!(!e.contains(&password), "{}", e);
                    prop_assert!(!e.contains(&escaped), "{}", e);
                }
            }
        }
    }
}
