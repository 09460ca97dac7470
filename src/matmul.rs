//! `x · wᵀ + bias (+ residual)` for f32 row-major matrices on the CPU: the linear layers
//! of the frozen encoders, whose weight `w` (PyTorch's `[out, in]`) never changes.
//!
//! On AVX2+FMA machines without AVX-512 a kernel of our own runs, laid out as ONNX
//! Runtime's MLAS lays out its f32 products: the weight is repacked once, when the layer
//! is built, into panels of 16 output columns (`[k][16]` each); `x` is packed per call into
//! groups of 6 rows (`[k][6]`); the kernel broadcasts a group against a panel, keeping the
//! 6x16 block of results in 12 AVX registers, and adds the bias and the residual as the
//! block is first stored. Elsewhere the `gemm` crate runs on the weight as given (its AVX-512
//! kernels are the better choice where they exist, and no AVX-512 machine was at hand to
//! tune ours). Measured on the 2-core AVX2 machine of README's Speed section, `gemm`
//! repacked the weights on every call (about 7% of a ViT-B/32 forward) and its products
//! ran at 90-120 GFLOP/s where OpenBLAS's run at 140-155.

/// Output columns per weight panel: two AVX vectors.
const PANEL: usize = 16;
/// Rows of `x` per kernel call.
const ROWS: usize = 6;
/// Depth of one pass: a panel's `DEPTH x 16` block (16 KiB) stays in the L1 cache while
/// the rows stream past.
const DEPTH: usize = 256;
/// Rows per pass: `ROWS_PER_PASS x DEPTH` floats of `x` (192 KiB) stay in the L2 cache
/// while a thread walks its panels.
const ROWS_PER_PASS: usize = 192;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// A linear layer's weight `[out, in]` in the layout the product reads.
pub(crate) struct PackedWeight {
    out: usize,
    depth: usize,
    /// `[out/16][in][16]` (zero-padded columns) for our kernel, `[out, in]` otherwise.
    data: Vec<f32>,
    panels: bool,
}

impl PackedWeight {
    /// `weight` is `[out, in]`, row-major.
    pub(crate) fn new(weight: &[f32], out: usize, depth: usize) -> Self {
        assert_eq!(weight.len(), out * depth, "weight is not [{out}, {depth}]");
        let panels = own_kernel_available();
        let data = if panels {
            pack_panels(weight, out, depth)
        } else {
            weight.to_vec()
        };
        Self {
            out,
            depth,
            data,
            panels,
        }
    }

    pub(crate) fn out(&self) -> usize {
        self.out
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }
}

fn own_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && !is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn pack_panels(weight: &[f32], out: usize, depth: usize) -> Vec<f32> {
    if depth == 0 {
        return Vec::new();
    }
    let mut data = vec![0.0f32; out.div_ceil(PANEL) * depth * PANEL];
    for (index, panel) in data.chunks_mut(depth * PANEL).enumerate() {
        for (column, row) in weight[index * PANEL * depth..]
            .chunks(depth)
            .take(PANEL)
            .enumerate()
        {
            for (k, &value) in row.iter().enumerate() {
                panel[k * PANEL + column] = value;
            }
        }
    }
    data
}

/// `x[rows, in] · weightᵀ + bias (+ residual[rows, out])` -> `[rows, out]`, all row-major.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    weight: &PackedWeight,
    bias: &[f32],
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (out, depth) = (weight.out, weight.depth);
    assert!(x.len() == rows * depth && bias.len() == out);
    assert!(residual.is_none_or(|r| r.len() == rows * out));
    #[cfg(target_arch = "x86_64")]
    if weight.panels && depth > 0 {
        // SAFETY: panels are only made where own_kernel_available() (AVX2, FMA).
        return unsafe { avx2::linear(x, weight, bias, residual, rows) };
    }
    let mut y = match residual {
        None => bias.repeat(rows),
        Some(residual) => residual
            .chunks_exact(out.max(1))
            .flat_map(|row| row.iter().zip(bias).map(|(r, b)| r + b))
            .collect(),
    };
    gemm_crate(x, &weight.data, &mut y, rows, out, depth);
    y
}

