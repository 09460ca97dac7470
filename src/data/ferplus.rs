//! FERPlus: ten annotators' votes per FER2013 image, in one of two layouts.
//! - `fer2013new.csv` (`Usage,Image name,neutral,happiness,surprise,sadness,anger,
//!   disgust,fear,contempt,unknown,NF`) joined ROW BY ROW to `fer2013.csv`: the number
//!   in `ferNNNNNNN.png` is not the row index. An empty `Image name` means FERPlus
//!   dropped that image.
//! - The generated folders `FER2013Train|FER2013Valid|FER2013Test/` with PNGs and a
//!   header-less `label.csv`: `fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0`.
//!
//! Labels are the usual majority vote: votes of 1 or less are dropped; the arg-max wins
//! if it has more than half of the remaining votes, otherwise the image is unlabelled;
//! images won by contempt, unknown or NF are dropped.

use super::fer2013::{csv_error, read_rows};
use super::{Builder, DropReason, Label, Spec, Split};
use crate::{Error, Expression, Result};
use std::path::{Path, PathBuf};

/// The vote columns, in FERPlus order.
const VOTE_COLUMNS: [&str; 10] = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
];

/// The generated folders and their splits.
const FOLDERS: [(&str, Split); 3] = [
    ("FER2013Train", Split::Train),
    ("FER2013Valid", Split::Val),
    ("FER2013Test", Split::Test),
];

/// The majority label of ten votes in [`VOTE_COLUMNS`] order.
pub(super) fn majority(votes: [u32; 10]) -> Label {
    let kept = votes.map(|v| if v <= 1 { 0 } else { v });
    let total: u32 = kept.iter().sum();
    // A tie can never hold more than half the votes, so which maximum is taken does
    // not matter.
    let (winner, &most) = kept
        .iter()
        .enumerate()
        .max_by_key(|(_, &v)| v)
        .unwrap_or((0, &0));
    if total == 0 || 2 * most <= total {
        return Label::Drop(DropReason::NoMajority);
    }
    match winner {
        0 => Label::Class(Expression::Neutral),
        1 => Label::Class(Expression::Happiness),
        2 => Label::Class(Expression::Surprise),
        3 => Label::Class(Expression::Sadness),
        4 => Label::Class(Expression::Anger),
        5 => Label::Class(Expression::Disgust),
        6 => Label::Class(Expression::Fear),
        7 => Label::Drop(DropReason::Contempt),
        8 => Label::Drop(DropReason::NotAnExpression("unknown")),
        _ => Label::Drop(DropReason::NotAnExpression("not a face")),
    }
}

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    let votes_file = if root.is_file() {
        root.clone()
    } else {
        root.join("fer2013new.csv")
    };
    if votes_file.is_file() {
        let folder = votes_file.parent().unwrap_or(Path::new("."));
        let pixels_file = match spec.option("fer2013") {
            Some(path) => folder.join(path),
            None => folder.join("fer2013.csv"),
        };
        if !pixels_file.is_file() {
            return Err(spec.layout_error(format!(
                "{} needs FER2013's pixels, but {} does not exist",
                votes_file.display(),
                pixels_file.display()
            )));
        }
        return load_joined(&votes_file, &pixels_file, builder);
    }
    let folders: Vec<(PathBuf, Split)> = FOLDERS
        .iter()
        .map(|(name, split)| (root.join(name), *split))
        .filter(|(dir, _)| dir.join("label.csv").is_file())
        .collect();
    if folders.is_empty() {
        return Err(spec.layout_error(format!(
            "found neither fer2013new.csv nor FER2013Train|Valid|Test/label.csv in {}",
            root.display()
        )));
    }
    builder.note("read the generated FER2013Train|Valid|Test folders");
    for (dir, split) in folders {
        if builder.wants(split) {
            load_folder(&dir, split, builder)?;
        }
    }
    Ok(())
}

/// `fer2013new.csv` joined row by row with `fer2013.csv`.
fn load_joined(votes_file: &Path, pixels_file: &Path, builder: &mut Builder) -> Result<()> {
    builder.note(format!(
        "joined {} row by row with {}",
        votes_file.display(),
        pixels_file.display()
    ));
    let pixel_rows = read_rows(pixels_file, builder)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(votes_file)
        .map_err(|e| csv_error(votes_file, e))?;
    let headers = reader
        .headers()
        .map_err(|e| csv_error(votes_file, e))?
        .clone();
    let (usage_column, name_column, vote_columns) = vote_file_columns(&headers, votes_file)?;

    let mut rows = 0;
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(votes_file, e))?;
        rows += 1;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let parsed = parse_votes(&record, usage_column, name_column, &vote_columns);
        let (usage, name, votes) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                builder.bad_line(votes_file, line, &text, &reason)?;
                continue;
            }
        };
        let origin = format!("{}:{line} ({name})", votes_file.display());
        if name.is_empty() {
            builder.discard(usage, DropReason::NoImageName, origin);
            continue;
        }
        // A pixel row that did not parse was already reported.
        let Some(Some(pixels)) = pixel_rows.get(index) else {
            continue;
        };
        if pixels.usage.is_some_and(|u| u != usage) {
            let text = record.iter().collect::<Vec<_>>().join(",");
            let reason = format!(
                "Usage {usage} differs from {}:{}'s {}: the files are joined row by row, so \
                 they must come from the same release",
                pixels_file.display(),
                pixels.line,
                pixels.usage.map_or("?", |u| u.name())
            );
            builder.bad_line(votes_file, line, &text, &reason)?;
            continue;
        }
        match majority(votes) {
            Label::Class(label) => builder.push(pixels.source(origin), label, usage),
            Label::Drop(reason) => builder.discard(usage, reason, origin),
        }
    }
    if rows != pixel_rows.len() {
        return Err(Error::Data {
            file: votes_file.to_path_buf(),
            line: None,
            message: format!(
                "{rows} rows, but {} has {}: the files are joined row by row, so they must \
                 come from the same release",
                pixels_file.display(),
                pixel_rows.len()
            ),
        });
    }
    Ok(())
}

