//! Worldline identity and the reserved context namespace.

use std::fmt;
use std::str::FromStr;

use converge_ledger_core::Digest;

use crate::WorldlineError;

/// Every context whose id starts with this prefix belongs to the WorldLine
/// profile. The generic Append, AppendBatch and Load refuse such ids, so
/// only the WorldLine service, after validating each receipt, writes there.
pub const NAMESPACE: &str = "wll/";

/// The suffix of a worldline's snapshots context.
const SNAPSHOTS_SUFFIX: &str = "/snapshots";

/// Domain separation for worldline ids.
const ID_DOMAIN: &[u8] = b"converge-ledger/worldline-id/v1\0";

/// Whether `context` lies in the reserved [`NAMESPACE`], whatever follows
/// the prefix. Generic writes must refuse these ids: a receipt written
/// around the WorldLine service would skip its invariants.
pub fn is_reserved_context(context: &str) -> bool {
    context.starts_with(NAMESPACE)
}

/// The identity of one worldline stream: 32 bytes, usually derived from
/// identity material with [`WorldlineId::derive`].
///
/// Its only text form is 64 lowercase hexadecimal characters: the id is part
/// of a context id, and one worldline must never have two contexts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorldlineId(pub [u8; 32]);

impl WorldlineId {
    /// `SHA-256("converge-ledger/worldline-id/v1\0" ‖ u32 len ‖ material)`:
    /// the same material always names the same worldline, and the domain
    /// keeps these ids apart from every other hash the ledger computes.
    ///
    /// # Panics
    ///
    /// If `material` is 4 GiB or longer (its length must fit the `u32`
    /// prefix; identity material is a few bytes).
    pub fn derive(material: &[u8]) -> WorldlineId {
        // Material longer than 4 GiB cannot be length-prefixed in 32 bits;
        // it is refused by any caller with sane limits, and hashing the
        // truncated length would be ambiguous, so it is a bug here.
        let len = u32::try_from(material.len()).expect("worldline id material is at most 4 GiB");
        WorldlineId(Digest::of(&[ID_DOMAIN, &len.to_be_bytes(), material]).0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        Digest(self.0).to_hex()
    }

    /// Parses 64 lowercase hexadecimal characters; uppercase is refused so
    /// that every worldline has exactly one text form.
    pub fn from_hex(s: &str) -> Result<WorldlineId, WorldlineError> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(WorldlineError::invalid(
                "worldline",
                format!("is {s:?}; a worldline id is 64 lowercase hexadecimal characters"),
            ));
        }
        let d = Digest::from_hex(s).map_err(|e| WorldlineError::invalid("worldline", e))?;
        Ok(WorldlineId(d.0))
    }

    /// The ledger context holding this worldline's receipts: `"wll/" + hex`.
    pub fn context_id(&self) -> String {
        format!("{NAMESPACE}{}", self.to_hex())
    }

    /// The ledger context holding this worldline's snapshots:
    /// `"wll/" + hex + "/snapshots"`. Kept apart from the receipts so that
    /// writing a snapshot never moves the worldline's head.
    pub fn snapshots_context_id(&self) -> String {
        format!("{NAMESPACE}{}{SNAPSHOTS_SUFFIX}", self.to_hex())
    }

    /// The worldline whose receipts context is `context` (`"wll/" + hex`).
    /// Anything else, including a snapshots context, is refused.
    pub fn from_context_id(context: &str) -> Result<WorldlineId, WorldlineError> {
        match context.strip_prefix(NAMESPACE) {
            Some(hex) if hex.len() == 64 => WorldlineId::from_hex(hex),
            _ => Err(WorldlineError::invalid(
                "context",
                format!(
                    "is {context:?}; a worldline context is \"{NAMESPACE}\" followed by 64 lowercase hexadecimal characters"
                ),
            )),
        }
    }

    /// The worldline whose snapshots context is `context`
    /// (`"wll/" + hex + "/snapshots"`).
    pub fn from_snapshots_context_id(context: &str) -> Result<WorldlineId, WorldlineError> {
        match context
            .strip_prefix(NAMESPACE)
            .and_then(|rest| rest.strip_suffix(SNAPSHOTS_SUFFIX))
        {
            Some(hex) if hex.len() == 64 => WorldlineId::from_hex(hex),
            _ => Err(WorldlineError::invalid(
                "context",
                format!(
                    "is {context:?}; a snapshots context is \"{NAMESPACE}\", 64 lowercase hexadecimal characters and \"{SNAPSHOTS_SUFFIX}\""
                ),
            )),
        }
    }
}

impl fmt::Debug for WorldlineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorldlineId({})", self.to_hex())
    }
}

impl fmt::Display for WorldlineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for WorldlineId {
    type Err = WorldlineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorldlineId::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_ids_round_trip_and_only_the_canonical_form_parses() {
        let w = WorldlineId::derive(b"agent-7");
        assert_eq!(WorldlineId::from_context_id(&w.context_id()), Ok(w));
        assert_eq!(
            WorldlineId::from_snapshots_context_id(&w.snapshots_context_id()),
            Ok(w)
        );
        assert!(WorldlineId::from_context_id(&w.snapshots_context_id()).is_err());
        assert!(WorldlineId::from_snapshots_context_id(&w.context_id()).is_err());
        let upper = format!("wll/{}", w.to_hex().to_uppercase());
        assert!(WorldlineId::from_context_id(&upper).is_err());
        assert!(WorldlineId::from_context_id("wll/").is_err());
        assert!(WorldlineId::from_context_id("facts").is_err());
        assert_eq!(w.to_hex().parse::<WorldlineId>(), Ok(w));
    }

    #[test]
    fn the_namespace_is_reserved_whatever_follows_it() {
        let w = WorldlineId::derive(b"x");
        assert!(is_reserved_context(&w.context_id()));
        assert!(is_reserved_context(&w.snapshots_context_id()));
        assert!(is_reserved_context("wll/anything"));
        assert!(!is_reserved_context("wll"));
        assert!(!is_reserved_context("facts/wll/"));
    }

    #[test]
    fn derivation_length_prefixes_the_material() {
        assert_ne!(WorldlineId::derive(b""), WorldlineId::derive(b"\0"));
        assert_eq!(WorldlineId::derive(b"a"), WorldlineId::derive(b"a"));
    }
}