/// `c[m, n] += a[m, k] · b[n, k]ᵀ` with the `gemm` crate.
fn gemm_crate(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    if m * n * k == 0 {
        return;
    }
    let parallelism = if m * n * k < PARALLEL_WORK {
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
    use super::{PackedWeight, DEPTH, PANEL, PARALLEL_WORK, ROWS, ROWS_PER_PASS};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// The output, shared by the threads; each writes only the columns of its panels.
    struct Output(*mut f32);
    // SAFETY: threads write disjoint column ranges (see `linear`).
    unsafe impl Sync for Output {}

    /// # Safety
    /// The CPU must have AVX2 and FMA; `weight` holds panels; lengths as checked by the
    /// caller.
    pub(super) unsafe fn linear(
        x: &[f32],
        weight: &PackedWeight,
        bias: &[f32],
        residual: Option<&[f32]>,
        rows: usize,
    ) -> Vec<f32> {
        let (out, depth) = (weight.out, weight.depth);
        let panels = out.div_ceil(PANEL);
        let tasks = if rows * out * depth < PARALLEL_WORK {
            1
        } else {
            rayon::current_num_threads().clamp(1, panels)
        };
        let per_task = panels.div_ceil(tasks);
        let groups = pack_rows(x, rows, depth, tasks > 1);
        let mut y: Vec<f32> = Vec::with_capacity(rows * out);
        let output = Output(y.as_mut_ptr());
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
                            // First pass: the bias (and residual) start the sum.
                            start: (k0 == 0).then(|| (&bias[n0..], residual.map(|r| &r[n0..]))),
                        };
                        let b = weight.data[(panel * depth + k0) * PANEL..].as_ptr();
                        for first_row in pass_rows.clone().step_by(ROWS) {
                            let valid = ROWS.min(pass_rows.end - first_row);
                            let a = groups[(first_row * depth + k0 * ROWS)..].as_ptr();
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
        // SAFETY: the first pass wrote every element of every row and column.
        unsafe { y.set_len(rows * out) };
        y
    }

    /// `x` as groups of 6 rows, each laid out `[depth][6]` (the last zero-padded), so the
    /// kernel reads one stream instead of six rows: about 10% faster on the widest layers
    /// in interleaved single-thread runs (six streams a large power-of-two stride apart
    /// share cache sets, the likely reason).
    fn pack_rows(x: &[f32], rows: usize, depth: usize, parallel: bool) -> Vec<f32> {
        let len = rows.div_ceil(ROWS) * ROWS * depth;
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
        /// On the first pass, the bias and residual from this panel's first column on;
        /// later passes add to what the output holds.
        start: Option<(&'a [f32], Option<&'a [f32]>)>,
    }

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
            Some((bias, residual)) => {
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
            None => {
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

    fn random(len: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Every edge: no rows, no depth (the bias alone), rows not a multiple of 6, columns not a multiple of 16, depths over
    /// several passes, row counts over several passes, both sides of the threading
    /// threshold; with and without a residual. Compared with a double-precision sum.
    #[test]
    fn matches_a_double_precision_product() {
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
            let residual = random(m * n, &mut rng);
            let packed = PackedWeight::new(&w, n, k);
            assert_eq!(packed.panels, own_kernel_available());
            // The `gemm` crate's path, which machines without our kernel take.
            let plain = PackedWeight {
                out: n,
                depth: k,
                data: w.clone(),
                panels: false,
            };
            for (weight, residual) in [
                (&packed, None),
                (&packed, Some(&residual[..])),
                (&plain, None),
                (&plain, Some(&residual[..])),
            ] {
                let y = linear(&x, m, weight, &bias, residual);
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64);
                        let exact = bias[j] as f64
                            + residual.map_or(0.0, |r| r[i * n + j] as f64)
                            + terms.clone().sum::<f64>();
                        // f32 rounding grows with the size of the terms, not of the sum.
                        let tolerance = 1e-6 * (1.0 + terms.map(f64::abs).sum::<f64>());
                        assert!(
                            (y[i * n + j] as f64 - exact).abs() <= tolerance,
                            "{m}x{n}x{k} at ({i},{j}): {} vs {exact}",
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }
}
