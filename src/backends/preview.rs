//! The built-in offline backend: deterministic images drawn from the recipe and short real MP4
//! clips made from the frames with ffmpeg. No network, no cost.
//!
//! Everything a preview shows is derived from the request, so that what changed between two
//! builds is visible: the prompt picks the background colours, the key (so a reroll) picks the
//! band of blocks along the top, the input image is blended into the left of the picture (the
//! chain's continuity) and the references are thumbnails along the bottom. The shot and its
//! prompt are written on the frame (an 8x8 bitmap font built in: no system font), and a clip
//! lasts its shot and moves from its start frame to its end frame: the offline build of a
//! storyboard is an animatic, for checking pacing and wording before anything is paid for.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use tempfile::TempPath;

use super::{
    FrameGenerator, FrameOutput, FrameRequest, GenContext, GenError, ImageInput, Provenance,
    VideoCaps, VideoGenerator, VideoOutput, VideoRequest,
};
use crate::models::{self, ImageCaps, Resolution, VideoReferences};
use crate::stitch::{ffmpeg_command, out_of_space_in, stderr_tail};

/// `TTV_PREVIEW_LATENCY_MS`: a simulated delay per generation, in milliseconds (benchmarks,
/// tests of parallelism and interruption).
pub const LATENCY_ENV: &str = "TTV_PREVIEW_LATENCY_MS";

/// `TTV_PREVIEW_FAIL`: comma-separated substrings; a preview generation whose prompt contains one
/// of them fails permanently. For rehearsing failures (fallbacks, exit codes, partial builds)
/// offline.
pub const FAIL_ENV: &str = "TTV_PREVIEW_FAIL";

/// Long side of a preview frame, in pixels: small, so that tests and rehearsals are fast.
const FRAME_LONG_SIDE: u32 = 384;

/// Frame rate of preview clips.
const CLIP_FPS: u32 = 12;

/// Fraction of the frame's width the input image covers at full strength before fading out.
const INPUT_COVER: f32 = 0.6;
/// Width, as a fraction of the frame, of the fade from the input image to the background.
const INPUT_FADE: f32 = 0.15;
/// Opacity of the input image where it covers the frame: the new prompt's colours still show.
const INPUT_OPACITY: f32 = 0.8;
/// The input image is blended in at 1/INPUT_BLUR of the frame's size, enlarged: blurred.
const INPUT_BLUR: u32 = 12;

/// Height of the band of key-hash blocks along the top.
const KEY_BAND_HEIGHT: u32 = 8;

/// Side of a glyph of the built-in font, in pixels (the shot's name is drawn twice as large).
const GLYPH: u32 = 8;
/// Space between the caption's lines, and around its text on the dark panel.
const LINE_GAP: u32 = 2;
const CAPTION_PAD: u32 = 4;
/// How much of the picture shows through the caption's panel: little, as the previous frame of
/// the chain, blended in, brings its own caption along.
const PANEL_SHADE: f32 = 0.1;

pub struct PreviewFrames;

/// Preview clips ignore `resolution`: every clip is small (384 px on the long side, 288x288 for
/// 1:1) whatever 720p / 1080p says, because a preview is for checking the storyboard, not the
/// picture.
pub struct PreviewVideo;

#[async_trait]
impl FrameGenerator for PreviewFrames {
    fn name(&self) -> &str {
        "preview"
    }

    /// Whatever the model is: a preview draws any size (at its own small size).
    fn capabilities(&self, _model: &str) -> ImageCaps {
        ImageCaps {
            image_sizes: &["512px", "1K", "2K", "4K"],
            max_input_images: 16,
            ..models::CONSERVATIVE_IMAGE
        }
    }

    async fn generate(
        &self,
        req: &FrameRequest,
        ctx: &GenContext,
    ) -> Result<FrameOutput, GenError> {
        simulate(&req.prompt).await?;
        (ctx.status)("drawing".into());
        Ok(FrameOutput {
            png: draw(req.clone(), caption_title(&ctx.node_id)).await?,
            provenance: Provenance::default(),
        })
    }
}

#[async_trait]
impl VideoGenerator for PreviewVideo {
    fn name(&self) -> &str {
        "preview"
    }

