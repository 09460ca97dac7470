//! Data sets users bring, read into one shape: [`Sample`]s with a canonical
//! [`Expression`] label, a [`Split`] and a domain name.
//!
//! A data set is named by a spec, `KIND:PATH[:key=value...]`, e.g. `rafdb:/data/raf-basic`
//! or `affectnet:/data/affectnet:split=val`; [`open`] reads it. Every format maps its
//! native codes to the one canonical order (`shared/spec/datasets.md`); contempt and
//! non-expression codes are dropped and counted in [`Dataset::dropped`], as are listed
//! images that are missing. A label line that does not parse is an error naming the file,
//! the line number and the line, unless [`LoadOptions::skip_bad_lines`] is set, in which
//! case it is collected in [`Dataset::bad_lines`].
//!
//! In the layers: beside [`crate::image`], at the bottom with the formats and kernels; the
//! encoders, the model and everything above read its samples.

mod affectnet;
pub mod check;
mod ckplus;
pub mod faces;
mod fer2013;
mod ferplus;
mod folder;
mod manifest;
mod mma;
mod rafdb;
mod sfew;
mod shard;
pub mod spec;
pub mod stats;
mod usable;

pub use faces::FaceCropping;
pub use shard::Shard;
pub use usable::{samples_fingerprint, usable_samples, Usable};

use crate::image::{DecodeLimits, RgbImage};
use crate::{Error, Expression, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

pub use spec::{kinds_help, Kind, Spec};

/// Which part of a data set a sample belongs to. FER2013/FERPlus `PublicTest` is `Val` and
/// `PrivateTest` is `Test`; AffectNet validation, SFEW `Val` and MMA `valid` are `Val`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    /// Accepts the names data sets use: `train`/`training`, `val`/`valid`/`validation`/
    /// `publictest`, `test`/`testing`/`privatetest`, case-insensitively.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Split::Train),
            "val" | "valid" | "validation" | "publictest" => Ok(Split::Val),
            "test" | "testing" | "privatetest" => Ok(Split::Test),
            _ => Err(format!("unknown split '{s}' (expected train, val or test)")),
        }
    }
}

/// A face box in pixels; parts outside the image are cut off when cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub x: i64,
    pub y: i64,
    pub width: u32,
    pub height: u32,
}

impl CropBox {
    /// The box cut to an image of `width` x `height`: `(x, y, w, h)`, or `None` when
    /// nothing of it lies inside.
    pub fn within(&self, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
        let left = self.x.clamp(0, width as i64);
        let top = self.y.clamp(0, height as i64);
        let right = (self.x + self.width as i64).clamp(0, width as i64);
        let bottom = (self.y + self.height as i64).clamp(0, height as i64);
        (right > left && bottom > top).then(|| {
            (
                left as u32,
                top as u32,
                (right - left) as u32,
                (bottom - top) as u32,
            )
        })
    }
}

/// Where a sample's pixels come from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// An image file, cropped to `crop` when the data set gives a face box.
    File {
        path: PathBuf,
        crop: Option<CropBox>,
    },
    /// Grey pixels stored in a label file (FER2013's CSV rows); `origin` says where.
    Pixels {
        origin: String,
        width: u32,
        height: u32,
        grey: Arc<[u8]>,
    },
}

impl ImageSource {
    /// Decodes the image as 8-bit RGB (grey images get three identical channels), cropped
    /// to its face box if it has one.
    pub fn load(&self, limits: &DecodeLimits) -> Result<RgbImage> {
        match self {
            ImageSource::File { path, crop } => {
                let image = crate::image::open(path, limits)?;
                match crop {
                    None => Ok(image),
                    Some(crop) => {
                        let (x, y, w, h) =
                            crop.within(image.width(), image.height()).ok_or_else(|| {
                                Error::Image {
                                    path: path.display().to_string(),
                                    reason: format!(
                                        "face box {crop:?} lies outside the {}x{} image",
                                        image.width(),
                                        image.height()
                                    ),
                                }
                            })?;
                        Ok(::image::imageops::crop_imm(&image, x, y, w, h).to_image())
                    }
                }
            }
            ImageSource::Pixels {
                origin,
                width,
                height,
                grey,
            } => {
                let grey = ::image::GrayImage::from_raw(*width, *height, grey.to_vec())
                    .ok_or_else(|| Error::Image {
                        path: origin.clone(),
                        reason: format!(
                            "{} grey values do not make a {width}x{height} image",
                            grey.len()
                        ),
                    })?;
                Ok(::image::DynamicImage::ImageLuma8(grey).to_rgb8())
            }
        }
    }

