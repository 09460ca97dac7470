//! The packed matrix product: `x · wᵀ + bias (+ residual)` for f32 row-major matrices on
//! the CPU. It serves the linear layers of the frozen encoders ([`super::FrozenLinear`]),
//! whose weight `w` (PyTorch's `[out, in]`) never changes, and the convolutions
//! ([`super::conv2d`]), whose image patches are written straight into the panel layout
//! below ([`PackedWeight::fill_panels`], `super::conv_panels`) and whose weight is packed
//! once per batch ([`PackedRows`]).
//!
//! Two kernels, one per process, chosen by [`choose_matmul_kernel`] (`GFER_MATMUL=auto|
//! avx2|gemm`):
//!
//! - `avx2`, our own, laid out as ONNX Runtime's MLAS lays out its f32 products: the
//!   weight is repacked once, when the layer is built, into panels of 16 output columns
//!   (`[k][16]` each); `x` is packed per call into groups of 6 rows (`[k][6]`); the kernel
//!   broadcasts a group against a panel, keeping the 6x16 block of results in 12 AVX
//!   registers, and adds the bias and the residual as the block is first stored.
//! - `gemm`, the `gemm` crate on the weight as given, with its own AVX-512 kernels where
//!   the CPU has them; the only choice on CPUs without AVX2 and FMA.
//!
//! `auto` runs ours wherever AVX2 and FMA are, AVX-512 machines included: on the AVX2
//! machines the `gemm` crate repacked the weights on every call and ran slower than
//! OpenBLAS, and on a Zen 4 machine with AVX-512 the encoder ran faster on ours than on the
//! `gemm` crate's AVX-512 kernels (README's Speed section has the figures).

use super::threading::{PACKED_PRODUCT_MIN_PARALLEL_WORK, PACKING_MIN_PARALLEL_LEN};
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The kernel that runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Our packed 6x16 AVX2/FMA kernel.
    Avx2,
    /// The `gemm` crate.
    Gemm,
}

/// What a user asks for: a kernel, or the one `auto` picks for this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRequest {
    Auto,
    Kernel(MatmulKernel),
}

impl std::str::FromStr for KernelRequest {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(KernelRequest::Auto),
            "avx2" => Ok(KernelRequest::Kernel(MatmulKernel::Avx2)),
            "gemm" => Ok(KernelRequest::Kernel(MatmulKernel::Gemm)),
            _ => Err(Error::config(format!(
                "unknown matrix kernel `{text}`: expected auto, avx2 or gemm"
            ))),
        }
    }
}

impl MatmulKernel {
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Avx2 => "avx2",
            MatmulKernel::Gemm => "gemm",
        }
    }

    /// Whether this CPU can run it.
    pub fn runs_here(self) -> bool {
        match self {
            MatmulKernel::Gemm => true,
            #[cfg(target_arch = "x86_64")]
            MatmulKernel::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            MatmulKernel::Avx2 => false,
        }
    }

    /// `auto`'s choice on this CPU.
    pub fn auto() -> Self {
        match MatmulKernel::Avx2.runs_here() {
            true => MatmulKernel::Avx2,
            false => MatmulKernel::Gemm,
        }
    }
}

/// The environment variable that picks the kernel.
pub const KERNEL_VARIABLE: &str = "GFER_MATMUL";

static CHOSEN: OnceLock<MatmulKernel> = OnceLock::new();

/// Fixes the kernel of this process: `request`, else `GFER_MATMUL`, else `auto`. Refuses a
/// kernel this CPU cannot run, and a second choice that differs from the first (packed
/// weights are laid out for one kernel).
pub fn choose_matmul_kernel(request: Option<KernelRequest>) -> Result<MatmulKernel> {
    let kernel = resolve(request)?;
    let chosen = *CHOSEN.get_or_init(|| kernel);
    if chosen != kernel {
        return Err(Error::config(format!(
            "the {} matrix kernel was asked for after products had started on {}",
            kernel.name(),
            chosen.name()
        )));
    }
    Ok(chosen)
}

