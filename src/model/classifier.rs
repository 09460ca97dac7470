//! Every method gfer trains, as one model type: a mask generator (or none), a head, and a
//! [`ModelSpec`] that the bundle records so `eval`, `predict` and `serve` rebuild exactly
//! the trained model.
//!
//! | method | generator output g | classifier input | extra losses |
//! |---|---|---|---|
//! | cafe (and its loss ablations) | mask logits | F * sigmoid(g) | separation, diverse |
//! | cafe-no-sigmoid | mask | F * g | separation, diverse |
//! | cafe-no-mask | none | F | separation, diverse |
//! | linear-probe | none | F | none |
//! | concat | pooled ResNet feature | [F, g] | none |
//! | resnet | pooled ResNet feature | g (no frozen encoder) | none |

use crate::backbone::Encoder;
use crate::error::{Error, Result};
use crate::image::Preset;
use crate::model::batch::{model_tensors, Batch, HostLayers, Trainable};
use crate::model::{
    CafeConfig, CafeHead, CafeLosses, FrozenResnet, Linear, NamedVar, ResnetGenerator,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// CAFE as the authors run it.
    Cafe,
    /// CAFE without the separation loss (lambda = 0).
    CafeNoSep,
    /// CAFE without the diverse loss (beta = 0).
    CafeNoDiv,
    /// CAFE without either extra loss: the sigmoid mask alone.
    CafeMaskOnly,
    /// CAFE with the mask used as it is, without the sigmoid.
    CafeNoSigmoid,
    /// CAFE's head and losses on the frozen feature with no mask at all.
    CafeNoMask,
    /// A linear classifier on the frozen feature.
    LinearProbe,
    /// A linear classifier on the frozen feature concatenated with the ResNet-18 feature.
    Concat,
    /// The plain ResNet-18 classifier, no frozen encoder.
    Resnet,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Cafe => "cafe",
            Method::CafeNoSep => "cafe-no-sep",
            Method::CafeNoDiv => "cafe-no-div",
            Method::CafeMaskOnly => "cafe-mask-only",
            Method::CafeNoSigmoid => "cafe-no-sigmoid",
            Method::CafeNoMask => "cafe-no-mask",
            Method::LinearProbe => "linear-probe",
            Method::Concat => "concat",
            Method::Resnet => "resnet",
        }
    }

    /// Whether the method trains with the separation branch.
    pub fn is_cafe(self) -> bool {
        matches!(
            self,
            Method::Cafe
                | Method::CafeNoSep
                | Method::CafeNoDiv
                | Method::CafeMaskOnly
                | Method::CafeNoSigmoid
                | Method::CafeNoMask
        )
    }

    pub fn uses_frozen_features(self) -> bool {
        self != Method::Resnet
    }

    pub fn uses_generator(self) -> bool {
        !matches!(self, Method::LinearProbe | Method::CafeNoMask)
    }
}

/// The input name of an MLP generator that reads the frozen feature itself.
pub const FROZEN_FEATURE: &str = "frozen-feature";
/// The input name of an MLP generator on the pooled output of a frozen ResNet-18, whose
/// tensors the model keeps under [`FrozenResnet::PREFIX`].
pub const FROZEN_RESNET18: &str = "frozen-resnet18";
/// The input name (before `:LAYER`) of an MLP generator on the mean patch token of an
/// encoder block.
pub const ENCODER_TOKENS: &str = "encoder-tokens";

/// What fast mode's MLP mask generator reads: the `input` of [`GeneratorSpec::Mlp`] (as
/// [`MaskInput::spec_name`]), chosen with `gfer train --fast --generator` (as
/// [`MaskInput::flag`]: `feature`, `resnet18`, `tokens:LAYER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MaskInput {
    /// The frozen feature F itself.
    #[default]
    Feature,
    /// The pooled 512-d output of a frozen ResNet-18 (eval-mode BatchNorm, global average
    /// after the last ReLU) on the same image, ImageNet-normalised.
    Resnet18,
    /// The mean of the patch tokens output by encoder block LAYER (counted from 1).
    Tokens(usize),
}

