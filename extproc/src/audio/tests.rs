//! Tiny synthetic files of each container, generated here (no binary fixtures).

use super::*;

/// `n` silent MPEG-1 layer III frames, 128 kbit/s, 48 kHz mono (384 bytes, 24 ms each).
pub(crate) fn mp3(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut f = vec![0u8; 384];
        f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0xC0]);
        out.extend_from_slice(&f);
    }
    out
}

#[test]
fn mp3_by_bitrate_with_tags_and_by_xing_frame_count() {
    assert_eq!(sniff(&mp3(2)), Some(Format::Mp3));
    // 125 frames × 24 ms.
    assert_eq!(duration_ms(&mp3(125)), Some(3000));
    // An ID3v2 tag before (syncsafe size 20) and an ID3v1 tag after are not audio.
    let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x14".to_vec();
    tagged.extend_from_slice(&[0xFF; 20]);
    tagged.extend_from_slice(&mp3(50));
    let mut v1 = b"TAG".to_vec();
    v1.resize(128, b' ');
    tagged.extend_from_slice(&v1);
    assert_eq!(duration_ms(&tagged), Some(1200));
    // A Xing header's frame count wins over the byte count (a VBR file).
    let mut vbr = mp3(10);
    let x = 4 + 17; // mono MPEG-1: side info of 17 bytes
    vbr[x..x + 4].copy_from_slice(b"Xing");
    vbr[x + 4..x + 8].copy_from_slice(&1u32.to_be_bytes());
    vbr[x + 8..x + 12].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(duration_ms(&vbr), Some(24_000));
    // A streamed answer: the head and the byte count.
    let whole = mp3(250);
    assert_eq!(
        streamed_ms(&whole[..HEAD_BYTES], whole.len() as u64, false),
        Some(6000)
    );
    // Not MPEG: no frame sync.
    assert_eq!(
        duration_ms(b"ID3\x04\x00\x00\x00\x00\x00\x00not audio"),
        None
    );
}

#[test]
fn flac_streaminfo_gives_samples_over_rate() {
    let mut f = b"fLaC".to_vec();
    f.extend_from_slice(&[0x80, 0, 0, 34]); // last block, STREAMINFO, 34 bytes
    let mut info = [0u8; 34];
    // 16 kHz (20 bits), mono, 16 bits per sample, 40,000 samples (36 bits).
    let rate: u32 = 16_000;
    info[10] = (rate >> 12) as u8;
    info[11] = (rate >> 4) as u8;
    info[12] = ((rate & 0xF) << 4) as u8; // channels - 1 = 0, top bit of bps - 1 = 0
    info[13] = 0xF0; // the rest of bps - 1 = 15; no high bits of the sample count
    info[14..18].copy_from_slice(&40_000u32.to_be_bytes());
    f.extend_from_slice(&info);
    assert_eq!(sniff(&f), Some(Format::Flac));
    assert_eq!(duration_ms(&f), Some(2500));
}

/// One Ogg page with `granule` and one segment of `payload`.
fn ogg_page(granule: i64, payload: &[u8]) -> Vec<u8> {
    let mut p = b"OggS\x00\x00".to_vec();
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&[0; 12]); // serial, sequence, checksum
    p.push(1);
    p.push(payload.len() as u8);
    p.extend_from_slice(payload);
    p
}

#[test]
fn ogg_opus_and_vorbis_by_the_last_granule() {
    let mut head = b"OpusHead\x01\x01".to_vec();
    head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip
    head.extend_from_slice(&48_000u32.to_le_bytes());
    let mut opus = ogg_page(0, &head);
    opus.extend_from_slice(&ogg_page(48_000, &[1; 100]));
    opus.extend_from_slice(&ogg_page(96_312, &[2; 100]));
    assert_eq!(duration_ms(&opus), Some(2000));
    let mut ident = b"\x01vorbis".to_vec();
    ident.extend_from_slice(&0u32.to_le_bytes());
    ident.push(1);
    ident.extend_from_slice(&22_050u32.to_le_bytes());
    let mut vorbis = ogg_page(0, &ident);
    vorbis.extend_from_slice(&ogg_page(33_075, &[3; 50]));
    assert_eq!(duration_ms(&vorbis), Some(1500));
}

/// An ISO box of `kind` around `payload`.
fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(payload);
    b
}

#[test]
fn m4a_mvhd_with_moov_after_the_media() {
    let mut mvhd = vec![0u8; 100];
    mvhd[12..16].copy_from_slice(&44_100u32.to_be_bytes());
    mvhd[16..20].copy_from_slice(&(44_100u32 * 7 / 2).to_be_bytes());
    let mut file = mp4_box(b"ftyp", b"M4A \x00\x00\x00\x00");
    file.extend_from_slice(&mp4_box(b"mdat", &[0; 300]));
    file.extend_from_slice(&mp4_box(b"moov", &mp4_box(b"mvhd", &mvhd)));
    assert_eq!(sniff(&file), Some(Format::Mp4));
    assert_eq!(duration_ms(&file), Some(3500));
    // Version 1: 64-bit times.
    let mut v1 = vec![0u8; 112];
    v1[0] = 1;
    v1[20..24].copy_from_slice(&1000u32.to_be_bytes());
    v1[24..32].copy_from_slice(&1234u64.to_be_bytes());
    let mut file = mp4_box(b"ftyp", b"M4A ");
    file.extend_from_slice(&mp4_box(b"moov", &mp4_box(b"mvhd", &v1)));
    assert_eq!(duration_ms(&file), Some(1234));
    // No moov: unknown.
    assert_eq!(duration_ms(&mp4_box(b"ftyp", b"M4A ")), None);
}

#[test]
fn unknown_formats_fall_back_to_the_bitrate_floor() {
    // WebM and anything else: not read; a 60,000-byte upload is reserved as 30 s.
    let webm = [0x1A, 0x45, 0xDF, 0xA3, 0, 0, 0, 0];
    assert_eq!(sniff(&webm), None);
    assert_eq!(duration_ms(&webm), None);
    assert_eq!(estimate_ms(60_000), 30_000);
    // OpenAI's raw PCM speech: 24 kHz 16-bit mono.
    assert_eq!(streamed_ms(&[0; 10], 96_000, true), Some(2000));
}
