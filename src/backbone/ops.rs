//! The transformer operations the frozen encoders are built from.
//!
//! Each has two implementations behind one function: on the CPU with contiguous f32
//! tensors, fused kernels in plain Rust ([`host`]) on the matrix kernel of
//! [`crate::matmul`], parallelised with rayon; anywhere else (CUDA, other dtypes), the same maths composed
//! from candle operations ([`composed`]). Both are tested against each other.
//!
//! Measured on a 2-core AVX-512 machine, candle's composed ops spent about a third of a
//! ViT-B/32 forward outside the matrix products (separate passes and allocations for the
//! bias, residual, activation, head split and softmax, most of them single-threaded, with
//! libm's scalar `exp`). The host kernels fold the bias and the residual into the
//! product, apply the activation in place with a vectorised `exp`, and run attention per
//! (image, head) straight on the fused q/k/v projection with no copies.

use crate::error::{Error, Result};
use crate::matmul::PackedWeight;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

/// A frozen linear layer, `x [N, in] @ weight[out, in]^T + bias` -> `[N, out]`. A weight
/// in CPU memory in f32 is held only in the layout of the matrix kernel
/// ([`crate::matmul`]); any other stays a tensor for the composed candle operations.
pub struct Linear(Weights);

enum Weights {
    Host {
        weight: PackedWeight,
        bias: Vec<f32>,
    },
    Tensors {
        weight: Tensor,
        bias: Tensor,
    },
}

impl Linear {
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out, depth) = weight.dims2()?;
        if bias.dims() != [out] {
            return Err(Error::config(format!(
                "linear layer: bias shape {:?} does not match weight shape [{out}, {depth}]",
                bias.dims()
            )));
        }
        let host = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        Ok(Self(if host(&weight) && host(&bias) {
            let values = weight.flatten_all()?.to_vec1::<f32>()?;
            Weights::Host {
                weight: PackedWeight::new(&values, out, depth),
                bias: bias.to_vec1()?,
            }
        } else {
            Weights::Tensors { weight, bias }
        }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, host::Activation::None)
    }

    /// `quick_gelu(self.forward(x))`.
    pub fn forward_quick_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, host::Activation::QuickGelu)
    }

    /// `gelu(self.forward(x))` with the exact erf (DINOv2's MLP).
    pub fn forward_exact_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, host::Activation::ExactGelu)
    }

    /// `residual + self.forward(x)`.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.apply(x, Some(residual), host::Activation::None)
    }

    fn apply(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        activation: host::Activation,
    ) -> Result<Tensor> {
        match &self.0 {
            Weights::Host { weight, bias } => {
                let (rows, depth) = x.dims2()?;
                if depth != weight.depth() {
                    return Err(Error::config(format!(
                        "linear layer [{}, {}]: input is {:?}, expected [N, {}]",
                        weight.out(),
                        weight.depth(),
                        x.dims(),
                        weight.depth()
                    )));
                }
                if let Some(residual) = residual {
                    if residual.dims() != [rows, weight.out()] {
                        return Err(Error::config(format!(
                            "linear layer: residual is {:?}, expected [{rows}, {}]",
                            residual.dims(),
                            weight.out()
                        )));
                    }
                }
                let x = host_f32(x)?;
                let data = match residual.map(host_f32).transpose()? {
                    Some(r) => on_host([&x, &r], |[xs, rs]| {
                        host::linear(xs, rows, weight, bias, Some(rs), activation)
                    }),
                    None => on_host([&x], |[xs]| {
                        host::linear(xs, rows, weight, bias, None, activation)
                    }),
                }
                .expect("host_f32 gives contiguous f32 CPU tensors");
                from_host(data, rows, weight.out())
            }
            Weights::Tensors { weight, bias } => {
                let y = composed::linear(x, weight, bias)?;
                match (residual, activation) {
                    (Some(residual), _) => Ok((y + residual)?),
                    (None, host::Activation::QuickGelu) => composed::quick_gelu(&y),
                    (None, host::Activation::ExactGelu) => Ok(y.gelu_erf()?),
                    (None, host::Activation::None) => Ok(y),
                }
            }
        }
    }
}

/// `x` as a contiguous f32 tensor in CPU memory (as it is already, on the CPU path).
fn host_f32(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Err(Error::config(format!(
            "linear layer: weights in CPU memory, input on {:?}",
            x.device()
        )));
    }
    Ok(x.to_dtype(DType::F32)?.contiguous()?)
}

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

