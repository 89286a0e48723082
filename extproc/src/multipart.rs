//! `multipart/form-data` (RFC 7578) read in one pass over the buffered body: each part's name,
//! filename and the byte range of its content, without copying any content. A field's value
//! (the `model`) is rewritten by [`replace`], which copies the body once around the new value.
//!
//! The parse is linear: one substring search for the delimiter (`\r\n--{boundary}`) walks the
//! body once; part headers are bounded in size and parts in number, so a hostile form costs
//! no more than its length.

use std::ops::Range;

use memchr::memmem;

/// The most parts a form may have.
pub const MAX_PARTS: usize = 256;

/// The largest header block of one part.
const MAX_PART_HEADERS: usize = 16 * 1024;

/// Why a form cannot be read (the message goes to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The `content-type` is not `multipart/form-data`.
    #[error("the content-type must be multipart/form-data")]
    NotMultipart,
    /// The `content-type` names no boundary, or an unusable one.
    #[error("the content-type has no usable boundary")]
    NoBoundary,
    /// The body does not start with the boundary.
    #[error("the body does not start with the form's boundary")]
    NoFirstDelimiter,
    /// A part's headers never end, or the form never reaches its closing delimiter.
    #[error("the form is truncated")]
    Truncated,
    /// A part's header block is malformed or too large.
    #[error("a part's headers are malformed")]
    BadPartHeaders,
    /// A part has no `content-disposition: form-data; name=…`.
    #[error("a part has no form-data name")]
    NoName,
    /// More than [`MAX_PARTS`] parts.
    #[error("the form has more than {MAX_PARTS} parts")]
    TooManyParts,
}

/// One part of a form: where its content is in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The field name (`content-disposition`'s `name`).
    pub name: String,
    /// The file name, for a file part.
    pub filename: Option<String>,
    /// The part's own `content-type`, if it has one.
    pub content_type: Option<String>,
    /// The content's byte range in the body.
    pub data: Range<usize>,
}

/// The boundary of a `multipart/form-data` content-type.
pub fn boundary(content_type: &str) -> Result<&str, MultipartError> {
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            // RFC 2046: 1 to 70 characters.
            if v.is_empty() || v.len() > 70 || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(MultipartError::NoBoundary);
            }
            return Ok(v);
        }
    }
    Err(MultipartError::NoBoundary)
}

/// The parts of `body`, a form delimited by `boundary`.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    // The first delimiter: at the very start, or after a preamble ending in CRLF.
    let mut at = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        finder
            .find(body)
            .map(|i| i + delimiter.len())
            .ok_or(MultipartError::NoFirstDelimiter)?
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(at..).ok_or(MultipartError::Truncated)?;
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the CRLF ending the delimiter line.
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let line_end = at + pad;
        match body.get(line_end..line_end + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(MultipartError::BadPartHeaders),
            None => return Err(MultipartError::Truncated),
        }
        let headers_start = line_end + 2;
        let head = body.get(headers_start..).ok_or(MultipartError::Truncated)?;
        let head_len = if head.starts_with(b"\r\n") {
            0
        } else {
            let window = &head[..head.len().min(MAX_PART_HEADERS + 4)];
            match memmem::find(window, b"\r\n\r\n") {
                Some(i) => i + 2,
                None if head.len() > MAX_PART_HEADERS => {
                    return Err(MultipartError::BadPartHeaders)
                }
                None => return Err(MultipartError::Truncated),
            }
        };
        let headers = &body[headers_start..headers_start + head_len];
        let data_start = headers_start + head_len + 2;
        let tail = body.get(data_start..).ok_or(MultipartError::Truncated)?;
        let data_len = finder.find(tail).ok_or(MultipartError::Truncated)?;
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        parts.push(part(headers, data_start..data_start + data_len)?);
        at = data_start + data_len + delimiter.len();
    }
}