    /// A short human-readable name: the file (and face box), or the label-file row.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File { path, crop: None } => path.display().to_string(),
            ImageSource::File {
                path,
                crop: Some(c),
            } => format!(
                "{} [face box x={} y={} w={} h={}]",
                path.display(),
                c.x,
                c.y,
                c.width,
                c.height
            ),
            ImageSource::Pixels { origin, .. } => origin.clone(),
        }
    }

    /// [`crate::image::content_hash`] of the decoded image.
    pub fn content_hash(&self) -> Result<String> {
        self.content_hash_within(&DecodeLimits::default())
    }

    /// [`ImageSource::content_hash`] under the given decode limits.
    pub fn content_hash_within(&self, limits: &DecodeLimits) -> Result<String> {
        Ok(crate::image::content_hash(&self.load(limits)?))
    }
}

/// One labelled image.
#[derive(Clone, Debug)]
pub struct Sample {
    pub source: ImageSource,
    pub label: Expression,
    pub split: Split,
    /// The data set it comes from (`rafdb`, `fer2013`, ... or a user's name), so that
    /// cross-domain reports can group by it.
    pub domain: String,
}

/// Why an image listed or found in a data set is not used.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Contempt is not one of the seven basic classes.
    Contempt,
    /// A code or vote winner that is not an expression: AffectNet `None`, `Uncertain`,
    /// `Non-Face`; FERPlus `unknown`, `NF`.
    NotAnExpression(&'static str),
    /// FERPlus votes without a clear majority.
    NoMajority,
    /// A FERPlus row whose image name is empty (FERPlus dropped that image).
    NoImageName,
    /// A listed image file that does not exist.
    MissingImage,
    /// An image that has no label at all (FER2013 competition `test.csv`, AffectNet
    /// images without an annotation, CK+ sequences without an emotion file).
    Unlabelled,
    /// Images in a class folder whose name is not an expression.
    NotAClassFolder(String),
}

impl DropReason {
    /// The short name used as a key in reports.
    pub fn key(&self) -> String {
        match self {
            DropReason::Contempt => "contempt".into(),
            DropReason::NotAnExpression(what) => (*what).into(),
            DropReason::NoMajority => "no majority".into(),
            DropReason::NoImageName => "empty image name".into(),
            DropReason::MissingImage => "missing image".into(),
            DropReason::Unlabelled => "unlabelled".into(),
            DropReason::NotAClassFolder(name) => format!("not a class folder: {name}"),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// An image that is not used, why, and which it is.
#[derive(Clone, Debug)]
pub struct Dropped {
    pub split: Split,
    pub reason: DropReason,
    /// The image path or label-file row.
    pub what: String,
}

/// A label-file line that did not parse (collected with [`LoadOptions::skip_bad_lines`]).
#[derive(Clone, Debug, Serialize)]
pub struct BadLine {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: `{}`",
            self.file.display(),
            self.line,
            self.reason,
            self.text
        )
    }
}

/// How to read a data set. Options that belong to one data set go in its spec.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Collect label lines that do not parse in [`Dataset::bad_lines`] instead of failing.
    pub skip_bad_lines: bool,
}

/// A data set read from disk.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The spec it was opened with.
    pub spec: String,
    /// `rafdb`, `fer2013`, ...
    pub kind: String,
    pub samples: Vec<Sample>,
    pub dropped: Vec<Dropped>,
    pub bad_lines: Vec<BadLine>,
    /// Things a user should know about how it was read (which layout, what was assumed).
    pub notes: Vec<String>,
    /// How gfer cut its faces from their photos, when gfer built it (a manifest with a
    /// [`faces::FACES_FILE`] beside it).
    pub face_cropping: Option<FaceCropping>,
}

