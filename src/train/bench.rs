//! Throughput of fast-mode training on synthetic cached features, for `gfer bench train`.

use crate::error::{Error, Result};
use crate::model::classifier::{Classifier, GeneratorSpec, Method, ModelSpec, FROZEN_FEATURE};
use crate::model::{init_var_builder, CafeConfig};
use crate::tensorfile;
use crate::train::cache::CachedFeatures;
use crate::train::fast::FastSource;
use crate::train::run::RunDir;
use crate::train::trainer::{self, Recipe, TrainContext};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
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

/// Trains CAFE in fast mode for `epochs` over `images` synthetic cached features of
/// width `dim` with `views` views each (the time excludes building the cache).
pub fn fast_mode(
    images: usize,
    dim: usize,
    views: usize,
    epochs: usize,
    hidden: Vec<usize>,
) -> Result<FastBench> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary folder", e))?;
    let device = Device::Cpu;
    let hashes: Vec<String> = (0..images).map(|i| format!("{i:064x}")).collect();
    let features = Tensor::randn(0f32, 1.0, (images, views, dim), &device)?.abs()?;
    let path = dir.path().join("views.safetensors");
    let metadata = BTreeMap::from([(
        "hashes".to_string(),
        serde_json::to_string(&hashes).map_err(|e| Error::config(e.to_string()))?,
    )]);
    tensorfile::save(
        &path,
        &HashMap::from([("features".to_string(), features)]),
        &metadata,
    )?;
    let cache = CachedFeatures::open(&path)?;
    let labels: Vec<u32> = (0..images).map(|i| (i % 7) as u32).collect();
    let source = FastSource::new(&cache, &hashes, labels, 0, &device)?;
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
    let run = RunDir::create(&dir.path().join("run"))?;
    let recipe = Recipe {
        epochs,
        ..Recipe::default()
    };
    let progress = indicatif::ProgressBar::hidden();
    let ctx = TrainContext {
        run: &run,
        recipe: &recipe,
        stop: &AtomicBool::new(false),
        progress: &progress,
        device: &device,
        max_steps: None,
    };
    let started = Instant::now();
    trainer::train(&ctx, &model, &source, None, &mut |_, _| Ok(()))?;
    Ok(FastBench {
        images,
        epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}
