//! Bounds on client-controlled text: a string a client sent (a model name, a path, an end
//! user, a parser's message quoting the body) is cut to a fixed size, with a marker saying
//! so, before it reaches a log event, a trace, a log line or an error body.

use std::borrow::Cow;

/// The most bytes of one client-controlled string echoed anywhere (log events, spans, log
/// lines, error bodies), marker excluded.
pub const MAX_ECHO_BYTES: usize = 256;

/// `s`, cut at a character boundary to at most `max` bytes followed by a marker naming the
/// bytes left out (`…[+N bytes]`); unchanged (borrowed) when it fits.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…[+{} bytes]", &s[..cut], s.len() - cut))
}

/// [`bounded`] at [`MAX_ECHO_BYTES`].
pub fn echo(s: &str) -> Cow<'_, str> {
    bounded(s, MAX_ECHO_BYTES)
}

/// Cuts `s` in place as [`bounded`] does.
pub fn bound_in_place(s: &mut String, max: usize) {
    if let Cow::Owned(cut) = bounded(s, max) {
        *s = cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_a_marker() {
        assert!(matches!(bounded("gpt-4o", 8), Cow::Borrowed("gpt-4o")));
        assert_eq!(bounded("abcdefghij", 4), "abcd…[+6 bytes]");
        // Never inside a character: "é" is two bytes.
        assert_eq!(bounded("aéé", 2), "a…[+4 bytes]");
        let mut s = "x".repeat(1 << 20);
        bound_in_place(&mut s, MAX_ECHO_BYTES);
        assert!(s.len() < MAX_ECHO_BYTES + 32, "{}", s.len());
        assert!(s.ends_with("…[+1048320 bytes]"), "{s}");
    }

    #[test]
    fn bounded_text_is_a_prefix_within_the_bound() {
        let s = "añb€c😀d".repeat(3);
        for max in 0..s.len() + 2 {
            let b = bounded(&s, max);
            let kept = b.split('…').next().unwrap_or("");
            assert!(kept.len() <= max && s.starts_with(kept), "{max}: {b}");
        }
    }
}
