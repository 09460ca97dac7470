//! gfer's integration tests: one test binary (one link step instead of thirteen), one
//! module per concern, as ripgrep's `tests/tests.rs`. `GFER_REQUIRE_ASSETS=1` (set by
//! `scripts/test`) turns a missing fetched asset from a skip into a failure.

// Helpers: fixtures, fetched assets, generated images (`common`); stand-in classifiers and
// a trained test bundle (`predict_support`).
mod common;
mod predict_support;

// CAFE against the authors' PyTorch code, replayed step by step.
mod cafe_parity;
// CLIP's image tower against transformers, OpenAI checkpoints and onnx-clip.
mod clip_parity;
// DINOv2 against transformers, Meta's layout and onnxruntime.
mod dinov2_parity;
// Decoding and preprocessing against Pillow and torchvision.
mod image_parity;
// Every data-set loader on fixtures in the native formats.
mod data_loaders;
// `gfer data stats` and `gfer data check`, run as the binary.
mod data_cli;
// The offline demo's domains built from the fetched assets.
mod domains;
// Training end to end: resume, fast mode and its generators, bundles.
mod train;
// The cross-domain protocol and the feature cache's invalidation rules.
mod protocol;
// The protocol, extraction and the feature cache as job arrays on one shared folder.
mod array_jobs;
// The Slurm and Kubernetes job files in deploy/.
mod deploy;
// `gfer extract` with broken and huge images.
mod extract_cli;
// Face detection on real photos.
mod detect;
// MTCNN against facenet-pytorch on real photos.
mod mtcnn_parity;
// `gfer predict`: inputs, batching, output formats, drawing, sharding.
mod predict_cli;
// `gfer predict` on videos through ffmpeg.
mod video;
// The HTTP server: answers, limits, concurrency, shutdown.
mod serve;