impl MaskInput {
    /// The name recorded in the model description (`frozen-feature`, `frozen-resnet18`,
    /// `encoder-tokens:LAYER`).
    pub fn spec_name(self) -> String {
        match self {
            MaskInput::Feature => FROZEN_FEATURE.to_string(),
            MaskInput::Resnet18 => FROZEN_RESNET18.to_string(),
            MaskInput::Tokens(layer) => format!("{ENCODER_TOKENS}:{layer}"),
        }
    }

    pub fn from_spec_name(name: &str) -> Result<Self> {
        let unknown = || {
            Error::config(format!(
                "unknown mask generator input '{name}' (this gfer knows {FROZEN_FEATURE}, \
                 {FROZEN_RESNET18} and {ENCODER_TOKENS}:LAYER); a newer gfer may have written it"
            ))
        };
        match name {
            FROZEN_FEATURE => Ok(MaskInput::Feature),
            FROZEN_RESNET18 => Ok(MaskInput::Resnet18),
            _ => match name.split_once(':') {
                Some((ENCODER_TOKENS, layer)) => {
                    layer.parse().map(MaskInput::Tokens).map_err(|_| unknown())
                }
                _ => Err(unknown()),
            },
        }
    }

    /// The `--generator` spelling: `feature`, `resnet18`, `tokens:LAYER`.
    pub fn flag(self) -> String {
        match self {
            MaskInput::Feature => "feature".to_string(),
            MaskInput::Resnet18 => "resnet18".to_string(),
            MaskInput::Tokens(layer) => format!("tokens:{layer}"),
        }
    }

    /// Hidden widths of the MLP when `--mlp-hidden` is not given: one linear layer on the
    /// ResNet feature (the "trainable linear layer"), one hidden layer of 512 on
    /// the encoder's feature or tokens.
    pub fn default_hidden(self) -> Vec<usize> {
        match self {
            MaskInput::Resnet18 => Vec::new(),
            MaskInput::Feature | MaskInput::Tokens(_) => vec![128],
        }
    }
}

impl std::fmt::Display for MaskInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.flag())
    }
}

impl std::str::FromStr for MaskInput {
    type Err = String;

    /// `feature`, `resnet18` or `tokens:LAYER` (LAYER from 1).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "feature" => Ok(MaskInput::Feature),
            "resnet18" => Ok(MaskInput::Resnet18),
            _ => match s.split_once(':') {
                Some(("tokens", layer)) => match layer.parse::<usize>() {
                    Ok(layer) if layer > 0 => Ok(MaskInput::Tokens(layer)),
                    _ => Err(format!(
                        "'{s}': the block of tokens:LAYER is a number from 1"
                    )),
                },
                _ => Err(format!(
                    "'{s}' is not a mask generator: use feature, resnet18 or tokens:LAYER"
                )),
            },
        }
    }
}

impl Serialize for MaskInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.flag())
    }
}

impl<'de> Deserialize<'de> for MaskInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What produces g.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GeneratorSpec {
    /// The authors' ResNet-18 on the image (the full recipe).
    Resnet { widths: [usize; 4] },
    /// Fast mode: an MLP on a cached input of width `input_dim` (the frozen feature, the
    /// pooled feature of a frozen ResNet-18, or the mean patch token of an encoder layer);
    /// `hidden` empty makes it one linear layer.
    Mlp {
        input: String,
        input_dim: usize,
        hidden: Vec<usize>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub method: Method,
    /// Feature width, classes, loss weights and head options (the loss weights already
    /// reflect the method's ablation).
    pub cafe: CafeConfig,
    pub generator: Option<GeneratorSpec>,
}

impl ModelSpec {
    /// The spec of `method` on features of width `feature_dim` with `generator`; the
    /// method's ablation overrides the loss weights of `cafe`.
    pub fn new(method: Method, mut cafe: CafeConfig, generator: GeneratorSpec) -> Self {
        match method {
            Method::CafeNoSep => cafe.lambda = 0.0,
            Method::CafeNoDiv => cafe.beta = 0.0,
            Method::CafeMaskOnly => {
                cafe.lambda = 0.0;
                cafe.beta = 0.0
            }
            // Without a generator the head multiplies by a mask of ones.
            Method::CafeNoSigmoid | Method::CafeNoMask => cafe.sigmoid_mask = false,
            _ => {}
        }
        ModelSpec {
            method,
            cafe,
            generator: method.uses_generator().then_some(generator),
        }
    }

