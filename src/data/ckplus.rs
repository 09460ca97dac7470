//! CK+: frames `cohn-kanade-images/S005/001/S005_001_00000001.png`; a labelled sequence
//! has `Emotion/S005/001/S005_001_00000011_emotion.txt` holding one float code
//! (`   3.0000000e+00`) for the frame it names, the last (apex) frame of the sequence.
//! With `neutral=first` each labelled sequence's first frame is added as neutral.
//! CK+ has no official split: everything goes to `train`, or to `unsplit=val|test`.
//!
//! Codes 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness,
//! 7 surprise; contempt is dropped.

use super::{folder, is_image_file, read_text, sorted_entries, Builder, DropReason, Label, Spec};
use crate::{Expression, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// CK+ code -> label.
pub(super) fn label(code: u8) -> Option<Label> {
    Some(match code {
        0 => Label::Class(Expression::Neutral),
        1 => Label::Class(Expression::Anger),
        2 => Label::Drop(DropReason::Contempt),
        3 => Label::Class(Expression::Disgust),
        4 => Label::Class(Expression::Fear),
        5 => Label::Class(Expression::Happiness),
        6 => Label::Class(Expression::Sadness),
        7 => Label::Class(Expression::Surprise),
        _ => return None,
    })
}

const LABEL_SUFFIX: &str = "_emotion.txt";

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    let (frames, emotions) = (root.join("cohn-kanade-images"), root.join("Emotion"));
    if !frames.is_dir() || !emotions.is_dir() {
        return Err(spec.layout_error(format!(
            "{} needs both cohn-kanade-images/ and Emotion/",
            root.display()
        )));
    }
    let split = folder::unsplit(spec)?;
    builder.note(format!(
        "CK+ has no official split: every image is in the {split} split"
    ));
    let neutral_first = match spec.option("neutral") {
        None | Some("none") => false,
        Some("first") => true,
        Some(other) => {
            return Err(spec.error(format!(
                "neutral={other}: expected neutral=first or neutral=none"
            )))
        }
    };
    let mut labelled = BTreeSet::new();
    for (subject, sequence) in sequences(&emotions)? {
        let label_dir = emotions.join(&subject).join(&sequence);
        let Some(label_file) = sorted_entries(&label_dir)?.into_iter().find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(LABEL_SUFFIX))
        }) else {
            continue;
        };
        labelled.insert((subject.clone(), sequence.clone()));
        let frame_dir = frames.join(&subject).join(&sequence);
        let text = read_text(&label_file)?;
        let code = match parse_code(&text) {
            Ok(code) => code,
            Err(reason) => {
                builder.bad_line(&label_file, 1, text.trim(), &reason)?;
                continue;
            }
        };
        let name = label_file.file_name().unwrap_or_default().to_string_lossy();
        let apex = frame_dir.join(format!("{}.png", &name[..name.len() - LABEL_SUFFIX.len()]));
        builder.file(apex.clone(), None, code, split);
        if neutral_first {
            if let Some(first) = first_frame(&frame_dir)?.filter(|first| *first != apex) {
                builder.file(first, None, Label::Class(Expression::Neutral), split);
            }
        }
    }
    for (subject, sequence) in sequences(&frames)? {
        if !labelled.contains(&(subject.clone(), sequence.clone())) {
            let what = frames.join(&subject).join(&sequence).display().to_string();
            builder.discard(split, DropReason::Unlabelled, what);
        }
    }
    Ok(())
}

/// `(subject, sequence)` folder names under `dir`, sorted.
fn sequences(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for subject in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        for sequence in sorted_entries(&subject)?.into_iter().filter(|p| p.is_dir()) {
            found.push((file_name(&subject), file_name(&sequence)));
        }
    }
    Ok(found)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn first_frame(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(sorted_entries(dir)?.into_iter().find(|p| is_image_file(p)))
}

/// `   3.0000000e+00` -> the label of code 3.
fn parse_code(text: &str) -> Result<Label, String> {
    let text = text.trim();
    let value: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if value.fract() != 0.0 || !(0.0..=7.0).contains(&value) {
        return Err(format!("{value} is not a CK+ code (0-7)"));
    }
    label(value as u8).ok_or_else(|| format!("{value} is not a CK+ code (0-7)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_codes_map_to_canonical() {
        let expected = [
            ("   0.0000000e+00\n", Expression::Neutral),
            ("   1.0000000e+00\n", Expression::Anger),
            ("   3.0000000e+00\n", Expression::Disgust),
            ("   4.0000000e+00\n", Expression::Fear),
            ("   5.0000000e+00\n", Expression::Happiness),
            ("   6.0000000e+00\n", Expression::Sadness),
            ("   7.0000000e+00\n", Expression::Surprise),
        ];
        for (text, expression) in expected {
            assert_eq!(parse_code(text), Ok(Label::Class(expression)));
        }
        assert_eq!(
            parse_code("   2.0000000e+00"),
            Ok(Label::Drop(DropReason::Contempt))
        );
        assert!(parse_code("2.5").is_err());
        assert!(parse_code("8.0").is_err());
        assert!(parse_code("happy").is_err());
    }
}
