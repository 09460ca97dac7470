//! The `gfer` command line: one small file per subcommand, parsing and printing only;
//! the work happens in the library.
//!
//! In the layers: the top; it is the binary's, not the library's.

use clap::{Parser, Subcommand};

mod assets;
pub mod bench;
mod common;
pub mod data;
mod demo;
pub mod domains;
mod eval;
mod extract;
pub mod predict;
mod protocol;
pub mod serve;
mod train;

pub use common::*;
mod convert;

#[derive(Parser)]
#[command(
    name = "gfer",
    version,
    about = "Generalizable facial expression recognition (CAFE, ECCV 2024)",
    long_about = "gfer trains and runs CAFE: a frozen general image encoder (CLIP, DINOv2) \
whose feature channels are selected per image by a learned sigmoid mask, so that an \
expression classifier trained on one data set holds up on others."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fetch the pinned third-party files of the demo and the tests (`gfer assets fetch`).
    Assets(assets::AssetsArgs),
    /// Inspect data sets: counts, drops, sizes (`stats`); duplicates, unreadable images (`check`).
    Data(data::DataArgs),
    /// The built-in offline demonstration, end to end (README's first command).
    Demo(demo::DemoArgs),
    /// Frozen encoder features of images to a safetensors file.
    Extract(extract::ExtractArgs),
    /// Train CAFE (or a baseline) on one data set.
    Train(train::TrainArgs),
    /// Evaluate a model bundle on data sets.
    Eval(eval::EvalArgs),
    /// Train on each source, test on every target: the paper's cross-domain table.
    Protocol(protocol::ProtocolArgs),
    /// Measure throughput (`gfer bench encode`: images/s of the frozen encoders).
    Bench(bench::BenchArgs),
    /// Builds the offline demo's domains (cartoon avatars, emoji of three artists, real photos).
    Domains(domains::DomainsArgs),
    /// Convert the DINOv2 backbone of an ONNX export to a gfer encoder checkpoint.
    Convert(convert::ConvertArgs),
    /// Find the faces in photos and predict their expressions.
    Predict(predict::PredictArgs),
    /// Serve predictions over HTTP.
    Serve(serve::ServeArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    choose_kernel(&cli.command)?;
    match cli.command {
        Command::Assets(args) => assets::run(args),
        Command::Data(args) => data::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Extract(args) => extract::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Protocol(args) => protocol::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Domains(args) => domains::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Fixes the matrix kernel before any product: `gfer bench encode --kernel`, else
/// `GFER_MATMUL`, else the one `auto` picks for this CPU.
fn choose_kernel(command: &Command) -> anyhow::Result<()> {
    let request = match command {
        Command::Bench(bench::BenchArgs {
            what: bench::BenchCommand::Encode(args),
        }) => args.kernel,
        _ => None,
    };
    let kernel = gfer::kernels::choose_matmul_kernel(request)?;
    let variable = gfer::kernels::KERNEL_VARIABLE;
    let why = match (request, std::env::var(variable)) {
        (Some(_), _) => "--kernel".to_string(),
        (None, Ok(value)) => format!("{variable}={value}"),
        (None, Err(_)) => format!("auto for this CPU; {variable} picks another"),
    };
    tracing::info!("matrix products on the {} kernel ({why})", kernel.name());
    Ok(())
}
