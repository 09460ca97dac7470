//! The strided matrix product on the `gemm` crate, in f32 and f64: operands are views
//! ([`MatrixView`]) whose rows and columns may be laid out at any stride, so a transpose
//! is read in place. The convolutions run on it where the packed kernel
//! ([`super::matmul`]) does not (f64, machines without AVX2+FMA or with AVX-512), and the
//! fused training step runs its small products on it.

use super::float::Float;
use super::threading::STRIDED_PRODUCT_MIN_PARALLEL_WORK;
use candle_core::Result;

/// A matrix view: element (i, j) at `data[i * row_stride + j * col_stride]`.
pub(crate) struct MatrixView<'a, T> {
    data: &'a [T],
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> MatrixView<'a, T> {
    /// A row-major matrix with `cols` columns stored in `data`.
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

fn parallelism(work: usize) -> gemm::Parallelism {
    if work < STRIDED_PRODUCT_MIN_PARALLEL_WORK {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `dst[m,n] = a[m,k] b[k,n]`, or `dst += a b` when `accumulate`; `dst` row-major.
pub(crate) fn strided_product<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    a: MatrixView<T>,
    b: MatrixView<T>,
) -> Result<()> {
    let last = |rows: usize, cols: usize, mat: &MatrixView<T>| {
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