    /// Width of the generator's output g.
    fn generator_out(&self) -> usize {
        match (&self.generator, self.method) {
            (Some(GeneratorSpec::Resnet { widths }), Method::Concat | Method::Resnet) => widths[3],
            _ => self.cafe.feature_dim,
        }
    }
}

enum Generator {
    Resnet(ResnetGenerator),
    Mlp {
        layers: Vec<Linear>,
        final_relu: bool,
    },
}

impl Generator {
    fn output(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        match self {
            Generator::Resnet(net) => net.mask_logits(required(&batch.images, "images")?, train),
            Generator::Mlp { layers, final_relu } => {
                let mut x = required(&batch.mask_input, "mask generator input")?.clone();
                for (i, layer) in layers.iter().enumerate() {
                    x = layer.forward(&x)?;
                    if i + 1 < layers.len() || *final_relu {
                        x = x.relu()?;
                    }
                }
                Ok(x)
            }
        }
    }

    fn vars(&self) -> Vec<NamedVar> {
        match self {
            Generator::Resnet(net) => net.trainable_vars(),
            Generator::Mlp { layers, .. } => layers.iter().flat_map(|l| l.vars()).collect(),
        }
    }

    fn buffers(&self) -> Vec<NamedVar> {
        match self {
            Generator::Resnet(net) => net.buffers(),
            Generator::Mlp { .. } => Vec::new(),
        }
    }
}

enum Head {
    Cafe(CafeHead),
    Fc(Linear),
}

/// A trainable, saveable model of any [`Method`].
pub struct Classifier {
    pub spec: ModelSpec,
    generator: Option<Generator>,
    /// What an MLP generator reads; `None` for the other generators and for none.
    mask_input: Option<MaskInput>,
    /// The frozen ResNet-18 of a `frozen-resnet18` MLP generator.
    frozen_resnet: Option<FrozenResnet>,
    head: Head,
}

fn required<'a>(t: &'a Option<Tensor>, what: &str) -> Result<&'a Tensor> {
    t.as_ref()
        .ok_or_else(|| Error::config(format!("this model needs {what}, which the batch lacks")))
}

