//! FER2013 in its circulating forms:
//! - `fer2013.csv`: `emotion,pixels,Usage`, 2,304 grey values per row (48x48), Usage
//!   Training / PublicTest (val) / PrivateTest (test);
//! - `icml_face_data.csv`: `emotion, Usage, pixels`, the names with leading spaces;
//! - the competition's `train.csv` (`emotion,pixels`, all train) and `test.csv`
//!   (`pixels` only: it has no labels, so its rows are counted as unlabelled);
//! - image folders `train|test/<class>/*.jpg`.
//!
//! Codes 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.

use super::{folder, Builder, DropReason, ImageSource, Spec, Split};
use crate::{Error, Expression, Result};
use std::path::Path;
use std::sync::Arc;

/// FER2013 code -> canonical class.
pub(super) fn canonical(code: u8) -> Option<Expression> {
    Some(match code {
        0 => Expression::Anger,
        1 => Expression::Disgust,
        2 => Expression::Fear,
        3 => Expression::Happiness,
        4 => Expression::Sadness,
        5 => Expression::Surprise,
        6 => Expression::Neutral,
        _ => return None,
    })
}

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    if root.is_file() {
        return load_csv(root, builder);
    }
    for name in ["fer2013.csv", "icml_face_data.csv"] {
        let path = root.join(name);
        if path.is_file() {
            builder.note(format!("read {}", path.display()));
            return load_csv(&path, builder);
        }
    }
    let (train_csv, test_csv) = (root.join("train.csv"), root.join("test.csv"));
    if train_csv.is_file() || test_csv.is_file() {
        for path in [train_csv, test_csv] {
            if path.is_file() {
                builder.note(format!("read {}", path.display()));
                load_csv(&path, builder)?;
            }
        }
        return Ok(());
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    if train_dir.is_dir() || test_dir.is_dir() {
        builder.note("read the image folders train/ and test/");
        for (dir, split) in [(train_dir, Split::Train), (test_dir, Split::Test)] {
            if dir.is_dir() {
                folder::add_class_folders(builder, &dir, split)?;
            }
        }
        return Ok(());
    }
    Err(spec.layout_error(format!(
        "found neither fer2013.csv, icml_face_data.csv, train.csv, test.csv nor train/ or test/ in {}",
        root.display()
    )))
}

/// Reads one FER2013-style CSV into the builder.
fn load_csv(path: &Path, builder: &mut Builder) -> Result<()> {
    let rows = read_rows(path, builder)?;
    if rows.iter().flatten().all(|row| row.emotion.is_none()) && !rows.is_empty() {
        builder.note(format!(
            "{} has no labels (no emotion column): its {} rows are counted as unlabelled",
            path.display(),
            rows.len()
        ));
    }
    for row in rows.into_iter().flatten() {
        // The competition's train.csv has no Usage column: all of it is training data;
        // its test.csv (no labels) is test data.
        let split = row.usage.unwrap_or(if row.emotion.is_some() {
            Split::Train
        } else {
            Split::Test
        });
        let origin = format!("{}:{}", path.display(), row.line);
        match row.emotion {
            Some(label) => builder.push(row.source(origin), label, split),
            None => builder.discard(split, DropReason::Unlabelled, origin),
        }
    }
    Ok(())
}

/// One parsed row of a FER2013-style CSV.
pub(super) struct Row {
    /// 1-based line in the file.
    pub line: usize,
    pub emotion: Option<Expression>,
    pub usage: Option<Split>,
    pub side: u32,
    pub pixels: Arc<[u8]>,
}

impl Row {
    pub fn source(&self, origin: String) -> ImageSource {
        ImageSource::Pixels {
            origin,
            width: self.side,
            height: self.side,
            grey: self.pixels.clone(),
        }
    }
}

