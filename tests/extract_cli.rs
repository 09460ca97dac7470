//! `gfer extract` on a folder with broken files and a huge image: the bad ones are
//! reported and skipped, the huge one is refused by the pixel limit, the rest are encoded,
//! and a rerun encodes nothing again.

use crate::common;

use std::process::Command;

#[test]
fn extract_reports_bad_images_and_writes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for i in 0..3 {
        common::synthetic_face(i, i, 40)
            .save(input.join(format!("good{i}.png")))
            .expect("write");
    }
    std::fs::write(
        input.join("corrupt.png"),
        b"\x89PNG\r\n\x1a\n this is not really a png",
    )
    .expect("write");
    std::fs::write(input.join("empty.jpg"), b"").expect("write");
    std::fs::write(input.join("notes.jpg"), b"just some text in a .jpg file\n").expect("write");
    // 12000 x 12000 = 144 megapixels, over the default limit of 64.
    image::GrayImage::new(12000, 12000)
        .save(input.join("huge.png"))
        .expect("write huge");

    let out = dir.path().join("features.safetensors");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args(["extract", "--weights"])
            .arg(common::tiny_clip())
            .arg("--out")
            .arg(&out)
            .arg(&input)
            .output()
            .expect("gfer runs")
    };
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for bad in ["corrupt.png", "empty.jpg", "notes.jpg", "huge.png"] {
        assert!(stderr.contains(bad), "{bad} not reported:\n{stderr}");
    }
    assert!(
        stderr.contains("3 encoded") && stderr.contains("4 failed"),
        "{stderr}"
    );
    let huge = stderr
        .lines()
        .find(|l| l.contains("huge.png"))
        .unwrap_or_default();
    assert!(
        huge.contains("pixels"),
        "the huge image is refused for its size: {huge}"
    );

    let set = gfer::backbone::features::FeatureSet::load(&out).expect("features file");
    assert_eq!(set.len(), 3);
    assert_eq!(set.dim, 32);
    assert!(set
        .rows
        .iter()
        .all(|r| r.path.contains("good") && r.label.is_none()));

    let again = run();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("0 encoded, 3 already there"), "{stderr}");
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in [
        "extract", "train", "eval", "protocol", "data", "bench", "domains",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args([sub, "--help"])
            .output()
            .expect("gfer runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.len() > 200,
            "{sub} --help:\n{text}"
        );
    }
}

/// `--device` is one flag on every subcommand that computes; a CPU build refuses
/// `--device cuda` saying that it has no CUDA and how to build one that has.
#[test]
fn every_computing_subcommand_takes_the_device_flag() {
    for sub in [
        &["train"][..],
        &["eval"],
        &["protocol"],
        &["extract"],
        &["predict"],
        &["serve"],
        &["demo"],
        &["bench", "encode"],
        &["bench", "train"],
        &["bench", "parity"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args(sub)
            .arg("--help")
            .output()
            .expect("gfer runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("--device <cpu|cuda[:N]>"),
            "{sub:?} --help:\n{text}"
        );
    }
    let parity = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args(["bench", "parity", "--device", device])
            .arg(common::fixture("parity/small_b1.safetensors"))
            .output()
            .expect("gfer runs")
    };
    let on_cpu = parity("cpu");
    let stdout = String::from_utf8_lossy(&on_cpu.stdout);
    let stderr = String::from_utf8_lossy(&on_cpu.stderr);
    assert!(on_cpu.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("parity on cpu: 2 replays of 1 fixtures, every value within tolerance"),
        "{stdout}"
    );
    assert!(stderr.contains("device: cpu"), "{stderr}");
    if !gfer::device::built_with_cuda() {
        let refused = parity("cuda");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("--device cuda:0: this gfer was built without CUDA")
                && stderr.contains("scripts/build-cuda"),
            "{stderr}"
        );
    }
}

