//! Quoting input back to people: whatever a config file, an HTTP client or an event put
//! in a string, a message quotes at most a short excerpt of it, with control characters
//! escaped, so an error never floods a terminal or a log, nor drives the terminal.

/// Characters of an input an error message quotes, by default.
pub const EXCERPT_CHARS_MAX: usize = 60;

/// At most `max_chars` characters of `text` (counting escapes as they print), control
/// characters escaped (`\n`, `\t`, `\r`, `\x1b`, `\u0085`), ending in `…` when it was
/// cut (the `…` counted).
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    // The end of the longest prefix that leaves room for the `…`.
    let mut cut_at = 0;
    for c in text.chars() {
        let piece = escape(c).unwrap_or_else(|| c.to_string());
        let width = piece.chars().count();
        if used + width > max_chars {
            out.truncate(cut_at);
            out.push('…');
            return out;
        }
        used += width;
        out.push_str(&piece);
        if used < max_chars {
            cut_at = out.len();
        }
    }
    out
}

/// `text` as a short quoted excerpt: `"` + [`excerpt`] + `"`.
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", excerpt(text, EXCERPT_CHARS_MAX))
}

fn escape(c: char) -> Option<String> {
    match c {
        '\n' => Some("\\n".to_owned()),
        '\t' => Some("\\t".to_owned()),
        '\r' => Some("\\r".to_owned()),
        c if c.is_control() && (c as u32) < 0x80 => Some(format!("\\x{:02x}", c as u32)),
        c if c.is_control() => Some(format!("\\u{:04x}", c as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_escaped_and_marked_when_cut() {
        assert_eq!(excerpt("plain", 60), "plain");
        assert_eq!(excerpt("a\u{1b}[31mred\n", 60), "a\\x1b[31mred\\n");
        assert_eq!(excerpt("\u{85}\u{7f}\t\r", 60), "\\u0085\\x7f\\t\\r");
        assert_eq!(excerpt(&"x".repeat(1_000_000), 5), "xxxx…");
        assert_eq!(excerpt("xxxxx", 5), "xxxxx");
        // An escape is never cut in half.
        assert_eq!(excerpt("abcd\u{1b}", 6), "abcd…");
        assert_eq!(excerpt("ééé", 2), "é…");
        assert_eq!(quoted("say \"hi\""), "\"say \"hi\"\"");
        assert_eq!(quoted(&"y".repeat(100)).chars().count(), 60 + 2);
    }
}