/// The kernel of this process ([`choose_matmul_kernel`]'s choice; a library user that
/// never chose gets `GFER_MATMUL`'s, or `auto`'s when that is unset or unusable).
pub fn matmul_kernel() -> MatmulKernel {
    *CHOSEN.get_or_init(|| {
        resolve(None).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the {} kernel", MatmulKernel::auto().name());
            MatmulKernel::auto()
        })
    })
}

/// The kernel `request` (or `GFER_MATMUL`, or `auto`) names, if this CPU runs it.
fn resolve(request: Option<KernelRequest>) -> Result<MatmulKernel> {
    let request = match request {
        Some(request) => request,
        None => match std::env::var(KERNEL_VARIABLE) {
            Ok(text) => text
                .parse()
                .map_err(|e| Error::config(format!("{KERNEL_VARIABLE}: {e}")))?,
            Err(_) => KernelRequest::Auto,
        },
    };
    let kernel = match request {
        KernelRequest::Auto => MatmulKernel::auto(),
        KernelRequest::Kernel(kernel) if kernel.runs_here() => kernel,
        KernelRequest::Kernel(kernel) => {
            return Err(Error::config(format!(
                "the {} matrix kernel needs AVX2 and FMA, which this CPU lacks; use gemm or auto",
                kernel.name()
            )))
        }
    };
    Ok(kernel)
}

/// Output columns per weight panel: two AVX vectors.
pub(crate) const PANEL: usize = 16;
/// Rows of `x` per kernel call.
const ROWS: usize = 6;
/// Depth of one pass: a panel's `DEPTH x 16` block (16 KiB) stays in the L1 cache while
/// the rows stream past.
const DEPTH: usize = 256;
/// Rows per pass: `ROWS_PER_PASS x DEPTH` floats of `x` (192 KiB) stay in the L2 cache
/// while a thread walks its panels.
const ROWS_PER_PASS: usize = 192;

/// The right-hand side of a product, a weight `[out, in]` (PyTorch's layout for a linear
/// layer), in the layout the product reads.
pub(crate) struct PackedWeight {
    out: usize,
    depth: usize,
    /// `[out/16][in][16]` (zero-padded columns) for our kernel, `[out, in]` otherwise.
    data: Vec<f32>,
    panels: bool,
}

impl PackedWeight {
    /// `weight` is `[out, in]`, row-major, laid out for the process's kernel.
    pub(crate) fn new(weight: &[f32], out: usize, depth: usize) -> Self {
        Self::for_kernel(weight, out, depth, matmul_kernel())
    }

    fn for_kernel(weight: &[f32], out: usize, depth: usize, kernel: MatmulKernel) -> Self {
        assert_eq!(weight.len(), out * depth, "weight is not [{out}, {depth}]");
        match kernel {
            MatmulKernel::Avx2 => {
                let mut packed = Self::zeroed_panels(out, depth);
                packed.pack(weight);
                packed
            }
            MatmulKernel::Gemm => Self {
                out,
                depth,
                data: weight.to_vec(),
                panels: false,
            },
        }
    }

    /// Zeroed panels for a right-hand side that changes on every product (a
    /// convolution's image patches), to be written with [`PackedWeight::fill_panels`];
    /// `None` where our kernel does not run.
    pub(crate) fn empty_panels(out: usize, depth: usize) -> Option<Self> {
        (matmul_kernel() == MatmulKernel::Avx2).then(|| Self::zeroed_panels(out, depth))
    }

    fn zeroed_panels(out: usize, depth: usize) -> Self {
        Self {
            out,
            depth,
            data: vec![0.0; out.div_ceil(PANEL) * depth * PANEL],
            panels: true,
        }
    }

