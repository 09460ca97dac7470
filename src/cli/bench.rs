//! `gfer bench`: throughput measurements.

use anyhow::Context;
use clap::{Args, Subcommand};
use gfer::backbone::features::cosine_similarities;
use gfer::backbone::{load_encoder, Backbone, ClipConfig, ClipVisionEncoder, Encoder, Precision};
use gfer::detect::{DetectorKind, DetectorOptions};
use gfer::experiments::bench;
use gfer::experiments::bench::parity;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Training throughput: the full recipe's step on the CPU (beside PyTorch running the
    /// authors' model, with --python), fast-mode epochs on synthetic cached features, and
    /// feature extraction (the encoder forward the full recipe and the cache both need).
    Train(TrainBenchArgs),
    /// Face detection on photos whose faces were counted by hand: recall, false detections
    /// and milliseconds per photo of each detector.
    Detect(DetectBenchArgs),
    /// Replays the CAFE parity fixtures (the authors' training steps in PyTorch) on a
    /// device and compares every value, as tests/cafe_parity.rs does on the CPU: checks a
    /// GPU build against the authors' numbers.
    Parity(ParityArgs),
    /// What a quantized encoder changes on labelled images: each image's cosine similarity
    /// between its f32 and quantized features and, with --model (trained on f32 features),
    /// the predictions that change and the accuracy in both precisions, per data set.
    Precision(PrecisionBenchArgs),
}

#[derive(Args)]
pub struct PrecisionBenchArgs {
    /// Encoder weights, loaded once in f32 and once in --precision.
    #[arg(long)]
    pub weights: PathBuf,
    /// A model bundle trained on these weights' f32 features: adds its predictions.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data sets, e.g. `rafdb:/data/raf-basic`.
    #[arg(long = "data", required = true)]
    pub data: Vec<String>,
    /// Split of each data set (default: test, or val when there is none).
    #[arg(long)]
    pub split: Option<gfer::data::Split>,
    /// The precision compared with f32.
    #[arg(long, value_enum, default_value_t = Precision::Int8)]
    pub precision: Precision,
    /// Preprocessing without --model (a model brings its own): `cafe` or `clip`.
    #[arg(long, value_enum, default_value = "cafe")]
    pub preprocess: gfer::image::Preset,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ParityArgs {
    /// Fixture files, or folders of them (every *.safetensors inside).
    #[arg(default_value = "tests/fixtures/parity")]
    pub fixtures: Vec<PathBuf>,
    /// Replay in f32 only (the first forward pass), skipping the f64 replay of every step.
    #[arg(long)]
    pub f32_only: bool,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

#[derive(Args)]
pub struct DetectBenchArgs {
    /// The counts: `{"photos": [{"path": ..., "faces": N}, ...]}`, paths (or glob
    /// patterns) relative to --assets.
    #[arg(long, default_value = "tests/fixtures/detection/faces.json")]
    pub counts: PathBuf,
    /// The folder the photos' paths are relative to, and where MTCNN's weights are.
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Detectors to compare, each with its default threshold.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["mtcnn", "seetaface"])]
    pub detector: Vec<DetectorKind>,
    /// MTCNN's threshold (its final probability), to calibrate it.
    #[arg(long)]
    pub mtcnn_threshold: Option<f32>,
    /// Passes over the photos; the median time is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also print the faces each detector found in every photo.
    #[arg(long)]
    pub per_photo: bool,
}

