//! `gfer extract`: frozen-encoder features of images to a safetensors file.

use anyhow::Context;
use clap::Args;
use gfer::backbone::features::{extract, shard_path, ExtractItem, ExtractOptions};
use gfer::backbone::{load_encoder, Backbone};
use gfer::data::Shard;
use gfer::image::{DecodeLimits, Preprocess, Preset};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Args)]
#[command(
    about = "Extract frozen encoder features of images to a safetensors file",
    long_about = "Encodes every input image with a frozen encoder and writes tensor `features` \
[N,D] with the image paths, content hashes, labels (for data sets), backbone, weights \
fingerprint, precision and preprocessing in the metadata. Rerunning with the same --out skips images \
already there (by content hash); Ctrl-C finishes the current batch and saves. Unreadable \
images are reported and skipped.

As a job array: task K of N runs the same command with --shard K/N and writes every N-th \
image from the K-th to OUT's shard file (feats.safetensors -> feats.shard-K-of-N.safetensors); \
the same command without --shard then gathers the shards into OUT, in order, encoding \
nothing again."
)]
pub struct ExtractArgs {
    /// Encoder architecture; inferred from the weights when omitted.
    #[arg(long, value_enum)]
    backbone: Option<Backbone>,
    /// Encoder weights (safetensors, PyTorch .pt/.bin/.pth, or converted DINOv2).
    #[arg(long)]
    weights: PathBuf,
    /// Preprocessing: `cafe` (the authors' 224x224 resize + ImageNet normalisation) or
    /// `clip` (CLIP's bicubic resize, centre crop and normalisation).
    #[arg(long, value_enum, default_value = "cafe")]
    preprocess: Preset,
    /// Output features file (.safetensors); extended if it exists.
    #[arg(long)]
    out: PathBuf,
    /// In a job array: encode only task K's part of N (every N-th image from the K-th)
    /// into OUT's shard file.
    #[arg(long, value_name = "K/N", value_parser = super::parse_shard)]
    shard: Option<Shard>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Images with more pixels than this are refused (decompression bombs).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    max_pixels: u64,
    /// Image files, folders (searched recursively) or data-set specs such as
    /// `rafdb:/data/raf-basic` (all splits; add `:split=train` for one).
    #[arg(required = true)]
    inputs: Vec<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[command(flatten)]
    precision: super::PrecisionArgs,
}

pub fn run(args: ExtractArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let encoder = load_encoder(
        args.backbone,
        &args.weights,
        &device,
        args.precision.precision,
    )
    .with_context(|| format!("loading encoder weights {}", args.weights.display()))?;
    let preprocess = Preprocess::new(args.preprocess, encoder.input_size() as u32);
    let items: Vec<ExtractItem> = super::resolve_inputs(&args.inputs)?
        .into_iter()
        .map(|input| ExtractItem {
            source: input.source,
            label: input.label,
        })
        .collect();
    anyhow::ensure!(!items.is_empty(), "no images found in {:?}", args.inputs);
    let (items, out) = match args.shard {
        Some(shard) => (shard.select(&items), shard_path(&args.out, shard)),
        None => (items, args.out.clone()),
    };
    eprintln!(
        "extracting {} images with {} (D={}, weights {}, precision {}), preprocessing {}, batch {}",
        items.len(),
        encoder.id(),
        encoder.dim(),
        encoder.fingerprint(),
        encoder.precision().name(),
        args.preprocess,
        args.batch_size
    );
    let stop = super::stop_on_ctrl_c()?;
    let progress = super::progress_bar(items.len() as u64, "images");
    let summary = extract(
        encoder.as_ref(),
        preprocess,
        &items,
        &out,
        &ExtractOptions {
            batch_size: args.batch_size,
            limits: DecodeLimits {
                max_pixels: args.max_pixels,
            },
            save_every: Duration::from_secs(30),
        },
        &stop,
        &progress,
    )?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {}: {} encoded, {} already there, {} failed{}",
        out.display(),
        summary.encoded,
        summary.reused,
        summary.failures.len(),
        if stop.load(Ordering::SeqCst) {
            " (interrupted: rerun the same command to continue)"
        } else {
            ""
        }
    );
    if !summary.failures.is_empty() {
        eprintln!("images that could not be used:");
        for failure in &summary.failures {
            // The reason names the file.
            eprintln!("  {}", failure.reason);
        }
    }
    Ok(())
}
