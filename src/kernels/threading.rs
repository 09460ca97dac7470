//! When the kernels of this folder hand work to rayon's thread pool. Below each threshold
//! the work runs on the calling thread: handing small work to the pool and waiting for it
//! costs more than a second core saves. Each value was set for the kernel it guards, which
//! is why they differ; change one only after timing that kernel again.

/// The packed matrix kernel ([`super::matmul`]) and its `gemm`-crate path: products of
/// fewer multiply-adds run on the calling thread.
pub(crate) const PACKED_PRODUCT_MIN_PARALLEL_WORK: usize = 1 << 20;

/// Packing for the packed matrix kernel (a weight's panels, a left-hand side's row
/// groups): fewer floats are packed on the calling thread.
pub(crate) const PACKING_MIN_PARALLEL_LEN: usize = 1 << 16;

/// The strided product on the `gemm` crate ([`super::gemm`]), and the fused training step's
/// choice to run its two backward products side by side: products of fewer multiply-adds
/// run on the calling thread (fast mode's small layers at batch 32 stay there).
pub(crate) const STRIDED_PRODUCT_MIN_PARALLEL_WORK: usize = 1 << 24;

/// Adam's update ([`super::adam`]) runs on chunks of this many values, one task each; a
/// parameter no larger is updated on the calling thread.
pub(crate) const ADAM_CHUNK_LEN: usize = 1 << 18;