#[derive(Args)]
pub struct TrainBenchArgs {
    /// What to measure.
    #[arg(long, value_delimiter = ',', default_values = ["full", "fast", "extract"])]
    pub what: Vec<TrainStage>,
    /// A Python with torch (e.g. .venv/bin/python, see scripts/setup-python): times the
    /// authors' step in PyTorch in the same run and prints gfer's speed ratio.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The PyTorch step script that --python runs (it imports the authors' model from
    /// `reference/` beside it).
    #[arg(long, default_value = "scripts/bench_train_step.py")]
    pub torch_script: PathBuf,
    /// Full recipe: batch size, timed steps (median) and image side.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 224)]
    pub side: usize,
    /// Full recipe: alternate gfer and PyTorch this many times (the machine's load moves).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Fast mode: cached training images (RAF-DB has 12,271), feature width, views per
    /// image, epochs, and the MLP generator's hidden widths.
    #[arg(long, default_value_t = 12_271)]
    pub images: usize,
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    #[arg(long, default_value_t = 8)]
    pub views: usize,
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// (the flag alone, with no value: one linear layer).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [128])]
    pub mlp_hidden: Vec<usize>,
    /// Extraction: the encoder preset with random weights, or --weights.
    #[arg(long, default_value = "clip-vit-b32")]
    pub backbone: Backbone,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Extraction: batch size and seconds to keep timing.
    #[arg(long, default_value_t = 8)]
    pub extract_batch: usize,
    #[arg(long, default_value_t = 3.0)]
    pub extract_seconds: f64,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainStage {
    Full,
    Fast,
    Extract,
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
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    pub batch: Vec<usize>,
    /// Thread counts to measure (default: 1 and every core).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Keep timing each setting for at least this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// ... and for at least this many batches.
    #[arg(long, default_value_t = 2)]
    pub min_batches: usize,
    /// Untimed batches before timing each setting.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// With --weights: a safetensors file holding `pixels` [B,3,S,S] and the reference
    /// `embeds` [B,D]; prints gfer's maximum relative difference from them.
    #[arg(long, requires = "weights")]
    pub reference: Option<PathBuf>,
    /// With --weights: also run the encoder on the CPU in f32 on the same random pixels and
    /// print the largest relative difference of --device's embeddings (in --precision)
    /// from the CPU's.
    #[arg(long, requires = "weights")]
    pub compare_cpu: bool,
    /// Print one JSON object per measurement instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
    /// The matrix kernel: auto (the one measured fastest on this kind of CPU), avx2 or
    /// avx512 (gfer's own) or gemm (the gemm crate). Default: GFER_MATMUL, else auto.
    #[arg(long, value_parser = parse_kernel)]
    pub kernel: Option<gfer::kernels::KernelRequest>,
}

fn parse_kernel(text: &str) -> Result<gfer::kernels::KernelRequest, String> {
    text.parse().map_err(|e: gfer::Error| e.to_string())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Encode(args) => encode(args),
        BenchCommand::Train(args) => train(args),
        BenchCommand::Detect(args) => detect(args),
        BenchCommand::Parity(args) => parity(args),
        BenchCommand::Precision(args) => precision(args),
    }
}

/// `cpu` or `cuda:N`, as `--device` and PyTorch name it.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        other => format!("{other:?}"),
    }
}

