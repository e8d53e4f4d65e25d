//! Bounds on every field of a receipt and on a worldline's state.

use std::fmt;

use crate::WorldlineError;
use crate::text::{identifier_violation, text_violation};

/// Bounds on everything a receipt can hold, and on the state a worldline
/// may accumulate. Every list, string and total is bounded, so a receipt's
/// size, a decoder's work and a replay's memory are bounded too.
///
/// The same limits are applied when a receipt is written and when it is read
/// back. They may be raised over the life of a ledger; lowering one below
/// what stored receipts hold makes those receipts fail to decode (reported as
/// [`WorldlineError::Corrupt`]), so clients verifying receipts should use the
/// server's limits or larger ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldlineLimits {
    /// Longest identifier in bytes: commitment class, actors (proposer,
    /// decider, reporter), capabilities, targets, effect kinds and targets,
    /// policy versions. Identifiers are 1 byte or more.
    pub identifier_bytes_max: usize,
    /// Longest text in bytes: intent, rejection and failure reasons, effect
    /// descriptions.
    pub text_bytes_max: usize,
    /// Longest evidence or proof URI in bytes.
    pub uri_bytes_max: usize,
    /// Most items in one list or set: requested, granted and revoked
    /// capabilities, targets, evidence, effects, proofs.
    pub list_items_max: usize,
    /// Most state updates in one outcome.
    pub state_updates_max: usize,
    /// Longest state key in bytes (keys are 1 byte or more).
    pub state_key_bytes_max: usize,
    /// Largest state value in bytes (values may be empty).
    pub state_value_bytes_max: usize,
    /// Largest total of key and value bytes a worldline's state may reach.
    /// An outcome that would pass it is refused, so replaying any worldline
    /// holds at most this much state in memory.
    pub state_bytes_max: u64,
    /// Largest snapshot chunk payload in bytes. Must hold the largest state
    /// pair (see [`WorldlineLimits::check`]) and stay within the ledger's
    /// entry payload limit (4 MiB by default).
    pub snapshot_chunk_bytes_max: usize,
}

impl Default for WorldlineLimits {
    fn default() -> Self {
        Self {
            identifier_bytes_max: 256,
            text_bytes_max: 4096,
            uri_bytes_max: 2048,
            list_items_max: 256,
            state_updates_max: 4096,
            state_key_bytes_max: 1024,
            state_value_bytes_max: 1024 * 1024,
            state_bytes_max: 64 * 1024 * 1024,
            // Above the largest pair (1 MiB + 1 KiB + framing) and half the
            // ledger's default payload limit.
            snapshot_chunk_bytes_max: 2 * 1024 * 1024,
        }
    }
}

/// What a problem message is attached to: a field name, possibly indexed
/// (`evidence[3].uri`). Formatted only when there is an error.
pub(crate) struct Field<'a> {
    name: &'a str,
    index: Option<usize>,
    member: &'a str,
}

impl<'a> Field<'a> {
    /// A plain field, `class`.
    pub(crate) fn new(name: &'a str) -> Self {
        Field {
            name,
            index: None,
            member: "",
        }
    }

    /// An item of a list field, `targets[3]`.
    pub(crate) fn item(name: &'a str, index: usize) -> Self {
        Field {
            name,
            index: Some(index),
            member: "",
        }
    }

    /// A member of an item, `evidence[3].uri`.
    pub(crate) fn member(name: &'a str, index: usize, member: &'a str) -> Self {
        Field {
            name,
            index: Some(index),
            member,
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if !self.member.is_empty() {
            write!(f, ".{}", self.member)?;
        }
        Ok(())
    }
}

fn length(field: &Field<'_>, len: usize, min: usize, max: usize) -> Result<(), WorldlineError> {
    if len < min {
        return Err(WorldlineError::invalid(
            field,
            format!("is empty; it must be {min} to {max} bytes"),
        ));
    }
    if len > max {
        return Err(WorldlineError::invalid(
            field,
            format!("is {len} bytes; at most {max} allowed"),
        ));
    }
    Ok(())
}

impl WorldlineLimits {
    /// Checks that these limits are usable together: every maximum is at
    /// least 1 and fits the 32-bit lengths of the encoding, and a snapshot
    /// chunk holds the largest state pair, so a pair never needs splitting.
    pub fn check(&self) -> Result<(), WorldlineError> {
        let counts = [
            ("identifier_bytes_max", self.identifier_bytes_max),
            ("text_bytes_max", self.text_bytes_max),
            ("uri_bytes_max", self.uri_bytes_max),
            ("list_items_max", self.list_items_max),
            ("state_updates_max", self.state_updates_max),
            ("state_key_bytes_max", self.state_key_bytes_max),
            ("state_value_bytes_max", self.state_value_bytes_max),
            ("snapshot_chunk_bytes_max", self.snapshot_chunk_bytes_max),
        ];
        for (name, value) in counts {
            if value == 0 || value > u32::MAX as usize {
                return Err(WorldlineError::invalid(
                    format_args!("limits.{name}"),
                    format!("is {value}; it must be 1 to {}", u32::MAX),
                ));
            }
        }
        let pair_max = crate::snapshot::CHUNK_HEADER_BYTES
            + crate::snapshot::pair_encoded_len(
                self.state_key_bytes_max,
                self.state_value_bytes_max,
            );
        if self.snapshot_chunk_bytes_max < pair_max {
            return Err(WorldlineError::invalid(
                "limits.snapshot_chunk_bytes_max",
                format!(
                    "is {} bytes; a chunk must hold the largest state pair, {pair_max} bytes with its framing",
                    self.snapshot_chunk_bytes_max
                ),
            ));
        }
        Ok(())
    }

