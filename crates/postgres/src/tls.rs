//! TLS to PostgreSQL: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` of
//! the connection string, read as libpq reads them, over rustls (ring).
//!
//! The driver parses `sslmode` only up to `require` and refuses keys it does
//! not know, so these four keys are taken out of the connection string here
//! and the rest is left to the driver unchanged.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it (a failed handshake is retried without) | not checked |
//! | `require` | always | not checked (checked as `verify-ca` when `sslrootcert` is given, as libpq does) |
//! | `verify-ca` | always | chain to a CA in `sslrootcert` |
//! | `verify-full` | always | chain to a CA in `sslrootcert`, and names the host |
//!
//! No system roots are used: `verify-ca` and `verify-full` need
//! `sslrootcert`. Unchecked modes still check the handshake's signatures, so
//! the session is bound to the key of the certificate the server sent; they
//! only do not ask whose key it is.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use converge_ledger_store::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How much TLS a connection insists on, libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, StoreError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(StoreError::Config(
                    "sslmode=allow is not supported: use prefer (TLS if the server offers it) or disable"
                        .into(),
                ));
            }
            other => {
                return Err(StoreError::Config(format!(
                    "sslmode={other} is not known: use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// The mode the driver runs its negotiation with (it knows nothing of
    /// certificates: checking them is the connector's part).
    pub(crate) fn driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }

    /// What the mode guarantees, for the startup line.
    pub(crate) fn promise(self) -> &'static str {
        match self {
            SslMode::Disable => "no TLS",
            SslMode::Prefer => "TLS if the server offers it, certificate not checked",
            SslMode::Require => "TLS, certificate not checked",
            SslMode::VerifyCa => "TLS, certificate checked against sslrootcert",
            SslMode::VerifyFull => "TLS, certificate and host name checked against sslrootcert",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The TLS keys of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    /// Takes `key = value` if it is a TLS key; `false` if it is not one.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        // The last occurrence wins, as in the driver and in libpq.
        *slot = Some(value);
        true
    }

    /// The mode that applies: `prefer` by default, and `require` with a root
    /// certificate file checks the chain (libpq's rule, kept so that a
    /// connection string means the same here as in `psql`).
    pub(crate) fn mode(&self) -> Result<SslMode, StoreError> {
        let mode = match &self.sslmode {
            Some(v) => SslMode::parse(v)?,
            None => SslMode::Prefer,
        };
        Ok(match mode {
            SslMode::Require if self.sslrootcert.is_some() => SslMode::VerifyCa,
            m => m,
        })
    }
}

/// Splits the TLS keys off a connection string (URL or `key=value` pairs):
/// the string without them, for the driver, and their values. Everything
/// else is kept byte for byte; a string this cannot read is handed to the
/// driver whole, which then says what is wrong with it.
pub(crate) fn split_tls_params(url: &str) -> Result<(String, TlsParams), StoreError> {
    let mut params = TlsParams::default();
    let rest = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(**p))
    {
        Some(prefix) => split_url(url, prefix.len(), &mut params)?,
        None => split_key_values(url, &mut params)?,
    };
    Ok((rest, params))
}

/// URL form: `?key=value&…` after the host part (the driver takes
/// credentials up to the first `@`, so a `?` before it is not the query).
fn split_url(url: &str, prefix: usize, params: &mut TlsParams) -> Result<String, StoreError> {
    let after_credentials = url[prefix..].find('@').map_or(prefix, |i| prefix + i + 1);
    let Some(q) = url[after_credentials..].find('?') else {
        return Ok(url.to_owned());
    };
    let q = after_credentials + q;
    let mut kept = Vec::new();
    for part in url[q + 1..].split('&') {
        let taken = match part.split_once('=') {
            Some((k, v)) => params.take(&percent_decode(k)?, percent_decode(v)?),
            None => false,
        };
        if !taken {
            kept.push(part);
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(rest)
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        StoreError::Config(
            "the PostgreSQL URL has a parameter that is not UTF-8 once decoded".into(),
        )
    })
}

/// `key=value` form, with the driver's (and libpq's) quoting: values in
/// `'…'` may hold spaces; `\` escapes the next character.
fn split_key_values(s: &str, params: &mut TlsParams) -> Result<String, StoreError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut cut = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if key.is_empty() || i == b.len() || b[i] != b'=' {
            return Ok(s.to_owned());
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        let quoted = i < b.len() && b[i] == b'\'';
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => return Ok(s.to_owned()),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    if let Some(&c) = b.get(i + 1) {
                        value.push(c);
                    }
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value).unwrap_or_default();
        if params.take(key, value) {
            cut.push(start..i.min(b.len()));
        }
    }
    let mut rest = String::with_capacity(s.len());
    let mut from = 0;
    for r in cut {
        rest.push_str(&s[from..r.start]);
        from = r.end;
    }
    rest.push_str(&s[from..]);
    Ok(rest)
}

