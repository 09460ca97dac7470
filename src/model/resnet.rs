//! ResNet-18 (torchvision layout and names, without its `fc`), trainable: the CAFE mask
//! generator. BatchNorm uses batch statistics and updates its running averages in
//! training (momentum 0.1, eps 1e-5, unbiased variance for the running average, as
//! PyTorch) and uses the running averages in evaluation.

use super::{get_var, NamedVar};
use crate::error::{Error, Result};
use crate::formats::pytorch::read_tensors;
use crate::kernels::{batch_norm_train, conv2d, max_pool2d, relu};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::path::Path;

/// torchvision's ResNet-18 stage widths.
pub const RESNET18_WIDTHS: [usize; 4] = [64, 128, 256, 512];

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// A 2-d convolution without bias, initialised as torchvision initialises ResNets
/// (Kaiming normal, fan-out, ReLU gain).
struct Conv2d {
    weight: NamedVar,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    fn new(
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let fan_out = out_channels * kernel * kernel;
        let init = Init::Randn {
            mean: 0.,
            stdev: (2.0 / fan_out as f64).sqrt(),
        };
        let weight = get_var(
            vb,
            (out_channels, in_channels, kernel, kernel),
            "weight",
            init,
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d(
            x,
            self.weight.1.as_tensor(),
            self.stride,
            self.padding,
        )?)
    }
}

/// `nn.BatchNorm2d` with affine parameters and running statistics.
struct BatchNorm2d {
    weight: NamedVar,
    bias: NamedVar,
    running_mean: NamedVar,
    running_var: NamedVar,
}

impl BatchNorm2d {
    fn new(vb: &VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: get_var(vb, channels, "weight", Init::Const(1.))?,
            bias: get_var(vb, channels, "bias", Init::Const(0.))?,
            running_mean: get_var(vb, channels, "running_mean", Init::Const(0.))?,
            running_var: get_var(vb, channels, "running_var", Init::Const(1.))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if !train {
            let per_channel = (1, c, 1, 1);
            let weight = self.weight.1.as_tensor().reshape(per_channel)?;
            let bias = self.bias.1.as_tensor().reshape(per_channel)?;
            let mean = self
                .running_mean
                .1
                .as_detached_tensor()
                .reshape(per_channel)?;
            let var = self
                .running_var
                .1
                .as_detached_tensor()
                .reshape(per_channel)?;
            let scale = (var + BN_EPS)?.sqrt()?.recip()?.mul(&weight)?;
            return Ok(x
                .broadcast_sub(&mean)?
                .broadcast_mul(&scale)?
                .broadcast_add(&bias)?);
        }
        let count = n * h * w;
        if count < 2 {
            return Err(Error::config(format!(
                "BatchNorm in training needs more than one value per channel, got input {:?}",
                x.dims()
            )));
        }
        let (y, mean, var) = batch_norm_train(
            x,
            self.weight.1.as_tensor(),
            self.bias.1.as_tensor(),
            BN_EPS,
        )?;
        self.update_running_stats(&mean, &var, count)?;
        Ok(y)
    }

