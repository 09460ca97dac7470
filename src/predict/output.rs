//! How predictions are written: JSON lines, CSV or an aligned table, one record per face
//! (and one per photo without a face or that could not be read), so the outputs of many
//! shards simply concatenate. The face's JSON shape ([`FaceJson`]) is shared with the
//! HTTP server.

use super::{Face, ImagePrediction};
use crate::detect::{Landmarks, Rect};
use crate::error::{Error, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::io::Write;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON object per line (the default when the output is not a terminal).
    Jsonl,
    Csv,
    /// Aligned columns for people (the default on a terminal).
    Table,
}

impl OutputFormat {
    pub const NAMES: [&'static str; 3] = ["jsonl", "csv", "table"];
}

impl FromStr for OutputFormat {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "jsonl" | "json" => Ok(OutputFormat::Jsonl),
            "csv" => Ok(OutputFormat::Csv),
            "table" => Ok(OutputFormat::Table),
            _ => Err(Error::config(format!(
                "unknown output format {text:?}; choose one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// Where a video's frame is: its number (from 0) and its time in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FrameTime {
    pub frame: u64,
    pub time: f64,
}

/// The prediction for one input (a photo, or a frame of a video), or why there is none.
#[derive(Clone, Debug)]
pub struct ImageResult {
    /// The path as given (or `-` for stdin).
    pub source: String,
    /// The frame, for a video.
    pub frame: Option<FrameTime>,
    pub outcome: std::result::Result<ImagePrediction, String>,
}

/// Class probabilities as a JSON object in class order: `{"surprise": 0.01, ...}`.
pub struct ClassProbabilities<'a> {
    pub class_names: &'a [String],
    pub probabilities: &'a [f32],
}

impl Serialize for ClassProbabilities<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.class_names.len()))?;
        for (name, p) in self.class_names.iter().zip(self.probabilities) {
            map.serialize_entry(name, p)?;
        }
        map.end()
    }
}

/// One face as JSON, for `gfer predict` and for the server's responses.
#[derive(Serialize)]
pub struct FaceJson<'a> {
    #[serde(rename = "box")]
    pub bbox: &'a Rect,
    pub crop: &'a Rect,
    pub detection_score: Option<f32>,
    /// Left eye, right eye, nose, left and right mouth corner, as `[x, y]`; absent
    /// when the detector gives none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<&'a Landmarks>,
    /// The head's roll in degrees (the eyes' line against the horizontal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll: Option<f32>,
    pub aligned: bool,
    /// The face's track across a video's frames, with tracking on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
    pub label: &'a str,
    pub confidence: f32,
    pub probabilities: ClassProbabilities<'a>,
}

impl<'a> FaceJson<'a> {
    pub fn new(face: &'a Face, class_names: &'a [String]) -> Self {
        FaceJson {
            bbox: &face.bbox,
            crop: &face.crop,
            detection_score: face.detection_score,
            landmarks: face.landmarks.as_ref(),
            roll: face.roll,
            aligned: face.aligned,
            track: face.track,
            label: &face.label,
            confidence: face.confidence,
            probabilities: ClassProbabilities {
                class_names,
                probabilities: &face.probabilities,
            },
        }
    }
}

#[derive(Serialize)]
struct FaceLine<'a> {
    path: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    frame: Option<FrameTime>,
    status: &'static str,
    face: usize,
    #[serde(flatten)]
    detail: FaceJson<'a>,
}

#[derive(Serialize)]
struct NoFaceLine<'a> {
    path: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    frame: Option<FrameTime>,
    status: &'static str,
    too_small: usize,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    path: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    frame: Option<FrameTime>,
    status: &'static str,
    error: &'a str,
}

/// Writes [`ImageResult`]s in one format.
pub struct PredictionWriter<W: Write> {
    class_names: Vec<String>,
    sink: Sink<W>,
    /// CSV and the table start with a header, written with the first record.
    header_written: bool,
}

enum Sink<W: Write> {
    Jsonl(W),
    Csv(Box<csv::Writer<W>>),
    Table(W),
}

