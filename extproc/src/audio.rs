//! The length of an audio file read from its headers, never by decoding: WAV (`fmt ` byte
//! rate), MP3 (Xing/Info/VBRI frame count, else the first frame's bitrate over the stream's
//! bytes), FLAC (STREAMINFO), Ogg Opus and Vorbis (the granule position of the last page) and
//! M4A/MP4 (`moov/mvhd`). Every reader is bounded (a fixed number of boxes, chunks or bytes
//! scanned) and answers `None` rather than guessing; [`estimate_ms`] is the documented
//! fallback from the byte size alone.

/// The bitrate floor behind [`estimate_ms`]: 16 kbit/s (2,000 bytes a second), below the
/// bitrate of any speech codec setting in common use, so the estimate errs long.
pub const FLOOR_BYTES_PER_SECOND: u64 = 2_000;

/// Bytes of a file's head kept for [`duration_ms`] of a streamed answer (speech).
pub const HEAD_BYTES: usize = 4096;

/// How far into a file a first MP3 frame or an Ogg last page is looked for.
const SCAN_LIMIT: usize = 64 * 1024;

/// The container of an audio file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RIFF/WAVE.
    Wav,
    /// MPEG audio (an ID3v2 tag or a frame sync first).
    Mp3,
    /// Native FLAC.
    Flac,
    /// Ogg (Opus or Vorbis inside).
    Ogg,
    /// ISO base media (M4A, MP4: `ftyp` first).
    Mp4,
}

/// The container `head` starts with, if it is one of the known ones.
pub fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE") {
        Some(Format::Wav)
    } else if head.starts_with(b"fLaC") {
        Some(Format::Flac)
    } else if head.starts_with(b"OggS") {
        Some(Format::Ogg)
    } else if head.get(4..8) == Some(b"ftyp") {
        Some(Format::Mp4)
    } else if head.starts_with(b"ID3") || mp3_frame(head).is_some() {
        Some(Format::Mp3)
    } else {
        None
    }
}

/// The length of a whole audio file in milliseconds, when its headers say it.
pub fn duration_ms(bytes: &[u8]) -> Option<u64> {
    match sniff(bytes)? {
        Format::Wav => wav_ms(bytes, bytes.len() as u64),
        Format::Mp3 => mp3_ms(bytes, bytes.len() as u64),
        Format::Flac => flac_ms(bytes),
        Format::Ogg => ogg_ms(bytes),
        Format::Mp4 => mp4_ms(bytes),
    }
}

/// The length of a streamed file of `total` bytes of which `head` is the start (speech
/// answers): WAV and MP3 only (their length follows from the head and the byte count);
/// `pcm` is OpenAI's raw 24 kHz 16-bit mono.
pub fn streamed_ms(head: &[u8], total: u64, pcm: bool) -> Option<u64> {
    if pcm {
        return Some(total * 1000 / 48_000);
    }
    match sniff(head)? {
        Format::Wav => wav_ms(head, total),
        Format::Mp3 => mp3_ms(head, total),
        Format::Flac | Format::Ogg | Format::Mp4 => None,
    }
}

/// The conservative length of `len` bytes of audio whose headers say nothing: at the
/// [`FLOOR_BYTES_PER_SECOND`] bitrate floor.
pub fn estimate_ms(len: u64) -> u64 {
    len.saturating_mul(1000) / FLOOR_BYTES_PER_SECOND
}

