//! [`conv2d`]: candle's CPU backward pass of a convolution runs a naive transposed
//! convolution for the input gradient; on the CPU this one is a custom op whose forward
//! and backward passes are im2col/col2im around matrix products: in f32 on gfer's packed
//! kernel where it runs ([`super::conv_panels`]), else on the `gemm` crate
//! ([`super::gemm`]). Other devices use candle's convolution. The CPU kernels run in f32
//! and f64.

use super::float::{by_dtype, contiguous, on_cpu_kernels, Float};
use super::gemm::{strided_product, MatrixView};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// 2-d convolution of `[N,Cin,H,W]` with `[Cout,Cin,kh,kw]`, no bias, no dilation, one
/// group. Differentiable on every device.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if on_cpu_kernels(x) && weight.dtype() == x.dtype() {
        let conv = Conv { stride, padding };
        conv.geometry(x.dims(), weight.dims())?;
        x.contiguous()?.apply_op2(&weight.contiguous()?, conv)
    } else {
        Ok(x.conv2d(weight, padding, stride, 1, 1)?)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Conv {
    pub(super) stride: usize,
    pub(super) padding: usize,
}

/// Sizes of one convolution; `k = cin * kh * kw` rows of the im2col matrix, `p = ho * wo`
/// columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geometry {
    pub(super) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    pub(super) fn p(&self) -> usize {
        self.ho * self.wo
    }
}

impl Conv {
    fn geometry(&self, x: &[usize], weight: &[usize]) -> Result<Geometry> {
        let (&[n, cin, h, w], &[cout, wcin, kh, kw]) = (x, weight) else {
            candle_core::bail!("conv2d: input {x:?} and weight {weight:?} must both be 4-d")
        };
        if wcin != cin || self.stride == 0 || h + 2 * self.padding < kh || w + 2 * self.padding < kw
        {
            candle_core::bail!(
                "conv2d: input {x:?} does not fit weight {weight:?} with stride {} padding {}",
                self.stride,
                self.padding
            )
        }
        let ho = (h + 2 * self.padding - kh) / self.stride + 1;
        let wo = (w + 2 * self.padding - kw) / self.stride + 1;
        Ok(Geometry {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            ho,
            wo,
        })
    }

    /// A 1x1 convolution with stride 1 and no padding reads the image as its own im2col.
    pub(super) fn is_pointwise(&self, g: &Geometry) -> bool {
        g.kh == 1 && g.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// `col[(ci*kh + ky)*kw + kx][oy*wo + ox] = image[ci][oy*s - pad + ky][ox*s - pad + kx]`
    /// (0 outside the image).
    fn im2col<T: Float>(&self, g: &Geometry, image: &[T], col: &mut [T]) {
        let (s, pad) = (self.stride as isize, self.padding as isize);
        col.par_chunks_mut(g.p())
            .enumerate()
            .for_each(|(row, out)| {
                let (ci, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
                let plane = &image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for oy in 0..g.ho {
                    let iy = oy as isize * s - pad + ky as isize;
                    let out_row = &mut out[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy >= g.h as isize {
                        out_row.fill(T::ZERO);
                        continue;
                    }
                    let in_row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, v) in out_row.iter_mut().enumerate() {
                        let ix = ox as isize * s - pad + kx as isize;
                        *v = if ix < 0 || ix >= g.w as isize {
                            T::ZERO
                        } else {
                            in_row[ix as usize]
                        };
                    }
                }
            });
    }

    /// The adjoint of [`Conv::im2col`]: adds every column entry back to its pixel.
    pub(super) fn col2im<T: Float>(&self, g: &Geometry, col: &[T], image: &mut [T]) {
        let (s, pad) = (self.stride as isize, self.padding as isize);
        let rows_per_channel = g.kh * g.kw * g.p();
        image
            .par_chunks_mut(g.h * g.w)
            .zip(col.par_chunks(rows_per_channel))
            .for_each(|(plane, rows)| {
                plane.fill(T::ZERO);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = &rows[(ky * g.kw + kx) * g.p()..(ky * g.kw + kx + 1) * g.p()];
                        for oy in 0..g.ho {
                            let iy = oy as isize * s - pad + ky as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let in_row = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                            for ox in 0..g.wo {
                                let ix = ox as isize * s - pad + kx as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    in_row[ix as usize] += row[oy * g.wo + ox];
                                }
                            }
                        }
                    }
                }
            });
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, conv_forward(self, s1, l1, s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        // The images entering the stem need no gradient.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &ConvInputGrad { conv: *self, h, w })?)
        } else {
            None
        };
        let (_, _, kh, kw) = weight.dims4()?;
        let grad_weight = x.apply_op2_no_bwd(
            &grad,
            &ConvWeightGrad {
                conv: *self,
                kh,
                kw,
            },
        )?;
        Ok((grad_x, Some(grad_weight)))
    }
}

/// The input gradient of [`Conv`]: arguments the output gradient and the weight.
struct ConvInputGrad {
    conv: Conv,
    h: usize,
    w: usize,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, conv_input_grad(self, s1, l1, s2, l2))
    }
}

