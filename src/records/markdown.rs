//! CommonMark escaping of text the export did not write itself: what patients and clinicians
//! said, translations, model-written summaries, action fields, patient names.
//!
//! Design decision: such text is always rendered as literal text, never as Markdown, so a
//! patient saying "# …", "[click](http://…)" or "<script>" cannot change the structure of the
//! document or smuggle a link, image or HTML into it. Characters are backslash-escaped only
//! where CommonMark (and the GFM table and strikethrough extensions) could give them meaning:
//! inline markers anywhere, block markers where a line starts; `<` and `&` become entities so
//! no HTML or character reference survives. A word that GFM's autolink extension would turn
//! into a link (one holding `://` or `www.`) is written as a code span instead, since the
//! extension finds links in plain text and no escape inside the word reliably stops it. Line breaks of multi-line text are kept as hard
//! breaks (a model's summary list stays one item a line) but can never start a new block.

/// Pure: multi-line text as escaped lines for a block (a paragraph or a block quote's body):
/// surrounding blank lines dropped, runs of blank lines kept as one (a paragraph break),
/// other line breaks as hard breaks (a trailing `\`).
pub(super) fn block_lines(text: &str) -> Vec<String> {
    let normalized = text.replace("\r\n", "\n");
    let mut lines: Vec<String> = Vec::new();
    for line in normalized
        .split(['\n', '\r'])
        .map(|l| escape_line(l, Hashes::LineStart))
    {
        match (lines.last_mut(), line.is_empty()) {
            (None, true) => {}
            (Some(previous), true) if previous.is_empty() => {}
            (Some(previous), false) if !previous.is_empty() => {
                previous.push('\\');
                lines.push(line);
            }
            _ => lines.push(line),
        }
    }
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// Pure: text for a place that holds one line (a heading, a list item, a label): every line
/// break and run of white space becomes one space, and `#` is escaped everywhere, since in a
/// heading a trailing run of them would be read as its closing sequence.
pub(super) fn inline(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    escape_line(&one_line, Hashes::Everywhere)
}

/// Pure: text as a code span (its characters stay literal, backslashes included): a fence of
/// one more backtick than the longest run inside, padded when the text holds backticks.
pub(super) fn code_span(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let longest = longest_backtick_run(&one_line);
    let fence = "`".repeat(longest + 1);
    if longest == 0 {
        format!("{fence}{one_line}{fence}")
    } else {
        format!("{fence} {one_line} {fence}")
    }
}

/// Pure: text as a fenced code block, the fence longer than any backtick run inside so the
/// text cannot close it.
pub(super) fn code_block(text: &str) -> String {
    let fence = "`".repeat((longest_backtick_run(text) + 1).max(3));
    format!("{fence}\n{text}\n{fence}")
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// Where `#` is escaped: where a line starts (an ATX heading), or everywhere (in a heading,
/// where a trailing run would also be read as its closing sequence).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hashes {
    LineStart,
    Everywhere,
}

/// Pure: one line (no line break inside) as literal inline text. Leading white space is
/// dropped (four spaces would start a code block) and so is trailing (two spaces are a hard
/// break).
fn escape_line(line: &str, hashes: Hashes) -> String {
    let line = line.trim();
    let mut out = String::with_capacity(line.len() + 8);
    let chars: Vec<char> = line.chars().collect();
    // Block markers only count where the line starts: headings, block quotes, bullet lists,
    // setext underlines, ordered lists (`1.` / `1)`).
    let digits = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut link_like_until = 0;
    for (i, &c) in chars.iter().enumerate() {
        if i < link_like_until {
            continue;
        }
        if i == 0 || chars[i - 1].is_whitespace() {
            let end = chars[i..]
                .iter()
                .position(|c| c.is_whitespace())
                .map_or(chars.len(), |n| i + n);
            let word: String = chars[i..end].iter().collect();
            if is_link_like(&word) {
                out.push_str(&code_span(&word));
                link_like_until = end;
                continue;
            }
        }
        let starts_block = match c {
            '#' => i == 0 || hashes == Hashes::Everywhere,
            '>' | '-' | '+' | '=' => i == 0,
            '.' | ')' => i == digits && digits > 0,
            _ => false,
        };
        match c {
            '<' => out.push_str("&lt;"),
            '&' => out.push_str("&amp;"),
            // Inside a word (snake_case) `_` cannot open or close emphasis.
            '_' if i > 0
                && chars[i - 1].is_alphanumeric()
                && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric()) =>
            {
                out.push('_');
            }
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ if starts_block => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether GFM's autolink extension could make a link of (part of) this word: a URL scheme
/// (`http://`, `https://`, `ftp://`…) or a `www.` domain.
fn is_link_like(word: &str) -> bool {
    word.contains("://") || word.to_ascii_lowercase().contains("www.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_markers_are_escaped_where_a_line_starts() {
        assert_eq!(
            block_lines("# Heading\n## two\n- item\n+ item\n* item\n1. first\n12) second\n> quote\n===\n---"),
            [
                "\\# Heading\\",
                "\\## two\\",
                "\\- item\\",
                "\\+ item\\",
                "\\* item\\",
                "1\\. first\\",
                "12\\) second\\",
                "\\> quote\\",
                "\\===\\",
                "\\---",
            ]
        );
        // Mid-line they mean nothing and stay as they are.
        assert_eq!(
            block_lines("pain 7/10 - worse > better, 2 + 2 = 4. #1 (left)"),
            ["pain 7/10 - worse > better, 2 + 2 = 4. #1 (left)"]
        );
    }

    #[test]
    fn links_images_html_and_code_stay_literal() {
        assert_eq!(
            block_lines("[click](http://evil.example) ![x](http://evil.example/p.png)"),
            ["`[click](http://evil.example)` `![x](http://evil.example/p.png)`"]
        );
        assert_eq!(
            block_lines("<script>alert(1)</script> &amp; &#60;"),
            ["&lt;script>alert(1)&lt;/script> &amp;amp; &amp;#60;"]
        );
        assert_eq!(
            block_lines("```rust\ncode\n~~~\n`inline` **bold** _em_ ~~gone~~ a\\b"),
            [
                "\\`\\`\\`rust\\",
                "code\\",
                "\\~\\~\\~\\",
                "\\`inline\\` \\*\\*bold\\*\\* \\_em\\_ \\~\\~gone\\~\\~ a\\\\b",
            ]
        );
        assert_eq!(
            block_lines("| a | b |\n|---|---|"),
            ["\\| a \\| b \\|\\", "\\|---\\|---\\|"]
        );
        assert_eq!(
            block_lines("follow_up in snake_case"),
            ["follow_up in snake_case"]
        );
    }

    #[test]
    fn words_gfm_would_autolink_become_code_spans() {
        assert_eq!(
            block_lines("see http://evil.example now, or www.evil.example"),
            ["see `http://evil.example` now, or `www.evil.example`"]
        );
        assert_eq!(
            block_lines("(WWW.EVIL.EXAMPLE) ftp://x/`y`"),
            ["`(WWW.EVIL.EXAMPLE)` `` ftp://x/`y` ``"]
        );
        // At a line start the span is the whole block marker question: none.
        assert_eq!(inline("# https://x #"), "\\# `https://x` \\#");
        // Words that only look a little like links stay escaped text.
        assert_eq!(
            block_lines("follow_up at 10:30 in room 3."),
            ["follow_up at 10:30 in room 3."]
        );
    }

    #[test]
    fn line_breaks_are_hard_breaks_and_never_start_a_block() {
        assert_eq!(
            block_lines("\n\n    indented code\r\n\tfirst\rsecond  \n\n\n\nnext paragraph\n\n"),
            ["indented code\\", "first\\", "second", "", "next paragraph"]
        );
        assert_eq!(block_lines(" \n "), Vec::<String>::new());
    }

    #[test]
    fn inline_text_is_one_line_with_every_hash_escaped() {
        assert_eq!(inline("Ana\n# Evil\n\n- x"), "Ana \\# Evil - x");
        assert_eq!(inline("García #"), "García \\#");
        assert_eq!(inline("# title"), "\\# title");
        assert_eq!(inline("- [x](y) | <b>"), "\\- \\[x\\](y) \\| &lt;b>");
    }

    #[test]
    fn code_cannot_be_closed_from_inside() {
        assert_eq!(code_span("en"), "`en`");
        assert_eq!(code_span("e`n\n\nx"), "`` e`n x ``");
        assert_eq!(code_block("a\n```\nb"), "````\na\n```\nb\n````");
        assert_eq!(code_block("plain"), "```\nplain\n```");
    }
}