    /// running = (1 - momentum) running + momentum batch, with the batch variance made
    /// unbiased (times n / (n - 1)) as PyTorch does.
    fn update_running_stats(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let unbiased = count as f64 / (count as f64 - 1.0);
        let (rm, rv) = (&self.running_mean.1, &self.running_var.1);
        let new_mean = ((rm.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let new_var =
            ((rv.as_tensor() * (1.0 - BN_MOMENTUM))? + (var * (BN_MOMENTUM * unbiased))?)?;
        rm.set(&new_mean)?;
        rv.set(&new_var)?;
        Ok(())
    }
}

/// torchvision's `BasicBlock`: two 3x3 convolutions with a residual connection.
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(vb: &VarBuilder, in_channels: usize, channels: usize, stride: usize) -> Result<Self> {
        let downsample = if stride != 1 || in_channels != channels {
            let vb = vb.pp("downsample");
            Some((
                Conv2d::new(&vb.pp("0"), in_channels, channels, 1, stride, 0)?,
                BatchNorm2d::new(&vb.pp("1"), channels)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv2d::new(&vb.pp("conv1"), in_channels, channels, 3, stride, 1)?,
            bn1: BatchNorm2d::new(&vb.pp("bn1"), channels)?,
            conv2: Conv2d::new(&vb.pp("conv2"), channels, channels, 3, 1, 1)?,
            bn2: BatchNorm2d::new(&vb.pp("bn2"), channels)?,
            downsample,
        })
    }

    /// `final_relu` false leaves out the ReLU after the residual sum.
    fn forward_t(&self, x: &Tensor, train: bool, final_relu: bool) -> Result<Tensor> {
        let y = relu(&self.bn1.forward_t(&self.conv1.forward(x)?, train)?)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        let sum = (y + shortcut)?;
        Ok(if final_relu { relu(&sum)? } else { sum })
    }

    fn batch_norms(&self) -> Vec<&BatchNorm2d> {
        let mut bns = vec![&self.bn1, &self.bn2];
        bns.extend(self.downsample.as_ref().map(|(_, bn)| bn));
        bns
    }

    fn convs(&self) -> Vec<&Conv2d> {
        let mut convs = vec![&self.conv1, &self.conv2];
        convs.extend(self.downsample.as_ref().map(|(conv, _)| conv));
        convs
    }
}

/// ResNet-18 trunk: conv 7x7/2 + BN + ReLU + max-pool 3x3/2, four stages of two
/// BasicBlocks, global average pooling. No classifier.
pub struct ResNet18 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    widths: [usize; 4],
}

impl ResNet18 {
    /// Stage widths other than [`RESNET18_WIDTHS`] make a narrower (or wider) network of
    /// the same shape, used by the small parity fixtures.
    pub fn new(vb: &VarBuilder, widths: [usize; 4]) -> Result<Self> {
        if widths.contains(&0) {
            return Err(Error::config(format!(
                "ResNet-18 stage widths must be positive, got {widths:?}"
            )));
        }
        let mut blocks = Vec::with_capacity(8);
        let mut in_channels = widths[0];
        for (stage, &channels) in widths.iter().enumerate() {
            let vb = vb.pp(format!("layer{}", stage + 1));
            let stride = if stage == 0 { 1 } else { 2 };
            blocks.push(BasicBlock::new(&vb.pp("0"), in_channels, channels, stride)?);
            blocks.push(BasicBlock::new(&vb.pp("1"), channels, channels, 1)?);
            in_channels = channels;
        }
        Ok(Self {
            conv1: Conv2d::new(&vb.pp("conv1"), 3, widths[0], 7, 2, 3)?,
            bn1: BatchNorm2d::new(&vb.pp("bn1"), widths[0])?,
            blocks,
            widths,
        })
    }

    /// Width of the pooled output.
    pub fn out_dim(&self) -> usize {
        self.widths[3]
    }

    /// `[B,3,H,W]` -> `[B,out_dim]`, the global average of the last stage. `train` selects
    /// batch statistics (and updates the running ones). `final_relu` false leaves out the
    /// very last ReLU, so the output can be negative (the unrestricted mask).
    pub fn forward_t(&self, x: &Tensor, train: bool, final_relu: bool) -> Result<Tensor> {
        let x = relu(&self.bn1.forward_t(&self.conv1.forward(x)?, train)?)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        let last = self.blocks.len() - 1;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_t(&x, train, final_relu || i != last)?;
        }
        Ok(x.mean((2, 3))?)
    }

    /// The trained tensors: convolution weights, BatchNorm weights and biases.
    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        let mut vars = vec![self.conv1.weight.clone()];
        vars.extend([self.bn1.weight.clone(), self.bn1.bias.clone()]);
        for block in &self.blocks {
            vars.extend(block.convs().into_iter().map(|c| c.weight.clone()));
            for bn in block.batch_norms() {
                vars.extend([bn.weight.clone(), bn.bias.clone()]);
            }
        }
        vars
    }

    /// The BatchNorm running statistics (updated by training-mode forwards, not trained).
    pub fn buffers(&self) -> Vec<NamedVar> {
        let bns =
            std::iter::once(&self.bn1).chain(self.blocks.iter().flat_map(|b| b.batch_norms()));
        bns.flat_map(|bn| [bn.running_mean.clone(), bn.running_var.clone()])
            .collect()
    }
}

