//! `gfer predict`: expressions of the faces in photos, as JSON lines, CSV or a table.

use anyhow::Context;
use clap::Args;
use gfer::data::Shard;
use gfer::detect::{DetectorKind, DetectorOptions};
use gfer::image::DecodeLimits;
use gfer::predict::inputs::{self, Input};
use gfer::predict::output::{ImageResult, OutputFormat, PredictionWriter};
use gfer::predict::run::{predict_inputs, RunOptions, RunSummary};
use gfer::predict::video::{is_video, predict_video, VideoOptions};
use gfer::predict::{Alignment, PredictOptions, Predictor};
use std::io::IsTerminal;
use std::path::PathBuf;

/// The trained model: a bundle and the frozen encoder's weights it was trained on.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model bundle written by `gfer train` (.safetensors).
    #[arg(long, value_name = "BUNDLE")]
    pub model: PathBuf,
    /// The frozen encoder weights the model was trained on (not needed by models that
    /// read no frozen feature).
    #[arg(long, value_name = "ENCODER")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

/// How faces are found and batched.
#[derive(Args, Debug)]
pub struct FaceArgs {
    /// Take each image as one face instead of detecting faces (for face crops).
    #[arg(long)]
    pub no_detect: bool,
    /// Face detector: mtcnn (small and turned faces, five landmarks; its weights are
    /// fetched from PyPI's facenet-pytorch on first use) or seetaface (built in, boxes
    /// only).
    #[arg(long, value_enum, default_value = "mtcnn")]
    pub detector: DetectorKind,
    /// The score a face needs: MTCNN's probability [default: 0.9], SeetaFace's cascade
    /// score [default: 2.0].
    #[arg(long, value_name = "SCORE")]
    pub det_threshold: Option<f32>,
    /// landmarks: turn each face upright by its five landmarks, as the aligned training
    /// sets were made (MTCNN); none: the square crop around the box.
    #[arg(long, value_enum, default_value = "landmarks")]
    pub align: Alignment,
    /// The assets folder MTCNN's weights are read from, and fetched into
    /// [default: $GFER_ASSETS, else ./assets].
    #[arg(long, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// Margin around a detected face on every side, as a fraction of its size, before the
    /// square crop the model sees.
    #[arg(long, default_value_t = PredictOptions::default().crop_margin, value_name = "FRACTION")]
    pub margin: f32,
    /// Skip (and count) detected faces smaller than this many pixels.
    #[arg(long, default_value_t = PredictOptions::default().min_face_size, value_name = "PIXELS")]
    pub min_face: u32,
    /// Most faces per forward pass.
    #[arg(long, default_value_t = PredictOptions::default().batch_size)]
    pub batch_size: usize,
}

impl FaceArgs {
    pub fn options(&self) -> PredictOptions {
        PredictOptions {
            detect: !self.no_detect,
            detector: DetectorOptions {
                kind: self.detector,
                threshold: self.det_threshold,
                assets: self
                    .assets
                    .clone()
                    .unwrap_or_else(gfer::assets::default_dir),
            },
            align: self.align,
            crop_margin: self.margin,
            min_face_size: self.min_face,
            batch_size: self.batch_size,
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
Output: one record per face (path, box, probability of each class, top label), one per \
photo without a face (status no_face) and one per photo that could not be read (status \
error, also reported on stderr). The exit status is 1 if any input failed.

Examples:
  gfer predict --model cafe.safetensors --weights clip.safetensors photos/ > faces.jsonl
  cat photo.jpg | gfer predict --model cafe.safetensors --weights clip.safetensors -
  gfer predict ... --shard $JOB_COMPLETION_INDEX/8 'photos/**/*.jpg' > part-$JOB_COMPLETION_INDEX.jsonl")]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub faces: FaceArgs,
    /// Image files, folders (searched recursively), glob patterns, `-` for image bytes on
    /// stdin, or videos (anything ffmpeg reads: .mp4, .mkv, .webm, ...; a device with
    /// --input-format).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<String>,
    /// Videos: the frames per second to take [default: every frame].
    #[arg(long, value_name = "N")]
    pub fps: Option<f64>,
    /// ffmpeg's input format for a device, e.g. `v4l2` for a webcam at /dev/video0 (every
    /// input is then read as a video).
    #[arg(long, value_name = "FORMAT")]
    pub input_format: Option<String>,
    /// Videos: link each face to the face of the previous frame it overlaps most (a
    /// `track` number) and smooth its probabilities along the track.
    #[arg(long)]
    pub track: bool,
    /// With --track: the weight of a frame's own probabilities in the moving average
    /// (1: no smoothing).
    #[arg(long, default_value_t = 0.5, value_name = "WEIGHT")]
    pub smooth: f32,
    /// jsonl, csv or table [default: table on a terminal, jsonl otherwise].
    #[arg(long, value_parser = parse_format)]
    pub format: Option<OutputFormat>,
    /// Also write a copy of every photo with its faces' boxes and labels under DIR; a video
    /// is written back as DIR/<name>.mp4, or to the path itself when it names one video
    /// file (e.g. --draw out.mp4 for one video input).
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
    /// Process only the K-th (from 0) of N equal parts of the sorted inputs.
    #[arg(long, value_name = "K/N", value_parser = super::parse_shard)]
    pub shard: Option<Shard>,
    /// Refuse images with more pixels than this (protects memory).
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS, value_name = "PIXELS")]
    pub max_pixels: u64,
}

