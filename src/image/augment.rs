//! CAFE's training-time augmentation, in the authors' order: Gaussian noise on the u8
//! image, resize, normalise, horizontal flip, random erasing (torchvision's sampling).

use ::image::RgbImage;
use rand::Rng;
use rand_distr::StandardNormal;

use super::Preprocess;

/// The augmentation chain and its probabilities. `Default` is the published recipe.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Probability of adding Gaussian noise to the u8 image.
    pub noise_p: f64,
    /// Standard deviation of that noise, in grey levels (the authors' variance 30).
    pub noise_std: f64,
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Probability of erasing a rectangle (to 0, in normalised space).
    pub erase_p: f64,
    /// Range of the erased area as a fraction of the image.
    pub erase_scale: (f64, f64),
    /// Range of the erased rectangle's aspect ratio (height / width), sampled log-uniformly.
    pub erase_ratio: (f64, f64),
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            noise_p: 0.5,
            noise_std: 30f64.sqrt(),
            flip_p: 0.5,
            erase_p: 0.5,
            erase_scale: (0.02, 0.25),
            erase_ratio: (0.3, 3.3),
        }
    }
}

/// A rectangle of a `[3,H,W]` image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraseRect {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl Augment {
    /// One augmented `[3,S,S]` input. The random draws, in order: noise yes/no, the
    /// noise itself, flip yes/no, erase yes/no, the rectangle.
    pub fn apply(&self, img: &RgbImage, pre: &Preprocess, rng: &mut impl Rng) -> Vec<f32> {
        let noisy;
        let img = if rng.gen::<f64>() < self.noise_p {
            noisy = add_noise(img, self.noise_std, rng);
            &noisy
        } else {
            img
        };
        let mut x = pre.apply(img);
        let s = pre.size as usize;
        if rng.gen::<f64>() < self.flip_p {
            for row in x.chunks_exact_mut(s) {
                row.reverse();
            }
        }
        if rng.gen::<f64>() < self.erase_p {
            if let Some(r) = self.erase_rect(s, s, rng) {
                for plane in x.chunks_exact_mut(s * s) {
                    for row in plane.chunks_exact_mut(s).skip(r.top).take(r.height) {
                        row[r.left..r.left + r.width].fill(0.0);
                    }
                }
            }
        }
        x
    }

    /// torchvision `RandomErasing.get_params`: up to 10 tries of an area fraction drawn
    /// uniformly from `erase_scale` and an aspect ratio drawn log-uniformly from
    /// `erase_ratio`, sides rounded (halves to even, as Python's `round`); the first
    /// rectangle that fits strictly inside is placed uniformly. `None` when no try
    /// fits (torchvision then leaves the image as it is).
    pub fn erase_rect(&self, height: usize, width: usize, rng: &mut impl Rng) -> Option<EraseRect> {
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.erase_ratio.0.ln(), self.erase_ratio.1.ln());
        for _ in 0..10 {
            let erase_area = area * uniform(rng, self.erase_scale.0, self.erase_scale.1);
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let h = (erase_area * aspect).sqrt().round_ties_even() as usize;
            let w = (erase_area / aspect).sqrt().round_ties_even() as usize;
            if !(h < height && w < width) {
                continue;
            }
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return Some(EraseRect {
                top,
                left,
                height: h,
                width: w,
            });
        }
        None
    }
}

