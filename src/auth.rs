//! Who may do what: the shared secret (`--secret`) and signed tokens
//! (`--token-key`, JSON Web Tokens).
//!
//! Owns: loading the token key, verifying a token into a [`Grant`], the
//! grant's name patterns, and checking a credential the line protocol or
//! HTTP was given. Must not touch: sockets, the broker, how a door carries
//! a credential (an `Authorization` header, `?token=`, the line protocol's
//! `@` command).
//!
//! A token is verified once, when it is presented (an HTTP request, a line
//! connection's `@`); what it allows is then checked once per request,
//! command or subscription, never per delivered message. Its claims:
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600,
//!  "subscribe": ["news", "sensors.>"], "publish": ["chat.*"],
//!  "send": ["jobs"], "receive": ["jobs"]}
//! ```
//!
//! `exp` (seconds since the epoch) is required; `sub` becomes the sender, as
//! a Basic auth user name does; each list holds channel or queue-address
//! patterns of `.`-separated tokens where `*` stands for one token and `>`
//! (last) for one or more; a list left out allows nothing.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a caller may ask for, by the name it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to a channel (or a pattern of channels).
    Subscribe,
    /// Publish to a channel.
    Publish,
    /// Send to a queue address.
    Send,
    /// Wait on a queue address.
    Receive,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::Send => "send",
            Action::Receive => "receive",
        }
    }
}

/// Why a credential was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing was presented where something is required.
    Missing,
    /// The token's time is over.
    Expired,
    /// A token that does not verify, or a wrong secret.
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => f.write_str("credentials required"),
            Refusal::Expired => f.write_str("token expired"),
            Refusal::Invalid(why) => write!(f, "invalid credentials: {why}"),
        }
    }
}

/// What a verified token allows, until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`: the sender of what the caller publishes.
    pub subject: Option<String>,
    /// Seconds since the epoch.
    pub expires_s: u64,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    send: Vec<Pattern>,
    receive: Vec<Pattern>,
}

impl Grant {
    /// True when the grant's `action` list covers `name`. For
    /// [`Action::Subscribe`], `name` may itself be a pattern: it is allowed
    /// when one granted pattern matches every name it matches.
    pub fn allows(&self, action: Action, name: &[u8]) -> bool {
        let list = match action {
            Action::Subscribe => &self.subscribe,
            Action::Publish => &self.publish,
            Action::Send => &self.send,
            Action::Receive => &self.receive,
        };
        list.iter().any(|p| p.covers(name))
    }

    /// True once the token's time is over (`now_s`: seconds since the epoch).
    pub fn expired(&self, now_s: u64) -> bool {
        now_s >= self.expires_s
    }

    /// The grant that allows everything (the shared secret's).
    pub fn everything() -> Grant {
        let all = vec![Pattern::parse(">")];
        Grant {
            subject: None,
            expires_s: u64::MAX,
            subscribe: all.clone(),
            publish: all.clone(),
            send: all.clone(),
            receive: all,
        }
    }
}

/// A granted name pattern: `.`-separated tokens, `*` one token, `>` (last)
/// one or more.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern(Vec<Vec<u8>>);

impl Pattern {
    fn parse(text: &str) -> Pattern {
        Pattern(text.split('.').map(|t| t.as_bytes().to_vec()).collect())
    }

    /// True when every name `name` matches (a name, or a pattern) is
    /// matched by this pattern. A name is a pattern without wildcards.
    fn covers(&self, name: &[u8]) -> bool {
        let mut asked = name.split(|&b| b == b'.');
        for (i, granted) in self.0.iter().enumerate() {
            let is_last = i + 1 == self.0.len();
            match granted.as_slice() {
                // `>` last: one token or more, whatever they are (`>` too).
                b">" if is_last => return asked.next().is_some(),
                // `*`: any one token but `>` (which may stand for several).
                b"*" => match asked.next() {
                    Some(b">") | None => return false,
                    Some(_) => {}
                },
                literal => match asked.next() {
                    Some(t) if t == literal => {}
                    _ => return false,
                },
            }
        }
        asked.next().is_none()
    }
}

/// The claims a token must have; anything else in it is ignored.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    send: Vec<String>,
    #[serde(default)]
    receive: Vec<String>,
}

