//! The frozen encoders' linear layers ([`FrozenLinear`]), with the activation or residual
//! that follows them fused in. On the CPU with contiguous f32 tensors the weight is held
//! packed for gfer's matrix kernel ([`super::matmul`]), or quantized for the int8 one
//! ([`super::int8`]), which add the bias and the residual as they store each block of the
//! product, and the activation runs in place ([`super::gelu`]); anywhere else (CUDA, other
//! dtypes) the same maths runs as candle operations ([`composed`]), in f32 only. Both are
//! tested against each other.

use super::gelu;
use super::host_slices::{from_host, on_host};
use super::int8::{Narrow, QuantizedWeight, Wide};
use super::matmul::PackedWeight;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// A frozen linear layer, `x [N, in] @ weight[out, in]^T + bias` -> `[N, out]`. A weight
/// in CPU memory in f32 is held only in the layout of its precision's kernel; any other
/// stays a tensor for the composed candle operations.
pub struct FrozenLinear(Weights);

enum Weights {
    Host { weight: HostWeight, bias: Vec<f32> },
    Tensors { weight: Tensor, bias: Tensor },
}

/// A weight in CPU memory, in the layout of the product that runs it.
enum HostWeight {
    F32(PackedWeight),
    /// Rounded to bfloat16 and packed for the f32 kernel, whose inputs are rounded too.
    Bf16(PackedWeight),
    Int8(QuantizedWeight<Wide>),
    Int8Fast(QuantizedWeight<Narrow>),
}

/// The arithmetic of a frozen encoder's linear layers (`--precision`). Layer norm, softmax,
/// attention and the residual stream stay f32 in every precision.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and products.
    #[default]
    F32,
    /// Weights and inputs rounded to bfloat16, products summed in f32 (on the f32 kernel:
    /// bfloat16's results, at f32's speed).
    Bf16,
    /// Weights quantized to 8 bits per output channel once at load, inputs to 16 bits
    /// per row as each product runs, integer products rescaled to f32.
    Int8,
    /// Weights quantized to 7 bits per output channel, inputs to 8 bits per row: twice
    /// the products per instruction of `int8`, and twice its weights' rounding error.
    #[value(name = "int8-fast")]
    #[serde(rename = "int8-fast")]
    Int8Fast,
}

impl Precision {
    /// The name on the command line and in feature files.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Int8Fast => "int8-fast",
        }
    }
}

/// What is applied to the layer's output, in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Activation {
    None,
    QuickGelu,
    ExactGelu,
}

