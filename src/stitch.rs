//! The final video: ffmpeg's concat demuxer, stream copy when every segment shares codec
//! parameters, a re-encode otherwise.
//!
//! ffmpeg and ffprobe are found on `PATH`, or where `TTV_FFMPEG` / `TTV_FFPROBE` point.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::error::ProjectError;
use crate::media::mp4_stream_signature;
use crate::store::out_of_space;

/// Stitch settings that define the output; part of the final node's recipe.
pub const STITCH_VERSION: &str = "concat-v1";

/// `TTV_FFMPEG`: the ffmpeg binary to run instead of `ffmpeg` on `PATH`.
pub const FFMPEG_ENV: &str = "TTV_FFMPEG";
/// `TTV_FFPROBE`: the ffprobe binary to run instead of `ffprobe` on `PATH`.
pub const FFPROBE_ENV: &str = "TTV_FFPROBE";

/// How many lines of ffmpeg's stderr an error message carries.
const STDERR_LINES: usize = 12;

/// How `stitch` made the final video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StitchMode {
    /// Every segment had the same codec parameters: streams copied, no quality loss.
    Copy,
    /// Segments differed: decoded, scaled to the first one's size and encoded again.
    Reencode,
}

pub fn ffmpeg_bin() -> OsString {
    std::env::var_os(FFMPEG_ENV).unwrap_or_else(|| "ffmpeg".into())
}

pub fn ffprobe_bin() -> OsString {
    std::env::var_os(FFPROBE_ENV).unwrap_or_else(|| "ffprobe".into())
}

/// An ffmpeg command that reads no stdin, overwrites its output, only reports errors, and
/// dies with the future that runs it (an interrupted build leaves no encoder behind).
pub fn ffmpeg_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(ffmpeg_bin());
    cmd.args(["-nostdin", "-y", "-loglevel", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C in the terminal goes to ttv, which decides what
        // stops (a clip being encoded is finished), not straight to ffmpeg.
        .process_group(0);
    cmd
}

/// The line of ffmpeg's stderr that says the disk (or the file-size limit) is full. ffmpeg can
/// exit 0 after "Error writing trailer ...: No space left on device", with a cut-short output.
pub fn out_of_space_in(stderr: &[u8]) -> Option<String> {
    const SIGNS: [&str; 3] = [
        "No space left on device",
        "Disk quota exceeded",
        "File too large",
    ];
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| SIGNS.iter().any(|s| l.contains(s)))
        .map(|l| l.trim().to_string())
}

/// The last lines of a tool's stderr, for an error message.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
    if tail.is_empty() {
        "(no output on stderr)".into()
    } else {
        tail
    }
}

/// Fails with the install command when ffmpeg (or ffprobe) cannot be run. Checked once per
/// process.
pub fn check_ffmpeg() -> Result<(), ProjectError> {
    static CHECKED: OnceLock<Result<(), ProjectError>> = OnceLock::new();
    CHECKED
        .get_or_init(|| check_tools(&ffmpeg_bin(), &ffprobe_bin()))
        .clone()
}

/// Looks the binaries up (as the shell would) without running them: `ttv plan` must stay fast,
/// and a binary that is found but broken fails the first ffmpeg call with its own message.
fn check_tools(ffmpeg: &OsStr, ffprobe: &OsStr) -> Result<(), ProjectError> {
    for (tool, bin) in [("ffmpeg", ffmpeg), ("ffprobe", ffprobe)] {
        if find_executable(bin).is_some() {
            continue;
        }
        return Err(ProjectError::new(
            "ffmpeg",
            None,
            format!(
                "{tool} is needed for preview clips and the final video, and `{}` is not an executable on PATH",
                bin.display()
            ),
        )
        .help(format!(
            "install it: `sudo apt-get install -y ffmpeg` (Debian/Ubuntu) or \
             `brew install ffmpeg` (macOS); or point {FFMPEG_ENV} / {FFPROBE_ENV} at the \
             binaries"
        )));
    }
    Ok(())
}

/// The executable `bin` names: a path if it has a slash, else the first match on PATH.
fn find_executable(bin: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(bin);
    if path.components().count() > 1 {
        return is_exe(path).then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(bin))
        .find(|p| is_exe(p))
}

