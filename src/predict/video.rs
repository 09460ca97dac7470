//! Video through an `ffmpeg` subprocess: any file ffmpeg reads (or a device, e.g.
//! `--input-format v4l2 /dev/video0`) is decoded to raw RGB frames on a pipe, optionally
//! at a chosen rate (`-vf fps=N`), and every frame goes through the same pipeline as a
//! photo, a few frames per batch. Each face gives a record with its frame number and time
//! (seconds); a frame without a face gives a `no_face` record. With tracking, a face is
//! linked to the face of the previous frame it overlaps most (box IoU at least
//! [`TRACK_IOU`]) and keeps its track number, and its probabilities are smoothed across the
//! frames of its track by an exponential moving average; a face that finds no such face
//! starts a new track. `--draw` writes the annotated frames back as a video through a
//! second ffmpeg.
//!
//! A video that stops decoding midway (corrupt, truncated) gives the frames that decoded
//! and one error record for the rest, with ffmpeg's message. Without ffmpeg on the
//! machine, a video is an error that says how to install it; photos need nothing more.

use super::draw::annotate;
use super::output::{FrameTime, ImageResult, PredictionWriter};
use super::{ImagePrediction, Predictor};
use crate::detect::Rect;
use crate::error::{Error, Result};
use image::RgbImage;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// File extensions read as videos.
pub const VIDEO_EXTENSIONS: [&str; 10] = [
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "wmv", "flv",
];

/// The smallest overlap (intersection over union of the boxes) that continues a track.
pub const TRACK_IOU: f32 = 0.3;

/// Whether `path` names a video by its extension.
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// How a video is read and what is done with it.
#[derive(Clone, Debug, Default)]
pub struct VideoOptions {
    /// Frames per second to take (`None`: every frame).
    pub fps: Option<f64>,
    /// ffmpeg's input format, for devices (`v4l2` for a webcam).
    pub input_format: Option<String>,
    /// Link faces across frames and smooth their probabilities.
    pub track: bool,
    /// The weight of a frame's own probabilities in the moving average (1: no smoothing).
    pub smoothing: f32,
    /// Write the annotated video here.
    pub draw: Option<PathBuf>,
    /// Frames predicted together.
    pub frames_per_step: usize,
}

/// What a video gave.
#[derive(Debug, Default, PartialEq)]
pub struct VideoSummary {
    pub frames: usize,
    pub faces: usize,
    pub frames_without_face: usize,
    /// Why the video stopped before its end, if it did.
    pub failed: Option<String>,
}

/// A video's frame size and rate, as ffprobe reads them.
struct Stream {
    width: u32,
    height: u32,
    fps: f64,
}

fn ffmpeg_missing(program: &str, e: std::io::Error) -> Error {
    Error::External {
        program: program.to_string(),
        message: format!(
            "cannot run it ({e}): reading and writing videos needs ffmpeg (Debian and Ubuntu: \
             apt install ffmpeg); photos need nothing more"
        ),
    }
}

