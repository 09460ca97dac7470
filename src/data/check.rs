//! `gfer data check`: images that do not decode, exact duplicates within one data set and
//! across several (by a hash of the decoded RGB pixels, so a face stored as a PNG in one
//! set and as CSV pixels in another is found), listed images that are missing, and
//! label-file lines that do not parse.

use super::{BadLine, Dataset, DropReason, Split};
use crate::image::DecodeLimits;
use crate::Expression;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What was found in one data set's files.
#[derive(Clone, Debug, Serialize)]
pub struct SetReport {
    pub spec: String,
    pub samples: usize,
    /// Listed images that do not exist.
    pub missing: Vec<String>,
    pub bad_lines: Vec<BadLine>,
    /// `image: error` for images that exist but do not decode.
    pub unreadable: Vec<String>,
}

/// One place where an image found more than once occurs.
#[derive(Clone, Debug, Serialize)]
pub struct Occurrence {
    pub spec: String,
    pub split: Split,
    pub label: Expression,
    pub image: String,
}

/// Images with identical decoded pixels.
#[derive(Clone, Debug, Serialize)]
pub struct DuplicateGroup {
    /// blake3 of the decoded RGB pixels.
    pub hash: String,
    /// Two or more copies come from one data set.
    pub within_set: bool,
    /// Copies come from more than one data set.
    pub across_sets: bool,
    /// The copies do not all carry the same label.
    pub labels_differ: bool,
    pub copies: Vec<Occurrence>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub sets: Vec<SetReport>,
    pub duplicates: Vec<DuplicateGroup>,
}

impl CheckReport {
    /// Groups with two or more copies inside one data set.
    pub fn within_set(&self) -> impl Iterator<Item = &DuplicateGroup> {
        self.duplicates.iter().filter(|g| g.within_set)
    }

    /// Groups with copies in more than one data set.
    pub fn across_sets(&self) -> impl Iterator<Item = &DuplicateGroup> {
        self.duplicates.iter().filter(|g| g.across_sets)
    }

    /// True when nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty()
            && self
                .sets
                .iter()
                .all(|s| s.missing.is_empty() && s.bad_lines.is_empty() && s.unreadable.is_empty())
    }
}

/// Decodes every image of every data set once and reports what is wrong.
pub fn check(datasets: &[Dataset], limits: &DecodeLimits) -> CheckReport {
    let items: Vec<(usize, usize)> = datasets
        .iter()
        .enumerate()
        .flat_map(|(set, dataset)| (0..dataset.samples.len()).map(move |sample| (set, sample)))
        .collect();
    let progress = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("hashing images {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let hashes: Vec<(usize, usize, crate::Result<String>)> = items
        .par_iter()
        .map(|&(set, sample)| {
            let source = &datasets[set].samples[sample].source;
            let hash = source.content_hash_within(limits);
            progress.inc(1);
            (set, sample, hash)
        })
        .collect();
    progress.finish_and_clear();

    let mut sets: Vec<SetReport> = datasets
        .iter()
        .map(|d| SetReport {
            spec: d.spec.clone(),
            samples: d.samples.len(),
            missing: d
                .dropped
                .iter()
                .filter(|x| x.reason == DropReason::MissingImage)
                .map(|x| x.what.clone())
                .collect(),
            bad_lines: d.bad_lines.clone(),
            unreadable: Vec::new(),
        })
        .collect();
    let mut by_hash: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (set, sample, hash) in hashes {
        match hash {
            Ok(hash) => by_hash.entry(hash).or_default().push((set, sample)),
            Err(err) => {
                let source = datasets[set].samples[sample].source.describe();
                sets[set].unreadable.push(format!("{source}: {err}"));
            }
        }
    }
    let duplicates = by_hash
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(hash, members)| {
            let distinct_sets: BTreeSet<usize> = members.iter().map(|m| m.0).collect();
            let labels: BTreeSet<Expression> = members
                .iter()
                .map(|&(set, sample)| datasets[set].samples[sample].label)
                .collect();
            DuplicateGroup {
                hash,
                within_set: distinct_sets.len() < members.len(),
                across_sets: distinct_sets.len() > 1,
                labels_differ: labels.len() > 1,
                copies: members
                    .iter()
                    .map(|&(set, sample)| {
                        let sample = &datasets[set].samples[sample];
                        Occurrence {
                            spec: datasets[set].spec.clone(),
                            split: sample.split,
                            label: sample.label,
                            image: sample.source.describe(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    CheckReport { sets, duplicates }
}