impl Classifier {
    /// Builds the model; tensors present in `vb`'s source (a checkpoint, a bundle) are
    /// used, the rest initialised.
    pub fn new(vb: VarBuilder, spec: &ModelSpec) -> Result<Self> {
        let mut mask_input = None;
        let mut frozen_resnet = None;
        let generator = match &spec.generator {
            None => None,
            Some(GeneratorSpec::Resnet { widths }) => {
                let mut cfg = spec.cafe.clone();
                cfg.trunk_widths = *widths;
                if !spec.method.is_cafe() {
                    // Concat and the plain ResNet use the pooled trunk as it is.
                    cfg.feature_dim = widths[3];
                }
                Some(Generator::Resnet(ResnetGenerator::new(&vb, &cfg)?))
            }
            Some(GeneratorSpec::Mlp {
                input,
                input_dim,
                hidden,
            }) => {
                // An input this gfer cannot compute can still be trained on when the
                // batches carry it; inference refuses it (see `inference_batch`).
                mask_input = MaskInput::from_spec_name(input).ok();
                if mask_input == Some(MaskInput::Resnet18) {
                    let net =
                        FrozenResnet::new(&vb.pp(FrozenResnet::PREFIX), spec.cafe.trunk_widths)?;
                    if net.dim() != *input_dim {
                        return Err(Error::config(format!(
                            "the frozen ResNet-18 gives {} values, the mask generator reads {input_dim}",
                            net.dim()
                        )));
                    }
                    frozen_resnet = Some(net);
                }
                let dims: Vec<usize> = std::iter::once(*input_dim)
                    .chain(hidden.iter().copied())
                    .chain(std::iter::once(spec.cafe.feature_dim))
                    .collect();
                let layers = dims
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| Linear::new(&vb.pp(format!("mask_mlp.{i}")), w[0], w[1]))
                    .collect::<Result<Vec<_>>>()?;
                Some(Generator::Mlp {
                    layers,
                    final_relu: !spec.cafe.unrestricted_mask,
                })
            }
        };
        let head = if spec.method.is_cafe() {
            Head::Cafe(CafeHead::new(&vb, &spec.cafe)?)
        } else {
            let in_dim = match spec.method {
                Method::LinearProbe => spec.cafe.feature_dim,
                Method::Concat => spec.cafe.feature_dim + spec.generator_out(),
                _ => spec.generator_out(),
            };
            Head::Fc(Linear::new(&vb.pp("fc"), in_dim, spec.cafe.classes)?)
        };
        Ok(Classifier {
            spec: spec.clone(),
            generator,
            mask_input,
            frozen_resnet,
            head,
        })
    }

    /// Rebuilds a model from saved tensors; every tensor must be there.
    pub fn from_tensors(
        spec: &ModelSpec,
        tensors: HashMap<String, Tensor>,
        origin: &str,
        device: &Device,
    ) -> Result<Self> {
        let expected = {
            let probe = Classifier::new(
                crate::model::init_var_builder(HashMap::new(), 0, device),
                spec,
            )?;
            model_tensors(&probe)?
        };
        let missing: Vec<String> = expected
            .iter()
            .filter(|(name, t)| {
                tensors
                    .get(*name)
                    .map(|s| s.dims() != t.dims())
                    .unwrap_or(true)
            })
            .map(|(name, t)| match tensors.get(name) {
                Some(s) => format!("{name}: shape {:?}, expected {:?}", s.dims(), t.dims()),
                None => format!("{name}: missing (expected {:?})", t.dims()),
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::Bundle {
                path: origin.to_string(),
                message: format!(
                    "tensors do not fit the recorded model: {}",
                    missing.join("; ")
                ),
            });
        }
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Classifier::new(crate::model::init_var_builder(tensors, 0, device), spec)
    }

    /// What the MLP mask generator reads (`None` without one, or when its recorded input
    /// is not one this gfer can compute).
    pub fn mask_input(&self) -> Option<MaskInput> {
        self.mask_input
    }

    /// The frozen ResNet-18 of a `resnet18` mask generator.
    pub fn frozen_resnet(&self) -> Option<&FrozenResnet> {
        self.frozen_resnet.as_ref()
    }

    /// The batch for classifying `[B,3,S,S]` images preprocessed with `preset`: runs the
    /// frozen encoder once (keeping a block's mean patch token when the mask generator
    /// reads it) and the frozen ResNet-18 when there is one, and fills in what the model
    /// reads. `encoder` may be `None` only for a model without frozen features.
    pub fn inference_batch(
        &self,
        images: Tensor,
        encoder: Option<&dyn Encoder>,
        preset: Preset,
    ) -> Result<Batch> {
        if let (None, Some(GeneratorSpec::Mlp { input, .. })) =
            (self.mask_input, &self.spec.generator)
        {
            MaskInput::from_spec_name(input)?;
        }
        let needs_encoder = self.spec.method.uses_frozen_features()
            || matches!(
                self.mask_input,
                Some(MaskInput::Feature | MaskInput::Tokens(_))
            );
        let (features, tokens) = match (encoder, needs_encoder) {
            (_, false) => (None, None),
            (Some(encoder), true) => match self.mask_input {
                Some(MaskInput::Tokens(layer)) => {
                    let (f, t) = encoder.encode_with_tokens(&images, layer)?;
                    (Some(f), Some(t))
                }
                _ => (Some(encoder.encode(&images)?), None),
            },
            (None, true) => {
                return Err(Error::config(
                    "this model reads frozen encoder features: pass the encoder",
                ))
            }
        };
        let mask_input = match self.mask_input {
            None => None,
            Some(MaskInput::Feature) => features.clone(),
            Some(MaskInput::Tokens(_)) => tokens,
            Some(MaskInput::Resnet18) => {
                let net = self
                    .frozen_resnet
                    .as_ref()
                    .ok_or_else(|| Error::config("the model's frozen ResNet-18 is missing"))?;
                Some(net.pooled(&images, preset)?)
            }
        };
        // Labels are unknown at inference; the logits never read them.
        let labels = Tensor::zeros(images.dim(0)?, DType::U32, images.device())?;
        Ok(Batch {
            images: Some(images),
            features,
            mask_input,
            labels,
        })
    }

    fn head_input(&self, batch: &Batch, train: bool) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let f = if self.spec.method.uses_frozen_features() {
            Some(required(&batch.features, "frozen features")?.detach())
        } else {
            None
        };
        let g = match (&self.generator, &f) {
            (Some(generator), _) => Some(generator.output(batch, train)?),
            (None, Some(f)) if self.spec.method == Method::CafeNoMask => Some(f.ones_like()?),
            (None, _) => None,
        };
        Ok((f, g))
    }

    fn fc_input(&self, f: Option<Tensor>, g: Option<Tensor>) -> Result<Tensor> {
        match (f, g) {
            (Some(f), Some(g)) => Ok(Tensor::cat(&[f, g], 1)?),
            (Some(x), None) | (None, Some(x)) => Ok(x),
            (None, None) => Err(Error::config(
                "the model has neither a frozen feature nor a generator",
            )),
        }
    }
}

