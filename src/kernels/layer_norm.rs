//! The frozen encoders' layer normalisation over the last dimension of `[N, W]` tensors
//! ([`LayerNorm`]): on the CPU with contiguous f32 tensors a fused row kernel ([`host`]),
//! vectorised and parallel over rows; anywhere else candle's `layer_norm`. Both are tested
//! against each other.

use super::host_slices::{from_host, on_host};
use crate::error::Result;
use candle_core::Tensor;

/// A frozen layer normalisation over the last dimension of `[N, W]` tensors.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f32) -> Self {
        Self { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// Layer normalisation over the last dimension of a `[N, W]` tensor.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    match on_host([x, weight, bias], |[xs, ws, bs]| {
        host::layer_norm(xs, ws, bs, eps)
    }) {
        Some(data) => from_host(data, x.dim(0)?, x.dim(1)?),
        None => Ok(candle_nn::ops::layer_norm(x, weight, bias, eps)?),
    }
}

/// The fused kernel on f32 slices in CPU memory.
mod host {
    use super::super::host_slices::rows_per_task;
    use super::super::simd::{lane_sum, multiversion};
    use rayon::prelude::*;

    pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
        let width = weight.len();
        let mut dst = vec![0.0; x.len()];
        let rows = rows_per_task(x.len() / width) * width;
        dst.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(dst, x)| {
                for (d, x) in dst.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    layer_norm_row(x, weight, bias, eps, d);
                }
            });
        dst
    }

    multiversion! {
        /// One row of layer normalisation (two passes: mean, then variance about it).
        fn layer_norm_row(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
            let n = x.len() as f32;
            let mean = lane_sum(x, |v| v) / n;
            let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (v - mean) * inv * w + b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::host_slices::{max_relative, random};
    use super::*;

    #[test]
    fn host_layer_norm_matches_candles_layer_norm() {
        // Drawn as for the linear layer's test: the same shapes and seeds.
        let (rows, k, out) = (37, 48, 72);
        let (x, w, b) = (
            random(&[rows, k], 1),
            random(&[out, k], 2),
            random(&[out], 3),
        );
        let fast = layer_norm(
            &(x.clone() + 30.0).unwrap(),
            &b.narrow(0, 0, k).unwrap(),
            &w.get(0).unwrap(),
            1e-5,
        )
        .unwrap();
        let reference = candle_nn::ops::layer_norm_slow(
            &(x.clone() + 30.0).unwrap(),
            &b.narrow(0, 0, k).unwrap(),
            &w.get(0).unwrap(),
            1e-5,
        )
        .unwrap();
        let err = max_relative(&fast, &reference);
        assert!(err < 1e-5, "layer_norm: relative error {err:e}");
    }
}