    /// Everything Veo can do, at any length from 1 s (real Veo makes 4, 6 or 8 s; 1 s clips
    /// keep tests and rehearsals fast).
    fn capabilities(&self, _model: &str) -> VideoCaps {
        const ANY: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8];
        VideoCaps {
            model: models::VideoCaps {
                durations: ANY,
                resolutions: &[
                    Resolution {
                        name: "720p",
                        durations: ANY,
                    },
                    Resolution {
                        name: "1080p",
                        durations: ANY,
                    },
                    Resolution {
                        name: "4k",
                        durations: ANY,
                    },
                ],
                aspect_ratios: &["16:9", "9:16", "1:1"],
                first_last_frame: true,
                references: Some(VideoReferences {
                    max: 3,
                    durations: ANY,
                }),
                audio: true,
                max_samples: 4,
                max_prompt_chars: 4000,
            },
            seed: true,
            generate_audio: true,
        }
    }

    async fn generate(
        &self,
        req: &VideoRequest,
        ctx: &GenContext,
    ) -> Result<VideoOutput, GenError> {
        let r = &req.recipe;
        simulate(&r.prompt).await?;
        let (width, height) = clip_size(&r.aspect_ratio)?;
        if r.duration_seconds == 0 {
            return Err(GenError::Permanent("preview cannot make a 0 s clip".into()));
        }
        // References mode: the clip zooms into the first reference image.
        let first = req.first.as_ref().or(req.references.first());
        let motion = match (first, &req.last) {
            (Some(first), Some(last)) => Motion::CrossFade(
                write_input(first, &ctx.tmp_dir, "first").await?,
                write_input(last, &ctx.tmp_dir, "last").await?,
            ),
            (Some(first), None) => Motion::ZoomIn(write_input(first, &ctx.tmp_dir, "first").await?),
            (None, Some(last)) => Motion::ZoomOut(write_input(last, &ctx.tmp_dir, "last").await?),
            // Text-to-video: draw the prompt's frame and zoom into it, as with a first frame.
            (None, None) => {
                (ctx.status)("drawing".into());
                let frame_req = FrameRequest {
                    model: r.model.clone(),
                    aspect_ratio: r.aspect_ratio.clone(),
                    image_size: None,
                    prompt: r.prompt.clone(),
                    input_image: None,
                    references: Vec::new(),
                    key: req.key.clone(),
                };
                let drawn = ImageInput {
                    name: "first".into(),
                    mime_type: "image/png".into(),
                    bytes: Arc::new(draw(frame_req, caption_title(&ctx.node_id)).await?),
                };
                Motion::ZoomIn(write_input(&drawn, &ctx.tmp_dir, "first").await?)
            }
        };
        let subtitle = ImageInput {
            name: "subtitle".into(),
            mime_type: "image/png".into(),
            bytes: Arc::new(subtitle_png(
                width,
                &format!(
                    "{} ({} s):",
                    caption_title(&ctx.node_id),
                    r.duration_seconds
                ),
                &r.prompt,
            )?),
        };
        let subtitle = write_input(&subtitle, &ctx.tmp_dir, "subtitle").await?;
        let mut mp4s = Vec::new();
        // Each sample zooms towards its own point, as Veo's samples differ.
        for sample in 0..r.sample_count.max(1) {
            let out = ctx.temp_mp4("preview")?;
            let seed = if sample == 0 {
                req.key.clone()
            } else {
                format!("{}:{sample}", req.key)
            };
            let clip = Clip {
                width,
                height,
                seconds: r.duration_seconds,
                motion: &motion,
                subtitle: &subtitle,
                tone_hz: r.generate_audio.then(|| tone_frequency(&r.prompt)),
                focus: focus_point(&seed),
            };
            (ctx.status)("encoding".into());
            run_ffmpeg(&clip.args(&out)).await?;
            mp4s.push(out);
        }
        Ok(VideoOutput {
            mp4s,
            provenance: Provenance::default(),
        })
    }
}

/// The simulated latency and failure every preview generation goes through.
async fn simulate(prompt: &str) -> Result<(), GenError> {
    if let Ok(ms) = std::env::var(LATENCY_ENV) {
        let ms: u64 = ms.trim().parse().map_err(|_| {
            GenError::Permanent(format!(
                "{LATENCY_ENV} must be a whole number of milliseconds, not `{ms}`"
            ))
        })?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Ok(patterns) = std::env::var(FAIL_ENV)
        && let Some(hit) = simulated_failure(prompt, &patterns)
    {
        return Err(GenError::Permanent(format!(
            "preview: simulated failure ({FAIL_ENV} matched `{hit}`)"
        )));
    }
    Ok(())
}

/// The first of the comma-separated `patterns` that `prompt` contains (empty ones never match).
fn simulated_failure<'a>(prompt: &str, patterns: &'a str) -> Option<&'a str> {
    patterns
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty() && prompt.contains(p))
}