/// The weight gradient of [`Conv`]: arguments the input and the output gradient.
struct ConvWeightGrad {
    conv: Conv,
    kh: usize,
    kw: usize,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, conv_weight_grad(self, s1, l1, s2, l2))
    }
}

/// `run` on f32 operands where gfer's packed kernel runs (see [`super::conv_panels`]); `None`
/// sends the caller to the generic path.
fn on_panels<T: Float>(
    a: &[T],
    b: &[T],
    run: impl FnOnce(&[f32], &[f32]) -> Option<Vec<f32>>,
) -> Option<CpuStorage> {
    let values = run(T::as_f32(a)?, T::as_f32(b)?)?;
    Some(CpuStorage::F32(values))
}

fn conv_forward<T: Float>(
    conv: &Conv,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let g = conv.geometry(l1.dims(), l2.dims())?;
    let x = contiguous::<T>(s1, l1, "conv2d input")?;
    let weight = contiguous::<T>(s2, l2, "conv2d weight")?;
    let shape = Shape::from((g.n, g.cout, g.ho, g.wo));
    if let Some(out) = on_panels(x, weight, |x, weight| conv.forward_on_panels(&g, x, weight)) {
        return Ok((out, shape));
    }
    let (k, p) = (g.k(), g.p());
    let mut out = vec![T::ZERO; g.n * g.cout * p];
    let mut col = vec![T::ZERO; if conv.is_pointwise(&g) { 0 } else { k * p }];
    for (image, out) in x.chunks(g.cin * g.h * g.w).zip(out.chunks_mut(g.cout * p)) {
        let col = if conv.is_pointwise(&g) {
            image
        } else {
            conv.im2col(&g, image, &mut col);
            &col
        };
        strided_product(
            g.cout,
            p,
            k,
            out,
            false,
            MatrixView::rows(weight, k),
            MatrixView::rows(col, p),
        )?;
    }
    Ok((T::into_storage(out), shape))
}

fn conv_input_grad<T: Float>(
    op: &ConvInputGrad,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, cin) = (l1.dims()[0], l2.dims()[1]);
    let g = op.conv.geometry(&[n, cin, op.h, op.w], l2.dims())?;
    if l1.dims() != [g.n, g.cout, g.ho, g.wo] {
        candle_core::bail!(
            "conv2d backward: gradient {:?} does not fit {g:?}",
            l1.dims()
        )
    }
    let grad = contiguous::<T>(s1, l1, "conv2d output gradient")?;
    let weight = contiguous::<T>(s2, l2, "conv2d weight")?;
    let shape = Shape::from((g.n, g.cin, g.h, g.w));
    let on_kernel = |grad: &[f32], weight: &[f32]| op.conv.input_grad_on_panels(&g, grad, weight);
    if let Some(grad_x) = on_panels(grad, weight, on_kernel) {
        return Ok((grad_x, shape));
    }
    let (k, p) = (g.k(), g.p());
    let mut grad_x = vec![T::ZERO; g.n * g.cin * g.h * g.w];
    let pointwise = op.conv.is_pointwise(&g);
    let mut col = vec![T::ZERO; if pointwise { 0 } else { k * p }];
    for (grad_out, grad_image) in grad
        .chunks(g.cout * p)
        .zip(grad_x.chunks_mut(g.cin * g.h * g.w))
    {
        // dcol[k,p] = W^T[k,cout] grad_out[cout,p]
        let dst = if pointwise {
            &mut *grad_image
        } else {
            &mut col[..]
        };
        strided_product(
            k,
            p,
            g.cout,
            dst,
            false,
            MatrixView::transposed(weight, k),
            MatrixView::rows(grad_out, p),
        )?;
        if !pointwise {
            op.conv.col2im(&g, &col, grad_image);
        }
    }
    Ok((T::into_storage(grad_x), shape))
}