/// The connector every connection of a store and its listener uses, built
/// once from the options: the certificates are read when the store opens.
#[derive(Clone)]
pub(crate) struct Tls {
    pub mode: SslMode,
    /// `None` under `disable`: the driver never asks for TLS then.
    config: Option<Arc<ClientConfig>>,
}

impl Tls {
    pub(crate) fn new(params: &TlsParams) -> Result<Tls, StoreError> {
        let mode = params.mode()?;
        if mode == SslMode::Disable {
            return Ok(Tls { mode, config: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Internal(format!("TLS setup: {e}")))?;
        let builder = match (mode, &params.sslrootcert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(StoreError::Config(format!(
                    "sslmode={mode} needs sslrootcert=FILE in the PostgreSQL URL: a PEM file of the CA \
                     certificates that signed the server's certificate (no system roots are used)"
                )));
            }
            (SslMode::VerifyFull, Some(file)) => builder.with_root_certificates(roots(file)?),
            (SslMode::VerifyCa, Some(file)) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameUnchecked {
                    roots: Some(roots(file)?),
                    algorithms,
                })),
            // `prefer` never checks, like libpq, even with a root file.
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameUnchecked {
                    roots: None,
                    algorithms,
                })),
        };
        let mut config = match (&params.sslcert, &params.sslkey) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key_file)) => {
                let chain = certificates(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    StoreError::Config(format!(
                        "sslkey={key_file}: no private key could be read from it ({e})"
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    StoreError::Config(format!(
                        "sslcert={cert} and sslkey={key_file} do not fit: {e}"
                    ))
                })?
            }
            _ => {
                return Err(StoreError::Config(
                    "sslcert and sslkey go together: give both (a client certificate and its key) or neither"
                        .into(),
                ));
            }
        };
        // What PostgreSQL 17's direct TLS negotiation asks for; older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// A connector for one connection; `used` becomes true if that
    /// connection negotiates TLS.
    pub(crate) fn connector(&self, used: Arc<AtomicBool>) -> MakeRustls {
        MakeRustls {
            config: self.config.clone(),
            used,
        }
    }
}