/// Frame size for an aspect ratio `W:H`: the long side is `FRAME_LONG_SIDE`, the short side is
/// rounded to an even number (what H.264 in yuv420p needs, should a frame be encoded as is).
fn frame_size(aspect_ratio: &str) -> Result<(u32, u32), GenError> {
    let bad = || GenError::Permanent(format!("preview: `{aspect_ratio}` is not an aspect ratio"));
    let (w, h) = aspect_ratio.split_once(':').ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    let short = |num: u32, den: u32| {
        let exact = f64::from(FRAME_LONG_SIDE) * f64::from(num) / f64::from(den);
        ((exact / 2.0).round() as u32 * 2).max(2)
    };
    Ok(if w >= h {
        (FRAME_LONG_SIDE, short(h, w))
    } else {
        (short(w, h), FRAME_LONG_SIDE)
    })
}

fn clip_size(aspect_ratio: &str) -> Result<(u32, u32), GenError> {
    match aspect_ratio {
        "16:9" => Ok((384, 216)),
        "9:16" => Ok((216, 384)),
        "1:1" => Ok((288, 288)),
        other => Err(GenError::Permanent(format!(
            "preview cannot make {other} video; use 16:9, 9:16 or 1:1"
        ))),
    }
}

/// `draw_png` off the async threads: decoding, resizing and encoding take milliseconds of CPU.
async fn draw(req: FrameRequest, title: String) -> Result<Vec<u8>, GenError> {
    tokio::task::spawn_blocking(move || draw_png(&req, &title))
        .await
        .map_err(|e| GenError::Permanent(format!("preview: the drawing task failed: {e}")))?
}

/// What a frame's caption is headed with: the shot and which of its frames it is
/// (`arrival: end frame`), from the node id. A frame's recipe has no shot in it, so two shots
/// with one recipe (the same prompt and inputs) share one cached frame, headed with the first.
fn caption_title(node_id: &str) -> String {
    let mut parts = node_id.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("frame"), Some(shot), Some(role)) => format!("{shot}: {role} frame"),
        (Some("segment"), Some(shot), None) => shot.to_string(),
        (Some("reference"), _, _) => "reference image".into(),
        _ => node_id.to_string(),
    }
}

/// Draws the frame for `req` and encodes it as PNG. Pure: the same request and title give the
/// same bytes.
fn draw_png(req: &FrameRequest, title: &str) -> Result<Vec<u8>, GenError> {
    let (width, height) = frame_size(&req.aspect_ratio)?;
    let prompt_hash = blake3::hash(req.prompt.as_bytes());
    let mut canvas = background(width, height, prompt_hash.as_bytes());
    if let Some(input) = &req.input_image {
        blend_input(&mut canvas, &decode(input)?);
    }
    let references = req
        .references
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let strip_top = thumbnail_strip(&mut canvas, &references);
    key_band(&mut canvas, blake3::hash(req.key.as_bytes()).as_bytes());
    caption(&mut canvas, title, &req.prompt, strip_top);

    let mut png = Vec::new();
    canvas
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| GenError::Permanent(format!("preview: cannot encode the frame: {e}")))?;
    Ok(png)
}

fn decode(input: &ImageInput) -> Result<RgbImage, GenError> {
    // A picture too large to decode cheaply is shown as a grey tile: a preview is a sketch.
    if crate::media::dimensions(&input.bytes)
        .is_ok_and(|(w, h)| u64::from(w) * u64::from(h) > crate::media::MAX_DECODE_PIXELS)
    {
        return Ok(RgbImage::from_pixel(64, 64, Rgb([128, 128, 128])));
    }
    image::load_from_memory(&input.bytes)
        .map(|img| img.to_rgb8())
        .map_err(|e| {
            GenError::Permanent(format!(
                "preview: cannot decode the image `{}` ({}): {e}",
                input.name, input.mime_type
            ))
        })
}

/// A diagonal gradient between two colours of the prompt hash, crossed by soft stripes whose
/// spacing and direction also come from the hash: two prompts rarely look alike.
fn background(width: u32, height: u32, hash: &[u8; 32]) -> RgbImage {
    let from = [hash[0], hash[1], hash[2]].map(f32::from);
    let to = [hash[3], hash[4], hash[5]].map(f32::from);
    let period = 12.0 + f32::from(hash[6] % 36);
    let slope = if hash[7].is_multiple_of(2) { 1.0 } else { -1.0 };
    let span = (width + height) as f32;
    RgbImage::from_fn(width, height, |x, y| {
        let t = (x + y) as f32 / span;
        let phase = (x as f32 + slope * y as f32) / period;
        let stripe = if phase.rem_euclid(2.0) < 1.0 {
            1.0
        } else {
            0.85
        };
        Rgb(std::array::from_fn(|c| {
            ((from[c] * (1.0 - t) + to[c] * t) * stripe).round() as u8
        }))
    })
}

