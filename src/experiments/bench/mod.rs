//! Measurements for `gfer bench`: the frozen encoders (images per second at a batch size
//! and thread count, here), training ([`training`]: fast mode, the full recipe's step and
//! the authors' step in PyTorch), face detection ([`detection`]: recall, false
//! detections and time per photo), and the CAFE parity fixtures replayed on a device
//! ([`parity`]).

pub mod detection;
pub mod parity;
pub mod training;

pub use training::{fast_mode, full_step, torch_full_step, FastBench, TorchStep};

use crate::backbone::Encoder;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::time::{Duration, Instant};

/// What one measurement ran.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncodeSetting {
    pub encoder: String,
    pub batch: usize,
    pub threads: usize,
}

/// Its result: the median over the timed batches.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncodeMeasurement {
    #[serde(flatten)]
    pub setting: EncodeSetting,
    pub batches_timed: usize,
    pub ms_per_image: f64,
    pub images_per_second: f64,
}

/// A batch of random pixels for `encoder` (values like normalised images).
pub fn random_pixels(
    encoder: &dyn Encoder,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let side = encoder.input_size();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..batch * 3 * side * side)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    Ok(Tensor::from_vec(values, (batch, 3, side, side), device)?)
}

/// Encodes random batches on a pool of `threads` threads: `warmup` untimed batches, then
/// timed ones until `min_time` has passed (at least `min_batches`).
pub fn measure_encode(
    encoder: &dyn Encoder,
    batch: usize,
    threads: usize,
    warmup: usize,
    min_batches: usize,
    min_time: Duration,
    device: &Device,
) -> Result<EncodeMeasurement> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::internal(format!("cannot start {threads} threads: {e}")))?;
    let pixels = random_pixels(encoder, batch, 0, device)?;
    let mut times = pool.install(|| -> Result<Vec<f64>> {
        for _ in 0..warmup {
            encoder.encode(&pixels)?;
        }
        let started = Instant::now();
        let mut times = Vec::new();
        while times.len() < min_batches || started.elapsed() < min_time {
            let t = Instant::now();
            // Reading the result back waits for asynchronous devices too.
            encoder.encode(&pixels)?.flatten_all()?.to_vec1::<f32>()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(times)
    })?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(EncodeMeasurement {
        setting: EncodeSetting {
            encoder: encoder.id().to_string(),
            batch,
            threads,
        },
        batches_timed: times.len(),
        ms_per_image: 1000.0 * median / batch as f64,
        images_per_second: batch as f64 / median,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{ClipConfig, ClipVisionEncoder, Precision};

    #[test]
    fn a_measurement_times_at_least_the_batches_asked_for() {
        let config = ClipConfig {
            image_size: 32,
            patch_size: 16,
            width: 64,
            layers: 1,
            heads: 1,
            mlp_width: 64,
            embed_dim: 8,
        };
        let encoder = ClipVisionEncoder::random(&config, 1, &Device::Cpu, Precision::F32).unwrap();
        let m = measure_encode(&encoder, 3, 1, 0, 4, Duration::ZERO, &Device::Cpu).unwrap();
        assert_eq!(m.batches_timed, 4);
        assert_eq!((m.setting.batch, m.setting.threads), (3, 1));
        assert!(m.images_per_second > 0.0);
        assert!((m.ms_per_image * m.images_per_second - 1000.0).abs() < 1e-6);
    }
}
