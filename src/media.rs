//! What a produced file must be before the store keeps it: a whole PNG, a whole MP4, or a whole
//! JSON document (a storyboard's answer). A
//! generator, a download or ffmpeg that stops half way (a full disk, a cut connection) leaves
//! a file that starts right and ends wrong, and ffmpeg may even exit 0 after "Error writing
//! trailer": only the structure of the file tells. Headers and box headers are read, never the
//! pixels or the frames.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

/// The media types the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Png,
    Mp4,
    /// A text model's answer: one JSON document, nothing after it.
    Json,
}

/// The last chunk of every PNG: length 0, `IEND`, its CRC.
const PNG_END: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// Why a file is not a whole file of its media type.
#[derive(Debug, Clone, PartialEq)]
pub struct NotWhole {
    pub media: Media,
    pub why: String,
}

impl fmt::Display for NotWhole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a whole {}: {}", self.media.name(), self.why)
    }
}

impl std::error::Error for NotWhole {}

impl Media {
    /// The MIME type, as the cache's rows hold it.
    pub fn mime(self) -> &'static str {
        match self {
            Media::Png => "image/png",
            Media::Mp4 => "video/mp4",
            Media::Json => "application/json",
        }
    }

    /// The media type of a MIME type the cache's rows hold.
    pub fn from_mime(mime: &str) -> Option<Media> {
        [Media::Png, Media::Mp4, Media::Json]
            .into_iter()
            .find(|m| m.mime() == mime)
    }

    /// The media type a file's first bytes announce, if it is one the store holds.
    pub fn sniff(path: &Path) -> io::Result<Option<Media>> {
        let mut head = [0u8; 8];
        let n = File::open(path)?.read(&mut head)?;
        Ok(if head[..n].starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Media::Png)
        } else if n == 8 && &head[4..8] == b"ftyp" {
            Some(Media::Mp4)
        } else if head[..n]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[')
        {
            Some(Media::Json)
        } else {
            None
        })
    }

    fn name(self) -> &'static str {
        match self {
            Media::Png => "PNG",
            Media::Mp4 => "MP4",
            Media::Json => "JSON document",
        }
    }

    /// Checks that the file at `path` is a whole file of this type.
    pub fn check_file(self, path: &Path) -> io::Result<Result<(), NotWhole>> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        self.check(&mut f, len)
    }

    pub fn check_bytes(self, bytes: &[u8]) -> Result<(), NotWhole> {
        self.check(&mut Cursor::new(bytes), bytes.len() as u64)
            .expect("reading memory cannot fail")
    }

    fn check(self, r: &mut (impl Read + Seek), len: u64) -> io::Result<Result<(), NotWhole>> {
        let why = match self {
            Media::Png => png_problem(r, len)?,
            Media::Mp4 => mp4_problem(r, len)?,
            Media::Json => json_problem(r)?,
        };
        Ok(match why {
            None => Ok(()),
            Some(why) => Err(NotWhole { media: self, why }),
        })
    }
}

/// A PNG whose header decodes (a real image with dimensions) and that ends with its IEND chunk.
fn png_problem(r: &mut (impl Read + Seek), len: u64) -> io::Result<Option<String>> {
    let header =
        image::ImageReader::with_format(io::BufReader::new(&mut *r), image::ImageFormat::Png)
            .into_dimensions();
    if let Err(e) = header {
        return Ok(Some(format!("its header does not decode ({e})")));
    }
    if len < PNG_END.len() as u64 {
        return Ok(Some("it is cut short".into()));
    }
    let mut end = [0u8; PNG_END.len()];
    r.seek(SeekFrom::Start(len - PNG_END.len() as u64))?;
    r.read_exact(&mut end)?;
    Ok((end != PNG_END).then(|| "it does not end with its IEND chunk (cut short?)".into()))
}

/// A JSON document that parses to its end (a cut-short answer does not).
fn json_problem(r: &mut impl Read) -> io::Result<Option<String>> {
    let mut text = Vec::new();
    r.read_to_end(&mut text)?;
    Ok(serde_json::from_slice::<serde_json::Value>(&text)
        .err()
        .map(|e| format!("it does not parse ({e})")))
}

/// One box header: its type and where the box ends.
struct BoxHeader {
    kind: [u8; 4],
    end: u64,
}