impl Dataset {
    /// The samples of one split, in load order.
    pub fn split(&self, split: Split) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.split == split).collect()
    }

    /// Images per class (canonical index) in one split.
    pub fn counts(&self, split: Split) -> [usize; Expression::COUNT] {
        let mut counts = [0; Expression::COUNT];
        for sample in self.samples.iter().filter(|s| s.split == split) {
            counts[sample.label.index()] += 1;
        }
        counts
    }

    /// The splits that hold at least one sample.
    pub fn splits(&self) -> Vec<Split> {
        Split::ALL
            .into_iter()
            .filter(|&split| self.samples.iter().any(|s| s.split == split))
            .collect()
    }

    /// Fails, saying plainly what is missing, when `split` has no images or one of the
    /// seven classes has none in it. Training calls this before it starts.
    pub fn check_trainable(&self, split: Split) -> Result<()> {
        let counts = self.counts(split);
        let total: usize = counts.iter().sum();
        if total == 0 {
            let present: Vec<String> = self
                .splits()
                .into_iter()
                .map(|s| format!("{s} ({})", self.counts(s).iter().sum::<usize>()))
                .collect();
            let has = if present.is_empty() {
                "it has no images at all".to_string()
            } else {
                format!("it has {}", present.join(", "))
            };
            return Err(Error::Dataset {
                spec: self.spec.clone(),
                message: format!("the {split} split has no images; {has}"),
            });
        }
        let empty: Vec<&str> = Expression::ALL
            .iter()
            .filter(|e| counts[e.index()] == 0)
            .map(|e| e.name())
            .collect();
        if !empty.is_empty() {
            return Err(Error::Dataset {
                spec: self.spec.clone(),
                message: format!(
                    "the {split} split has no images of {} ({total} images in the other classes); \
                     every class needs at least one",
                    empty.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// Whether `text` names a data set (`KIND:...` with a known kind) rather than a file.
pub fn is_spec(text: &str) -> bool {
    text.split_once(':')
        .is_some_and(|(kind, _)| Kind::from_name(kind).is_some())
}

/// Reads the data set named by `spec` (`KIND:PATH[:key=value...]`).
pub fn open(spec: &str, options: &LoadOptions) -> Result<Dataset> {
    let parsed = Spec::parse(spec)?;
    parsed.require_path()?;
    let mut builder = Builder::new(&parsed, options);
    match parsed.kind {
        Kind::RafDb => rafdb::load(&parsed, &mut builder)?,
        Kind::Fer2013 => fer2013::load(&parsed, &mut builder)?,
        Kind::FerPlus => ferplus::load(&parsed, &mut builder)?,
        Kind::AffectNet => affectnet::load(&parsed, &mut builder)?,
        Kind::Sfew => sfew::load(&parsed, &mut builder)?,
        Kind::Mma => mma::load(&parsed, &mut builder)?,
        Kind::CkPlus => ckplus::load(&parsed, &mut builder)?,
        Kind::Folder => folder::load(&parsed, &mut builder)?,
        Kind::Manifest => manifest::load(&parsed, &mut builder)?,
    }
    let dataset = builder.finish();
    tracing::info!(
        spec,
        samples = dataset.samples.len(),
        dropped = dataset.dropped.len(),
        bad_lines = dataset.bad_lines.len(),
        "data set read"
    );
    Ok(dataset)
}

/// What a native label code stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Label {
    Class(Expression),
    Drop(DropReason),
}

/// Collects samples, drops and bad lines while a format reads its files, applying the
/// spec's `split=` and `domain=` options in one place.
struct Builder<'a> {
    options: &'a LoadOptions,
    only_split: Option<Split>,
    domain: String,
    spec: String,
    kind: Kind,
    samples: Vec<Sample>,
    dropped: Vec<Dropped>,
    bad_lines: Vec<BadLine>,
    notes: Vec<String>,
    face_cropping: Option<FaceCropping>,
}

/// Label lines can be long (a FER2013 row holds 2,304 numbers): errors show the start.
const SHOWN_LINE_CHARS: usize = 160;

impl<'a> Builder<'a> {
    fn new(spec: &Spec, options: &'a LoadOptions) -> Self {
        Builder {
            options,
            only_split: spec.only_split,
            domain: spec
                .domain
                .clone()
                .unwrap_or_else(|| spec.kind.name().to_string()),
            spec: spec.text.clone(),
            kind: spec.kind,
            samples: Vec::new(),
            dropped: Vec::new(),
            bad_lines: Vec::new(),
            notes: Vec::new(),
            face_cropping: None,
        }
    }

    /// Whether the spec asks for this split (loaders skip whole files when not).
    fn wants(&self, split: Split) -> bool {
        self.only_split.is_none_or(|only| only == split)
    }

    /// A label line that does not parse: an error, or recorded when skipping bad lines.
    fn bad_line(&mut self, file: &Path, line: usize, text: &str, reason: &str) -> Result<()> {
        let mut shown: String = text.chars().take(SHOWN_LINE_CHARS).collect();
        if shown.len() < text.len() {
            shown.push_str(" ...");
        }
        if self.options.skip_bad_lines {
            tracing::warn!("{}:{line}: skipped: {reason}: `{shown}`", file.display());
            self.bad_lines.push(BadLine {
                file: file.to_path_buf(),
                line,
                text: shown,
                reason: reason.to_string(),
            });
            Ok(())
        } else {
            Err(Error::Data {
                file: file.to_path_buf(),
                line: Some(line),
                message: format!(
                    "{reason}: `{shown}` (to go on without such lines, pass --skip-bad-lines)"
                ),
            })
        }
    }

    fn discard(&mut self, split: Split, reason: DropReason, what: impl Into<String>) {
        if self.wants(split) {
            self.dropped.push(Dropped {
                split,
                reason,
                what: what.into(),
            });
        }
    }

    /// Adds an image file with its native label; a missing file is counted and listed.
    fn file(&mut self, path: PathBuf, crop: Option<CropBox>, label: Label, split: Split) {
        let domain = self.domain.clone();
        self.file_in_domain(path, crop, label, split, domain);
    }

    /// [`Builder::file`] for a sample whose domain is not the data set's (manifests).
    fn file_in_domain(
        &mut self,
        path: PathBuf,
        crop: Option<CropBox>,
        label: Label,
        split: Split,
        domain: String,
    ) {
        if !self.wants(split) {
            return;
        }
        match label {
            Label::Drop(reason) => self.discard(split, reason, path.display().to_string()),
            Label::Class(_) if !path.is_file() => {
                self.discard(split, DropReason::MissingImage, path.display().to_string());
            }
            Label::Class(label) => self.samples.push(Sample {
                source: ImageSource::File { path, crop },
                label,
                split,
                domain,
            }),
        }
    }

    fn push(&mut self, source: ImageSource, label: Expression, split: Split) {
        if self.wants(split) {
            self.samples.push(Sample {
                source,
                label,
                split,
                domain: self.domain.clone(),
            });
        }
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn finish(self) -> Dataset {
        let missing = self
            .dropped
            .iter()
            .filter(|d| d.reason == DropReason::MissingImage)
            .count();
        if missing > 0 {
            tracing::warn!(
                "{}: {missing} listed images are missing (see `gfer data stats`)",
                self.spec
            );
        }
        Dataset {
            spec: self.spec,
            kind: self.kind.name().to_string(),
            samples: self.samples,
            dropped: self.dropped,
            bad_lines: self.bad_lines,
            notes: self.notes,
            face_cropping: self.face_cropping,
        }
    }
}

/// Reads a whole text file, naming it in the error.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn is_image_file(path: &Path) -> bool {
    path.is_file() && crate::image::has_image_extension(path)
}

/// The entries of a folder, sorted by name so that load order does not depend on the
/// file system.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        for split in Split::ALL {
            assert_eq!(split.name().parse::<Split>(), Ok(split));
            assert_eq!(
                serde_json::to_string(&split).unwrap(),
                format!("\"{split}\"")
            );
        }
        assert_eq!("PublicTest".parse::<Split>(), Ok(Split::Val));
        assert_eq!("PrivateTest".parse::<Split>(), Ok(Split::Test));
        assert_eq!("valid".parse::<Split>(), Ok(Split::Val));
        assert!("holdout".parse::<Split>().is_err());
    }

    #[test]
    fn crop_box_is_cut_to_the_image() {
        let crop = CropBox {
            x: -2,
            y: 3,
            width: 10,
            height: 4,
        };
        assert_eq!(crop.within(6, 5), Some((0, 3, 6, 2)));
        let outside = CropBox {
            x: 7,
            y: 0,
            width: 3,
            height: 3,
        };
        assert_eq!(outside.within(6, 5), None);
    }

    #[test]
    fn pixels_load_as_three_equal_channels() {
        let source = ImageSource::Pixels {
            origin: "row 1".into(),
            width: 2,
            height: 1,
            grey: Arc::from(vec![7u8, 200]),
        };
        let image = source.load(&DecodeLimits::default()).unwrap();
        assert_eq!(image.as_raw(), &vec![7, 7, 7, 200, 200, 200]);
        let wrong = ImageSource::Pixels {
            origin: "row 2".into(),
            width: 2,
            height: 2,
            grey: Arc::from(vec![7u8, 200]),
        };
        let err = wrong.load(&DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("row 2"), "{err}");
    }

    fn sample(label: Expression, split: Split) -> Sample {
        Sample {
            source: ImageSource::Pixels {
                origin: "x".into(),
                width: 1,
                height: 1,
                grey: Arc::from(vec![0u8]),
            },
            label,
            split,
            domain: "d".into(),
        }
    }

    #[test]
    fn check_trainable_names_what_is_missing() {
        let mut dataset = Dataset {
            spec: "folder:/x".into(),
            kind: "folder".into(),
            samples: Expression::ALL
                .iter()
                .map(|&e| sample(e, Split::Test))
                .collect(),
            dropped: vec![],
            bad_lines: vec![],
            notes: vec![],
            face_cropping: None,
        };
        let err = dataset.check_trainable(Split::Train).unwrap_err();
        assert!(
            err.to_string()
                .contains("train split has no images; it has test (7)"),
            "{err}"
        );
        dataset.check_trainable(Split::Test).unwrap();
        dataset.samples.retain(|s| s.label != Expression::Fear);
        let err = dataset.check_trainable(Split::Test).unwrap_err();
        assert!(err.to_string().contains("no images of fear"), "{err}");
        assert_eq!(dataset.counts(Split::Test), [1, 0, 1, 1, 1, 1, 1]);
    }
}
