//! RAF-DB basic: `EmoLabel/list_patition_label.txt` (sic; `list_partition_label.txt` is
//! accepted too) lists `train_00001.jpg 5`; codes 1 Surprise .. 7 Neutral are the
//! canonical order plus one. The split is the name's prefix. Images are the aligned
//! 100x100 crops `Image/aligned/<stem>_aligned.jpg`, or with `images=original` the
//! originals `Image/original/<name>`.

use super::{read_text, Builder, Label, Spec, Split};
use crate::{Expression, Result};

const LABEL_FILES: [&str; 2] = ["list_patition_label.txt", "list_partition_label.txt"];

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    let label_file = LABEL_FILES
        .iter()
        .map(|name| root.join("EmoLabel").join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            spec.layout_error(format!(
                "no EmoLabel/{} under {}",
                LABEL_FILES[0],
                root.display()
            ))
        })?;
    let originals = match spec.option("images").unwrap_or("aligned") {
        "aligned" => false,
        "original" => true,
        other => {
            return Err(spec.error(format!(
                "images={other}: expected images=aligned or images=original"
            )))
        }
    };
    for (index, line) in read_text(&label_file)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok((name, split, label)) => {
                let path = if originals {
                    root.join("Image").join("original").join(name)
                } else {
                    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
                    root.join("Image")
                        .join("aligned")
                        .join(format!("{stem}_aligned.jpg"))
                };
                builder.file(path, None, Label::Class(label), split);
            }
            Err(reason) => builder.bad_line(&label_file, index + 1, line, &reason)?,
        }
    }
    Ok(())
}

/// `train_00001.jpg 5` -> (name, split, canonical label).
fn parse_line(line: &str) -> Result<(&str, Split, Expression), String> {
    let mut fields = line.split_whitespace();
    let (Some(name), Some(code), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected `IMAGE_NAME LABEL`".into());
    };
    let split = if name.starts_with("train_") {
        Split::Train
    } else if name.starts_with("test_") {
        Split::Test
    } else {
        return Err(format!(
            "image name '{name}' starts with neither train_ nor test_"
        ));
    };
    let code: usize = code
        .parse()
        .map_err(|_| format!("label '{code}' is not a whole number"))?;
    Ok((name, split, canonical(code)?))
}

/// RAF-DB basic codes 1..=7 are the canonical order shifted by one.
fn canonical(code: usize) -> Result<Expression, String> {
    code.checked_sub(1)
        .and_then(Expression::from_index)
        .ok_or_else(|| format!("label {code} is not a RAF-DB basic code (1-7)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_canonical() {
        let expected = [
            (1, Expression::Surprise),
            (2, Expression::Fear),
            (3, Expression::Disgust),
            (4, Expression::Happiness),
            (5, Expression::Sadness),
            (6, Expression::Anger),
            (7, Expression::Neutral),
        ];
        for (code, expression) in expected {
            assert_eq!(canonical(code), Ok(expression));
        }
        assert!(canonical(0).is_err());
        assert!(canonical(8).is_err());
    }

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse_line("test_0001.jpg 5\r"),
            Ok(("test_0001.jpg", Split::Test, Expression::Sadness))
        );
        assert!(parse_line("train_00001.jpg").is_err());
        assert!(parse_line("val_00001.jpg 3").is_err());
        assert!(parse_line("train_00001.jpg five").is_err());
    }
}
