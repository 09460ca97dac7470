//! [`batch_norm_train`]: training-mode batch normalisation built from tensor ops makes
//! about twenty passes over each activation (forward and backward); on the CPU this one is
//! a set of custom ops fused into four, with the per-channel sums accumulated in f64.
//! Other devices use the tensor-op version (`batch_norm_from_tensor_ops`). The CPU
//! kernels run in f32 and f64.

use super::float::{by_dtype, contiguous, on_cpu_kernels, Float};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Training-mode batch normalisation of `[N,C,H,W]`: each channel minus its batch mean,
/// divided by `sqrt(biased batch variance + eps)`, times `weight`, plus `bias` (both `[C]`).
/// Returns the output and the batch mean and biased variance (`[C]`, detached) for the
/// running averages. Differentiable in all three arguments on every device.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _, _) = x.dims4()?;
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!(
            "batch norm: input {:?} needs weight and bias [{c}], got {:?} and {:?}",
            x.dims(),
            weight.dims(),
            bias.dims()
        )
    }
    if on_cpu_kernels(x) && weight.dtype() == x.dtype() && bias.dtype() == x.dtype() {
        let x = x.contiguous()?;
        let stats = x.apply_op1_no_bwd(&ChannelStats)?;
        let op = BatchNormTrain {
            stats: stats.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            eps,
        };
        let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
        return Ok((y, stats.get(0)?, stats.get(1)?));
    }
    batch_norm_from_tensor_ops(x, weight, bias, eps)
}

/// [`batch_norm_train`] from differentiable tensor ops, for devices without the fused op.
fn batch_norm_from_tensor_ops(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    // Sums over the contiguous H*W first, then over the batch.
    let count = (n * h * w) as f64;
    let per_channel = (1, c, 1, 1);
    let channel_mean = |t: &Tensor| -> Result<Tensor> {
        let sum = t.reshape((n, c, h * w))?.sum_keepdim(2)?.sum_keepdim(0)?;
        (sum / count)?.reshape(per_channel)
    };
    let mean = channel_mean(x)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = channel_mean(&centered.sqr()?)?;
    let scale = (&var + eps)?
        .sqrt()?
        .recip()?
        .mul(&weight.reshape(per_channel)?)?;
    let y = centered
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.reshape(per_channel)?)?;
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// Per-channel statistics of `[N,C,H,W]` as `[2,C]`: the mean and the biased variance
/// (two passes, accumulated in f64).
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(storage, channel_stats(storage, layout))
    }
}

/// The `(n, c)` planes of channel `c`, each `hw` long, in a contiguous `[N,C,H,W]`.
fn channel_planes<T>(
    data: &[T],
    n: usize,
    c: usize,
    hw: usize,
    channel: usize,
) -> impl Iterator<Item = &[T]> {
    (0..n).map(move |i| &data[(i * c + channel) * hw..(i * c + channel + 1) * hw])
}

