//! The one label enum. Every loader maps its native codes to this canonical order,
//! which is RAF-DB's (and the order of CAFE's classifier outputs).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A basic facial expression, in RAF-DB's canonical order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expression {
    Surprise = 0,
    Fear = 1,
    Disgust = 2,
    Happiness = 3,
    Sadness = 4,
    Anger = 5,
    Neutral = 6,
}

impl Expression {
    /// All classes, indexed by their canonical index.
    pub const ALL: [Expression; 7] = [
        Expression::Surprise,
        Expression::Fear,
        Expression::Disgust,
        Expression::Happiness,
        Expression::Sadness,
        Expression::Anger,
        Expression::Neutral,
    ];
    pub const COUNT: usize = 7;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: usize) -> Option<Expression> {
        Self::ALL.get(index).copied()
    }

    /// Lower-case canonical name, as used in JSON keys and reports.
    pub fn name(self) -> &'static str {
        match self {
            Expression::Surprise => "surprise",
            Expression::Fear => "fear",
            Expression::Disgust => "disgust",
            Expression::Happiness => "happiness",
            Expression::Sadness => "sadness",
            Expression::Anger => "anger",
            Expression::Neutral => "neutral",
        }
    }

    /// Canonical names in index order.
    pub fn names() -> Vec<String> {
        Self::ALL.iter().map(|e| e.name().to_string()).collect()
    }

    /// Parses the names and synonyms that data sets use for class folders and labels
    /// (`Angry`, `happy`, `sad`, `surprised`, ...), case-insensitively. Contempt and
    /// non-expression names return `None`.
    pub fn from_name(name: &str) -> Option<Expression> {
        let lower = name.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "surprise" | "surprised" | "su" => Expression::Surprise,
            "fear" | "fearful" | "afraid" | "scared" | "fe" | "af" => Expression::Fear,
            "disgust" | "disgusted" | "di" => Expression::Disgust,
            "happiness" | "happy" | "joy" | "ha" => Expression::Happiness,
            "sadness" | "sad" | "sa" => Expression::Sadness,
            "anger" | "angry" | "an" => Expression::Anger,
            "neutral" | "ne" => Expression::Neutral,
            _ => return None,
        })
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Expression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::from_name(s).ok_or_else(|| {
            format!(
                "unknown expression '{s}' (expected one of: {})",
                Expression::names().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_is_rafdb() {
        let names: Vec<_> = Expression::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "surprise",
                "fear",
                "disgust",
                "happiness",
                "sadness",
                "anger",
                "neutral"
            ]
        );
        for (i, e) in Expression::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(Expression::from_index(i), Some(*e));
        }
        assert_eq!(Expression::from_index(7), None);
    }

    #[test]
    fn folder_names_parse() {
        assert_eq!(Expression::from_name("Angry"), Some(Expression::Anger));
        assert_eq!(Expression::from_name("happy"), Some(Expression::Happiness));
        assert_eq!(
            Expression::from_name(" Surprise "),
            Some(Expression::Surprise)
        );
        assert_eq!(Expression::from_name("contempt"), None);
        assert!("nope".parse::<Expression>().is_err());
    }
}
