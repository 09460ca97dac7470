//! The files of the table's cells: `cells/<variant>/<source>__<target>.json` (the
//! metrics) and `.png` (the confusion matrix). They are the protocol's results: the tables
//! are merged from them ([`super::merge`]), whichever task wrote them.

use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::report::confusion_image;
use crate::experiments::protocol::{MethodVariant, NamedDataset};
use crate::formats::write_file_atomically;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One cell of the table, as written to its JSON file.
#[derive(Serialize, Deserialize)]
pub struct Cell {
    pub method: String,
    pub source: NamedDataset,
    pub target: NamedDataset,
    pub split: String,
    pub metrics: Metrics,
}

impl Cell {
    fn title(&self) -> String {
        format!(
            "{}: {} -> {} ({})",
            self.method, self.source.name, self.target.name, self.split
        )
    }

    /// The cell's section of `per_class.md`.
    pub fn per_class_section(&self) -> String {
        format!(
            "## {}\n\n{}\n",
            self.title(),
            per_class_markdown(&self.metrics)
        )
    }
}

/// Where the cell of `variant` trained on `source` and tested on `target` is written
/// under the protocol's folder `out`, without its extension.
pub fn cell_stem(out: &Path, variant: MethodVariant, source: &str, target: &str) -> PathBuf {
    out.join("cells")
        .join(variant.slug())
        .join(format!("{source}__{target}"))
}

/// Writes a cell's JSON and confusion image.
pub fn write_cell(out: &Path, variant: MethodVariant, cell: &Cell) -> Result<()> {
    let stem = cell_stem(out, variant, &cell.source.name, &cell.target.name);
    let json = serde_json::to_vec_pretty(cell)
        .map_err(|e| Error::internal(format!("cell {}: {e}", stem.display())))?;
    crate::image::save(
        &confusion_image(&cell.metrics, &cell.title()),
        &stem.with_extension("png"),
    )?;
    // The JSON last: a cell counts as done when its JSON is there.
    write_file_atomically(&stem.with_extension("json"), &json)
}

/// The cell written at `stem`, if it is there.
pub fn read_cell(stem: &Path) -> Result<Option<Cell>> {
    let path = stem.with_extension("json");
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Data {
            file: path,
            line: None,
            message: format!("not a protocol cell: {e}"),
        })
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
