//! `gfer train`: one CAFE (or baseline) training run into a run folder.

use anyhow::Context;
use clap::Args;
use gfer::backbone::Backbone;
use gfer::data::Shard;
use gfer::image::{DecodeLimits, Preset};
use gfer::model::classifier::{MaskInput, Method};
use gfer::model::CafeConfig;
use gfer::train::fit::Recipe;
use gfer::train::run::{self, FastConfig, RunOutcome, TrainConfig};
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Train CAFE (or a baseline) on one data set",
    long_about = "Trains on the train split of --data and evaluates on its test split (val \
when it has none) after every epoch. Writes a run folder: config.json, revision.txt, \
data.json, log.jsonl (one line per epoch), checkpoints/last.safetensors (everything needed \
to resume), best.safetensors and model.safetensors (model bundles for eval/predict/serve) \
and report.md. Ctrl-C finishes the current step, saves and exits; --resume RUN continues \
with results identical to an uninterrupted run. Defaults are the authors' recipe.

With --fast --cache-only, only fast mode's feature cache is built (no run folder); with \
--shard K/N as well, only every N-th image from the K-th, so that the tasks of a job array \
build the cache of a large data set together, each on its own part, into one --cache \
folder. Training with the same options then finds every image cached."
)]
pub struct TrainArgs {
    /// Source data set, e.g. `rafdb:/data/raf-basic` or `folder:/data/faces`.
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    /// Run folder to write.
    #[arg(long, required_unless_present_any = ["resume", "cache_only"])]
    out: Option<PathBuf>,
    /// Build fast mode's feature cache and stop, without training.
    #[arg(long, requires = "fast", conflicts_with_all = ["out", "resume"])]
    cache_only: bool,
    /// With --cache-only, in a job array: cache only task K's part of N of the images.
    #[arg(long, value_name = "K/N", requires = "cache_only", value_parser = super::parse_shard)]
    shard: Option<Shard>,
    /// Continue the run in this folder from its last checkpoint (its config.json is used).
    #[arg(long, conflicts_with_all = ["data", "out"])]
    resume: Option<PathBuf>,
    /// What to train: CAFE, its ablations, or a baseline.
    #[arg(long, value_enum, default_value = "cafe")]
    method: Method,
    /// Stop after this many steps (saving, as on Ctrl-C), e.g. to fit a job's time limit;
    /// continue later with --resume.
    #[arg(long)]
    stop_after_steps: Option<usize>,
    #[command(flatten)]
    flags: TrainingFlags,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// The settings of a training run shared by `gfer train` and `gfer protocol`.
#[derive(Args)]
pub struct TrainingFlags {
    /// Frozen encoder architecture; inferred from the weights when omitted.
    #[arg(long, value_enum)]
    pub backbone: Option<Backbone>,
    /// Frozen encoder weights (not needed by --method resnet).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
    #[arg(long, value_enum, default_value = "cafe")]
    pub preprocess: Preset,
    /// ResNet-18 starting weights: MS-Celeb `resnet18_msceleb.pth` or a torchvision state dict.
    #[arg(long)]
    pub mask_init: Option<PathBuf>,
    /// Accept a --mask-init checkpoint with missing, unexpected or mis-shaped tensors.
    #[arg(long)]
    pub allow_partial: bool,
    #[arg(long, default_value_t = Recipe::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = Recipe::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = Recipe::default().lr)]
    pub lr: f64,
    /// L2 weight decay added to the gradient (PyTorch Adam semantics, not AdamW).
    #[arg(long, default_value_t = Recipe::default().weight_decay)]
    pub weight_decay: f64,
    /// ExponentialLR factor, applied once per epoch.
    #[arg(long, default_value_t = Recipe::default().gamma)]
    pub gamma: f64,
    #[arg(long, default_value_t = Recipe::default().seed)]
    pub seed: u64,
    /// Weight of the separation loss.
    #[arg(long, default_value_t = CafeConfig::default().lambda)]
    pub lambda: f64,
    /// Weight of the channel-diverse loss.
    #[arg(long, default_value_t = CafeConfig::default().beta)]
    pub beta: f64,
    /// The paper's diverse-loss normalisation (Eq. 8: 1 - sum/(N c)) instead of the code's.
    #[arg(long)]
    pub paper_div: bool,
    /// Classify by the group maxima instead of the FC.
    #[arg(long)]
    pub group_max_inference: bool,
    /// No ReLU before the sigmoid: the mask spans (0,1) instead of [0.5,1).
    #[arg(long)]
    pub unrestricted_mask: bool,
    /// Images with more pixels than this are skipped.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,
    /// Fast mode: train on cached frozen features (K augmented views per image) with an
    /// MLP mask generator (see --generator), instead of running the encoder and a
    /// ResNet-18 on every augmented image. Practical on a CPU.
    #[arg(long)]
    pub fast: bool,
    /// Fast mode: augmented views cached per training image.
    #[arg(long, default_value_t = FastConfig::default().views)]
    pub views: usize,
    /// Fast mode: what the MLP mask generator reads, cached per view beside the encoder
    /// features. `feature`: the frozen feature F itself. `resnet18`: the pooled 512-d
    /// output of a frozen ResNet-18 (weights from --mask-init, required; eval-mode
    /// BatchNorm; it sees the encoder's view, ImageNet-normalised), through one trainable
    /// linear layer unless --mlp-hidden says otherwise; the bundle carries the ResNet.
    /// `tokens:LAYER`: the mean of the patch tokens after encoder block LAYER (from 1,
    /// i.e. transformers' hidden_states[LAYER]).
    #[arg(
        long,
        default_value = "feature",
        value_name = "feature|resnet18|tokens:LAYER"
    )]
    pub generator: MaskInput,
    /// Fast mode: hidden widths of the MLP mask generator (comma-separated; the flag
    /// alone, with no value, for one linear layer). Default: 128 for `feature` and
    /// `tokens:LAYER`, none (one linear layer) for `resnet18`.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub mlp_hidden: Option<Vec<usize>>,
    /// Fast mode: the feature cache folder.
    #[arg(long, default_value = "runs/cache")]
    pub cache: PathBuf,
}