/// Reads the header of the box at `at`, which must end by `limit`.
fn box_at(
    r: &mut (impl Read + Seek),
    at: u64,
    limit: u64,
) -> io::Result<Result<BoxHeader, String>> {
    if limit - at < 8 {
        return Ok(Err(format!("{} stray bytes at its end", limit - at)));
    }
    let mut head = [0u8; 8];
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(&mut head)?;
    let kind: [u8; 4] = head[4..8].try_into().expect("four bytes");
    let name = String::from_utf8_lossy(&kind).into_owned();
    let (size, header) = match u32::from_be_bytes(head[..4].try_into().expect("four bytes")) {
        0 => (limit - at, 8),
        1 if limit - at >= 16 => {
            let mut large = [0u8; 8];
            r.read_exact(&mut large)?;
            (u64::from_be_bytes(large), 16)
        }
        1 => return Ok(Err(format!("its `{name}` box is cut short"))),
        n => (u64::from(n), 8),
    };
    if size < header {
        return Ok(Err(format!(
            "its `{name}` box has an impossible size ({size})"
        )));
    }
    if size > limit - at {
        return Ok(Err(format!(
            "its `{name}` box needs {size} bytes and only {} are left (cut short?)",
            limit - at
        )));
    }
    Ok(Ok(BoxHeader {
        kind,
        end: at + size,
    }))
}

/// The box types directly inside `[start, end)`, each checked to fit.
fn boxes(
    r: &mut (impl Read + Seek),
    start: u64,
    end: u64,
) -> io::Result<Result<Vec<(BoxHeader, u64)>, String>> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        match box_at(r, at, end)? {
            Ok(b) => {
                let next = b.end;
                out.push((b, at));
                at = next;
            }
            Err(why) => return Ok(Err(why)),
        }
    }
    Ok(Ok(out))
}

/// An MP4 that starts with `ftyp`, whose top-level boxes tile the file exactly, and that has
/// its `moov` (the index, written last by ffmpeg: the first thing a cut-short file lacks) with
/// at least one track.
fn mp4_problem(r: &mut (impl Read + Seek), len: u64) -> io::Result<Option<String>> {
    let top = match boxes(r, 0, len)? {
        Ok(top) => top,
        Err(why) => return Ok(Some(why)),
    };
    if top.first().map(|(b, _)| &b.kind) != Some(b"ftyp") {
        return Ok(Some("it does not start with an `ftyp` box".into()));
    }
    let Some((moov, at)) = top.iter().find(|(b, _)| &b.kind == b"moov") else {
        return Ok(Some(
            "it has no `moov` box (the index of the video: it was cut short)".into(),
        ));
    };
    Ok(match boxes(r, at + 8, moov.end)? {
        Ok(inner) if inner.iter().any(|(b, _)| &b.kind == b"trak") => None,
        Ok(_) => Some("its `moov` box holds no track".into()),
        Err(why) => Some(format!("inside `moov`: {why}")),
    })
}

/// What must be equal between MP4 files for ffmpeg's concat demuxer to copy their streams
/// into one file: per track, its handler (`vide`, `soun`), its time scale, its first sample
/// duration (the frame rate of a constant-rate video) and its whole sample description
/// (`stsd`: codec, size, pixel format or sample rate and channels, and the codec headers the
/// output keeps once for the whole file). Read from the `moov` box alone, without ffprobe:
/// equal signatures are a stream copy for sure. `None` when the file is not laid out as
/// expected (the caller then asks ffprobe).
pub fn mp4_stream_signature(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let Ok(top) = boxes(&mut f, 0, len)? else {
        return Ok(None);
    };
    let Some((moov, at)) = top.iter().find(|(b, _)| &b.kind == b"moov") else {
        return Ok(None);
    };
    let mut bytes = vec![0u8; (moov.end - at) as usize];
    f.seek(SeekFrom::Start(*at))?;
    f.read_exact(&mut bytes)?;
    Ok(moov_signature(&bytes[8..]))
}

/// The boxes directly inside `body`, as (type, contents); `None` if they do not tile it.
fn children(body: &[u8]) -> Option<Vec<([u8; 4], &[u8])>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        if size < 8 || size > rest.len() {
            return None;
        }
        out.push((kind, &rest[8..size]));
        rest = &rest[size..];
    }
    Some(out)
}

