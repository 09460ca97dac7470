//! Training end to end on generated data with the tiny CLIP fixture: the full recipe
//! resumes to identical weights, fast mode learns with each of its mask generators,
//! bundles load in eval and predict, bad checkpoints are refused clearly.

use crate::common;

use candle_core::Device;
use gfer::backbone::Precision;
use gfer::image::Preset;
use gfer::model::classifier::{MaskInput, Method};
use gfer::model::inference::ExpressionModel;
use gfer::model::CafeConfig;
use gfer::train::fit::Recipe;
use gfer::train::run::{self, FastConfig, RunOutcome, TrainConfig};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn config(data: String, method: Method, epochs: usize, fast: Option<FastConfig>) -> TrainConfig {
    TrainConfig {
        data,
        backbone: None,
        weights: Some(common::tiny_clip()),
        precision: Precision::F32,
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
    run::train(
        cfg,
        out,
        &run::Watch {
            stop: &AtomicBool::new(false),
            progress: &progress,
            max_steps,
        },
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("training failed: {e}"))
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let file = gfer::formats::tensorfile::load(path, &Device::Cpu).expect("bundle loads");
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
    assert!(!resumed.join(run::FINAL_BUNDLE).exists());
    assert!(matches!(
        train(&cfg, &resumed, None),
        RunOutcome::Finished(_)
    ));

    let a = tensors(&straight.join(run::FINAL_BUNDLE));
    let b = tensors(&resumed.join(run::FINAL_BUNDLE));
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
            generator: Default::default(),
            hidden: Some(vec![]),
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
    let err = run::train(
        &cfg,
        &run,
        &run::Watch {
            stop: &AtomicBool::new(false),
            progress: &progress,
            max_steps: None,
        },
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
    let err = run::train(
        &cfg,
        &run,
        &run::Watch {
            stop: &AtomicBool::new(false),
            progress: &progress,
            max_steps: None,
        },
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
        generator: Default::default(),
        hidden: Some(vec![32]),
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
    let model = ExpressionModel::load(
        &report.bundle,
        Some(&common::tiny_clip()),
        Precision::F32,
        &Device::Cpu,
    )
    .expect("bundle loads");
    let dataset = gfer::data::open(&spec, &Default::default()).expect("data");
    let test = dataset.split(gfer::data::Split::Test);
    let (metrics, failures) = gfer::eval::evaluate_images(
        &model,
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
    let mut file =
        gfer::formats::tensorfile::load(&common::tiny_clip(), &Device::Cpu).expect("load");
    let t = file.tensors["visual_projection.weight"].clone();
    file.tensors
        .insert("visual_projection.weight".into(), (t * 2.0).expect("scale"));
    gfer::formats::tensorfile::save(&other, &file.tensors, &file.metadata).expect("save");
    let err = ExpressionModel::load(&report.bundle, Some(&other), Precision::F32, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("fingerprint"), "{err}");
}

/// Fast mode with `generator` on generated data, end to end: it learns; its bundle
/// records the generator, evaluates to the training run's held-out accuracy through
/// ExpressionModel and the `gfer eval` binary, computes the generator's input at
/// inference exactly as the cache holds it, and predicts through the Predictor as the
/// model does. Returns the bundle's tensors.
fn fast_generator_end_to_end(
    generator: MaskInput,
    hidden: Option<Vec<usize>>,
    mask_init: Option<std::path::PathBuf>,
    dir: &Path,
) -> std::collections::HashMap<String, Vec<f32>> {
    common::write_folder_dataset(&dir.join("data"), 12, 6);
    let spec = format!("folder:{}", dir.join("data").display());
    let fast = FastConfig {
        views: 2,
        generator,
        hidden,
        cache_dir: dir.join("cache"),
    };
    let mut cfg = config(spec.clone(), Method::Cafe, 15, Some(fast));
    // Larger steps than the feature generator's test: with 16 random ResNet channels or
    // first-block tokens as the mask's input, 15 epochs at 2e-3 leave the synthetic task
    // half learnt (the test is about the pipeline, not the optimiser).
    cfg.recipe.lr = 1e-2;
    cfg.mask_init = mask_init;
    let report = match train(&cfg, &dir.join("run"), None) {
        RunOutcome::Finished(report) => report,
        RunOutcome::Interrupted { .. } => panic!("not interrupted"),
    };
    let held_out = report.held_out.expect("the test split is evaluated");
    // Seven classes: chance is 14%.
    assert!(
        held_out.accuracy > 0.6,
        "{generator}: held-out accuracy {}",
        held_out.accuracy
    );

    let weights = common::tiny_clip();
    let model = ExpressionModel::load(&report.bundle, Some(&weights), Precision::F32, &Device::Cpu)
        .expect("bundle loads");
    let recorded = &model.meta.model["generator"];
    assert_eq!(recorded["kind"], "mlp", "{recorded}");
    assert_eq!(
        recorded["input"].as_str(),
        Some(generator.spec_name().as_str())
    );
    assert_eq!(model.classifier().mask_input(), Some(generator));

    // The same accuracy through the path of `gfer eval`...
    let dataset = gfer::data::open(&spec, &Default::default()).expect("data");
    let test = dataset.split(gfer::data::Split::Test);
    let (metrics, failures) = gfer::eval::evaluate_images(
        &model,
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
        "{generator}: eval {} vs training {}",
        metrics.accuracy,
        held_out.accuracy
    );
    // ...and through the binary itself.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(["eval", "--json", "--model"])
        .arg(&report.bundle)
        .arg("--weights")
        .arg(&weights)
        .args(["--data", &spec])
        .output()
        .expect("gfer eval runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let accuracy = json["results"][&spec]["metrics"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(
        (accuracy - held_out.accuracy).abs() < 1e-9,
        "{generator}: gfer eval {accuracy} vs training {}",
        held_out.accuracy
    );

    // Inference computes the generator's input as the cache holds it (clean views).
    let encoder = gfer::backbone::load_encoder(None, &weights, &Device::Cpu, Precision::F32)
        .expect("encoder");
    let mask = match generator {
        MaskInput::Resnet18 => Some(gfer::train::cache::MaskSource::Resnet(
            model.classifier().frozen_resnet().expect("frozen ResNet"),
        )),
        MaskInput::Tokens(layer) => Some(gfer::train::cache::MaskSource::Tokens(layer)),
        MaskInput::Feature => None,
    };
    let key = gfer::train::cache::CacheKey {
        encoder: encoder.as_ref(),
        preprocess: model.preprocess(),
        seed: cfg.recipe.seed,
        views: 2,
        mask,
    };
    let cached_path = key
        .mask_clean_path(&dir.join("cache"))
        .unwrap_or_else(|| key.clean_path(&dir.join("cache")));
    let cached = gfer::train::cache::CachedFeatures::open(&cached_path).expect("cached inputs");
    let images: Vec<image::RgbImage> = test
        .iter()
        .take(9)
        .map(|s| s.source.load(&Default::default()).expect("image"))
        .collect();
    let pixels = model
        .preprocess()
        .batch(&images, &Device::Cpu)
        .expect("pixels");
    let batch = model.inference_batch(&pixels).expect("inference batch");
    let computed = batch
        .mask_input
        .expect("the generator's input")
        .to_vec2::<f32>()
        .expect("values");
    for (image, row) in images.iter().zip(&computed) {
        let r = cached
            .row_of(&gfer::image::content_hash(image))
            .expect("cached");
        let expected = cached.get(r, 0);
        let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = row
            .iter()
            .zip(expected)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst / scale < 1e-4,
            "{generator}: inference input differs from the cache by {worst} (scale {scale})"
        );
    }

    // The Predictor (predict, serve) classifies as the model does.
    let predictor = gfer::predict::Predictor::from_bundle(
        &report.bundle,
        Some(&weights),
        Precision::F32,
        &Device::Cpu,
        gfer::predict::PredictOptions {
            detect: false,
            batch_size: 4,
            ..Default::default()
        },
    )
    .expect("predictor");
    let expected = model.classify_images(&images).expect("classify");
    let predicted = predictor.predict_batch(&images).expect("predict");
    for (p, e) in predicted.iter().zip(&expected) {
        assert_eq!(p.faces.len(), 1);
        let face = &p.faces[0];
        assert_eq!(
            face.label,
            gfer::Expression::names()[gfer::model::argmax(e)]
        );
        for (a, b) in face.probabilities.iter().zip(e) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
    tensors(&report.bundle)
}

#[test]
fn fast_mode_with_a_frozen_resnet18_generator_learns_and_its_bundle_carries_the_resnet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = dir.path().join("resnet.safetensors");
    common::write_tiny_resnet(&checkpoint, 11);

    // Without its weights the generator is refused, saying how to give them.
    let mut cfg = config(
        "folder:/unused".into(),
        Method::Cafe,
        1,
        Some(FastConfig {
            generator: MaskInput::Resnet18,
            ..FastConfig::default()
        }),
    );
    let progress = indicatif::ProgressBar::hidden();
    let err = run::train(
        &cfg,
        &dir.path().join("refused"),
        &run::Watch {
            stop: &AtomicBool::new(false),
            progress: &progress,
            max_steps: None,
        },
        &Device::Cpu,
    )
    .err()
    .expect("refused without --mask-init")
    .to_string();
    assert!(err.contains("--mask-init"), "{err}");
    cfg.mask_init = Some(checkpoint.clone());

    let bundle = fast_generator_end_to_end(
        MaskInput::Resnet18,
        None,
        Some(checkpoint.clone()),
        dir.path(),
    );
    // One trainable linear layer (16 -> 32) by default, and the frozen ResNet's tensors,
    // exactly the checkpoint's, under their own prefix.
    let checkpoint = tensors(&checkpoint);
    assert_eq!(bundle["mask_mlp.0.weight"].len(), 32 * 16);
    assert!(!bundle.contains_key("mask_mlp.1.weight"));
    for (name, values) in &checkpoint {
        assert_eq!(
            bundle.get(&format!("frozen_resnet.{name}")),
            Some(values),
            "frozen_resnet.{name}"
        );
    }
    assert!(!bundle.contains_key("conv1.weight"));
}

#[test]
fn fast_mode_with_an_encoder_token_generator_learns_and_evaluates() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The tiny CLIP has two blocks of width 64.
    let mut cfg = config(
        "folder:/unused".into(),
        Method::Cafe,
        1,
        Some(FastConfig {
            generator: MaskInput::Tokens(3),
            ..FastConfig::default()
        }),
    );
    common::write_folder_dataset(&dir.path().join("few"), 1, 1);
    cfg.data = format!("folder:{}", dir.path().join("few").display());
    let progress = indicatif::ProgressBar::hidden();
    let err = run::train(
        &cfg,
        &dir.path().join("refused"),
        &run::Watch {
            stop: &AtomicBool::new(false),
            progress: &progress,
            max_steps: None,
        },
        &Device::Cpu,
    )
    .err()
    .expect("no block 3")
    .to_string();
    assert!(err.contains("tokens:3") && err.contains("1..=2"), "{err}");

    let bundle = fast_generator_end_to_end(MaskInput::Tokens(1), Some(vec![32]), None, dir.path());
    assert_eq!(bundle["mask_mlp.0.weight"].len(), 32 * 64);
    assert_eq!(bundle["mask_mlp.1.weight"].len(), 32 * 32);
    assert!(!bundle.keys().any(|k| k.starts_with("frozen_resnet.")));
}

#[test]
fn a_run_configuration_written_before_the_precision_existed_is_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config("folder:/data".into(), Method::Cafe, 1, None);
    cfg.precision = Precision::Int8;
    let mut json = serde_json::to_value(&cfg).expect("to json");
    assert_eq!(json["precision"], "int8");
    json.as_object_mut().expect("an object").remove("precision");
    std::fs::write(dir.path().join(run::CONFIG), json.to_string()).expect("write");
    assert_eq!(
        run::load_config(dir.path()).expect("loads").precision,
        Precision::F32
    );
}

/// Needs the int8 kernel: fast mode in int8 caches its features beside the f32 ones, not
/// over them, and a model trained on f32 features evaluates on int8 ones about as well.
#[test]
fn fast_mode_in_int8_caches_apart_and_an_f32_model_runs_on_int8_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("data"), 12, 6);
    let spec = format!("folder:{}", dir.path().join("data").display());
    let fast = FastConfig {
        views: 2,
        generator: Default::default(),
        hidden: Some(vec![32]),
        cache_dir: dir.path().join("cache"),
    };
    let finished = |outcome| match outcome {
        RunOutcome::Finished(report) => report,
        RunOutcome::Interrupted { .. } => panic!("not interrupted"),
    };
    let cfg = config(spec.clone(), Method::Cafe, 15, Some(fast.clone()));
    let exact = finished(train(&cfg, &dir.path().join("f32"), None));
    let mut cfg = config(spec.clone(), Method::Cafe, 1, Some(fast));
    cfg.precision = Precision::Int8;
    finished(train(&cfg, &dir.path().join("int8"), None));
    assert_eq!(
        run::load_config(&dir.path().join("int8"))
            .expect("config")
            .precision,
        Precision::Int8
    );
    let cached: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .expect("cache folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".safetensors"))
        .collect();
    for kind in ["clean-", "views-"] {
        let files = |int8: bool| {
            cached
                .iter()
                .filter(|n| n.starts_with(kind) && n.contains("-int8-") == int8)
                .count()
        };
        assert_eq!((files(false), files(true)), (1, 1), "{kind}: {cached:?}");
    }

    let model = ExpressionModel::load(
        &exact.bundle,
        Some(&common::tiny_clip()),
        Precision::Int8,
        &Device::Cpu,
    )
    .expect("an f32 bundle loads with an int8 encoder");
    let dataset = gfer::data::open(&spec, &Default::default()).expect("data");
    let test = dataset.split(gfer::data::Split::Test);
    let (metrics, _) = gfer::eval::evaluate_images(
        &model,
        &test,
        16,
        &Default::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("evaluate");
    let held_out = exact
        .held_out
        .expect("the test split is evaluated")
        .accuracy;
    assert!(
        (metrics.accuracy - held_out).abs() <= 0.1,
        "int8 {} vs f32 {held_out}",
        metrics.accuracy
    );

    // `gfer bench precision` on the same model and images: every test image compared, the
    // int8 accuracy `gfer eval`'s, the f32 one the training run's, and at least as many
    // changed predictions as the accuracies differ by.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args([
            "bench",
            "precision",
            "--json",
            "--precision",
            "int8",
            "--data",
            &spec,
        ])
        .arg("--weights")
        .arg(common::tiny_clip())
        .arg("--model")
        .arg(&exact.bundle)
        .output()
        .expect("gfer runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let row = &report["data"][0];
    assert_eq!(row["images"], test.len(), "{report}");
    assert!(
        row["lowest_cosine"].as_f64().expect("cosine") > 0.999,
        "{report}"
    );
    let accuracy = |key: &str| row[key].as_f64().expect("accuracy") / 100.0;
    assert!(
        (accuracy("quantized_accuracy") - metrics.accuracy).abs() < 1e-9,
        "{report}"
    );
    assert!(
        (accuracy("f32_accuracy") - held_out).abs() < 1e-9,
        "{report}"
    );
    let changed = row["changed_predictions"].as_u64().expect("count") as f64;
    let differ = (accuracy("f32_accuracy") - accuracy("quantized_accuracy")).abs();
    assert!(changed >= (differ * test.len() as f64).round(), "{report}");
}
