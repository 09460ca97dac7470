//! Training throughput: fast-mode epochs on synthetic cached features, the full recipe's
//! training step (ResNet-18 mask generator forward, backward and Adam) on random images,
//! and the same step of the authors' model in PyTorch.

use crate::error::{Error, Result};
use crate::formats::tensorfile;
use crate::model::classifier::{GeneratorSpec, Method, FROZEN_FEATURE};
use crate::model::{
    drop_vector, init_var_builder, Batch, CafeConfig, Classifier, ModelSpec, Trainable,
};
use crate::train::cache::CachedFeatures;
use crate::train::cached_source::CachedSource;
use crate::train::fit::{self, Recipe, TrainContext, Watch};
use crate::train::optim::{Adam, AdamConfig};
use crate::train::run_folder::RunFolder;
use crate::train::step::{AutogradStep, Step};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What one fast-mode benchmark measured.
pub struct FastBench {
    pub images: usize,
    pub epochs: usize,
    pub seconds: f64,
}

impl FastBench {
    pub fn images_per_second(&self) -> f64 {
        (self.images * self.epochs) as f64 / self.seconds
    }
}

/// Trains CAFE in fast mode on `device` for `epochs` over `images` synthetic cached
/// features of width `dim` with `views` views each (the time excludes building the cache).
pub fn fast_mode(
    images: usize,
    dim: usize,
    views: usize,
    epochs: usize,
    hidden: Vec<usize>,
    device: &Device,
) -> Result<FastBench> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary folder", e))?;
    let device = device.clone();
    let hashes: Vec<String> = (0..images).map(|i| format!("{i:064x}")).collect();
    // Made on the CPU: the cache is a file on disk whatever the device.
    let features = Tensor::randn(0f32, 1.0, (images, views, dim), &Device::Cpu)?.abs()?;
    let path = dir.path().join("views.safetensors");
    let metadata = BTreeMap::from([(
        "hashes".to_string(),
        serde_json::to_string(&hashes).map_err(|e| Error::internal(e.to_string()))?,
    )]);
    tensorfile::save(
        &path,
        &HashMap::from([("features".to_string(), features)]),
        &metadata,
    )?;
    let cache = CachedFeatures::open(&path)?;
    let labels: Vec<u32> = (0..images).map(|i| (i % 7) as u32).collect();
    let source = CachedSource::new(&cache, &hashes, labels, 0, &device)?;
    let spec = ModelSpec::new(
        Method::Cafe,
        CafeConfig::default().with_feature_dim(dim),
        GeneratorSpec::Mlp {
            input: FROZEN_FEATURE.to_string(),
            input_dim: dim,
            hidden,
        },
    );
    let model = Classifier::new(init_var_builder(HashMap::new(), 0, &device), &spec)?;
    let run = RunFolder::create(&dir.path().join("run"))?;
    let recipe = Recipe {
        epochs,
        ..Recipe::default()
    };
    let progress = indicatif::ProgressBar::hidden();
    let watch = Watch {
        stop: &AtomicBool::new(false),
        progress: &progress,
        max_steps: None,
    };
    let ctx = TrainContext {
        run: &run,
        recipe: &recipe,
        watch: &watch,
        device: &device,
    };
    let started = Instant::now();
    fit::train(&ctx, &model, &source, None, &mut |_, _| Ok(()))?;
    device.synchronize()?;
    Ok(FastBench {
        images,
        epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The median time of one full-recipe training step on `device` at batch `batch` on
/// `side` x `side` random images (one untimed warm-up step first).
pub fn full_step(batch: usize, steps: usize, side: usize, device: &Device) -> Result<f64> {
    let device = device.clone();
    let cfg = CafeConfig::default();
    let generator = GeneratorSpec::Resnet {
        widths: cfg.trunk_widths,
    };
    let spec = ModelSpec::new(Method::Cafe, cfg.clone(), generator);
    let model = Classifier::new(init_var_builder(HashMap::new(), 3407, &device), &spec)?;
    let mut step = AutogradStep {
        model: &model,
        adam: Adam::new(model.trainable_vars(), AdamConfig::default())?,
        device: device.clone(),
    };
    let labels: Vec<u32> = (0..batch).map(|i| (i % cfg.classes) as u32).collect();
    let batch_inputs = Batch {
        images: Some(Tensor::randn(0f32, 1., (batch, 3, side, side), &device)?),
        features: Some(Tensor::randn(0f32, 0.5, (batch, cfg.feature_dim), &device)?),
        mask_input: None,
        labels: Tensor::new(labels, &device)?,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3407);
    let mut times = Vec::with_capacity(steps);
    for round in 0..=steps.max(1) {
        let drop = drop_vector(cfg.feature_dim, cfg.classes, cfg.drop_per_group, &mut rng)?;
        let started = Instant::now();
        step.step(&batch_inputs, &drop)?;
        // The step reads its figures back, which waits for the GPU; this makes sure.
        device.synchronize()?;
        if round > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What the PyTorch reference step reported.
#[derive(Debug, serde::Deserialize)]
pub struct TorchStep {
    pub torch: String,
    pub threads: usize,
    /// PyTorch's device, with the GPU's name and cuDNN's TF32 setting on a GPU.
    #[serde(default)]
    pub device: String,
    pub seconds_per_step: f64,
}

/// Runs the authors' training step in PyTorch: `script` (gfer's
/// `scripts/bench_train_step.py`, beside the reference model it imports) under `python`,
/// which must have torch, on PyTorch's `device` (`cpu`, `cuda:0`).
pub fn torch_full_step(
    python: &Path,
    script: &Path,
    batch: usize,
    steps: usize,
    side: usize,
    device: &str,
) -> Result<TorchStep> {
    if !script.is_file() {
        return Err(Error::MissingAsset {
            path: script.to_path_buf(),
            hint: "the PyTorch reference step is scripts/bench_train_step.py of a gfer \
                   checkout; run from there or pass its path"
                .to_string(),
        });
    }
    let program = python.display().to_string();
    let output = std::process::Command::new(python)
        .arg(script)
        .args([batch, steps.max(1), side].map(|v| v.to_string()))
        .arg(device)
        .output()
        .map_err(|e| Error::io(python, e))?;
    if !output.status.success() {
        return Err(Error::External {
            program,
            message: format!(
                "the PyTorch reference step failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| Error::External {
        program,
        message: format!("the PyTorch reference step printed {line:?}, not its JSON line: {e}"),
    })
}