/// The columns of `fer2013new.csv`: `Usage`, `Image name` and the ten vote counts.
fn vote_file_columns(
    headers: &csv::StringRecord,
    votes_file: &Path,
) -> Result<(usize, usize, [usize; 10])> {
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::Data {
                file: votes_file.to_path_buf(),
                line: Some(1),
                message: format!(
                    "no `{name}` column in the header `{}`",
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            })
    };
    let mut vote_columns = [0; 10];
    for (slot, name) in vote_columns.iter_mut().zip(VOTE_COLUMNS) {
        *slot = column(name)?;
    }
    Ok((column("Usage")?, column("Image name")?, vote_columns))
}

fn parse_votes(
    record: &csv::StringRecord,
    usage_column: usize,
    name_column: usize,
    vote_columns: &[usize; 10],
) -> Result<(Split, String, [u32; 10]), String> {
    let field = |column: usize| {
        record
            .get(column)
            .ok_or_else(|| format!("the row has {} fields, fewer than the header", record.len()))
    };
    let usage = field(usage_column)?;
    let usage: Split = usage
        .parse()
        .map_err(|_| format!("Usage '{usage}' is not Training, PublicTest or PrivateTest"))?;
    let name = field(name_column)?.to_string();
    let mut votes = [0; 10];
    for (vote, &column) in votes.iter_mut().zip(vote_columns) {
        *vote = parse_vote(field(column)?)?;
    }
    Ok((usage, name, votes))
}

fn parse_vote(text: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| format!("vote count '{text}' is not a whole number"))
}

/// One generated folder: `label.csv` rows `name,"(x, y, w, h)",v1,...,v10`.
fn load_folder(dir: &Path, split: Split, builder: &mut Builder) -> Result<()> {
    let label_file = dir.join("label.csv");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(&label_file)
        .map_err(|e| csv_error(&label_file, e))?;
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&label_file, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let parsed = parse_folder_row(&record);
        let (name, votes) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                builder.bad_line(&label_file, line, &text, &reason)?;
                continue;
            }
        };
        if name.is_empty() {
            let origin = format!("{}:{line}", label_file.display());
            builder.discard(split, DropReason::NoImageName, origin);
            continue;
        }
        builder.file(dir.join(&name), None, majority(votes), split);
    }
    Ok(())
}

/// `name,"(x, y, w, h)",v1,...,v10` -> (name, votes).
fn parse_folder_row(record: &csv::StringRecord) -> Result<(String, [u32; 10]), String> {
    if record.len() != 12 {
        return Err(format!(
            "expected 12 fields (name, box, 10 votes), found {}",
            record.len()
        ));
    }
    let mut votes = [0; 10];
    for (vote, text) in votes.iter_mut().zip(record.iter().skip(2)) {
        *vote = parse_vote(text)?;
    }
    Ok((record[0].to_string(), votes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_vote() {
        let class = |e| Label::Class(e);
        assert_eq!(
            majority([10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            class(Expression::Neutral)
        );
        // Ones are dropped first: 5 of the remaining 5 votes.
        assert_eq!(
            majority([5, 1, 1, 1, 1, 1, 0, 0, 0, 0]),
            class(Expression::Neutral)
        );
        // Exactly half is not a majority.
        assert_eq!(
            majority([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),
            Label::Drop(DropReason::NoMajority)
        );
        assert_eq!(
            majority([4, 0, 3, 0, 0, 0, 0, 0, 0, 3]),
            Label::Drop(DropReason::NoMajority)
        );
        assert_eq!(
            majority([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            Label::Drop(DropReason::NoMajority)
        );
        assert_eq!(
            majority([2, 0, 0, 0, 5, 2, 1, 0, 0, 0]),
            class(Expression::Anger)
        );
        assert_eq!(
            majority([0, 0, 0, 0, 0, 7, 3, 0, 0, 0]),
            class(Expression::Disgust)
        );
        assert_eq!(
            majority([0, 0, 0, 0, 0, 3, 7, 0, 0, 0]),
            class(Expression::Fear)
        );
        assert_eq!(
            majority([0, 0, 8, 0, 0, 0, 2, 0, 0, 0]),
            class(Expression::Surprise)
        );
        assert_eq!(
            majority([0, 0, 0, 7, 0, 3, 0, 0, 0, 0]),
            class(Expression::Sadness)
        );
        assert_eq!(
            majority([0, 9, 0, 0, 0, 0, 0, 0, 0, 1]),
            class(Expression::Happiness)
        );
        assert_eq!(
            majority([0, 0, 0, 0, 0, 0, 0, 6, 4, 0]),
            Label::Drop(DropReason::Contempt)
        );
        assert_eq!(
            majority([0, 0, 0, 0, 0, 0, 0, 0, 9, 1]),
            Label::Drop(DropReason::NotAnExpression("unknown"))
        );
        assert_eq!(
            majority([0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),
            Label::Drop(DropReason::NotAnExpression("not a face"))
        );
    }
}
