//! Ledger context ids built from caller-supplied names.

use sha2::{Digest as _, Sha256};

/// Longest encoded component kept readable; longer ones are hashed.
const COMPONENT_BYTES_MAX: usize = 96;

/// `value` as one path component of a context id: bytes outside
/// `[A-Za-z0-9._:@-]` are percent-encoded (so `/` never splits a component
/// and no control character reaches the ledger), and a component that would
/// be longer than 96 bytes becomes `#` and 32 hex digits of its SHA-256.
/// Distinct values give distinct components (hash collisions aside); the
/// adapter also keeps every value in entry metadata and filters on it, so
/// even a collision cannot mix values up.
pub fn component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        return "%".to_owned();
    }
    if out.len() > COMPONENT_BYTES_MAX {
        let digest = Sha256::digest(value.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        return format!("#{hex}");
    }
    out
}

/// Lowercase hex of a SHA-256 over `parts`, each length-prefixed.
pub fn digest_hex<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_safe_and_distinct() {
        assert_eq!(component("tenant-a"), "tenant-a");
        assert_eq!(component("a/b"), "a%2Fb");
        assert_eq!(component("a%2Fb"), "a%252Fb");
        assert_eq!(component(""), "%");
        assert_eq!(component("é"), "%C3%A9");
        let long = "x".repeat(200);
        let c = component(&long);
        assert!(c.starts_with('#') && c.len() == 33, "{c}");
        assert_ne!(component(&long), component(&"x".repeat(201)));
        assert!(!component("a\nb").contains('\n'));
    }
}
