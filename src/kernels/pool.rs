//! [`max_pool2d`]: candle's own max-pool has no backward pass when the kernel differs from
//! the stride (ResNet's stem pools 3x3 with stride 2). On the CPU it is a custom op whose
//! backward pass sends each output's gradient to the first arg-max of its window, as
//! PyTorch does; on other devices it is built from differentiable tensor ops
//! (`MaxPool::composed`). The CPU kernels run in f32 and f64.

use super::float::{by_dtype, contiguous, on_cpu_kernels, Float};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Square max-pooling of `[N,C,H,W]` with `kernel`, `stride` and `padding` (padded cells
/// never win), output side `(side + 2 padding - kernel) / stride + 1` as in PyTorch
/// (`ceil_mode=False`). Differentiable on every device.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pool = MaxPool {
        kernel,
        stride,
        padding,
    };
    let (_, _, h, w) = x.dims4()?;
    pool.output_side(h)?;
    pool.output_side(w)?;
    if on_cpu_kernels(x) {
        x.contiguous()?.apply_op1(pool)
    } else {
        pool.composed(x)
    }
}

#[derive(Clone, Copy, Debug)]
struct MaxPool {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    fn output_side(&self, side: usize) -> Result<usize> {
        if self.kernel == 0 || self.stride == 0 || 2 * self.padding > self.kernel {
            candle_core::bail!(
                "max_pool2d: kernel {} stride {} padding {} is not a valid pooling",
                self.kernel,
                self.stride,
                self.padding
            )
        }
        let padded = side + 2 * self.padding;
        if padded < self.kernel {
            candle_core::bail!(
                "max_pool2d: input side {side} is smaller than the kernel {}",
                self.kernel
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    /// The same pooling from differentiable ops (pad with -inf, pick each of the k*k
    /// strided sub-grids, take the element-wise maximum), for devices without the custom op.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (ho, wo) = (self.output_side(h)?, self.output_side(w)?);
        let p = self.padding;
        let x = if p > 0 {
            let rows =
                Tensor::full(f32::NEG_INFINITY, (n, c, p, w), x.device())?.to_dtype(x.dtype())?;
            let x = Tensor::cat(&[&rows, x, &rows], 2)?;
            let cols = Tensor::full(f32::NEG_INFINITY, (n, c, h + 2 * p, p), x.device())?
                .to_dtype(x.dtype())?;
            Tensor::cat(&[&cols, &x, &cols], 3)?
        } else {
            x.clone()
        };
        let picks = |offset: usize, count: usize| -> Result<Tensor> {
            let idx: Vec<u32> = (0..count)
                .map(|i| (offset + i * self.stride) as u32)
                .collect();
            Tensor::new(idx, x.device())
        };
        let mut out: Option<Tensor> = None;
        for dy in 0..self.kernel {
            let rows = x.index_select(&picks(dy, ho)?, 2)?;
            for dx in 0..self.kernel {
                let cell = rows.index_select(&picks(dx, wo)?, 3)?;
                out = Some(match out {
                    None => cell,
                    Some(best) => best.maximum(&cell)?,
                });
            }
        }
        match out {
            Some(out) => Ok(out),
            None => candle_core::bail!("max_pool2d: empty kernel"),
        }
    }

    /// For every output cell, the flat index (within its `H*W` plane) of the first maximum
    /// of its window, scanning rows then columns; `None` when the window is all padding.
    fn arg_max<T: Float>(
        &self,
        plane: &[T],
        h: usize,
        w: usize,
        oy: usize,
        ox: usize,
    ) -> Option<usize> {
        let y0 = (oy * self.stride) as isize - self.padding as isize;
        let x0 = (ox * self.stride) as isize - self.padding as isize;
        let mut best: Option<(usize, T)> = None;
        for ky in 0..self.kernel as isize {
            let y = y0 + ky;
            if y < 0 || y >= h as isize {
                continue;
            }
            for kx in 0..self.kernel as isize {
                let x = x0 + kx;
                if x < 0 || x >= w as isize {
                    continue;
                }
                let i = y as usize * w + x as usize;
                let v = plane[i];
                // PyTorch: a later value replaces the best only if strictly greater (or NaN).
                match best {
                    Some((_, b)) if !(v > b || v.is_nan()) => {}
                    _ => best = Some((i, v)),
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(storage, pool_forward(self, storage, layout))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolBackward(*self))?;
        Ok(Some(grad))
    }
}

fn pool_forward<T: Float>(
    pool: &MaxPool,
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    let (ho, wo) = (pool.output_side(h)?, pool.output_side(w)?);
    let input = contiguous::<T>(storage, layout, "max-pool2d")?;
    let mut out = vec![T::ZERO; n * c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(input.par_chunks(h * w))
        .for_each(|(out_plane, plane)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    out_plane[oy * wo + ox] = match pool.arg_max(plane, h, w, oy, ox) {
                        Some(i) => plane[i],
                        None => T::NEG_INFINITY,
                    };
                }
            }
        });
    Ok((T::into_storage(out), Shape::from((n, c, ho, wo))))
}

/// Scatters the output gradient to the arg-max of each window (arguments: the pooled
/// input and the gradient of the pooled output).
struct MaxPoolBackward(MaxPool);

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, pool_backward(&self.0, s1, l1, s2, l2))
    }
}