/// Scales `input` to the whole frame, blurred, and blends it over the left part, fading into
/// the background: the previous frame of the chain stays recognizable in the next one by its
/// colours, while its caption, blurred away, does not show through the new one.
fn blend_input(canvas: &mut RgbImage, input: &RgbImage) {
    let (width, height) = canvas.dimensions();
    let small = imageops::resize(
        input,
        (width / INPUT_BLUR).max(1),
        (height / INPUT_BLUR).max(1),
        FilterType::Triangle,
    );
    let scaled = imageops::resize(&small, width, height, FilterType::Triangle);
    let cover = width as f32 * INPUT_COVER;
    let fade = width as f32 * INPUT_FADE;
    for (x, y, px) in canvas.enumerate_pixels_mut() {
        let alpha = INPUT_OPACITY * (1.0 - ((x as f32 - cover) / fade).clamp(0.0, 1.0));
        if alpha <= 0.0 {
            continue;
        }
        let src = scaled.get_pixel(x, y);
        for c in 0..3 {
            let mixed = f32::from(src[c]) * alpha + f32::from(px[c]) * (1.0 - alpha);
            px[c] = mixed.round() as u8;
        }
    }
}

/// Most lines of a clip's subtitle (the motion prompt); more end with `...`.
const SUBTITLE_LINES: usize = 4;

/// The subtitle of a clip: `title` and the motion prompt on a dark band `width` wide, as a PNG
/// that ffmpeg lays over the bottom of the clip.
fn subtitle_png(width: u32, title: &str, text: &str) -> Result<Vec<u8>, GenError> {
    let columns = (width.saturating_sub(2 * CAPTION_PAD) / GLYPH).max(4) as usize;
    let mut lines = vec![title.chars().take(columns).collect::<String>()];
    let mut body = wrap(text, columns);
    if body.len() > SUBTITLE_LINES {
        body.truncate(SUBTITLE_LINES);
        let last = body.last_mut().expect("lines were kept");
        let kept: String = last.chars().take(columns - 3).collect();
        *last = format!("{}...", kept.trim_end());
    }
    lines.extend(body);
    let line = GLYPH + LINE_GAP;
    // Even, as yuv420p needs every size to be.
    let height = (2 * CAPTION_PAD + lines.len() as u32 * line).next_multiple_of(2);
    let mut band = RgbImage::from_pixel(width, height, Rgb([16, 16, 16]));
    for (i, l) in lines.iter().enumerate() {
        let colour = if i == 0 {
            Rgb([255, 214, 64])
        } else {
            Rgb([255, 255, 255])
        };
        draw_text(
            &mut band,
            l,
            CAPTION_PAD,
            CAPTION_PAD + i as u32 * line,
            1,
            colour,
        );
    }
    let mut png = Vec::new();
    band.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| GenError::Permanent(format!("preview: cannot encode a subtitle: {e}")))?;
    Ok(png)
}

