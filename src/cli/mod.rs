//! The `gfer` command line: one small file per subcommand, parsing and printing only;
//! the work happens in the library.

use clap::{Parser, Subcommand};

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
    Convert(convert::ConvertArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Convert(args) => convert::run(args),
    }
}
