use std::fmt;

use crate::{Metadata, NewEntry};

/// Bounds on everything a client can send. Defaults are safe for a shared
/// server; operators raise or lower them per deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest context id, in bytes.
    pub context_id_bytes_max: usize,
    /// Longest entry key, in bytes.
    pub key_bytes_max: usize,
    /// Largest payload, in bytes.
    pub payload_bytes_max: usize,
    /// Most metadata pairs on one entry.
    pub metadata_entries_max: usize,
    /// Largest total of metadata keys and values, in bytes.
    pub metadata_bytes_max: usize,
    /// Longest idempotency key, in bytes.
    pub idempotency_key_bytes_max: usize,
    /// Most entries in one batch append.
    pub batch_entries_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            context_id_bytes_max: 256,
            key_bytes_max: 1024,
            payload_bytes_max: 4 * 1024 * 1024,
            metadata_entries_max: 64,
            metadata_bytes_max: 64 * 1024,
            idempotency_key_bytes_max: 256,
            batch_entries_max: 4096,
        }
    }
}

/// A request field outside the [`Limits`]. The message names the field, what
/// was wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    /// The field at fault, e.g. `context_id`.
    pub field: &'static str,
    /// Human explanation including the limit.
    pub message: String,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LimitError {}

fn err(field: &'static str, message: String) -> Result<(), LimitError> {
    Err(LimitError { field, message })
}

/// The largest Lamport time a client may pass (2^62): leaves room for
/// 2^62 more appends before the clock could saturate, so the strictly
/// increasing clock invariant can never be broken from outside.
pub const LAMPORT_MAX: u64 = 1 << 62;

/// Human byte count: `4 MiB`, `1.5 KiB`, `12 bytes`.
pub fn human_bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if n < 1024 {
        format!("{n} bytes")
    } else if f < KIB * KIB {
        trim(f / KIB, "KiB")
    } else if f < KIB * KIB * KIB {
        trim(f / KIB / KIB, "MiB")
    } else {
        trim(f / KIB / KIB / KIB, "GiB")
    }
}

fn trim(v: f64, unit: &str) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{} {unit}", v.round() as u64)
    } else {
        format!("{v:.1} {unit}")
    }
}

