//! The files of the table's cells: `cells/<variant>/<source>__<target>.json` (the
//! metrics) and `.png` (the confusion matrix), and each cell's section of
//! `per_class.md`.

use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::report::confusion_image;
use crate::experiments::protocol::NamedDataset;
use crate::formats::write_file_atomically;
use serde::Serialize;
use std::path::Path;

/// One cell of the table, as written to its JSON file.
#[derive(Serialize)]
struct Cell<'a> {
    method: &'a str,
    source: &'a NamedDataset,
    target: &'a NamedDataset,
    split: String,
    metrics: &'a Metrics,
}

/// Writes a cell's JSON and confusion image into `cells_dir` and returns its section of
/// `per_class.md`.
pub fn write_cell(
    cells_dir: &Path,
    label: &str,
    source: &NamedDataset,
    target: &NamedDataset,
    split: &str,
    metrics: &Metrics,
) -> Result<String> {
    let cell_name = format!("{}__{}", source.name, target.name);
    let json = serde_json::to_vec_pretty(&Cell {
        method: label,
        source,
        target,
        split: split.to_string(),
        metrics,
    })
    .map_err(|e| Error::internal(format!("cell {cell_name}: {e}")))?;
    write_file_atomically(&cells_dir.join(format!("{cell_name}.json")), &json)?;
    let title = format!("{label}: {} -> {} ({split})", source.name, target.name);
    let png = confusion_image(metrics, &title);
    crate::image::save(&png, &cells_dir.join(format!("{cell_name}.png")))?;
    Ok(format!("## {title}\n\n{}\n", per_class_markdown(metrics)))
}

fn per_class_markdown(metrics: &Metrics) -> String {
    let classes = &metrics.confusion.classes;
    let support = metrics.confusion.support();
    let mut out = String::from("| class | accuracy | images |\n|---|---:|---:|\n");
    for (i, class) in classes.iter().enumerate() {
        let acc = metrics.per_class_accuracy[i]
            .map(|a| format!("{:.2}", 100.0 * a))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!("| {class} | {acc} | {} |\n", support[i]));
    }
    out.push_str(&format!(
        "| **all** | **{:.2}** (macro-F1 {:.2}) | {} |\n",
        100.0 * metrics.accuracy,
        100.0 * metrics.macro_f1,
        metrics.total
    ));
    out
}