/// Each reference as a framed thumbnail, left to right along the bottom edge; where the strip
/// starts (the frame's height without one).
fn thumbnail_strip(canvas: &mut RgbImage, references: &[RgbImage]) -> u32 {
    if references.is_empty() {
        return canvas.height();
    }
    let (width, height) = canvas.dimensions();
    let gap = 3u32;
    let n = references.len() as u32;
    let slot = (height / 5)
        .max(8)
        .min(((width - gap) / n).saturating_sub(gap));
    let box_size = slot.saturating_sub(2);
    if box_size == 0 {
        return height;
    }
    let top = height - slot - gap;
    for (i, reference) in references.iter().enumerate() {
        let left = gap + i as u32 * (slot + gap);
        for y in top..top + slot {
            for x in left..left + slot {
                canvas.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let thumb = imageops::resize(reference, box_size, box_size, FilterType::Triangle);
        imageops::replace(canvas, &thumb, i64::from(left + 1), i64::from(top + 1));
    }
    top
}

/// Writes `title` (twice the size) and `text` (word-wrapped) on a dark panel in the top left,
/// between the key band and `bottom`; text that does not fit ends with `...`.
fn caption(canvas: &mut RgbImage, title: &str, text: &str, bottom: u32) {
    let width = canvas.width();
    let columns = (width.saturating_sub(2 * (CAPTION_PAD + 2)) / GLYPH) as usize;
    let top = KEY_BAND_HEIGHT + 2;
    let title_height = 2 * GLYPH + LINE_GAP;
    let line = GLYPH + LINE_GAP;
    let room = bottom.saturating_sub(top + 2 * CAPTION_PAD + title_height) / line;
    if columns < 4 {
        return;
    }
    let mut lines = wrap(text, columns);
    if lines.len() > room as usize {
        lines.truncate(room as usize);
        if let Some(last) = lines.last_mut() {
            let kept: String = last.chars().take(columns.saturating_sub(3)).collect();
            *last = format!("{}...", kept.trim_end());
        }
    }
    let title: String = title.chars().take(columns / 2).collect();
    let text_width = lines
        .iter()
        .map(|l| l.chars().count() as u32 * GLYPH)
        .chain([title.chars().count() as u32 * 2 * GLYPH])
        .max()
        .unwrap_or(0);
    let (left, right) = (2, (2 + 2 * CAPTION_PAD + text_width).min(width));
    let panel_bottom =
        (top + 2 * CAPTION_PAD + title_height + lines.len() as u32 * line).min(canvas.height());
    for y in top..panel_bottom {
        for x in left..right {
            let px = canvas.get_pixel_mut(x, y);
            *px = Rgb(px.0.map(|c| (f32::from(c) * PANEL_SHADE).round() as u8));
        }
    }
    let x = left + CAPTION_PAD;
    let mut y = top + CAPTION_PAD;
    draw_text(canvas, &title, x, y, 2, Rgb([255, 214, 64]));
    y += title_height;
    for l in &lines {
        draw_text(canvas, l, x, y, 1, Rgb([255, 255, 255]));
        y += line;
    }
}

/// `text` in lines of at most `columns` characters, broken between words (a longer word is
/// cut).
fn wrap(text: &str, columns: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > columns {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            lines.push(word.drain(..columns).collect());
        }
        let word: String = word.into_iter().collect();
        let needed = current.chars().count() + usize::from(!current.is_empty()) + word.len();
        if needed > columns && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Draws `text` with the built-in 8x8 font (font8x8's public-domain glyphs of basic Latin), each
/// pixel `scale` pixels wide, from (`x`, `y`); what does not fit is left out.
fn draw_text(canvas: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, colour: Rgb<u8>) {
    let (width, height) = canvas.dimensions();
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[usize::from(ascii(c))];
        let left = x + i as u32 * GLYPH * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + row as u32 * scale + dy);
                        if px < width && py < height {
                            canvas.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

/// The character the built-in font draws for `c`: itself in basic Latin, the nearest ASCII for
/// common typography, `?` otherwise.
fn ascii(c: char) -> u8 {
    match c {
        ' '..='~' => c as u8,
        '\u{2018}' | '\u{2019}' | '\u{2032}' => b'\'',
        '\u{201c}' | '\u{201d}' | '\u{2033}' => b'"',
        '\u{2013}' | '\u{2014}' | '\u{2212}' => b'-',
        '\u{2026}' => b'.',
        c if c.is_whitespace() => b' ',
        _ => b'?',
    }
}

/// The key's hash as a row of coloured blocks along the top: a reroll (same prompt, new key)
/// is visibly a different take.
fn key_band(canvas: &mut RgbImage, hash: &[u8; 32]) {
    let width = canvas.width();
    let height = KEY_BAND_HEIGHT.min(canvas.height());
    let blocks = hash.len() as u32;
    for x in 0..width {
        let b = hash[(x * blocks / width) as usize];
        let colour = Rgb([b, b.rotate_left(3), b.rotate_left(6)]);
        for y in 0..height {
            canvas.put_pixel(x, y, colour);
        }
    }
}

/// A quiet tone per prompt, between 220 and 880 Hz: a prompt edit is audible too.
fn tone_frequency(prompt: &str) -> u32 {
    let h = blake3::hash(prompt.as_bytes());
    220 + u32::from(u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]])) % 661
}

/// Where a zoom heads, as fractions of the width and height (0.3..0.7): rerolls move
/// differently.
fn focus_point(key: &str) -> (f32, f32) {
    let h = blake3::hash(key.as_bytes());
    let frac = |b: u8| 0.3 + 0.4 * f32::from(b) / 255.0;
    (frac(h.as_bytes()[0]), frac(h.as_bytes()[1]))
}

/// Writes an input image where ffmpeg can read it; the file goes when the `TempPath` drops.
async fn write_input(image: &ImageInput, dir: &Path, role: &str) -> Result<TempPath, GenError> {
    let path = tempfile::Builder::new()
        .prefix(&format!("preview-{role}-"))
        .suffix(extension(&image.mime_type))
        .tempfile_in(dir)
        .map_err(|e| {
            GenError::Permanent(format!(
                "preview: cannot create a temporary file in {}: {e}",
                dir.display()
            ))
        })?
        .into_temp_path();
    tokio::fs::write(&path, image.bytes.as_slice())
        .await
        .map_err(|e| {
            GenError::Permanent(format!("preview: cannot write {}: {e}", path.display()))
        })?;
    Ok(path)
}

fn extension(mime_type: &str) -> &'static str {
    match mime_type {
        "image/jpeg" => ".jpg",
        "image/webp" => ".webp",
        "image/bmp" => ".bmp",
        _ => ".png",
    }
}

/// How a clip moves from its frame(s).
enum Motion {
    /// A slow zoom into the first frame.
    ZoomIn(TempPath),
    /// A slow zoom out that ends on the last frame.
    ZoomOut(TempPath),
    /// Holds the first frame, cross-fades to the last, holds it.
    CrossFade(TempPath, TempPath),
}

/// One preview clip, as ffmpeg arguments.
struct Clip<'a> {
    width: u32,
    height: u32,
    seconds: u32,
    motion: &'a Motion,
    /// A still laid over the bottom of the clip for its whole length (the motion prompt).
    subtitle: &'a Path,
    tone_hz: Option<u32>,
    focus: (f32, f32),
}