impl FrozenLinear {
    /// The layer in `precision`; a precision other than f32 needs the weight in CPU memory.
    pub fn new(weight: Tensor, bias: Tensor, precision: Precision) -> Result<Self> {
        let (out, depth) = weight.dims2()?;
        if bias.dims() != [out] {
            return Err(Error::config(format!(
                "linear layer: bias shape {:?} does not match weight shape [{out}, {depth}]",
                bias.dims()
            )));
        }
        let host = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !(host(&weight) && host(&bias)) {
            if precision != Precision::F32 {
                return Err(Error::config(format!(
                    "linear layer [{out}, {depth}]: precision {} runs on the CPU with f32 \
                     weights; these are {:?} on {:?}",
                    precision.name(),
                    weight.dtype(),
                    weight.device()
                )));
            }
            return Ok(Self(Weights::Tensors { weight, bias }));
        }
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let weight = match precision {
            Precision::F32 => HostWeight::F32(PackedWeight::new(&values, out, depth)),
            Precision::Bf16 => {
                let rounded: Vec<f32> = values.iter().map(|&v| host::bf16(v)).collect();
                HostWeight::Bf16(PackedWeight::new(&rounded, out, depth))
            }
            Precision::Int8 => HostWeight::Int8(QuantizedWeight::new(&values, out, depth)),
            Precision::Int8Fast => HostWeight::Int8Fast(QuantizedWeight::new(&values, out, depth)),
        };
        Ok(Self(Weights::Host {
            weight,
            bias: bias.to_vec1()?,
        }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, Activation::None)
    }

    /// `quick_gelu(self.forward(x))`.
    pub fn forward_quick_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, Activation::QuickGelu)
    }

    /// `gelu(self.forward(x))` with the exact erf (DINOv2's MLP).
    pub fn forward_exact_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, Activation::ExactGelu)
    }

    /// `residual + self.forward(x)`.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.apply(x, Some(residual), Activation::None)
    }

    fn apply(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        activation: Activation,
    ) -> Result<Tensor> {
        match &self.0 {
            Weights::Host { weight, bias } => {
                let (rows, depth) = x.dims2()?;
                let (out, expected) = weight.shape();
                if depth != expected {
                    return Err(Error::config(format!(
                        "linear layer [{out}, {expected}]: input is {:?}, expected [N, {expected}]",
                        x.dims(),
                    )));
                }
                if let Some(residual) = residual {
                    if residual.dims() != [rows, out] {
                        return Err(Error::config(format!(
                            "linear layer: residual is {:?}, expected [{rows}, {out}]",
                            residual.dims(),
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
                from_host(data, rows, out)
            }
            Weights::Tensors { weight, bias } => {
                let y = composed::linear(x, weight, bias)?;
                match (residual, activation) {
                    (Some(residual), _) => Ok((y + residual)?),
                    (None, Activation::QuickGelu) => gelu::composed::quick_gelu(&y),
                    (None, Activation::ExactGelu) => Ok(y.gelu_erf()?),
                    (None, Activation::None) => Ok(y),
                }
            }
        }
    }
}

impl HostWeight {
    /// `(out, in)`.
    fn shape(&self) -> (usize, usize) {
        match self {
            HostWeight::F32(w) | HostWeight::Bf16(w) => (w.out(), w.depth()),
            HostWeight::Int8(w) => (w.out(), w.depth()),
            HostWeight::Int8Fast(w) => (w.out(), w.depth()),
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

/// The layer composed from candle tensor operations (any device or dtype).
mod composed {
    use crate::error::Result;
    use candle_core::Tensor;

    pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&weight.t()?)?.broadcast_add(bias)?)
    }
}

/// The fused layer on f32 slices in CPU memory.
mod host {
    use super::super::host_slices::rows_per_task;
    use super::super::{gelu, int8, matmul};
    use super::{Activation, HostWeight};
    use rayon::prelude::*;

    /// `activation(x @ w^T + bias [+ residual])` with x `[rows, K]`, w `[O, K]`.
    pub fn linear(
        x: &[f32],
        rows: usize,
        w: &HostWeight,
        bias: &[f32],
        residual: Option<&[f32]>,
        activation: Activation,
    ) -> Vec<f32> {
        let mut y = match w {
            HostWeight::F32(w) => matmul::linear(x, rows, w, bias, residual),
            HostWeight::Bf16(w) => {
                let x: Vec<f32> = x.par_iter().map(|&v| bf16(v)).collect();
                matmul::linear(&x, rows, w, bias, residual)
            }
            HostWeight::Int8(w) => int8::linear(x, rows, w, bias, residual),
            HostWeight::Int8Fast(w) => int8::linear(x, rows, w, bias, residual),
        };
        let chunks = y.par_chunks_mut(rows_per_task(rows) * w.shape().0.max(1));
        match activation {
            Activation::None => {}
            Activation::QuickGelu => chunks.for_each(gelu::host::quick_gelu),
            Activation::ExactGelu => chunks.for_each(gelu::host::exact_gelu),
        }
        y
    }

    /// `v` rounded to the nearest bfloat16 (ties to even), as an f32.
    pub fn bf16(v: f32) -> f32 {
        if v.is_nan() {
            return v;
        }
        let bits = v.to_bits();
        let rounding = 0x7fff + ((bits >> 16) & 1);
        f32::from_bits(bits.wrapping_add(rounding) & 0xffff_0000)
    }
}

#[cfg(test)]
mod tests {
    use super::super::host_slices::{max_relative, random};
    use super::*;

    #[test]
    fn host_linear_matches_the_composed_candle_ops() {
        let (rows, k, out) = (37, 48, 72);
        let (x, w, b) = (
            random(&[rows, k], 1),
            random(&[out, k], 2),
            random(&[out], 3),
        );
        let residual = random(&[rows, out], 4);
        let layer = FrozenLinear::new(w.clone(), b.clone(), Precision::F32).unwrap();
        let cases = [
            (
                "linear",
                layer.forward(&x).unwrap(),
                composed::linear(&x, &w, &b).unwrap(),
            ),
            (
                "linear_quick_gelu",
                layer.forward_quick_gelu(&x).unwrap(),
                gelu::composed::quick_gelu(&composed::linear(&x, &w, &b).unwrap()).unwrap(),
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
        ];
        for (name, fast, reference) in cases {
            let err = max_relative(&fast, &reference);
            assert!(err < 1e-5, "{name}: relative error {err:e}");
        }
    }

    #[test]
    fn wrong_input_shapes_are_errors_that_give_both_shapes() {
        let layer = FrozenLinear::new(random(&[4, 8], 1), random(&[4], 2), Precision::F32).unwrap();
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
    fn quantized_layers_stay_close_to_f32_with_every_fused_step() {
        let (rows, k, out) = (37, 384, 72);
        let (x, w, b) = (
            random(&[rows, k], 1),
            random(&[out, k], 2),
            random(&[out], 3),
        );
        let residual = random(&[rows, out], 4);
        let f32_layer = FrozenLinear::new(w.clone(), b.clone(), Precision::F32).unwrap();
        for (precision, tolerance) in [
            (Precision::Bf16, 2e-2),
            (Precision::Int8, 1e-2),
            (Precision::Int8Fast, 5e-2),
        ] {
            let layer = FrozenLinear::new(w.clone(), b.clone(), precision).unwrap();
            let cases = [
                (layer.forward(&x), f32_layer.forward(&x)),
                (
                    layer.forward_quick_gelu(&x),
                    f32_layer.forward_quick_gelu(&x),
                ),
                (
                    layer.forward_exact_gelu(&x),
                    f32_layer.forward_exact_gelu(&x),
                ),
                (
                    layer.forward_residual(&x, &residual),
                    f32_layer.forward_residual(&x, &residual),
                ),
            ];
            for (i, (quantized, exact)) in cases.into_iter().enumerate() {
                let (quantized, exact) = (quantized.unwrap(), exact.unwrap());
                let err = max_relative(&quantized, &exact);
                assert!(err > 0.0, "{precision:?} case {i}: identical to f32");
                assert!(
                    err < tolerance,
                    "{precision:?} case {i}: relative error {err:e}"
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_to_the_nearest_with_ties_to_even() {
        let bf16 = host::bf16;
        assert_eq!(bf16(1.0), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(bf16(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(bf16(-2.5), -2.5);
        assert!(bf16(f32::NAN).is_nan());
        assert_eq!(bf16(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn quantized_precisions_refuse_weights_off_the_host() {
        let w = random(&[4, 8], 7).to_dtype(DType::F64).unwrap();
        let b = random(&[4], 8).to_dtype(DType::F64).unwrap();
        for precision in [Precision::Bf16, Precision::Int8, Precision::Int8Fast] {
            let err = FrozenLinear::new(w.clone(), b.clone(), precision)
                .err()
                .expect("refused")
                .to_string();
            assert!(
                err.contains(precision.name()) && err.contains("F64"),
                "{err}"
            );
        }
    }

    #[test]
    fn tensors_off_the_host_fast_path_take_the_composed_one() {
        let x = random(&[5, 8], 6).to_dtype(DType::F64).unwrap();
        let w = random(&[4, 8], 7).to_dtype(DType::F64).unwrap();
        let b = random(&[4], 8).to_dtype(DType::F64).unwrap();
        let y = FrozenLinear::new(w, b, Precision::F32)
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(y.dims(), &[5, 4]);
    }
}