fn conv_weight_grad<T: Float>(
    op: &ConvWeightGrad,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (cin, cout) = (l1.dims()[1], l2.dims()[1]);
    let g = op.conv.geometry(l1.dims(), &[cout, cin, op.kh, op.kw])?;
    if l2.dims() != [g.n, g.cout, g.ho, g.wo] {
        candle_core::bail!(
            "conv2d backward: gradient {:?} does not fit {g:?}",
            l2.dims()
        )
    }
    let x = contiguous::<T>(s1, l1, "conv2d input")?;
    let grad = contiguous::<T>(s2, l2, "conv2d output gradient")?;
    let shape = Shape::from((g.cout, g.cin, g.kh, g.kw));
    if let Some(grad_w) = on_panels(x, grad, |x, grad| {
        op.conv.weight_grad_on_panels(&g, x, grad)
    }) {
        return Ok((grad_w, shape));
    }
    let (k, p) = (g.k(), g.p());
    let mut grad_w = vec![T::ZERO; g.cout * k];
    let pointwise = op.conv.is_pointwise(&g);
    let mut col = vec![T::ZERO; if pointwise { 0 } else { k * p }];
    for (i, (image, grad_out)) in x
        .chunks(g.cin * g.h * g.w)
        .zip(grad.chunks(g.cout * p))
        .enumerate()
    {
        let col = if pointwise {
            image
        } else {
            op.conv.im2col(&g, image, &mut col);
            &col
        };
        // grad_w[cout,k] += grad_out[cout,p] col^T[p,k]
        strided_product(
            g.cout,
            k,
            p,
            &mut grad_w,
            i > 0,
            MatrixView::rows(grad_out, p),
            MatrixView::transposed(col, p),
        )?;
    }
    Ok((T::into_storage(grad_w), shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn gemm_convolution_matches_candle_in_value_and_both_gradients() -> Result<()> {
        let device = Device::Cpu;
        // (input, weight, stride, padding): the ResNet stem, 3x3 convolutions, the 1x1
        // downsample, a pointwise one, odd and even sides (square: candle's own backward
        // pass mis-sizes the input gradient of non-square inputs).
        let cases = [
            ((2, 3, 17, 17), (4, 3, 7, 7), 2, 3),
            ((3, 4, 9, 9), (5, 4, 3, 3), 1, 1),
            ((2, 4, 8, 8), (6, 4, 3, 3), 2, 1),
            ((2, 4, 7, 7), (6, 4, 1, 1), 2, 0),
            ((2, 4, 6, 6), (3, 4, 1, 1), 1, 0),
            // Large enough for the matrix kernel's threads, several passes over the depth
            // (k = 360 > 256) and pixel counts off the 16-wide panels.
            ((2, 16, 20, 20), (32, 16, 3, 3), 1, 1),
            ((1, 40, 9, 9), (8, 40, 3, 3), 1, 1),
            ((2, 24, 23, 23), (40, 24, 1, 1), 1, 0),
        ];
        for ((x_shape, w_shape, stride, padding), (dtype, tol)) in cases
            .into_iter()
            .flat_map(|case| [(case, (DType::F32, 1e-5)), (case, (DType::F64, 1e-12))])
        {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., x_shape, &device)?.to_dtype(dtype)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1., w_shape, &device)?.to_dtype(dtype)?)?;
            let run = |ours: bool| -> Result<Vec<Tensor>> {
                let y = if ours {
                    conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?
                } else {
                    x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 1)?
                };
                let probe = Tensor::arange(0f32, y.elem_count() as f32, y.device())?
                    .reshape(y.shape())?
                    .sin()?
                    .to_dtype(dtype)?;
                let grads = (&y * &probe)?.sum_all()?.backward()?;
                Ok(vec![
                    y.clone(),
                    grads.get(x.as_tensor()).expect("x gradient").clone(),
                    grads.get(w.as_tensor()).expect("w gradient").clone(),
                ])
            };
            for (what, (ours, theirs)) in ["value", "input gradient", "weight gradient"]
                .iter()
                .zip(run(true)?.iter().zip(run(false)?.iter()))
            {
                assert_eq!(ours.dims(), theirs.dims(), "{what} {x_shape:?} {w_shape:?}");
                let max = |t: &Tensor| -> Result<f64> {
                    t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
                };
                let (diff, scale) = (max(&(ours - theirs)?)?, max(theirs)?);
                assert!(
                    diff <= tol * scale,
                    "{what} {x_shape:?} {w_shape:?} {dtype:?}: {diff} vs scale {scale}"
                );
            }
        }
        Ok(())
    }

    /// A convolution is linear in its input and in its weight, so for y = conv(x, w) and
    /// any probe g: sum(y g) = sum(x dL/dx) = sum(w dL/dw) with L = sum(y g). Checks
    /// non-square and odd shapes that candle's own backward cannot do.
    #[test]
    fn gemm_convolution_gradients_are_the_adjoints_on_non_square_inputs() -> Result<()> {
        let device = Device::Cpu;
        for (x_shape, w_shape, stride, padding) in [
            ((2, 3, 17, 12), (4, 3, 7, 7), 2, 3),
            ((1, 2, 9, 6), (3, 2, 3, 3), 2, 1),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., x_shape, &device)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1., w_shape, &device)?)?;
            let y = conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?;
            let reference = x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 1)?;
            let forward = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(forward < 1e-4, "forward {x_shape:?}: {forward}");
            let probe = Tensor::randn(0f32, 1., y.shape(), &device)?;
            let loss = (&y * &probe)?.sum_all()?;
            let grads = loss.backward()?;
            let total = loss.to_scalar::<f32>()?;
            for var in [&x, &w] {
                let grad = grads.get(var.as_tensor()).expect("gradient");
                let adjoint = (var.as_tensor() * grad)?.sum_all()?.to_scalar::<f32>()?;
                assert!(
                    (adjoint - total).abs() < 1e-3 * total.abs().max(1.0),
                    "{x_shape:?}: {adjoint} vs {total}"
                );
            }
        }
        Ok(())
    }
}
