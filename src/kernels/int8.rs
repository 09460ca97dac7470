//! The int8 products of the frozen encoders' linear layers: `x · wᵀ + bias (+ residual)`
//! with `w` quantized once per output channel, when the layer is built, and `x` per row as
//! each product runs; the integer sums are exact in i32 and rescaled to f32 as they are
//! stored. Two schemes ([`Scheme`]), both symmetric in the weights:
//!
//! - [`Wide`] (`--precision int8`): 8-bit weights against 16-bit inputs (as many bits as
//!   keep `depth · input · 127` in an i32), two products per 32-bit lane by AVX2's
//!   `vpmaddwd`. The error is the weights' rounding alone.
//! - [`Narrow`] (`--precision int8-fast`): 7-bit weights against 8-bit inputs (asymmetric,
//!   with a zero point), four products per lane by `vpmaddubsw`, which adds two u8·i8
//!   products into a saturating i16, then `vpmaddwd` by ones. Seven bits, not eight,
//!   because 2 · 255 · 63 fits an i16 and 2 · 255 · 127 does not (ONNX Runtime's
//!   `reduce_range` and oneDNN drop the same bit on CPUs without VNNI). Twice the products
//!   per instruction, and twice the rounding error of the weights.
//!
//! The layout is the same for both: weight panels of 16 output columns `[depth/k][16][k]`
//! (`k` values per lane, zero padded), inputs as rows padded to whole steps, read 6 rows at
//! a time: one 32-bit broadcast of a row's `k` values meets two 32-byte loads of the
//! panel, into 12 accumulators of 6 rows x 16 columns. Inputs `x ≈ scale[r] · (q -
//! zero[r])`: `Σ (q - zero) w = Σ q w - zero · Σ w`, so the kernel sums `q · w` alone and
//! the stored value subtracts `zero[r] · colsum[c]` (zero is 0 in the symmetric scheme).
//! Each scheme runs on AVX512-VNNI or AVX-VNNI (multiply, add and accumulate in one
//! instruction), on AVX2, or in portable code ([`Int8Kernel`]); all store through one
//! [`store`], so they give the same bits.

use super::simd::multiversion;
use super::threading::{PACKED_PRODUCT_MIN_PARALLEL_WORK, PACKING_MIN_PARALLEL_LEN};
use rayon::prelude::*;

/// Output columns per weight panel.
const PANEL: usize = 16;
/// Rows of `x` per group.
const GROUP: usize = 6;
/// Rows per pass: a thread walks its panels over one pass of rows at a time, which stays
/// in the L2 cache (288 KiB of 8-bit inputs at depth 3072, the widest layer of ViT-B; the
/// 16-bit ones take twice that).
const ROWS_PER_PASS: usize = 96;
const _: () = assert!(ROWS_PER_PASS.is_multiple_of(GROUP));

/// How a scheme quantizes and sums.
pub(crate) trait Scheme: Send + Sync + 'static {
    type Input: Copy + Default + Send + Sync + Into<i32>;
    type Weight: Copy + Default + Send + Sync + Into<i32>;
    /// Values per 32-bit lane: each step of the kernel.
    const STEP: usize;
    /// The largest quantized weight.
    const WEIGHT_MAX: f32;
    /// Quantizes one row into `q`: its scale and zero point.
    fn quantize_row(x: &[f32], q: &mut [Self::Input]) -> (f32, i32);
    /// `clamp(round(w · inverse), ±WEIGHT_MAX)` into `q`.
    fn quantize_weights(w: &[f32], q: &mut [Self::Weight], inverse: f32);
}

/// 8-bit weights against 16-bit inputs, summed by `vpmaddwd`.
pub(crate) struct Wide;
/// 7-bit weights against 8-bit inputs, summed by `vpmaddubsw` and `vpmaddwd`.
pub(crate) struct Narrow;

impl Scheme for Wide {
    type Input = i16;
    type Weight = i16;
    const STEP: usize = 2;
    const WEIGHT_MAX: f32 = 127.0;