/// A ResNet-18 trunk kept frozen: fast mode's `resnet18` mask generator reads its pooled
/// output (eval-mode BatchNorm, global average after the last ReLU), cached per view at
/// training time and computed from the image at inference. Its tensors live in the model
/// under [`FrozenResnet::PREFIX`] (so the bundle carries them) and are never trained.
pub struct FrozenResnet {
    net: ResNet18,
    fingerprint: String,
}

impl FrozenResnet {
    /// Where the tensors live in a model (and its bundle): `frozen_resnet.conv1.weight`, ...
    pub const PREFIX: &'static str = "frozen_resnet";

    /// Builds the trunk from `vb` (already under [`Self::PREFIX`]).
    pub fn new(vb: &VarBuilder, widths: [usize; 4]) -> Result<Self> {
        let net = ResNet18::new(vb, widths)?;
        let prefix = format!("{}.", Self::PREFIX);
        let named: Vec<(String, Tensor)> = net
            .trainable_vars()
            .into_iter()
            .chain(net.buffers())
            .map(|(name, var)| {
                let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
                (name, var.as_detached_tensor())
            })
            .collect();
        let fingerprint =
            crate::backbone::fingerprint_tensors(named.iter().map(|(n, t)| (n.as_str(), t)))?;
        Ok(Self { net, fingerprint })
    }

    /// Fingerprint of the weights (as for encoders: names, shapes and values), which keys
    /// the cached pooled features.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Width of the pooled output (512 for ResNet-18).
    pub fn dim(&self) -> usize {
        self.net.out_dim()
    }

    /// `[B,3,S,S]` pixels normalised with `preset` -> `[B,dim]` pooled features. The
    /// network expects ImageNet statistics (the `cafe` preset): pixels normalised
    /// otherwise are mapped to them first, channel by channel (exact, the same view).
    pub fn pooled(&self, pixels: &Tensor, preset: crate::image::Preset) -> Result<Tensor> {
        let pixels = pixels.to_dtype(DType::F32)?.detach();
        let pixels = if preset == crate::image::Preset::Cafe {
            pixels
        } else {
            let (mean, std) = preset.mean_std();
            let (imagenet_mean, imagenet_std) = crate::image::Preset::Cafe.mean_std();
            let scale: Vec<f32> = (0..3).map(|c| std[c] / imagenet_std[c]).collect();
            let shift: Vec<f32> = (0..3)
                .map(|c| (mean[c] - imagenet_mean[c]) / imagenet_std[c])
                .collect();
            let device = pixels.device();
            let scale = Tensor::from_vec(scale, (1, 3, 1, 1), device)?;
            let shift = Tensor::from_vec(shift, (1, 3, 1, 1), device)?;
            pixels.broadcast_mul(&scale)?.broadcast_add(&shift)?
        };
        Ok(self.net.forward_t(&pixels, false, true)?.detach())
    }

    /// The tensors, under their full names (kept in the model, not trained).
    pub fn tensors(&self) -> Vec<NamedVar> {
        self.net
            .trainable_vars()
            .into_iter()
            .chain(self.net.buffers())
            .collect()
    }
}

/// Every tensor name and shape of a ResNet-18 trunk with these widths, in torchvision
/// naming (no `fc`, no `num_batches_tracked`).
pub fn resnet18_layout(widths: [usize; 4]) -> Vec<(String, Vec<usize>)> {
    let mut layout = Vec::new();
    let mut conv_bn = |conv: String, bn: String, out: usize, inp: usize, kernel: usize| {
        layout.push((format!("{conv}.weight"), vec![out, inp, kernel, kernel]));
        for field in ["weight", "bias", "running_mean", "running_var"] {
            layout.push((format!("{bn}.{field}"), vec![out]));
        }
    };
    conv_bn("conv1".into(), "bn1".into(), widths[0], 3, 7);
    let mut in_channels = widths[0];
    for (stage, &channels) in widths.iter().enumerate() {
        for block in 0..2 {
            let p = format!("layer{}.{block}", stage + 1);
            let cin = if block == 0 { in_channels } else { channels };
            conv_bn(format!("{p}.conv1"), format!("{p}.bn1"), channels, cin, 3);
            conv_bn(
                format!("{p}.conv2"),
                format!("{p}.bn2"),
                channels,
                channels,
                3,
            );
            // Stages 2-4 start with stride 2, so their first block has a downsample.
            if block == 0 && stage > 0 {
                conv_bn(
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    channels,
                    cin,
                    1,
                );
            }
        }
        in_channels = channels;
    }
    layout
}