impl TrainingFlags {
    /// The run configuration for one data set and method.
    pub fn config(&self, data: String, method: Method) -> TrainConfig {
        TrainConfig {
            data,
            backbone: self.backbone,
            weights: self.weights.clone(),
            precision: self.precision.precision,
            preprocess: self.preprocess,
            method,
            cafe: CafeConfig {
                lambda: self.lambda,
                beta: self.beta,
                paper_div: self.paper_div,
                group_max_inference: self.group_max_inference,
                unrestricted_mask: self.unrestricted_mask,
                ..CafeConfig::default()
            },
            mask_init: self.mask_init.clone(),
            allow_partial: self.allow_partial,
            recipe: Recipe {
                epochs: self.epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                weight_decay: self.weight_decay,
                gamma: self.gamma,
                seed: self.seed,
            },
            max_pixels: self.max_pixels,
            fast: self.fast.then(|| self.fast_config()),
        }
    }

    /// The fast-mode settings the flags give (used whether or not --fast is set: `gfer
    /// protocol` runs fast variants beside full ones).
    pub fn fast_config(&self) -> FastConfig {
        FastConfig {
            views: self.views,
            generator: self.generator,
            hidden: self.mlp_hidden.clone(),
            cache_dir: self.cache.clone(),
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.cache_only {
        return build_cache(&args);
    }
    let (cfg, out) = match &args.resume {
        Some(run) => (run::load_config(run)?, run.clone()),
        None => {
            let out = args.out.clone().context("--out is required")?;
            anyhow::ensure!(
                !out.join(run::CONFIG).exists(),
                "{} already holds a run; pass --resume {} to continue it, or choose another --out",
                out.display(),
                out.display()
            );
            let data = args.data.clone().context("--data is required")?;
            let cfg = args.flags.config(data, args.method);
            (cfg, out)
        }
    };
    let device = args.device.device()?;
    let stop = super::stop_on_ctrl_c()?;
    let progress = super::progress_bar(0, "images");
    let watch = run::Watch {
        stop: &stop,
        progress: &progress,
        max_steps: args.stop_after_steps,
    };
    let outcome = run::train(&cfg, &out, &watch, &device)?;
    progress.finish_and_clear();
    match outcome {
        RunOutcome::Interrupted { run, epoch, step } => {
            eprintln!(
                "stopped in epoch {} after step {step}; saved. Continue with: gfer train --resume {}",
                epoch + 1,
                run.display()
            );
        }
        RunOutcome::Finished(report) => {
            if let Some(metrics) = &report.held_out {
                let mut metrics = metrics.clone();
                metrics.confusion.classes = gfer::Expression::names();
                println!("{}", metrics.to_table());
            }
            println!(
                "model bundle: {}\nrun folder: {} (report.md, log.jsonl)",
                report.bundle.display(),
                report.run.display()
            );
        }
    }
    Ok(())
}

/// `--cache-only`: fast mode's feature cache of (a part of) the data set.
fn build_cache(args: &TrainArgs) -> anyhow::Result<()> {
    let data = args.data.clone().context("--data is required")?;
    let cfg = args.flags.config(data, args.method);
    let device = args.device.device()?;
    let stop = super::stop_on_ctrl_c()?;
    let progress = super::progress_bar(0, "images");
    let watch = run::Watch {
        stop: &stop,
        progress: &progress,
        max_steps: None,
    };
    let counts = run::build_cache(&cfg, args.shard, &watch, &device)?;
    progress.finish_and_clear();
    let part = args
        .shard
        .map(|s| format!(" (part {s})"))
        .unwrap_or_default();
    println!(
        "feature cache in {}{part}: {counts}",
        args.flags.cache.display()
    );
    Ok(())
}
