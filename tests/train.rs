//! Training end to end on generated data with the tiny CLIP fixture: the full recipe
//! resumes to identical weights, fast mode learns, bundles load in eval, the feature cache
//! recomputes exactly what a change affects, bad checkpoints are refused clearly.

mod common;

use candle_core::Device;
use gfer::image::Preset;
use gfer::inference::ExpressionModel;
use gfer::model::classifier::Method;
use gfer::model::CafeConfig;
use gfer::train::session::{self, FastConfig, RunOutcome, TrainConfig};
use gfer::train::trainer::Recipe;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn config(data: String, method: Method, epochs: usize, fast: Option<FastConfig>) -> TrainConfig {
    TrainConfig {
        data,
        backbone: None,
        weights: Some(common::tiny_clip()),
        preprocess: Preset::Cafe,
        method,
        // A narrow ResNet keeps the full recipe quick; the layout is the same.
        cafe: CafeConfig {
            trunk_widths: [4, 8, 8, 16],
            ..CafeConfig::default()
        },
        mask_init: None,
        allow_partial: false,
        recipe: Recipe {
            epochs,
            batch_size: 8,
            lr: 2e-3,
            ..Recipe::default()
        },
        max_pixels: 1 << 24,
        fast,
    }
}

fn train(cfg: &TrainConfig, out: &Path, max_steps: Option<usize>) -> RunOutcome {
    let progress = indicatif::ProgressBar::hidden();
    session::run(
        cfg,
        out,
        &AtomicBool::new(false),
        max_steps,
        &progress,
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("training failed: {e}"))
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let file = gfer::tensorfile::load(path, &Device::Cpu).expect("bundle loads");
    file.tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("f32 tensor"),
            )
        })
        .collect()
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("data"), 3, 1);
    let spec = format!("folder:{}", dir.path().join("data").display());
    let cfg = config(spec, Method::Cafe, 2, None);

    let straight = dir.path().join("straight");
    assert!(matches!(
        train(&cfg, &straight, None),
        RunOutcome::Finished(_)
    ));

    // 21 images in batches of 8: 3 steps an epoch. Stop in the middle of epoch 2.
    let resumed = dir.path().join("resumed");
    match train(&cfg, &resumed, Some(4)) {
        RunOutcome::Interrupted { epoch, step, .. } => assert_eq!((epoch, step), (1, 1)),
        RunOutcome::Finished(_) => panic!("the run should have stopped after 4 steps"),
    }
    assert!(!resumed.join(session::FINAL_BUNDLE).exists());
    assert!(matches!(
        train(&cfg, &resumed, None),
        RunOutcome::Finished(_)
    ));

    let a = tensors(&straight.join(session::FINAL_BUNDLE));
    let b = tensors(&resumed.join(session::FINAL_BUNDLE));
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(Some(values), b.get(name), "{name} differs after resuming");
    }
    // The epoch log has one line per epoch and the same losses.
    let log = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("log.jsonl"))
            .expect("log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    };
    let (la, lb) = (log(&straight), log(&resumed));
    assert_eq!(la.len(), 2);
    assert_eq!(lb.len(), 2);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["eval_accuracy"], y["eval_accuracy"]);
    }
    for file in [
        "config.json",
        "revision.txt",
        "data.json",
        "report.md",
        "best.safetensors",
    ] {
        assert!(
            straight.join(file).exists(),
            "{file} missing from the run folder"
        );
    }
}

#[test]
fn a_truncated_or_foreign_checkpoint_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("data"), 2, 1);
    let cfg = config(
        format!("folder:{}", dir.path().join("data").display()),
        Method::LinearProbe,
        1,
        Some(FastConfig {
            views: 1,
            hidden: vec![],
            cache_dir: dir.path().join("cache"),
        }),
    );
    let run = dir.path().join("run");
    assert!(matches!(
        train(&cfg, &run, Some(1)),
        RunOutcome::Interrupted { .. }
    ));
    let checkpoint = run.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&checkpoint).expect("checkpoint");
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).expect("truncate");
    let progress = indicatif::ProgressBar::hidden();
    let err = session::run(
        &cfg,
        &run,
        &AtomicBool::new(false),
        None,
        &progress,
        &Device::Cpu,
    )
    .err()
    .expect("a truncated checkpoint must be refused")
    .to_string();
    assert!(
        err.contains("last.safetensors") && err.contains("truncated"),
        "{err}"
    );

    std::fs::write(&checkpoint, b"not a checkpoint at all, just text").expect("write");
    let err = session::run(
        &cfg,
        &run,
        &AtomicBool::new(false),
        None,
        &progress,
        &Device::Cpu,
    )
    .err()
    .expect("a foreign file must be refused")
    .to_string();
    assert!(err.contains("last.safetensors"), "{err}");
}

#[test]
fn fast_mode_learns_and_its_bundle_evaluates() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("data"), 12, 6);
    let spec = format!("folder:{}", dir.path().join("data").display());
    let fast = FastConfig {
        views: 2,
        hidden: vec![32],
        cache_dir: dir.path().join("cache"),
    };
    let cfg = config(spec.clone(), Method::Cafe, 15, Some(fast));
    let report = match train(&cfg, &dir.path().join("run"), None) {
        RunOutcome::Finished(report) => report,
        RunOutcome::Interrupted { .. } => panic!("not interrupted"),
    };
    let held_out = report.held_out.expect("the test split is evaluated");
    // Seven classes: chance is 14%.
    assert!(
        held_out.accuracy > 0.6,
        "held-out accuracy {}",
        held_out.accuracy
    );

    // The bundle works through the same path as `gfer eval`.
    let model = ExpressionModel::load(&report.bundle, Some(&common::tiny_clip()), &Device::Cpu)
        .expect("bundle loads");
    let dataset = gfer::data::open(&spec, &Default::default()).expect("data");
    let test = dataset.split(gfer::data::Split::Test);
    let (metrics, failures) = model
        .evaluate(
            &test,
            16,
            &Default::default(),
            &indicatif::ProgressBar::hidden(),
        )
        .expect("evaluate");
    assert!(failures.is_empty());
    assert_eq!(metrics.total, 42);
    assert!(
        (metrics.accuracy - held_out.accuracy).abs() < 1e-9,
        "{} vs {}",
        metrics.accuracy,
        held_out.accuracy
    );

    // Other encoder weights are refused, naming the mismatch.
    let other = dir.path().join("other.safetensors");
    let mut file = gfer::tensorfile::load(&common::tiny_clip(), &Device::Cpu).expect("load");
    let t = file.tensors["visual_projection.weight"].clone();
    file.tensors
        .insert("visual_projection.weight".into(), (t * 2.0).expect("scale"));
    gfer::tensorfile::save(&other, &file.tensors, &file.metadata).expect("save");
    let err = ExpressionModel::load(&report.bundle, Some(&other), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("fingerprint"), "{err}");
}
