//! AffectNet, in either release.
//! - Original: `training.csv` / `validation.csv` (in DIR or DIR/Manually_Annotated_file_lists/)
//!   with columns `subDirectory_filePath,face_x,face_y,face_width,face_height,
//!   facial_landmarks,expression,valence,arousal`; some copies of `validation.csv` have
//!   no header row. Paths are relative to `Manually_Annotated_Images/`; the faces are not
//!   cropped, so each sample carries its face box.
//! - Newer: `train_set|val_set/images/<id>.jpg` with `annotations/<id>_exp.npy` holding
//!   the code as a scalar (a number or a numeric string); faces are pre-cropped.
//!
//! Codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt,
//! 8 None, 9 Uncertain, 10 Non-Face; 7-10 are dropped.

use super::fer2013::csv_error;
use super::{is_image_file, sorted_entries, Builder, CropBox, DropReason, Label, Spec, Split};
use crate::{Error, Expression, Result};
use std::path::{Path, PathBuf};

/// AffectNet code -> label.
pub(super) fn label(code: u8) -> Option<Label> {
    Some(match code {
        0 => Label::Class(Expression::Neutral),
        1 => Label::Class(Expression::Happiness),
        2 => Label::Class(Expression::Sadness),
        3 => Label::Class(Expression::Surprise),
        4 => Label::Class(Expression::Fear),
        5 => Label::Class(Expression::Disgust),
        6 => Label::Class(Expression::Anger),
        7 => Label::Drop(DropReason::Contempt),
        8 => Label::Drop(DropReason::NotAnExpression("none")),
        9 => Label::Drop(DropReason::NotAnExpression("uncertain")),
        10 => Label::Drop(DropReason::NotAnExpression("not a face")),
        _ => return None,
    })
}

const CSV_FILES: [(&str, Split); 2] = [
    ("training.csv", Split::Train),
    ("validation.csv", Split::Val),
];
const SET_FOLDERS: [(&str, Split); 3] = [
    ("train_set", Split::Train),
    ("val_set", Split::Val),
    ("test_set", Split::Test),
];
/// Header names of the original CSVs, and their order in header-less copies.
const COLUMNS: [&str; 7] = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
];

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    let list_dirs = [root.clone(), root.join("Manually_Annotated_file_lists")];
    let csvs: Vec<(PathBuf, Split)> = CSV_FILES
        .iter()
        .filter_map(|(name, split)| {
            list_dirs
                .iter()
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
                .map(|path| (path, *split))
        })
        .collect();
    if !csvs.is_empty() {
        let images = root.join("Manually_Annotated_Images");
        if !images.is_dir() {
            return Err(spec.layout_error(format!(
                "{} lists images relative to Manually_Annotated_Images/, which is not in {}",
                csvs[0].0.display(),
                root.display()
            )));
        }
        for (path, split) in csvs {
            if builder.wants(split) {
                load_csv(&path, &images, split, builder)?;
            }
        }
        return Ok(());
    }
    let sets: Vec<(PathBuf, Split)> = SET_FOLDERS
        .iter()
        .map(|(name, split)| (root.join(name), *split))
        .filter(|(dir, _)| dir.join("images").is_dir())
        .collect();
    if sets.is_empty() {
        return Err(spec.layout_error(format!(
            "found neither training.csv/validation.csv nor train_set|val_set/images in {}",
            root.display()
        )));
    }
    builder.note("read the train_set|val_set release (images + annotations/*_exp.npy)");
    for (dir, split) in sets {
        if builder.wants(split) {
            load_set(&dir, split, builder)?;
        }
    }
    Ok(())
}

fn load_csv(path: &Path, images: &Path, split: Split, builder: &mut Builder) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut columns: [usize; 7] = [0, 1, 2, 3, 4, 5, 6];
    let mut first = true;
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if std::mem::take(&mut first) {
            if record.get(0) == Some(COLUMNS[0]) {
                for (slot, name) in columns.iter_mut().zip(COLUMNS) {
                    *slot = record
                        .iter()
                        .position(|h| h == name)
                        .ok_or_else(|| Error::Data {
                            file: path.to_path_buf(),
                            line: Some(line),
                            message: format!("no `{name}` column in the header"),
                        })?;
                }
                continue;
            }
            builder.note(format!(
                "{} has no header row: columns read in the original order",
                path.display()
            ));
        }
        match parse_row(&record, &columns) {
            Ok((relative, crop, label)) => {
                builder.file(images.join(relative), Some(crop), label, split)
            }
            Err(reason) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                builder.bad_line(path, line, &text, &reason)?;
            }
        }
    }
    Ok(())
}

