//! The auth file: principals, how they authenticate, and their grants.
//!
//! TOML, one table per principal:
//!
//! ```toml
//! [[principals]]
//! name = "engine-7"
//! # SHA-256 of the bearer token (`converge-ledger token create` prints both)
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! grants = ["append:job-*", "read:job-*"]
//!
//! [[principals]]
//! name = "auditor"
//! # or: the subject common name of a client certificate (with --tls-client-ca)
//! certificate_cn = "auditor.example"
//! grants = ["read:*"]
//! ```
//!
//! A grant is `right:pattern`: the right `read`, `append`, `load` or
//! `admin`, and the contexts it covers: an exact id, a prefix ending in `*`
//! (`job-*`), or `*` for all. `admin` holds every right on what it covers,
//! and is what a Load needs to accept a snapshot of an unknown signer.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use converge_ledger_core::Digest;
use serde::Deserialize;

/// A right on contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Get, Read, Watch, Head, proofs, GetByHash, Snapshot, ListContexts.
    Read,
    /// Append, AppendBatch.
    Append,
    /// Load, LoadStream.
    Load,
    /// Every right, and what only an operator may do (load a snapshot
    /// signed by a key the server does not trust).
    Admin,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Append => "append",
            Right::Load => "load",
            Right::Admin => "admin",
        })
    }
}

/// The contexts a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Every context.
    Any,
    /// Contexts whose id starts with this.
    Prefix(String),
    /// The context with exactly this id.
    Exact(String),
}

impl Pattern {
    /// Whether `context` is covered.
    pub fn matches(&self, context: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => context.starts_with(p.as_str()),
            Pattern::Exact(c) => context == c,
        }
    }
}

/// One right on some contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The right.
    pub right: Right,
    /// The contexts.
    pub pattern: Pattern,
}

impl Grant {
    /// Parses `right:pattern`.
    pub fn parse(s: &str) -> Result<Grant, String> {
        let (right, pattern) = s.split_once(':').ok_or_else(|| {
            format!("grant {s:?} is not right:pattern (e.g. \"read:job-*\", \"append:job-7\", \"admin:*\")")
        })?;
        let right = match right {
            "read" => Right::Read,
            "append" => Right::Append,
            "load" => Right::Load,
            "admin" => Right::Admin,
            other => {
                return Err(format!(
                    "grant {s:?} names the right {other:?}; the rights are read, append, load and admin"
                ));
            }
        };
        let pattern = match pattern {
            "" => return Err(format!("grant {s:?} names no contexts; use * for all")),
            "*" => Pattern::Any,
            p => match p.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => {
                    return Err(format!(
                        "grant {s:?}: * may only end a pattern (a prefix), or stand alone (all)"
                    ));
                }
                Some(prefix) => Pattern::Prefix(prefix.to_owned()),
                None if p.contains('*') => {
                    return Err(format!(
                        "grant {s:?}: * may only end a pattern (a prefix), or stand alone (all)"
                    ));
                }
                None => Pattern::Exact(p.to_owned()),
            },
        };
        Ok(Grant { right, pattern })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Pattern::Any => write!(f, "{}:*", self.right),
            Pattern::Prefix(p) => write!(f, "{}:{p}*", self.right),
            Pattern::Exact(c) => write!(f, "{}:{c}", self.right),
        }
    }
}

/// One principal of the auth file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalConfig {
    /// Its name, in logs and refusals.
    pub name: String,
    /// SHA-256 of its bearer token: tokens are never stored.
    pub token_sha256: Option<Digest>,
    /// The subject common name of its client certificate.
    pub certificate_cn: Option<String>,
    /// What it may do.
    pub grants: Vec<Grant>,
}

/// The parsed auth file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Every principal.
    pub principals: Vec<Arc<PrincipalConfig>>,
}

/// The auth file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principals: Vec<FilePrincipal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrincipal {
    name: String,
    token_sha256: Option<String>,
    certificate_cn: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
}