fn child<'a>(boxes: &[([u8; 4], &'a [u8])], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes.iter().find(|(k, _)| k == kind).map(|(_, b)| *b)
}

fn moov_signature(moov: &[u8]) -> Option<Vec<u8>> {
    let mut sig = Vec::new();
    let mut tracks = 0;
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        tracks += 1;
        let mdia = children(child(&children(trak)?, b"mdia")?)?;
        let mdhd = child(&mdia, b"mdhd")?;
        // version 1 has 64-bit creation and modification times before the time scale.
        let scale_at = if *mdhd.first()? == 1 { 20 } else { 12 };
        let timescale = mdhd.get(scale_at..scale_at + 4)?;
        let handler = child(&mdia, b"hdlr")?.get(8..12)?;
        let stbl = children(child(&children(child(&mdia, b"minf")?)?, b"stbl")?)?;
        let entries = sample_entries(child(&stbl, b"stsd")?, handler)?;
        let stts = child(&stbl, b"stts")?;
        let first_delta = match u32::from_be_bytes(stts.get(4..8)?.try_into().ok()?) {
            0 => &[][..],
            _ => stts.get(12..16)?,
        };
        for part in [handler, timescale, first_delta, &entries] {
            sig.extend_from_slice(&(part.len() as u32).to_be_bytes());
            sig.extend_from_slice(part);
        }
    }
    (tracks > 0).then_some(sig)
}

