//! A manifest CSV: rows `path,label[,split][,domain]`, with or without a header row
//! (a header names its columns, which may then come in any order). `label` is a class
//! name (`happy`, `Surprise`, ...) or a canonical index 0-6 (0 surprise .. 6 neutral);
//! contempt is dropped. `split` defaults to train; `domain` to the spec's `domain=` or
//! the CSV's file stem. Relative paths are relative to the CSV's folder. A data set whose
//! faces gfer cut has a [`super::faces::FACES_FILE`] beside its CSV, saying how.

use super::fer2013::csv_error;
use super::{Builder, DropReason, FaceCropping, Label, Spec, Split};
use crate::{Error, Expression, Result};
use std::path::Path;

const COLUMNS: [&str; 4] = ["path", "label", "split", "domain"];

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let file = &spec.path;
    if !file.is_file() {
        return Err(spec.layout_error(format!("{} is not a file", file.display())));
    }
    let folder = file.parent().unwrap_or(Path::new("."));
    builder.face_cropping = FaceCropping::read_beside(file)?;
    let default_domain = match &spec.domain {
        Some(domain) => domain.clone(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "manifest".into()),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(file)
        .map_err(|e| csv_error(file, e))?;
    // Column index of path, label, split, domain.
    let mut columns: [Option<usize>; 4] = [Some(0), Some(1), Some(2), Some(3)];
    let mut first = true;
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(file, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if std::mem::take(&mut first)
            && record
                .get(0)
                .is_some_and(|f| f.eq_ignore_ascii_case("path"))
        {
            for (slot, name) in columns.iter_mut().zip(COLUMNS) {
                *slot = record.iter().position(|h| h.eq_ignore_ascii_case(name));
            }
            if columns[1].is_none() {
                return Err(Error::Data {
                    file: file.to_path_buf(),
                    line: Some(line),
                    message: "the header has no `label` column".into(),
                });
            }
            continue;
        }
        match parse_row(&record, &columns) {
            Ok((path, label, split, domain)) => {
                let domain = match (&spec.domain, domain) {
                    (None, Some(domain)) => domain.to_string(),
                    _ => default_domain.clone(),
                };
                builder.file_in_domain(folder.join(path), None, label, split, domain);
            }
            Err(reason) => {
                let text = record.iter().collect::<Vec<_>>().join(",");
                builder.bad_line(file, line, &text, &reason)?;
            }
        }
    }
    Ok(())
}

type Row<'a> = (&'a str, Label, Split, Option<&'a str>);

fn parse_row<'a>(
    record: &'a csv::StringRecord,
    columns: &[Option<usize>; 4],
) -> Result<Row<'a>, String> {
    let field = |index: usize| {
        columns[index]
            .and_then(|column| record.get(column))
            .filter(|value| !value.is_empty())
    };
    let path = field(0).ok_or("no image path")?;
    let label_text = field(1).ok_or("no label")?;
    let label = parse_label(label_text)?;
    let split = match field(2) {
        None => Split::Train,
        Some(split) => split.parse()?,
    };
    Ok((path, label, split, field(3)))
}

/// A class name or canonical index.
fn parse_label(text: &str) -> Result<Label, String> {
    if let Ok(index) = text.parse::<usize>() {
        return Expression::from_index(index)
            .map(Label::Class)
            .ok_or_else(|| format!("label {index} is not a canonical index (0-6)"));
    }
    if text.eq_ignore_ascii_case("contempt") {
        return Ok(Label::Drop(DropReason::Contempt));
    }
    Expression::from_name(text)
        .map(Label::Class)
        .ok_or_else(|| {
            format!(
                "label '{text}' is neither a class name ({}) nor an index 0-6",
                Expression::names().join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_name_or_index() {
        assert_eq!(parse_label("0"), Ok(Label::Class(Expression::Surprise)));
        assert_eq!(parse_label("6"), Ok(Label::Class(Expression::Neutral)));
        assert_eq!(
            parse_label("Happy"),
            Ok(Label::Class(Expression::Happiness))
        );
        assert_eq!(
            parse_label("contempt"),
            Ok(Label::Drop(DropReason::Contempt))
        );
        assert!(parse_label("7").is_err());
        assert!(parse_label("smile").is_err());
    }
}