/// Uniform on [lo, hi), tolerating lo == hi (a fixed value), as torch's `uniform_` does.
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// The authors' `add_g`: u8 + N(0, std), clipped to [0,255], then numpy's
/// `astype(uint8)`, which truncates.
fn add_noise(img: &RgbImage, std: f64, rng: &mut impl Rng) -> RgbImage {
    let mut out = img.clone();
    for v in out.iter_mut() {
        let z: f64 = rng.sample(StandardNormal);
        *v = (*v as f64 + z * std).clamp(0.0, 255.0) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Preset;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn face() -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| {
            ::image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
        })
    }

    fn off() -> Augment {
        Augment {
            noise_p: 0.0,
            flip_p: 0.0,
            erase_p: 0.0,
            ..Augment::default()
        }
    }

    #[test]
    fn default_is_the_recipe() {
        let a = Augment::default();
        assert_eq!((a.noise_p, a.flip_p, a.erase_p), (0.5, 0.5, 0.5));
        assert!((a.noise_std * a.noise_std - 30.0).abs() < 1e-12);
        assert_eq!((a.erase_scale, a.erase_ratio), ((0.02, 0.25), (0.3, 3.3)));
    }

    #[test]
    fn seeded_rng_gives_the_same_result() {
        let pre = Preprocess::new(Preset::Cafe, 32);
        let run =
            |seed| Augment::default().apply(&face(), &pre, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(run(3407), run(3407));
        assert!(
            (0..8).any(|s| run(s) != run(3407)),
            "different seeds never differ"
        );
    }

    #[test]
    fn nothing_enabled_is_plain_preprocessing() {
        let pre = Preprocess::new(Preset::Cafe, 24);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(off().apply(&face(), &pre, &mut rng), pre.apply(&face()));
    }

    #[test]
    fn flip_mirrors_every_row() {
        let pre = Preprocess::new(Preset::Cafe, 16);
        let flip = Augment {
            flip_p: 1.0,
            ..off()
        };
        let x = flip.apply(&face(), &pre, &mut ChaCha8Rng::seed_from_u64(1));
        let plain = pre.apply(&face());
        for (a, b) in x.chunks_exact(16).zip(plain.chunks_exact(16)) {
            assert!(a.iter().eq(b.iter().rev()));
        }
    }

    #[test]
    fn noise_changes_u8_values_by_about_its_std() {
        let img = RgbImage::from_pixel(100, 100, ::image::Rgb([128, 128, 128]));
        let noisy = add_noise(&img, 30f64.sqrt(), &mut ChaCha8Rng::seed_from_u64(5));
        let diffs: Vec<f64> = noisy.iter().map(|&v| v as f64 - 128.0).collect();
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let var = diffs.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / diffs.len() as f64;
        // Truncation towards zero shifts the mean down by about half a level.
        assert!((-0.7..-0.3).contains(&mean), "mean {mean}");
        assert!((28.0..33.0).contains(&var), "variance {var}");
        let zero = add_noise(&img, 0.0, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(zero, img);
    }

    #[test]
    fn erasing_zeroes_one_rectangle_in_every_channel() {
        let s = 32;
        let pre = Preprocess::new(Preset::Cafe, s as u32);
        let erase = Augment {
            erase_p: 1.0,
            ..off()
        };
        // The same draws as `apply` makes: noise, flip and erase decisions, then the rectangle.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = erase.apply(&face(), &pre, &mut rng);
        let mut replay = ChaCha8Rng::seed_from_u64(11);
        let _: (f64, f64, f64) = (replay.gen(), replay.gen(), replay.gen());
        let r = erase
            .erase_rect(s, s, &mut replay)
            .expect("a rectangle fits");
        let plain = pre.apply(&face());
        for c in 0..3 {
            for y in 0..s {
                for xx in 0..s {
                    let i = c * s * s + y * s + xx;
                    let inside = (r.top..r.top + r.height).contains(&y)
                        && (r.left..r.left + r.width).contains(&xx);
                    assert_eq!(
                        x[i],
                        if inside { 0.0 } else { plain[i] },
                        "c{c} y{y} x{xx} {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn erase_rectangles_stay_inside_and_within_the_area_range() {
        let a = Augment::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (h, w) in [(224, 224), (37, 91), (5, 5)] {
            for _ in 0..2000 {
                if let Some(r) = a.erase_rect(h, w, &mut rng) {
                    // Tiny images can round a side to 0: an empty rectangle, as in torchvision.
                    assert!(r.height < h && r.width < w, "{r:?}");
                    assert!(r.top + r.height <= h && r.left + r.width <= w, "{r:?}");
                    if h == 224 {
                        // Rounding the sides moves the area a little off the sampled range.
                        let frac = (r.height * r.width) as f64 / (h * w) as f64;
                        assert!((0.015..0.27).contains(&frac), "{frac}");
                    }
                }
            }
        }
    }

    /// Compares the rectangle statistics with torchvision's, measured by
    /// scripts/reference/images.py: means and medians within 4 standard errors.
    #[test]
    fn erase_rectangles_are_distributed_as_torchvision() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images/erasing_stats.json");
        let text = std::fs::read_to_string(&path).expect("committed fixture erasing_stats.json");
        let reference: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let (h, w) = (
            reference["height"].as_u64().unwrap() as usize,
            reference["width"].as_u64().unwrap() as usize,
        );
        let n_ref = reference["samples"].as_f64().unwrap();

        let a = Augment::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3407);
        let n = 20_000;
        let mut fallbacks = 0usize;
        let mut samples: [Vec<f64>; 5] = Default::default();
        for _ in 0..n {
            match a.erase_rect(h, w, &mut rng) {
                None => fallbacks += 1,
                Some(r) => {
                    samples[0].push(r.height as f64);
                    samples[1].push(r.width as f64);
                    samples[2].push((r.height * r.width) as f64 / (h * w) as f64);
                    samples[3].push(r.top as f64);
                    samples[4].push(r.left as f64);
                }
            }
        }
        for (values, key) in samples
            .iter_mut()
            .zip(["h", "w", "area_fraction", "top", "left"])
        {
            let want = &reference[key];
            let (ref_mean, ref_std) = (
                want["mean"].as_f64().unwrap(),
                want["std"].as_f64().unwrap(),
            );
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let se = ref_std * (1.0 / values.len() as f64 + 1.0 / n_ref).sqrt();
            assert!(
                (mean - ref_mean).abs() < 4.0 * se,
                "{key}: mean {mean} vs torchvision {ref_mean} (se {se})"
            );
            values.sort_by(f64::total_cmp);
            let median = values[values.len() / 2];
            let ref_median = want["q50"].as_f64().unwrap();
            assert!(
                (median - ref_median).abs() < 6.0 * se + 1.0,
                "{key}: median {median} vs torchvision {ref_median}"
            );
        }
        let ref_fallback = reference["fallback_fraction"].as_f64().unwrap();
        let fallback = fallbacks as f64 / n as f64;
        assert!(
            (fallback - ref_fallback).abs() < 0.005,
            "no-fit fraction {fallback} vs torchvision {ref_fallback}"
        );
    }
}