fn parse_row(
    record: &csv::StringRecord,
    columns: &[usize; 7],
) -> Result<(String, CropBox, Label), String> {
    let field = |index: usize| {
        record.get(columns[index]).ok_or_else(|| {
            format!(
                "the row has {} fields; `{}` is missing",
                record.len(),
                COLUMNS[index]
            )
        })
    };
    let number = |index: usize| -> Result<f64, String> {
        let text = field(index)?;
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{} '{text}' is not a number", COLUMNS[index]))
    };
    let relative = field(0)?;
    if relative.is_empty() {
        return Err("empty image path".into());
    }
    let (x, y, width, height) = (number(1)?, number(2)?, number(3)?, number(4)?);
    if width < 1.0 || height < 1.0 {
        return Err(format!("face box {width}x{height} is empty"));
    }
    let crop = CropBox {
        x: x.round() as i64,
        y: y.round() as i64,
        width: width.round() as u32,
        height: height.round() as u32,
    };
    let code = field(6)?;
    let label = code
        .parse::<u8>()
        .ok()
        .and_then(label)
        .ok_or_else(|| format!("expression '{code}' is not an AffectNet code (0-10)"))?;
    Ok((relative.to_string(), crop, label))
}

/// One `*_set/` folder of the newer release.
fn load_set(dir: &Path, split: Split, builder: &mut Builder) -> Result<()> {
    let annotations = dir.join("annotations");
    for image in sorted_entries(&dir.join("images"))? {
        if !is_image_file(&image) {
            continue;
        }
        let id = image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label_file = annotations.join(format!("{id}_exp.npy"));
        if !label_file.is_file() {
            builder.discard(split, DropReason::Unlabelled, image.display().to_string());
            continue;
        }
        match read_code(&label_file) {
            Ok(code) => match label(code) {
                Some(label) => builder.file(image, None, label, split),
                None => {
                    let reason = format!("expression {code} is not an AffectNet code (0-10)");
                    builder.bad_line(&label_file, 1, &code.to_string(), &reason)?
                }
            },
            Err(reason) => builder.bad_line(&label_file, 1, "", &reason)?,
        }
    }
    Ok(())
}

/// The expression code in an `_exp.npy`: one integer, float or numeric string.
fn read_code(path: &Path) -> Result<u8, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("not a .npy file: {e}"))?;
    if file.len() != 1 {
        return Err(format!("holds {} values, expected one", file.len()));
    }
    let npyz::DType::Plain(type_str) = file.dtype() else {
        return Err(format!("unexpected dtype {:?}", file.dtype()));
    };
    let read_error = |e: std::io::Error| format!("{type_str}: {e}");
    use npyz::TypeChar;
    let value: f64 = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::UnicodeStr | TypeChar::ByteStr, _) => {
            let text: Vec<String> = file.into_vec().map_err(read_error)?;
            let text = text[0].trim().to_string();
            text.parse()
                .map_err(|_| format!("'{text}' is not a number"))?
        }
        (TypeChar::Int, 1) => file.into_vec::<i8>().map_err(read_error)?[0] as f64,
        (TypeChar::Int, 2) => file.into_vec::<i16>().map_err(read_error)?[0] as f64,
        (TypeChar::Int, 4) => file.into_vec::<i32>().map_err(read_error)?[0] as f64,
        (TypeChar::Int, 8) => file.into_vec::<i64>().map_err(read_error)?[0] as f64,
        (TypeChar::Uint, 1) => file.into_vec::<u8>().map_err(read_error)?[0] as f64,
        (TypeChar::Uint, 2) => file.into_vec::<u16>().map_err(read_error)?[0] as f64,
        (TypeChar::Uint, 4) => file.into_vec::<u32>().map_err(read_error)?[0] as f64,
        (TypeChar::Uint, 8) => file.into_vec::<u64>().map_err(read_error)?[0] as f64,
        (TypeChar::Float, 4) => file.into_vec::<f32>().map_err(read_error)?[0] as f64,
        (TypeChar::Float, 8) => file.into_vec::<f64>().map_err(read_error)?[0],
        _ => return Err(format!("dtype {type_str} is not a number or string")),
    };
    if value.fract() != 0.0 || !(0.0..=255.0).contains(&value) {
        return Err(format!("{value} is not a whole expression code"));
    }
    Ok(value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_canonical() {
        let expected = [
            Expression::Neutral,
            Expression::Happiness,
            Expression::Sadness,
            Expression::Surprise,
            Expression::Fear,
            Expression::Disgust,
            Expression::Anger,
        ];
        for (code, expression) in expected.into_iter().enumerate() {
            assert_eq!(label(code as u8), Some(Label::Class(expression)));
        }
        assert_eq!(label(7), Some(Label::Drop(DropReason::Contempt)));
        for code in 8..=10 {
            assert!(matches!(
                label(code),
                Some(Label::Drop(DropReason::NotAnExpression(_)))
            ));
        }
        assert_eq!(label(11), None);
    }
}
