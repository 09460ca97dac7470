//! `gfer eval`: a model bundle's accuracy on one or more data sets.

use anyhow::Context;
use clap::Args;
use gfer::data::{self, Split};
use gfer::eval::evaluate_images;
use gfer::image::DecodeLimits;
use gfer::model::inference::ExpressionModel;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Evaluate a model bundle on data sets",
    long_about = "Accuracy, per-class accuracy (recall), macro-F1 and the confusion matrix of \
a model on each data set: a readable table, or JSON with --json. Each data set is evaluated on \
its test split (val when it has none) unless --split says otherwise."
)]
pub struct EvalArgs {
    /// Model bundle written by `gfer train`.
    #[arg(long)]
    model: PathBuf,
    /// The frozen encoder weights the model was trained on.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Data sets to evaluate on, e.g. `rafdb:/data/raf-basic`.
    #[arg(long = "data", required = true)]
    data: Vec<String>,
    /// Split to evaluate (default: test, or val when there is no test split).
    #[arg(long)]
    split: Option<Split>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    max_pixels: u64,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[command(flatten)]
    precision: super::PrecisionArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let model = ExpressionModel::load(
        &args.model,
        args.weights.as_deref(),
        args.precision.precision,
        &device,
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
    };
    let mut results = serde_json::Map::new();
    for spec in &args.data {
        let dataset =
            data::open(spec, &Default::default()).with_context(|| format!("opening {spec}"))?;
        let split = match args.split.or_else(|| dataset.held_out_split()) {
            Some(split) => split,
            None => anyhow::bail!(
                "{spec} has no test or val split; pass --split train to use its training images"
            ),
        };
        let samples = dataset.split(split);
        anyhow::ensure!(
            !samples.is_empty(),
            "{spec} has no images in its {split} split"
        );
        let progress = super::progress_bar(samples.len() as u64, "images");
        let (metrics, failures) =
            evaluate_images(&model, &samples, args.batch_size, &limits, &progress)?;
        progress.finish_and_clear();
        for (what, why) in &failures {
            eprintln!("skipped {what}: {why}");
        }
        if !args.json {
            println!(
                "== {spec} ({split}, {} images)\n{}",
                samples.len(),
                metrics.to_table()
            );
        }
        results.insert(
            spec.clone(),
            serde_json::json!({ "split": split, "metrics": metrics, "skipped": failures.len() }),
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "model": args.model, "results": results })
            )?
        );
    }
    Ok(())
}