impl<W: Write> PredictionWriter<W> {
    pub fn new(format: OutputFormat, class_names: &[String], out: W) -> Self {
        let sink = match format {
            OutputFormat::Jsonl => Sink::Jsonl(out),
            OutputFormat::Csv => Sink::Csv(Box::new(csv::Writer::from_writer(out))),
            OutputFormat::Table => Sink::Table(out),
        };
        PredictionWriter {
            class_names: class_names.to_vec(),
            sink,
            header_written: false,
        }
    }

    pub fn write(&mut self, result: &ImageResult) -> Result<()> {
        let with_header = !std::mem::replace(&mut self.header_written, true);
        let names = &self.class_names;
        let written = match &mut self.sink {
            Sink::Jsonl(out) => write_jsonl(out, names, result),
            Sink::Csv(out) => write_csv(out, names, result, with_header),
            Sink::Table(out) => write_table(out, names, result, with_header),
        };
        written.map_err(|err| Error::io("<output>", err))
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(self) -> Result<W> {
        let flushed = match self.sink {
            Sink::Jsonl(mut out) | Sink::Table(mut out) => out.flush().map(|_| out),
            Sink::Csv(out) => out.into_inner().map_err(|err| err.into_error()),
        };
        flushed.map_err(|err| Error::io("<output>", err))
    }
}

fn write_jsonl<W: Write>(
    out: &mut W,
    class_names: &[String],
    result: &ImageResult,
) -> std::io::Result<()> {
    let path = result.source.as_str();
    match &result.outcome {
        Ok(prediction) if prediction.faces.is_empty() => {
            let line = NoFaceLine {
                path,
                frame: result.frame,
                status: "no_face",
                too_small: prediction.too_small,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        Ok(prediction) => {
            for (index, face) in prediction.faces.iter().enumerate() {
                let line = FaceLine {
                    path,
                    frame: result.frame,
                    status: "face",
                    face: index,
                    detail: FaceJson::new(face, class_names),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        Err(error) => {
            let line = ErrorLine {
                path,
                frame: result.frame,
                status: "error",
                error,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

const CSV_FIXED_COLUMNS: [&str; 10] = [
    "path",
    "status",
    "face",
    "x",
    "y",
    "width",
    "height",
    "detection_score",
    "label",
    "confidence",
];

/// After the class probabilities: a video's frame and time and the face's track, and the
/// head's roll, then [`LANDMARK_COLUMNS`] (each empty when it does not apply).
const CSV_FACE_COLUMNS: [&str; 4] = ["frame", "time", "track", "roll"];

/// The landmarks' CSV columns: x then y of the left eye, right eye, nose, left and right
/// mouth corner.
pub const LANDMARK_COLUMNS: [&str; 10] = [
    "left_eye_x",
    "left_eye_y",
    "right_eye_x",
    "right_eye_y",
    "nose_x",
    "nose_y",
    "mouth_left_x",
    "mouth_left_y",
    "mouth_right_x",
    "mouth_right_y",
];

/// A video frame's number and time as CSV fields (empty for a photo).
fn frame_columns(frame: Option<FrameTime>) -> [String; 2] {
    match frame {
        Some(f) => [f.frame.to_string(), format!("{:.3}", f.time)],
        None => [String::new(), String::new()],
    }
}

fn write_csv<W: Write>(
    out: &mut csv::Writer<W>,
    class_names: &[String],
    result: &ImageResult,
    with_header: bool,
) -> std::io::Result<()> {
    let columns = CSV_FIXED_COLUMNS.len()
        + class_names.len()
        + CSV_FACE_COLUMNS.len()
        + LANDMARK_COLUMNS.len()
        + 1;
    if with_header {
        let mut header: Vec<&str> = CSV_FIXED_COLUMNS.to_vec();
        header.extend(class_names.iter().map(String::as_str));
        header.extend(CSV_FACE_COLUMNS);
        header.extend(LANDMARK_COLUMNS);
        header.push("error");
        out.write_record(&header)?;
    }
    let path = result.source.as_str();
    match &result.outcome {
        Ok(prediction) if prediction.faces.is_empty() => {
            let mut row = vec![String::new(); columns];
            row[0] = path.to_string();
            row[1] = "no_face".into();
            let at = CSV_FIXED_COLUMNS.len() + class_names.len();
            row.splice(at..at + 2, frame_columns(result.frame));
            out.write_record(&row)?;
        }
        Ok(prediction) => {
            for (index, face) in prediction.faces.iter().enumerate() {
                let mut row = vec![
                    path.to_string(),
                    "face".into(),
                    index.to_string(),
                    face.bbox.x.to_string(),
                    face.bbox.y.to_string(),
                    face.bbox.width.to_string(),
                    face.bbox.height.to_string(),
                    face.detection_score
                        .map(|s| format!("{s:.3}"))
                        .unwrap_or_default(),
                    face.label.clone(),
                    format!("{:.6}", face.confidence),
                ];
                row.extend(face.probabilities.iter().map(|p| format!("{p:.6}")));
                row.extend(frame_columns(result.frame));
                row.push(face.track.map(|t| t.to_string()).unwrap_or_default());
                row.push(face.roll.map(|r| format!("{r:.2}")).unwrap_or_default());
                let points = face.landmarks.iter().flatten().flatten();
                let points: Vec<String> = points.map(|v| format!("{v:.2}")).collect();
                row.extend(
                    points
                        .into_iter()
                        .chain(std::iter::repeat(String::new()))
                        .take(LANDMARK_COLUMNS.len()),
                );
                row.push(String::new());
                out.write_record(&row)?;
            }
        }
        Err(error) => {
            let mut row = vec![String::new(); columns];
            row[0] = path.to_string();
            row[1] = "error".into();
            let at = CSV_FIXED_COLUMNS.len() + class_names.len();
            row.splice(at..at + 2, frame_columns(result.frame));
            row[columns - 1] = error.clone();
            out.write_record(&row)?;
        }
    }
    Ok(())
}

/// Width of a probability column: the class name, at least `0.000`.
fn class_column_width(name: &str) -> usize {
    name.len().max(5)
}

/// Fixed-width columns first and the path last, so rows line up without knowing every
/// path in advance and can be printed as they come.
fn write_table<W: Write>(
    out: &mut W,
    class_names: &[String],
    result: &ImageResult,
    with_header: bool,
) -> std::io::Result<()> {
    if with_header {
        write!(
            out,
            "{:>4} {:>5} {:>5} {:>5} {:>5} {:<10} {:>5}",
            "FACE", "X", "Y", "W", "H", "LABEL", "CONF"
        )?;
        for name in class_names {
            write!(out, " {:>width$}", name, width = class_column_width(name))?;
        }
        writeln!(out, "  PATH")?;
    }
    let path = result.source.as_str();
    let blank_probabilities = |out: &mut W| -> std::io::Result<()> {
        for name in class_names {
            write!(out, " {:>width$}", "-", width = class_column_width(name))?;
        }
        Ok(())
    };
    match &result.outcome {
        Ok(prediction) if prediction.faces.is_empty() => {
            write!(
                out,
                "{:>4} {:>5} {:>5} {:>5} {:>5} {:<10} {:>5}",
                "-", "-", "-", "-", "-", "no face", "-"
            )?;
            blank_probabilities(out)?;
            if prediction.too_small > 0 {
                writeln!(out, "  {path} ({} too small)", prediction.too_small)?;
            } else {
                writeln!(out, "  {path}")?;
            }
        }
        Ok(prediction) => {
            for (index, face) in prediction.faces.iter().enumerate() {
                let b = face.bbox;
                write!(
                    out,
                    "{:>4} {:>5} {:>5} {:>5} {:>5} {:<10} {:>5.3}",
                    index, b.x, b.y, b.width, b.height, face.label, face.confidence
                )?;
                for (name, p) in class_names.iter().zip(&face.probabilities) {
                    write!(out, " {:>width$.3}", p, width = class_column_width(name))?;
                }
                writeln!(out, "  {path}")?;
            }
        }
        Err(error) => {
            write!(
                out,
                "{:>4} {:>5} {:>5} {:>5} {:>5} {:<10} {:>5}",
                "-", "-", "-", "-", "-", "error", "-"
            )?;
            blank_probabilities(out)?;
            writeln!(out, "  {path}: {error}")?;
        }
    }
    Ok(())
}