impl Trainable for Classifier {
    fn train_losses(&self, batch: &Batch, drop: &Tensor) -> Result<CafeLosses> {
        let (f, g) = self.head_input(batch, true)?;
        match &self.head {
            Head::Cafe(head) => {
                let (f, g) = (required(&f, "frozen features")?, required(&g, "mask")?);
                head.train_losses(f, g, &batch.labels, drop)
            }
            Head::Fc(fc) => {
                let logits = fc.forward(&self.fc_input(f, g)?)?;
                let loss =
                    candle_nn::loss::cross_entropy(&logits, &batch.labels.to_dtype(DType::U32)?)?;
                let zero = loss.zeros_like()?;
                Ok(CafeLosses {
                    logits,
                    loss_cls: loss.clone(),
                    loss_sep: zero.clone(),
                    loss_div: zero,
                    loss,
                })
            }
        }
    }

    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let (f, g) = self.head_input(batch, false)?;
        match &self.head {
            Head::Cafe(head) => {
                head.logits(required(&f, "frozen features")?, required(&g, "mask")?)
            }
            Head::Fc(fc) => fc.forward(&self.fc_input(f, g)?),
        }
    }

    fn trainable_vars(&self) -> Vec<NamedVar> {
        let mut vars: Vec<NamedVar> = self.generator.iter().flat_map(|g| g.vars()).collect();
        vars.extend(match &self.head {
            Head::Cafe(head) => head.vars(),
            Head::Fc(fc) => fc.vars(),
        });
        vars
    }

    fn buffers(&self) -> Vec<NamedVar> {
        let mut buffers: Vec<NamedVar> = self.generator.iter().flat_map(|g| g.buffers()).collect();
        buffers.extend(self.frozen_resnet.iter().flat_map(|net| net.tensors()));
        buffers
    }

    fn feature_dim(&self) -> usize {
        self.spec.cafe.feature_dim
    }

    fn classes(&self) -> usize {
        self.spec.cafe.classes
    }

    fn drop_per_group(&self) -> usize {
        self.spec.cafe.drop_per_group
    }

    fn host_layers(&self) -> Option<HostLayers> {
        let (generator, final_relu) = match &self.generator {
            None => (Vec::new(), false),
            Some(Generator::Mlp { layers, final_relu }) => (layers.clone(), *final_relu),
            Some(Generator::Resnet(_)) => return None,
        };
        match &self.head {
            Head::Cafe(head) => Some(HostLayers {
                generator,
                final_relu,
                fc: head.fc().clone(),
                cafe: Some(head.config().clone()),
            }),
            Head::Fc(fc) if self.spec.method == Method::LinearProbe => Some(HostLayers {
                generator,
                final_relu,
                fc: fc.clone(),
                cafe: None,
            }),
            Head::Fc(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_var_builder;
    use candle_core::Device;
    use clap::ValueEnum;

    #[test]
    fn mask_inputs_parse_from_the_flag_and_the_recorded_name() {
        for (flag, name, input) in [
            ("feature", FROZEN_FEATURE, MaskInput::Feature),
            ("resnet18", FROZEN_RESNET18, MaskInput::Resnet18),
            ("tokens:6", "encoder-tokens:6", MaskInput::Tokens(6)),
        ] {
            assert_eq!(flag.parse::<MaskInput>(), Ok(input));
            assert_eq!(input.flag(), flag);
            assert_eq!(input.spec_name(), name);
            assert_eq!(MaskInput::from_spec_name(name).ok(), Some(input));
            let json = serde_json::to_string(&input).unwrap();
            assert_eq!(json, format!("\"{flag}\""));
            assert_eq!(serde_json::from_str::<MaskInput>(&json).unwrap(), input);
        }
        for bad in ["tokens:0", "tokens:x", "tokens", "resnet", "frozen-feature"] {
            assert!(bad.parse::<MaskInput>().is_err(), "{bad}");
        }
        assert!(MaskInput::from_spec_name("frozen-vgg").is_err());
        assert_eq!(MaskInput::Resnet18.default_hidden(), Vec::<usize>::new());
        assert_eq!(MaskInput::Tokens(3).default_hidden(), vec![128]);
    }

    /// The frozen ResNet is kept (a buffer: in the bundle, not in the optimiser) and gives
    /// the generator its input at inference.
    #[test]
    fn a_resnet18_generator_keeps_its_frozen_resnet_out_of_training() -> Result<()> {
        let device = Device::Cpu;
        let widths = [2, 4, 4, 8];
        let cafe = CafeConfig {
            trunk_widths: widths,
            ..CafeConfig::default()
        }
        .with_feature_dim(21);
        let spec = ModelSpec::new(
            Method::Cafe,
            cafe,
            GeneratorSpec::Mlp {
                input: FROZEN_RESNET18.to_string(),
                input_dim: 8,
                hidden: vec![],
            },
        );
        let model = Classifier::new(init_var_builder(HashMap::new(), 1, &device), &spec)?;
        assert_eq!(model.mask_input(), Some(MaskInput::Resnet18));
        let trained: Vec<String> = model.trainable_vars().into_iter().map(|(n, _)| n).collect();
        assert!(
            trained.iter().all(|n| !n.starts_with("frozen_resnet.")),
            "{trained:?}"
        );
        let kept: Vec<String> = model.buffers().into_iter().map(|(n, _)| n).collect();
        assert!(kept.contains(&"frozen_resnet.layer4.1.conv2.weight".to_string()));
        assert!(kept.contains(&"frozen_resnet.bn1.running_var".to_string()));
        let images = Tensor::randn(0f32, 1., (2, 3, 32, 32), &device)?;
        // F comes from the encoder, which must then be given.
        assert!(model
            .inference_batch(images.clone(), None, Preset::Cafe)
            .is_err());
        let net = model.frozen_resnet().expect("frozen");
        let pooled = net.pooled(&images, Preset::Cafe)?;
        assert_eq!(pooled.dims(), [2, 8]);
        // Pixels normalised with CLIP's statistics are mapped to ImageNet's first: the same
        // image gives the same pooled feature.
        let image = crate::image::RgbImage::from_fn(32, 32, |x, y| {
            ::image::Rgb([(x * 8) as u8, (y * 8) as u8, ((x + y) * 4) as u8])
        });
        let normalised = |preset| -> Result<Tensor> {
            let values = crate::image::Preprocess::new(preset, 32).normalise(&image);
            Ok(Tensor::from_vec(values, (1, 3, 32, 32), &device)?)
        };
        let cafe = net.pooled(&normalised(Preset::Cafe)?, Preset::Cafe)?;
        let clip = net.pooled(&normalised(Preset::Clip)?, Preset::Clip)?;
        let gap = (cafe.clone() - clip)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let scale = cafe.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(gap <= 1e-5 * scale.max(1.0), "{gap} of {scale}");
        let batch = Batch {
            images: None,
            features: Some(Tensor::randn(0f32, 1., (2, 21), &device)?),
            mask_input: Some(pooled),
            labels: Tensor::zeros(2, DType::U32, &device)?,
        };
        assert_eq!(model.logits(&batch)?.dims(), [2, 7]);
        // A spec whose input width does not fit the ResNet is refused.
        let mut wrong = spec.clone();
        if let Some(GeneratorSpec::Mlp { input_dim, .. }) = &mut wrong.generator {
            *input_dim = 9;
        }
        assert!(Classifier::new(init_var_builder(HashMap::new(), 1, &device), &wrong).is_err());
        // An input this gfer cannot compute trains when batches carry it, but inference
        // refuses it by name.
        let mut unknown = spec.clone();
        if let Some(GeneratorSpec::Mlp { input, .. }) = &mut unknown.generator {
            *input = "frozen-vgg".into();
        }
        let model = Classifier::new(init_var_builder(HashMap::new(), 1, &device), &unknown)?;
        assert_eq!(model.mask_input(), None);
        assert_eq!(model.logits(&batch)?.dims(), [2, 7]);
        let err = model
            .inference_batch(images, None, Preset::Cafe)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("frozen-vgg"), "{err}");
        Ok(())
    }

    /// Every method builds, trains one step and classifies with a frozen feature of width 21.
    #[test]
    fn every_method_trains_and_classifies() -> Result<()> {
        let device = Device::Cpu;
        let cafe = CafeConfig {
            trunk_widths: [2, 4, 4, 8],
            ..CafeConfig::default()
        }
        .with_feature_dim(21);
        let batch = Batch {
            images: Some(Tensor::randn(0f32, 1., (2, 3, 32, 32), &device)?),
            features: Some(Tensor::randn(0f32, 1., (2, 21), &device)?),
            mask_input: None,
            labels: Tensor::new(&[1u32, 4], &device)?,
        };
        let drop = Tensor::ones(21, DType::F32, &device)?;
        for &method in Method::value_variants() {
            let spec = ModelSpec::new(
                method,
                cafe.clone(),
                GeneratorSpec::Resnet {
                    widths: cafe.trunk_widths,
                },
            );
            let model = Classifier::new(init_var_builder(HashMap::new(), 1, &device), &spec)?;
            let losses = model.train_losses(&batch, &drop)?;
            assert!(
                losses.loss.to_scalar::<f32>()?.is_finite(),
                "{}",
                method.name()
            );
            assert_eq!(model.logits(&batch)?.dims(), [2, 7], "{}", method.name());
            assert_eq!(
                method.is_cafe(),
                losses.loss_sep.to_scalar::<f32>()? != 0.0
                    || method == Method::CafeNoSep
                    || method == Method::CafeMaskOnly,
                "{}",
                method.name()
            );
        }
        Ok(())
    }
}