    /// Rewrites the panels: `fill(index, panel)` gets panel `index` as `[in][16]`, whose
    /// entry `(i, c)` is the weight's `[16 index + c, i]`. Columns past `out` are not to be
    /// written (they stay zero).
    pub(crate) fn fill_panels(&mut self, fill: impl Fn(usize, &mut [f32]) + Sync) {
        use rayon::prelude::*;
        assert!(self.panels, "fill_panels on a weight without panels");
        let panel_len = self.depth * PANEL;
        if panel_len == 0 {
            return;
        }
        if self.data.len() < PACKING_MIN_PARALLEL_LEN {
            let chunks = self.data.chunks_mut(panel_len).enumerate();
            chunks.for_each(|(i, panel)| fill(i, panel));
        } else {
            let chunks = self.data.par_chunks_mut(panel_len).enumerate();
            chunks.for_each(|(i, panel)| fill(i, panel));
        }
    }

    /// Panels from `weight` `[out, in]`, row-major.
    pub(crate) fn pack(&mut self, weight: &[f32]) {
        let (out, depth) = (self.out, self.depth);
        assert_eq!(weight.len(), out * depth, "weight is not [{out}, {depth}]");
        self.fill_panels(|index, panel| {
            let rows = weight[index * PANEL * depth..].chunks(depth).take(PANEL);
            for (column, row) in rows.enumerate() {
                for (k, &value) in row.iter().enumerate() {
                    panel[k * PANEL + column] = value;
                }
            }
        });
    }

    /// Panels from the weight's transpose `[in, out]`, row-major.
    pub(crate) fn pack_transposed(&mut self, transposed: &[f32]) {
        let (out, depth) = (self.out, self.depth);
        assert_eq!(
            transposed.len(),
            out * depth,
            "transpose is not [{depth}, {out}]"
        );
        self.fill_panels(|index, panel| {
            let first = index * PANEL;
            let columns = PANEL.min(out - first);
            for (slots, row) in panel.chunks_exact_mut(PANEL).zip(transposed.chunks(out)) {
                slots[..columns].copy_from_slice(&row[first..first + columns]);
            }
        });
    }

    pub(crate) fn out(&self) -> usize {
        self.out
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }
}

/// The left-hand side `x [rows, in]` of a product, packed once where several products
/// share it (a convolution's weight against every image of a batch).
pub(crate) struct PackedRows {
    rows: usize,
    depth: usize,
    /// `[rows/6][in][6]` (zero-padded rows) for our kernel, `[rows, in]` otherwise.
    data: Vec<f32>,
    groups: bool,
}

impl PackedRows {
    /// `x` is `[rows, in]`, row-major, laid out for the process's kernel.
    pub(crate) fn new(x: &[f32], rows: usize, depth: usize) -> Self {
        Self::for_kernel(x, rows, depth, matmul_kernel())
    }

    fn for_kernel(x: &[f32], rows: usize, depth: usize, kernel: MatmulKernel) -> Self {
        assert_eq!(x.len(), rows * depth, "x is not [{rows}, {depth}]");
        let groups = kernel == MatmulKernel::Avx2;
        let data = if groups {
            #[cfg(target_arch = "x86_64")]
            {
                avx2::pack_rows(x, rows, depth, rows * depth >= PACKING_MIN_PARALLEL_LEN)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("our kernel runs on x86_64 only")
        } else {
            x.to_vec()
        };
        Self {
            rows,
            depth,
            data,
            groups,
        }
    }
}

/// What the sums of a product start from.
#[derive(Clone, Copy)]
pub(crate) enum OutputStart<'a> {
    /// `bias[out]` on every row, plus `residual[rows, out]` when given.
    Bias(&'a [f32], Option<&'a [f32]>),
    /// Zero.
    Zero,
    /// What the output holds: `y += x · wᵀ`.
    Output,
}

