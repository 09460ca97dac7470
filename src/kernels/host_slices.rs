//! The f32 slices the fused encoder kernels ([`super::FrozenLinear`], [`super::LayerNorm`],
//! [`super::attention`]) run on: tensors that live contiguously in CPU memory in f32 lend
//! their data ([`on_host`]) and results come back as CPU tensors ([`from_host`]). Anything
//! else (CUDA, other dtypes) takes each op's composed candle version instead.

use crate::error::Result;
use candle_core::{CpuStorage, Device, Storage, Tensor};

/// Runs `f` on the f32 data of tensors that all live contiguously in CPU memory; `None`
/// (nothing run) when any does not.
pub(super) fn on_host<const N: usize, R>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Option<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slice, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let Storage::Cpu(CpuStorage::F32(data)) = &**storage else {
            return None;
        };
        let (start, end) = layout.contiguous_offsets()?;
        *slice = &data[start..end];
    }
    Some(f(slices))
}

/// A `[rows, cols]` CPU tensor of `data`.
pub(super) fn from_host(data: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

/// Rows handed to one rayon task by the row-wise kernels.
pub(super) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// Seeded uniform values in [-2, 2), for the host-versus-composed tests.
#[cfg(test)]
pub(super) fn random(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// The largest difference of `a` from `b`, relative to `b`'s largest magnitude.
#[cfg(test)]
pub(super) fn max_relative(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale
}