/// Multi-head self-attention over a fused projection.
///
/// `qkv` is `[B*T, 3W]`: per token, the query, key and value (each W wide, `heads` heads
/// of W/heads). The first `queries` tokens of each image attend to all T tokens; the
/// result is `[B*queries, W]`, heads side by side as in `[B*queries, heads, W/heads]`.
pub fn attention(qkv: &Tensor, batch: usize, heads: usize, queries: usize) -> Result<Tensor> {
    let (rows, width3) = qkv.dims2()?;
    let shape = host::AttentionShape {
        batch,
        tokens: rows / batch,
        width: width3 / 3,
        heads,
        queries,
    };
    match on_host([qkv], |[qkv]| host::attention(qkv, &shape)) {
        Some(data) => from_host(data, batch * queries, shape.width),
        None => composed::attention(qkv, batch, heads, queries),
    }
}

/// Runs `f` on the f32 data of tensors that all live contiguously in CPU memory; `None`
/// (nothing run) when any does not.
fn on_host<const N: usize, R>(
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

fn from_host(data: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

/// The same operations composed from candle tensor operations (any device or dtype).
mod composed {
    use crate::error::Result;
    use candle_core::Tensor;

    pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&weight.t()?)?.broadcast_add(bias)?)
    }

    pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
        Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
    }

    pub fn attention(qkv: &Tensor, batch: usize, heads: usize, queries: usize) -> Result<Tensor> {
        let (rows, width3) = qkv.dims2()?;
        let (tokens, width) = (rows / batch, width3 / 3);
        let head_width = width / heads;
        let qkv = qkv
            .reshape((batch, tokens, 3, heads, head_width))?
            .permute((2, 0, 3, 1, 4))?; // [3, B, H, T, hw]
        let q = qkv.get(0)?.narrow(2, 0, queries)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (head_width as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // [B, H, queries, hw]
        Ok(out.transpose(1, 2)?.reshape((batch * queries, width))?)
    }
}

/// Fused kernels on f32 slices in CPU memory.
mod host {
    use crate::matmul::PackedWeight;
    use gemm::Parallelism;
    use rayon::prelude::*;

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Activation {
        None,
        QuickGelu,
        ExactGelu,
    }

    /// Rows handed to one rayon task by the row-wise kernels.
    fn rows_per_task(rows: usize) -> usize {
        rows.div_ceil(4 * rayon::current_num_threads()).max(1)
    }

    /// `activation(x @ w^T + bias [+ residual])` with x `[rows, K]`, w `[O, K]`.
    pub fn linear(
        x: &[f32],
        rows: usize,
        w: &PackedWeight,
        bias: &[f32],
        residual: Option<&[f32]>,
        activation: Activation,
    ) -> Vec<f32> {
        let mut y = crate::matmul::linear(x, rows, w, bias, residual);
        let chunks = y.par_chunks_mut(rows_per_task(rows) * w.out().max(1));
        match activation {
            Activation::None => {}
            Activation::QuickGelu => chunks.for_each(simd::quick_gelu),
            Activation::ExactGelu => chunks.for_each(simd::exact_gelu),
        }
        y
    }

    pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
        let width = weight.len();
        let mut dst = vec![0.0; x.len()];
        let rows = rows_per_task(x.len() / width) * width;
        dst.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(dst, x)| {
                for (d, x) in dst.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    simd::layer_norm_row(x, weight, bias, eps, d);
                }
            });
        dst
    }

    pub struct AttentionShape {
        pub batch: usize,
        pub tokens: usize,
        pub width: usize,
        pub heads: usize,
        pub queries: usize,
    }

    /// A raw pointer that rayon tasks may share: each task writes a disjoint region.
    #[derive(Clone, Copy)]
    struct SharedOut(*mut f32);
    unsafe impl Send for SharedOut {}
    unsafe impl Sync for SharedOut {}

    /// One task per (image, head): scores = q k^T / sqrt(hw) straight from the strided
    /// q/k columns of `qkv`, softmax in place, then probs @ v into that head's columns of
    /// the output.
    pub fn attention(qkv: &[f32], s: &AttentionShape) -> Vec<f32> {
        let head_width = s.width / s.heads;
        let row = 3 * s.width; // stride between tokens in qkv
        let scale = (head_width as f32).powf(-0.5);
        let mut out = vec![0.0f32; s.batch * s.queries * s.width];
        let shared = SharedOut(out.as_mut_ptr());
        (0..s.batch * s.heads).into_par_iter().for_each_init(
            || vec![0.0f32; s.queries * s.tokens],
            |scores, task| {
                // Captures the whole wrapper (which is Send), not its raw pointer field.
                #[allow(clippy::redundant_locals)]
                let shared = shared;
                let (image, head) = (task / s.heads, task % s.heads);
                let base = image * s.tokens * row + head * head_width;
                let (q, k, v) = (
                    &qkv[base..],
                    &qkv[base + s.width..],
                    &qkv[base + 2 * s.width..],
                );
                // SAFETY: q, k, v address rows 0..tokens of this image with stride
                // `row` and columns 0..head_width, all inside qkv; scores is
                // [queries, tokens]; this task alone writes rows image*queries.. and
                // columns head*head_width.. of out ([batch*queries, width]).
                unsafe {
                    gemm::gemm(
                        s.queries,
                        s.tokens,
                        head_width,
                        scores.as_mut_ptr(),
                        1,
                        s.tokens as isize,
                        false,
                        q.as_ptr(),
                        1,
                        row as isize,
                        k.as_ptr(),
                        row as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    for r in scores.chunks_exact_mut(s.tokens) {
                        simd::softmax(r);
                    }
                    let dst = shared
                        .0
                        .add(image * s.queries * s.width + head * head_width);
                    gemm::gemm(
                        s.queries,
                        head_width,
                        s.tokens,
                        dst,
                        1,
                        s.width as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        s.tokens as isize,
                        v.as_ptr(),
                        1,
                        row as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        out
    }

    /// Element-wise and row kernels, compiled for AVX-512 and AVX2 beside the baseline
    /// and picked at run time; the loops are written so the compiler vectorises them.
    pub mod simd {
        /// Defines `pub fn $name($args)` that runs `$body` compiled for the best
        /// instruction set this processor has.
        macro_rules! multiversion {
            ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
                $(#[$doc])*
                pub fn $name($($arg: $ty),*) {
                    #[inline(always)]
                    fn body($($arg: $ty),*) $body
                    #[cfg(target_arch = "x86_64")]
                    {
                        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                        unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                        #[target_feature(enable = "avx2,fma")]
                        unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                        if std::arch::is_x86_feature_detected!("avx512f")
                            && std::arch::is_x86_feature_detected!("avx512vl")
                        {
                            // SAFETY: the features were detected on this processor.
                            return unsafe { avx512($($arg),*) };
                        }
                        if std::arch::is_x86_feature_detected!("avx2")
                            && std::arch::is_x86_feature_detected!("fma")
                        {
                            // SAFETY: as above.
                            return unsafe { avx2($($arg),*) };
                        }
                    }
                    body($($arg),*)
                }
            };
        }

        /// `e^x` for f32 to about 2 ulp, branch-free so that loops over it vectorise:
        /// x = n ln2 + r with |r| <= ln2/2, e^r by a degree-7 polynomial
        /// (Cephes `expf`), 2^n through the exponent bits.
        #[inline(always)]
        pub fn exp(x: f32) -> f32 {
            const LOG2E: f32 = std::f32::consts::LOG2_E;
            const LN2_HI: f32 = 0.693_359_4;
            const LN2_LO: f32 = -2.121_944_4e-4;
            // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
            const ROUND: f32 = 12_582_912.0;
            let x = x.clamp(-87.0, 88.0);
            let n = (x * LOG2E + ROUND) - ROUND;
            let r = x - n * LN2_HI - n * LN2_LO;
            let p = 1.987_569_1e-4_f32;
            let p = p.mul_add(r, 1.398_199_9e-3);
            let p = p.mul_add(r, 8.333_452e-3);
            let p = p.mul_add(r, 4.166_579_6e-2);
            let p = p.mul_add(r, 1.666_666_5e-1);
            let p = p.mul_add(r, 0.5);
            let p = (p * r).mul_add(r, r) + 1.0;
            p * f32::from_bits(((n as i32 + 127) << 23) as u32)
        }

        multiversion! {
            /// CLIP's QuickGELU in place: `x * sigmoid(1.702 x)`.
            fn quick_gelu(xs: &mut [f32]) {
                for x in xs.iter_mut() {
                    *x /= 1.0 + exp(-1.702 * *x);
                }
            }
        }

        multiversion! {
            /// GELU with the exact erf in place: `x/2 (1 + erf(x/sqrt 2))`.
            fn exact_gelu(xs: &mut [f32]) {
                for x in xs.iter_mut() {
                    *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
        }

        /// erf in f32 as a rational approximation (Eigen's `generic_fast_erf_float`, also
        /// used by XLA): within about 1e-6 absolute, and branch-free so it vectorises.
        #[inline(always)]
        fn erf(x: f32) -> f32 {
            let x = x.clamp(-4.0, 4.0);
            let x2 = x * x;
            let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
            p = x2 * p + -2.101_024e-6;
            p = x2 * p + -5.692_506_4e-5;
            p = x2 * p + -7.349_906_3e-4;
            p = x2 * p + -2.954_6e-3;
            p = x2 * p + -1.609_603_3e-2;
            p *= x;
            let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
            q = x2 * q + -1.682_827e-3;
            q = x2 * q + -7.373_329e-3;
            q = x2 * q + -1.426_474e-2;
            p / q
        }

        multiversion! {
            /// Softmax of one row in place.
            fn softmax(xs: &mut [f32]) {
                let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                xs.iter_mut().for_each(|x| *x = exp(*x - max));
                let inv = 1.0 / lane_sum(xs, |x| x);
                xs.iter_mut().for_each(|x| *x *= inv);
            }
        }

        /// Sum with 16 independent lanes (a plain f32 sum does not vectorise).
        #[inline(always)]
        fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
            let mut lanes = [0.0f32; 16];
            let chunks = xs.chunks_exact(16);
            let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
            for chunk in chunks {
                for (lane, &x) in lanes.iter_mut().zip(chunk) {
                    *lane += f(x);
                }
            }
            lanes.iter().sum::<f32>() + tail
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_relative(a: &Tensor, b: &Tensor) -> f32 {
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

    #[test]
    fn vectorised_exp_matches_libm() {
        let mut worst = 0.0f32;
        for i in -8700..8790 {
            let x = i as f32 * 0.01 + 0.003;
            let rel = ((host::simd::exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(host::simd::exp(-1000.0), host::simd::exp(-87.0));
    }

    #[test]
    fn vectorised_exact_gelu_matches_candles_f64_erf_gelu() {
        let x: Vec<f32> = (-12_000..12_000).map(|i| i as f32 * 1e-3).collect();
        let reference = Tensor::new(x.as_slice(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut fast = x.clone();
        host::simd::exact_gelu(&mut fast);
        // 2e-6 absolute near 0 (the erf approximation's worst is 1.2e-6, around x = -5.6),
        // relative beyond 1.
        let worst = fast
            .iter()
            .zip(&reference)
            .map(|(f, r)| (f - r).abs() / r.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "max scaled difference {worst}");
    }

    #[test]
    fn host_kernels_match_the_composed_candle_ops() {
        let (rows, k, out) = (37, 48, 72);
        let (x, w, b) = (
            random(&[rows, k], 1),
            random(&[out, k], 2),
            random(&[out], 3),
        );
        let residual = random(&[rows, out], 4);
        let layer = Linear::new(w.clone(), b.clone()).unwrap();
        let cases = [
            (
                "linear",
                layer.forward(&x).unwrap(),
                composed::linear(&x, &w, &b).unwrap(),
            ),
            (
                "linear_quick_gelu",
                layer.forward_quick_gelu(&x).unwrap(),
                composed::quick_gelu(&composed::linear(&x, &w, &b).unwrap()).unwrap(),
            ),
            (
                "linear_exact_gelu",
                layer.forward_exact_gelu(&x).unwrap(),
                composed::linear(&x, &w, &b).unwrap().gelu_erf().unwrap(),
            ),
            (
                "linear_residual",
                layer.forward_residual(&x, &residual).unwrap(),
                (composed::linear(&x, &w, &b).unwrap() + &residual).unwrap(),
            ),
            (
                "layer_norm",
                layer_norm(
                    &(x.clone() + 30.0).unwrap(),
                    &b.narrow(0, 0, k).unwrap(),
                    &w.get(0).unwrap(),
                    1e-5,
                )
                .unwrap(),
                candle_nn::ops::layer_norm_slow(
                    &(x.clone() + 30.0).unwrap(),
                    &b.narrow(0, 0, k).unwrap(),
                    &w.get(0).unwrap(),
                    1e-5,
                )
                .unwrap(),
            ),
        ];
        for (name, fast, reference) in cases {
            let err = max_relative(&fast, &reference);
            assert!(err < 1e-5, "{name}: relative error {err:e}");
        }
        let (batch, tokens, heads, width) = (3, 11, 4, 32);
        let qkv = random(&[batch * tokens, 3 * width], 5);
        for queries in [tokens, 1] {
            let fast = attention(&qkv, batch, heads, queries).unwrap();
            let reference = composed::attention(&qkv, batch, heads, queries).unwrap();
            let err = max_relative(&fast, &reference);
            assert!(
                err < 1e-5,
                "attention with {queries} queries: relative error {err:e}"
            );
        }
    }

    #[test]
    fn wrong_input_shapes_are_errors_that_give_both_shapes() {
        let layer = Linear::new(random(&[4, 8], 1), random(&[4], 2)).unwrap();
        let err = layer.forward(&random(&[3, 7], 3)).unwrap_err().to_string();
        assert!(err.contains("[3, 7]") && err.contains("[N, 8]"), "{err}");
        let residual = random(&[3, 5], 4);
        let err = layer
            .forward_residual(&random(&[3, 8], 5), &residual)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[3, 5]") && err.contains("[3, 4]"), "{err}");
    }

    #[test]
    fn tensors_off_the_host_fast_path_take_the_composed_one() {
        let x = random(&[5, 8], 6).to_dtype(DType::F64).unwrap();
        let w = random(&[4, 8], 7).to_dtype(DType::F64).unwrap();
        let b = random(&[4], 8).to_dtype(DType::F64).unwrap();
        let y = Linear::new(w, b).unwrap().forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(y.dims(), &[5, 4]);
    }
}