fn u32_le(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u32_be(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u64_be(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// WAV: the `data` chunk's length (or, for a streaming writer's unknown length, the bytes to
/// `total`) over the `fmt ` byte rate.
pub fn wav_ms(bytes: &[u8], total: u64) -> Option<u64> {
    if bytes.get(0..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    let mut byte_rate = None;
    // Bounded: a chunk list longer than this is not a WAV header anyone writes.
    for _ in 0..64 {
        let id = bytes.get(at..at + 4)?;
        let size = u32_le(bytes, at + 4)? as usize;
        match id {
            b"fmt " => byte_rate = Some(u32_le(bytes, at + 16)?),
            b"data" => {
                let rate = u64::from(byte_rate.filter(|r| *r > 0)?);
                let there = total.saturating_sub(at as u64 + 8);
                let len = match size {
                    0 | 0xFFFF_FFFF => there,
                    n => (n as u64).min(there),
                };
                return Some(len * 1000 / rate);
            }
            _ => {}
        }
        at = at.checked_add(8)?.checked_add(size + (size & 1))?;
    }
    None
}

/// One MPEG audio frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    /// MPEG-1 (else 2 or 2.5).
    mpeg1: bool,
    /// Layer 1, 2 or 3.
    layer: u8,
    /// Bits per second.
    bitrate: u32,
    /// Samples per second.
    sample_rate: u32,
    /// Samples per frame.
    samples: u32,
    /// Bytes of the frame, header included.
    len: usize,
    /// Single channel.
    mono: bool,
}

/// The frame header at the start of `b`, if it is a valid one.
fn mp3_frame(b: &[u8]) -> Option<Frame> {
    let h = b.get(0..4)?;
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 0: 2.5, 2: 2, 3: 1
    let layer = match (h[1] >> 1) & 3 {
        3 => 1,
        2 => 2,
        1 => 3,
        _ => return None,
    };
    if version == 1 {
        return None;
    }
    let mpeg1 = version == 3;
    let index = usize::from(h[2] >> 4);
    if index == 0 || index == 15 {
        return None; // free format or invalid
    }
    const V1: [[u32; 15]; 3] = [
        [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ],
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ],
        [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ],
    ];
    const V2: [[u32; 15]; 2] = [
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ],
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    ];
    let kbps = if mpeg1 {
        V1[usize::from(layer - 1)][index]
    } else {
        V2[usize::from(layer != 1)][index]
    };
    let base = match (h[2] >> 2) & 3 {
        0 => 44_100,
        1 => 48_000,
        2 => 32_000,
        _ => return None,
    };
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let padding = u32::from((h[2] >> 1) & 1);
    let samples = match (layer, mpeg1) {
        (1, _) => 384,
        (2, _) | (3, true) => 1152,
        _ => 576,
    };
    let bitrate = kbps * 1000;
    let len = if layer == 1 {
        (12 * bitrate / sample_rate + padding) * 4
    } else {
        samples / 8 * bitrate / sample_rate + padding
    };
    Some(Frame {
        mpeg1,
        layer,
        bitrate,
        sample_rate,
        samples,
        len: len as usize,
        mono: h[3] >> 6 == 3,
    })
}

/// MP3: past an ID3v2 tag, the first frame (confirmed by the next frame's sync when it is in
/// `b`); a Xing/Info or VBRI header's frame count gives the exact length, else the first
/// frame's bitrate over the bytes to `total` (constant bitrate; an ID3v1 tag at the end is
/// not counted when `b` is the whole file).
pub fn mp3_ms(b: &[u8], total: u64) -> Option<u64> {
    let mut start = 0usize;
    if b.starts_with(b"ID3") {
        let s = b.get(6..10)?;
        if s.iter().any(|x| x & 0x80 != 0) {
            return None;
        }
        let size = s.iter().fold(0usize, |acc, x| (acc << 7) | usize::from(*x));
        let footer = if b.get(5)? & 0x10 != 0 { 10 } else { 0 };
        start = 10 + size + footer;
    }
    let limit = b.len().min(start.saturating_add(SCAN_LIMIT));
    let (at, frame) = (start..limit).find_map(|i| {
        let f = mp3_frame(b.get(i..)?)?;
        // A false sync inside other data is unlikely to be followed by another frame.
        let next = b.get(i + f.len..i + f.len + 4);
        match next {
            Some(n) if mp3_frame(n).is_none() => None,
            _ => Some((i, f)),
        }
    })?;
    // Xing/Info sits after the side information (layer 3); VBRI 32 bytes after the header.
    let side = match (frame.mpeg1, frame.mono) {
        (true, false) => 32,
        (true, true) | (false, false) => 17,
        (false, true) => 9,
    };
    let xing = at + 4 + side;
    let frames = match b.get(xing..xing + 4) {
        Some(b"Xing") | Some(b"Info") if frame.layer == 3 => {
            let flags = u32_be(b, xing + 4)?;
            (flags & 1 == 1).then(|| u32_be(b, xing + 8)).flatten()
        }
        _ if b.get(at + 36..at + 40) == Some(b"VBRI") => u32_be(b, at + 36 + 14),
        _ => None,
    };
    if let Some(n) = frames {
        return Some(u64::from(n) * u64::from(frame.samples) * 1000 / u64::from(frame.sample_rate));
    }
    let whole = total == b.len() as u64;
    let tag = if whole && b.len() >= 128 && b.get(b.len() - 128..b.len() - 125) == Some(b"TAG") {
        128
    } else {
        0
    };
    let audio = total.saturating_sub(at as u64 + tag);
    Some(audio * 8 * 1000 / u64::from(frame.bitrate))
}

/// FLAC: the total samples and sample rate of STREAMINFO (the first metadata block).
pub fn flac_ms(b: &[u8]) -> Option<u64> {
    if !b.starts_with(b"fLaC") || b.get(4)? & 0x7F != 0 {
        return None;
    }
    let info = b.get(8..8 + 34)?;
    let sample_rate =
        (u32::from(info[10]) << 12) | (u32::from(info[11]) << 4) | u32::from(info[12] >> 4);
    let total = (u64::from(info[13] & 0x0F) << 32)
        | u64::from(u32::from_be_bytes(info[14..18].try_into().ok()?));
    (sample_rate > 0 && total > 0).then(|| total * 1000 / u64::from(sample_rate))
}

/// Ogg: the granule position of the last page (found within the last 64 KiB, the most an Ogg
/// page can take) in the stream's sample rate: 48 kHz less the pre-skip for Opus, the
/// identification header's rate for Vorbis.
pub fn ogg_ms(b: &[u8]) -> Option<u64> {
    if !b.starts_with(b"OggS") {
        return None;
    }
    let segments = usize::from(*b.get(26)?);
    let packet = b.get(27 + segments..)?;
    let (rate, skip) = if packet.starts_with(b"OpusHead") {
        let skip = u16::from_le_bytes(packet.get(10..12)?.try_into().ok()?);
        (48_000u64, u64::from(skip))
    } else if packet.starts_with(b"\x01vorbis") {
        (u64::from(u32_le(packet, 12)?), 0)
    } else {
        return None;
    };
    let from = b.len().saturating_sub(SCAN_LIMIT + 27);
    let last = (from..b.len().saturating_sub(14))
        .rev()
        .find(|&i| b.get(i..i + 4) == Some(b"OggS"))?;
    let granule = i64::from_le_bytes(b.get(last + 6..last + 14)?.try_into().ok()?);
    let granule = u64::try_from(granule).ok()?;
    (rate > 0).then(|| granule.saturating_sub(skip) * 1000 / rate)
}

/// MP4/M4A: `moov/mvhd`'s duration over its timescale (the `moov` box may follow the media
/// data: the whole body is at hand).
pub fn mp4_ms(b: &[u8]) -> Option<u64> {
    let moov = child(b, b"moov")?;
    let mvhd = child(moov, b"mvhd")?;
    let version = *mvhd.first()?;
    let (timescale, duration) = if version == 1 {
        (u32_be(mvhd, 20)?, u64_be(mvhd, 24)?)
    } else {
        (u32_be(mvhd, 12)?, u64::from(u32_be(mvhd, 16)?))
    };
    (timescale > 0).then(|| duration * 1000 / u64::from(timescale))
}

/// The payload of the first box of type `kind` among the boxes that make up `b` (at most 64
/// looked at).
fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let mut at = 0usize;
    for _ in 0..64 {
        let size = u64::from(u32_be(b, at)?);
        let (header, size) = match size {
            1 => (16usize, u64_be(b, at + 8)?),
            0 => (8, (b.len() - at) as u64),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header {
            return None;
        }
        let end = at.checked_add(size)?.min(b.len());
        if b.get(at + 4..at + 8)? == kind {
            return b.get(at + header..end);
        }
        at = at.checked_add(size)?;
    }
    None
}

#[cfg(test)]
mod tests;
