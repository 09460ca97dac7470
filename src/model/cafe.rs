//! The CAFE model (method.md): a frozen feature `F` [B,D], a mask `sigmoid(g)` from a
//! trainable mask generator, the selected feature `F * mask`, an FC to the classes. In
//! training, a separation branch adds two losses on per-class channel groups.
//!
//! The head ([`CafeHead`]) takes `(features, mask_logits)`: the authors' ResNet-18
//! generator ([`ResnetGenerator`]) or fast mode's MLP (`classifier`) can feed it.

use super::resnet::{ResNet18, RESNET18_WIDTHS};
use super::{Linear, NamedVar};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// What the CAFE model is; the defaults are the authors' code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CafeConfig {
    /// Width D of the frozen feature (512 for CLIP ViT-B/32).
    pub feature_dim: usize,
    /// Number of classes L (7).
    pub classes: usize,
    /// Weight of the separation loss (1.5).
    pub lambda: f64,
    /// Weight of the channel-diverse loss (5).
    pub beta: f64,
    /// Channels zeroed per class block by the drop vector (10).
    pub drop_per_group: usize,
    /// The paper's diverse loss `1 - sum(P) / (B c)` instead of the code's `1 - mean(P) / c`.
    pub paper_div: bool,
    /// Classify by the group maxima of `F * mask` instead of the FC.
    pub group_max_inference: bool,
    /// Multiply the feature by `sigmoid(g)` (the method); `false` multiplies by `g` itself
    /// (the paper's "no sigmoid" ablation).
    #[serde(default = "default_true")]
    pub sigmoid_mask: bool,
    /// Leave out the last ReLU of the ResNet so the mask spans (0, 1) instead of [0.5, 1).
    ///
    /// In the authors' code the trunk ends with `relu(x + shortcut)` of layer4's last
    /// block, so its global average is >= 0 and `sigmoid` can at most halve a channel; the
    /// paper writes the mask as a plain sigmoid of the generator's output, which reads as
    /// the full (0, 1). Removing that one ReLU is the smallest change that lets the pooled
    /// value go negative: every weight keeps its meaning (an MS-Celeb start still fits)
    /// and nothing is added that the published model lacks. With a mask projection
    /// (D != trunk width) the mask is unrestricted anyway, as the linear layer can go
    /// negative.
    pub unrestricted_mask: bool,
    /// Stage widths of the ResNet-18 mask generator (64, 128, 256, 512).
    pub trunk_widths: [usize; 4],
}

impl Default for CafeConfig {
    fn default() -> Self {
        Self {
            feature_dim: 512,
            classes: 7,
            lambda: 1.5,
            beta: 5.0,
            drop_per_group: 10,
            paper_div: false,
            sigmoid_mask: true,
            group_max_inference: false,
            unrestricted_mask: false,
            trunk_widths: RESNET18_WIDTHS,
        }
    }
}

fn default_true() -> bool {
    true
}

impl CafeConfig {
    /// Channels per class group, c = floor(D / L); the remaining channels join no group.
    pub fn group(&self) -> usize {
        self.feature_dim / self.classes.max(1)
    }

    /// The same configuration for a feature of width `dim`. The channels dropped per
    /// group keep the authors' share (10 of 73), rounded, at least one.
    pub fn with_feature_dim(&self, dim: usize) -> CafeConfig {
        let mut cfg = self.clone();
        cfg.feature_dim = dim;
        if dim != self.feature_dim {
            let group = dim / self.classes.max(1);
            let share = self.drop_per_group as f64 / self.group().max(1) as f64;
            cfg.drop_per_group =
                ((group as f64 * share).round() as usize).clamp(1, group.saturating_sub(1).max(1));
        }
        cfg
    }

    pub fn validate(&self) -> Result<()> {
        if self.classes < 2 {
            return Err(Error::config(format!(
                "CAFE needs at least 2 classes, got {}",
                self.classes
            )));
        }
        if self.group() == 0 {
            return Err(Error::config(format!(
                "feature width {} is smaller than the {} classes: no channel group is left per class",
                self.feature_dim, self.classes
            )));
        }
        if self.drop_per_group >= self.group() {
            return Err(Error::config(format!(
                "dropping {} channels per group leaves none of the {} in a group",
                self.drop_per_group,
                self.group()
            )));
        }
        if !self.lambda.is_finite() || !self.beta.is_finite() {
            return Err(Error::config(format!(
                "loss weights must be finite (lambda {}, beta {})",
                self.lambda, self.beta
            )));
        }
        Ok(())
    }
}

