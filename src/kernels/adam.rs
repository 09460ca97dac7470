//! The vectorised loop of Adam's update on parameters held in plain memory
//! ([`AdamConstants::update`]). The optimiser (`train/optim.rs`) computes the step's
//! constants from its configuration and step count; this applies them with the same f32
//! operations in the same order as the tensor version of the update.

use super::threading::ADAM_CHUNK_LEN;
use rayon::prelude::*;

/// Adam's per-step scalars in f32, as the tensor version applies them.
#[derive(Clone, Copy)]
pub(crate) struct AdamConstants {
    pub(crate) weight_decay: f32,
    pub(crate) one_minus_beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) one_minus_beta2: f32,
    pub(crate) inverse_bias_correction2_sqrt: f32,
    pub(crate) eps: f32,
    pub(crate) step_size: f32,
}

impl AdamConstants {
    /// One update of a parameter `value` with its gradient and both moments, in chunks
    /// across the thread pool when it is large ([`ADAM_CHUNK_LEN`]).
    pub(crate) fn update(
        self,
        value: &mut [f32],
        grad: &[f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
    ) {
        if value.len() <= ADAM_CHUNK_LEN {
            return self.apply(value, grad, exp_avg, exp_avg_sq);
        }
        value
            .par_chunks_mut(ADAM_CHUNK_LEN)
            .zip(grad.par_chunks(ADAM_CHUNK_LEN))
            .zip(exp_avg.par_chunks_mut(ADAM_CHUNK_LEN))
            .zip(exp_avg_sq.par_chunks_mut(ADAM_CHUNK_LEN))
            .for_each(|(((p, g), m), v)| self.apply(p, g, m, v));
    }

    fn apply(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, checked just above.
            return unsafe { self.apply_avx2(p, g, m, v) };
        }
        self.apply_portable(p, g, m, v)
    }

    /// The same loop compiled for AVX2, which vectorises it eight lanes wide; no FMA, so
    /// the rounding is that of the separate multiplications and additions.
    ///
    /// # Safety
    /// The processor must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_portable(p, g, m, v)
    }

    #[inline(always)]
    fn apply_portable(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        let c = self;
        for i in 0..n {
            // PyTorch adds the L2 term only when weight_decay != 0; adding 0 * p changes
            // nothing but a -0.0 gradient, which the moments never see as different.
            let grad = g[i] + p[i] * c.weight_decay;
            m[i] += (grad - m[i]) * c.one_minus_beta1;
            v[i] = v[i] * c.beta2 + grad * grad * c.one_minus_beta2;
            let denom = v[i].sqrt() * c.inverse_bias_correction2_sqrt + c.eps;
            p[i] -= (m[i] / denom) * c.step_size;
        }
    }
}