/// The key tokens are verified with, and the one algorithm it allows.
pub struct Tokens {
    key: DecodingKey,
    validation: Validation,
    /// `HS256`, `RS256` or `EdDSA`, for the logs.
    pub algorithm: &'static str,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({})", self.algorithm)
    }
}

/// Longest token taken, in bytes: every buffer input can grow is bounded.
pub const MAX_TOKEN: usize = 8 * 1024;

impl Tokens {
    /// Reads `--token-key FILE`: a PEM public key (`RS256` for RSA, `EdDSA`
    /// for Ed25519), or else the file's bytes (a final newline removed) as
    /// the `HS256` secret, which must be at least 32 bytes.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::from_key(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_key(bytes: &[u8]) -> Result<Tokens, String> {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let (key, algorithm, name) = if text.contains("-----BEGIN") {
            if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                (key, Algorithm::RS256, "RS256")
            } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
                (key, Algorithm::EdDSA, "EdDSA")
            } else {
                return Err(
                    "a PEM file that is neither an RSA nor an Ed25519 public key".to_string(),
                );
            }
        } else {
            let secret = bytes
                .strip_suffix(b"\n")
                .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
                .unwrap_or(bytes);
            if secret.len() < 32 {
                return Err(format!(
                    "an HS256 secret of {} bytes; use at least 32 (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ));
            }
            (DecodingKey::from_secret(secret), Algorithm::HS256, "HS256")
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Tokens {
            key,
            validation,
            algorithm: name,
        })
    }

    /// Verifies `token` (signature, algorithm, expiry, claim types).
    pub fn verify(&self, token: &[u8]) -> Result<Grant, Refusal> {
        if token.len() > MAX_TOKEN {
            return Err(Refusal::Invalid(format!(
                "token longer than {MAX_TOKEN} bytes"
            )));
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| Refusal::Invalid("token is not text".to_string()))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::Expired,
                _ => Refusal::Invalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        let patterns = |list: Vec<String>| list.iter().map(|p| Pattern::parse(p)).collect();
        let grant = Grant {
            subject: c.sub,
            expires_s: c.exp,
            subscribe: patterns(c.subscribe),
            publish: patterns(c.publish),
            send: patterns(c.send),
            receive: patterns(c.receive),
        };
        // A subject is written into what its holder publishes.
        if grant
            .subject
            .as_deref()
            .is_some_and(|s| s.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(Refusal::Invalid("`sub` holds a control character".into()));
        }
        Ok(grant)
    }
}

/// What a door checks credentials against: the shared secret, the token
/// key, both, or neither (then nothing is required).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub secret: Option<String>,
    pub tokens: Option<std::sync::Arc<Tokens>>,
}

impl Access {
    /// True when a caller must present a credential.
    pub fn required(&self) -> bool {
        self.secret.is_some() || self.tokens.is_some()
    }

    /// Checks a bearer credential (the line protocol's `@`, HTTP's `Bearer`
    /// or `?token=`): the secret itself (everything allowed) or a token.
    pub fn check(&self, credential: &[u8]) -> Result<Grant, Refusal> {
        if let Some(secret) = &self.secret {
            if constant_time_eq(credential, secret.as_bytes()) {
                return Ok(Grant::everything());
            }
        }
        match &self.tokens {
            Some(tokens) => tokens.verify(credential),
            None => Err(Refusal::Invalid("wrong secret".to_string())),
        }
    }

