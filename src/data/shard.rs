//! Splitting a list of work between the tasks of a job array.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// `K/N`: the K-th (0-based) of N equal parts of an ordered list of work (the inputs of
/// `gfer predict` and `gfer extract`, the images of a feature cache, the runs of `gfer
/// protocol`). Item i belongs to part i mod N, so every part gets an even share and
/// together they cover each item exactly once; `0/4`, `1/4`, `2/4`, `3/4` suit a job array
/// indexed from 0 (Kubernetes indexed jobs, `sbatch --array=0-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether item `i` of the list is in this part.
    pub fn contains(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// The items of this part, in their original order.
    pub fn select<T: Clone>(&self, inputs: &[T]) -> Vec<T> {
        inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, input)| input.clone())
            .collect()
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(text: &str) -> Result<Shard> {
        let bad = || {
            Error::config(format!(
                "expected K/N with 0 <= K < N (e.g. 0/4 .. 3/4), got {text:?}"
            ))
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_inputs() {
        let inputs: Vec<usize> = (0..10).collect();
        let mut all = Vec::new();
        for k in 0..3 {
            let shard: Shard = format!("{k}/3").parse().unwrap();
            let part = shard.select(&inputs);
            assert!(part.len() == 3 || part.len() == 4);
            all.extend(part);
        }
        all.sort();
        assert_eq!(all, inputs);
    }

    #[test]
    fn bad_shards_are_refused() {
        for text in ["3/3", "1", "a/b", "0/0", "-1/2", "1/2/3"] {
            assert!(text.parse::<Shard>().is_err(), "{text}");
        }
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
    }
}
