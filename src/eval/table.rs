//! The cross-domain accuracy table: methods x sources x targets, with the mean over all
//! targets and over the unseen ones (targets other than the source), in Markdown, CSV and
//! JSON, optionally beside the paper's published numbers.
//!
//! Data sets appear under the names the user gave them (`raf=rafdb:...` is `raf`); the
//! paper's numbers are looked up by the data-set kind behind each name (`rafdb`). They
//! are CAFE's, trained with the full recipe: only a `cafe:full` row reproduces them, and
//! every other row says so beside them.

use serde::{Deserialize, Serialize};

/// The row label of the one configuration the paper's numbers are for.
pub const PAPER_RECIPE: &str = "cafe:full";

/// One trained model (method, source) evaluated on every target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableRow {
    pub method: String,
    pub source: String,
    /// The data-set kind of the source (`rafdb`, ...).
    pub source_kind: String,
    /// Accuracy in [0,1] per target, in the table's target order.
    pub accuracy: Vec<f64>,
    /// The paper's published accuracy (%) per target, `None` where it has none.
    pub paper: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyTable {
    pub targets: Vec<String>,
    /// The data-set kind of each target, in target order.
    pub target_kinds: Vec<String>,
    pub rows: Vec<TableRow>,
}

/// The paper's Table 1 (CAFE, accuracy %) for sources and targets named by data-set kind.
const PAPER: &[(&str, [f64; 5])] = &[
    ("rafdb", [88.72, 73.16, 45.86, 52.86, 56.80]),
    ("ferplus", [72.91, 89.51, 39.44, 49.38, 60.14]),
    ("affectnet", [72.69, 69.94, 64.87, 51.18, 49.65]),
    ("sfew", [54.43, 48.39, 32.24, 53.79, 36.34]),
    ("mma", [78.36, 73.57, 41.85, 49.05, 65.97]),
];
const PAPER_TARGETS: [&str; 5] = ["rafdb", "ferplus", "affectnet", "sfew", "mma"];

/// The published CAFE accuracy (%) for a source and target data-set kind, if any.
pub fn paper_accuracy(source_kind: &str, target_kind: &str) -> Option<f64> {
    let row = PAPER.iter().find(|(s, _)| *s == source_kind)?;
    let col = PAPER_TARGETS.iter().position(|t| *t == target_kind)?;
    Some(row.1[col])
}

/// The data-set kind of a spec (`rafdb:/data/x:split=test` -> `rafdb`).
pub fn spec_kind(spec: &str) -> &str {
    spec.split(':').next().unwrap_or(spec)
}

impl TableRow {
    /// A row of `method` trained on `source` (of kind `source_kind`), scored on the
    /// targets of these kinds; the paper's numbers are filled in from the kinds.
    pub fn new(
        method: String,
        source: String,
        source_kind: String,
        accuracy: Vec<f64>,
        target_kinds: &[String],
    ) -> Self {
        let paper = target_kinds
            .iter()
            .map(|target| paper_accuracy(&source_kind, target))
            .collect();
        TableRow {
            method,
            source,
            source_kind,
            accuracy,
            paper,
        }
    }

    pub fn mean(&self) -> f64 {
        mean(&self.accuracy)
    }

    /// Whether the row is the configuration the paper's numbers are for.
    pub fn reproduces_paper(&self) -> bool {
        self.method == PAPER_RECIPE
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

impl AccuracyTable {
    /// Mean over the targets that are not the row's source (same name).
    pub fn unseen_mean(&self, row: &TableRow) -> f64 {
        let unseen: Vec<f64> = self
            .targets
            .iter()
            .zip(&row.accuracy)
            .filter(|(t, _)| **t != row.source)
            .map(|(_, a)| *a)
            .collect();
        mean(&unseen)
    }

    /// Markdown; with `reference`, each cell whose source and target the paper used also
    /// shows the paper's number: with our difference in a `cafe:full` row, labelled as
    /// the paper's recipe in any other.
    pub fn markdown(&self, reference: bool) -> String {
        let mut out = String::from("| method | source |");
        for t in &self.targets {
            out.push_str(&format!(" {t} |"));
        }
        out.push_str(" mean | unseen mean |\n|---|---|");
        out.push_str(&"---:|".repeat(self.targets.len() + 2));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("| {} | {} |", row.method, row.source));
            for (a, paper) in row.accuracy.iter().zip(&row.paper) {
                let ours = 100.0 * a;
                match paper.filter(|_| reference) {
                    Some(p) if row.reproduces_paper() => {
                        out.push_str(&format!(" {ours:.2} (paper {p:.2}, {:+.2}) |", ours - p))
                    }
                    Some(p) => {
                        out.push_str(&format!(" {ours:.2} (paper, {PAPER_RECIPE}: {p:.2}) |"))
                    }
                    None => out.push_str(&format!(" {ours:.2} |")),
                }
            }
            out.push_str(&format!(
                " {:.2} | {:.2} |\n",
                100.0 * row.mean(),
                100.0 * self.unseen_mean(row)
            ));
        }
        if reference
            && self
                .rows
                .iter()
                .any(|r| r.paper.iter().any(Option::is_some))
        {
            out.push_str(&format!(
                "\npaper: CAFE's published accuracy (Table 1), trained with the full recipe \
                 (CLIP ViT-B/32, ResNet-18 mask generator, 60 epochs); only a {PAPER_RECIPE} \
                 row reproduces it.\n"
            ));
        }
        out
    }

