//! The model layer: the trainable CAFE model and the vocabulary around it. It sits above
//! the frozen encoders ([`crate::backbone`]) and below training, evaluation and prediction,
//! which use it; it imports nothing from them.
//!
//! - [`cafe`]: CAFE's head with its training losses, and the ResNet-18 mask generator.
//! - [`classifier`]: every method (CAFE, its ablations, the baselines) as one model type,
//!   [`Classifier`], described by a [`ModelSpec`] that the bundle records.
//! - [`resnet`]: ResNet-18 under torchvision's names, and its checkpoint reader; the layers
//!   candle cannot train as shipped are in [`crate::kernels`].
//! - [`batch`]: [`Batch`] and [`Trainable`], what training, evaluation and inference share.
//! - [`bundle`]: the one-file model bundle; [`inference`]: a bundle with its encoder, ready
//!   to classify images.
//! - [`init_var_builder`]: where a new model's starting tensors come from.
//!
//! Tensor names follow PyTorch: the ResNet-18 mask generator under torchvision's names at
//! the root (`conv1.weight`, `layer2.0.downsample.1.running_var`, ...), the classifier as
//! `fc.weight`/`fc.bias`, the optional mask projection as `mask_proj.weight`/`.bias`.
//!
//! CAFE with the MS-Celeb ResNet-18 as its mask generator, and the losses of one batch
//! (a training step on them: `gfer::train::step`):
//!
//! ```no_run
//! # fn main() -> gfer::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use gfer::model::classifier::{GeneratorSpec, Method};
//! use gfer::model::{drop_vector, init_var_builder, resnet, Batch, CafeConfig};
//! use gfer::model::{Classifier, ModelSpec, Trainable};
//! use rand::SeedableRng;
//!
//! let device = Device::Cpu;
//! let cfg = CafeConfig::default();
//! let path = std::path::Path::new("resnet18_msceleb.pth");
//! let resnet = resnet::load_checkpoint(path, cfg.trunk_widths, false, &device)?;
//! let generator = GeneratorSpec::Resnet { widths: cfg.trunk_widths };
//! let spec = ModelSpec::new(Method::Cafe, cfg.clone(), generator);
//! // The FC (and anything a partial checkpoint lacks) starts from PyTorch's default init.
//! let model = Classifier::new(init_var_builder(resnet, 3407, &device), &spec)?;
//!
//! let batch = Batch {
//!     images: Some(Tensor::zeros((2, 3, 224, 224), DType::F32, &device)?),
//!     features: Some(Tensor::zeros((2, 512), DType::F32, &device)?),
//!     mask_input: None,
//!     labels: Tensor::new(&[3u32, 6], &device)?,
//! };
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3407);
//! let drop = drop_vector(cfg.feature_dim, cfg.classes, cfg.drop_per_group, &mut rng)?;
//! let losses = model.train_losses(&batch, &Tensor::new(drop, &device)?)?;
//! println!("loss {}", losses.loss.to_scalar::<f32>()?);
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod bundle;
pub mod cafe;
pub mod classifier;
pub mod inference;
pub mod resnet;

pub use batch::{argmax, model_tensors, Batch, HostLayers, Trainable};
pub use cafe::{drop_vector, CafeConfig, CafeHead, CafeLosses, ResnetGenerator};
pub use classifier::{Classifier, ModelSpec};
pub use resnet::{FrozenResnet, ResNet18};

use crate::error::Result;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use std::collections::HashMap;
use std::sync::Mutex;

/// A tensor a model trains or keeps (BatchNorm statistics), with its full name.
pub type NamedVar = (String, Var);

/// A [`VarBuilder`] for a new model: a tensor named in `given` (e.g. from a checkpoint,
/// already checked) is used as it is; every other tensor is drawn from the model's
/// PyTorch-style initialisation hint with a ChaCha8 generator seeded by `seed`, so the same
/// seed gives the same model. A given tensor of the wrong shape is an error.
pub fn init_var_builder(
    given: HashMap<String, Tensor>,
    seed: u64,
    device: &Device,
) -> VarBuilder<'static> {
    let source = SeededSource {
        given,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
    };
    VarBuilder::from_backend(Box::new(source), DType::F32, device.clone())
}