/// The Unicode format characters (general category Cf, Unicode 15.1):
/// invisible characters such as U+200B ZERO WIDTH SPACE and U+202E
/// RIGHT-TO-LEFT OVERRIDE that make one identifier display as another.
const FORMAT_CHARACTERS: &[(u32, u32)] = &[
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` is a Unicode format character (category Cf), which
/// identifiers refuse: with them, two different ids look the same, or an
/// id displays as another (bidirectional overrides).
#[inline]
pub fn is_format_char(c: char) -> bool {
    let c = c as u32;
    // Below the table's first range (U+00AD): every ASCII character, the
    // common case, answers without a search.
    if c < FORMAT_CHARACTERS[0].0 {
        return false;
    }
    FORMAT_CHARACTERS
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Why `value` cannot be an identifier (context id, key), if it cannot:
/// control characters and Unicode format characters are refused.
pub fn unprintable_char(value: &str) -> Option<String> {
    let c = value
        .chars()
        .find(|c| c.is_control() || is_format_char(*c))?;
    Some(if c.is_control() {
        format!("the control character {c:?}; control characters are not allowed")
    } else {
        format!(
            "the invisible format character U+{:04X}; Unicode format characters (category Cf, such as \
             zero-width spaces and bidirectional overrides) are not allowed, since they make one id \
             display as another",
            c as u32
        )
    })
}

fn check_name(field: &'static str, what: &str, value: &str, max: usize) -> Result<(), LimitError> {
    if value.is_empty() {
        return err(
            field,
            format!("{what} is empty; it must be 1 to {max} bytes of UTF-8"),
        );
    }
    if value.len() > max {
        return err(
            field,
            format!("{what} is {} bytes; the limit is {max} bytes", value.len()),
        );
    }
    if let Some(why) = unprintable_char(value) {
        return err(field, format!("{what} contains {why}"));
    }
    Ok(())
}

impl Limits {
    /// A context id: 1..=`context_id_bytes_max` bytes, no control characters.
    pub fn check_context_id(&self, context: &str) -> Result<(), LimitError> {
        check_name(
            "context_id",
            "context_id",
            context,
            self.context_id_bytes_max,
        )
    }

    /// An entry key: 1..=`key_bytes_max` bytes, no control characters.
    pub fn check_key(&self, key: &str) -> Result<(), LimitError> {
        check_name("key", "key", key, self.key_bytes_max)
    }

    /// A key filter on reads: empty (all keys) or a valid key.
    pub fn check_key_filter(&self, key: &str) -> Result<(), LimitError> {
        if key.is_empty() {
            Ok(())
        } else {
            self.check_key(key)
        }
    }

    /// A payload of `len` bytes.
    pub fn check_payload(&self, len: usize) -> Result<(), LimitError> {
        if len > self.payload_bytes_max {
            return err(
                "payload",
                format!(
                    "payload is {len} bytes; the limit is {} bytes ({}, --max-payload-bytes)",
                    self.payload_bytes_max,
                    human_bytes(self.payload_bytes_max)
                ),
            );
        }
        Ok(())
    }

    /// Metadata: at most `metadata_entries_max` pairs, non-empty keys, total
    /// size at most `metadata_bytes_max`.
    pub fn check_metadata(&self, metadata: &Metadata) -> Result<(), LimitError> {
        if metadata.len() > self.metadata_entries_max {
            return err(
                "metadata",
                format!(
                    "metadata has {} pairs; the limit is {}",
                    metadata.len(),
                    self.metadata_entries_max
                ),
            );
        }
        let mut total = 0usize;
        for (k, v) in metadata {
            if k.is_empty() {
                return err(
                    "metadata",
                    "metadata has an empty key; keys must be non-empty".into(),
                );
            }
            total += k.len() + v.len();
        }
        if total > self.metadata_bytes_max {
            return err(
                "metadata",
                format!(
                    "metadata totals {}; the limit is {}",
                    human_bytes(total),
                    human_bytes(self.metadata_bytes_max)
                ),
            );
        }
        Ok(())
    }

    /// An idempotency key: empty (none) or 1..=`idempotency_key_bytes_max`
    /// bytes without control characters.
    pub fn check_idempotency_key(&self, key: &str) -> Result<(), LimitError> {
        if key.is_empty() {
            return Ok(());
        }
        check_name(
            "idempotency_key",
            "idempotency_key",
            key,
            self.idempotency_key_bytes_max,
        )
    }

    /// A received Lamport time.
    pub fn check_lamport(&self, lamport: u64) -> Result<(), LimitError> {
        if lamport > LAMPORT_MAX {
            return err(
                "lamport",
                format!("lamport is {lamport}; the largest accepted is {LAMPORT_MAX} (2^62)"),
            );
        }
        Ok(())
    }

    /// Every field of one entry: key, payload size, metadata, received
    /// Lamport time.
    pub fn check_entry(
        &self,
        key: &str,
        payload_len: usize,
        metadata: &Metadata,
        lamport: u64,
    ) -> Result<(), LimitError> {
        self.check_key(key)?;
        self.check_payload(payload_len)?;
        self.check_metadata(metadata)?;
        self.check_lamport(lamport)
    }

    /// Every field of an append.
    pub fn check_append(
        &self,
        context: &str,
        entry: &NewEntry,
        idempotency_key: &str,
    ) -> Result<(), LimitError> {
        self.check_context_id(context)?;
        self.check_entry(
            &entry.key,
            entry.payload.len(),
            &entry.metadata,
            entry.lamport,
        )?;
        self.check_idempotency_key(idempotency_key)
    }

    /// The number of entries of a batch append: 1..=`batch_entries_max`.
    pub fn check_batch_len(&self, n: usize) -> Result<(), LimitError> {
        if n == 0 {
            return err(
                "entries",
                format!(
                    "the batch has no entries; send 1 to {} entries",
                    self.batch_entries_max
                ),
            );
        }
        if n > self.batch_entries_max {
            return err(
                "entries",
                format!(
                    "the batch has {n} entries; the limit is {} (--max-batch-entries); split it",
                    self.batch_entries_max
                ),
            );
        }
        Ok(())
    }

    /// The largest encoded size of one entry these limits admit, plus
    /// framing; responses must allow at least this much.
    pub fn entry_bytes_max(&self) -> usize {
        self.key_bytes_max
            + self.payload_bytes_max
            + self.metadata_bytes_max
            + self.metadata_entries_max * 8
            + 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let l = Limits::default();
        let e = l.check_context_id("").unwrap_err();
        assert_eq!(e.field, "context_id");
        assert!(e.message.contains("empty"), "{e}");
        let e = l.check_context_id(&"x".repeat(257)).unwrap_err();
        assert!(
            e.message.contains("257 bytes") && e.message.contains("256"),
            "{e}"
        );
        let e = l.check_key("a\nb").unwrap_err();
        assert!(e.message.contains("control"), "{e}");
        // Exact byte counts: "4 MiB; the limit is 4 MiB" was the message
        // for one byte too many.
        let e = l.check_payload(4 * 1024 * 1024 + 1).unwrap_err();
        assert_eq!(
            e.message,
            "payload is 4194305 bytes; the limit is 4194304 bytes (4 MiB, --max-payload-bytes)"
        );
        assert!(l.check_payload(4 * 1024 * 1024).is_ok());
        let mut m = Metadata::new();
        m.insert(String::new(), "v".into());
        assert!(l.check_metadata(&m).is_err());
        let m: Metadata = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert!(
            l.check_metadata(&m)
                .unwrap_err()
                .message
                .contains("65 pairs")
        );
        assert!(l.check_idempotency_key("").is_ok());
        assert!(l.check_key_filter("").is_ok());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn the_format_table_is_sorted_and_disjoint() {
        for w in FORMAT_CHARACTERS.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:x?}");
        }
    }

    #[test]
    fn every_listed_format_character_is_one_and_its_neighbours_are_not() {
        for &(lo, hi) in FORMAT_CHARACTERS {
            for cp in [lo, hi] {
                let c = char::from_u32(cp).unwrap();
                assert!(is_format_char(c), "U+{cp:04X}");
            }
            // The ranges are disjoint and never adjacent, so the code points
            // around each are not format characters.
            for cp in [lo - 1, hi + 1] {
                assert!(
                    char::from_u32(cp).is_none_or(|c| !is_format_char(c)),
                    "U+{cp:04X}"
                );
            }
        }
        assert!(!is_format_char('a') && !is_format_char('é') && !is_format_char('\u{1F600}'));
    }

    #[test]
    fn ids_with_invisible_format_characters_are_refused() {
        let l = Limits::default();
        for bad in ["job\u{202E}1", "job\u{200B}1", "\u{FEFF}job", "a\u{E0041}"] {
            let e = l.check_context_id(bad).unwrap_err();
            assert!(e.message.contains("format character"), "{bad:?}: {e}");
            assert!(l.check_key(bad).is_err());
        }
        // Letters of every script stay allowed.
        for good in ["job-1", "задача", "作业", "عمل", "e\u{301}"] {
            l.check_context_id(good).unwrap();
        }
        assert!(!is_format_char('a') && is_format_char('\u{2066}') && !is_format_char('\u{2065}'));
    }
}
