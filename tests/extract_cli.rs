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
