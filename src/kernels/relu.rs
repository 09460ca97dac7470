//! [`relu`]: candle's ReLU backward pass makes four new tensors the size of the
//! activation (zeros, a comparison, its conversion, the product); on the CPU this one is a
//! custom op that takes one pass, and like PyTorch passes the gradient where the output is
//! positive. Other devices use candle's ReLU. The CPU kernels run in f32 and f64.

use super::float::{by_dtype, contiguous, on_cpu_kernels, Float};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `max(x, 0)` element-wise (NaN stays NaN); on the CPU the gradient passes where the
/// output is positive, as in PyTorch (elsewhere candle's ReLU, whose gradient also passes
/// at exactly zero). Differentiable on every device.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_kernels(x) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(storage, relu_forward(storage, layout))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

fn relu_forward<T: Float>(storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(storage, layout, "relu input")?;
    let y = x
        .par_iter()
        .map(|&v| if v < T::ZERO { T::ZERO } else { v })
        .collect();
    Ok((T::into_storage(y), layout.shape().clone()))
}

/// The gradient of [`relu`]; arguments its output and the output gradient.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, relu_backward(s1, l1, s2, l2))
    }
}

fn relu_backward<T: Float>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let y = contiguous::<T>(s1, l1, "relu output")?;
    let grad = contiguous::<T>(s2, l2, "relu output gradient")?;
    if y.len() != grad.len() {
        candle_core::bail!(
            "relu backward: gradient {:?} for output {:?}",
            l2.dims(),
            l1.dims()
        )
    }
    let dx = y
        .par_iter()
        .zip(grad)
        .map(|(&y, &g)| if y > T::ZERO { g } else { T::ZERO })
        .collect();
    Ok((T::into_storage(dx), l1.shape().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn relu_matches_candle_and_passes_the_gradient_where_the_output_is_positive() -> Result<()> {
        let device = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let values = Tensor::randn(0f32, 1., (2, 3, 5, 7), &device)?;
            // Exact zeros: PyTorch's gradient there is 0 (candle's own ReLU passes it).
            let values = values
                .broadcast_mul(&Tensor::new(&[1f32, 0., 1.], &device)?.reshape((1, 3, 1, 1))?)?;
            let x = Var::from_tensor(&values.to_dtype(dtype)?)?;
            let y = relu(x.as_tensor())?;
            let probe = Tensor::arange(1f32, y.elem_count() as f32 + 1.0, &device)?
                .reshape(y.shape())?
                .to_dtype(dtype)?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let grad = grads.get(x.as_tensor()).expect("x is in the graph");
            let as_f64 = |t: &Tensor| -> Result<Vec<f64>> {
                t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
            };
            let (xs, ys, gs, ps) = (
                as_f64(x.as_tensor())?,
                as_f64(&y)?,
                as_f64(grad)?,
                as_f64(&probe)?,
            );
            assert_eq!(ys, as_f64(&x.as_tensor().relu()?)?, "{dtype:?}");
            for (i, (&x, &g)) in xs.iter().zip(&gs).enumerate() {
                assert_eq!(
                    g,
                    if x > 0.0 { ps[i] } else { 0.0 },
                    "{dtype:?} at {i}: x {x}"
                );
            }
        }
        Ok(())
    }
}
