//! Which server the client subcommands talk to, and how: address, token,
//! TLS (flags shared by every client subcommand).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use converge_ledger_client::{Client, ClientOptions, TlsOptions};

/// The connection flags of the client subcommands.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Ledger server address (https:// for TLS).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_LEDGER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token for a server with an auth file (`converge-ledger token
    /// create` makes one).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_LEDGER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to (with
    /// https://; default: the public web PKI roots).
    #[arg(long, global = true, env = "CONVERGE_LEDGER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that authenticate by
    /// certificate; with --client-key.
    #[arg(
        long,
        global = true,
        env = "CONVERGE_LEDGER_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_LEDGER_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host (e.g. connecting by IP address).
    #[arg(long, global = true, env = "CONVERGE_LEDGER_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

impl Target {
    /// Client options with the token and TLS settings of the flags, on top
    /// of `base`.
    pub fn options(&self, base: ClientOptions) -> anyhow::Result<ClientOptions> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
        };
        let ca_pem = match &self.ca_cert {
            Some(p) => Some(read(p, "CA certificate")?),
            None => None,
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((read(c, "client certificate")?, read(k, "client key")?)),
            _ => None,
        };
        let tls =
            (ca_pem.is_some() || identity.is_some() || self.tls_domain.is_some()).then(|| {
                TlsOptions {
                    ca_pem,
                    identity,
                    domain: self.tls_domain.clone(),
                }
            });
        Ok(ClientOptions {
            token: self.token.clone().or(base.token.clone()),
            tls: tls.or(base.tls.clone()),
            ..base
        })
    }

    /// Connects with default options.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_with(ClientOptions::default()).await
    }

    /// Connects with `base` options and the flags' token and TLS settings.
    pub async fn connect_with(&self, base: ClientOptions) -> anyhow::Result<Client> {
        Client::connect_with(&self.addr, self.options(base)?)
            .await
            .with_context(|| {
                format!(
                    "is a ledger running at {}? (start one with `converge-ledger serve`)",
                    self.addr
                )
            })
    }
}