fn certificates(file: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let pem = std::fs::read(Path::new(file))
        .map_err(|e| StoreError::Config(format!("{key}={file} cannot be read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Config(format!("{key}={file} is not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(StoreError::Config(format!(
            "{key}={file} holds no certificate (expected PEM blocks BEGIN CERTIFICATE)"
        )));
    }
    Ok(certs)
}

fn roots(file: &str) -> Result<Arc<RootCertStore>, StoreError> {
    if file == "system" {
        return Err(StoreError::Config(
            "sslrootcert=system is not supported: no system roots are used; name a PEM file of the CA \
             certificates to trust"
                .into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certificates(file, "sslrootcert")? {
        roots.add(cert).map_err(|e| {
            StoreError::Config(format!(
                "sslrootcert={file} holds a certificate that cannot be a CA: {e}"
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

/// A verifier that never looks at the server's name. With `roots`
/// (`verify-ca`) the chain must lead to one of them (the CA is trusted to
/// have issued certificates only to its servers); without (`prefer`,
/// `require`) any certificate is accepted: encryption against a passive
/// eavesdropper only. The handshake signatures are checked either way.
#[derive(Debug)]
struct NameUnchecked {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The driver's TLS hook, over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
    used: Arc<AtomicBool>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = BoxError;

    /// Called for every connection attempt, whatever the mode and even for
    /// a Unix socket (`domain` empty): the name is only checked if TLS is
    /// negotiated.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, BoxError> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            domain: domain.to_owned(),
            used: self.used.clone(),
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    domain: String,
    used: Arc<AtomicBool>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.config else {
                return Err("TLS was asked for under sslmode=disable".into());
            };
            let name = ServerName::try_from(self.domain.clone()).map_err(|_| {
                format!(
                    "{:?} is not a host name or IP address a certificate can be checked against",
                    self.domain
                )
            })?;
            // An `io::Error` whose inner error is a `rustls::Error` when the
            // TLS layer refused; `crate::error` tells the two apart.
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            self.used.store(true, Ordering::Relaxed);
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS session to the server.
pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    /// No `tls-server-end-point` binding: SCRAM authenticates without
    /// channel binding (`channel_binding=require` is refused by the driver).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_keys_leave_the_url_and_everything_else_stays() {
        let (rest, p) = split(
            "postgresql://u:p%3Fw@db:5432/ledger?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgresql://u:p%3Fw@db:5432/ledger?application_name=a"
        );
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(p.mode().unwrap(), SslMode::VerifyFull);

        let (rest, p) = split("postgres://db/ledger?sslmode=require");
        assert_eq!(rest, "postgres://db/ledger");
        assert_eq!(p.mode().unwrap(), SslMode::Require);

        let (rest, p) = split("postgresql://u:a?b@db/ledger");
        assert_eq!(rest, "postgresql://u:a?b@db/ledger");
        assert_eq!(p, TlsParams::default());
        assert_eq!(p.mode().unwrap(), SslMode::Prefer);
    }

    #[test]
    fn tls_keys_leave_key_value_strings_with_their_quoting() {
        let (rest, p) = split(
            r"host=db sslmode = verify-ca user=u sslrootcert='/etc/my ca\'s.pem' password='a b'",
        );
        assert_eq!(rest, "host=db  user=u  password='a b'");
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/my ca's.pem"));
        assert_eq!(p.mode().unwrap(), SslMode::VerifyCa);
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"a b"[..]));

        let (rest, _) = split("host=db sslmode='unterminated");
        assert_eq!(rest, "host=db sslmode='unterminated", "left to the driver");
    }

    #[test]
    fn require_with_a_root_file_checks_the_chain_as_libpq_does() {
        let (_, p) = split("host=db sslmode=require sslrootcert=/ca.pem");
        assert_eq!(p.mode().unwrap(), SslMode::VerifyCa);
    }

    #[test]
    fn verifying_modes_without_a_root_file_are_refused() {
        for mode in ["verify-ca", "verify-full"] {
            let (_, p) = split(&format!("host=db sslmode={mode}"));
            match Tls::new(&p) {
                Err(StoreError::Config(m)) => {
                    assert!(m.contains("sslrootcert"), "{m}");
                    assert!(m.contains(mode), "{m}");
                }
                Err(e) => panic!("{mode}: {e:?}"),
                Ok(_) => panic!("{mode} accepted without sslrootcert"),
            }
        }
        let (_, p) = split("host=db sslmode=verify-full sslrootcert=system");
        assert!(matches!(Tls::new(&p), Err(StoreError::Config(m)) if m.contains("system")));
        let (_, p) = split("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        assert!(
            matches!(Tls::new(&p), Err(StoreError::Config(m)) if m.contains("/nonexistent/ca.pem"))
        );
    }

    #[test]
    fn unknown_sslmodes_are_refused_by_name() {
        for bad in ["allow", "verify_full", "on"] {
            let (_, p) = split(&format!("host=db sslmode={bad}"));
            assert!(
                matches!(p.mode(), Err(StoreError::Config(m)) if m.contains("sslmode")),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let (_, p) = split("host=db sslcert=/c.pem");
        assert!(matches!(Tls::new(&p), Err(StoreError::Config(m)) if m.contains("sslkey")));
    }
}