/// `--precision` is one flag on every subcommand that runs a frozen encoder, and a name
/// that is not a precision is refused with the three that are.
#[test]
fn every_encoder_subcommand_takes_the_precision_flag() {
    for sub in [
        &["train"][..],
        &["eval"],
        &["protocol"],
        &["extract"],
        &["predict"],
        &["serve"],
        &["bench", "encode"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args(sub)
            .arg("--help")
            .output()
            .expect("gfer runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("--precision <PRECISION>") && text.contains("Layer norm, softmax"),
            "{sub:?} --help:\n{text}"
        );
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(["extract", "--precision", "fp16", "--weights"])
        .arg(common::tiny_clip())
        .args(["--out", "never-written.safetensors", "."])
        .output()
        .expect("gfer runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'fp16' for '--precision <PRECISION>'")
            && stderr.contains("[possible values: f32, bf16, int8, int8-fast]"),
        "{stderr}"
    );
}

/// Features extracted by a tower of `precision`, their file's metadata, and what gfer
/// printed.
fn extract_faces(
    input: &std::path::Path,
    out: &std::path::Path,
    precision: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(["extract", "--precision", precision, "--weights"])
        .arg(common::tiny_clip())
        .arg("--out")
        .arg(out)
        .arg(input)
        .output()
        .expect("gfer runs")
}

fn faces_folder(dir: &std::path::Path) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for i in 0..6 {
        common::synthetic_face(i, i, 40)
            .save(input.join(format!("face{i}.png")))
            .expect("write");
    }
    input
}

#[test]
fn extract_records_the_precision_of_its_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = faces_folder(dir.path());
    let out = dir.path().join("f32.safetensors");
    let output = extract_faces(&input, &out, "f32");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("precision f32"), "{stderr}");
    let file = gfer::formats::tensorfile::load(&out, &candle_core::Device::Cpu).expect("file");
    assert_eq!(file.metadata["precision"], "f32");
    let set = gfer::backbone::features::FeatureSet::load(&out).expect("features file");
    assert_eq!(set.key.precision, gfer::backbone::Precision::F32);
}

/// Needs the int8 kernel: the file says int8, each image's feature points where the f32
/// one does, and int8 rows are never added to a file of f32 ones.
#[test]
fn extract_in_int8_records_it_and_stays_close_to_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = faces_folder(dir.path());
    let f32_out = dir.path().join("f32.safetensors");
    let int8_out = dir.path().join("int8.safetensors");
    for (out, precision) in [(&f32_out, "f32"), (&int8_out, "int8")] {
        let output = extract_faces(&input, out, precision);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{precision}: {stderr}");
    }
    let load = |path: &std::path::Path| {
        gfer::backbone::features::FeatureSet::load(path).expect("features file")
    };
    let (exact, quantized) = (load(&f32_out), load(&int8_out));
    assert_eq!(quantized.key.precision, gfer::backbone::Precision::Int8);
    assert_eq!(quantized.key.fingerprint, exact.key.fingerprint);
    assert_eq!(quantized.rows, exact.rows);
    for i in 0..exact.len() {
        let (a, b) = (exact.row(i), quantized.row(i));
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(a) * norm(b));
        assert!(cosine > 0.999, "{}: cosine {cosine}", exact.rows[i].path);
    }

    let mixed = extract_faces(&input, &f32_out, "int8");
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(!mixed.status.success(), "int8 rows were added to f32 ones");
    assert!(
        stderr.contains("precision f32") && stderr.contains("precision int8"),
        "{stderr}"
    );
}

/// `gfer bench precision` without a model: each quantized precision's lowest cosine to f32
/// over every test image of a data set, and no accuracies; a data set it cannot open is an
/// error that names it.
#[test]
fn bench_precision_compares_the_features_of_every_test_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("data"), 12, 6);
    let spec = format!("folder:{}", dir.path().join("data").display());
    let test_images = gfer::data::open(&spec, &Default::default())
        .expect("data")
        .split(gfer::data::Split::Test)
        .len();
    let bench = |precision: &str, spec: &str| {
        Command::new(env!("CARGO_BIN_EXE_gfer"))
            .args(["bench", "precision", "--json", "--precision", precision])
            .args(["--data", spec, "--preprocess", "clip", "--weights"])
            .arg(common::tiny_clip())
            .output()
            .expect("gfer runs")
    };
    for precision in ["bf16", "int8", "int8-fast"] {
        let output = bench(precision, &spec);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{precision}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(report["precision"], precision);
        assert_eq!(report["images"], test_images, "{report}");
        let lowest = report["lowest_cosine"].as_f64().expect("cosine");
        assert!(lowest > 0.999 && lowest <= 1.0 + 1e-6, "{report}");
        assert!(report["data"][0]["f32_accuracy"].is_null(), "{report}");
        assert_eq!(report["changed_predictions"], 0, "{report}");
    }
    let missing = format!("folder:{}", dir.path().join("nowhere").display());
    let output = bench("int8", &missing);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("nowhere"),
        "{stderr}"
    );
}
