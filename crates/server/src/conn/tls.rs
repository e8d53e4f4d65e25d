//! TLS on the server: rustls with the ring provider (no OpenSSL), the
//! certificate and key from PEM files, optionally client certificates
//! verified against a CA, reloadable without touching the listener.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::auth::PeerCertificate;

/// Where the server's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. With
    /// it, a client may authenticate by certificate; without, clients
    /// present none.
    pub client_ca: Option<PathBuf>,
}

/// The TLS material could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The server's TLS configuration, replaced whole by [`TlsServer::reload`]
/// (connections already up keep the one they were accepted with).
pub struct TlsServer {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsServer({})", self.files.cert.display())
    }
}

impl TlsServer {
    /// Reads the files and builds the configuration.
    pub fn load(files: TlsFiles) -> Result<TlsServer, TlsError> {
        let acceptor = build(&files)?;
        Ok(TlsServer {
            files,
            current: RwLock::new(acceptor),
        })
    }

    /// Reads the files again; on an error the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            TlsError(format!(
                "cannot read the TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let cert_pem = read("certificate", &files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError(format!(
                "{} is not a PEM certificate chain: {e}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("key", &files.key)?).map_err(|e| {
        TlsError(format!(
            "{} is not a PEM private key: {e}",
            files.key.display()
        ))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS configuration: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read("client CA", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| {
                    TlsError(format!("{} is not a PEM certificate: {e}", ca.display()))
                })?;
                roots.add(c).map_err(|e| {
                    TlsError(format!(
                        "{} holds an unusable CA certificate: {e}",
                        ca.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError(format!("{} holds no certificate", ca.display())));
            }
            // A certificate is optional (a principal may use a token
            // instead), but one that is presented must chain to the CA.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("client certificate verification: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "{} and {} do not make a usable certificate and key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject common name of the peer's (verified) certificate.
pub(crate) fn peer_certificate(conn: &rustls::ServerConnection) -> PeerCertificate {
    PeerCertificate {
        common_name: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_common_name(leaf.as_ref())),
    }
}

/// A DER reader just large enough to find a certificate's subject CN:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, subject, ... } }`,
/// `Name ::= SEQUENCE OF SET OF SEQUENCE { OID, value }`.
fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // Optional explicit [0] version.
    if tbs.first() == Some(&0xA0) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (tag, mut rdns, _) = element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !rdns.is_empty() {
        let (tag, mut set, rest) = element(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = element(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = element(atv)?;
            if tag == OID && oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element: tag, contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, der.get(header..end)?, der.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_common_name_is_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Converge");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "auditor.example");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("auditor.example")
        );
        // Garbage and truncations are no name, never a panic.
        let der = cert.der().to_vec();
        for n in 0..der.len() {
            let _ = subject_common_name(&der[..n]);
        }
        assert_eq!(subject_common_name(b"\x30\x84\xff\xff\xff\xff"), None);
    }
}
