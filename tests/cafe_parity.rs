//! CAFE against the authors' PyTorch code (re-created by scripts/reference/cafe.py):
//! every `*.safetensors` fixture in tests/fixtures/parity/ (committed, small ResNet
//! widths) and in assets/reference/parity/ (full ResNet-18, written at test time by
//! `scripts/make_reference.py cafe --testtime`) is replayed step by step. The schema is in
//! tests/fixtures/parity/README.md.
//!
//! Tolerance: `max |ours - torch| <= tol * max |torch|` per tensor, tol 1e-4 for the first
//! forward pass (logits, losses) and 1e-3 for gradients, the tensors after each step and
//! the final evaluation-mode logits.
//!
//! The expected values are PyTorch's in float64 (rounded to f32). Each fixture is replayed
//! twice: in f64, every value of every step is compared; in f32, the dtype gfer trains in,
//! the first forward pass is. The f32 gradients are not compared: where a ReLU input or a
//! max-pool window lies within round-off of a tie, any f32 implementation may take the
//! other branch and move a gradient by far more than round-off (PyTorch's own f32
//! gradients miss its f64 ones by 7e-3 on full_224_b2 and 0.15 on untuned_b6); the worst
//! f32 deviations are printed for information.
//!
//! The replay itself is `gfer::experiments::bench::parity`, which `gfer bench parity
//! --device cuda` runs on a GPU too. `GFER_PARITY_DEVICE=cuda` runs these tests on the
//! first GPU (build with `--features cuda`).

use crate::common;

use candle_core::Device;
use gfer::experiments::bench::parity::{self, REPLAYS};
use gfer::formats::tensorfile;
use gfer::model::resnet::{load_checkpoint, RESNET18_WIDTHS};
use std::path::{Path, PathBuf};

const HOW_TO_GET: &str = "run `scripts/make_reference.py cafe --testtime`";

fn device() -> Device {
    match std::env::var("GFER_PARITY_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("GFER_PARITY_DEVICE=cuda needs a GPU and --features cuda")
        }
        _ => Device::Cpu,
    }
}

fn fixtures_in(dir: &Path) -> Vec<PathBuf> {
    parity::fixtures_in(&[dir.to_path_buf()]).unwrap_or_else(|e| panic!("{e}"))
}

fn replay_all(files: &[PathBuf]) {
    let device = device();
    let mut failures = Vec::new();
    for file in files {
        for (dtype, all_steps) in REPLAYS {
            let start = std::time::Instant::now();
            println!("{} in {dtype:?}:", file.display());
            let report = parity::replay(file, &device, dtype, all_steps)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for (kind, (rel, name)) in &report.worst {
                println!("  worst {kind:<13} {rel:.2e}  ({name})");
            }
            if let Some((rel, name)) = &report.f32_gradient {
                println!("  (f32 gradients, not compared: worst {rel:.2e} at {name})");
            }
            println!("  ({:.1} s)", start.elapsed().as_secs_f64());
            failures.extend(
                report
                    .failures
                    .iter()
                    .map(|f| format!("{} in {dtype:?}: {f}", file.display())),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn committed_fixtures_match_the_authors_pytorch_code() {
    let files = fixtures_in(&common::fixture("parity"));
    assert!(!files.is_empty(), "no committed parity fixtures");
    replay_all(&files);
}

#[test]
fn full_resnet18_fixtures_match_the_authors_pytorch_code() {
    let Some(dir) = common::asset("reference/parity", HOW_TO_GET) else {
        return;
    };
    let files = fixtures_in(&dir);
    assert!(
        !files.is_empty(),
        "{} holds no fixtures; {HOW_TO_GET}",
        dir.display()
    );
    replay_all(&files);
}

#[test]
fn msceleb_and_torchvision_checkpoints_load_by_torchvision_names() {
    let Some(dir) = common::asset("reference/resnet18", HOW_TO_GET) else {
        return;
    };
    let device = Device::Cpu;
    let expected = tensorfile::load(&dir.join("resnet18_expected.safetensors"), &device)
        .expect("expected tensors")
        .tensors;
    for file in ["resnet18_msceleb_like.pth", "resnet18_torchvision.pth"] {
        let loaded = load_checkpoint(&dir.join(file), RESNET18_WIDTHS, false, &device)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(loaded.len(), expected.len(), "{file}");
        for (name, want) in &expected {
            let got = loaded
                .get(name)
                .unwrap_or_else(|| panic!("{file}: no {name}"));
            let diff = (got - want)
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>());
            assert_eq!(diff.expect("difference"), 0.0, "{file}: {name}");
        }
    }

    // A truncated file and a foreign file are refused with the path in the message.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(dir.join("resnet18_msceleb_like.pth")).expect("checkpoint bytes");
    let truncated = tmp.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let foreign = tmp.path().join("foreign.pth");
    std::fs::write(&foreign, b"this is not a checkpoint").expect("write");
    for bad in [&truncated, &foreign] {
        let error =
            load_checkpoint(bad, RESNET18_WIDTHS, false, &device).expect_err("must be refused");
        assert!(
            error.to_string().contains(&bad.display().to_string()),
            "{error}"
        );
    }
    // A checkpoint of another architecture: every mismatch is listed; partial load is opt-in.
    let narrow = [32, 64, 128, 256];
    let error = load_checkpoint(
        &dir.join("resnet18_torchvision.pth"),
        narrow,
        false,
        &device,
    )
    .expect_err("mis-shaped");
    assert!(
        error
            .to_string()
            .contains("mis-shaped layer4.1.conv2.weight"),
        "{error}"
    );
}
