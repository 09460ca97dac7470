//! `gfer data stats`: counts per split and class, what was dropped and why, image sizes
//! and colour modes. Sizes and colour modes come from image headers only, so this is
//! fast even on large data sets.

use super::{BadLine, Dataset, ImageSource, Split};
use crate::{Error, Expression, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// Images per class, serialised as a map from the lower-case canonical names in
/// canonical order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts(pub [usize; Expression::COUNT]);

impl Serialize for ClassCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Expression::COUNT))?;
        for expression in Expression::ALL {
            map.serialize_entry(expression.name(), &self.0[expression.index()])?;
        }
        map.end()
    }
}

/// What one split holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitStats {
    pub counts: ClassCounts,
    pub total: usize,
    /// Dropped images per reason.
    pub dropped: BTreeMap<String, usize>,
    /// Images per `WIDTHxHEIGHT` (after the face-box crop where there is one).
    pub sizes: BTreeMap<String, usize>,
    /// Images per colour mode of the stored file: `grey`, `rgb`, `rgba`, ...
    pub colour: BTreeMap<String, usize>,
    /// Images whose header could not be read: `image: error`.
    pub unreadable: Vec<String>,
}

/// The whole report, as `gfer data stats --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub spec: String,
    pub kind: String,
    pub splits: BTreeMap<Split, SplitStats>,
    pub bad_lines: Vec<BadLine>,
    pub notes: Vec<String>,
}

/// Size and colour mode of an image, from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub colour: String,
}

/// Reads only the header of the image (and cuts its face box to it): the size the
/// decoded image will have.
pub fn image_info(source: &ImageSource) -> Result<ImageInfo> {
    use ::image::ImageDecoder;
    match source {
        ImageSource::Pixels { width, height, .. } => Ok(ImageInfo {
            width: *width,
            height: *height,
            colour: "grey".into(),
        }),
        ImageSource::File { path, crop } => {
            let image_error = |reason: String| Error::Image {
                path: path.display().to_string(),
                reason,
            };
            let mut decoder = ::image::ImageReader::open(path)
                .map_err(|e| Error::io(path, e))?
                .with_guessed_format()
                .map_err(|e| Error::io(path, e))?
                .into_decoder()
                .map_err(|e| image_error(e.to_string()))?;
            let (stored_width, stored_height) = decoder.dimensions();
            // Decoding applies the EXIF orientation, which turns some images on their side.
            use ::image::metadata::Orientation;
            let (width, height) = match decoder.orientation() {
                Ok(
                    Orientation::Rotate90
                    | Orientation::Rotate270
                    | Orientation::Rotate90FlipH
                    | Orientation::Rotate270FlipH,
                ) => (stored_height, stored_width),
                _ => (stored_width, stored_height),
            };
            let colour = colour_name(decoder.color_type());
            let (width, height) = match crop {
                None => (width, height),
                Some(crop) => {
                    let (_, _, w, h) = crop.within(width, height).ok_or_else(|| {
                        image_error(format!(
                            "face box {crop:?} lies outside the {width}x{height} image"
                        ))
                    })?;
                    (w, h)
                }
            };
            Ok(ImageInfo {
                width,
                height,
                colour,
            })
        }
    }
}

fn colour_name(colour: ::image::ColorType) -> String {
    use ::image::ColorType;
    match colour {
        ColorType::L8 | ColorType::L16 => "grey".into(),
        ColorType::La8 | ColorType::La16 => "grey+alpha".into(),
        ColorType::Rgb8 | ColorType::Rgb16 | ColorType::Rgb32F => "rgb".into(),
        ColorType::Rgba8 | ColorType::Rgba16 | ColorType::Rgba32F => "rgba".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Counts, drops, sizes and colour modes of every split that holds samples or drops.
pub fn stats(dataset: &Dataset) -> Stats {
    let mut splits: BTreeMap<Split, SplitStats> = BTreeMap::new();
    for sample in &dataset.samples {
        let split = splits.entry(sample.split).or_default();
        split.counts.0[sample.label.index()] += 1;
        split.total += 1;
    }
    for dropped in &dataset.dropped {
        *splits
            .entry(dropped.split)
            .or_default()
            .dropped
            .entry(dropped.reason.key())
            .or_default() += 1;
    }
    let progress = ProgressBar::new(dataset.samples.len() as u64).with_style(
        ProgressStyle::with_template("reading headers {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let infos: Vec<(Split, String, Result<ImageInfo>)> = dataset
        .samples
        .par_iter()
        .map(|s| {
            let info = image_info(&s.source);
            progress.inc(1);
            (s.split, s.source.describe(), info)
        })
        .collect();
    progress.finish_and_clear();
    for (split, image, info) in infos {
        let split = splits.entry(split).or_default();
        match info {
            Ok(info) => {
                *split
                    .sizes
                    .entry(format!("{}x{}", info.width, info.height))
                    .or_default() += 1;
                *split.colour.entry(info.colour).or_default() += 1;
            }
            Err(err) => split.unreadable.push(format!("{image}: {err}")),
        }
    }
    Stats {
        spec: dataset.spec.clone(),
        kind: dataset.kind.clone(),
        splits,
        bad_lines: dataset.bad_lines.clone(),
        notes: dataset.notes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_counts_serialise_in_canonical_order() {
        let json = serde_json::to_string(&ClassCounts([1, 2, 3, 4, 5, 6, 7])).unwrap();
        assert_eq!(
            json,
            r#"{"surprise":1,"fear":2,"disgust":3,"happiness":4,"sadness":5,"anger":6,"neutral":7}"#
        );
    }
}
