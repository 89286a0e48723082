//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a request
//! arrives with, read strictly (a malformed one starts a new trace, as the spec asks), and the
//! one Tollgate sends on to the provider.

/// A trace context received with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub span_id: [u8; 8],
    /// Whether the caller recorded its span (the `sampled` flag).
    pub sampled: bool,
}

/// A trace context as it arrived: the parent, and its vendors' `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The caller's span.
    pub parent: Parent,
    /// The `tracestate` that came with it, when usable.
    pub state: Option<String>,
}

impl Remote {
    /// The context of these `traceparent` and `tracestate` values; `None` without a
    /// well-formed `traceparent`.
    pub fn read(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Remote> {
        Some(Remote {
            parent: parse_traceparent(traceparent?)?,
            state: tracestate.and_then(self::tracestate),
        })
    }
}

/// The longest `tracestate` carried on (the spec's limit for a whole list).
pub const MAX_TRACESTATE: usize = 512;

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex into `out`; `None` on any other character or a length mismatch.
fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(())
}

/// Parses a `traceparent` header: `version-traceid-parentid-flags` in lowercase hex. Version
/// `00` must be exactly that; a later version may append fields after a `-` (read as `00`);
/// version `ff`, all-zero ids and anything malformed give `None`.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&value[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&value[3..35], &mut trace_id)?;
    hex_into(&value[36..52], &mut span_id)?;
    hex_into(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// The `tracestate` to keep: the header as text when it is printable ASCII of at most
/// [`MAX_TRACESTATE`] bytes, else nothing (vendors' entries are theirs to read, not ours).
pub fn tracestate(value: &[u8]) -> Option<String> {
    let value = value.trim_ascii();
    (!value.is_empty()
        && value.len() <= MAX_TRACESTATE
        && value.iter().all(|b| (0x20..0x7f).contains(b)))
    .then(|| String::from_utf8_lossy(value).into_owned())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The `traceparent` naming `span_id` of `trace_id`, sampled.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, trace_id);
    out.push('-');
    push_hex(&mut out, span_id);
    out.push_str("-01");
    out
}

/// Lowercase hex of `bytes` (ids in logs and tests).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(traceparent(&p.trace_id, &p.span_id), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // A later version may carry more fields; only the first four are read.
        let future = GOOD.replacen("00-", "cc-", 1) + "-what-comes-next";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn tracestate_is_kept_only_when_printable_and_short() {
        assert_eq!(
            tracestate(b" vendor=abc,other=1 ").as_deref(),
            Some("vendor=abc,other=1")
        );
        assert_eq!(tracestate(b""), None);
        assert_eq!(tracestate(&[b'a'; MAX_TRACESTATE + 1]), None);
        assert_eq!(tracestate(b"a=\x01"), None);
    }
}
