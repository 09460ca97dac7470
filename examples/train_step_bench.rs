//! Times full CAFE training steps (ResNet-18 mask generator forward + backward + Adam) on
//! the CPU with random inputs. Used by scripts/bench-train-step, which runs PyTorch's
//! version of the same step beside it.
//!
//! cargo run --release --example train_step_bench -- [BATCH] [STEPS] [SIDE]

use candle_core::{Device, Tensor};
use gfer::model::{drop_vector, init_var_builder, Cafe, CafeConfig};
use gfer::train::optim::{Adam, AdamConfig};
use gfer::train::train_step;
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let batch = args.first().copied().unwrap_or(32);
    let steps = args.get(1).copied().unwrap_or(3);
    let side = args.get(2).copied().unwrap_or(224);
    let device = Device::Cpu;
    let cfg = CafeConfig::default();
    let model = Cafe::new(init_var_builder(HashMap::new(), 3407, &device), &cfg)?;
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default())?;
    let images = Tensor::randn(0f32, 1., (batch, 3, side, side), &device)?;
    let features = Tensor::randn(0f32, 0.5, (batch, cfg.feature_dim), &device)?;
    let labels = Tensor::new(
        (0..batch)
            .map(|i| (i % cfg.classes) as u32)
            .collect::<Vec<_>>(),
        &device,
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3407);
    let mut times = Vec::new();
    // One warm-up step, then the timed ones.
    for step in 0..=steps {
        let drop = drop_vector(cfg.feature_dim, cfg.classes, cfg.drop_per_group, &mut rng)?;
        let drop = Tensor::new(drop, &device)?;
        let start = Instant::now();
        let outcome = train_step(&model, &mut adam, &images, &features, &labels, &drop)?;
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("step {step}: {seconds:.2} s, loss {:.4}", outcome.loss);
        if step > 0 {
            times.push(seconds);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "candle: batch {batch}, {side}x{side}: {:.0} ms/step, {:.1} ms/img, {:.2} img/s",
        mean * 1e3,
        mean * 1e3 / batch as f64,
        batch as f64 / mean
    );
    Ok(())
}