    /// Symmetric: `x ≈ scale · q` with `|q|` as large as keeps a row's sums in an i32.
    fn quantize_row(x: &[f32], q: &mut [i16]) -> (f32, i32) {
        let limit = ((i32::MAX as usize / (x.len().max(1) * 127)).min(i16::MAX as usize)) as f32;
        let (low, high) = match row_range(x, q) {
            Ok(range) => range,
            Err(parameters) => return parameters,
        };
        let largest = high.max(-low);
        quantize_wide(x, q, limit / largest, limit);
        (largest / limit, 0)
    }

    fn quantize_weights(w: &[f32], q: &mut [i16], inverse: f32) {
        quantize_weights_wide(w, q, inverse);
    }
}

impl Scheme for Narrow {
    type Input = u8;
    type Weight = i8;
    const STEP: usize = 4;
    const WEIGHT_MAX: f32 = 63.0;

    /// Asymmetric: `x ≈ scale · (q - zero)`, `q` in 0..=255, the range holding 0.0.
    fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, i32) {
        let (low, high) = match row_range(x, q) {
            Ok(range) => range,
            Err(parameters) => return parameters,
        };
        // At least the smallest normal float, so that a range of subnormals divides.
        let scale = ((high - low) / 255.0).max(f32::MIN_POSITIVE);
        let zero = round((-low / scale).min(255.0));
        quantize_narrow(x, q, 1.0 / scale, zero as f32);
        (scale, zero)
    }

    fn quantize_weights(w: &[f32], q: &mut [i8], inverse: f32) {
        quantize_weights_narrow(w, q, inverse);
    }
}

/// The code that computes the integer sums; every one gives the same sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    /// AVX-512 VNNI on 256-bit vectors: `vpdpbusd` / `vpdpwssd` multiply, add and
    /// accumulate in one instruction.
    Avx512Vnni,
    /// The same instructions in their AVX-VNNI encoding.
    AvxVnni,
    /// AVX2: `vpmaddubsw` / `vpmaddwd`, then `vpaddd`.
    Avx2,
    /// Plain Rust, for CPUs without AVX2.
    Portable,
}

impl Int8Kernel {
    /// Every kernel, the fastest first.
    pub(crate) const ALL: [Int8Kernel; 4] = [
        Int8Kernel::Avx512Vnni,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx2,
        Int8Kernel::Portable,
    ];

    /// Whether this CPU runs it.
    pub(crate) fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2");
            match self {
                Int8Kernel::Avx512Vnni => {
                    avx2 && is_x86_feature_detected!("avx512vnni")
                        && is_x86_feature_detected!("avx512vl")
                }
                Int8Kernel::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
                Int8Kernel::Avx2 => avx2,
                Int8Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Kernel::Portable
        }
    }

    /// The fastest this CPU runs.
    pub(crate) fn best() -> Self {
        Self::ALL
            .into_iter()
            .find(|kernel| kernel.runs_here())
            .unwrap_or(Int8Kernel::Portable)
    }
}

/// A weight `[out, in]` quantized per output channel, in the kernel's panels.
pub(crate) struct QuantizedWeight<S: Scheme> {
    out: usize,
    depth: usize,
    /// `[out/16][depth/STEP][16][STEP]`, zero padded.
    panels: Vec<S::Weight>,
    /// `[out/16 · 16]`: `w[c, k] ≈ scales[c] · q[c, k]` (zero in the padding).
    scales: Vec<f32>,
    /// `[out/16 · 16]`: `Σ_k q[c, k]`.
    sums: Vec<i32>,
    kernel: Int8Kernel,
}

impl<S: Scheme> QuantizedWeight<S> {
    /// `weight` is `[out, in]`, row-major, for the fastest kernel this CPU runs.
    pub(crate) fn new(weight: &[f32], out: usize, depth: usize) -> Self {
        Self::for_kernel(weight, out, depth, Int8Kernel::best())
    }