/// How much a zoom magnifies over a clip.
const ZOOM: f32 = 0.2;
/// Quiet: the tone is there to show that audio is, not to be listened to.
const TONE_VOLUME: f32 = 0.1;

impl Clip<'_> {
    fn args(&self, out: &Path) -> Vec<OsString> {
        let (w, h, secs) = (self.width, self.height, self.seconds);
        let frames = secs * CLIP_FPS;
        let fit = |input: usize, fw: u32, fh: u32| {
            format!(
                "[{input}:v]scale={fw}:{fh}:force_original_aspect_ratio=decrease,\
                 pad={fw}:{fh}:(ow-iw)/2:(oh-ih)/2,setsar=1"
            )
        };
        let mut args: Vec<OsString> = Vec::new();
        let (video_inputs, graph) = match self.motion {
            Motion::ZoomIn(path) | Motion::ZoomOut(path) => {
                args.extend(["-i".into(), path.as_os_str().to_owned()]);
                let progress = format!("on/{}", frames - 1);
                let zoom = match self.motion {
                    Motion::ZoomOut(_) => format!("1+{ZOOM}*(1-{progress})"),
                    _ => format!("1+{ZOOM}*{progress}"),
                };
                let (fx, fy) = self.focus;
                // zoompan moves in whole pixels: working at 4x keeps the motion smooth.
                let graph = format!(
                    "{},zoompan=z='{zoom}':x='(iw-iw/zoom)*{fx:.3}':y='(ih-ih/zoom)*{fy:.3}':\
                     d={frames}:s={w}x{h}:fps={CLIP_FPS},format=yuv420p[base]",
                    fit(0, w * 4, h * 4)
                );
                (1, graph)
            }
            Motion::CrossFade(first, last) => {
                let hold = f64::from(secs) * 0.2;
                let fade = f64::from(secs) * 0.6;
                for (path, length) in [(first, f64::from(secs)), (last, f64::from(secs) - hold)] {
                    args.extend(still_input(path, length));
                }
                let graph = format!(
                    "{},format=yuv420p[a];{},format=yuv420p[b];\
                     [a][b]xfade=transition=fade:duration={fade:.3}:offset={hold:.3}[base]",
                    fit(0, w, h),
                    fit(1, w, h)
                );
                (2, graph)
            }
        };
        args.extend(still_input(self.subtitle, f64::from(secs)));
        // The motion's graph ends in [base]; the subtitle goes over its bottom.
        let graph = format!("{graph};[base][{video_inputs}:v]overlay=0:H-h,format=yuv420p[v]");
        let graph = match self.tone_hz {
            Some(hz) => {
                args.extend([
                    "-f".into(),
                    "lavfi".into(),
                    "-i".into(),
                    format!("sine=frequency={hz}:sample_rate=48000:duration={secs}").into(),
                ]);
                format!("{graph};[{}:a]volume={TONE_VOLUME}[a]", video_inputs + 1)
            }
            None => graph,
        };
        args.extend([
            "-filter_complex".into(),
            graph.into(),
            "-map".into(),
            "[v]".into(),
        ]);
        if self.tone_hz.is_some() {
            args.extend(["-map".into(), "[a]".into(), "-c:a".into(), "aac".into()]);
            args.extend(["-b:a".into(), "64k".into()]);
        }
        for a in [
            "-t",
            &secs.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            // One thread: x264's output depends on its thread count, so it would differ
            // between machines.
            "-threads",
            "1",
            "-pix_fmt",
            "yuv420p",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-map_metadata",
            "-1",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ] {
            args.push(a.into());
        }
        args.push(out.as_os_str().to_owned());
        args
    }
}