/// `x[rows, in] · weightᵀ + bias (+ residual[rows, out])` -> `[rows, out]`, all row-major.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    weight: &PackedWeight,
    bias: &[f32],
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let start = OutputStart::Bias(bias, residual);
    let len = rows * weight.out;
    check_shapes(x.len(), rows, weight, start, len);
    #[cfg(target_arch = "x86_64")]
    if weight.panels && weight.depth > 0 {
        let x = PackedRows::for_kernel(x, rows, weight.depth, MatmulKernel::Avx2);
        let mut y = Vec::with_capacity(len);
        // SAFETY: panels are only made where our kernel runs (AVX2, FMA); starting from the
        // bias, the kernel writes every element of `y` without reading it.
        unsafe {
            avx2::product(&x, weight, start, y.as_mut_ptr());
            y.set_len(len);
        }
        return y;
    }
    let mut y = vec![0.0; len];
    begin(start, &mut y, weight.out);
    if !weight.panels {
        gemm_crate(x, &weight.data, &mut y, rows, weight.out, weight.depth);
    }
    y
}

/// `y[rows, out] = start + x · weightᵀ`, all row-major.
pub(crate) fn product_into(
    x: &PackedRows,
    weight: &PackedWeight,
    start: OutputStart,
    y: &mut [f32],
) {
    check_shapes(x.rows * x.depth, x.rows, weight, start, y.len());
    assert_eq!(
        x.depth, weight.depth,
        "x has depth {}, the weight {}",
        x.depth, weight.depth
    );
    assert!(
        x.groups == weight.panels || weight.depth == 0,
        "x and the weight are packed for different kernels"
    );
    #[cfg(target_arch = "x86_64")]
    if weight.panels && weight.depth > 0 {
        // SAFETY: panels are only made where our kernel runs (AVX2, FMA); y has the
        // output's length (checked above).
        unsafe { avx2::product(x, weight, start, y.as_mut_ptr()) };
        return;
    }
    begin(start, y, weight.out);
    if !weight.panels {
        gemm_crate(&x.data, &weight.data, y, x.rows, weight.out, weight.depth);
    }
}

/// Writes the values a product's sums start from into `y` `[rows, out]`, for the `gemm`
/// crate's path (and empty depths), which adds the product onto them.
fn begin(start: OutputStart, y: &mut [f32], out: usize) {
    let out = out.max(1);
    match start {
        OutputStart::Bias(bias, residual) => {
            for (i, row) in y.chunks_exact_mut(out).enumerate() {
                row.copy_from_slice(bias);
                if let Some(residual) = residual {
                    let residual = &residual[i * out..(i + 1) * out];
                    row.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
                }
            }
        }
        OutputStart::Zero => y.fill(0.0),
        OutputStart::Output => {}
    }
}

fn check_shapes(
    x_len: usize,
    rows: usize,
    weight: &PackedWeight,
    start: OutputStart,
    y_len: usize,
) {
    let (out, depth) = (weight.out, weight.depth);
    assert_eq!(x_len, rows * depth, "x is not [{rows}, {depth}]");
    assert_eq!(y_len, rows * out, "the output is not [{rows}, {out}]");
    if let OutputStart::Bias(bias, residual) = start {
        assert_eq!(bias.len(), out, "the bias is not [{out}]");
        assert!(
            residual.is_none_or(|r| r.len() == rows * out),
            "the residual is not [{rows}, {out}]"
        );
    }
}