    pub(crate) fn for_kernel(weight: &[f32], out: usize, depth: usize, kernel: Int8Kernel) -> Self {
        assert_eq!(weight.len(), out * depth, "weight is not [{out}, {depth}]");
        let steps = depth.div_ceil(S::STEP);
        let padded_out = out.div_ceil(PANEL) * PANEL;
        let mut scales = vec![0.0; padded_out];
        let mut sums = vec![0; padded_out];
        let mut quantized = vec![S::Weight::default(); padded_out * depth];
        let channels = quantized
            .chunks_mut(depth.max(1))
            .zip(&mut scales)
            .zip(&mut sums);
        for (c, ((q, scale), sum)) in channels.take(out).enumerate() {
            let row = &weight[c * depth..(c + 1) * depth];
            let largest = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *scale = largest / S::WEIGHT_MAX;
            let inverse = if largest > 0.0 {
                S::WEIGHT_MAX / largest
            } else {
                0.0
            };
            S::quantize_weights(row, q, inverse);
            *sum = q.iter().map(|&q| q.into()).sum();
        }
        let mut panels = vec![S::Weight::default(); padded_out * steps * S::STEP];
        let panel_len = steps * PANEL * S::STEP;
        if panel_len > 0 {
            let fill = |(p, panel): (usize, &mut [S::Weight])| {
                let channels = quantized[p * PANEL * depth..].chunks(depth).take(PANEL);
                for (column, channel) in channels.enumerate() {
                    for (k, &q) in channel.iter().enumerate() {
                        panel[(k / S::STEP * PANEL + column) * S::STEP + k % S::STEP] = q;
                    }
                }
            };
            if panels.len() < PACKING_MIN_PARALLEL_LEN {
                panels.chunks_mut(panel_len).enumerate().for_each(fill);
            } else {
                panels.par_chunks_mut(panel_len).enumerate().for_each(fill);
            }
        }
        Self {
            out,
            depth,
            panels,
            scales,
            sums,
            kernel,
        }
    }

