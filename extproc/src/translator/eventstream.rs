//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`) that Bedrock's
//! `converse-stream` answers with, decoded incrementally: each message is a 12-byte prelude
//! (total length, headers length, CRC32 of those 8 bytes), headers (`:event-type`,
//! `:message-type`, `:content-type`, `:exception-type`, …), the payload, and a CRC32 of
//! everything before it. A message split across chunks anywhere waits for its end; only the one
//! incomplete message is buffered, and a length over [`MAX_MESSAGE_BYTES`] or a CRC mismatch
//! is an error that ends the stream. [`encode`] writes messages (the mock provider, tests).

/// The largest message accepted (AWS caps payloads at 16 MiB, headers at 128 KiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024 + 16;

/// Prelude (12) + message CRC (4).
const OVERHEAD: usize = 16;

/// Why a stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The prelude's CRC does not match: the lengths cannot be trusted.
    #[error("event-stream prelude checksum mismatch")]
    PreludeCrc,
    /// The message's CRC does not match.
    #[error("event-stream message checksum mismatch")]
    MessageCrc,
    /// A length field is impossible or over the limit.
    #[error("event-stream message length {0} is out of bounds")]
    Length(usize),
    /// A header cannot be parsed.
    #[error("event-stream headers are malformed")]
    Headers,
    /// The stream ended inside a message.
    #[error("event-stream ended inside a message")]
    Truncated,
}

/// One decoded message: the headers that matter here, and the payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: String,
    /// `:event-type` of an event (`messageStart`, `contentBlockDelta`, …).
    pub event_type: String,
    /// `:exception-type` of an exception (`throttlingException`, …).
    pub exception_type: String,
    /// `:error-code` of an error.
    pub error_code: String,
    /// `:error-message` of an error.
    pub error_message: String,
    /// The payload (JSON for Bedrock).
    pub payload: Vec<u8>,
}

fn be32(b: &[u8]) -> usize {
    match b {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => 0,
    }
}

/// Reads the headers block into `m`; string and byte-array values of the names that matter
/// are kept, every other type is skipped by its size.
fn read_headers(mut h: &[u8], m: &mut Message) -> Result<(), FrameError> {
    while !h.is_empty() {
        let (&name_len, rest) = h.split_first().ok_or(FrameError::Headers)?;
        let name_len = usize::from(name_len);
        let name = rest.get(..name_len).ok_or(FrameError::Headers)?;
        let rest = &rest[name_len..];
        let (&kind, rest) = rest.split_first().ok_or(FrameError::Headers)?;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(FrameError::Headers),
        };
        h = match fixed {
            Some(n) => rest.get(n..).ok_or(FrameError::Headers)?,
            None => {
                let len = rest
                    .get(..2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                    .ok_or(FrameError::Headers)?;
                let value = rest.get(2..2 + len).ok_or(FrameError::Headers)?;
                let slot = match name {
                    b":message-type" => Some(&mut m.message_type),
                    b":event-type" => Some(&mut m.event_type),
                    b":exception-type" => Some(&mut m.exception_type),
                    b":error-code" => Some(&mut m.error_code),
                    b":error-message" => Some(&mut m.error_message),
                    _ => None,
                };
                if let Some(slot) = slot {
                    *slot = String::from_utf8_lossy(value).into_owned();
                }
                &rest[2 + len..]
            }
        };
    }
    Ok(())
}

/// Decodes one complete message (`frame` is exactly its bytes).
fn decode_message(frame: &[u8]) -> Result<Message, FrameError> {
    let total = frame.len();
    let headers_len = be32(&frame[4..8]);
    let (body, crc) = frame.split_at(total - 4);
    if crc32fast::hash(body) != be32(crc) as u32 {
        return Err(FrameError::MessageCrc);
    }
    let headers = frame
        .get(12..12 + headers_len)
        .ok_or(FrameError::Length(headers_len))?;
    let mut m = Message::default();
    read_headers(headers, &mut m)?;
    m.payload = frame[12 + headers_len..total - 4].to_vec();
    Ok(m)
}

/// Incremental decoder: push chunks as they come, get each complete message once.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: bool,
}

impl Decoder {
    /// Feeds `chunk`, calling `f` with every message it completes; at `end`, bytes left over
    /// are [`FrameError::Truncated`]. After an error the decoder reads nothing more.
    pub fn push(
        &mut self,
        chunk: &[u8],
        end: bool,
        mut f: impl FnMut(Message),
    ) -> Result<(), FrameError> {
        if self.failed {
            return Ok(());
        }
        let r = self.feed(chunk, end, &mut f);
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        r
    }