    /// The data sets (as `name (kind)`) whose kind the paper did not use, sources first.
    pub fn unmatched_by_paper(&self) -> Vec<String> {
        let mut unmatched: Vec<String> = Vec::new();
        let sources = self.rows.iter().map(|r| (&r.source, &r.source_kind));
        for (name, kind) in sources.chain(self.targets.iter().zip(&self.target_kinds)) {
            let known = PAPER_TARGETS.contains(&kind.as_str());
            let entry = format!("{name} ({kind})");
            if !known && !unmatched.contains(&entry) {
                unmatched.push(entry);
            }
        }
        unmatched
    }

    /// CSV, accuracy in %; with `reference`, a `TARGET (paper)` column per target after
    /// the accuracies (empty where the paper has no number).
    pub fn csv(&self, reference: bool) -> String {
        let mut out = String::from("method,source");
        for t in &self.targets {
            out.push_str(&format!(",{}", csv_field(t)));
        }
        out.push_str(",mean,unseen_mean");
        if reference {
            for t in &self.targets {
                out.push_str(&format!(",{}", csv_field(&format!("{t} (paper)"))));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!(
                "{},{}",
                csv_field(&row.method),
                csv_field(&row.source)
            ));
            for a in &row.accuracy {
                out.push_str(&format!(",{:.4}", 100.0 * a));
            }
            out.push_str(&format!(
                ",{:.4},{:.4}",
                100.0 * row.mean(),
                100.0 * self.unseen_mean(row)
            ));
            if reference {
                for paper in &row.paper {
                    out.push_str(&paper.map(|p| format!(",{p:.2}")).unwrap_or(",".into()));
                }
            }
            out.push('\n');
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as `gfer protocol` builds it from labelled specs (`raf=rafdb:...`).
    fn table() -> AccuracyTable {
        let target_kinds: Vec<String> = vec!["rafdb".into(), "ferplus".into(), "folder".into()];
        let row = |method: &str| {
            TableRow::new(
                method.into(),
                "raf".into(),
                "rafdb".into(),
                vec![0.9, 0.7, 0.5],
                &target_kinds,
            )
        };
        AccuracyTable {
            targets: vec!["raf".into(), "fer+".into(), "x,y".into()],
            target_kinds: target_kinds.clone(),
            rows: vec![row("cafe:full"), row("cafe:fast")],
        }
    }

    #[test]
    fn means_over_all_and_unseen_targets() {
        let t = table();
        assert!((t.rows[0].mean() - 0.7).abs() < 1e-12);
        assert!((t.unseen_mean(&t.rows[0]) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn markdown_shows_the_paper_beside_ours_by_kind_whatever_the_label() {
        let md = table().markdown(true);
        assert!(
            md.contains("| cafe:full | raf | 90.00 (paper 88.72, +1.28) |"),
            "{md}"
        );
        assert!(md.contains("70.00 (paper 73.16, -3.16)"), "{md}");
        // Another recipe shows the paper's number as the paper's, with no difference.
        assert!(
            md.contains("| cafe:fast | raf | 90.00 (paper, cafe:full: 88.72) |"),
            "{md}"
        );
        // A target the paper did not use has no number.
        assert!(md.contains("| 50.00 |"), "{md}");
        assert!(md.contains("only a cafe:full row reproduces it"), "{md}");
        assert!(!table().markdown(false).contains("paper"));
        assert_eq!(table().unmatched_by_paper(), ["x,y (folder)"]);
    }

    #[test]
    fn json_and_csv_carry_the_paper_per_cell() {
        let json = serde_json::to_value(table()).unwrap();
        assert_eq!(
            json["rows"][0]["paper"],
            serde_json::json!([88.72, 73.16, null])
        );
        assert_eq!(json["target_kinds"][1], "ferplus");
        let csv = table().csv(true);
        assert!(
            csv.starts_with(
                "method,source,raf,fer+,\"x,y\",mean,unseen_mean,raf (paper),fer+ (paper),\"x,y (paper)\"\n"
            ),
            "{csv}"
        );
        assert!(
            csv.contains("cafe:full,raf,90.0000,70.0000,50.0000,70.0000,60.0000,88.72,73.16,\n"),
            "{csv}"
        );
        assert!(table()
            .csv(false)
            .starts_with("method,source,raf,fer+,\"x,y\",mean,unseen_mean\n"));
    }

    #[test]
    fn paper_numbers_are_table_1() {
        assert_eq!(paper_accuracy("rafdb", "mma"), Some(56.80));
        assert_eq!(paper_accuracy("sfew", "sfew"), Some(53.79));
        assert_eq!(paper_accuracy("ckplus", "rafdb"), None);
        assert_eq!(spec_kind("affectnet:/data/a:split=val"), "affectnet");
    }
}