    pub(crate) fn out(&self) -> usize {
        self.out
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The weight as the products see it, `[out, in]`: what the tests compare against.
    #[cfg(test)]
    fn dequantized(&self) -> Vec<f32> {
        let steps = self.depth.div_ceil(S::STEP);
        let mut w = vec![0.0; self.out * self.depth];
        for (c, row) in w.chunks_mut(self.depth.max(1)).enumerate().take(self.out) {
            let panel = &self.panels[c / PANEL * steps * PANEL * S::STEP..];
            for (k, v) in row.iter_mut().enumerate() {
                let q = panel[(k / S::STEP * PANEL + c % PANEL) * S::STEP + k % S::STEP];
                *v = self.scales[c] * q.into() as f32;
            }
        }
        w
    }
}

/// `x [rows, in]` quantized per row, each row padded with zeros to whole steps, and the
/// rows to a whole number of groups of [`GROUP`].
struct QuantizedRows<S: Scheme> {
    /// `[rows/6 · 6][in/STEP · STEP]`.
    values: Vec<S::Input>,
    /// Values per row.
    stride: usize,
    /// `x[r, k] ≈ scales[r] · (q[r, k] - zeros[r])`.
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

impl<S: Scheme> QuantizedRows<S> {
    fn new(x: &[f32], rows: usize, depth: usize) -> Self {
        let stride = depth.div_ceil(S::STEP) * S::STEP;
        let padded_rows = rows.div_ceil(GROUP) * GROUP;
        let mut values = vec![S::Input::default(); padded_rows * stride];
        let mut scales = vec![0.0; padded_rows];
        let mut zeros = vec![0; padded_rows];
        if depth > 0 {
            let rows = values.chunks_mut(stride).zip(x.chunks(depth));
            let parameters = scales.iter_mut().zip(&mut zeros);
            if x.len() < PACKING_MIN_PARALLEL_LEN {
                rows.zip(parameters).for_each(|((q, x), (scale, zero))| {
                    (*scale, *zero) = S::quantize_row(x, &mut q[..depth]);
                });
            } else {
                let rows = values.par_chunks_mut(stride).zip(x.par_chunks(depth));
                let parameters = scales.par_iter_mut().zip(&mut zeros);
                rows.zip(parameters).for_each(|((q, x), (scale, zero))| {
                    (*scale, *zero) = S::quantize_row(x, &mut q[..depth]);
                });
            }
        }
        Self {
            values,
            stride,
            scales,
            zeros,
        }
    }
}

/// A row's range, or, for a row with none to quantize, its zeroed `q` and its parameters:
/// scale 0 for a row of zeros, NaN for one holding a NaN or an infinity (its outputs are
/// then NaN, as f32's would be).
fn row_range<Q: Default + Copy>(x: &[f32], q: &mut [Q]) -> Result<(f32, f32), (f32, i32)> {
    let parameters = match finite_range(x) {
        Some((low, high)) if high > low => return Ok((low, high)),
        Some(_) => (0.0, 0),
        None => (f32::NAN, 0),
    };
    q.fill(Q::default());
    Err(parameters)
}

/// The least and the greatest of 0 and `x`; `None` if `x` holds a NaN or an infinity. Written over 16 lanes, with comparisons
/// rather than `f32::min`, so that it vectorises.
fn finite_range(x: &[f32]) -> Option<(f32, f32)> {
    let (mut low, mut high, mut poison) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks.chain([tail]) {
        for (i, &v) in chunk.iter().enumerate() {
            low[i] = if v < low[i] { v } else { low[i] };
            high[i] = if v > high[i] { v } else { high[i] };
            // 0 · v is NaN exactly when v is a NaN or an infinity.
            poison[i] += 0.0 * v;
        }
    }
    if poison.iter().any(|p| p.is_nan()) {
        return None;
    }
    let low = low.iter().fold(0.0f32, |m, &v| m.min(v));
    let high = high.iter().fold(0.0f32, |m, &v| m.max(v));
    Some((low, high))
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2²²`: adding 1.5 · 2²³
/// rounds in the FPU's default mode and leaves the integer in the low bits of the sum.
/// Two integer-free operations that vectorise on every x86-64, where `round_ties_even` is
/// a libm call below SSE4.1 and `as i32` a saturating conversion.
#[inline(always)]
fn round(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

multiversion! {
    /// `q = clamp(round(x · inverse), ±limit)`.
    fn quantize_wide(x: &[f32], q: &mut [i16], inverse: f32, limit: f32) {
        for (q, &v) in q.iter_mut().zip(x) {
            *q = round((v * inverse).clamp(-limit, limit)) as i16;
        }
    }
}

multiversion! {
    /// `q = clamp(round(x · inverse) + zero, 0, 255)`.
    fn quantize_narrow(x: &[f32], q: &mut [u8], inverse: f32, zero: f32) {
        for (q, &v) in q.iter_mut().zip(x) {
            *q = round((v * inverse + zero).clamp(0.0, 255.0)) as u8;
        }
    }
}

multiversion! {
    /// `q = clamp(round(w · inverse), ±127)`.
    fn quantize_weights_wide(w: &[f32], q: &mut [i16], inverse: f32) {
        for (q, &v) in q.iter_mut().zip(w) {
            *q = round((v * inverse).clamp(-Wide::WEIGHT_MAX, Wide::WEIGHT_MAX)) as i16;
        }
    }
}

multiversion! {
    /// `q = clamp(round(w · inverse), ±63)`.
    fn quantize_weights_narrow(w: &[f32], q: &mut [i8], inverse: f32) {
        for (q, &v) in q.iter_mut().zip(w) {
            *q = round((v * inverse).clamp(-Narrow::WEIGHT_MAX, Narrow::WEIGHT_MAX)) as i8;
        }
    }
}

/// `x[rows, in] · weightᵀ + bias (+ residual[rows, out])` -> `[rows, out]`, all row-major.
pub(crate) fn linear<S: Scheme>(
    x: &[f32],
    rows: usize,
    weight: &QuantizedWeight<S>,
    bias: &[f32],
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (out, depth) = (weight.out, weight.depth);
    assert_eq!(x.len(), rows * depth, "x is not [{rows}, {depth}]");
    assert_eq!(bias.len(), out, "the bias is not [{out}]");
    assert!(
        residual.is_none_or(|r| r.len() == rows * out),
        "the residual is not [{rows}, {out}]"
    );
    let x = QuantizedRows::<S>::new(x, rows, depth);
    let mut y: Vec<f32> = Vec::with_capacity(rows * out);
    let panels = out.div_ceil(PANEL);
    let tasks = if rows * out * depth < PACKED_PRODUCT_MIN_PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads().clamp(1, panels.max(1))
    };
    let per_task = panels.div_ceil(tasks.max(1)).max(1);
    let output = Output(y.as_mut_ptr());
    let scales = Scales {
        x: &x,
        weight,
        bias,
        residual,
    };
    let run = |task: usize| {
        let output = &output;
        let task_panels = task * per_task..((task + 1) * per_task).min(panels);
        for r0 in (0..rows).step_by(ROWS_PER_PASS) {
            let pass_rows = r0..(r0 + ROWS_PER_PASS).min(rows);
            for panel in task_panels.clone() {
                for first_row in pass_rows.clone().step_by(GROUP) {
                    let block = Block {
                        first_row,
                        rows: GROUP.min(rows - first_row),
                        first_column: panel * PANEL,
                        columns: PANEL.min(out - panel * PANEL),
                        stride: out,
                    };
                    // SAFETY: this task alone writes the columns of its panels, and the
                    // block lies inside y (`rows x out`).
                    unsafe { weight.kernel.block(&block, &scales, output.0) };
                }
            }
        }
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
    // SAFETY: the blocks cover every row and column of y, and each block stores every
    // element it covers.
    unsafe { y.set_len(rows * out) };
    y
}

/// The output, shared by the threads of [`linear`]; each writes only its panels' columns.
struct Output(*mut f32);
// SAFETY: the threads of `linear` write disjoint column ranges through it.
unsafe impl Sync for Output {}

/// Where one block of sums goes.
struct Block {
    first_row: usize,
    rows: usize,
    first_column: usize,
    columns: usize,
    /// Row stride of the output and the residual.
    stride: usize,
}

type Sums = [[i32; PANEL]; GROUP];

/// What a block is stored with besides its sums.
struct Scales<'a, S: Scheme> {
    x: &'a QuantizedRows<S>,
    weight: &'a QuantizedWeight<S>,
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
}

impl Int8Kernel {
    /// Sums and stores one block: row group `block.first_row / 6` against panel
    /// `block.first_column / 16`.
    ///
    /// # Safety
    /// `y` is `[rows, block.stride]` and holds the block; no other thread writes its
    /// columns. The CPU runs this kernel ([`Int8Kernel::runs_here`]).
    unsafe fn block<S: Scheme>(self, block: &Block, scales: &Scales<S>, y: *mut f32) {
        let steps = scales.weight.depth.div_ceil(S::STEP);
        let stride = scales.x.stride;
        let a = &scales.x.values[block.first_row * stride..][..GROUP * stride];
        let panel = block.first_column / PANEL * steps * PANEL * S::STEP;
        let b = &scales.weight.panels[panel..][..steps * PANEL * S::STEP];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: the caller vouches for the CPU and y; a and b hold `steps` steps.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Avx512Vnni => {
                    x86::block_avx512_vnni(steps, a, stride, b, block, scales, y)
                }
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::AvxVnni => x86::block_avx_vnni(steps, a, stride, b, block, scales, y),
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Avx2 => x86::block_avx2(steps, a, stride, b, block, scales, y),
                _ => {
                    let a = std::slice::from_raw_parts(a, GROUP * stride);
                    let b = std::slice::from_raw_parts(b, steps * PANEL * S::STEP);
                    store(&portable_sums::<S>(a, stride, b), block, scales, y)
                }
            }
        }
    }
}

/// The integer sums in plain Rust: `sums[r][c] = Σ_k a[r, k] · b[c, k]`, `a` being 6 rows
/// `stride` values apart.
fn portable_sums<S: Scheme>(a: &[S::Input], stride: usize, b: &[S::Weight]) -> Sums {
    let mut sums = [[0; PANEL]; GROUP];
    for (row, a) in sums.iter_mut().zip(a.chunks(stride)) {
        for (step, b) in b.chunks_exact(PANEL * S::STEP).enumerate() {
            let a = &a[step * S::STEP..][..S::STEP];
            for (sum, b) in row.iter_mut().zip(b.chunks_exact(S::STEP)) {
                let products = a.iter().zip(b).map(|(&a, &b)| a.into() * b.into());
                *sum += products.sum::<i32>();
            }
        }
    }
    sums
}

/// Stores a block: `y = (sums - zero · colsum) · (row scale · column scale) + bias
/// (+ residual)`, in this order of operations whichever kernel summed (inlined into each,
/// so that it vectorises for the kernel's instruction set).
///
/// # Safety
/// `y` is `[rows, block.stride]` and holds the block; no other thread writes its columns.
#[inline(always)]
unsafe fn store<S: Scheme>(sums: &Sums, block: &Block, scales: &Scales<S>, y: *mut f32) {
    let Scales {
        x,
        weight,
        bias,
        residual,
    } = *scales;
    let columns = block.first_column..block.first_column + block.columns;
    let column_scales = &weight.scales[columns.clone()];
    let column_sums = &weight.sums[columns.clone()];
    let bias = &bias[columns];
    for (r, sums) in sums.iter().enumerate().take(block.rows) {
        let row = block.first_row + r;
        let (scale, zero) = (x.scales[row], x.zeros[row]);
        let at = row * block.stride + block.first_column;
        // SAFETY: the caller vouches for the block's place in y and for its columns.
        let out = unsafe { std::slice::from_raw_parts_mut(y.add(at), block.columns) };
        let values = out.iter_mut().zip(sums).zip(column_sums);
        for (((y, &sum), &colsum), (&column_scale, &bias)) in
            values.zip(column_scales.iter().zip(bias))
        {
            *y = (sum - zero * colsum) as f32 * (scale * column_scale) + bias;
        }
        if let Some(residual) = residual {
            let residual = &residual[at..at + block.columns];
            out.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store, Block, Scales, Scheme, Sums, GROUP, PANEL};
    use std::arch::x86_64::*;
    use std::mem::size_of;

    /// Defines `pub(super) unsafe fn $name<S: Scheme>(steps, a, stride, b, block, scales,
    /// y)`, compiled for `$features`: the 6 x 16 sums of [`sums`] with `$quads`
    /// accumulating u8·i8 quads (the narrow scheme) or `$pairs` i16 pairs (the wide one),
    /// then [`store`].
    macro_rules! block {
        ($(#[$doc:meta])* $name:ident, $features:literal, $quads:expr, $pairs:expr) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU must have the instructions named above; the rest as [`sums`] and
            /// [`store`].
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<S: Scheme>(
                steps: usize,
                a: *const S::Input,
                stride: usize,
                b: *const S::Weight,
                block: &Block,
                scales: &Scales<S>,
                y: *mut f32,
            ) {
                let (a, b, stride) = (a.cast(), b.cast(), stride * size_of::<S::Input>());
                // SAFETY: the caller's promises are these functions'.
                let sums = unsafe {
                    match size_of::<S::Input>() {
                        1 => sums(steps, a, stride, b, $quads),
                        _ => sums(steps, a, stride, b, $pairs),
                    }
                };
                // SAFETY: as above.
                unsafe { store(&sums, block, scales, y) }
            }
        };
    }

    block!(
        /// AVX2: quads by `vpmaddubsw` (pairs into i16, which the weights' seven bits keep
        /// from saturating) and `vpmaddwd` by ones, pairs by `vpmaddwd`, then `vpaddd`.
        block_avx2,
        "avx2",
        |acc, x, b| {
            let pairs = _mm256_maddubs_epi16(x, b);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        },
        |acc, x, b| _mm256_add_epi32(acc, _mm256_madd_epi16(x, b))
    );
    block!(
        /// AVX-512 VNNI on 256-bit vectors: `vpdpbusd` and `vpdpwssd` multiply, add and
        /// accumulate in one instruction, without saturating.
        block_avx512_vnni,
        "avx2,avx512vnni,avx512vl",
        |acc, x, b| _mm256_dpbusd_epi32(acc, x, b),
        |acc, x, b| _mm256_dpwssd_epi32(acc, x, b)
    );
    block!(
        /// AVX-VNNI: the same instructions in their VEX encoding.
        block_avx_vnni,
        "avx2,avxvnni",
        |acc, x, b| _mm256_dpbusd_avx_epi32(acc, x, b),
        |acc, x, b| _mm256_dpwssd_avx_epi32(acc, x, b)
    );

    /// `sums[r][c] = Σ_k a[r, k] · b[c, k]` over `steps` steps of 4 bytes (4 u8 or 2 i16
    /// values): per step, each row's 4 bytes broadcast against the panel's two 32-byte
    /// halves, `accumulate(sums, inputs, weights)` adding each column's products of the
    /// step into its i32 lane.
    ///
    /// # Safety
    /// Inlined into a function compiled for the instructions `accumulate` uses, which the
    /// CPU has; `a` has 6 rows of `steps · 4` bytes `stride` bytes apart, `b` `steps · 64`
    /// bytes.
    #[inline(always)]
    unsafe fn sums(
        steps: usize,
        a: *const u8,
        stride: usize,
        b: *const u8,
        accumulate: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) -> Sums {
        let mut acc = [[_mm256_setzero_si256(); 2]; GROUP];
        for step in 0..steps {
            // SAFETY: step < steps, within the lengths the caller vouches for.
            let (a, b) = unsafe { (a.add(step * 4), b.add(step * PANEL * 4)) };
            // SAFETY: 64 bytes from b (unaligned loads).
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(b.cast()),
                    _mm256_loadu_si256(b.add(32).cast()),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r's 4 bytes of this step.
                let x = unsafe { a.add(r * stride).cast::<i32>().read_unaligned() };
                let x = _mm256_set1_epi32(x);
                acc[0] = accumulate(acc[0], x, b0);
                acc[1] = accumulate(acc[1], x, b1);
            }
        }
        let mut sums = [[0; PANEL]; GROUP];
        for (row, acc) in sums.iter_mut().zip(acc) {
            // SAFETY: row has 16 i32, two 32-byte stores.
            unsafe {
                _mm256_storeu_si256(row.as_mut_ptr().cast(), acc[0]);
                _mm256_storeu_si256(row.as_mut_ptr().add(8).cast(), acc[1]);
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every kernel this CPU runs, each one it cannot named on stderr.
    fn kernels() -> Vec<Int8Kernel> {
        let (runs, lacks): (Vec<_>, Vec<_>) =
            Int8Kernel::ALL.into_iter().partition(|k| k.runs_here());
        for kernel in lacks {
            eprintln!("the {kernel:?} int8 kernel is not tested: this CPU lacks its instructions");
        }
        runs
    }

    /// The inputs as the product sees them: each row quantized and restored.
    fn dequantized_rows<S: Scheme>(x: &[f32], rows: usize, depth: usize) -> Vec<f64> {
        let mut q = vec![S::Input::default(); depth];
        let mut restored = Vec::with_capacity(rows * depth);
        for row in x.chunks(depth).take(rows) {
            let (scale, zero) = S::quantize_row(row, &mut q);
            restored.extend(q.iter().map(|&q| scale as f64 * (q.into() - zero) as f64));
        }
        restored
    }

    /// Shapes with ragged rows, columns and depths, one over the row pass and the
    /// threads' minimum work.
    const SHAPES: [(usize, usize, usize); 5] = [
        (1, 1, 1),
        (5, 17, 7),
        (13, 40, 33),
        (100, 50, 130),
        (200, 96, 771),
    ];

    fn exact_on_the_quantized_values<S: Scheme>() {
        for kernel in kernels() {
            for (seed, &(rows, out, depth)) in SHAPES.iter().enumerate() {
                let seed = seed as u64 * 4;
                let (x, w) = (random(rows * depth, seed), random(out * depth, seed + 1));
                let (bias, residual) = (random(out, seed + 2), random(rows * out, seed + 3));
                let weight = QuantizedWeight::<S>::for_kernel(&w, out, depth, kernel);
                let y = linear(&x, rows, &weight, &bias, Some(&residual));
                let (xq, wq) = (dequantized_rows::<S>(&x, rows, depth), weight.dequantized());
                for r in 0..rows {
                    for c in 0..out {
                        let dot: f64 = (0..depth)
                            .map(|k| xq[r * depth + k] * wq[c * depth + k] as f64)
                            .sum();
                        let expected = dot + bias[c] as f64 + residual[r * out + c] as f64;
                        let got = y[r * out + c] as f64;
                        assert!(
                            (got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                            "{kernel:?} [{rows}, {out}, {depth}] ({r}, {c}): {got} against {expected}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn products_are_exact_on_the_quantized_values() {
        exact_on_the_quantized_values::<Wide>();
        exact_on_the_quantized_values::<Narrow>();
    }

    fn same_bits<S: Scheme>() {
        let (rows, out, depth) = (100, 50, 130);
        let (x, w, bias) = (
            random(rows * depth, 1),
            random(out * depth, 2),
            random(out, 3),
        );
        let results: Vec<Vec<f32>> = kernels()
            .into_iter()
            .map(|kernel| {
                let weight = QuantizedWeight::<S>::for_kernel(&w, out, depth, kernel);
                linear(&x, rows, &weight, &bias, None)
            })
            .collect();
        assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn every_kernel_gives_the_same_bits() {
        same_bits::<Wide>();
        same_bits::<Narrow>();
    }

    /// The largest sums a scheme can meet: inputs at both ends of their range against
    /// weights at ±WEIGHT_MAX, over a long depth; then the cosine to f32 on random values.
    fn extremes_and_cosine<S: Scheme>(tolerance: f32, least_cosine: f32) {
        let (rows, out, depth) = (12, 32, 4096);
        let x: Vec<f32> = (0..rows * depth)
            .map(|i| if i % 3 == 0 { -0.04 } else { 10.0 })
            .collect();
        // Even columns all at the top of the range, odd ones changing sign every 7.
        let w: Vec<f32> = (0..out * depth)
            .map(|i| {
                if (i / depth) % 2 == 0 || (i / 7) % 2 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let y = linear(
            &x,
            rows,
            &QuantizedWeight::<S>::new(&w, out, depth),
            &vec![0.0; out],
            None,
        );
        for r in 0..rows {
            for c in 0..out {
                let products = (0..depth).map(|k| x[r * depth + k] * w[c * depth + k]);
                let exact: f32 = products.clone().sum();
                let magnitude: f32 = products.map(f32::abs).sum();
                let got = y[r * out + c];
                assert!(
                    (got - exact).abs() <= tolerance * magnitude,
                    "({r}, {c}): {got} against {exact}"
                );
            }
        }
        let (rows, out, depth) = (64, 64, 768);
        let (x, w) = (random(rows * depth, 7), random(out * depth, 8));
        let y = linear(
            &x,
            rows,
            &QuantizedWeight::<S>::new(&w, out, depth),
            &vec![0.0; out],
            None,
        );
        let mut worst = 1.0f32;
        for r in 0..rows {
            let exact: Vec<f32> = (0..out)
                .map(|c| {
                    (0..depth)
                        .map(|k| x[r * depth + k] * w[c * depth + k])
                        .sum()
                })
                .collect();
            let got = &y[r * out..(r + 1) * out];
            let dot: f32 = got.iter().zip(&exact).map(|(a, b)| a * b).sum();
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            worst = worst.min(dot / (norm(got) * norm(&exact)));
        }
        assert!(worst > least_cosine, "lowest cosine {worst}");
    }

    #[test]
    fn products_stay_close_to_f32_without_overflow_or_saturation() {
        extremes_and_cosine::<Wide>(1e-3, 0.9999);
        extremes_and_cosine::<Narrow>(0.02, 0.999);
    }

    fn nan_rows<S: Scheme>() {
        let (rows, out, depth) = (3, 5, 20);
        let weight = QuantizedWeight::<S>::new(&random(out * depth, 9), out, depth);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = random(rows * depth, 10);
            x[depth + 17] = bad;
            let y = linear(&x, rows, &weight, &vec![0.0; out], None);
            assert!(y[out..2 * out].iter().all(|v| v.is_nan()), "{bad}: {y:?}");
            assert!(y[..out].iter().chain(&y[2 * out..]).all(|v| v.is_finite()));
        }
    }

    #[test]
    fn a_row_with_a_nan_or_an_infinity_gives_nans_in_that_row_alone() {
        nan_rows::<Wide>();
        nan_rows::<Narrow>();
    }

    fn zeros<S: Scheme>() {
        let (rows, out, depth) = (7, 18, 9);
        let bias = random(out, 4);
        let weight = QuantizedWeight::<S>::new(&random(out * depth, 5), out, depth);
        let y = linear(&vec![0.0; rows * depth], rows, &weight, &bias, None);
        assert!(y.chunks(out).all(|row| row == bias));
        let weight = QuantizedWeight::<S>::new(&vec![0.0; out * depth], out, depth);
        let y = linear(&random(rows * depth, 6), rows, &weight, &bias, None);
        assert!(y.chunks(out).all(|row| row == bias));
    }

    #[test]
    fn zero_rows_and_weights_give_the_bias() {
        zeros::<Wide>();
        zeros::<Narrow>();
    }
}