fn parity(args: ParityArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let name = device_name(&device);
    let files = parity::fixtures_in(&args.fixtures)?;
    let mut failures = Vec::new();
    let mut replays = 0;
    for file in &files {
        for (dtype, all_steps) in parity::REPLAYS {
            if args.f32_only && dtype != candle_core::DType::F32 {
                continue;
            }
            let started = Instant::now();
            let report = parity::replay(file, &device, dtype, all_steps)
                .with_context(|| format!("replaying {} in {dtype:?} on {name}", file.display()))?;
            replays += 1;
            let what = if all_steps {
                "every step"
            } else {
                "first forward"
            };
            println!(
                "{} in {dtype:?} on {name} ({what}): {} ({:.1} s)",
                file.display(),
                if report.failures.is_empty() {
                    "ok"
                } else {
                    "MISMATCH"
                },
                started.elapsed().as_secs_f64()
            );
            for (kind, (rel, tensor)) in &report.worst {
                println!("  worst {kind:<13} {rel:.2e}  ({tensor})");
            }
            if let Some((rel, tensor)) = &report.f32_gradient {
                println!("  (f32 gradients, not compared: worst {rel:.2e} at {tensor})");
            }
            failures.extend(
                report
                    .failures
                    .iter()
                    .map(|f| format!("{} in {dtype:?}: {f}", file.display())),
            );
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of the values differ from the authors' beyond tolerance (forward {:.0e}, \
         later {:.0e}) on {name}:\n{}",
        failures.len(),
        parity::FORWARD_TOL,
        parity::LATER_TOL,
        failures.join("\n")
    );
    println!(
        "parity on {name}: {replays} replays of {} fixtures, every value within tolerance \
         (forward {:.0e}, later {:.0e})",
        files.len(),
        parity::FORWARD_TOL,
        parity::LATER_TOL
    );
    Ok(())
}

fn train(args: TrainBenchArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = args.device.device()?;
    println!(
        "settings: {}",
        serde_json::json!({"gfer": env!("CARGO_PKG_VERSION"), "device": device_name(&device), "cores": cores, "cpu": cpu_description()})
    );
    let extract_ips = match args.what.contains(&TrainStage::Extract) {
        true => Some(measure_extraction(&args, cores, &device)?),
        false => None,
    };
    if args.what.contains(&TrainStage::Full) {
        measure_full_steps(&args, extract_ips, &device)?;
    }
    if args.what.contains(&TrainStage::Fast) {
        let bench = bench::fast_mode(
            args.images,
            args.dim,
            args.views,
            args.epochs,
            args.mlp_hidden.clone(),
            &device,
        )?;
        println!(
            "(ii) fast mode, MLP {:?} on {}-d features: {} epochs x {} images in {:.1} s, {:.0} images/s",
            args.mlp_hidden,
            args.dim,
            args.epochs,
            args.images,
            bench.seconds,
            bench.images_per_second()
        );
    }
    Ok(())
}

/// (iii): the encoder forward that the full recipe and the cache both need, in images/s.
fn measure_extraction(
    args: &TrainBenchArgs,
    cores: usize,
    device: &candle_core::Device,
) -> anyhow::Result<f64> {
    let device = device.clone();
    let encoder: Box<dyn Encoder> = match &args.weights {
        Some(path) => load_encoder(None, path, &device, Precision::F32)
            .with_context(|| format!("loading {}", path.display()))?,
        None => Box::new(ClipVisionEncoder::random(
            &ClipConfig::of_backbone(args.backbone)?,
            0,
            &device,
            Precision::F32,
        )?),
    };
    let seconds = Duration::from_secs_f64(args.extract_seconds);
    let m = bench::measure_encode(
        encoder.as_ref(),
        args.extract_batch,
        cores,
        1,
        2,
        seconds,
        &device,
    )?;
    println!(
        "(iii) extraction, {} batch {} on {} ({} threads): {:.2} images/s ({:.1} ms/image)",
        m.setting.encoder,
        args.extract_batch,
        device_name(&device),
        cores,
        m.images_per_second,
        m.ms_per_image
    );
    Ok(m.images_per_second)
}

/// (i): the full recipe's step, alternating with PyTorch's when --python is given.
fn measure_full_steps(
    args: &TrainBenchArgs,
    extract_ips: Option<f64>,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let mut ratios = Vec::new();
    let name = device_name(device);
    for round in 1..=args.rounds.max(1) {
        let ours = bench::full_step(args.batch, args.steps, args.side, device)?;
        let ips = args.batch as f64 / ours;
        let mut line = format!(
            "(i) full recipe step on {name}, round {round}: batch {} at {side}x{side}: gfer {:.1} ms/step, {ips:.2} images/s",
            args.batch,
            ours * 1e3,
            side = args.side
        );
        if let Some(python) = &args.python {
            let torch = bench::torch_full_step(
                python,
                &args.torch_script,
                args.batch,
                args.steps,
                args.side,
                &name,
            )?;
            let ratio = torch.seconds_per_step / ours;
            ratios.push(ratio);
            line += &format!(
                "; PyTorch {} on {} ({} threads) {:.1} ms/step; gfer/PyTorch speed {ratio:.2}x",
                torch.torch,
                if torch.device.is_empty() {
                    "cpu"
                } else {
                    &torch.device
                },
                torch.threads,
                torch.seconds_per_step * 1e3
            );
        }
        println!("{line}");
        if let Some(extract) = extract_ips {
            // Every augmented image also goes through the frozen encoder.
            let per_image = ours / args.batch as f64 + 1.0 / extract;
            println!(
                "    with the encoder forward on every augmented image: {:.2} images/s, {:.0} s per epoch of {} images",
                1.0 / per_image,
                per_image * args.images as f64,
                args.images
            );
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "    gfer/PyTorch speed ratio over {} rounds: median {:.2}x",
            ratios.len(),
            ratios[ratios.len() / 2]
        );
    }
    Ok(())
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = if args.threads.is_empty() {
        vec![1, cores]
    } else {
        args.threads.clone()
    };
    threads.dedup();
    let encoders = encoders_to_measure(&args, &device)?;
    let settings = serde_json::json!({
        "gfer": env!("CARGO_PKG_VERSION"),
        "device": device_name(&device),
        "dtype": "f32",
        "precision": args.precision.precision.name(),
        "cores": cores,
        "cpu": cpu_description(),
        "kernel": gfer::kernels::matmul_kernel().name(),
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
        compare_with_reference(encoders[0].as_ref(), reference, args.json, &device)?;
    }
    if args.compare_cpu {
        if let Some(weights) = &args.weights {
            for &batch in &args.batch {
                compare_with_cpu(encoders[0].as_ref(), weights, batch, args.json, &device)?;
            }
        }
    }
    if !args.json {
        println!(
            "{:<18} {:>6} {:>8} {:>10} {:>10} {:>8}",
            "encoder", "batch", "threads", "images/s", "ms/image", "batches"
        );
    }
    let seconds = Duration::from_secs_f64(args.seconds);
    for encoder in &encoders {
        for &batch in &args.batch {
            for &t in &threads {
                let m = bench::measure_encode(
                    encoder.as_ref(),
                    batch,
                    t,
                    args.warmup,
                    args.min_batches,
                    seconds,
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

/// The encoder in --weights, or every preset asked for (all CLIP ones by default) with
/// random weights.
fn encoders_to_measure(
    args: &EncodeArgs,
    device: &candle_core::Device,
) -> anyhow::Result<Vec<Box<dyn Encoder>>> {
    let precision = args.precision.precision;
    if let Some(path) = &args.weights {
        let encoder = load_encoder(None, path, device, precision)
            .with_context(|| format!("loading {}", path.display()))?;
        return Ok(vec![encoder]);
    }
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
            let config = ClipConfig::of_backbone(b)?;
            Ok(Box::new(ClipVisionEncoder::random(
                &config, 0, device, precision,
            )?))
        })
        .collect()
}

/// Prints the encoder's largest relative difference from a reference's `embeds` of its
/// `pixels`.
fn compare_with_reference(
    encoder: &dyn Encoder,
    reference: &std::path::Path,
    json: bool,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let io = candle_core::safetensors::load(reference, device)
        .with_context(|| format!("reading {}", reference.display()))?;
    let (Some(pixels), Some(expected)) = (io.get("pixels"), io.get("embeds")) else {
        anyhow::bail!(
            "{}: needs tensors `pixels` and `embeds`",
            reference.display()
        )
    };
    let ours = encoder.encode(pixels)?;
    let diff = (&ours - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
    let relative = diff / scale;
    let cosine = cosine_similarities(&ours, expected)?
        .into_iter()
        .fold(f32::INFINITY, f32::min);
    if json {
        println!(
            "{}",
            serde_json::json!({ "reference": reference, "max_relative_difference": relative, "min_cosine": cosine })
        );
    } else {
        println!(
            "from {}: max relative difference {relative:.2e}, lowest cosine similarity {cosine:.6}",
            reference.display()
        );
    }
    Ok(())
}

/// Prints the largest relative difference of the encoder's embeddings on `device` (in its
/// precision) from the same weights' on the CPU in f32, for one batch of random pixels
/// (`max |device - cpu| / max |cpu|`).
fn compare_with_cpu(
    encoder: &dyn Encoder,
    weights: &std::path::Path,
    batch: usize,
    json: bool,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let cpu = candle_core::Device::Cpu;
    let on_cpu = load_encoder(None, weights, &cpu, Precision::F32)
        .with_context(|| format!("loading {} on the CPU", weights.display()))?;
    let pixels = bench::random_pixels(encoder, batch, 7, &cpu)?;
    let expected = on_cpu.encode(&pixels)?;
    let ours = encoder
        .encode(&pixels.to_device(device)?)?
        .to_device(&cpu)?;
    let diff = (&ours - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
    let relative = diff / scale;
    let name = device_name(device);
    if json {
        println!(
            "{}",
            serde_json::json!({ "encoder": encoder.id(), "device": name, "batch": batch, "max_relative_difference_from_cpu": relative })
        );
    } else {
        println!(
            "{} on {name} against the CPU, batch {batch}: max relative difference {relative:.2e}",
            encoder.id()
        );
    }
    Ok(())
}

fn detect(args: DetectBenchArgs) -> anyhow::Result<()> {
    let assets = args
        .assets
        .clone()
        .unwrap_or_else(gfer::assets::default_dir);
    let photos = bench::detection::read_counts(&args.counts, &assets)?;
    let threads = rayon::current_num_threads();
    println!(
        "settings: {}",
        serde_json::json!({"gfer": env!("CARGO_PKG_VERSION"), "threads": threads, "cpu": cpu_description(), "photos": photos.len()})
    );
    println!(
        "| detector | photos | faces counted | found | recall | false detections | ms/photo |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut summaries = Vec::new();
    for &kind in &args.detector {
        let threshold = (kind == DetectorKind::Mtcnn)
            .then_some(args.mtcnn_threshold)
            .flatten();
        let options = DetectorOptions {
            kind,
            threshold,
            assets: assets.clone(),
        };
        let detector = options.build()?;
        let name = format!("{kind:?}").to_lowercase();
        let s = bench::detection::measure(&name, detector.as_ref(), &photos, args.rounds)?;
        println!(
            "| {} | {} | {} | {} | {:.1}% | {} | {:.1} |",
            s.detector,
            s.photos,
            s.counted,
            s.found,
            100.0 * s.recall,
            s.false_detections,
            s.ms_per_photo
        );
        summaries.push(s);
    }
    if args.per_photo {
        for (i, photo) in photos.iter().enumerate() {
            let found: Vec<String> = summaries
                .iter()
                .map(|s| format!("{} {}", s.detector, s.found_per_photo[i]))
                .collect();
            println!(
                "{} ({} counted): {}",
                photo.path.display(),
                photo.faces,
                found.join(", ")
            );
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

fn precision(args: PrecisionBenchArgs) -> anyhow::Result<()> {
    use gfer::eval::precision::{compare_precisions, PrecisionComparison, Runner};
    use gfer::model::inference::ExpressionModel;
    let cpu = candle_core::Device::Cpu;
    let load = |precision: Precision| -> anyhow::Result<Runner> {
        let what = args.model.as_ref().unwrap_or(&args.weights);
        let context = || format!("loading {} in {}", what.display(), precision.name());
        Ok(match &args.model {
            Some(model) => Runner::Model(Box::new(
                ExpressionModel::load(model, Some(&args.weights), precision, &cpu)
                    .with_context(context)?,
            )),
            None => Runner::Encoder(
                load_encoder(None, &args.weights, &cpu, precision).with_context(context)?,
            ),
        })
    };
    let (exact, quantized) = (load(Precision::F32)?, load(args.precision)?);
    let preprocess = exact.preprocess(args.preprocess);
    let limits = gfer::image::DecodeLimits::default();
    let mut results: Vec<(String, PrecisionComparison)> = Vec::new();
    for spec in &args.data {
        let dataset = gfer::data::open(spec, &Default::default())
            .with_context(|| format!("opening {spec}"))?;
        let Some(split) = args.split.or_else(|| dataset.held_out_split()) else {
            anyhow::bail!(
                "{spec} has no test or val split; pass --split train to use its training images"
            )
        };
        let samples = dataset.split(split);
        let progress = super::progress_bar(samples.len() as u64, "images");
        let comparison = compare_precisions(
            &exact,
            &quantized,
            &samples,
            preprocess,
            args.batch_size,
            &limits,
            &progress,
        )?;
        progress.finish_and_clear();
        for (image, reason) in &comparison.failures {
            tracing::warn!("{image}: skipped, {reason}");
        }
        results.push((spec.clone(), comparison));
    }
    report_precision(&args, &results);
    Ok(())
}

/// Prints what `gfer bench precision` measured: a row per data set and one for all of them
/// (accuracies as means over the data sets), as a table or one JSON object.
fn report_precision(
    args: &PrecisionBenchArgs,
    results: &[(String, gfer::eval::precision::PrecisionComparison)],
) {
    use gfer::eval::precision::PrecisionComparison;
    let name = args.precision.name();
    let accuracy =
        |m: &Option<gfer::eval::metrics::Metrics>| m.as_ref().map(|m| 100.0 * m.accuracy);
    let images: usize = results.iter().map(|(_, c)| c.cosines.len()).sum();
    let changed: usize = results.iter().map(|(_, c)| c.changed_predictions).sum();
    let lowest = results
        .iter()
        .map(|(_, c)| c.lowest_cosine())
        .fold(f32::INFINITY, f32::min);
    let mean = |pick: &dyn Fn(&PrecisionComparison) -> Option<f64>| -> Option<f64> {
        let values: Option<Vec<f64>> = results.iter().map(|(_, c)| pick(c)).collect();
        values.map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
    };
    let mean_f32 = mean(&|c| accuracy(&c.f32));
    let mean_quantized = mean(&|c| accuracy(&c.quantized));
    if args.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(spec, c)| {
                serde_json::json!({
                    "data": spec, "images": c.cosines.len(), "lowest_cosine": c.lowest_cosine(),
                    "median_cosine": c.median_cosine(), "f32_accuracy": accuracy(&c.f32),
                    "quantized_accuracy": accuracy(&c.quantized),
                    "changed_predictions": c.changed_predictions, "unreadable": c.failures.len(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "precision": name, "weights": args.weights, "model": args.model, "cpu": cpu_description(),
                "data": rows, "images": images, "lowest_cosine": lowest, "changed_predictions": changed,
                "mean_f32_accuracy": mean_f32, "mean_quantized_accuracy": mean_quantized,
            })
        );
        return;
    }
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!("{name} against f32, {}", args.weights.display());
    println!(
        "| data | images | lowest cosine | median cosine | f32 accuracy | {name} accuracy | changed predictions |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (spec, c) in results {
        println!(
            "| {spec} | {} | {:.5} | {:.5} | {} | {} | {} |",
            c.cosines.len(),
            c.lowest_cosine(),
            c.median_cosine(),
            percent(accuracy(&c.f32)),
            percent(accuracy(&c.quantized)),
            if args.model.is_some() {
                c.changed_predictions.to_string()
            } else {
                "-".into()
            },
        )
    }
    let all = match args.model {
        Some(_) => "all (accuracy: mean over the data sets)",
        None => "all",
    };
    println!(
        "| {all} | {images} | {lowest:.5} | | {} | {} | {} |",
        percent(mean_f32),
        percent(mean_quantized),
        if args.model.is_some() {
            format!(
                "{changed} ({:.2}%)",
                100.0 * changed as f64 / images.max(1) as f64
            )
        } else {
            "-".into()
        },
    );
}
