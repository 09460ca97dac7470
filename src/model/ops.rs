//! Layers candle 0.11 cannot train (well) as shipped.
//!
//! [`max_pool2d`]: candle's own max-pool has no backward pass when the kernel differs from
//! the stride (ResNet's stem pools 3x3 with stride 2). On the CPU it is a custom op whose
//! backward pass sends each output's gradient to the first arg-max of its window, as
//! PyTorch does; on other devices it is built from differentiable tensor ops.
//!
//! [`conv2d`]: candle's CPU backward pass of a convolution runs a naive transposed
//! convolution for the input gradient; on the CPU this one is a custom op whose forward
//! and backward passes are im2col/col2im around GEMMs: in f32 on gfer's own matrix kernel
//! where it runs (`conv_panels`), else on the `gemm` crate. Other devices use candle's.
//!
//! [`relu`]: candle's ReLU backward pass makes four new tensors the size of the
//! activation (zeros, a comparison, its conversion, the product); on the CPU this one
//! takes one pass, and like PyTorch passes the gradient where the output is positive.
//!
//! [`batch_norm_train`]: training-mode batch normalisation built from tensor ops makes
//! about twenty passes over each activation (forward and backward); on the CPU this one is
//! fused into four, with the per-channel sums accumulated in f64.
//!
//! The CPU kernels run in f32 and f64 (the parity tests replay in f64).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

mod conv_panels;

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

/// The element types the CPU kernels run on.
pub(crate) trait Float:
    Copy + Send + Sync + PartialOrd + std::ops::AddAssign + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn is_nan(self) -> bool;
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn into_storage(values: Vec<Self>) -> CpuStorage;
    /// The values as f32, for the f32-only matrix kernel.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn is_nan(self) -> bool {
        self.is_nan()
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F32(data) => Some(data),
            _ => None,
        }
    }
    fn into_storage(values: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(values)
    }
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn is_nan(self) -> bool {
        self.is_nan()
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F64(data) => Some(data),
            _ => None,
        }
    }
    fn into_storage(values: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(values)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// Whether `x` runs on the CPU kernels of this module (f32 or f64 on the CPU).
fn on_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The contiguous values of a CPU tensor of element type `T`.
fn contiguous<'a, T: Float>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some(data) = T::slice(storage) else {
        candle_core::bail!("{what}: unexpected dtype {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `$f::<T>` for the element type of `$storage` (f32 or f64).
macro_rules! by_dtype {
    ($storage:expr, $f:ident($($arg:expr),*)) => {
        match $storage {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            other => candle_core::bail!("{}: f32 or f64 only, got {:?}", stringify!($f), other.dtype()),
        }
    };
}

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
            // of every core (about 4% of a full-recipe step in `perf`).
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
struct Conv {
    stride: usize,
    padding: usize,
}

/// Sizes of one convolution; `k = cin * kh * kw` rows of the im2col matrix, `p = ho * wo`
/// columns.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    fn p(&self) -> usize {
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
    fn is_pointwise(&self, g: &Geometry) -> bool {
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
    fn col2im<T: Float>(&self, g: &Geometry, col: &[T], image: &mut [T]) {
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

/// A row-major matrix view: element (i, j) at `data[i * row_stride + j * col_stride]`.
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    pub(crate) fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major `[rows, cols]` matrix stored in `data`.
    pub(crate) fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

/// Products smaller than this many multiply-adds run on the calling thread: handing them
/// to the thread pool and waiting costs more than a second core saves (fast mode's small
/// layers at batch 32).
pub(crate) const PARALLEL_WORK: usize = 1 << 24;

fn parallelism(work: usize) -> gemm::Parallelism {
    if work < PARALLEL_WORK {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `dst[m,n] = a[m,k] b[k,n]`, or `dst += a b` when `accumulate`; `dst` row-major.
pub(crate) fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
) -> Result<()> {
    let last = |rows: usize, cols: usize, mat: &Mat<T>| {
        (rows - 1) * mat.row_stride + (cols - 1) * mat.col_stride
    };
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst.fill(T::ZERO);
        }
        return Ok(());
    }
    if dst.len() < m * n || a.data.len() <= last(m, k, &a) || b.data.len() <= last(k, n, &b) {
        candle_core::bail!("matmul: operands smaller than {m}x{k} times {k}x{n}")
    }
    // SAFETY: the bounds of every operand were checked above; `dst` does not alias them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism(m * n * k),
        );
    }
    Ok(())
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

/// `run` on f32 operands where gfer's matrix kernel runs (see `conv_panels`); `None`
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
        matmul(
            g.cout,
            p,
            k,
            out,
            false,
            Mat::rows(weight, k),
            Mat::rows(col, p),
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
        matmul(
            k,
            p,
            g.cout,
            dst,
            false,
            Mat::transposed(weight, k),
            Mat::rows(grad_out, p),
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
        matmul(
            g.cout,
            k,
            p,
            &mut grad_w,
            i > 0,
            Mat::rows(grad_out, p),
            Mat::transposed(col, p),
        )?;
    }
    Ok((T::into_storage(grad_w), shape))
}

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

    #[test]
    fn refuses_an_input_smaller_than_the_kernel() {
        let x = Tensor::zeros((1, 1, 1, 1), DType::F32, &Device::Cpu).expect("zeros");
        assert!(max_pool2d(&x, 5, 2, 1).is_err());
    }

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