    /// True when `a` equals the secret (HTTP Basic's password).
    pub fn is_secret(&self, a: &[u8]) -> bool {
        self.secret
            .as_ref()
            .is_some_and(|s| constant_time_eq(a, s.as_bytes()))
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch, now.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn patterns_cover_names_and_narrower_patterns() {
        let p = |s: &str| Pattern::parse(s);
        assert!(p("news").covers(b"news"));
        assert!(!p("news").covers(b"news.x"));
        assert!(!p("news").covers(b"new"));
        assert!(p("sensors.*.temp").covers(b"sensors.a.temp"));
        assert!(!p("sensors.*.temp").covers(b"sensors.a.b.temp"));
        assert!(!p("sensors.*.temp").covers(b"sensors.temp"));
        assert!(p("sensors.>").covers(b"sensors.a"));
        assert!(p("sensors.>").covers(b"sensors.a.b"));
        assert!(!p("sensors.>").covers(b"sensors"));
        assert!(p(">").covers(b"anything.at.all"));
        // Patterns asked for: allowed only when every name they match is.
        assert!(p("sensors.>").covers(b"sensors.*.temp"));
        assert!(p("sensors.>").covers(b"sensors.>"));
        assert!(p("sensors.*").covers(b"sensors.*"));
        assert!(!p("sensors.*").covers(b"sensors.>"));
        assert!(!p("sensors.a").covers(b"sensors.*"));
        assert!(!p("sensors.*.temp").covers(b">"));
        // `>` not last is a literal token.
        assert!(p(">.x").covers(b">.x"));
        assert!(!p(">.x").covers(b"a.x"));
    }

    #[test]
    fn a_token_gives_its_grant() {
        let tokens = Tokens::from_key(SECRET).unwrap();
        let t = token(serde_json::json!({
            "sub": "alice", "exp": now_s() + 600,
            "subscribe": ["news", "sensors.>"], "publish": ["chat.*"], "send": ["jobs"]
        }));
        let g = tokens.verify(t.as_bytes()).unwrap();
        assert_eq!(g.subject.as_deref(), Some("alice"));
        assert!(g.allows(Action::Subscribe, b"news"));
        assert!(g.allows(Action::Subscribe, b"sensors.x.temp"));
        assert!(!g.allows(Action::Subscribe, b"chat.x"));
        assert!(g.allows(Action::Publish, b"chat.x"));
        assert!(!g.allows(Action::Publish, b"news"));
        assert!(g.allows(Action::Send, b"jobs"));
        assert!(
            !g.allows(Action::Receive, b"jobs"),
            "a list left out allows nothing"
        );
        assert!(!g.expired(now_s()));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let tokens = Tokens::from_key(SECRET).unwrap();
        let expired = token(serde_json::json!({"exp": now_s() - 1}));
        assert_eq!(tokens.verify(expired.as_bytes()), Err(Refusal::Expired));
        let no_exp = token(serde_json::json!({"sub": "a"}));
        assert!(matches!(
            tokens.verify(no_exp.as_bytes()),
            Err(Refusal::Invalid(_))
        ));
        let wrong_type = token(serde_json::json!({"exp": now_s() + 60, "publish": "news"}));
        assert!(matches!(
            tokens.verify(wrong_type.as_bytes()),
            Err(Refusal::Invalid(_))
        ));
        let other_key = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now_s() + 60}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
        )
        .unwrap();
        assert!(matches!(
            tokens.verify(other_key.as_bytes()),
            Err(Refusal::Invalid(_))
        ));
        // The algorithm is the key's: `none` and others are refused.
        let mut parts: Vec<String> = token(serde_json::json!({"exp": now_s() + 60}))
            .split('.')
            .map(str::to_string)
            .collect();
        parts[0] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"JWT"}"#,
        );
        assert!(tokens.verify(parts.join(".").as_bytes()).is_err());
        assert!(tokens.verify(b"garbage").is_err());
        assert!(tokens.verify(&[0xff; 10]).is_err());
        assert!(tokens.verify(&vec![b'a'; MAX_TOKEN + 1]).is_err());
        let control = token(serde_json::json!({"exp": now_s() + 60, "sub": "a\r\nb"}));
        assert!(tokens.verify(control.as_bytes()).is_err());
    }

    #[test]
    fn short_secrets_and_bad_pem_are_refused_at_start() {
        assert!(Tokens::from_key(b"short\n").is_err());
        assert!(
            Tokens::from_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
        let t = Tokens::from_key(b"0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(t.algorithm, "HS256");
    }

    #[test]
    fn access_takes_the_secret_or_a_token() {
        let access = Access {
            secret: Some("s3cret".to_string()),
            tokens: Some(std::sync::Arc::new(Tokens::from_key(SECRET).unwrap())),
        };
        assert_eq!(access.check(b"s3cret"), Ok(Grant::everything()));
        assert!(access.check(b"s3cre").is_err());
        let t = token(serde_json::json!({"exp": now_s() + 60, "publish": ["a"]}));
        assert!(access
            .check(t.as_bytes())
            .unwrap()
            .allows(Action::Publish, b"a"));
        let only_secret = Access {
            secret: Some("s3cret".to_string()),
            tokens: None,
        };
        assert!(only_secret.check(t.as_bytes()).is_err());
        assert!(!Access::default().required());
    }
}
