//! The packed matrix product: `x · wᵀ + bias (+ residual)` for f32 row-major matrices on
//! the CPU. It serves the linear layers of the frozen encoders ([`super::FrozenLinear`]),
//! whose weight `w` (PyTorch's `[out, in]`) never changes, and the convolutions
//! ([`super::conv2d`]), whose image patches are written straight into the panel layout
//! below ([`PackedWeight::fill_panels`], `super::conv_panels`) and whose weight is packed
//! once per batch ([`PackedRows`]).
//!
//! Three kernels, one per process, chosen by [`choose_matmul_kernel`] (`GFER_MATMUL=auto|
//! avx2|avx512|gemm`):
//!
//! - `avx2` and `avx512`, our own, laid out as ONNX Runtime's MLAS lays out its f32
//!   products: the weight is repacked once, when the layer is built, into panels of 16
//!   output columns (`[k][16]` each); `x` is packed per call into groups of rows (`[k][g]`);
//!   the kernel broadcasts a group against a panel, keeping the block of results in
//!   registers, and adds the bias and the residual as the block is first stored. One
//!   generic block ([`simd`]'s `block`) serves both: 6 rows of two 8-wide vectors in 12 of
//!   AVX2's 16 registers, 24 rows of one 16-wide vector in 24 of AVX-512's 32.
//! - `gemm`, the `gemm` crate on the weight as given, with its own AVX-512 kernels where
//!   the CPU has them; the only choice on CPUs without AVX2 and FMA.
//!
//! `auto` runs `avx2` wherever AVX2 and FMA are, AVX-512 machines included: on the AVX2
//! machines the `gemm` crate repacked the weights on every call and ran slower than
//! OpenBLAS, and on a Zen 4 machine with AVX-512 the encoder ran faster on ours than on the
//! `gemm` crate's AVX-512 kernels (README's Speed section has the figures). `avx512` is
//! never `auto`'s choice until it has been measured faster on an AVX-512 machine.

use super::threading::{PACKED_PRODUCT_MIN_PARALLEL_WORK, PACKING_MIN_PARALLEL_LEN};
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The kernel that runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Our packed kernel, 6x16 blocks in AVX2/FMA registers.
    Avx2,
    /// The same kernel, 24x16 blocks in AVX-512 registers.
    Avx512,
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
            "avx512" => Ok(KernelRequest::Kernel(MatmulKernel::Avx512)),
            "gemm" => Ok(KernelRequest::Kernel(MatmulKernel::Gemm)),
            _ => Err(Error::config(format!(
                "unknown matrix kernel `{text}`: expected auto, avx2, avx512 or gemm"
            ))),
        }
    }
}

impl MatmulKernel {
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Avx2 => "avx2",
            MatmulKernel::Avx512 => "avx512",
            MatmulKernel::Gemm => "gemm",
        }
    }

    /// The instructions it needs of the CPU.
    fn needs(self) -> &'static str {
        match self {
            MatmulKernel::Avx2 => "AVX2 and FMA",
            MatmulKernel::Avx512 => "AVX-512F",
            MatmulKernel::Gemm => "nothing",
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
            #[cfg(target_arch = "x86_64")]
            MatmulKernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            MatmulKernel::Avx2 | MatmulKernel::Avx512 => false,
        }
    }

    /// How our kernel covers the output; `None` for the `gemm` crate.
    fn shape(self) -> Option<TileShape> {
        match self {
            #[cfg(target_arch = "x86_64")]
            MatmulKernel::Avx2 => Some(simd::AVX2),
            #[cfg(target_arch = "x86_64")]
            MatmulKernel::Avx512 => Some(simd::AVX512),
            _ => None,
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
    let (request, asked_by) = match request {
        Some(request) => (request, String::new()),
        None => match std::env::var(KERNEL_VARIABLE) {
            Ok(text) => {
                let request = text
                    .parse()
                    .map_err(|e| Error::config(format!("{KERNEL_VARIABLE}: {e}")))?;
                (request, format!("{KERNEL_VARIABLE}={text}: "))
            }
            Err(_) => (KernelRequest::Auto, String::new()),
        },
    };
    match request {
        KernelRequest::Auto => Ok(MatmulKernel::auto()),
        KernelRequest::Kernel(kernel) if kernel.runs_here() => Ok(kernel),
        KernelRequest::Kernel(kernel) => Err(Error::config(format!(
            "{asked_by}the {} matrix kernel needs {}, which this CPU lacks; use gemm or auto",
            kernel.name(),
            kernel.needs()
        ))),
    }
}

/// Output columns per weight panel: two AVX2 vectors, one AVX-512 vector.
pub(crate) const PANEL: usize = 16;
/// The most rows of `x` a kernel takes at once.
const MAX_GROUP: usize = 24;
/// Depth of one pass: a panel's `DEPTH x 16` block (16 KiB) stays in the L1 cache while
/// the rows stream past.
const DEPTH: usize = 256;
/// Rows per pass: `ROWS_PER_PASS x DEPTH` floats of `x` (192 KiB) stay in the L2 cache
/// while a thread walks its panels.
const ROWS_PER_PASS: usize = 192;

/// How one of our kernels covers the output: groups of `rows` rows of `x`, each against
/// one panel at a time by `block`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileShape {
    name: &'static str,
    rows: usize,
    block: BlockFn,
}

