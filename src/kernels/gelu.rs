//! The GELU activations of the encoders' MLPs, applied to a linear layer's output
//! ([`super::FrozenLinear`]): CLIP's QuickGELU (`x * sigmoid(1.702 x)`) and DINOv2's GELU
//! with the exact erf. In place on f32 slices in CPU memory ([`host`]), vectorised; as
//! candle operations anywhere else ([`composed`]; the exact GELU is candle's `gelu_erf`).

/// In place on f32 slices in CPU memory.
pub(super) mod host {
    use super::super::simd::{exp, multiversion};

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
}

/// The same activations composed from candle tensor operations (any device or dtype).
pub(super) mod composed {
    use crate::error::Result;
    use candle_core::Tensor;

    pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
        Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

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
        host::exact_gelu(&mut fast);
        // 2e-6 absolute near 0 (the erf approximation's worst is 1.2e-6, around x = -5.6),
        // relative beyond 1.
        let worst = fast
            .iter()
            .zip(&reference)
            .map(|(f, r)| (f - r).abs() / r.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "max scaled difference {worst}");
    }
}
