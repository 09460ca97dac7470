//! Face detection measured on real photos whose faces were counted by hand: for each
//! detector, how many of the counted faces it finds (recall), how many faces it reports
//! beyond them (false detections), and its time per photo. With counts rather than
//! marked boxes, a photo's found faces are taken as correct up to its count: recall is
//! `sum(min(found, counted)) / sum(counted)`, false detections `sum(max(found - counted,
//! 0))`.

use crate::detect::FaceDetector;
use crate::error::{Error, Result};
use crate::image::{DecodeLimits, RgbImage};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A photo and the faces counted in it.
#[derive(Clone, Debug)]
pub struct CountedPhoto {
    pub path: PathBuf,
    pub faces: usize,
}

#[derive(Deserialize)]
struct CountsFile {
    photos: Vec<CountsEntry>,
}

#[derive(Deserialize)]
struct CountsEntry {
    /// A path or a glob pattern under the assets folder.
    path: String,
    /// Faces in each photo it names.
    faces: usize,
}

/// The photos a counts file names (`{"photos": [{"path": ..., "faces": N}, ...]}`, paths
/// and patterns relative to `assets`), in order; a pattern adds every file it matches,
/// sorted. A path or pattern that finds nothing is an error naming it.
pub fn read_counts(file: &Path, assets: &Path) -> Result<Vec<CountedPhoto>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let counts: CountsFile = serde_json::from_str(&text).map_err(|e| Error::Data {
        file: file.to_path_buf(),
        line: Some(e.line()),
        message: format!("not a face-counts file: {e}"),
    })?;
    let mut photos = Vec::new();
    for entry in counts.photos {
        let pattern = assets.join(&entry.path).display().to_string();
        let mut found: Vec<PathBuf> = glob::glob(&pattern)
            .map_err(|e| Error::Data {
                file: file.to_path_buf(),
                line: None,
                message: format!("{}: bad pattern: {e}", entry.path),
            })?
            .filter_map(|p| p.ok())
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(Error::MissingAsset {
                path: assets.join(&entry.path),
                hint: "fetch the photos with gfer assets fetch photos ckplus (and write the \
                       MTCNN references, which copy rustface's photo, with \
                       scripts/make_reference.py mtcnn --testtime)"
                    .into(),
            });
        }
        photos.extend(found.into_iter().map(|path| CountedPhoto {
            path,
            faces: entry.faces,
        }));
    }
    Ok(photos)
}

/// What one detector did on the counted photos.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DetectionSummary {
    pub detector: String,
    pub photos: usize,
    pub counted: usize,
    pub found: usize,
    /// Counted faces found, as a fraction of the counted ones.
    pub recall: f64,
    pub false_detections: usize,
    /// Faces found in each photo, in order.
    pub found_per_photo: Vec<usize>,
    /// The median over `rounds` of the mean time per photo, in milliseconds.
    pub ms_per_photo: f64,
}

/// Runs `detector` over every photo `rounds` times (at least once).
pub fn measure(
    name: &str,
    detector: &dyn FaceDetector,
    photos: &[CountedPhoto],
    rounds: usize,
) -> Result<DetectionSummary> {
    let images: Vec<RgbImage> = photos
        .iter()
        .map(|p| crate::image::open(&p.path, &DecodeLimits::default()))
        .collect::<Result<_>>()?;
    let mut found_per_photo = Vec::new();
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        found_per_photo = images
            .iter()
            .map(|image| detector.detect(image).map(|faces| faces.len()))
            .collect::<Result<_>>()?;
        times.push(started.elapsed().as_secs_f64() * 1e3 / images.len().max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    let counted: usize = photos.iter().map(|p| p.faces).sum();
    let hits: usize = photos
        .iter()
        .zip(&found_per_photo)
        .map(|(p, &found)| found.min(p.faces))
        .sum();
    let false_detections = photos
        .iter()
        .zip(&found_per_photo)
        .map(|(p, &found)| found.saturating_sub(p.faces))
        .sum();
    Ok(DetectionSummary {
        detector: name.to_string(),
        photos: photos.len(),
        counted,
        found: found_per_photo.iter().sum(),
        recall: hits as f64 / counted.max(1) as f64,
        false_detections,
        found_per_photo,
        ms_per_photo: times[times.len() / 2],
    })
}
