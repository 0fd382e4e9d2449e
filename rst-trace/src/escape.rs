//! Text other users choose (process names, cgroup and container names, anything read from
//! /proc) made safe to show: on a terminal, where control bytes would move the cursor, clear the
//! screen or forge a line, and in JSON, where names that are not UTF-8 must stay distinct.
//!
//! Sinks escape at the point a line is rendered, so nothing unescaped reaches the operator
//! however it got into the line.

use std::{borrow::Cow, fmt::Write as _};

/// A task name (`comm`, up to 16 bytes from the kernel or /proc) as text that keeps every
/// distinct name distinct: valid UTF-8 is kept, each byte that is not is written `\xNN`, and a
/// backslash is written `\\` so that a name spelled `\xff` in ASCII does not read as the byte.
pub fn comm_from_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                text.push_str("\\\\");
            } else {
                text.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

/// `text` with every character a terminal would act on written out instead: control characters
/// (C0, DEL and C1, which some terminals read as escape sequences) as `\n`, `\r`, `\t` or
/// `\xNN`/`\u{NN}`, and the bidirectional overrides that reorder what follows them as `\u{NNNN}`.
/// Borrowed when there is nothing to escape, which is almost always.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // U+202A..U+202E and U+2066..U+2069 reorder the text after them ("Trojan Source").
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_written_out() {
        assert_eq!(for_terminal("a\x1b[2J\nSENT 1 s"), r"a\x1b[2J\nSENT 1 s");
        assert_eq!(for_terminal("\r\t\x07\x7f"), r"\r\t\x07\x7f");
        // C1 controls (CSI is U+009B) and bidi overrides.
        assert_eq!(for_terminal("x\u{9b}2J\u{202e}y"), r"x\u{9b}2J\u{202e}y");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in [
            "nginx",
            "kworker/0:1",
            "Chrome_IOThread",
            "défaut",
            "a\\b",
            "",
        ] {
            assert!(matches!(for_terminal(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn names_that_are_not_utf8_stay_distinct() {
        assert_eq!(comm_from_bytes(b"nginx"), "nginx");
        assert_eq!(comm_from_bytes("défaut".as_bytes()), "défaut");
        assert_eq!(comm_from_bytes(b"a\xffb"), r"a\xffb");
        assert_eq!(comm_from_bytes(b"a\xfeb"), r"a\xfeb");
        // A name that spells the escape in ASCII is not the byte.
        assert_eq!(comm_from_bytes(br"a\xffb"), r"a\\xffb");
        // A multi-byte character cut at the 15-byte limit.
        assert_eq!(comm_from_bytes(b"ab\xc3"), r"ab\xc3");
        let names: [&[u8]; 4] = [b"\xff", b"\xfe", br"\xff", b"\xef\xbf\xbd"];
        let escaped: std::collections::HashSet<String> =
            names.iter().map(|name| comm_from_bytes(name)).collect();
        assert_eq!(escaped.len(), names.len(), "{escaped:?}");
    }
}