fn channel_stats<T: Float>(storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    let x = contiguous::<T>(storage, layout, "batch norm input")?;
    let count = (n * h * w) as f64;
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|channel| {
            let planes = || channel_planes(x, n, c, h * w, channel);
            let mean = planes().flatten().map(|v| v.to_f64()).sum::<f64>() / count;
            let var = planes()
                .flatten()
                .map(|v| (v.to_f64() - mean).powi(2))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect();
    let mut out: Vec<T> = stats.iter().map(|s| T::from_f64(s.0)).collect();
    out.extend(stats.iter().map(|s| T::from_f64(s.1)));
    Ok((T::into_storage(out), Shape::from((2, c))))
}

/// The normalisation itself, given the batch statistics; arguments x, weight, bias.
struct BatchNormTrain {
    /// Mean and biased variance per channel.
    stats: Vec<Vec<f64>>,
    eps: f64,
}

impl BatchNormTrain {
    fn inv_std(&self, channel: usize) -> f64 {
        1.0 / (self.stats[1][channel] + self.eps).sqrt()
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, batch_norm_forward(self, s1, l1, s2, l2, s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // [2,C]: sum of dy (the bias gradient), sum of dy * x_hat (the weight gradient).
        let sums = x.apply_op2_no_bwd(
            &grad,
            &BatchNormGradSums {
                stats: self.stats.clone(),
                eps: self.eps,
            },
        )?;
        let input_grad = BatchNormInputGrad {
            stats: self.stats.clone(),
            eps: self.eps,
            sums: sums.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            weight: weight.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        };
        let grad_x = x.apply_op2_no_bwd(&grad, &input_grad)?;
        Ok((Some(grad_x), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

fn batch_norm_forward<T: Float>(
    op: &BatchNormTrain,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = l1.shape().dims4()?;
    let x = contiguous::<T>(s1, l1, "batch norm input")?;
    let weight = contiguous::<T>(s2, l2, "batch norm weight")?;
    let bias = contiguous::<T>(s3, l3, "batch norm bias")?;
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .enumerate()
        .for_each(|(plane, (out, input))| {
            let channel = plane % c;
            let mean = op.stats[0][channel];
            let scale = op.inv_std(channel) * weight[channel].to_f64();
            let shift = bias[channel].to_f64();
            for (o, &v) in out.iter_mut().zip(input) {
                *o = T::from_f64((v.to_f64() - mean) * scale + shift);
            }
        });
    Ok((T::into_storage(y), Shape::from((n, c, h, w))))
}

/// Per-channel `sum(dy)` and `sum(dy * x_hat)` as `[2,C]`; arguments x and dy.
struct BatchNormGradSums {
    stats: Vec<Vec<f64>>,
    eps: f64,
}

impl CustomOp2 for BatchNormGradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, batch_norm_grad_sums(self, s1, l1, s2, l2))
    }
}

fn batch_norm_grad_sums<T: Float>(
    op: &BatchNormGradSums,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = l1.shape().dims4()?;
    let x = contiguous::<T>(s1, l1, "batch norm input")?;
    let dy = contiguous::<T>(s2, l2, "batch norm output gradient")?;
    if dy.len() != x.len() {
        candle_core::bail!(
            "batch norm backward: gradient {:?} for input {:?}",
            l2.dims(),
            l1.dims()
        )
    }
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|channel| {
            let mean = op.stats[0][channel];
            let inv_std = 1.0 / (op.stats[1][channel] + op.eps).sqrt();
            let mut sum_dy = 0.0;
            let mut sum_dy_xhat = 0.0;
            for (xs, gs) in channel_planes(x, n, c, h * w, channel).zip(channel_planes(
                dy,
                n,
                c,
                h * w,
                channel,
            )) {
                for (&v, &g) in xs.iter().zip(gs) {
                    let g = g.to_f64();
                    sum_dy += g;
                    sum_dy_xhat += g * (v.to_f64() - mean) * inv_std;
                }
            }
            (sum_dy, sum_dy_xhat)
        })
        .collect();
    let mut out: Vec<T> = sums.iter().map(|s| T::from_f64(s.0)).collect();
    out.extend(sums.iter().map(|s| T::from_f64(s.1)));
    Ok((T::into_storage(out), Shape::from((2, c))))
}

/// `dx = weight * inv_std * (dy - sum(dy)/M - x_hat * sum(dy x_hat)/M)`; arguments x, dy.
struct BatchNormInputGrad {
    stats: Vec<Vec<f64>>,
    eps: f64,
    sums: Vec<Vec<f64>>,
    weight: Vec<f64>,
}

impl CustomOp2 for BatchNormInputGrad {
    fn name(&self) -> &'static str {
        "batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, batch_norm_input_grad(self, s1, l1, s2, l2))
    }
}

fn batch_norm_input_grad<T: Float>(
    op: &BatchNormInputGrad,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = l1.shape().dims4()?;
    let x = contiguous::<T>(s1, l1, "batch norm input")?;
    let dy = contiguous::<T>(s2, l2, "batch norm output gradient")?;
    if dy.len() != x.len() {
        candle_core::bail!(
            "batch norm backward: gradient {:?} for input {:?}",
            l2.dims(),
            l1.dims()
        )
    }
    let count = (n * h * w) as f64;
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w).zip(dy.par_chunks(h * w)))
        .enumerate()
        .for_each(|(plane, (out, (xs, gs)))| {
            let channel = plane % c;
            let mean = op.stats[0][channel];
            let inv_std = 1.0 / (op.stats[1][channel] + op.eps).sqrt();
            let mean_dy = op.sums[0][channel] / count;
            let mean_dy_xhat = op.sums[1][channel] / count;
            let k = op.weight[channel] * inv_std;
            for (o, (&v, &g)) in out.iter_mut().zip(xs.iter().zip(gs)) {
                let x_hat = (v.to_f64() - mean) * inv_std;
                *o = T::from_f64(k * (g.to_f64() - mean_dy - x_hat * mean_dy_xhat));
            }
        });
    Ok((T::into_storage(dx), Shape::from((n, c, h, w))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_batch_norm_matches_the_tensor_op_version_in_value_statistics_and_gradients(
    ) -> Result<()> {
        let device = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2., (3, 4, 5, 6), &device)? + 0.7)?.to_dtype(dtype)?,
            )?;
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 4, &device)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &device)?.to_dtype(dtype)?)?;
            let probe = Tensor::randn(0f32, 1., (3, 4, 5, 6), &device)?.to_dtype(dtype)?;
            let run = |fused: bool| -> Result<Vec<Tensor>> {
                let (y, mean, var) = if fused {
                    batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?
                } else {
                    batch_norm_from_tensor_ops(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?
                };
                let grads = (&y * &probe)?.sum_all()?.backward()?;
                Ok(vec![
                    y,
                    mean,
                    var,
                    grads.get(x.as_tensor()).expect("x gradient").clone(),
                    grads.get(w.as_tensor()).expect("weight gradient").clone(),
                    grads.get(b.as_tensor()).expect("bias gradient").clone(),
                ])
            };
            let names = [
                "output",
                "mean",
                "variance",
                "input gradient",
                "weight gradient",
                "bias gradient",
            ];
            for (name, (ours, theirs)) in
                names.iter().zip(run(true)?.iter().zip(run(false)?.iter()))
            {
                let max = |t: &Tensor| -> Result<f64> {
                    t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
                };
                let (diff, scale) = (max(&(ours - theirs)?)?, max(theirs)?);
                assert!(diff <= tol * scale, "{name} {dtype:?}: {diff} vs {scale}");
            }
        }
        Ok(())
    }
}