/// One part from its header block (each line ending in CRLF).
fn part(headers: &[u8], data: Range<usize>) -> Result<Part, MultipartError> {
    let text = std::str::from_utf8(headers).map_err(|_| MultipartError::BadPartHeaders)?;
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or(MultipartError::BadPartHeaders)?;
        let k = k.trim();
        if k.eq_ignore_ascii_case("content-disposition") {
            let (kind, params) = v.split_once(';').unwrap_or((v, ""));
            if !kind.trim().eq_ignore_ascii_case("form-data") {
                return Err(MultipartError::NoName);
            }
            for (pk, pv) in disposition_params(params) {
                if pk.eq_ignore_ascii_case("name") {
                    name = Some(pv);
                } else if pk.eq_ignore_ascii_case("filename") {
                    filename = Some(pv);
                }
            }
        } else if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.trim().to_owned());
        }
    }
    Ok(Part {
        name: name.ok_or(MultipartError::NoName)?,
        filename,
        content_type,
        data,
    })
}

/// `name="value"` pairs of a `content-disposition` (quoted with backslash escapes, or bare).
fn disposition_params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t', ';']);
        let Some((k, rest)) = s.split_once('=') else {
            return out;
        };
        let k = k.trim().to_owned();
        let rest = rest.trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            out.push((k, value));
            s = quoted.get(end..).unwrap_or_default();
        } else {
            let (v, after) = rest.split_once(';').unwrap_or((rest, ""));
            out.push((k, v.trim().to_owned()));
            s = after;
        }
    }
}

/// `body` with the bytes in `range` replaced by `value`: one copy of the body (the file parts'
/// bytes are copied once, straight into the new body).
pub fn replace(body: &[u8], range: Range<usize>, value: &[u8]) -> Vec<u8> {
    let (Some(head), Some(tail)) = (body.get(..range.start), body.get(range.end..)) else {
        return body.to_vec();
    };
    let mut out = Vec::with_capacity(head.len() + value.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(value);
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, data) in parts {
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    #[test]
    fn reads_fields_and_files_and_rewrites_one_field() {
        // Binary content that contains CRLF, dashes and most of the boundary.
        let audio: &[u8] = b"RIFF\r\n--xyz\r\n-- \x00\xff";
        let body = form(
            "xyzzy",
            &[("model", None, b"whisper"), ("file", Some("a.wav"), audio)],
        );
        let b = boundary("multipart/form-data; boundary=xyzzy").unwrap();
        let parts = parse(&body, b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&body[parts[0].data.clone()], b"whisper");
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(&body[parts[1].data.clone()], audio);
        let rewritten = replace(&body, parts[0].data.clone(), b"whisper-1");
        let again = parse(&rewritten, b).unwrap();
        assert_eq!(&rewritten[again[0].data.clone()], b"whisper-1");
        assert_eq!(&rewritten[again[1].data.clone()], audio);
    }

    #[test]
    fn bad_forms_are_refused() {
        assert_eq!(
            boundary("multipart/form-data"),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            boundary("application/json"),
            Err(MultipartError::NotMultipart)
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"q b\"").unwrap(),
            "q b"
        );
        let body = form("b1", &[("model", None, b"m"), ("file", Some("f"), b"data")]);
        // Cut anywhere before the closing delimiter: truncated, never a panic.
        for cut in 0..body.len() - 6 {
            assert!(parse(&body[..cut], "b1").is_err(), "cut at {cut}");
        }
        assert_eq!(
            parse(b"nothing here", "b1"),
            Err(MultipartError::NoFirstDelimiter)
        );
        let nameless = b"--b1\r\nContent-Type: text/plain\r\n\r\nx\r\n--b1--\r\n";
        assert_eq!(parse(nameless, "b1"), Err(MultipartError::NoName));
    }

    #[test]
    fn a_preamble_and_escaped_names_are_read() {
        let body = b"preamble\r\n--b1\r\nContent-Disposition: form-data; name=\"a\\\"b\"; filename=x.png\r\n\r\nv\r\n--b1--";
        let parts = parse(body, "b1").unwrap();
        assert_eq!(parts[0].name, "a\"b");
        assert_eq!(parts[0].filename.as_deref(), Some("x.png"));
    }
}