/// ffmpeg's arguments for an image as a video input of `seconds` at the clip's frame rate.
fn still_input(path: &Path, seconds: f64) -> [OsString; 8] {
    [
        "-loop".into(),
        "1".into(),
        "-framerate".into(),
        CLIP_FPS.to_string().into(),
        "-t".into(),
        format!("{seconds:.3}").into(),
        "-i".into(),
        path.as_os_str().to_owned(),
    ]
}

async fn run_ffmpeg(args: &[OsString]) -> Result<(), GenError> {
    let output = ffmpeg_command()
        .args(args)
        .output()
        .await
        .map_err(|e| GenError::Permanent(format!("preview: cannot run ffmpeg: {e}")))?;
    if let Some(line) = out_of_space_in(&output.stderr) {
        let e = crate::store::out_of_space(&"a preview clip", &line);
        return Err(GenError::Permanent(format!("preview: {e}")));
    }
    if output.status.success() {
        Ok(())
    } else {
        Err(GenError::Permanent(format!(
            "preview: ffmpeg failed ({}): {}",
            output.status,
            stderr_tail(&output.stderr)
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backends::testing;

    /// A context writing under `tmp_dir` (preview never submits operations, but a
    /// `GenContext` needs a log), and the statuses the backend reported.
    pub(crate) fn test_ctx(tmp_dir: &Path) -> (GenContext, Arc<Mutex<Vec<String>>>) {
        testing::context(tmp_dir, Arc::default())
    }

    pub(crate) fn png_input(name: &str, png: Vec<u8>) -> ImageInput {
        ImageInput {
            name: name.into(),
            mime_type: "image/png".into(),
            bytes: Arc::new(png),
        }
    }

    pub(crate) fn frame_request(prompt: &str, key: &str) -> FrameRequest {
        FrameRequest {
            model: "preview".into(),
            aspect_ratio: "16:9".into(),
            image_size: None,
            prompt: prompt.into(),
            input_image: None,
            references: Vec::new(),
            key: key.into(),
        }
    }

    pub(crate) fn video_request(
        prompt: &str,
        key: &str,
        aspect_ratio: &str,
        generate_audio: bool,
    ) -> VideoRequest {
        let mut recipe = testing::segment("preview", prompt);
        recipe.duration_seconds = 1;
        recipe.aspect_ratio = aspect_ratio.into();
        recipe.generate_audio = generate_audio;
        recipe.first = None;
        VideoRequest {
            recipe,
            first: None,
            last: None,
            references: Vec::new(),
            key: key.into(),
        }
    }

    fn solid_png(colour: [u8; 3]) -> Vec<u8> {
        let img = RgbImage::from_pixel(64, 48, Rgb(colour));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    async fn draw(req: &FrameRequest) -> RgbImage {
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, _) = test_ctx(tmp.path());
        let out = PreviewFrames.generate(req, &ctx).await.unwrap();
        image::load_from_memory(&out.png).unwrap().to_rgb8()
    }

    #[tokio::test]
    async fn the_same_request_draws_the_same_bytes_and_edits_show() {
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, statuses) = test_ctx(tmp.path());
        let storm = frame_request("a storm over the harbour", "k1");
        let a = PreviewFrames.generate(&storm, &ctx).await.unwrap();
        let b = PreviewFrames.generate(&storm, &ctx).await.unwrap();
        assert_eq!(a.png, b.png, "a preview frame must be reproducible");
        assert_eq!(a.provenance, Provenance::default());

        let calm = frame_request("a calm harbour at dawn", "k1");
        let c = PreviewFrames.generate(&calm, &ctx).await.unwrap();
        assert_ne!(a.png, c.png, "a prompt edit must change the frame");

        let reroll = frame_request("a storm over the harbour", "k2");
        let d = PreviewFrames.generate(&reroll, &ctx).await.unwrap();
        assert_ne!(a.png, d.png, "a new take must look different");
        assert!(statuses.lock().unwrap().iter().any(|s| s == "drawing"));
    }

    #[tokio::test]
    async fn frames_take_their_size_from_the_aspect_ratio() {
        for (ratio, size) in [
            ("16:9", (384, 216)),
            ("9:16", (216, 384)),
            ("1:1", (384, 384)),
            ("21:9", (384, 164)),
            ("4:5", (308, 384)),
        ] {
            let mut req = frame_request("sizes", "k");
            req.aspect_ratio = ratio.into();
            assert_eq!(draw(&req).await.dimensions(), size, "{ratio}");
        }
    }

    #[tokio::test]
    async fn the_input_image_and_references_are_visible() {
        let plain = draw(&frame_request("a lighthouse", "k")).await;
        let mut req = frame_request("a lighthouse", "k");
        req.input_image = Some(png_input("input", solid_png([255, 0, 0])));
        req.references = vec![
            png_input("boat", solid_png([0, 255, 0])),
            png_input("keeper", solid_png([0, 0, 255])),
        ];
        let composed = draw(&req).await;

        // The left of the frame is mostly the input image (red), the right is untouched.
        let left = composed.get_pixel(20, 100);
        assert!(left[0] >= 200, "input not blended in: {left:?}");
        assert_eq!(composed.get_pixel(380, 100), plain.get_pixel(380, 100));

        // Thumbnails along the bottom, in order, framed in white.
        let slot = 216 / 5;
        let centre_y = 216 - 3 - slot / 2;
        assert_eq!(
            composed.get_pixel(3 + slot / 2, centre_y),
            &Rgb([0, 255, 0])
        );
        assert_eq!(
            composed.get_pixel(3 + slot + 3 + slot / 2, centre_y),
            &Rgb([0, 0, 255])
        );
        assert_eq!(composed.get_pixel(3, centre_y), &Rgb([255, 255, 255]));
    }

    #[tokio::test]
    async fn an_undecodable_input_is_a_permanent_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, _) = test_ctx(tmp.path());
        let mut req = frame_request("broken", "k");
        req.references = vec![png_input("ghost", b"not an image".to_vec())];
        match PreviewFrames.generate(&req, &ctx).await {
            Err(GenError::Permanent(m)) => assert!(m.contains("`ghost`"), "{m}"),
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ttv_preview_latency_ms_delays_each_generation() {
        // SAFETY: every other reader in this process goes through std::env, which serializes
        // access; a valid delay only slows tests that run meanwhile.
        unsafe { std::env::set_var(LATENCY_ENV, "250") };
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, _) = test_ctx(tmp.path());
        let started = std::time::Instant::now();
        let result = PreviewFrames
            .generate(&frame_request("slow", "k"), &ctx)
            .await;
        let elapsed = started.elapsed();
        // SAFETY: as above.
        unsafe { std::env::remove_var(LATENCY_ENV) };
        result.unwrap();
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    }

    #[tokio::test]
    async fn an_ffmpeg_failure_is_permanent_and_carries_its_stderr() {
        let args: Vec<OsString> = ["-i", "/nonexistent/first.png", "-f", "mp4", "/dev/null"]
            .map(OsString::from)
            .into();
        match run_ffmpeg(&args).await {
            Err(GenError::Permanent(m)) => {
                assert!(m.starts_with("preview: ffmpeg failed"), "{m}");
                assert!(m.contains("/nonexistent/first.png"), "{m}");
            }
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn failure_patterns_match_substrings_of_the_prompt() {
        assert_eq!(
            simulated_failure("the storm breaks", "calm, storm"),
            Some("storm")
        );
        assert_eq!(simulated_failure("the storm breaks", "calm,,"), None);
        assert_eq!(simulated_failure("anything", ""), None);
    }

    #[tokio::test]
    async fn ttv_preview_fail_fails_matching_generations_permanently() {
        let marker = "rehearse-failure-3f9c";
        // SAFETY: every other reader in this process goes through std::env, which serializes
        // access; no test prompt but this one contains the marker.
        unsafe { std::env::set_var(FAIL_ENV, format!("unrelated,{marker}")) };
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, _) = test_ctx(tmp.path());

        let frame = PreviewFrames
            .generate(&frame_request(&format!("a {marker} frame"), "k"), &ctx)
            .await;
        let video = PreviewVideo
            .generate(
                &video_request(&format!("a {marker} clip"), "k", "16:9", false),
                &ctx,
            )
            .await;
        let unaffected = PreviewFrames
            .generate(&frame_request("an ordinary frame", "k"), &ctx)
            .await;

        let expected = format!("preview: simulated failure ({FAIL_ENV} matched `{marker}`)");
        for result in [frame.map(|_| ()), video.map(|_| ())] {
            match result {
                Err(e @ GenError::Permanent(_)) => assert_eq!(e.to_string(), expected),
                other => panic!("expected a simulated permanent failure, got {other:?}"),
            }
        }
        assert!(unaffected.is_ok());
    }
}