fn probe(input: &str, options: &VideoOptions) -> Result<Stream> {
    let mut command = Command::new("ffprobe");
    command.args(["-v", "error"]);
    if let Some(format) = &options.input_format {
        command.args(["-f", format]);
    }
    command.args([
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=width,height,r_frame_rate",
        "-of",
        "csv=p=0",
        input,
    ]);
    let output = command.output().map_err(|e| ffmpeg_missing("ffprobe", e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let unreadable = || Error::Image {
        path: input.to_string(),
        reason: format!(
            "not a video ffmpeg can read: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    };
    let fields: Vec<&str> = text.trim().split(',').collect();
    let [width, height, rate] = fields[..] else {
        return Err(unreadable());
    };
    let (num, den) = rate.split_once('/').unwrap_or((rate, "1"));
    let fps = num.parse::<f64>().ok().zip(den.parse::<f64>().ok());
    match (width.parse(), height.parse(), fps) {
        (Ok(width), Ok(height), Some((n, d))) if d > 0.0 && n > 0.0 => Ok(Stream {
            width,
            height,
            fps: options.fps.unwrap_or(n / d),
        }),
        _ => Err(unreadable()),
    }
}

/// ffmpeg decoding `input` to raw RGB frames on its stdout.
fn decoder(input: &str, options: &VideoOptions) -> Result<Child> {
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error"]);
    if let Some(format) = &options.input_format {
        command.args(["-f", format]);
    }
    command.args(["-i", input]);
    if let Some(fps) = options.fps {
        command.args(["-vf", &format!("fps={fps}")]);
    }
    command
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ffmpeg_missing("ffmpeg", e))
}

/// ffmpeg encoding raw RGB frames from its stdin to `out` (H.264 in MP4 or Matroska,
/// whatever the name says).
fn encoder(out: &Path, stream: &Stream) -> Result<Child> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    Command::new("ffmpeg")
        .args([
            "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        ])
        .args(["-s", &format!("{}x{}", stream.width, stream.height)])
        .args(["-r", &format!("{}", stream.fps), "-i", "pipe:0"])
        .args(["-an", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ffmpeg_missing("ffmpeg", e))
}

/// Reads one frame of `size` bytes; `Ok(None)` at the end of the stream (a partial frame
/// at the end counts as the end).
fn next_frame(from: &mut impl Read, stream: &Stream) -> Result<Option<RgbImage>> {
    let size = stream.width as usize * stream.height as usize * 3;
    let mut bytes = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match from.read(&mut bytes[filled..]) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("the ffmpeg pipe", e)),
        }
    }
    Ok(RgbImage::from_raw(stream.width, stream.height, bytes))
}

/// The faces of the previous frame, for linking.
#[derive(Default)]
struct Tracker {
    next_id: u64,
    previous: Vec<(Rect, u64, Vec<f32>)>,
}

fn iou(a: &Rect, b: &Rect) -> f32 {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (a.x + a.width).min(b.x + b.width);
    let y1 = (a.y + a.height).min(b.y + b.height);
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let inter = ((x1 - x0) * (y1 - y0)) as f32;
    let area = |r: &Rect| (r.width * r.height) as f32;
    inter / (area(a) + area(b) - inter)
}

impl Tracker {
    /// Gives each face of the frame its track and its smoothed probabilities; each face of
    /// the previous frame continues at most one track.
    fn link(&mut self, prediction: &mut ImagePrediction, class_names: &[String], weight: f32) {
        let mut taken = vec![false; self.previous.len()];
        let mut current = Vec::with_capacity(prediction.faces.len());
        for face in &mut prediction.faces {
            let best = self
                .previous
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .map(|(i, (rect, _, _))| (i, iou(rect, &face.bbox)))
                .filter(|(_, overlap)| *overlap >= TRACK_IOU)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let id = match best {
                Some((i, _)) => {
                    taken[i] = true;
                    let earlier = &self.previous[i].2;
                    for (p, q) in face.probabilities.iter_mut().zip(earlier) {
                        *p = weight * *p + (1.0 - weight) * q;
                    }
                    self.previous[i].1
                }
                None => {
                    self.next_id += 1;
                    self.next_id - 1
                }
            };
            let top = crate::model::argmax(&face.probabilities);
            face.label = class_names[top].clone();
            face.confidence = face.probabilities[top];
            face.track = Some(id);
            current.push((face.bbox, id, face.probabilities.clone()));
        }
        self.previous = current;
    }
}

/// Predicts every frame of the video `input` and writes one record per face (or per frame
/// without one) to `writer`; the annotated video goes to `options.draw`.
pub fn predict_video<W: Write>(
    predictor: &Predictor,
    input: &str,
    options: &VideoOptions,
    writer: &mut PredictionWriter<W>,
) -> Result<VideoSummary> {
    let stream = probe(input, options)?;
    let mut decoding = decoder(input, options)?;
    let mut frames_out = decoding
        .stdout
        .take()
        .ok_or_else(|| Error::internal("ffmpeg's stdout was not piped"))?;
    let mut drawing = match &options.draw {
        Some(out) => Some(encoder(out, &stream)?),
        None => None,
    };
    let mut tracker = Tracker::default();
    let mut summary = VideoSummary::default();
    loop {
        let mut frames = Vec::new();
        while frames.len() < options.frames_per_step.max(1) {
            match next_frame(&mut frames_out, &stream)? {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        if frames.is_empty() {
            break;
        }
        let mut predictions = predictor.predict_batch(&frames)?;
        for (frame, prediction) in frames.iter().zip(&mut predictions) {
            if options.track {
                tracker.link(prediction, predictor.class_names(), options.smoothing);
            }
            let index = summary.frames as u64;
            let time = FrameTime {
                frame: index,
                time: index as f64 / stream.fps,
            };
            summary.frames += 1;
            summary.faces += prediction.faces.len();
            summary.frames_without_face += usize::from(prediction.faces.is_empty());
            writer.write(&ImageResult {
                source: input.to_string(),
                frame: Some(time),
                outcome: Ok(prediction.clone()),
            })?;
            if let Some(stdin) = drawing.as_mut().and_then(|d| d.stdin.as_mut()) {
                write_frame(stdin, &annotate(frame, prediction, predictor.class_names()))?;
            }
        }
    }
    summary.failed = finish_decoding(decoding)?;
    if let Some(failed) = &summary.failed {
        writer.write(&ImageResult {
            source: input.to_string(),
            frame: Some(FrameTime {
                frame: summary.frames as u64,
                time: summary.frames as f64 / stream.fps,
            }),
            outcome: Err(format!("the video stops decoding here: {failed}")),
        })?;
    }
    if let (Some(encoding), Some(out)) = (drawing, &options.draw) {
        finish_encoding(encoding, out)?;
    }
    Ok(summary)
}

fn write_frame(to: &mut ChildStdin, frame: &RgbImage) -> Result<()> {
    to.write_all(frame.as_raw())
        .map_err(|e| Error::io("the ffmpeg encoder's pipe", e))
}

/// Waits for the decoder; ffmpeg's complaint when it stopped with an error.
fn finish_decoding(decoding: Child) -> Result<Option<String>> {
    let output = decoding
        .wait_with_output()
        .map_err(|e| Error::io("ffmpeg", e))?;
    let complaint = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Ok(
        (!output.status.success() || !complaint.is_empty()).then(|| {
            if complaint.is_empty() {
                format!("ffmpeg exited with {}", output.status)
            } else {
                complaint
            }
        }),
    )
}

fn finish_encoding(mut encoding: Child, out: &Path) -> Result<()> {
    drop(encoding.stdin.take());
    let output = encoding
        .wait_with_output()
        .map_err(|e| Error::io("ffmpeg", e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::External {
        program: "ffmpeg".into(),
        message: format!(
            "could not write {}: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::Face;

    fn face(x: u32, p: [f32; 2]) -> Face {
        let bbox = Rect {
            x,
            y: 10,
            width: 40,
            height: 40,
        };
        Face {
            bbox,
            crop: bbox,
            detection_score: Some(1.0),
            landmarks: None,
            roll: None,
            aligned: false,
            track: None,
            probabilities: p.to_vec(),
            label: String::new(),
            confidence: 0.0,
        }
    }

    #[test]
    fn tracks_follow_overlapping_faces_and_smooth_their_probabilities() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut tracker = Tracker::default();
        let frame = |faces| ImagePrediction {
            width: 200,
            height: 100,
            faces,
            too_small: 0,
        };
        let mut first = frame(vec![face(10, [1.0, 0.0]), face(120, [0.0, 1.0])]);
        tracker.link(&mut first, &names, 0.5);
        assert_eq!(first.faces[0].track, Some(0));
        assert_eq!(first.faces[1].track, Some(1));
        // The first face moved a little and changed its mind; a third face appeared.
        let mut second = frame(vec![
            face(14, [0.0, 1.0]),
            face(70, [1.0, 0.0]),
            face(121, [0.0, 1.0]),
        ]);
        tracker.link(&mut second, &names, 0.5);
        let tracks: Vec<_> = second.faces.iter().map(|f| f.track).collect();
        assert_eq!(tracks, [Some(0), Some(2), Some(1)]);
        assert_eq!(second.faces[0].probabilities, [0.5, 0.5]);
        assert_eq!(
            second.faces[1].probabilities,
            [1.0, 0.0],
            "a new track is not smoothed"
        );
        assert_eq!(second.faces[2].label, "b");
    }

    #[test]
    fn videos_are_told_by_their_extension() {
        assert!(is_video(Path::new("clip.MP4")));
        assert!(is_video(Path::new("a/b.webm")));
        assert!(!is_video(Path::new("photo.jpg")));
    }
}
