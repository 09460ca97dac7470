//! The library API in a few lines: find the faces in a photo and print each one's
//! expression.
//!
//! ```sh
//! cargo run --release --example predict -- runs/raf-cafe/model.safetensors ViT-B-32.safetensors group.jpg
//! ```
//!
//! The second argument is the frozen encoder the bundle was trained on (`-` for a model
//! that reads no frozen feature).

use gfer::backbone::Precision;
use gfer::predict::{PredictOptions, Predictor};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, encoder, photo] = args.as_slice() else {
        anyhow::bail!("usage: predict BUNDLE ENCODER_WEIGHTS|- PHOTO");
    };
    let encoder = (encoder != "-").then(|| Path::new(encoder));
    let predictor = Predictor::from_bundle(
        Path::new(bundle),
        encoder,
        Precision::F32,
        &candle_core::Device::Cpu,
        PredictOptions::default(),
    )?;
    let image = gfer::image::open(Path::new(photo), &Default::default())?;
    let prediction = predictor.predict(&image)?;
    if prediction.faces.is_empty() {
        println!("no face found ({} too small)", prediction.too_small);
    }
    for (i, face) in prediction.faces.iter().enumerate() {
        let b = face.bbox;
        println!(
            "face {i} at ({}, {}) {}x{}: {} ({:.0}%)",
            b.x,
            b.y,
            b.width,
            b.height,
            face.label,
            face.confidence * 100.0
        );
    }
    Ok(())
}