impl AuthConfig {
    /// Parses the TOML of an auth file; the error names the principal and
    /// the field that is wrong.
    pub fn parse(text: &str) -> Result<AuthConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        let mut principals = Vec::new();
        for p in file.principals {
            let at = |what: String| ConfigError(format!("principal {:?}: {what}", p.name));
            if p.name.is_empty() {
                return Err(ConfigError("a principal has an empty name".into()));
            }
            if !names.insert(p.name.clone()) {
                return Err(at("the name is used twice".into()));
            }
            let token_sha256 = match &p.token_sha256 {
                None => None,
                Some(h) => {
                    let d = Digest::from_hex(h)
                        .map_err(|e| at(format!("token_sha256 is not 64 hex characters: {e}")))?;
                    if !tokens.insert(d) {
                        return Err(at("token_sha256 is another principal's too".into()));
                    }
                    Some(d)
                }
            };
            if token_sha256.is_none() && p.certificate_cn.is_none() {
                return Err(at(
                    "neither token_sha256 nor certificate_cn: it could never authenticate".into(),
                ));
            }
            let grants = p
                .grants
                .iter()
                .map(|g| Grant::parse(g).map_err(&at))
                .collect::<Result<Vec<_>, _>>()?;
            principals.push(Arc::new(PrincipalConfig {
                name: p.name,
                token_sha256,
                certificate_cn: p.certificate_cn,
                grants,
            }));
        }
        Ok(AuthConfig { principals })
    }

    /// Reads and parses the auth file at `path`.
    pub fn load(path: &std::path::Path) -> Result<AuthConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("cannot read the auth file {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| ConfigError(format!("auth file {}: {e}", path.display())))
    }

    /// The principal whose token this is. Compares the token's hash with
    /// every principal's in constant time (no early exit on a match, no
    /// byte-by-byte short cut), so timing tells nothing about the tokens.
    pub fn by_token(&self, token: &str) -> Option<&Arc<PrincipalConfig>> {
        let presented = Digest::of(&[token.as_bytes()]);
        let mut found = None;
        for p in &self.principals {
            if let Some(h) = &p.token_sha256
                && constant_time_eq(&h.0, &presented.0)
            {
                found = found.or(Some(p));
            }
        }
        found
    }

    /// The principal with this client certificate common name.
    pub fn by_certificate(&self, common_name: &str) -> Option<&Arc<PrincipalConfig>> {
        self.principals
            .iter()
            .find(|p| p.certificate_cn.as_deref() == Some(common_name))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A new bearer token (`clt_` and 43 characters of base64url over 32 bytes
/// from the OS) and the SHA-256 the auth file holds instead of it.
pub fn new_token() -> (String, Digest) {
    use base64::Engine as _;
    let token = format!(
        "clt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_seed())
    );
    let hash = Digest::of(&[token.as_bytes()]);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_refuse_what_they_cannot_mean() {
        assert_eq!(
            Grant::parse("read:job-*").unwrap(),
            Grant {
                right: Right::Read,
                pattern: Pattern::Prefix("job-".into())
            }
        );
        assert_eq!(Grant::parse("admin:*").unwrap().pattern, Pattern::Any);
        assert_eq!(
            Grant::parse("append:job-7").unwrap().pattern,
            Pattern::Exact("job-7".into())
        );
        for bad in ["read", "write:x", "read:", "read:a*b", "read:**"] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
        for g in ["read:job-*", "admin:*", "load:x"] {
            assert_eq!(Grant::parse(g).unwrap().to_string(), g);
        }
    }

    #[test]
    fn the_auth_file_names_what_is_wrong() {
        let ok = r#"
            [[principals]]
            name = "a"
            token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            grants = ["read:*"]
        "#;
        let c = AuthConfig::parse(ok).unwrap();
        assert_eq!(c.by_token("test").unwrap().name, "a");
        assert!(c.by_token("tesT").is_none());
        for (bad, says) in [
            (ok.replace("read:*", "delete:*"), "the rights are"),
            (ok.replace("9f86", "zz86"), "64 hex"),
            (format!("{ok}{ok}"), "used twice"),
            (ok.replace("token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"", ""), "could never authenticate"),
            (ok.replace("grants", "grant"), "unknown field"),
        ] {
            let e = AuthConfig::parse(&bad).unwrap_err();
            assert!(e.0.contains(says), "{e}");
        }
    }

    #[test]
    fn the_example_auth_file_in_the_docs_loads() {
        let c = AuthConfig::parse(include_str!("../../../../docs/auth.example.toml")).unwrap();
        assert_eq!(c.principals.len(), 3);
        assert_eq!(c.by_token("test").unwrap().name, "engine-7");
        assert_eq!(
            c.by_token("example-operator-token").unwrap().name,
            "operator"
        );
    }

    #[test]
    fn a_new_token_hashes_to_what_the_file_holds() {
        let (token, hash) = new_token();
        assert!(token.starts_with("clt_") && token.len() == 47, "{token}");
        let c = AuthConfig {
            principals: vec![Arc::new(PrincipalConfig {
                name: "n".into(),
                token_sha256: Some(hash),
                certificate_cn: None,
                grants: vec![],
            })],
        };
        assert_eq!(c.by_token(&token).unwrap().name, "n");
    }
}
