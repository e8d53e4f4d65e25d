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
//! The format-character table is the ledger core's (Unicode 15.1, general
//! category `Cf`), fixed rather than taken from a library: whether a receipt
//! is valid must not change with a dependency upgrade.

/// Whether `c` is a Unicode format character (category `Cf`): the ledger's
/// one table, shared with context ids and keys.
pub(crate) fn is_format(c: char) -> bool {
    converge_ledger_core::is_format_char(c)
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
    fn identifiers_refuse_format_and_control_characters() {
        for c in ['\u{200B}', '\u{202E}', '\u{FEFF}', '\u{E0041}', '\u{AD}'] {
            assert!(identifier_violation(&format!("a{c}b")).is_some(), "{c:?}");
        }
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
