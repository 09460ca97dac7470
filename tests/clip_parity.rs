//! gfer's CLIP image tower against the reference, Hugging Face `transformers`
//! (`image_embeds` of CLIPVisionModelWithProjection), through fixtures written by
//! `scripts/make_reference.py clip` (tiny, committed) and `... clip --testtime` (full-size
//! ViT-B/32, generated into assets/reference/clip/).

use crate::common;

use candle_core::{Device, Tensor};
use gfer::backbone::{load_encoder, Backbone, ClipConfig, ClipVisionEncoder, Encoder, Precision};
use std::collections::HashMap;
use std::path::Path;

/// The tolerance the issue sets: max |gfer - reference| / max |reference|.
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn tiny_config() -> ClipConfig {
    ClipConfig {
        image_size: 32,
        patch_size: 8,
        width: 64,
        layers: 2,
        heads: 4,
        mlp_width: 128,
        embed_dim: 32,
    }
}

fn io(path: &Path) -> (Tensor, Tensor) {
    let io = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    (io["pixels"].clone(), io["embeds"].clone())
}

fn relative_error(ours: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(ours.dims(), reference.dims());
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    let scale = reference.abs().unwrap().max_all().unwrap();
    (diff / scale).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_matches(encoder: &dyn Encoder, pixels: &Tensor, reference: &Tensor, what: &str) {
    let ours = encoder.encode(pixels).unwrap();
    let error = relative_error(&ours, reference);
    eprintln!("{what}: relative error {error:.2e}");
    assert!(
        error < RELATIVE_TOLERANCE,
        "{what}: relative error {error:.2e}"
    );
}

#[test]
fn tiny_tower_matches_transformers_in_every_layout_and_format() {
    let (pixels, reference) = io(&common::fixture("clip/tiny_io.safetensors"));
    let mut fingerprints = Vec::new();
    for file in [
        "tiny_hf.safetensors",
        "tiny_openai.safetensors",
        "tiny_openai.pt",
        "tiny_openai_jit.pt",
    ] {
        let path = common::fixture(&format!("clip/{file}"));
        let encoder =
            ClipVisionEncoder::load_with(&path, Some(&tiny_config()), &Device::Cpu, Precision::F32)
                .unwrap();
        assert_eq!(encoder.dim(), 32);
        assert_eq!(encoder.input_size(), 32);
        assert_matches(&encoder, &pixels, &reference, file);
        fingerprints.push(encoder.fingerprint().to_string());
    }
    // The same weights give the same fingerprint whatever file they came from.
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );
}

#[test]
fn each_image_is_encoded_alone_as_in_a_batch() {
    let (pixels, reference) = io(&common::fixture("clip/tiny_io.safetensors"));
    let path = common::fixture("clip/tiny_hf.safetensors");
    let encoder =
        ClipVisionEncoder::load_with(&path, Some(&tiny_config()), &Device::Cpu, Precision::F32)
            .unwrap();
    for i in 0..pixels.dim(0).unwrap() {
        let one = pixels.narrow(0, i, 1).unwrap();
        assert_matches(
            &encoder,
            &one,
            &reference.narrow(0, i, 1).unwrap(),
            &format!("image {i}"),
        );
    }
}

#[test]
fn the_tiny_shape_is_inferred_except_the_head_count() {
    let encoder =
        ClipVisionEncoder::load(&common::fixture("clip/tiny_openai.pt"), &Device::Cpu).unwrap();
    // CLIP stores no head count; gfer assumes the 64-wide heads of every published tower.
    let expected = ClipConfig {
        heads: 1,
        ..tiny_config()
    };
    assert_eq!(encoder.config(), &expected);
    assert_eq!(encoder.id(), "clip-vit-custom");
}

