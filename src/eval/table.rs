//! The cross-domain accuracy table: methods x sources x targets, with the mean over all
//! targets and over the unseen ones (targets other than the source), in Markdown, CSV and
//! JSON, optionally beside the paper's published numbers.

use serde::{Deserialize, Serialize};

/// One trained model (method, source) evaluated on every target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableRow {
    pub method: String,
    pub source: String,
    /// Accuracy in [0,1] per target, in the table's target order.
    pub accuracy: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyTable {
    pub targets: Vec<String>,
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
    pub fn mean(&self) -> f64 {
        mean(&self.accuracy)
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

    /// Markdown; with `reference`, each cell also shows the paper's number and our
    /// difference when the source and target are data sets the paper used.
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
            for (t, a) in self.targets.iter().zip(&row.accuracy) {
                let ours = 100.0 * a;
                match paper_accuracy(spec_kind(&row.source), spec_kind(t)).filter(|_| reference) {
                    Some(p) => {
                        out.push_str(&format!(" {ours:.2} (paper {p:.2}, {:+.2}) |", ours - p))
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
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("method,source");
        for t in &self.targets {
            out.push_str(&format!(",{}", csv_field(t)));
        }
        out.push_str(",mean,unseen_mean\n");
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
                ",{:.4},{:.4}\n",
                100.0 * row.mean(),
                100.0 * self.unseen_mean(row)
            ));
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

    fn table() -> AccuracyTable {
        AccuracyTable {
            targets: vec!["rafdb".into(), "ferplus".into(), "x,y".into()],
            rows: vec![TableRow {
                method: "cafe".into(),
                source: "rafdb".into(),
                accuracy: vec![0.9, 0.7, 0.5],
            }],
        }
    }

    #[test]
    fn means_over_all_and_unseen_targets() {
        let t = table();
        assert!((t.rows[0].mean() - 0.7).abs() < 1e-12);
        assert!((t.unseen_mean(&t.rows[0]) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn markdown_shows_the_paper_beside_ours() {
        let md = table().markdown(true);
        assert!(md.contains("90.00 (paper 88.72, +1.28)"), "{md}");
        assert!(md.contains("| 50.00 |"), "{md}");
        assert!(!table().markdown(false).contains("paper"));
    }

    #[test]
    fn csv_quotes_fields() {
        let csv = table().csv();
        assert!(
            csv.starts_with("method,source,rafdb,ferplus,\"x,y\",mean,unseen_mean\n"),
            "{csv}"
        );
        assert!(
            csv.contains("cafe,rafdb,90.0000,70.0000,50.0000,70.0000,60.0000"),
            "{csv}"
        );
    }

    #[test]
    fn paper_numbers_are_table_1() {
        assert_eq!(paper_accuracy("rafdb", "mma"), Some(56.80));
        assert_eq!(paper_accuracy("sfew", "sfew"), Some(53.79));
        assert_eq!(paper_accuracy("ckplus", "rafdb"), None);
        assert_eq!(spec_kind("affectnet:/data/a:split=val"), "affectnet");
    }
}