/// A track's sample descriptions without what differs from file to file and does not reach
/// the concatenated output's headers: the `btrt` box and the bit rates in `esds` (statistics of
/// each file's own bytes).
fn sample_entries(stsd: &[u8], handler: &[u8]) -> Option<Vec<u8>> {
    // The fields of a visual and of a (version 0) audio sample entry, before its boxes.
    let fixed = match handler {
        b"vide" => 78,
        b"soun" => 28,
        _ => return None,
    };
    let count = u32::from_be_bytes(stsd.get(4..8)?.try_into().ok()?) as usize;
    let entries = children(stsd.get(8..)?)?;
    if entries.len() != count {
        return None;
    }
    let mut out = Vec::new();
    let mut put = |kind: &[u8], body: &[u8]| {
        out.extend_from_slice(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    for (kind, entry) in entries {
        let head = entry.get(..fixed)?;
        if handler == b"soun" && head[8..10] != [0, 0] {
            return None;
        }
        put(&kind, head);
        for (k, body) in children(&entry[fixed..])? {
            match &k {
                b"btrt" => {}
                b"esds" => put(&k, &esds_config(body)?),
                _ => put(&k, body),
            }
        }
    }
    Some(out)
}

/// From an `esds` box: the object type, stream type and decoder configuration (the
/// AudioSpecificConfig), without the buffer size and bit rates.
fn esds_config(esds: &[u8]) -> Option<Vec<u8>> {
    let (tag, es, _) = descriptor(esds.get(4..)?)?;
    if tag != 3 {
        return None;
    }
    let flags = *es.get(2)?;
    let mut at = 3;
    if flags & 0x80 != 0 {
        at += 2;
    }
    if flags & 0x40 != 0 {
        at += 1 + usize::from(*es.get(at)?);
    }
    if flags & 0x20 != 0 {
        at += 2;
    }
    let mut rest = es.get(at..)?;
    while !rest.is_empty() {
        let (tag, body, next) = descriptor(rest)?;
        if tag == 4 {
            let mut out = body.get(..2)?.to_vec();
            let mut inner = body.get(13..)?;
            while !inner.is_empty() {
                let (tag, info, next) = descriptor(inner)?;
                if tag == 5 {
                    out.extend_from_slice(info);
                }
                inner = next;
            }
            return Some(out);
        }
        rest = next;
    }
    None
}

/// One MPEG-4 descriptor: its tag, its body and what follows it.
fn descriptor(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let mut size = 0usize;
    let mut at = 1;
    loop {
        let b = *bytes.get(at)?;
        at += 1;
        size = (size << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 || at > 4 {
            break;
        }
    }
    let body = bytes.get(at..at + size)?;
    Some((tag, body, &bytes[at + size..]))
}

/// Images up to this many pixels are decoded whole; larger ones (a 481 KB PNG can hold
/// 13000x13000 pixels, 680 MB decoded) are judged by their header and not decoded.
pub const MAX_DECODE_PIXELS: u64 = 40_000_000;

/// The width and height an image's header gives, without decoding its pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}

/// Decodes an image whose header says it is of a size ttv decodes ([`MAX_DECODE_PIXELS`]).
pub fn decode_bounded(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let (w, h) = dimensions(bytes)?;
    if u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(format!(
            "it is {w}x{h} pixels, more than ttv decodes ({} megapixels): resize it",
            MAX_DECODE_PIXELS / 1_000_000
        ));
    }
    image::load_from_memory(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = (8 + body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    /// The box layout of ffmpeg's output with `+faststart`: ftyp, moov (with a track), mdat.
    fn mp4() -> Vec<u8> {
        let mut f = mp4_box(b"ftyp", b"isom\0\0\x02\0isomiso2mp41");
        let trak = mp4_box(b"trak", &mp4_box(b"tkhd", &[0; 20]));
        f.extend(mp4_box(
            b"moov",
            &[mp4_box(b"mvhd", &[0; 24]), trak].concat(),
        ));
        f.extend(mp4_box(b"mdat", &[7; 100]));
        f
    }

    #[test]
    fn whole_files_pass() {
        assert_eq!(Media::Png.check_bytes(&png()), Ok(()));
        assert_eq!(Media::Mp4.check_bytes(&mp4()), Ok(()));
        // A trailing box that runs to the end (size 0), or a 64-bit size, is fine.
        let mut open_ended = mp4();
        open_ended.extend([0, 0, 0, 0]);
        open_ended.extend(b"free");
        open_ended.extend([0; 5]);
        assert_eq!(Media::Mp4.check_bytes(&open_ended), Ok(()));
        let mut large = mp4();
        large.extend([0, 0, 0, 1]);
        large.extend(b"free");
        large.extend(20u64.to_be_bytes());
        large.extend([0; 4]);
        assert_eq!(Media::Mp4.check_bytes(&large), Ok(()));
    }

    #[test]
    fn cut_short_or_foreign_files_fail_with_the_reason() {
        let png = png();
        let why = |m: Media, b: &[u8]| m.check_bytes(b).unwrap_err().why;
        assert!(why(Media::Png, &png[..png.len() - 1]).contains("IEND"));
        assert!(why(Media::Png, &png[..20]).contains("header"));
        assert!(why(Media::Png, b"GIF89a").contains("header"));

        let mp4 = mp4();
        assert!(why(Media::Mp4, &mp4[..mp4.len() - 1]).contains("cut short"));
        // ffmpeg's "Error writing trailer": ftyp and the media data, no index.
        let no_moov = [
            mp4_box(b"ftyp", b"isom\0\0\x02\0"),
            mp4_box(b"mdat", &[7; 100]),
        ]
        .concat();
        assert!(why(Media::Mp4, &no_moov).contains("no `moov`"));
        let no_track = [
            mp4_box(b"ftyp", b"isom\0\0\x02\0"),
            mp4_box(b"moov", &mp4_box(b"mvhd", &[0; 24])),
        ]
        .concat();
        assert!(why(Media::Mp4, &no_track).contains("no track"));
        assert!(why(Media::Mp4, &png).contains("box"));
        assert!(why(Media::Mp4, &[]).contains("ftyp"));
        assert_eq!(Media::Json.check_bytes(br#"{"shots": []}"#), Ok(()));
        assert!(why(Media::Json, br#"{"shots": ["#).contains("does not parse"));
        let err = Media::Mp4.check_bytes(&no_moov).unwrap_err();
        assert!(err.to_string().starts_with("not a whole MP4: "), "{err}");
    }

    #[test]
    fn sniff_tells_png_from_mp4() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, media) in [
            ("a.png", png(), Some(Media::Png)),
            ("a.mp4", mp4(), Some(Media::Mp4)),
            ("a.txt", b"hello".to_vec(), None),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(Media::sniff(&p).unwrap(), media, "{name}");
            if let Some(m) = media {
                assert_eq!(m.check_file(&p).unwrap(), Ok(()));
            }
        }
    }
}
