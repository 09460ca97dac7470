//! `gfer bench`: throughput measurements.

use anyhow::Context;
use clap::{Args, Subcommand};
use gfer::backbone::{load_encoder, Backbone, ClipConfig, ClipVisionEncoder, Encoder};
use gfer::bench::measure_encode;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Images per second of the frozen encoders at several batch sizes and thread counts.
    ///
    /// Without --weights, every CLIP preset (or those named by --backbone) is measured
    /// with random weights: the speed does not depend on the values.
    Encode(EncodeArgs),
}

#[derive(Args)]
pub struct EncodeArgs {
    /// Presets to measure with random weights (default: every CLIP preset).
    #[arg(long, value_delimiter = ',')]
    pub backbone: Vec<Backbone>,
    /// Measure the encoder in this checkpoint instead of random presets.
    #[arg(long, conflicts_with = "backbone")]
    pub weights: Option<PathBuf>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 16])]
    pub batch: Vec<usize>,
    /// Thread counts to measure (default: 1 and every core).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Keep timing each setting for at least this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// ... and for at least this many batches.
    #[arg(long, default_value_t = 3)]
    pub min_batches: usize,
    /// Untimed batches before timing each setting.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// With --weights: a safetensors file holding `pixels` [B,3,S,S] and the reference
    /// `embeds` [B,D]; prints gfer's maximum relative difference from them.
    #[arg(long, requires = "weights")]
    pub reference: Option<PathBuf>,
    /// Print one JSON object per measurement instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Encode(args) => encode(args),
    }
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let device = candle_core::Device::Cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = if args.threads.is_empty() {
        vec![1, cores]
    } else {
        args.threads.clone()
    };
    threads.dedup();
    let encoders: Vec<Box<dyn Encoder>> = match &args.weights {
        Some(path) => vec![load_encoder(None, path, &device)
            .with_context(|| format!("loading {}", path.display()))?],
        None => {
            let presets = if args.backbone.is_empty() {
                vec![
                    Backbone::ClipVitB32,
                    Backbone::ClipVitB16,
                    Backbone::ClipVitL14,
                    Backbone::ClipVitL14_336,
                ]
            } else {
                args.backbone.clone()
            };
            presets
                .into_iter()
                .map(|b| -> anyhow::Result<Box<dyn Encoder>> {
                    tracing::info!("building {} with random weights", b.id());
                    Ok(Box::new(ClipVisionEncoder::random(
                        &ClipConfig::of_backbone(b)?,
                        0,
                        &device,
                    )?))
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    let settings = serde_json::json!({
        "gfer": env!("CARGO_PKG_VERSION"),
        "device": "cpu",
        "dtype": "f32",
        "cores": cores,
        "cpu": cpu_description(),
        "weights": args.weights.as_ref().map_or("random".to_string(), |p| p.display().to_string()),
        "batch": args.batch,
        "threads": threads,
        "seconds": args.seconds,
        "min_batches": args.min_batches,
        "warmup": args.warmup,
    });
    if args.json {
        println!("{}", serde_json::json!({ "settings": settings }));
    } else {
        println!("settings: {settings}");
    }
    if let Some(reference) = &args.reference {
        let io = candle_core::safetensors::load(reference, &device)
            .with_context(|| format!("reading {}", reference.display()))?;
        let (pixels, expected) = match (io.get("pixels"), io.get("embeds")) {
            (Some(p), Some(e)) => (p, e),
            _ => anyhow::bail!(
                "{}: needs tensors `pixels` and `embeds`",
                reference.display()
            ),
        };
        let ours = encoders[0].encode(pixels)?;
        let diff = (&ours - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
        let relative = diff / scale;
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "reference": reference, "max_relative_difference": relative })
            );
        } else {
            println!(
                "max relative difference from {}: {relative:.2e}",
                reference.display()
            );
        }
    }
    if !args.json {
        println!(
            "{:<18} {:>6} {:>8} {:>10} {:>10} {:>8}",
            "encoder", "batch", "threads", "images/s", "ms/image", "batches"
        );
    }
    for encoder in &encoders {
        for &batch in &args.batch {
            for &t in &threads {
                let m = measure_encode(
                    encoder.as_ref(),
                    batch,
                    t,
                    args.warmup,
                    args.min_batches,
                    Duration::from_secs_f64(args.seconds),
                    &device,
                )?;
                if args.json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    println!(
                        "{:<18} {:>6} {:>8} {:>10.2} {:>10.2} {:>8}",
                        m.setting.encoder,
                        batch,
                        t,
                        m.images_per_second,
                        m.ms_per_image,
                        m.batches_timed
                    );
                }
            }
        }
    }
    Ok(())
}

/// The processor's model name and the vector extensions the kernels can use.
fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    let features = ["avx2", "fma", "avx512f"]
        .into_iter()
        .filter(|f| match *f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            _ => std::arch::is_x86_feature_detected!("avx512f"),
        })
        .collect::<Vec<_>>()
        .join(",");
    #[cfg(not(target_arch = "x86_64"))]
    let features = String::new();
    format!("{model} [{features}]")
}
