//! Test doubles for the prediction pipeline: deterministic classifiers that read the
//! colour of a face crop, so every CLI and server behaviour can be checked without a
//! trained model.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use gfer::backbone::Precision;
use gfer::predict::FaceClassifier;
use image::{Rgb, RgbImage};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Classes "red", "green", "blue": a softmax over the crop's mean of each channel, so a
/// crop of one colour gets that colour's label with near certainty.
pub struct MeanColour;

pub const CLASSES: [&str; 3] = ["red", "green", "blue"];

impl FaceClassifier for MeanColour {
    fn preprocess(&self) -> gfer::image::Preprocess {
        gfer::image::Preprocess::new(gfer::image::Preset::Cafe, 16)
    }
    fn class_names(&self) -> Vec<String> {
        CLASSES.iter().map(|c| c.to_string()).collect()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn probabilities(&self, pixels: &Tensor) -> gfer::Result<Tensor> {
        let means = pixels.mean(3)?.mean(2)?; // [B,3]
        Ok(candle_nn::ops::softmax(&(means * 20.0)?, 1)?)
    }
}

/// A classifier that holds every forward pass until the test opens its gate, and counts
/// the passes that started, so tests can fill the queue on purpose.
pub struct Gated {
    gate: Arc<Gate>,
}

#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    pub entered: AtomicUsize,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

impl Gated {
    pub fn new() -> (Gated, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        (Gated { gate: gate.clone() }, gate)
    }
}

impl FaceClassifier for Gated {
    fn preprocess(&self) -> gfer::image::Preprocess {
        MeanColour.preprocess()
    }
    fn class_names(&self) -> Vec<String> {
        MeanColour.class_names()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn probabilities(&self, pixels: &Tensor) -> gfer::Result<Tensor> {
        self.gate.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.opened.wait(open).unwrap();
        }
        drop(open);
        MeanColour.probabilities(pixels)
    }
}

/// Like [`MeanColour`], but a batch with a mostly blue crop in it fails: with an error,
/// or with a panic when `panics` is set. For checking that one bad image costs only its
/// own answer.
pub struct BreaksOnBlue {
    pub panics: bool,
}

impl FaceClassifier for BreaksOnBlue {
    fn preprocess(&self) -> gfer::image::Preprocess {
        MeanColour.preprocess()
    }
    fn class_names(&self) -> Vec<String> {
        MeanColour.class_names()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn probabilities(&self, pixels: &Tensor) -> gfer::Result<Tensor> {
        let probabilities = MeanColour.probabilities(pixels)?;
        let blue = probabilities
            .narrow(1, 2, 1)?
            .max_all()?
            .to_scalar::<f32>()?;
        if blue > 0.5 {
            if self.panics {
                panic!("a test classifier that panics on blue");
            }
            return Err(gfer::Error::Inference(
                "blue breaks this test classifier".into(),
            ));
        }
        Ok(probabilities)
    }
}

pub fn solid(colour: [u8; 3], width: u32, height: u32) -> RgbImage {
    RgbImage::from_pixel(width, height, Rgb(colour))
}

pub fn encode(image: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// A PNG that declares `width` x `height` pixels in its header but carries almost no
/// data (an empty deflate stream): the first bytes of a decompression bomb.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", header),
        (
            b"IDAT",
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (b"IEND", Vec::new()),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        bytes.extend((data.len() as u32).to_be_bytes());
        bytes.extend(&chunk);
        bytes.extend(crc32(&chunk).to_be_bytes());
    }
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A JPEG that starts right and then is garbage.
pub fn corrupt_jpeg() -> Vec<u8> {
    let mut bytes = encode(&solid([9, 9, 9], 32, 32), image::ImageFormat::Jpeg);
    let keep = bytes.len() / 3;
    bytes.truncate(keep);
    bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    bytes
}

/// A real model bundle, trained once per test binary: fast-mode CAFE on the tiny CLIP
/// fixture and synthetic faces (one colour and stripe per class), as `gfer train --fast`
/// makes it. Returns (bundle, encoder weights).
pub fn tiny_bundle() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    use gfer::train::run::{self, FastConfig, RunOutcome, TrainConfig};
    static BUNDLE: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    BUNDLE.get_or_init(|| {
        // One folder per test binary, replaced on every run.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-bundle-{binary}"));
        let _ = std::fs::remove_dir_all(&dir);
        crate::common::write_folder_dataset(&dir.join("data"), 12, 2);
        let config = TrainConfig {
            data: format!("folder:{}", dir.join("data").display()),
            backbone: None,
            weights: Some(crate::common::tiny_clip()),
            precision: Precision::F32,
            preprocess: gfer::image::Preset::Cafe,
            method: gfer::model::classifier::Method::Cafe,
            cafe: gfer::model::CafeConfig::default(),
            mask_init: None,
            allow_partial: false,
            recipe: gfer::train::fit::Recipe {
                epochs: 15,
                batch_size: 8,
                lr: 2e-3,
                ..Default::default()
            },
            max_pixels: 1 << 24,
            fast: Some(FastConfig {
                views: 2,
                generator: Default::default(),
                hidden: Some(vec![32]),
                cache_dir: dir.join("cache"),
            }),
        };
        let outcome = run::train(
            &config,
            &dir.join("run"),
            &run::Watch {
                stop: &std::sync::atomic::AtomicBool::new(false),
                progress: &indicatif::ProgressBar::hidden(),
                max_steps: None,
            },
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("training the test bundle failed: {e}"));
        let RunOutcome::Finished(report) = outcome else {
            panic!("training the test bundle was interrupted")
        };
        (report.bundle, crate::common::tiny_clip())
    })
}