fn pool_backward<T: Float>(
    pool: &MaxPool,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = l1.shape().dims4()?;
    let (ho, wo) = (pool.output_side(h)?, pool.output_side(w)?);
    if l2.shape().dims() != [n, c, ho, wo] {
        candle_core::bail!(
            "max-pool2d backward: gradient shape {:?}, expected {:?}",
            l2.shape(),
            [n, c, ho, wo]
        )
    }
    let input = contiguous::<T>(s1, l1, "max-pool2d backward input")?;
    let grad_out = contiguous::<T>(s2, l2, "max-pool2d backward gradient")?;
    let mut grad_in = vec![T::ZERO; n * c * h * w];
    grad_in
        .par_chunks_mut(h * w)
        .zip(input.par_chunks(h * w).zip(grad_out.par_chunks(ho * wo)))
        .for_each(|(grad_plane, (plane, grad_out_plane))| {
            // Written before the sums read it: a fresh allocation's first read maps the
            // shared zero page, and the first write then copies it and flushes the TLBs
            // of every core.
            grad_plane.fill(T::ZERO);
            for oy in 0..ho {
                for ox in 0..wo {
                    if let Some(i) = pool.arg_max(plane, h, w, oy, ox) {
                        grad_plane[i] += grad_out_plane[oy * wo + ox];
                    }
                }
            }
        });
    Ok((T::into_storage(grad_in), Shape::from((n, c, h, w))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn pooled_and_grad(x: &Var, use_custom: bool) -> Result<(Tensor, Tensor)> {
        let pool = MaxPool {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let y = if use_custom {
            x.as_tensor().apply_op1(pool)?
        } else {
            pool.composed(x.as_tensor())?
        };
        // A weighted sum so that every output cell carries a different gradient.
        let weights = Tensor::arange(0f32, y.elem_count() as f32, x.device())?
            .reshape(y.shape())?
            .to_dtype(y.dtype())?;
        let grads = (&y * &weights)?.sum_all()?.backward()?;
        let grad = grads.get(x.as_tensor()).expect("x is in the graph").clone();
        Ok((y, grad))
    }

    #[test]
    fn custom_op_and_composed_ops_agree_in_value_and_gradient() -> Result<()> {
        let device = Device::Cpu;
        // Odd and even sides, negative values (padding must never win).
        for ((h, w), dtype) in [
            ((7, 8), DType::F32),
            ((9, 9), DType::F64),
            ((4, 5), DType::F32),
        ] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 1., (2, 3, h, w), &device)? - 2.0)?.to_dtype(dtype)?,
            )?;
            let (y_custom, g_custom) = pooled_and_grad(&x, true)?;
            let (y_composed, g_composed) = pooled_and_grad(&x, false)?;
            assert_eq!(y_custom.dims(), [2, 3, (h - 1) / 2 + 1, (w - 1) / 2 + 1]);
            let max = |t: Tensor| -> Result<f64> {
                t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
            };
            let (dy, dg) = (
                max((y_custom - y_composed)?)?,
                max((g_custom - g_composed)?)?,
            );
            assert_eq!(dy, 0.0, "values differ for {h}x{w}");
            assert_eq!(dg, 0.0, "gradients differ for {h}x{w}");
        }
        Ok(())
    }

    #[test]
    fn a_tie_sends_the_gradient_to_the_first_maximum_like_pytorch() -> Result<()> {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((1, 1, 3, 3), DType::F32, &device)?)?;
        let y = max_pool2d(x.as_tensor(), 3, 2, 1)?;
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        let grads = y.sum_all()?.backward()?;
        let grad = grads.get(x.as_tensor()).expect("x is in the graph");
        // Windows start at (-1,-1), (-1,1), (1,-1), (1,1): first in-image cells are
        // (0,0), (0,1), (1,0), (1,1).
        let expected = [1f32, 1., 0., 1., 1., 0., 0., 0., 0.];
        assert_eq!(grad.flatten_all()?.to_vec1::<f32>()?, expected);
        Ok(())
    }

    #[test]
    fn refuses_an_input_smaller_than_the_kernel() {
        let x = Tensor::zeros((1, 1, 1, 1), DType::F32, &Device::Cpu).expect("zeros");
        assert!(max_pool2d(&x, 5, 2, 1).is_err());
    }
}
