//! Pieces several subcommands share: device choice, encoder precision, input resolution,
//! Ctrl-C, progress.

use anyhow::Context;
use gfer::backbone::Precision;
use gfer::data::ImageSource;
use gfer::device::DeviceChoice;
use gfer::Expression;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--device`, the same flag on every subcommand that computes (`gfer::device`).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DeviceArgs {
    /// Where to compute: `cpu`, `cuda` (the first GPU) or `cuda:N` (GPU N, from 0).
    /// Default: the first GPU when this gfer is built with CUDA and one is usable (else
    /// the CPU, saying why no GPU is used). The log names the device that runs.
    #[arg(long, value_name = "cpu|cuda[:N]", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
}

impl DeviceArgs {
    /// The device asked for, or the default; `--device cuda` without a usable GPU (or in a
    /// build without CUDA) is an error that says why.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        Ok(gfer::device::select(self.device.unwrap_or_default())?)
    }
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    text.parse().map_err(|e: gfer::Error| e.to_string())
}

/// `--precision`, the same flag on every subcommand that runs a frozen encoder.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct PrecisionArgs {
    /// The arithmetic of the frozen encoder's linear layers (the patch embedding, and
    /// attention's query/key/value and output and both MLP layers of every block): f32;
    /// bf16 (weights and inputs rounded to bfloat16, products summed in f32); int8
    /// (weights quantized to 8 bits per output channel at load, inputs to 16 bits per row,
    /// integer products rescaled to f32); int8-fast (7-bit weights, 8-bit inputs: more
    /// products per instruction, twice the weights' rounding error). Layer norm, softmax,
    /// attention and the residuals stay f32. bf16 and the int8s run on the CPU only. A
    /// model trained on f32 features may be run with any.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// One image named on the command line, with its label when it came from a data set.
pub struct Input {
    pub source: ImageSource,
    pub label: Option<Expression>,
}

/// Expands files, folders (recursively, image extensions only, sorted), glob patterns
/// and data-set specs (`kind:path[:opt=value]`) into a list of images.
pub fn resolve_inputs(inputs: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    for input in inputs {
        if gfer::data::is_spec(input) {
            let dataset = gfer::data::open(input, &Default::default())
                .with_context(|| format!("opening data set {input}"))?;
            out.extend(dataset.samples.into_iter().map(|s| Input {
                source: s.source,
                label: Some(s.label),
            }));
            continue;
        }
        let path = Path::new(input);
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = walkdir::WalkDir::new(path)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file() && gfer::image::has_image_extension(e.path()))
                .map(|e| e.into_path())
                .collect();
            files.sort();
            files
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else if input.contains(['*', '?', '[']) {
            let mut files: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("bad glob pattern {input}"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            anyhow::ensure!(!files.is_empty(), "the pattern {input} matches no file");
            files
        } else {
            anyhow::bail!(
                "{input}: no such file or folder (and not a data-set spec such as rafdb:/data/raf-basic)"
            );
        };
        out.extend(files.into_iter().map(|path| Input {
            source: ImageSource::File { path, crop: None },
            label: None,
        }));
    }
    Ok(out)
}

/// A flag raised by Ctrl-C (SIGINT/SIGTERM): long jobs finish their current step, save
/// and exit. A second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing the current step and saving (Ctrl-C again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// A progress bar on stderr with rate and time left (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left) {{msg}}"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// `K/N` for `--shard` and `--cell`: task K's part of N in a job array.
pub fn parse_shard(text: &str) -> Result<gfer::data::Shard, String> {
    text.parse().map_err(|e: gfer::Error| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        precision: PrecisionArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<DeviceChoice>, clap::Error> {
        let args = std::iter::once("gfer").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.device.device)
    }

    #[test]
    fn the_device_flag_parses_cpu_cuda_and_a_gpu_number() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(
            parse(&["--device", "cpu"]).unwrap(),
            Some(DeviceChoice::Cpu)
        );
        assert_eq!(
            parse(&["--device", "cuda"]).unwrap(),
            Some(DeviceChoice::Cuda(0))
        );
        assert_eq!(
            parse(&["--device=cuda:1"]).unwrap(),
            Some(DeviceChoice::Cuda(1))
        );
        let error = parse(&["--device", "tpu"]).unwrap_err().to_string();
        assert!(error.contains("expected cpu, cuda"), "{error}");
    }

    #[test]
    fn the_precision_flag_parses_its_names_and_defaults_to_f32() {
        let parse = |args: &[&str]| {
            let args = std::iter::once("gfer").chain(args.iter().copied());
            Cli::try_parse_from(args).map(|cli| cli.precision.precision)
        };
        assert_eq!(parse(&[]).unwrap(), Precision::F32);
        assert_eq!(parse(&["--precision", "f32"]).unwrap(), Precision::F32);
        assert_eq!(parse(&["--precision", "bf16"]).unwrap(), Precision::Bf16);
        assert_eq!(parse(&["--precision=int8"]).unwrap(), Precision::Int8);
        assert_eq!(
            parse(&["--precision", "int8-fast"]).unwrap(),
            Precision::Int8Fast
        );
        let error = parse(&["--precision", "fp16"]).unwrap_err().to_string();
        assert!(
            error.contains("invalid value 'fp16' for '--precision <PRECISION>'")
                && error.contains("[possible values: f32, bf16, int8, int8-fast]"),
            "{error}"
        );
    }

    #[test]
    fn without_the_flag_a_cpu_build_computes_on_the_cpu() {
        let device = DeviceArgs::default().device().unwrap();
        if !gfer::device::built_with_cuda() {
            assert!(device.is_cpu());
        }
        assert!(DeviceArgs {
            device: Some(DeviceChoice::Cpu)
        }
        .device()
        .unwrap()
        .is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_given_device_cuda_says_it_has_no_cuda() {
        let error = DeviceArgs {
            device: Some(DeviceChoice::Cuda(0)),
        }
        .device()
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("--device cuda:0: this gfer was built without CUDA"),
            "{message}"
        );
    }
}