/// `c[m, n] += a[m, k] · b[n, k]ᵀ` with the `gemm` crate.
fn gemm_crate(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    if m * n * k == 0 {
        return;
    }
    let parallelism = if m * n * k < PACKED_PRODUCT_MIN_PARALLEL_WORK {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: c is [m, n], a [m, k] and b [n, k] row-major (lengths checked by the
    // caller); b is read as its transpose [k, n] (row stride 1, column stride k).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        OutputStart, PackedRows, PackedWeight, DEPTH, PACKED_PRODUCT_MIN_PARALLEL_WORK, PANEL,
        ROWS, ROWS_PER_PASS,
    };
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// The output, shared by the threads; each writes only the columns of its panels.
    struct Output(*mut f32);
    // SAFETY: the threads of `product` write disjoint column ranges through it.
    unsafe impl Sync for Output {}

    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` holds row groups and `weight` panels of the
    /// same depth; `y` has room for `[x.rows, weight.out]` and, when `start` is
    /// [`OutputStart::Output`], holds values.
    pub(super) unsafe fn product(
        x: &PackedRows,
        weight: &PackedWeight,
        start: OutputStart,
        y: *mut f32,
    ) {
        let (rows, out, depth) = (x.rows, weight.out, weight.depth);
        let panels = out.div_ceil(PANEL);
        let tasks = if rows * out * depth < PACKED_PRODUCT_MIN_PARALLEL_WORK {
            1
        } else {
            rayon::current_num_threads().clamp(1, panels)
        };
        let per_task = panels.div_ceil(tasks);
        let output = Output(y);
        let run = |task: usize| {
            let output = &output;
            let task_panels = task * per_task..((task + 1) * per_task).min(panels);
            for k0 in (0..depth).step_by(DEPTH) {
                let pass_depth = DEPTH.min(depth - k0);
                for r0 in (0..rows).step_by(ROWS_PER_PASS) {
                    let pass_rows = r0..(r0 + ROWS_PER_PASS).min(rows);
                    for panel in task_panels.clone() {
                        let n0 = panel * PANEL;
                        let tile = Tile {
                            columns: PANEL.min(out - n0),
                            stride: out,
                            // Later passes add to what the first one stored.
                            start: match (k0, start) {
                                (0, OutputStart::Bias(bias, residual)) => {
                                    OutputStart::Bias(&bias[n0..], residual.map(|r| &r[n0..]))
                                }
                                (0, start) => start,
                                _ => OutputStart::Output,
                            },
                        };
                        let b = weight.data[(panel * depth + k0) * PANEL..].as_ptr();
                        for first_row in pass_rows.clone().step_by(ROWS) {
                            let valid = ROWS.min(pass_rows.end - first_row);
                            let a = x.data[(first_row * depth + k0 * ROWS)..].as_ptr();
                            // SAFETY: rows first_row.. and columns n0.. of y belong to
                            // this task; a and b have pass_depth x 6 and x 16 floats left.
                            unsafe {
                                kernel(
                                    pass_depth,
                                    a,
                                    b,
                                    output.0.add(first_row * out + n0),
                                    valid,
                                    &tile,
                                    first_row,
                                )
                            }
                        }
                    }
                }
            }
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// `x` as groups of 6 rows, each laid out `[depth][6]` (the last zero-padded), so the
    /// kernel reads one stream instead of six rows: faster on the widest layers, whose six
    /// streams a large power-of-two stride apart would share cache sets.
    pub(super) fn pack_rows(x: &[f32], rows: usize, depth: usize, parallel: bool) -> Vec<f32> {
        let len = rows.div_ceil(ROWS) * ROWS * depth;
        if len == 0 {
            return Vec::new();
        }
        let mut groups = Vec::with_capacity(len);
        let pack = |(index, group): (usize, &mut [std::mem::MaybeUninit<f32>])| {
            let first = index * ROWS;
            let source: [Option<&[f32]>; ROWS] = std::array::from_fn(|r| {
                (first + r < rows).then(|| &x[(first + r) * depth..][..depth])
            });
            for (k, column) in group.chunks_exact_mut(ROWS).enumerate() {
                for (slot, row) in column.iter_mut().zip(&source) {
                    slot.write(row.map_or(0.0, |row| row[k]));
                }
            }
        };
        let slots = &mut groups.spare_capacity_mut()[..len];
        if parallel {
            slots
                .par_chunks_mut(ROWS * depth)
                .enumerate()
                .for_each(pack);
        } else {
            slots.chunks_mut(ROWS * depth).enumerate().for_each(pack);
        }
        // SAFETY: every slot up to len was written just above.
        unsafe { groups.set_len(len) };
        groups
    }

    /// Where a 6x16 block of sums goes.
    struct Tile<'a> {
        /// Valid columns of this panel (16 but at the right edge).
        columns: usize,
        /// Row stride of the output (and the residual).
        stride: usize,
        /// What the sums start from, bias and residual from this panel's first column on.
        start: OutputStart<'a>,
    }

    /// One 6x16 block: `valid_rows` rows of `y` (row stride `tile.stride`) get the sums of
    /// `depth` steps of a row group against a panel, started as `tile.start` says.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `a` has `depth x 6` floats, `b` `depth x 16`; `y`
    /// and the residual, if any, have `valid_rows` rows of `tile.columns` floats at
    /// `tile.stride`, the bias `tile.columns` floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel(
        depth: usize,
        a: *const f32,
        b: *const f32,
        y: *mut f32,
        valid_rows: usize,
        tile: &Tile,
        first_row: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        let (mut a, mut b) = (a, b);
        for _ in 0..depth {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let broadcast = _mm256_broadcast_ss(&*a.add(r));
                acc[0] = _mm256_fmadd_ps(broadcast, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(broadcast, b1, acc[1]);
            }
            a = a.add(ROWS);
            b = b.add(PANEL);
        }
        let columns = tile.columns;
        let rows = acc.iter().enumerate().take(valid_rows);
        match tile.start {
            OutputStart::Bias(bias, residual) => {
                let (b0, b1) = load(bias.as_ptr(), columns);
                for (r, acc) in rows {
                    let (s0, s1) = match residual {
                        Some(residual) => {
                            let row = residual.as_ptr().add((first_row + r) * tile.stride);
                            let (r0, r1) = load(row, columns);
                            (_mm256_add_ps(r0, b0), _mm256_add_ps(r1, b1))
                        }
                        None => (b0, b1),
                    };
                    let sums = (_mm256_add_ps(acc[0], s0), _mm256_add_ps(acc[1], s1));
                    store(y.add(r * tile.stride), columns, sums);
                }
            }
            OutputStart::Zero => {
                for (r, acc) in rows {
                    store(y.add(r * tile.stride), columns, (acc[0], acc[1]));
                }
            }
            OutputStart::Output => {
                for (r, acc) in rows {
                    let y_row = y.add(r * tile.stride);
                    let (y0, y1) = load(y_row, columns);
                    let sums = (_mm256_add_ps(acc[0], y0), _mm256_add_ps(acc[1], y1));
                    store(y_row, columns, sums);
                }
            }
        }
    }

    /// 16 floats from `p`, of which the first `columns` are read (the rest are zero).
    ///
    /// # Safety
    /// The CPU must have AVX2; `p` has `columns` (at most 16) floats to read.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32, columns: usize) -> (__m256, __m256) {
        if columns == PANEL {
            return (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
        }
        let mut held = [0.0f32; PANEL];
        std::ptr::copy_nonoverlapping(p, held.as_mut_ptr(), columns);
        (
            _mm256_loadu_ps(held.as_ptr()),
            _mm256_loadu_ps(held.as_ptr().add(8)),
        )
    }

    /// The first `columns` of 16 floats to `p`.
    ///
    /// # Safety
    /// The CPU must have AVX2; `p` has room for `columns` (at most 16) floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, columns: usize, (v0, v1): (__m256, __m256)) {
        if columns == PANEL {
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
            return;
        }
        let mut held = [0.0f32; PANEL];
        _mm256_storeu_ps(held.as_mut_ptr(), v0);
        _mm256_storeu_ps(held.as_mut_ptr().add(8), v1);
        std::ptr::copy_nonoverlapping(held.as_ptr(), p, columns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_request_names_a_kernel_this_cpu_runs_or_is_refused() {
        let request = |text: &str| text.parse::<KernelRequest>();
        assert_eq!(request("auto").unwrap(), KernelRequest::Auto);
        assert_eq!(
            request("GEMM").unwrap(),
            KernelRequest::Kernel(MatmulKernel::Gemm)
        );
        let unknown = request("avx512").unwrap_err().to_string();
        assert!(
            unknown.contains("`avx512`: expected auto, avx2 or gemm"),
            "{unknown}"
        );
        assert_eq!(
            resolve(Some(KernelRequest::Auto)).unwrap(),
            MatmulKernel::auto()
        );
        let avx2 = resolve(Some(KernelRequest::Kernel(MatmulKernel::Avx2)));
        match MatmulKernel::Avx2.runs_here() {
            true => assert_eq!(avx2.unwrap(), MatmulKernel::Avx2),
            false => assert!(avx2.unwrap_err().to_string().contains("lacks")),
        }
        assert_eq!(
            MatmulKernel::auto() == MatmulKernel::Avx2,
            MatmulKernel::Avx2.runs_here()
        );
    }

    fn random(len: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Every edge: no rows, no depth (the start alone), rows not a multiple of 6, columns
    /// not a multiple of 16, depths over several passes, row counts over several passes,
    /// both sides of the threading threshold; every start (bias, bias and residual, zero,
    /// the output's values); weights packed from either orientation; each kernel this
    /// CPU runs, whichever the process chose. Compared with a double-precision sum.
    #[test]
    fn every_kernel_matches_a_double_precision_product() {
        let kernels: Vec<MatmulKernel> = [MatmulKernel::Avx2, MatmulKernel::Gemm]
            .into_iter()
            .filter(|kernel| {
                let runs = kernel.runs_here();
                if !runs {
                    eprintln!(
                        "the {} kernel is not tested: this CPU cannot run it",
                        kernel.name()
                    );
                }
                runs
            })
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[
            (0, 5, 7),
            (4, 5, 0),
            (1, 1, 1),
            (3, 5, 7),
            (6, 16, 16),
            (7, 17, 33),
            (13, 15, 300),
            (50, 512, 768),
            (197, 70, 600),
            (400, 40, 3072),
        ] {
            let (x, w, bias) = (
                random(m * k, &mut rng),
                random(n * k, &mut rng),
                random(n, &mut rng),
            );
            let (residual, held) = (random(m * n, &mut rng), random(m * n, &mut rng));
            if MatmulKernel::Avx2.runs_here() {
                let transposed: Vec<f32> = (0..k)
                    .flat_map(|kk| (0..n).map(|j| w[j * k + kk]).collect::<Vec<_>>())
                    .collect();
                let mut from_transpose = PackedWeight::zeroed_panels(n, k);
                from_transpose.pack_transposed(&transposed);
                let packed = PackedWeight::for_kernel(&w, n, k, MatmulKernel::Avx2);
                assert_eq!(from_transpose.data, packed.data, "{m}x{n}x{k}");
            }
            // (what, result, the start's value at (i, j))
            let mut results: Vec<(String, Vec<f32>, Box<dyn Fn(usize, usize) -> f64>)> = vec![];
            for &kernel in &kernels {
                let path = kernel.name();
                let weight = &PackedWeight::for_kernel(&w, n, k, kernel);
                let rows = &PackedRows::for_kernel(&x, m, k, kernel);
                let (bias, residual, held) = (bias.clone(), residual.clone(), held.clone());
                results.push((
                    format!("{path} linear"),
                    linear(&x, m, weight, &bias, None),
                    Box::new({
                        let bias = bias.clone();
                        move |_, j| bias[j] as f64
                    }),
                ));
                results.push((
                    format!("{path} linear with residual"),
                    linear(&x, m, weight, &bias, Some(&residual)),
                    Box::new(move |i, j| bias[j] as f64 + residual[i * n + j] as f64),
                ));
                let mut y = held.clone();
                product_into(rows, weight, OutputStart::Zero, &mut y);
                results.push((format!("{path} from zero"), y, Box::new(|_, _| 0.0)));
                let mut y = held.clone();
                product_into(rows, weight, OutputStart::Output, &mut y);
                results.push((
                    format!("{path} onto the output"),
                    y,
                    Box::new(move |i, j| held[i * n + j] as f64),
                ));
            }
            for (what, y, start) in &results {
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64);
                        let exact = start(i, j) + terms.clone().sum::<f64>();
                        // f32 rounding grows with the size of the terms, not of the sum.
                        let tolerance = 1e-6 * (1.0 + terms.map(f64::abs).sum::<f64>());
                        assert!(
                            (y[i * n + j] as f64 - exact).abs() <= tolerance,
                            "{what} {m}x{n}x{k} at ({i},{j}): {} vs {exact}",
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }
}
