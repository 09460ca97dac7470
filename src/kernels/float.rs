//! What the candle custom ops of this folder share: the element types their CPU kernels
//! run on ([`Float`], f32 and f64: the parity tests replay in f64), the dispatch on a
//! storage's element type ([`by_dtype!`]), and the checks that send a tensor to the CPU
//! kernels ([`on_cpu_kernels`]) and read its values ([`contiguous`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

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

/// Whether `x` runs on the CPU kernels of this folder (f32 or f64 on the CPU).
pub(super) fn on_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The contiguous values of a CPU tensor of element type `T`.
pub(super) fn contiguous<'a, T: Float>(
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
            candle_core::CpuStorage::F32(_) => $f::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $f::<f64>($($arg),*),
            other => candle_core::bail!(
                "{}: f32 or f64 only, got {:?}",
                stringify!($f),
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(super) use by_dtype;
