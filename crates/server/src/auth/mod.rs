//! Who may do what: principals authenticated by bearer token or client
//! certificate, and grants of rights on contexts.
//!
//! Every RPC of every service resolves its caller with
//! [`Authority::authenticate`] and checks the right it needs on the context
//! it touches ([`Caller::require`]) before doing anything else. A refusal
//! is logged (principal, right, context) and changes nothing. Without a
//! configuration the ledger is *open*: every caller is the anonymous
//! principal, with every right but `admin` (the server refuses to listen
//! off loopback that way unless told to).

mod config;

use std::fmt;
use std::sync::{Arc, RwLock};

use tonic::Status;

pub use config::{AuthConfig, ConfigError, Grant, Pattern, PrincipalConfig, Right, new_token};

/// The request metadata carrying a bearer token.
const AUTHORIZATION: &str = "authorization";

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Arc<PrincipalConfig>,
}

impl Caller {
    /// The open ledger's caller: every right but `admin`, on every context.
    fn anonymous() -> Caller {
        Caller {
            principal: Arc::new(PrincipalConfig {
                name: "anonymous".into(),
                token_sha256: None,
                certificate_cn: None,
                grants: [Right::Read, Right::Append, Right::Load]
                    .into_iter()
                    .map(|right| Grant {
                        right,
                        pattern: Pattern::Any,
                    })
                    .collect(),
            }),
        }
    }

    /// The principal's name.
    pub fn name(&self) -> &str {
        &self.principal.name
    }

    /// Whether the caller holds `right` on `context` (`admin` on a context
    /// holds every right on it).
    pub fn allows(&self, right: Right, context: &str) -> bool {
        self.principal
            .grants
            .iter()
            .any(|g| (g.right == right || g.right == Right::Admin) && g.pattern.matches(context))
    }

    /// `Ok` if the caller holds `right` on `context`; otherwise
    /// `PERMISSION_DENIED` naming both. Names the context as the one this call
    /// concerns, for its log line.
    pub fn require(&self, right: Right, context: &str) -> Result<(), Status> {
        crate::ops::note_context(context);
        if self.allows(right, context) {
            return Ok(());
        }
        // Logged, with the operation and context, by the call's observer
        // (crate::ops).
        Err(Status::permission_denied(format!(
            "principal {:?} has no {right} right on context {context:?}; nothing was done \
             (grants are in the server's auth file)",
            self.name()
        )))
    }
}

/// The server's principals and how to recognise them; reloadable.
pub struct Authority {
    /// `None`: the open ledger.
    config: RwLock<Option<Arc<AuthConfig>>>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let principals = self.current().map_or(0, |c| c.principals.len());
        write!(f, "Authority({principals} principals)")
    }
}

/// What a TLS connection tells about its peer: the subject common name of
/// a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The certificate's subject CN, when the certificate had one.
    pub common_name: Option<String>,
}

impl Authority {
    /// The open ledger: no authentication, every right but `admin`.
    pub fn open() -> Authority {
        Authority {
            config: RwLock::new(None),
        }
    }

    /// Principals from a configuration.
    pub fn configured(config: AuthConfig) -> Authority {
        Authority {
            config: RwLock::new(Some(Arc::new(config))),
        }
    }

    /// Whether callers must authenticate.
    pub fn is_configured(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<AuthConfig>> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the principals (a reload); requests already authenticated
    /// keep their caller.
    pub fn replace(&self, config: AuthConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
    }

    /// The caller of `request`: by its bearer token, or by the client
    /// certificate of its connection. `UNAUTHENTICATED` (logged) when the
    /// ledger is configured and neither names a principal.
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        let token = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let certificate = request
            .extensions()
            .get::<crate::ConnInfo>()
            .and_then(|i| i.peer.common_name.as_deref());
        self.resolve(token, certificate)
    }

    /// The caller of an HTTP request (the web view): by its
    /// `Authorization: Bearer` header.
    pub fn authenticate_http(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        self.resolve(token, None)
    }

    fn resolve(
        &self,
        authorization: Option<&str>,
        certificate: Option<&str>,
    ) -> Result<Caller, Status> {
        let Some(config) = self.current() else {
            return Ok(Caller::anonymous());
        };
        let found = match authorization {
            Some(value) => {
                let Some(token) = value.strip_prefix("Bearer ") else {
                    return Err(refused(
                        "the authorization metadata is not \"Bearer <token>\"",
                    ));
                };
                config.by_token(token.trim())
            }
            None => certificate.and_then(|cn| config.by_certificate(cn)),
        };
        match found {
            Some(p) => Ok(Caller {
                principal: p.clone(),
            }),
            None if authorization.is_some() => {
                Err(refused("the bearer token is not one of this server's"))
            }
            None => Err(refused(
                "no credentials: send \"authorization: Bearer <token>\" metadata, or connect with a \
                 client certificate the server knows",
            )),
        }
    }
}

/// Logged, with the operation, by the call's observer (crate::ops).
fn refused(why: &str) -> Status {
    Status::unauthenticated(why.to_owned())
}