#[test]
fn a_checkpoint_with_a_wrong_and_a_missing_tensor_is_refused_naming_both() {
    let path = common::fixture("clip/tiny_hf.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors
        .remove("vision_model.encoder.layers.1.layer_norm2.bias")
        .unwrap();
    tensors.insert(
        "vision_model.encoder.layers.0.mlp.fc1.weight".into(),
        Tensor::zeros((100, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = match ClipVisionEncoder::from_tensors_with(
        tensors,
        Some(&tiny_config()),
        "broken.safetensors",
        Precision::F32,
    ) {
        Ok(_) => panic!("a broken checkpoint was accepted"),
        Err(err) => err.to_string(),
    };
    eprintln!("{err}");
    assert!(err.starts_with("broken.safetensors: "), "{err}");
    assert!(
        err.contains("vision_model.encoder.layers.1.layer_norm2.bias: expected [64], missing"),
        "{err}"
    );
    assert!(
        err.contains(
            "vision_model.encoder.layers.0.mlp.fc1.weight: expected [128, 64], found [100, 64]"
        ),
        "{err}"
    );
}

#[test]
fn a_tower_of_another_shape_is_refused_when_a_preset_is_named() {
    let path = common::fixture("clip/tiny_openai.safetensors");
    let err = match load_encoder(
        Some(Backbone::ClipVitB32),
        &path,
        &Device::Cpu,
        Precision::F32,
    ) {
        Ok(_) => panic!("a tiny tower was accepted as ViT-B/32"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("does not match CLIP clip-vit-b32 (OpenAI layout)"),
        "{err}"
    );
    assert!(
        err.contains("visual.conv1.weight: expected [768, 3, 32, 32], found [64, 3, 8, 8]"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_clip_checkpoint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    let t = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("fc.weight".to_string(), t)]), &path).unwrap();
    let err = match ClipVisionEncoder::load(&path, &Device::Cpu) {
        Ok(_) => panic!("accepted"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("not a CLIP checkpoint"), "{err}");
}

/// `gfer bench encode` on the tiny CLIP, one batch of 2 on one thread, printing JSON lines;
/// the caller adds its own arguments.
fn bench_encode_tiny(extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gfer"));
    command
        .args(["bench", "encode", "--weights"])
        .arg(common::fixture("clip/tiny_openai.safetensors"))
        .args(["--batch", "2", "--threads", "1", "--seconds", "0"])
        .args(["--min-batches", "1", "--json"])
        .args(extra);
    command
}

/// The JSON lines a successful command printed.
fn json_lines(output: &std::process::Output) -> Vec<serde_json::Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn bench_encode_reports_its_settings_a_reference_check_and_a_measurement() {
    let reference = common::fixture("clip/tiny_io.safetensors");
    let reference = reference.to_str().unwrap();
    let lines = json_lines(
        &bench_encode_tiny(&["--reference", reference])
            .output()
            .unwrap(),
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["settings"]["batch"], serde_json::json!([2]));
    assert!(
        lines[1]["max_relative_difference"].as_f64().is_some(),
        "{lines:?}"
    );
    assert_eq!(lines[2]["encoder"], "clip-vit-custom");
    assert!(lines[2]["images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn full_size_vit_b32_matches_transformers() {
    let how = "run `python scripts/make_reference.py clip --testtime`";
    let (Some(hf), Some(openai), Some(io_path)) = (
        common::asset("reference/clip/vit_b32_hf.safetensors", how),
        common::asset("reference/clip/vit_b32_openai.pt", how),
        common::asset("reference/clip/vit_b32_io.safetensors", how),
    ) else {
        return;
    };
    let (pixels, reference) = io(&io_path);
    // The HF file's preset is inferred from its shapes; the OpenAI one is checked against
    // ViT-B/32 by name.
    let inferred = load_encoder(None, &hf, &Device::Cpu, Precision::F32).unwrap();
    let named = load_encoder(
        Some(Backbone::ClipVitB32),
        &openai,
        &Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    for (encoder, path) in [(&inferred, &hf), (&named, &openai)] {
        assert_eq!(encoder.id(), "clip-vit-b32");
        assert_eq!(encoder.dim(), 512);
        assert_matches(
            encoder.as_ref(),
            &pixels,
            &reference,
            &path.display().to_string(),
        );
    }
    assert_eq!(inferred.fingerprint(), named.fingerprint());
}

#[test]
fn mean_patch_tokens_of_every_block_match_transformers_hidden_states() {
    let (pixels, embeds) = io(&common::fixture("clip/tiny_io.safetensors"));
    let reference = candle_core::safetensors::load(
        common::fixture("clip/tiny_tokens.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // The head count cannot be inferred from the shapes: name the tiny shape.
    let encoder = ClipVisionEncoder::load_with(
        &common::tiny_clip(),
        Some(&tiny_config()),
        &Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    assert_eq!((encoder.layers(), encoder.token_dim()), (2, 64));
    for layer in 1..=2 {
        let (feature, tokens) = encoder.encode_with_tokens(&pixels, layer).unwrap();
        // The last block keeps all its tokens here; the feature is still encode_image.
        let e = relative_error(&feature, &embeds);
        assert!(e < RELATIVE_TOLERANCE, "layer {layer}: feature error {e}");
        let error = relative_error(&tokens, &reference[&format!("layer{layer}")]);
        eprintln!("tiny CLIP block {layer} mean patch token vs transformers: {error:.2e}");
        assert!(
            error < RELATIVE_TOLERANCE,
            "block {layer}: relative error {error}"
        );
    }
    assert!(encoder.encode_with_tokens(&pixels, 3).is_err());
}

/// `--compare-cpu` runs the same weights on the CPU beside `--device` and prints the
/// largest relative difference (none, here, where both are the CPU).
#[test]
fn bench_encode_compares_the_device_with_the_cpu() {
    let output = bench_encode_tiny(&["--device", "cpu", "--compare-cpu"])
        .output()
        .unwrap();
    let lines = json_lines(&output);
    assert_eq!(lines[0]["settings"]["device"], "cpu");
    let compared = lines
        .iter()
        .find(|l| l.get("max_relative_difference_from_cpu").is_some())
        .expect("a comparison line");
    assert_eq!(compared["device"], "cpu");
    assert_eq!(compared["batch"], 2);
    assert_eq!(compared["max_relative_difference_from_cpu"], 0.0);
}

/// `GFER_MATMUL` chooses the matrix kernel of the whole process, which the benchmark
/// prints; a value that names no kernel, or one this CPU cannot run, stops the command
/// with what was wrong.
#[test]
fn the_kernel_variable_is_obeyed_and_a_bad_value_is_refused() {
    let run = |value: &str| {
        bench_encode_tiny(&[])
            .env("GFER_MATMUL", value)
            .output()
            .unwrap()
    };
    let lines = json_lines(&run("gemm"));
    assert_eq!(lines[0]["settings"]["kernel"], "gemm");
    let refused = |value: &str, expected: &str| {
        let output = run(value);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(stderr.contains(expected), "{stderr}");
    };
    refused(
        "bogus",
        "GFER_MATMUL: unknown matrix kernel `bogus`: expected auto, avx2, avx512 or gemm",
    );
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512f") {
        refused(
            "avx512",
            "GFER_MATMUL=avx512: the avx512 matrix kernel needs AVX-512F, which this CPU lacks",
        );
    }
}

/// Needs the bf16 and int8 kernels: a quantized tower keeps the weights' fingerprint
/// (an f32-trained model runs on it) and its features point where the f32 ones do.
#[test]
fn quantized_towers_keep_the_fingerprint_and_stay_close_to_f32() {
    let (pixels, _) = io(&common::fixture("clip/tiny_io.safetensors"));
    let load = |precision| {
        ClipVisionEncoder::load_with(
            &common::tiny_clip(),
            Some(&tiny_config()),
            &Device::Cpu,
            precision,
        )
        .unwrap()
    };
    let exact = load(Precision::F32);
    let expected = exact.encode(&pixels).unwrap();
    for precision in [Precision::Bf16, Precision::Int8, Precision::Int8Fast] {
        let encoder = load(precision);
        assert_eq!(encoder.precision(), precision);
        assert_eq!(encoder.fingerprint(), exact.fingerprint());
        let cosine = common::smallest_cosine(&encoder.encode(&pixels).unwrap(), &expected);
        eprintln!("{}: smallest cosine to f32 {cosine}", precision.name());
        assert!(cosine > 0.999, "{}: cosine {cosine}", precision.name());
    }
}