/// The channel-drop vector of one training step, shared by the whole batch: `classes`
/// blocks of c = floor(dim / classes) channels, the last block running to the end (74
/// long for 512/7), `drop_per_group` zeros in each block, each block shuffled on its own.
pub fn drop_vector(
    dim: usize,
    classes: usize,
    drop_per_group: usize,
    rng: &mut impl rand::Rng,
) -> Result<Vec<f32>> {
    let group = dim.checked_div(classes).unwrap_or(0);
    if group == 0 || drop_per_group > group {
        return Err(Error::config(format!(
            "cannot drop {drop_per_group} of each of {classes} groups in {dim} channels"
        )));
    }
    let mut drop = Vec::with_capacity(dim);
    for block in 0..classes {
        let length = if block + 1 == classes {
            dim - group * block
        } else {
            group
        };
        let mut values: Vec<f32> = (0..length)
            .map(|i| {
                if i < length - drop_per_group {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        values.shuffle(rng);
        drop.extend(values);
    }
    Ok(drop)
}

/// The losses of one training step (scalars) and the FC logits `[B,L]`.
pub struct CafeLosses {
    pub logits: Tensor,
    pub loss_cls: Tensor,
    pub loss_sep: Tensor,
    pub loss_div: Tensor,
    /// `loss_cls + beta loss_div + lambda loss_sep`.
    pub loss: Tensor,
}

/// The CAFE head: the mask, the selected feature, the FC, and the separation branch.
pub struct CafeHead {
    fc: Linear,
    cfg: CafeConfig,
}

impl CafeHead {
    pub fn new(vb: &VarBuilder, cfg: &CafeConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            fc: Linear::new(&vb.pp("fc"), cfg.feature_dim, cfg.classes)?,
            cfg: cfg.clone(),
        })
    }

    /// `F * sigmoid(mask_logits)` (or `F * mask_logits` without the sigmoid), both `[B,D]`.
    pub fn selected(&self, features: &Tensor, mask_logits: &Tensor) -> Result<Tensor> {
        let d = self.cfg.feature_dim;
        if features.dims() != mask_logits.dims() || features.dims().get(1) != Some(&d) {
            return Err(Error::config(format!(
                "features {:?} and mask {:?} must both be [B,{d}]",
                features.dims(),
                mask_logits.dims()
            )));
        }
        if self.cfg.sigmoid_mask {
            Ok((features * candle_nn::ops::sigmoid(mask_logits)?)?)
        } else {
            Ok((features * mask_logits)?)
        }
    }

    /// The classifier's logits `[B,L]`: the FC on the selected feature, or with
    /// `group_max_inference` the group maxima.
    pub fn logits(&self, features: &Tensor, mask_logits: &Tensor) -> Result<Tensor> {
        let selected = self.selected(features, mask_logits)?;
        if self.cfg.group_max_inference {
            self.group_max(&selected)
        } else {
            self.fc.forward(&selected)
        }
    }

    /// The training losses: cross-entropy of the FC logits, the separation loss (cross-
    /// entropy of the group maxima after the channel drop `drop` [D]), and the diverse
    /// loss on the group maxima.
    pub fn train_losses(
        &self,
        features: &Tensor,
        mask_logits: &Tensor,
        labels: &Tensor,
        drop: &Tensor,
    ) -> Result<CafeLosses> {
        let d = self.cfg.feature_dim;
        if drop.dims() != [d] {
            return Err(Error::config(format!(
                "drop vector {:?}, expected [{d}]",
                drop.dims()
            )));
        }
        let labels = labels.to_dtype(DType::U32)?;
        let selected = self.selected(features, mask_logits)?;
        let logits = self.fc.forward(&selected)?;
        let loss_cls = candle_nn::loss::cross_entropy(&logits, &labels)?;

        let group_max = self.group_max(&selected)?;
        let c = self.cfg.group() as f64;
        let loss_div = if self.cfg.paper_div {
            let batch = selected.dim(0)? as f64;
            (1.0 - (group_max.sum_all()? / (batch * c))?)?
        } else {
            (1.0 - (group_max.mean_all()? / c)?)?
        };
        let dropped = selected.broadcast_mul(&drop.to_dtype(selected.dtype())?)?;
        let loss_sep = candle_nn::loss::cross_entropy(&self.group_max(&dropped)?, &labels)?;
        // The authors' order of summation.
        let loss = ((&loss_cls + (&loss_div * self.cfg.beta)?)? + (&loss_sep * self.cfg.lambda)?)?;
        Ok(CafeLosses {
            logits,
            loss_cls,
            loss_sep,
            loss_div,
            loss,
        })
    }

    /// P[b,j] = max over channels [jc, jc + c) of x[b,:].
    fn group_max(&self, x: &Tensor) -> Result<Tensor> {
        let (l, c) = (self.cfg.classes, self.cfg.group());
        let b = x.dim(0)?;
        Ok(x.narrow(1, 0, l * c)?.reshape((b, l, c))?.max(2)?)
    }

    pub fn vars(&self) -> Vec<NamedVar> {
        self.fc.vars()
    }

    pub fn fc(&self) -> &Linear {
        &self.fc
    }

    pub fn config(&self) -> &CafeConfig {
        &self.cfg
    }
}

/// The authors' mask generator: a ResNet-18 on the image, globally average-pooled, giving
/// the mask logits `g` [B,D] (the mask is `sigmoid(g)`), with a linear `trunk width -> D`
/// after it when the widths differ (an extension).
pub struct ResnetGenerator {
    trunk: ResNet18,
    projection: Option<Linear>,
    final_relu: bool,
}

impl ResnetGenerator {
    /// Tensor names: the ResNet under torchvision names at the root of `vb`, `mask_proj.*`
    /// when D differs from the trunk width.
    pub fn new(vb: &VarBuilder, cfg: &CafeConfig) -> Result<Self> {
        let trunk = ResNet18::new(vb, cfg.trunk_widths)?;
        let projection = if trunk.out_dim() != cfg.feature_dim {
            Some(Linear::new(
                &vb.pp("mask_proj"),
                trunk.out_dim(),
                cfg.feature_dim,
            )?)
        } else {
            None
        };
        Ok(ResnetGenerator {
            trunk,
            projection,
            final_relu: !cfg.unrestricted_mask,
        })
    }

    /// `train` selects BatchNorm batch statistics (and updates the running ones).
    pub fn mask_logits(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self.trunk.forward_t(images, train, self.final_relu)?;
        match &self.projection {
            Some(p) => p.forward(&pooled),
            None => Ok(pooled),
        }
    }

    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        let mut vars = self.trunk.trainable_vars();
        vars.extend(self.projection.iter().flat_map(|p| p.vars()));
        vars
    }

    pub fn buffers(&self) -> Vec<NamedVar> {
        self.trunk.buffers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_var_builder;
    use candle_core::Device;
    use rand::SeedableRng;
    use std::collections::HashMap;

    #[test]
    fn drop_vector_has_the_authors_block_layout() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3407);
        let drop = drop_vector(512, 7, 10, &mut rng)?;
        assert_eq!(drop.len(), 512);
        for block in 0..7 {
            let end = if block == 6 { 512 } else { 73 * (block + 1) };
            let zeros = drop[73 * block..end].iter().filter(|&&v| v == 0.0).count();
            assert_eq!(zeros, 10, "block {block}");
        }
        assert!(drop.iter().all(|&v| v == 0.0 || v == 1.0));
        // Shuffled independently: the blocks do not all share one pattern.
        assert_ne!(drop[..73], drop[73..146]);
        let again = drop_vector(
            512,
            7,
            10,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3407),
        )?;
        assert_eq!(drop, again);
        assert!(drop_vector(20, 7, 3, &mut rng).is_err());
        Ok(())
    }

    #[test]
    fn config_refuses_groups_that_cannot_exist() {
        let bad = |f: fn(&mut CafeConfig)| {
            let mut cfg = CafeConfig::default();
            f(&mut cfg);
            cfg.validate().is_err()
        };
        assert!(CafeConfig::default().validate().is_ok());
        assert_eq!(CafeConfig::default().group(), 73);
        assert!(bad(|c| c.feature_dim = 6));
        assert!(bad(|c| c.classes = 1));
        assert!(bad(|c| c.drop_per_group = 73));
        assert!(bad(|c| c.beta = f64::NAN));
    }

    /// CAFE's ResNet-18 generator and head, initialised as a new model is.
    fn tiny(cfg: &CafeConfig, seed: u64) -> Result<(ResnetGenerator, CafeHead)> {
        let vb = init_var_builder(HashMap::new(), seed, &Device::Cpu);
        Ok((ResnetGenerator::new(&vb, cfg)?, CafeHead::new(&vb, cfg)?))
    }

    fn mask_of(generator: &ResnetGenerator, images: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(
            &generator.mask_logits(images, false)?,
        )?)
    }

    fn batch(cfg: &CafeConfig) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let device = Device::Cpu;
        let images = Tensor::randn(0f32, 1., (3, 3, 64, 64), &device)?;
        let features = Tensor::randn(0f32, 0.5, (3, cfg.feature_dim), &device)?;
        let labels = Tensor::new(&[0u32, 3, 6], &device)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let drop = drop_vector(cfg.feature_dim, cfg.classes, cfg.drop_per_group, &mut rng)?;
        Ok((images, features, labels, Tensor::new(drop, &device)?))
    }

    fn small() -> CafeConfig {
        CafeConfig {
            trunk_widths: [2, 4, 8, 16],
            ..CafeConfig::default()
        }
    }

    #[test]
    fn the_restricted_mask_lies_in_half_to_one_and_the_unrestricted_one_goes_below() -> Result<()> {
        let cfg = small();
        let (images, ..) = batch(&cfg)?;
        // Without a projection, the mask is sigmoid of a ReLU output.
        let plain = CafeConfig {
            trunk_widths: [2, 4, 8, 512],
            ..CafeConfig::default()
        };
        let mask = mask_of(&tiny(&plain, 1)?.0, &images)?;
        assert!(mask.min_all()?.to_scalar::<f32>()? >= 0.5);
        let unrestricted = CafeConfig {
            unrestricted_mask: true,
            ..plain
        };
        let mask = mask_of(&tiny(&unrestricted, 1)?.0, &images)?;
        assert!(mask.min_all()?.to_scalar::<f32>()? < 0.5);
        Ok(())
    }

    #[test]
    fn paper_div_is_seven_times_the_coded_term_and_group_max_inference_uses_the_groups(
    ) -> Result<()> {
        let cfg = small();
        let (images, features, labels, drop) = batch(&cfg)?;
        let losses = |cfg: &CafeConfig| -> Result<CafeLosses> {
            let (generator, head) = tiny(cfg, 2)?;
            head.train_losses(
                &features,
                &generator.mask_logits(&images, true)?,
                &labels,
                &drop,
            )
        };
        let coded = losses(&cfg)?;
        let paper_cfg = CafeConfig {
            paper_div: true,
            ..cfg.clone()
        };
        let paper = losses(&paper_cfg)?;
        let coded_term = 1.0 - coded.loss_div.to_scalar::<f32>()?;
        let paper_term = 1.0 - paper.loss_div.to_scalar::<f32>()?;
        assert!((paper_term / coded_term - 7.0).abs() < 1e-4);

        let group_cfg = CafeConfig {
            group_max_inference: true,
            ..cfg.clone()
        };
        let (generator, head) = tiny(&group_cfg, 2)?;
        let logits = head.logits(&features, &generator.mask_logits(&images, false)?)?;
        assert_eq!(logits.dims(), [3, 7]);
        let selected = (&features * mask_of(&generator, &images)?)?;
        let first_group = selected.narrow(1, 0, 73)?.max(1)?;
        let diff = (logits.narrow(1, 0, 1)?.squeeze(1)? - first_group)?
            .abs()?
            .max_all()?;
        assert!(diff.to_scalar::<f32>()? < 1e-6);
        Ok(())
    }

    #[test]
    fn other_widths_and_class_counts_build_and_train() -> Result<()> {
        let cfg = CafeConfig {
            feature_dim: 100,
            classes: 8,
            drop_per_group: 3,
            ..small()
        };
        assert_eq!(cfg.group(), 12);
        let (images, features, _, drop) = batch(&cfg)?;
        let labels = Tensor::new(&[0u32, 7, 2], &Device::Cpu)?;
        let (generator, head) = tiny(&cfg, 4)?;
        let vars: Vec<NamedVar> = generator
            .trainable_vars()
            .into_iter()
            .chain(head.vars())
            .collect();
        assert!(vars.iter().any(|(n, _)| n == "mask_proj.weight"));
        let losses = head.train_losses(
            &features,
            &generator.mask_logits(&images, true)?,
            &labels,
            &drop,
        )?;
        assert_eq!(losses.logits.dims(), [3, 8]);
        let grads = losses.loss.backward()?;
        for (name, var) in vars {
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "no gradient for {name}"
            );
        }
        Ok(())
    }
}
