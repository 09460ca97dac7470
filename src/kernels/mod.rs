//! gfer's hand-written compute: the kernels that candle 0.11 does not provide, or not
//! fast enough, for the CPU.
//!
//! Every `unsafe` block of gfer's compute lives in this folder, each with a `// SAFETY:`
//! line that says why it holds (and every `unsafe fn` a `# Safety` section that says what
//! its callers must ensure).
//!
//! This is the bottom layer of the crate: it imports nothing from gfer but
//! [`crate::error`], and the model, encoder and training code build on it.
//!
//! - Matrix products: the packed 6x16 AVX2/FMA kernel or the `gemm` crate, one per
//!   process ([`choose_matmul_kernel`], `GFER_MATMUL`), under the encoders' linear layers
//!   and the convolutions, and the strided product on the `gemm` crate
//!   ([`gemm`]) for f64, the machines the packed kernel does not serve, and the fused
//!   training step. When each hands work to the thread pool: [`threading`].
//! - The int8 products of the encoders' linear layers at `--precision int8|int8-fast`
//!   ([`int8`]): weights quantized per output channel at load, inputs per row, exact
//!   integer sums by `vpmaddwd` (8-bit weights, 16-bit inputs) or `vpmaddubsw` (7-bit
//!   weights, 8-bit inputs) on AVX2, and the same sums in portable code elsewhere.
//! - The ResNet's trainable layers as candle custom ops with their backward passes,
//!   CPU kernels in f32 and f64 (on [`float`]) and a composed fallback for other devices
//!   beside each: [`conv2d`] (with [`conv_panels`]), [`max_pool2d`], [`relu`],
//!   [`batch_norm_train`].
//! - The frozen encoders' layers, fused kernels on f32 slices in CPU memory
//!   ([`host_slices`], [`simd`]) with the same maths as candle operations for any other
//!   device or dtype: [`FrozenLinear`] with its [`gelu`] activations, [`LayerNorm`],
//!   [`attention`]. Composed from candle operations, the encoders spend much of a forward
//!   pass outside the matrix products: separate passes and allocations for the bias, the
//!   residual, the activation, the head split and the softmax, most of them
//!   single-threaded, with libm's scalar `exp`. The fused kernels add the bias and the
//!   residual as the product is stored, apply the activation in place with a vectorised
//!   `exp`, and run attention per (image, head) straight on the fused q/k/v projection
//!   with no copies.
//! - Adam's update loop on plain memory ([`adam`]).

mod adam;
mod attention;
mod batch_norm;
mod conv;
mod conv_panels;
mod float;
mod gelu;
mod gemm;
mod host_slices;
mod int8;
mod layer_norm;
mod linear;
mod matmul;
mod pool;
mod relu;
mod simd;
mod threading;

pub use attention::attention;
pub use batch_norm::batch_norm_train;
pub use conv::conv2d;
pub use layer_norm::LayerNorm;
pub use linear::{FrozenLinear, Precision};
pub use matmul::{
    choose_matmul_kernel, matmul_kernel, KernelRequest, MatmulKernel, KERNEL_VARIABLE,
};
pub use pool::max_pool2d;
pub use relu::relu;

pub(crate) use adam::AdamConstants;
pub(crate) use gemm::{strided_product, MatrixView};
pub(crate) use threading::STRIDED_PRODUCT_MIN_PARALLEL_WORK;
