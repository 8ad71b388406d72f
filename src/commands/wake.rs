//! The clinician's wake phrase: what a valid one is and its stored (normalized) form.
//!
//! Design decision: the phrase is normalized once, when it is set — lowercase, typographic
//! apostrophes made plain, single spaces — so what the clinician reads back is what detection
//! compares against (matching itself ignores case and punctuation, see
//! [`crate::ai::CommandContext::command_text`]).

/// Longest wake phrase, in characters, after normalization.
pub const MAX_CHARS: usize = 40;

/// The normalized phrase, or `None` when it is not 1 to [`MAX_CHARS`] characters of letters,
/// spaces and apostrophes with at least one letter.
pub fn normalize(raw: &str) -> Option<String> {
    let unified: String = raw
        .chars()
        .map(|c| match c {
            '\u{2019}' | '\u{2018}' | '\u{02BC}' => '\'',
            c => c,
        })
        .flat_map(char::to_lowercase)
        .collect();
    if !unified
        .chars()
        .all(|c| c.is_alphabetic() || c.is_whitespace() || c == '\'')
        || !unified.chars().any(char::is_alphabetic)
    {
        return None;
    }
    let phrase = unified.split_whitespace().collect::<Vec<_>>().join(" ");
    (phrase.chars().count() <= MAX_CHARS).then_some(phrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_checked_and_normalized() {
        assert_eq!(normalize("  Hey   Tandem ").as_deref(), Some("hey tandem"));
        assert_eq!(
            normalize("Doctor\u{2019}s Helper").as_deref(),
            Some("doctor's helper")
        );
        assert_eq!(normalize("Oye Tándem").as_deref(), Some("oye tándem"));
        assert_eq!(normalize(&"a".repeat(MAX_CHARS)).map(|p| p.len()), Some(40));
        for bad in [
            "",
            "   ",
            "'",
            "hey, tandem",
            "tandem 2",
            "hey\ttandem\n!",
            &"a".repeat(41),
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