fn parse_format(text: &str) -> Result<OutputFormat, String> {
    text.parse().map_err(|err: gfer::Error| err.to_string())
}

/// The model behind `--model` and `--weights` as a predictor: the one place `predict`
/// and `serve` load it.
pub fn load_predictor(model: &ModelArgs, options: PredictOptions) -> anyhow::Result<Predictor> {
    let device = model.device.device()?;
    Predictor::from_bundle(
        &model.model,
        model.weights.as_deref(),
        model.precision.precision,
        &device,
        options,
    )
    .with_context(|| format!("loading {}", model.model.display()))
}

/// Each video's frames, as records with their frame and time; a video that fails is
/// recorded (and on stderr) and the others go on.
fn predict_videos<W: std::io::Write>(
    args: &PredictArgs,
    predictor: &Predictor,
    videos: &[Input],
    writer: &mut PredictionWriter<W>,
    summary: &mut RunSummary,
) -> gfer::Result<()> {
    for input in videos {
        let Input::File(path) = input else { continue };
        let draw = args
            .draw
            .as_ref()
            .map(|draw| match (is_video(draw), videos.len()) {
                (true, 1) => draw.clone(),
                _ => draw.join(format!(
                    "{}.mp4",
                    path.file_stem().unwrap_or_default().to_string_lossy()
                )),
            });
        let options = VideoOptions {
            fps: args.fps,
            input_format: args.input_format.clone(),
            track: args.track,
            smoothing: args.smooth,
            draw,
            frames_per_step: args.faces.batch_size.clamp(1, 16),
        };
        let source = path.display().to_string();
        match predict_video(predictor, &source, &options, writer) {
            Ok(video) => {
                summary.images += video.frames;
                summary.faces += video.faces;
                summary.images_without_face += video.frames_without_face;
                if let Some(why) = video.failed {
                    eprintln!("{source}: {why}");
                    summary.failed.push((source, why));
                }
            }
            Err(gfer::Error::Io { source: e, .. })
                if e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Err(gfer::Error::io("stdout", e))
            }
            Err(e) => {
                eprintln!("{source}: {e}");
                writer.write(&ImageResult {
                    source: source.clone(),
                    frame: None,
                    outcome: Err(e.to_string()),
                })?;
                summary.failed.push((source, e.to_string()));
            }
        }
    }
    Ok(())
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let collected = inputs::collect(&args.inputs);
    for (argument, reason) in &collected.missing {
        eprintln!("{argument}: {reason}");
    }
    let selected = match args.shard {
        Some(shard) => shard.select(&collected.inputs),
        None => collected.inputs,
    };
    let predictor = load_predictor(&args.model, args.faces.options())?;

    let stdout = std::io::stdout();
    let format = args.format.unwrap_or(if stdout.is_terminal() {
        OutputFormat::Table
    } else {
        OutputFormat::Jsonl
    });
    let mut writer = PredictionWriter::new(format, predictor.class_names(), stdout.lock());
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.smooth) && args.smooth > 0.0,
        "--smooth is a weight in (0, 1], got {}",
        args.smooth
    );
    let (videos, photos): (Vec<Input>, Vec<Input>) = selected.into_iter().partition(
        |input| matches!(input, Input::File(path) if args.input_format.is_some() || is_video(path)),
    );
    let options = RunOptions {
        limits: DecodeLimits {
            max_pixels: args.max_pixels,
        },
        draw_dir: args.draw.clone(),
        progress: std::io::stderr().is_terminal(),
        images_per_step: args.faces.batch_size.clamp(1, 16),
    };
    let finished =
        predict_inputs(&predictor, &photos, &options, &mut writer).and_then(|mut summary| {
            predict_videos(&args, &predictor, &videos, &mut writer, &mut summary)?;
            writer.finish().map(|_| summary)
        });
    let summary = match finished {
        // The reader went away (`gfer predict ... | head`): stop quietly, like other tools.
        Err(gfer::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(())
        }
        other => other?,
    };

    let failed = summary.failed.len() + collected.missing.len();
    eprintln!(
        "{} images: {} faces, {} without a face, {} faces too small, {} failed",
        summary.images, summary.faces, summary.images_without_face, summary.faces_too_small, failed
    );
    if failed > 0 {
        anyhow::bail!("{failed} inputs failed (listed above)");
    }
    Ok(())
}
