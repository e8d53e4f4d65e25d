//! Which characters identifiers and texts may hold.
//!
//! Identifiers (actors, capabilities, classes, targets, URIs, state keys)
//! are compared byte for byte: by people in audit queries and by the ledger
//! in indexes. A control character or an invisible format character would
//! let two identifiers that look the same differ ("admin" and
//! "adm\u{200B}in"), so identifiers may hold neither. Texts (intent,
//! reasons, descriptions) are read by people: line breaks and tabs are
//! allowed, other control characters are not, and neither are the
//! bidirectional embedding, override and isolate controls, which can make an
//! audit display show something other than what was recorded (CVE-2021-42574,
//! "Trojan Source").
//!
//! The format-character table is fixed here (Unicode 15.1, general category
//! `Cf`) rather than taken from a library: whether a receipt is valid must
//! not change with a dependency upgrade.

/// Every code point of general category `Cf` (format), Unicode 15.1, as
/// inclusive ranges in ascending order.
const FORMAT_CHARACTERS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),   // soft hyphen
    (0x0600, 0x0605),   // Arabic number signs
    (0x061C, 0x061C),   // Arabic letter mark
    (0x06DD, 0x06DD),   // Arabic end of ayah
    (0x070F, 0x070F),   // Syriac abbreviation mark
    (0x0890, 0x0891),   // Arabic pound and piastre marks above
    (0x08E2, 0x08E2),   // Arabic disputed end of ayah
    (0x180E, 0x180E),   // Mongolian vowel separator
    (0x200B, 0x200F),   // zero-width space, joiners, LRM, RLM
    (0x202A, 0x202E),   // bidirectional embeddings and overrides
    (0x2060, 0x2064),   // word joiner, invisible operators
    (0x2066, 0x206F),   // bidirectional isolates, deprecated format characters
    (0xFEFF, 0xFEFF),   // zero-width no-break space (byte order mark)
    (0xFFF9, 0xFFFB),   // interlinear annotation
    (0x110BD, 0x110BD), // Kaithi number sign
    (0x110CD, 0x110CD), // Kaithi number sign above
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol format controls
    (0xE0001, 0xE0001), // language tag
    (0xE0020, 0xE007F), // tag characters
];

/// Whether `c` is a Unicode format character (category `Cf`).
pub(crate) fn is_format(c: char) -> bool {
    let c = c as u32;
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

/// Whether `c` is a bidirectional embedding, override or isolate control.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The first character an identifier may not hold, with the reason.
pub(crate) fn identifier_violation(s: &str) -> Option<String> {
    s.chars().find_map(|c| {
        if c.is_control() {
            Some(format!(
                "contains the control character {c:?}; identifiers may not hold control characters"
            ))
        } else if is_format(c) {
            Some(format!(
                "contains the invisible format character U+{:04X}; identifiers may not hold Unicode format characters",
                c as u32
            ))
        } else {
            None
        }
    })
}

/// The first character a text may not hold, with the reason.
pub(crate) fn text_violation(s: &str) -> Option<String> {
    s.chars().find_map(|c| {
        if c.is_control() && c != '\n' && c != '\t' {
            Some(format!(
                "contains the control character {c:?}; texts may hold line feeds and tabs, no other control characters"
            ))
        } else if is_bidi_control(c) {
            Some(format!(
                "contains the bidirectional control U+{:04X}; texts may not hold bidirectional embeddings, overrides or isolates",
                c as u32
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_table_is_sorted_and_disjoint() {
        for w in FORMAT_CHARACTERS.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:x?}");
        }
    }

    #[test]
    fn every_listed_format_character_is_refused_in_identifiers_and_neighbours_are_not() {
        for &(lo, hi) in FORMAT_CHARACTERS {
            for cp in [lo, hi] {
                let c = char::from_u32(cp).unwrap();
                assert!(is_format(c), "U+{cp:04X}");
                assert!(identifier_violation(&format!("a{c}b")).is_some());
            }
            // The ranges are disjoint and never adjacent, so the code points
            // around each are not format characters.
            for cp in [lo - 1, hi + 1] {
                assert!(
                    char::from_u32(cp).is_none_or(|c| !is_format(c)),
                    "U+{cp:04X}"
                );
            }
        }
        assert!(!is_format('a') && !is_format('é') && !is_format('\u{1F600}'));
        assert!(identifier_violation("agent-7/é").is_none());
        assert!(identifier_violation("a\u{0}b").is_some());
    }

    #[test]
    fn texts_allow_line_breaks_and_tabs_but_not_other_controls_or_bidi_overrides() {
        assert!(text_violation("why:\n\tbecause").is_none());
        assert!(text_violation("zero\u{200D}width joiner is fine in text").is_none());
        assert!(text_violation("bell\u{7}").is_some());
        assert!(text_violation("carriage\rreturn").is_some());
        assert!(text_violation("abc\u{202E}fed").is_some());
        assert!(text_violation("abc\u{2067}x").is_some());
    }
}
