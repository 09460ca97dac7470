//! The samples of a split that can be used: every image decoded once, in parallel, and
//! kept with its content hash when it decodes; the others are set aside with the reason,
//! to be reported (one bad image never stops a run).

use crate::data::{Dataset, ImageSource, Sample, Split};
use crate::image::{content_hash, DecodeLimits};
use rayon::prelude::*;

/// The usable samples of a list, in order, each with its content hash.
pub struct Usable<'a> {
    pub samples: Vec<&'a Sample>,
    /// [`content_hash`] of each usable sample's decoded image.
    pub hashes: Vec<String>,
    /// The unusable ones.
    pub skipped: Vec<Skipped>,
}

impl Usable<'_> {
    /// Where each usable sample's image comes from.
    pub fn sources(&self) -> Vec<ImageSource> {
        self.samples.iter().map(|s| s.source.clone()).collect()
    }
}

/// An image that could not be used: (what it is, why it was skipped).
pub type Skipped = (String, String);

/// Decodes every image once and sorts the samples into usable and skipped.
pub fn usable_samples<'a>(
    samples: &[&'a Sample],
    limits: &DecodeLimits,
    progress: &indicatif::ProgressBar,
) -> Usable<'a> {
    progress.set_length(samples.len() as u64);
    progress.set_position(0);
    progress.set_message("checking images");
    let results: Vec<std::result::Result<(&Sample, String), Skipped>> = samples
        .par_iter()
        .map(|s| {
            let r = s
                .source
                .load(limits)
                .map(|image| (*s, content_hash(&image)))
                .map_err(|e| (s.source.describe(), e.to_string()));
            progress.inc(1);
            r
        })
        .collect();
    let mut usable = Usable {
        samples: Vec::new(),
        hashes: Vec::new(),
        skipped: Vec::new(),
    };
    for r in results {
        match r {
            Ok((s, h)) => {
                usable.samples.push(s);
                usable.hashes.push(h);
            }
            Err(e) => usable.skipped.push(e),
        }
    }
    usable
}

/// A fingerprint of a list of samples (what, which label, which split), so a run records
/// exactly which data it saw.
pub fn samples_fingerprint(samples: &[&Sample]) -> String {
    let mut hasher = blake3::Hasher::new();
    for s in samples {
        hasher.update(s.source.describe().as_bytes());
        hasher.update(&[s.label.index() as u8, s.split as u8, b'\n']);
    }
    hasher.finalize().to_hex()[..16].to_string()
}

impl Dataset {
    /// The split a model trained on this data set is scored on: test when it has one,
    /// else val.
    pub fn held_out_split(&self) -> Option<Split> {
        [Split::Test, Split::Val]
            .into_iter()
            .find(|&s| !self.split(s).is_empty())
    }
}