    fn feed(
        &mut self,
        mut chunk: &[u8],
        end: bool,
        f: &mut impl FnMut(Message),
    ) -> Result<(), FrameError> {
        loop {
            if self.buf.is_empty() {
                // Whole messages straight from the chunk; only a partial one is copied.
                match frame_len(chunk)? {
                    Some(total) if chunk.len() >= total => {
                        f(decode_message(&chunk[..total])?);
                        chunk = &chunk[total..];
                    }
                    _ => {
                        self.buf.extend_from_slice(chunk);
                        break;
                    }
                }
            } else {
                let need = frame_len(&self.buf)?.unwrap_or(12);
                let take = need.saturating_sub(self.buf.len()).min(chunk.len());
                self.buf.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.buf.len() < need {
                    break; // the chunk is used up
                }
                if let Some(total) = frame_len(&self.buf)?.filter(|t| *t == self.buf.len()) {
                    f(decode_message(&self.buf[..total])?);
                    self.buf.clear();
                }
            }
        }
        if end && !self.buf.is_empty() {
            return Err(FrameError::Truncated);
        }
        Ok(())
    }
}

/// The total length of the message `src` starts with, once its prelude is complete and valid.
fn frame_len(src: &[u8]) -> Result<Option<usize>, FrameError> {
    if src.len() < 12 {
        return Ok(None);
    }
    if crc32fast::hash(&src[..8]) != be32(&src[8..]) as u32 {
        return Err(FrameError::PreludeCrc);
    }
    let total = be32(src);
    if !(OVERHEAD..=MAX_MESSAGE_BYTES).contains(&total) {
        return Err(FrameError::Length(total));
    }
    let headers_len = be32(&src[4..]);
    if headers_len > total - OVERHEAD {
        return Err(FrameError::Length(headers_len));
    }
    Ok(Some(total))
}

fn push_string_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(7);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// One message with string headers `headers` (names under 256 bytes, values under 64 KiB) and
/// `payload`, CRCs included.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(96);
    for (k, v) in headers {
        push_string_header(&mut h, k, v);
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// An `event` message as Bedrock sends it (`:event-type`, `:content-type`, `:message-type`).
pub fn event(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// An `exception` message as Bedrock sends it mid-stream.
pub fn exception(exception_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Message>, Result<(), FrameError>) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut r = Ok(());
        for (i, c) in chunks.iter().enumerate() {
            r = d.push(c, i + 1 == chunks.len(), |m| out.push(m));
            if r.is_err() {
                break;
            }
        }
        (out, r)
    }

    #[test]
    fn a_known_message_from_the_aws_spec_decodes() {
        // The "all headers" vector of the AWS event-stream test suite would need every header
        // type; this one has a string and an int32 header, built by hand.
        let mut h = Vec::new();
        push_string_header(&mut h, ":event-type", "messageStart");
        h.extend_from_slice(&[5, b'c', b'o', b'u', b'n', b't', 4, 0, 0, 0, 7]);
        let payload = br#"{"role":"assistant"}"#;
        let total = 16 + h.len() + payload.len();
        let mut m = (total as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        m.extend_from_slice(&h);
        m.extend_from_slice(payload);
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        let (msgs, r) = decode_all(&[&m]);
        assert_eq!(r, Ok(()));
        assert_eq!(msgs[0].event_type, "messageStart");
        assert_eq!(msgs[0].payload, payload);
        // The empty-message vector: 16 bytes, CRCs 0x05c248eb and 0x7d98c8ff.
        let empty = encode(&[], b"");
        assert_eq!(
            empty,
            [0, 0, 0, 0x10, 0, 0, 0, 0, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98, 0xc8, 0xff]
        );
    }

    #[test]
    fn messages_split_at_every_byte_decode_the_same() {
        let mut stream = event("messageStart", br#"{"role":"assistant"}"#);
        stream.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"h€llo"}}"#.as_bytes(),
        ));
        stream.extend(exception("throttlingException", br#"{"message":"slow"}"#));
        let (whole, r) = decode_all(&[&stream]);
        assert_eq!(r, Ok(()));
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[2].message_type, "exception");
        assert_eq!(whole[2].exception_type, "throttlingException");
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let (split, r) = decode_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(r, Ok(()));
                assert_eq!(split, whole, "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn corruption_and_absurd_lengths_are_errors() {
        let good = event("messageStop", br#"{"stopReason":"end_turn"}"#);
        let mut bad_payload = good.clone();
        let n = bad_payload.len();
        bad_payload[n - 6] ^= 1;
        assert_eq!(decode_all(&[&bad_payload]).1, Err(FrameError::MessageCrc));
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        assert_eq!(decode_all(&[&bad_prelude]).1, Err(FrameError::PreludeCrc));
        // A prelude that claims 1 GiB (with a valid CRC) is refused before any buffering.
        let mut huge = (1u32 << 30).to_be_bytes().to_vec();
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(&crc32fast::hash(&huge).to_be_bytes());
        assert_eq!(decode_all(&[&huge]).1, Err(FrameError::Length(1 << 30)));
        // Cut short.
        assert_eq!(
            decode_all(&[&good[..good.len() - 1]]).1,
            Err(FrameError::Truncated)
        );
        // After an error, nothing more is read.
        let mut d = Decoder::default();
        assert!(d.push(&bad_payload, false, |_| {}).is_err());
        let mut seen = 0;
        assert_eq!(d.push(&good, true, |_| seen += 1), Ok(()));
        assert_eq!(seen, 0);
    }
}