    /// An identifier: 1..=`identifier_bytes_max` bytes, no control or
    /// format characters.
    pub(crate) fn check_identifier(
        &self,
        field: Field<'_>,
        value: &str,
    ) -> Result<(), WorldlineError> {
        self.check_name(field, value, self.identifier_bytes_max)
    }

    /// A URI: 1..=`uri_bytes_max` bytes, no control or format characters.
    pub(crate) fn check_uri(&self, field: Field<'_>, value: &str) -> Result<(), WorldlineError> {
        self.check_name(field, value, self.uri_bytes_max)
    }

    /// A state key: 1..=`state_key_bytes_max` bytes, no control or format
    /// characters (the projections rely on keys holding no NUL byte).
    pub(crate) fn check_state_key(
        &self,
        field: Field<'_>,
        value: &str,
    ) -> Result<(), WorldlineError> {
        self.check_name(field, value, self.state_key_bytes_max)
    }

    /// A state value of `len` bytes.
    pub(crate) fn check_state_value(
        &self,
        field: Field<'_>,
        len: usize,
    ) -> Result<(), WorldlineError> {
        length(&field, len, 0, self.state_value_bytes_max)
    }

    fn check_name(&self, field: Field<'_>, value: &str, max: usize) -> Result<(), WorldlineError> {
        length(&field, value.len(), 1, max)?;
        match identifier_violation(value) {
            Some(problem) => Err(WorldlineError::invalid(field, problem)),
            None => Ok(()),
        }
    }

    /// A text of at most `text_bytes_max` bytes; at least one byte when
    /// `required` (an intent or a reason that says nothing is refused).
    pub(crate) fn check_text(
        &self,
        field: Field<'_>,
        value: &str,
        required: bool,
    ) -> Result<(), WorldlineError> {
        length(
            &field,
            value.len(),
            usize::from(required),
            self.text_bytes_max,
        )?;
        match text_violation(value) {
            Some(problem) => Err(WorldlineError::invalid(field, problem)),
            None => Ok(()),
        }
    }

    /// A list or set of `len` items, at most `max`.
    pub(crate) fn check_count(
        field: Field<'_>,
        len: usize,
        max: usize,
    ) -> Result<(), WorldlineError> {
        if len > max {
            return Err(WorldlineError::invalid(
                field,
                format!("has {len} items; at most {max} allowed"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_consistent() {
        WorldlineLimits::default().check().unwrap();
    }

    #[test]
    fn a_chunk_too_small_for_the_largest_pair_is_refused() {
        let l = WorldlineLimits {
            snapshot_chunk_bytes_max: 1024 * 1024,
            ..WorldlineLimits::default()
        };
        let e = l.check().unwrap_err();
        assert!(e.message().contains("largest state pair"), "{e}");
        let l = WorldlineLimits {
            list_items_max: 0,
            ..WorldlineLimits::default()
        };
        assert!(
            l.check()
                .unwrap_err()
                .message()
                .starts_with("limits.list_items_max")
        );
    }

    #[test]
    fn messages_say_what_was_wrong_and_what_is_allowed() {
        let l = WorldlineLimits::default();
        let e = l
            .check_identifier(Field::new("class"), &"x".repeat(300))
            .unwrap_err();
        assert_eq!(e.message(), "class is 300 bytes; at most 256 allowed");
        let e = l
            .check_identifier(Field::member("evidence", 3, "uri"), "")
            .unwrap_err();
        assert_eq!(
            e.message(),
            "evidence[3].uri is empty; it must be 1 to 256 bytes"
        );
        let e = l
            .check_identifier(Field::item("targets", 0), "a\u{200B}")
            .unwrap_err();
        assert!(e.message().contains("U+200B"), "{e}");
        assert!(l.check_text(Field::new("description"), "", false).is_ok());
        assert!(l.check_text(Field::new("intent"), "", true).is_err());
        let e = WorldlineLimits::check_count(Field::new("effects"), 257, 256).unwrap_err();
        assert_eq!(e.message(), "effects has 257 items; at most 256 allowed");
    }
}