struct SeededSource {
    given: HashMap<String, Tensor>,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededSource {
    fn draw(&self, shape: &Shape, name: &str, init: Init) -> candle_core::Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("initialisation generator poisoned".into()))?;
        let values = match init {
            Init::Const(value) => vec![value as f32; n],
            Init::Uniform { lo, up } => {
                let dist = rand_distr::Uniform::new(lo as f32, up as f32);
                (0..n).map(|_| dist.sample(&mut *rng)).collect()
            }
            Init::Randn { mean, stdev } => {
                let dist = rand_distr::Normal::new(mean as f32, stdev as f32).map_err(|e| {
                    candle_core::Error::Msg(format!("{name}: bad initialisation ({e})"))
                })?;
                (0..n).map(|_| dist.sample(&mut *rng)).collect()
            }
            Init::Kaiming { .. } => {
                return Err(candle_core::Error::Msg(format!(
                    "{name}: gfer's layers give explicit Randn/Uniform/Const hints, not Kaiming"
                )))
            }
        };
        Ok(values)
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(tensor) = self.given.get(name) {
            if tensor.shape() != &shape {
                return Err(candle_core::Error::Msg(format!(
                    "{name}: given tensor has shape {:?}, the model needs {:?}",
                    tensor.dims(),
                    shape.dims()
                )));
            }
            return tensor.to_device(device)?.to_dtype(dtype);
        }
        let values = self.draw(&shape, name, init)?;
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.given.get(name) {
            Some(tensor) => tensor.to_device(device)?.to_dtype(dtype),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.given.contains_key(name)
    }
}

/// A model parameter: fetched (or initialised) through `vb` and held as a [`Var`] so it
/// can be trained. A tensor that is already a variable (from a `VarMap`) is shared.
pub(crate) fn get_var(
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    init: Init,
) -> Result<NamedVar> {
    let tensor = vb.get_with_hints(shape, name, init)?;
    let full_name = match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    };
    Ok((full_name, Var::from_tensor(&tensor)?))
}

/// PyTorch's `nn.Linear` default: weight and bias uniform in +-1/sqrt(fan_in).
pub(crate) fn linear_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A fully connected layer `y = x W^T + b` with PyTorch's default initialisation.
#[derive(Clone)]
pub struct Linear {
    pub weight: NamedVar,
    pub bias: NamedVar,
}

impl Linear {
    pub fn new(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: get_var(vb, (out_dim, in_dim), "weight", linear_init(in_dim))?,
            bias: get_var(vb, out_dim, "bias", linear_init(in_dim))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.1.as_tensor();
        Ok(x.matmul(&w.t()?)?.broadcast_add(self.bias.1.as_tensor())?)
    }

    pub fn vars(&self) -> Vec<NamedVar> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_tensors_and_given_ones_are_kept() -> Result<()> {
        let device = Device::Cpu;
        let given = HashMap::from([("b".to_string(), Tensor::new(&[1f32, 2.], &device)?)]);
        let draw = |seed| -> Result<(Tensor, Tensor)> {
            let vb = init_var_builder(given.clone(), seed, &device);
            let a = vb.get_with_hints(
                5,
                "a",
                Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            )?;
            let b = vb.get_with_hints(2, "b", Init::Const(0.))?;
            Ok((a, b))
        };
        let (a1, b1) = draw(7)?;
        let (a2, _) = draw(7)?;
        let (a3, _) = draw(8)?;
        assert_eq!(a1.to_vec1::<f32>()?, a2.to_vec1::<f32>()?);
        assert_ne!(a1.to_vec1::<f32>()?, a3.to_vec1::<f32>()?);
        assert_eq!(b1.to_vec1::<f32>()?, [1., 2.]);
        let vb = init_var_builder(given, 7, &device);
        assert!(vb.get_with_hints(3, "b", Init::Const(0.)).is_err());
        Ok(())
    }
}
