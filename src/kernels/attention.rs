//! Multi-head self-attention of the frozen encoders over a fused q/k/v projection
//! ([`attention`]). On the CPU with a contiguous f32 tensor, one task per (image, head)
//! runs straight on the strided columns of the projection with no copies, the softmax
//! in place and vectorised ([`host`]); anywhere else the same maths runs as candle
//! operations ([`composed`]). Both are tested against each other.

use super::host_slices::{from_host, on_host};
use crate::error::Result;
use candle_core::Tensor;

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

/// The same attention composed from candle tensor operations (any device or dtype).
mod composed {
    use crate::error::Result;
    use candle_core::Tensor;

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

/// The fused kernel on f32 slices in CPU memory.
mod host {
    use super::super::simd::{exp, lane_sum, multiversion};
    use gemm::Parallelism;
    use rayon::prelude::*;

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
    // SAFETY: the pointer is only written through, by tasks that each own a disjoint
    // region of the output (see `attention`), which outlives them all.
    unsafe impl Send for SharedOut {}
    // SAFETY: as above.
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
                        softmax(r);
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

    multiversion! {
        /// Softmax of one row in place.
        fn softmax(xs: &mut [f32]) {
            let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            xs.iter_mut().for_each(|x| *x = exp(*x - max));
            let inv = 1.0 / lane_sum(xs, |x| x);
            xs.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::host_slices::{max_relative, random};
    use super::*;

    #[test]
    fn host_attention_matches_the_composed_candle_ops() {
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
}
