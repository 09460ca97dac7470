//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file fetched by `scripts/fetch-assets` or generated at test time by
/// `scripts/make_reference.py` (both into the ignored `assets/` folder). When it is
/// missing the test is skipped with a message saying how to get it, unless
/// `GFER_REQUIRE_ASSETS=1` (set by CI), in which case the test fails.
pub fn asset(relative: &str, how_to_get_it: &str) -> Option<PathBuf> {
    let path = root().join("assets").join(relative);
    if path.exists() {
        return Some(path);
    }
    missing(&format!("assets/{relative}"), how_to_get_it);
    None
}

/// Reports something a test needs but cannot find (a fetched file, a tool of the Python
/// environment): the test is skipped with a message saying how to get it, unless
/// `GFER_REQUIRE_ASSETS=1` (set by CI), in which case the test fails.
pub fn missing(what: &str, how_to_get_it: &str) {
    let message = format!("{what} is missing; {how_to_get_it}");
    if std::env::var("GFER_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("{message} (GFER_REQUIRE_ASSETS=1, so this is an error)");
    }
    eprintln!("SKIP: {message}");
}

/// A committed fixture under tests/fixtures/.
pub fn fixture(relative: &str) -> PathBuf {
    let path = root().join("tests/fixtures").join(relative);
    assert!(
        Path::new(&path).exists(),
        "missing committed fixture {}; regenerate with scripts/make_reference.py",
        path.display()
    );
    path
}

/// The tiny random CLIP vision tower of the parity fixtures (32x32 input, D = 32): a real
/// encoder small enough to train through in tests.
pub fn tiny_clip() -> PathBuf {
    fixture("clip/tiny_hf.safetensors")
}

/// A synthetic expression image: each class has its own colour and stripe position, with
/// per-image noise, so that even a random encoder separates the classes.
pub fn synthetic_face(class: usize, index: usize, size: u32) -> image::RgbImage {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((class * 1000 + index) as u64);
    let hue = [
        [220, 40, 40],
        [40, 200, 40],
        [40, 40, 220],
        [220, 220, 40],
        [200, 40, 200],
        [40, 200, 200],
        [140, 140, 140],
    ][class % 7];
    image::RgbImage::from_fn(size, size, |x, _| {
        let stripe = (x * 7 / size) as usize == class;
        let base: [u8; 3] = if stripe { [255, 255, 255] } else { hue };
        image::Rgb(base.map(|v| (v as i32 + rng.gen_range(-30..=30)).clamp(0, 255) as u8))
    })
}

/// Writes a `folder:` data set (`DIR/{train,test}/<class>/*.png`) of synthetic faces.
pub fn write_folder_dataset(dir: &Path, train_per_class: usize, test_per_class: usize) {
    for (split, n, offset) in [("train", train_per_class, 0), ("test", test_per_class, 500)] {
        for class in gfer::Expression::ALL {
            let folder = dir.join(split).join(class.name());
            std::fs::create_dir_all(&folder).expect("create fixture folder");
            for i in 0..n {
                synthetic_face(class.index(), offset + i, 40)
                    .save(folder.join(format!("{i}.png")))
                    .expect("write fixture image");
            }
        }
    }
}

/// Writes a `manifest:` data set (`DIR/faces.csv` with `path,label,split`) of synthetic
/// faces, labels by canonical index.
pub fn write_manifest_dataset(
    dir: &Path,
    train_per_class: usize,
    test_per_class: usize,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("img")).expect("create fixture folder");
    let mut csv = String::from("path,label,split\n");
    for (split, n, offset) in [
        ("train", train_per_class, 700),
        ("test", test_per_class, 900),
    ] {
        for class in gfer::Expression::ALL {
            for i in 0..n {
                let name = format!("img/{split}_{}_{i}.jpg", class.index());
                synthetic_face(class.index(), offset + i, 36)
                    .save(dir.join(&name))
                    .expect("write fixture image");
                csv.push_str(&format!("{name},{},{split}\n", class.index()));
            }
        }
    }
    let path = dir.join("faces.csv");
    std::fs::write(&path, csv).expect("write manifest");
    path
}

/// The stage widths of [`write_tiny_resnet`]'s ResNet-18.
pub const TINY_RESNET_WIDTHS: [usize; 4] = [4, 8, 8, 16];

/// Writes a narrow ResNet-18 checkpoint (torchvision names, widths
/// [`TINY_RESNET_WIDTHS`]) with seeded random weights and BatchNorm statistics away from
/// the identity, as `--mask-init` reads it. Different seeds give different weights.
pub fn write_tiny_resnet(path: &Path, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let device = candle_core::Device::Cpu;
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in gfer::model::resnet::resnet18_layout(TINY_RESNET_WIDTHS) {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let u: f32 = rng.gen_range(-1.0..1.0);
                if name.ends_with("running_var") {
                    1.0 + 0.5 * u
                } else if name.ends_with("running_mean") || name.ends_with("bias") {
                    0.1 * u
                } else if shape.len() == 1 {
                    1.0 + 0.2 * u
                } else {
                    // Kaiming-like scale for the convolutions (fan-out).
                    let fan_out = (shape[0] * shape[2] * shape[3]) as f32;
                    u * (6.0 / fan_out).sqrt()
                }
            })
            .collect();
        let tensor = candle_core::Tensor::from_vec(values, shape, &device).expect("tensor");
        tensors.insert(name, tensor);
    }
    candle_core::safetensors::save(&tensors, path).expect("write the ResNet checkpoint");
}

/// The smallest cosine similarity between the rows of two `[N,D]` feature batches.
pub fn smallest_cosine(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let cosines = gfer::backbone::features::cosine_similarities(a, b).unwrap();
    cosines.into_iter().fold(f32::INFINITY, f32::min)
}