/// Reads every data row of a FER2013-style CSV, in file order; rows that do not parse
/// are reported through the builder and come back as `None`, so that the row order that
/// FERPlus joins on is kept.
pub(super) fn read_rows(path: &Path, builder: &mut Builder) -> Result<Vec<Option<Row>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let pixels_column = column("pixels").ok_or_else(|| Error::Data {
        file: path.to_path_buf(),
        line: Some(1),
        message: format!(
            "no `pixels` column in the header `{}`",
            headers.iter().collect::<Vec<_>>().join(",")
        ),
    })?;
    let emotion_column = column("emotion");
    let usage_column = column("usage");
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        match parse_row(&record, pixels_column, emotion_column, usage_column) {
            Ok((emotion, usage, side, pixels)) => rows.push(Some(Row {
                line,
                emotion,
                usage,
                side,
                pixels,
            })),
            Err(reason) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                builder.bad_line(path, line, &text, &reason)?;
                rows.push(None);
            }
        }
    }
    Ok(rows)
}

type ParsedRow = (Option<Expression>, Option<Split>, u32, Arc<[u8]>);

fn parse_row(
    record: &csv::StringRecord,
    pixels_column: usize,
    emotion_column: Option<usize>,
    usage_column: Option<usize>,
) -> Result<ParsedRow, String> {
    let field = |column: usize| {
        record
            .get(column)
            .ok_or_else(|| format!("the row has {} fields, fewer than the header", record.len()))
    };
    let emotion = match emotion_column {
        None => None,
        Some(column) => {
            let code = field(column)?;
            let label = code
                .parse::<u8>()
                .ok()
                .and_then(canonical)
                .ok_or_else(|| format!("emotion '{code}' is not a FER2013 code (0-6)"))?;
            Some(label)
        }
    };
    let usage = match usage_column {
        None => None,
        Some(column) => {
            let usage = field(column)?;
            Some(usage.parse::<Split>().map_err(|_| {
                format!("Usage '{usage}' is not Training, PublicTest or PrivateTest")
            })?)
        }
    };
    let (side, pixels) = parse_pixels(field(pixels_column)?)?;
    Ok((emotion, usage, side, pixels))
}

/// Space-separated grey values of a square image.
fn parse_pixels(text: &str) -> Result<(u32, Arc<[u8]>), String> {
    let pixels = text
        .split_ascii_whitespace()
        .map(|value| {
            value
                .parse::<u8>()
                .map_err(|_| format!("pixel value '{value}' is not in 0-255"))
        })
        .collect::<Result<Vec<u8>, String>>()?;
    let side = (pixels.len() as f64).sqrt().round() as u32;
    if pixels.is_empty() || (side * side) as usize != pixels.len() {
        return Err(format!(
            "{} pixel values do not make a square image (FER2013 rows hold 2304 = 48x48)",
            pixels.len()
        ));
    }
    Ok((side, pixels.into()))
}

pub(super) fn csv_error(path: &Path, error: csv::Error) -> Error {
    let line = error.position().map(|p| p.line() as usize);
    Error::Data {
        file: path.to_path_buf(),
        line,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_canonical() {
        let expected = [
            Expression::Anger,
            Expression::Disgust,
            Expression::Fear,
            Expression::Happiness,
            Expression::Sadness,
            Expression::Surprise,
            Expression::Neutral,
        ];
        for (code, expression) in expected.into_iter().enumerate() {
            assert_eq!(canonical(code as u8), Some(expression));
        }
        assert_eq!(canonical(7), None);
    }

    #[test]
    fn pixels_must_make_a_square() {
        let (side, pixels) = parse_pixels("0 1 2 255").unwrap();
        assert_eq!((side, &pixels[..]), (2, &[0u8, 1, 2, 255][..]));
        assert!(parse_pixels("0 1 2")
            .unwrap_err()
            .contains("3 pixel values"));
        assert!(parse_pixels("0 1 2 256").unwrap_err().contains("'256'"));
        assert!(parse_pixels("").is_err());
    }
}
