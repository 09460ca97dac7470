//! Classification metrics: accuracy, per-class accuracy (recall), macro-F1, confusion.

use serde::{Deserialize, Serialize};

/// A confusion matrix: `counts[true][predicted]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

/// The metrics of one evaluation, as reported in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub total: u64,
    pub correct: u64,
    pub accuracy: f64,
    /// Recall of each class, `None` for a class with no test images.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Mean F1 over the classes that have test images or predictions.
    pub macro_f1: f64,
    pub confusion: Confusion,
}

impl Confusion {
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Confusion {
            classes,
            counts: vec![vec![0; n]; n],
        }
    }

    /// Adds one prediction; indices outside the class list are an error of the caller.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Images of each true class.
    pub fn support(&self) -> Vec<u64> {
        self.counts.iter().map(|row| row.iter().sum()).collect()
    }

    pub fn metrics(&self) -> Metrics {
        let n = self.classes.len();
        let total = self.total();
        let correct: u64 = (0..n).map(|i| self.counts[i][i]).sum();
        let support = self.support();
        let predicted: Vec<u64> = (0..n)
            .map(|j| (0..n).map(|i| self.counts[i][j]).sum())
            .collect();
        let per_class_accuracy = (0..n)
            .map(|i| (support[i] > 0).then(|| self.counts[i][i] as f64 / support[i] as f64))
            .collect();
        let f1s: Vec<f64> = (0..n)
            .filter(|&i| support[i] > 0 || predicted[i] > 0)
            .map(|i| {
                let tp = self.counts[i][i] as f64;
                // F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted).
                2.0 * tp / (support[i] + predicted[i]) as f64
            })
            .collect();
        Metrics {
            total,
            correct,
            accuracy: if total == 0 {
                0.0
            } else {
                correct as f64 / total as f64
            },
            per_class_accuracy,
            macro_f1: if f1s.is_empty() {
                0.0
            } else {
                f1s.iter().sum::<f64>() / f1s.len() as f64
            },
            confusion: self.clone(),
        }
    }
}

impl Metrics {
    /// A readable table: overall figures, then per-class recall and the confusion matrix.
    pub fn to_table(&self) -> String {
        let classes = &self.confusion.classes;
        let width = classes.iter().map(|c| c.len()).max().unwrap_or(5).max(9);
        let mut out = format!(
            "accuracy {:.2}% ({}/{}), macro-F1 {:.2}%\n\n",
            100.0 * self.accuracy,
            self.correct,
            self.total,
            100.0 * self.macro_f1
        );
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>7}\n",
            "class", "accuracy", "images"
        ));
        let support = self.confusion.support();
        for (i, class) in classes.iter().enumerate() {
            let acc = self.per_class_accuracy[i]
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "-".to_string());
            out.push_str(&format!("{class:<width$}  {acc:>8}  {:>7}\n", support[i]));
        }
        out.push_str("\nconfusion (rows: true class, columns: predicted)\n");
        out.push_str(&format!("{:<width$}", ""));
        for class in classes {
            out.push_str(&format!(" {:>5}", &class[..class.len().min(5)]));
        }
        out.push('\n');
        for (i, class) in classes.iter().enumerate() {
            out.push_str(&format!("{class:<width$}"));
            for count in &self.confusion.counts[i] {
                out.push_str(&format!(" {count:>5}"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_small_confusion() {
        let mut c = Confusion::new(vec!["a".into(), "b".into(), "c".into()]);
        // a: 3 images, 2 right, 1 called b. b: 1 image, right. c: none, but predicted once.
        c.add(0, 0);
        c.add(0, 0);
        c.add(0, 1);
        c.add(1, 1);
        c.add(1, 2);
        let m = c.metrics();
        assert_eq!((m.total, m.correct), (5, 3));
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(m.per_class_accuracy, vec![Some(2.0 / 3.0), Some(0.5), None]);
        // F1: a = 4/(3+2) = 0.8; b = 2/(2+2) = 0.5; c = 0/(0+1) = 0.
        assert!((m.macro_f1 - (0.8 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        let table = m.to_table();
        assert!(table.contains("accuracy 60.00% (3/5)"), "{table}");
    }

    #[test]
    fn empty_confusion_has_zero_accuracy() {
        let m = Confusion::new(vec!["a".into()]).metrics();
        assert_eq!(m.total, 0);
        assert_eq!(m.accuracy, 0.0);
        assert_eq!(m.per_class_accuracy, vec![None]);
    }
}