/// One block of sums: `(depth, group, panel, y, valid rows, tile, first row)`, as
/// `simd::block` documents.
type BlockFn = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, &Tile, usize);

/// Where a block of sums goes.
pub(crate) struct Tile<'a> {
    /// Valid columns of this panel (16 but at the right edge).
    columns: usize,
    /// Row stride of the output (and the residual).
    stride: usize,
    /// What the sums start from, bias and residual from this panel's first column on.
    start: OutputStart<'a>,
}

/// The right-hand side of a product, a weight `[out, in]` (PyTorch's layout for a linear
/// layer), in the layout the product reads.
pub(crate) struct PackedWeight {
    out: usize,
    depth: usize,
    /// `[out/16][in][16]` (zero-padded columns) for our kernel, `[out, in]` otherwise.
    data: Vec<f32>,
    /// Our kernel's shape where `data` is panels.
    shape: Option<TileShape>,
}

impl PackedWeight {
    /// `weight` is `[out, in]`, row-major, laid out for the process's kernel.
    pub(crate) fn new(weight: &[f32], out: usize, depth: usize) -> Self {
        Self::for_shape(weight, out, depth, matmul_kernel().shape())
    }

    fn for_shape(weight: &[f32], out: usize, depth: usize, shape: Option<TileShape>) -> Self {
        assert_eq!(weight.len(), out * depth, "weight is not [{out}, {depth}]");
        match shape {
            Some(shape) => {
                let mut packed = Self::zeroed_panels(out, depth, shape);
                packed.pack(weight);
                packed
            }
            None => Self {
                out,
                depth,
                data: weight.to_vec(),
                shape: None,
            },
        }
    }

    /// Zeroed panels for a right-hand side that changes on every product (a
    /// convolution's image patches), to be written with [`PackedWeight::fill_panels`];
    /// `None` where our kernel does not run.
    pub(crate) fn empty_panels(out: usize, depth: usize) -> Option<Self> {
        let shape = matmul_kernel().shape()?;
        Some(Self::zeroed_panels(out, depth, shape))
    }

    fn zeroed_panels(out: usize, depth: usize, shape: TileShape) -> Self {
        Self {
            out,
            depth,
            data: vec![0.0; out.div_ceil(PANEL) * depth * PANEL],
            shape: Some(shape),
        }
    }

    /// Rewrites the panels: `fill(index, panel)` gets panel `index` as `[in][16]`, whose
    /// entry `(i, c)` is the weight's `[16 index + c, i]`. Columns past `out` are not to be
    /// written (they stay zero).
    pub(crate) fn fill_panels(&mut self, fill: impl Fn(usize, &mut [f32]) + Sync) {
        use rayon::prelude::*;
        assert!(
            self.shape.is_some(),
            "fill_panels on a weight without panels"
        );
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
    /// `[rows/g][in][g]` (zero-padded rows) for our kernel, whose shape takes groups of `g`
    /// rows; `[rows, in]` otherwise.
    data: Vec<f32>,
    shape: Option<TileShape>,
}

impl PackedRows {
    /// `x` is `[rows, in]`, row-major, laid out for the process's kernel.
    pub(crate) fn new(x: &[f32], rows: usize, depth: usize) -> Self {
        Self::for_shape(x, rows, depth, matmul_kernel().shape())
    }