/// ResNet-18 tensors from a checkpoint in torchvision layout, ready to be `given` to
/// [`super::init_var_builder`]: the MS-Celeb `resnet18_msceleb.pth` (a PyTorch zip whose
/// `state_dict` holds names possibly prefixed `module.`), a plain torchvision state dict,
/// or a safetensors file with those names. The checkpoint's own classifier (`fc.*`) and the
/// `num_batches_tracked` counters are dropped; values become f32.
///
/// Every missing, unexpected and mis-shaped tensor is reported in one error, unless
/// `allow_partial`: then the tensors that fit are returned, the rest are logged, and the
/// model initialises what is missing.
pub fn load_checkpoint(
    path: &Path,
    widths: [usize; 4],
    allow_partial: bool,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let display = path.display().to_string();
    let mut found: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in read_tensors(path, None, device)? {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        found.insert(name, tensor);
    }
    let layout = resnet18_layout(widths);
    let mut problems = Vec::new();
    let mut tensors = HashMap::new();
    for (name, shape) in &layout {
        match found.remove(name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "mis-shaped {name}: {:?} in the file, {shape:?} expected",
                t.dims()
            )),
            Some(t) => {
                tensors.insert(name.clone(), t.to_dtype(DType::F32)?);
            }
        }
    }
    let mut unexpected: Vec<_> = found.into_iter().collect();
    unexpected.sort_by(|a, b| a.0.cmp(&b.0));
    problems.extend(
        unexpected
            .iter()
            .map(|(name, t)| format!("unexpected {name} {:?}", t.dims())),
    );
    if problems.is_empty() {
        return Ok(tensors);
    }
    if !allow_partial {
        return Err(Error::weights(
            &display,
            format!(
                "does not match a ResNet-18 with widths {widths:?} ({} problems; allow a partial load \
                 with --allow-partial to initialise the rest):\n  {}",
                problems.len(),
                problems.join("\n  ")
            ),
        ));
    }
    for problem in &problems {
        tracing::warn!("{}: {problem} (partial load allowed)", path.display());
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_var_builder;
    use std::collections::BTreeMap;

    fn small() -> [usize; 4] {
        [2, 4, 8, 16]
    }

    #[test]
    fn layout_lists_exactly_the_tensors_of_the_model() -> Result<()> {
        for widths in [small(), RESNET18_WIDTHS] {
            let vb = init_var_builder(HashMap::new(), 0, &Device::Cpu);
            let net = ResNet18::new(&vb, widths)?;
            let model: BTreeMap<String, Vec<usize>> = net
                .trainable_vars()
                .into_iter()
                .chain(net.buffers())
                .map(|(n, v)| (n, v.dims().to_vec()))
                .collect();
            let layout: BTreeMap<String, Vec<usize>> =
                resnet18_layout(widths).into_iter().collect();
            assert_eq!(model, layout);
        }
        let params: usize = resnet18_layout(RESNET18_WIDTHS)
            .iter()
            .filter(|(n, _)| !n.contains("running"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // 11,180,103 trained parameters in CAFE minus the 512x7 FC and its bias.
        assert_eq!(params, 11_180_103 - 512 * 7 - 7);
        Ok(())
    }

    #[test]
    fn default_init_follows_torchvision() -> Result<()> {
        let vb = init_var_builder(HashMap::new(), 3, &Device::Cpu);
        let net = ResNet18::new(&vb, RESNET18_WIDTHS)?;
        let vars: HashMap<String, _> = net
            .trainable_vars()
            .into_iter()
            .chain(net.buffers())
            .collect();
        // Kaiming normal, fan-out: std sqrt(2 / (512 * 3 * 3)) for layer4 convolutions.
        let w = vars["layer4.1.conv2.weight"].as_tensor();
        let std = w.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        let expected = (2.0f32 / (512.0 * 9.0)).sqrt();
        assert!(
            (std / expected - 1.0).abs() < 0.01,
            "std {std}, expected {expected}"
        );
        assert_eq!(
            vars["bn1.weight"].as_tensor().to_vec1::<f32>()?,
            vec![1.0; 64]
        );
        assert_eq!(
            vars["bn1.running_var"].as_tensor().to_vec1::<f32>()?,
            vec![1.0; 64]
        );
        assert_eq!(
            vars["layer1.0.bn2.bias"].as_tensor().to_vec1::<f32>()?,
            vec![0.0; 64]
        );
        Ok(())
    }

    #[test]
    fn training_mode_updates_running_stats_like_pytorch() -> Result<()> {
        let device = Device::Cpu;
        let vb = init_var_builder(HashMap::new(), 0, &device);
        let bn = BatchNorm2d::new(&vb, 2)?;
        // Channel 0 holds 1..=8, channel 1 holds 0 everywhere.
        let x = Tensor::cat(
            &[
                &Tensor::arange(1f32, 9., &device)?.reshape((2, 1, 2, 2))?,
                &Tensor::zeros((2, 1, 2, 2), DType::F32, &device)?,
            ],
            1,
        )?;
        let y = bn.forward_t(&x, true)?;
        // mean 4.5, biased var 5.25, unbiased 6.
        let rm = bn.running_mean.1.as_tensor().to_vec1::<f32>()?;
        let rv = bn.running_var.1.as_tensor().to_vec1::<f32>()?;
        assert!((rm[0] - 0.45).abs() < 1e-6 && rm[1] == 0.0);
        assert!((rv[0] - (0.9 + 0.6)).abs() < 1e-6 && (rv[1] - 0.9).abs() < 1e-6);
        let first = y.flatten_all()?.to_vec1::<f32>()?[0];
        assert!((first - (1.0 - 4.5) / (5.25f32 + 1e-5).sqrt()).abs() < 1e-5);
        // Evaluation uses the running statistics.
        let y = bn.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
        assert!((y[0] - (1.0 - 0.45) / (1.5f32 + 1e-5).sqrt()).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn one_value_per_channel_is_refused_in_training() -> Result<()> {
        let device = Device::Cpu;
        let vb = init_var_builder(HashMap::new(), 0, &device);
        let bn = BatchNorm2d::new(&vb, 2)?;
        let x = Tensor::ones((1, 2, 1, 1), DType::F32, &device)?;
        assert!(bn.forward_t(&x, true).is_err());
        assert!(bn.forward_t(&x, false).is_ok());
        Ok(())
    }

    #[test]
    fn checkpoint_problems_are_all_listed_and_partial_loads_are_opt_in() -> Result<()> {
        let device = Device::Cpu;
        let widths = small();
        let mut tensors: HashMap<String, Tensor> = resnet18_layout(widths)
            .into_iter()
            .map(|(name, shape)| {
                Ok((
                    format!("module.{name}"),
                    Tensor::zeros(shape, DType::F32, &device)?,
                ))
            })
            .collect::<Result<_>>()?;
        tensors.insert(
            "module.fc.weight".into(),
            Tensor::zeros((1000, 16), DType::F32, &device)?,
        );
        tensors.insert(
            "module.bn1.num_batches_tracked".into(),
            Tensor::zeros((), DType::I64, &device)?,
        );
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let good = dir.path().join("good.safetensors");
        candle_core::safetensors::save(&tensors, &good)?;
        assert_eq!(
            load_checkpoint(&good, widths, false, &device)?.len(),
            resnet18_layout(widths).len()
        );

        tensors.remove("module.layer3.1.conv2.weight");
        tensors.remove("module.bn1.running_var");
        tensors.insert(
            "module.layer1.0.conv1.weight".into(),
            Tensor::zeros((2, 2, 5, 5), DType::F32, &device)?,
        );
        tensors.insert(
            "module.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &device)?,
        );
        let bad = dir.path().join("bad.safetensors");
        candle_core::safetensors::save(&tensors, &bad)?;
        let message = load_checkpoint(&bad, widths, false, &device)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for expected in [
            "4 problems",
            "missing layer3.1.conv2.weight",
            "missing bn1.running_var",
            "mis-shaped layer1.0.conv1.weight: [2, 2, 5, 5] in the file, [2, 2, 3, 3] expected",
            "unexpected extra.weight",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
        let partial = load_checkpoint(&bad, widths, true, &device)?;
        assert_eq!(partial.len(), resnet18_layout(widths).len() - 3);
        Ok(())
    }
}