/// Concatenates `segments` (MP4 files, in order) into `out`, which appears whole or not at all.
/// Temporary files go to `tmp_dir`.
#[cfg(test)]
pub async fn stitch(
    segments: &[PathBuf],
    out: &Path,
    tmp_dir: &Path,
) -> anyhow::Result<StitchMode> {
    stitch_trimmed(segments, &BTreeMap::new(), out, tmp_dir).await
}

/// [`stitch`], keeping of the segment at position `i` only `trims[i]` (`[in_s, out_s]`). A cut
/// falls between keyframes, so a trimmed final is re-encoded (frame-exact); an untrimmed one is
/// a stream copy whenever the segments allow.
pub async fn stitch_trimmed(
    segments: &[PathBuf],
    trims: &BTreeMap<usize, [f64; 2]>,
    out: &Path,
    tmp_dir: &Path,
) -> anyhow::Result<StitchMode> {
    if segments.is_empty() {
        bail!("there are no segments to stitch");
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Next to `out`, not in `tmp_dir`: the final rename must not cross filesystems.
    let partial = tempfile::Builder::new()
        .prefix(".ttv-stitch-")
        .suffix(".mp4")
        .tempfile_in(parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?
        .into_temp_path();

    let mode = if trims.is_empty() && same_streams(segments).await? {
        concat_copy(segments, &partial, tmp_dir).await?;
        StitchMode::Copy
    } else {
        // A few ffprobe processes at a time: a 200-segment final should not wait for 200 in
        // a row.
        let mut probes = Vec::with_capacity(segments.len());
        for chunk in segments.chunks(8) {
            probes.extend(futures::future::try_join_all(chunk.iter().map(|s| probe(s))).await?);
        }
        if trims.is_empty() && probes.iter().all(|p| p.signature == probes[0].signature) {
            concat_copy(segments, &partial, tmp_dir).await?;
            StitchMode::Copy
        } else {
            concat_reencode(segments, &probes, trims, &partial).await?;
            StitchMode::Reencode
        }
    };
    partial
        .persist(out)
        .with_context(|| format!("cannot move the final video to {}", out.display()))?;
    Ok(mode)
}

/// Whether every segment has the same stream signature, read from its MP4 index (see
/// [`mp4_stream_signature`]): then the streams are copied without starting one ffprobe per
/// segment, which is where a 200-segment stitch spent nine tenths of its time. Anything else
/// (a difference, or a file laid out otherwise) is left to ffprobe.
async fn same_streams(segments: &[PathBuf]) -> anyhow::Result<bool> {
    let segments = segments.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut first = None;
        for s in &segments {
            let sig =
                mp4_stream_signature(s).with_context(|| format!("reading {}", s.display()))?;
            match (sig, &first) {
                (None, _) => return Ok(false),
                (Some(sig), None) => first = Some(sig),
                (Some(sig), Some(f)) if &sig != f => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    })
    .await?
}

/// Duration of a media file in seconds, as ffprobe reports it.
pub async fn probe_duration(path: &Path) -> anyhow::Result<f64> {
    let text = run_ffprobe(
        path,
        &[
            "-show_entries",
            "format=duration",
            "-of",
            "default=noprint_wrappers=1:nokey=1",
        ],
    )
    .await?;
    text.trim().parse().with_context(|| {
        format!(
            "ffprobe gave no duration for {}: `{}`",
            path.display(),
            text.trim()
        )
    })
}

async fn concat_copy(segments: &[PathBuf], partial: &Path, tmp_dir: &Path) -> anyhow::Result<()> {
    let mut list = String::new();
    for segment in segments {
        let absolute = std::path::absolute(segment)
            .with_context(|| format!("cannot resolve {}", segment.display()))?;
        let Some(text) = absolute.to_str() else {
            bail!(
                "the segment path {} is not UTF-8, which ffmpeg's concat list cannot hold",
                absolute.display()
            );
        };
        writeln!(list, "file {}", concat_quote(text))?;
    }
    let list_file = tempfile::Builder::new()
        .prefix("concat-")
        .suffix(".txt")
        .tempfile_in(tmp_dir)
        .with_context(|| format!("cannot create a temporary file in {}", tmp_dir.display()))?
        .into_temp_path();
    tokio::fs::write(&list_file, list)
        .await
        .with_context(|| format!("cannot write {}", list_file.display()))?;

    let mut args: Vec<OsString> = ["-f", "concat", "-safe", "0", "-i"]
        .map(OsString::from)
        .into();
    args.push(list_file.as_os_str().to_owned());
    args.extend(["-map", "0", "-c", "copy"].map(OsString::from));
    args.extend(output_args(partial));
    run_ffmpeg(&args, "concatenate the segments").await
}

/// Quotes a path for a concat list: inside single quotes nothing is special, and a quote is
/// written as `'\''` (close, escaped quote, reopen).
fn concat_quote(path: &str) -> String {
    format!("'{}'", path.replace('\'', r"'\''"))
}

async fn concat_reencode(
    segments: &[PathBuf],
    probes: &[Probe],
    trims: &BTreeMap<usize, [f64; 2]>,
    partial: &Path,
) -> anyhow::Result<()> {
    let first = &probes[0].signature.video;
    let (width, height) = (first.width, first.height);
    let fps = &first.r_frame_rate;
    // The first segment with audio sets the format; segments without any get silence.
    let audio = probes
        .iter()
        .find_map(|p| p.signature.audio.as_ref())
        .map(|a| {
            let rate = a.sample_rate.clone().unwrap_or_else(|| "48000".into());
            let layout = if a.channels == Some(1) {
                "mono"
            } else {
                "stereo"
            };
            (rate, layout)
        });

    let mut args: Vec<OsString> = Vec::new();
    for segment in segments {
        args.push("-i".into());
        args.push(segment.as_os_str().to_owned());
    }
    let mut graph = String::new();
    let mut pads = String::new();
    for (i, p) in probes.iter().enumerate() {
        // A trimmed segment keeps [in, out) of its video, and the same span of its audio.
        let (from, length) = match trims.get(&i) {
            Some([from, to]) => (*from, (to.min(p.video_duration) - from).max(0.0)),
            None => (0.0, p.video_duration),
        };
        let cut = match trims.get(&i) {
            Some(_) => format!("trim=start={from:.6}:duration={length:.6},"),
            None => String::new(),
        };
        write!(
            graph,
            "[{i}:v:0]{cut}setpts=PTS-STARTPTS,\
             scale={width}:{height}:force_original_aspect_ratio=decrease,\
             pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={fps},format=yuv420p,\
             setpts=PTS-STARTPTS[v{i}];"
        )?;
        write!(pads, "[v{i}]")?;
        if let Some((rate, layout)) = &audio {
            // Audio is cut or padded to the video's length, so the tracks stay in sync
            // across segment boundaries.
            let length = format!("{length:.6}");
            if p.signature.audio.is_some() {
                let skip = if from > 0.0 {
                    format!("atrim=start={from:.6},asetpts=PTS-STARTPTS,")
                } else {
                    String::new()
                };
                write!(
                    graph,
                    "[{i}:a:0]{skip}aresample={rate},aformat=sample_fmts=fltp:channel_layouts={layout},\
                     apad,atrim=duration={length},asetpts=PTS-STARTPTS[a{i}];"
                )?;
            } else {
                write!(
                    graph,
                    "anullsrc=channel_layout={layout}:sample_rate={rate},\
                     atrim=duration={length},aformat=sample_fmts=fltp[a{i}];"
                )?;
            }
            write!(pads, "[a{i}]")?;
        }
    }
    let a = usize::from(audio.is_some());
    write!(
        graph,
        "{pads}concat=n={}:v=1:a={a}[v]{}",
        segments.len(),
        if audio.is_some() { "[a]" } else { "" }
    )?;
    args.extend(["-filter_complex".into(), graph.into()]);
    args.extend(["-map", "[v]"].map(OsString::from));
    if audio.is_some() {
        args.extend(["-map", "[a]", "-c:a", "aac", "-b:a", "192k"].map(OsString::from));
    }
    args.extend(
        [
            "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
        ]
        .map(OsString::from),
    );
    args.extend(output_args(partial));
    run_ffmpeg(&args, "re-encode the segments").await
}

/// Flags shared by both paths: no metadata or version strings (the same segments give the
/// same bytes), the index up front (plays while it downloads).
fn output_args(partial: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
    ]
    .map(OsString::from)
    .into();
    args.push(partial.as_os_str().to_owned());
    args
}

pub(crate) async fn run_ffmpeg(args: &[OsString], what: &str) -> anyhow::Result<()> {
    let output = ffmpeg_command()
        .args(args)
        // glibc's malloc gives ffmpeg's heap back to the kernel and grows it again for each of
        // the many inputs the concat demuxer opens in turn, depending on how long their paths
        // are: with 200 segments that cost a third of the stitch, in page faults. A top pad
        // keeps the heap (200 segments: 240 ms -> 175 ms). Other C libraries ignore it.
        .env("MALLOC_TOP_PAD_", "67108864")
        .output()
        .await
        .with_context(|| format!("cannot run {}", ffmpeg_bin().display()))?;
    if let Some(line) = out_of_space_in(&output.stderr) {
        return Err(out_of_space(&"the final video", &line));
    }
    if !output.status.success() {
        bail!(
            "ffmpeg could not {what} ({}):\n{}",
            output.status,
            stderr_tail(&output.stderr)
        );
    }
    Ok(())
}

async fn run_ffprobe(path: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(ffprobe_bin())
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .output()
        .await
        .with_context(|| format!("cannot run {}", ffprobe_bin().display()))?;
    if !output.status.success() {
        bail!(
            "ffprobe could not read {} ({}):\n{}",
            path.display(),
            output.status,
            stderr_tail(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("ffprobe's answer for {} is not UTF-8", path.display()))
}

/// What ffprobe says about a segment.
struct Probe {
    signature: Signature,
    /// Seconds of video, to size the audio that goes with it.
    video_duration: f64,
}

/// Everything that must be equal for the concat demuxer to copy streams: the MP4 keeps one
/// set of codec headers (`extradata`) for the whole file, so those must match too.
#[derive(Debug, PartialEq)]
struct Signature {
    video: VideoSignature,
    audio: Option<AudioSignature>,
}

#[derive(Debug, PartialEq)]
struct VideoSignature {
    codec: Option<String>,
    profile: Option<String>,
    width: u32,
    height: u32,
    pix_fmt: Option<String>,
    r_frame_rate: String,
    time_base: Option<String>,
    extradata: Option<String>,
}

#[derive(Debug, PartialEq)]
struct AudioSignature {
    codec: Option<String>,
    profile: Option<String>,
    sample_rate: Option<String>,
    channels: Option<u32>,
    extradata: Option<String>,
}

#[derive(Deserialize)]
struct FfprobeStreams {
    #[serde(default)]
    streams: Vec<FfprobeStream>,
}

#[derive(Deserialize)]
struct FfprobeStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    profile: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    r_frame_rate: Option<String>,
    time_base: Option<String>,
    sample_rate: Option<String>,
    channels: Option<u32>,
    duration: Option<String>,
    extradata_hash: Option<String>,
}

async fn probe(path: &Path) -> anyhow::Result<Probe> {
    let json = run_ffprobe(
        path,
        &["-show_streams", "-show_data_hash", "SHA256", "-of", "json"],
    )
    .await?;
    let parsed: FfprobeStreams = serde_json::from_str(&json)
        .with_context(|| format!("cannot read ffprobe's answer for {}", path.display()))?;
    let of_type = |t: &str| {
        parsed
            .streams
            .iter()
            .find(|s| s.codec_type.as_deref() == Some(t))
    };
    let Some(v) = of_type("video") else {
        bail!("{} has no video stream", path.display());
    };
    let (Some(width), Some(height)) = (v.width, v.height) else {
        bail!("ffprobe gave no frame size for {}", path.display());
    };
    let video_duration = match v.duration.as_deref().and_then(|d| d.parse().ok()) {
        Some(d) => d,
        None => probe_duration(path).await?,
    };
    let signature = Signature {
        video: VideoSignature {
            codec: v.codec_name.clone(),
            profile: v.profile.clone(),
            width,
            height,
            pix_fmt: v.pix_fmt.clone(),
            r_frame_rate: v.r_frame_rate.clone().unwrap_or_else(|| "24/1".into()),
            time_base: v.time_base.clone(),
            extradata: v.extradata_hash.clone(),
        },
        audio: of_type("audio").map(|a| AudioSignature {
            codec: a.codec_name.clone(),
            profile: a.profile.clone(),
            sample_rate: a.sample_rate.clone(),
            channels: a.channels,
            extradata: a.extradata_hash.clone(),
        }),
    };
    Ok(Probe {
        signature,
        video_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::preview::tests::{frame_request, png_input, test_ctx, video_request};
    use crate::backends::preview::{PreviewFrames, PreviewVideo};
    use crate::backends::{FrameGenerator, VideoGenerator, VideoRequest};

    /// A preview clip, kept at `dir/name`.
    async fn clip(dir: &Path, name: &str, req: &VideoRequest) -> PathBuf {
        let (ctx, statuses) = test_ctx(dir);
        let out = PreviewVideo.generate(req, &ctx).await.unwrap();
        assert!(statuses.lock().unwrap().iter().any(|s| s == "encoding"));
        let path = dir.join(name);
        out.mp4s.into_iter().next().unwrap().persist(&path).unwrap();
        path
    }

    async fn frame(dir: &Path, prompt: &str, input: Option<Vec<u8>>) -> Vec<u8> {
        let (ctx, _) = test_ctx(dir);
        let mut req = frame_request(prompt, prompt);
        req.input_image = input.map(|png| png_input("input", png));
        PreviewFrames.generate(&req, &ctx).await.unwrap().png
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= 0.1,
            "{what}: {actual} s, expected {expected} s"
        );
    }

    #[tokio::test]
    async fn preview_clips_are_real_deterministic_mp4s() {
        check_ffmpeg().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let start = frame(dir, "dawn over the harbour", None).await;
        let end = frame(dir, "the storm arrives", Some(start.clone())).await;

        let mut fade = video_request("the sky darkens", "s1", "16:9", true);
        fade.recipe.frames = "start+end".into();
        fade.first = Some(png_input("first", start.clone()));
        fade.last = Some(png_input("last", end.clone()));
        let fade_path = clip(dir, "fade.mp4", &fade).await;
        let fade_probe = probe(&fade_path).await.unwrap();
        assert_eq!(
            (
                fade_probe.signature.video.width,
                fade_probe.signature.video.height
            ),
            (384, 216)
        );
        assert_eq!(fade_probe.signature.video.codec.as_deref(), Some("h264"));
        assert_eq!(fade_probe.signature.video.r_frame_rate, "12/1");
        let audio = fade_probe.signature.audio.as_ref().expect("an audio track");
        assert_eq!(audio.codec.as_deref(), Some("aac"));
        assert_close(probe_duration(&fade_path).await.unwrap(), 1.0, "fade");

        let mut tall = video_request("waves", "s2", "9:16", false);
        tall.recipe.duration_seconds = 2;
        tall.last = Some(png_input("last", end.clone()));
        let tall_path = clip(dir, "tall.mp4", &tall).await;
        let tall_probe = probe(&tall_path).await.unwrap();
        assert_eq!(
            (
                tall_probe.signature.video.width,
                tall_probe.signature.video.height
            ),
            (216, 384)
        );
        assert!(tall_probe.signature.audio.is_none());
        assert_close(probe_duration(&tall_path).await.unwrap(), 2.0, "tall");

        // Text-to-video: no frame given, the prompt's own frame is drawn.
        let square = clip(dir, "square.mp4", &video_request("fog", "s3", "1:1", false)).await;
        let square_probe = probe(&square).await.unwrap();
        assert_eq!(
            (
                square_probe.signature.video.width,
                square_probe.signature.video.height
            ),
            (288, 288)
        );

        let again = clip(dir, "fade-again.mp4", &fade).await;
        assert_eq!(
            std::fs::read(&fade_path).unwrap(),
            std::fs::read(&again).unwrap(),
            "the same request must give the same clip"
        );
        // Inputs written for ffmpeg are gone; only the kept clips remain.
        let mut left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["fade-again.mp4", "fade.mp4", "square.mp4", "tall.mp4"]
        );
    }

    #[tokio::test]
    async fn same_parameters_are_copied_and_mixed_ones_re_encoded() {
        check_ffmpeg().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let start = frame(dir, "a quiet street", None).await;
        let end = frame(dir, "the street floods", Some(start.clone())).await;

        let mut first = video_request("rain begins", "a", "16:9", true);
        first.first = Some(png_input("first", start.clone()));
        let mut second = video_request("water rises", "b", "16:9", true);
        second.first = Some(png_input("first", end.clone()));
        // A name the concat list has to quote.
        let a = clip(dir, "it's one.mp4", &first).await;
        let b = clip(dir, "two.mp4", &second).await;

        // Told from their indexes alone, without ffprobe.
        assert!(same_streams(&[a.clone(), b.clone()]).await.unwrap());
        let copied = dir.join("copied.mp4");
        let mode = stitch(&[a.clone(), b.clone()], &copied, dir).await.unwrap();
        assert_eq!(mode, StitchMode::Copy);
        let sum = probe_duration(&a).await.unwrap() + probe_duration(&b).await.unwrap();
        assert_close(probe_duration(&copied).await.unwrap(), sum, "copied");

        let mut silent = video_request("silence", "c", "16:9", false);
        silent.first = Some(png_input("first", end.clone()));
        let c = clip(dir, "silent.mp4", &silent).await;
        let mut tall = video_request("tall", "d", "9:16", true);
        tall.first = Some(png_input("first", start.clone()));
        let d = clip(dir, "tall.mp4", &tall).await;

        let mixed = dir.join("out").join("final.mp4");
        std::fs::create_dir(dir.join("out")).unwrap();
        let segments = [a.clone(), c.clone(), d.clone()];
        for pair in [[a.clone(), c.clone()], [a.clone(), d.clone()]] {
            assert!(!same_streams(&pair).await.unwrap(), "{pair:?}");
        }
        let mode = stitch(&segments, &mixed, dir).await.unwrap();
        assert_eq!(mode, StitchMode::Reencode);
        let mut sum = 0.0;
        for s in &segments {
            sum += probe_duration(s).await.unwrap();
        }
        assert_close(probe_duration(&mixed).await.unwrap(), sum, "re-encoded");
        let final_probe = probe(&mixed).await.unwrap();
        assert_eq!(
            (
                final_probe.signature.video.width,
                final_probe.signature.video.height
            ),
            (384, 216),
            "the first segment sets the size"
        );
        assert!(
            final_probe.signature.audio.is_some(),
            "a silent segment gets silence, not a missing track"
        );
        // Only the final is left in its folder: no partial file, no list.
        let names: Vec<_> = std::fs::read_dir(dir.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["final.mp4"]);
    }

    #[tokio::test]
    async fn a_broken_segment_fails_with_ffprobes_words_and_leaves_no_output() {
        let tmp = tempfile::tempdir().unwrap();
        let broken = tmp.path().join("broken.mp4");
        std::fs::write(&broken, b"not a video").unwrap();
        let out = tmp.path().join("final.mp4");
        let err = stitch(&[broken], &out, tmp.path()).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("broken.mp4"), "{message}");
        assert!(message.contains("Invalid data"), "{message}");
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_ffmpeg_names_the_install_command() {
        assert_eq!(
            check_tools(OsStr::new("ffmpeg"), OsStr::new("ffprobe")),
            Ok(())
        );
        let err =
            check_tools(OsStr::new("ffmpeg"), OsStr::new("/nonexistent/ffprobe")).unwrap_err();
        assert_eq!(err.file, Path::new("ffmpeg"));
        assert_eq!(err.line, None);
        assert!(
            err.message
                .starts_with("ffprobe is needed for preview clips and the final video"),
            "{err}"
        );
        assert!(err.message.contains("/nonexistent/ffprobe"), "{err}");
        assert!(
            err.help
                .as_deref()
                .unwrap()
                .contains("sudo apt-get install -y ffmpeg"),
            "{err}"
        );
    }

    #[test]
    fn concat_list_paths_escape_single_quotes() {
        assert_eq!(concat_quote("/v/plain.mp4"), "'/v/plain.mp4'");
        assert_eq!(concat_quote("/v/it's.mp4"), r"'/v/it'\''s.mp4'");
    }
}