    fn for_shape(x: &[f32], rows: usize, depth: usize, shape: Option<TileShape>) -> Self {
        assert_eq!(x.len(), rows * depth, "x is not [{rows}, {depth}]");
        let data = match shape {
            Some(shape) => {
                let parallel = rows * depth >= PACKING_MIN_PARALLEL_LEN;
                pack_rows(x, rows, depth, shape.rows, parallel)
            }
            None => x.to_vec(),
        };
        Self {
            rows,
            depth,
            data,
            shape,
        }
    }
}

/// `x` as groups of `group` rows, each laid out `[depth][group]` (the last zero-padded), so
/// the kernel reads one stream instead of `group` rows: faster on the widest layers, whose
/// row streams a large power-of-two stride apart would share cache sets.
fn pack_rows(x: &[f32], rows: usize, depth: usize, group: usize, parallel: bool) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(group <= MAX_GROUP, "groups of {group} rows");
    let len = rows.div_ceil(group) * group * depth;
    if len == 0 {
        return Vec::new();
    }
    let mut groups = Vec::with_capacity(len);
    let pack = |(index, slots): (usize, &mut [std::mem::MaybeUninit<f32>])| {
        let first = index * group;
        let source: [Option<&[f32]>; MAX_GROUP] = std::array::from_fn(|r| {
            (r < group && first + r < rows).then(|| &x[(first + r) * depth..][..depth])
        });
        for (k, column) in slots.chunks_exact_mut(group).enumerate() {
            for (slot, row) in column.iter_mut().zip(&source) {
                slot.write(row.map_or(0.0, |row| row[k]));
            }
        }
    };
    let slots = &mut groups.spare_capacity_mut()[..len];
    if parallel {
        slots
            .par_chunks_mut(group * depth)
            .enumerate()
            .for_each(pack);
    } else {
        slots.chunks_mut(group * depth).enumerate().for_each(pack);
    }
    // SAFETY: every slot up to len was written just above.
    unsafe { groups.set_len(len) };
    groups
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
    if let (Some(shape), true) = (weight.shape, weight.depth > 0) {
        let x = PackedRows::for_shape(x, rows, weight.depth, Some(shape));
        let mut y = Vec::with_capacity(len);
        // SAFETY: panels are only made for a kernel this CPU runs; starting from the bias,
        // the kernel writes every element of `y` without reading it.
        unsafe {
            product(&x, weight, shape, start, y.as_mut_ptr());
            y.set_len(len);
        }
        return y;
    }
    let mut y = vec![0.0; len];
    begin(start, &mut y, weight.out);
    if weight.shape.is_none() {
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
    let name = |shape: Option<TileShape>| shape.map(|s| s.name);
    assert!(
        name(x.shape) == name(weight.shape) || weight.depth == 0,
        "x and the weight are packed for different kernels"
    );
    if let (Some(shape), true) = (weight.shape, weight.depth > 0) {
        // SAFETY: panels are only made for a kernel this CPU runs; y has the output's
        // length (checked above).
        unsafe { product(x, weight, shape, start, y.as_mut_ptr()) };
        return;
    }
    begin(start, y, weight.out);
    if weight.shape.is_none() {
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

/// The output, shared by the threads of [`product`]; each writes only the columns of its
/// panels.
struct Output(*mut f32);
// SAFETY: the threads of `product` write disjoint column ranges through it.
unsafe impl Sync for Output {}

/// `y = start + x · weightᵀ` on our kernel: the threads split the panels; each walks the
/// depth in passes of [`DEPTH`] and the rows in passes of [`ROWS_PER_PASS`], so that a
/// panel's block stays in L1 and the rows' in L2, and runs `shape`'s block on every group
/// of rows against every panel of its share.
///
/// # Safety
/// The CPU must run `shape`'s kernel; `x` holds row groups of `shape` and `weight` panels
/// of the same depth; `y` has room for `[x.rows, weight.out]` and, when `start` is
/// [`OutputStart::Output`], holds values.
unsafe fn product(
    x: &PackedRows,
    weight: &PackedWeight,
    shape: TileShape,
    start: OutputStart,
    y: *mut f32,
) {
    use rayon::prelude::*;
    let (rows, out, depth) = (x.rows, weight.out, weight.depth);
    let group = shape.rows;
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
                    for first_row in pass_rows.clone().step_by(group) {
                        let valid = group.min(pass_rows.end - first_row);
                        let a = x.data[(first_row * depth + k0 * group)..].as_ptr();
                        // SAFETY: rows first_row.. and columns n0.. of y belong to this
                        // task; a and b have pass_depth x group and x 16 floats left; the
                        // caller vouches for the CPU.
                        unsafe {
                            (shape.block)(
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

/// Our kernel's block, written once over the vector width and instantiated per
/// instruction set.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{OutputStart, Tile, TileShape, PANEL};
    use std::arch::x86_64::*;

    /// AVX2: 6 rows x two 8-wide vectors, 12 of 16 registers holding sums.
    pub(super) const AVX2: TileShape = TileShape {
        name: "avx2",
        rows: 6,
        block: block_avx2,
    };
    /// AVX-512: 24 rows x one 16-wide vector, 24 of 32 registers holding sums.
    pub(super) const AVX512: TileShape = TileShape {
        name: "avx512",
        rows: super::MAX_GROUP,
        block: block_avx512,
    };
    // Row passes start at a group's first row, for every kernel's group.
    const _: () = assert!(
        super::ROWS_PER_PASS.is_multiple_of(AVX2.rows)
            && super::ROWS_PER_PASS.is_multiple_of(AVX512.rows)
    );

    /// AVX-512's groups of 24 rows on AVX2 vectors, so that machines without AVX-512 test
    /// the row grouping `AVX512` runs.
    #[cfg(test)]
    pub(super) const AVX2_TALL: TileShape = TileShape {
        name: "avx2 in groups of 24 rows",
        rows: super::MAX_GROUP,
        block: block_avx2_tall,
    };

    /// # Safety
    /// The CPU must have AVX2 and FMA; the rest as [`block`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(
        depth: usize,
        a: *const f32,
        b: *const f32,
        y: *mut f32,
        valid_rows: usize,
        tile: &Tile,
        first_row: usize,
    ) {
        block::<Avx2, 6, 2>(depth, a, b, y, valid_rows, tile, first_row)
    }

    /// # Safety
    /// The CPU must have AVX-512F; the rest as [`block`].
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512(
        depth: usize,
        a: *const f32,
        b: *const f32,
        y: *mut f32,
        valid_rows: usize,
        tile: &Tile,
        first_row: usize,
    ) {
        // SAFETY: the caller\'s promises are block\'s.
        unsafe {
            block::<Avx512, { super::MAX_GROUP }, 1>(depth, a, b, y, valid_rows, tile, first_row)
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; the rest as [`block`].
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2_tall(
        depth: usize,
        a: *const f32,
        b: *const f32,
        y: *mut f32,
        valid_rows: usize,
        tile: &Tile,
        first_row: usize,
    ) {
        // SAFETY: the caller\'s promises are block\'s.
        unsafe {
            block::<Avx2, { super::MAX_GROUP }, 2>(depth, a, b, y, valid_rows, tile, first_row)
        }
    }

    /// The vector operations the block needs, for one instruction set. Each is inlined into
    /// a function compiled for that set (`block_avx2`, `block_avx512`).
    trait Lanes {
        type V: Copy;
        const LANES: usize;
        unsafe fn zero() -> Self::V;
        unsafe fn load(p: *const f32) -> Self::V;
        unsafe fn store(p: *mut f32, v: Self::V);
        unsafe fn broadcast(p: *const f32) -> Self::V;
        /// `a * b + c`.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    }

    struct Avx2;

    // Every method: the caller runs on AVX2 and FMA, on pointers the block's caller vouches
    // for.
    impl Lanes for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> __m256 {
            _mm256_broadcast_ss(&*p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
    }

    struct Avx512;

    // Every method: the caller runs on AVX-512F, on pointers the block's caller vouches for.
    impl Lanes for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> __m512 {
            _mm512_set1_ps(*p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
    }

    /// One block of `ROWS` x 16 sums (`VECTORS` vectors of `S::LANES` per row): `valid_rows`
    /// rows of `y` (row stride `tile.stride`) get the sums of `depth` steps of a row group
    /// against a panel, started as `tile.start` says.
    ///
    /// # Safety
    /// The CPU must run `S`'s instructions, and this must be inlined into a function
    /// compiled for them; `VECTORS * S::LANES` is 16; `a` has `depth x ROWS` floats, `b`
    /// `depth x 16`; `y` and the residual, if any, have `valid_rows` rows of
    /// `tile.columns` floats at `tile.stride`, the bias `tile.columns` floats.
    #[inline(always)]
    unsafe fn block<S: Lanes, const ROWS: usize, const VECTORS: usize>(
        depth: usize,
        a: *const f32,
        b: *const f32,
        y: *mut f32,
        valid_rows: usize,
        tile: &Tile,
        first_row: usize,
    ) {
        debug_assert_eq!(VECTORS * S::LANES, PANEL);
        let mut acc = [[S::zero(); VECTORS]; ROWS];
        let (mut a, mut b) = (a, b);
        for _ in 0..depth {
            let mut panel = [S::zero(); VECTORS];
            for (v, lanes) in panel.iter_mut().enumerate() {
                *lanes = S::load(b.add(v * S::LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let broadcast = S::broadcast(a.add(r));
                for (sum, lanes) in acc.iter_mut().zip(&panel) {
                    *sum = S::fmadd(broadcast, *lanes, *sum);
                }
            }
            a = a.add(ROWS);
            b = b.add(PANEL);
        }
        let columns = tile.columns;
        let rows = acc.iter().enumerate().take(valid_rows);
        match tile.start {
            OutputStart::Bias(bias, residual) => {
                let bias = load::<S, VECTORS>(bias.as_ptr(), columns);
                for (r, acc) in rows {
                    let start = match residual {
                        Some(residual) => {
                            let row = residual.as_ptr().add((first_row + r) * tile.stride);
                            add::<S, VECTORS>(load::<S, VECTORS>(row, columns), bias)
                        }
                        None => bias,
                    };
                    store::<S, VECTORS>(
                        y.add(r * tile.stride),
                        columns,
                        add::<S, VECTORS>(*acc, start),
                    );
                }
            }
            OutputStart::Zero => {
                for (r, acc) in rows {
                    store::<S, VECTORS>(y.add(r * tile.stride), columns, *acc);
                }
            }
            OutputStart::Output => {
                for (r, acc) in rows {
                    let y_row = y.add(r * tile.stride);
                    let held = load::<S, VECTORS>(y_row, columns);
                    store::<S, VECTORS>(y_row, columns, add::<S, VECTORS>(*acc, held));
                }
            }
        }
    }

    /// `a + b`, vector by vector.
    ///
    /// # Safety
    /// As the block's.
    #[inline(always)]
    unsafe fn add<S: Lanes, const VECTORS: usize>(
        mut a: [S::V; VECTORS],
        b: [S::V; VECTORS],
    ) -> [S::V; VECTORS] {
        for (a, b) in a.iter_mut().zip(b) {
            *a = S::add(*a, b);
        }
        a
    }

    /// 16 floats from `p`, of which the first `columns` are read (the rest are zero).
    ///
    /// # Safety
    /// As the block's; `p` has `columns` (at most 16) floats to read.
    #[inline(always)]
    unsafe fn load<S: Lanes, const VECTORS: usize>(
        p: *const f32,
        columns: usize,
    ) -> [S::V; VECTORS] {
        let mut held = [0.0f32; PANEL];
        let p = if columns == PANEL {
            p
        } else {
            std::ptr::copy_nonoverlapping(p, held.as_mut_ptr(), columns);
            held.as_ptr()
        };
        let mut vectors = [S::zero(); VECTORS];
        for (v, lanes) in vectors.iter_mut().enumerate() {
            *lanes = S::load(p.add(v * S::LANES));
        }
        vectors
    }

    /// The first `columns` of 16 floats to `p`.
    ///
    /// # Safety
    /// As the block's; `p` has room for `columns` (at most 16) floats.
    #[inline(always)]
    unsafe fn store<S: Lanes, const VECTORS: usize>(
        p: *mut f32,
        columns: usize,
        vectors: [S::V; VECTORS],
    ) {
        let mut held = [0.0f32; PANEL];
        let target = if columns == PANEL {
            p
        } else {
            held.as_mut_ptr()
        };
        for (v, lanes) in vectors.into_iter().enumerate() {
            S::store(target.add(v * S::LANES), lanes);
        }
        if columns < PANEL {
            std::ptr::copy_nonoverlapping(held.as_ptr(), p, columns);
        }
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
        let unknown = request("neon").unwrap_err().to_string();
        assert!(
            unknown.contains("`neon`: expected auto, avx2, avx512 or gemm"),
            "{unknown}"
        );
        assert_eq!(
            resolve(Some(KernelRequest::Auto)).unwrap(),
            MatmulKernel::auto()
        );
        for (text, kernel, needs) in [
            ("avx2", MatmulKernel::Avx2, "needs AVX2 and FMA"),
            ("AVX512", MatmulKernel::Avx512, "needs AVX-512F"),
        ] {
            let asked = resolve(Some(request(text).unwrap()));
            match kernel.runs_here() {
                true => assert_eq!(asked.unwrap(), kernel),
                false => {
                    let message = asked.unwrap_err().to_string();
                    assert!(
                        message.contains(needs) && message.contains("lacks"),
                        "{message}"
                    );
                }
            }
        }
        // Never AVX-512 until it is measured faster there.
        assert_ne!(MatmulKernel::auto(), MatmulKernel::Avx512);
        assert_eq!(
            MatmulKernel::auto() == MatmulKernel::Avx2,
            MatmulKernel::Avx2.runs_here()
        );
    }

    fn random(len: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Our kernel's shapes and the `gemm` crate (`None`), each where this CPU runs it:
    /// AVX-512's where the CPU has AVX-512F, and its groups of 24 rows on AVX2 everywhere
    /// AVX2 runs, so that the generic block and the row grouping are tested on every
    /// machine with AVX2.
    fn shapes_this_cpu_runs() -> Vec<(&'static str, Option<TileShape>)> {
        let mut shapes = vec![("gemm", None)];
        for kernel in [MatmulKernel::Avx2, MatmulKernel::Avx512] {
            match kernel.runs_here() {
                true => shapes.push((kernel.name(), kernel.shape())),
                false => eprintln!(
                    "the {} kernel is not tested: this CPU lacks {}",
                    kernel.name(),
                    kernel.needs()
                ),
            }
        }
        #[cfg(target_arch = "x86_64")]
        if MatmulKernel::Avx2.runs_here() {
            shapes.push((simd::AVX2_TALL.name, Some(simd::AVX2_TALL)));
        }
        shapes
    }

    /// Every edge: no rows, no depth (the start alone), rows not a multiple of the group,
    /// columns not a multiple of 16, depths over several passes, row counts over several
    /// passes, both sides of the threading threshold; every start (bias, bias and
    /// residual, zero, the output's values); weights packed from either orientation; each
    /// kernel this CPU runs, whichever the process chose. Compared with a double-precision
    /// sum.
    #[test]
    fn every_kernel_matches_a_double_precision_product() {
        let shapes = shapes_this_cpu_runs();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[
            (0, 5, 7),
            (4, 5, 0),
            (1, 1, 1),
            (3, 5, 7),
            (6, 16, 16),
            (7, 17, 33),
            (13, 15, 300),
            (25, 33, 40),
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
            for &(_, shape) in &shapes {
                let Some(shape) = shape else { continue };
                let transposed: Vec<f32> = (0..k)
                    .flat_map(|kk| (0..n).map(|j| w[j * k + kk]).collect::<Vec<_>>())
                    .collect();
                let mut from_transpose = PackedWeight::zeroed_panels(n, k, shape);
                from_transpose.pack_transposed(&transposed);
                let packed = PackedWeight::for_shape(&w, n, k, Some(shape));
                assert_eq!(from_transpose.data, packed.data, "{m}x{n}x{k}");
            }
            // (what, result, the start's value at (i, j))
            let mut results: Vec<(String, Vec<f32>, Box<dyn Fn(usize, usize) -> f64>)> = vec![];
            for &(path, shape) in &shapes {
                let weight = &PackedWeight::for_shape(&w, n, k, shape);
                let rows = &PackedRows::for_shape(&x, m, k, shape);
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
