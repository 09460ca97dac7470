//! `gfer domains build`: builds the offline demo's domains from the fetched assets.

use clap::{Args, Subcommand};
use gfer::data::Split;
use gfer::experiments::domains::{self, BuildOptions, DomainSummary};
use gfer::predict::Alignment;
use gfer::Expression;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct DomainsArgs {
    #[command(subcommand)]
    command: DomainsCommand,
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// Builds the cartoon-avatar, emoji (Noto, Twemoji, OpenMoji) and real-photo domains
    /// from the assets `scripts/fetch-assets emoji avatars ckplus photos` fetched, each as
    /// OUT/<domain>/manifest.csv beside its PNG images.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// The folder scripts/fetch-assets fetched into.
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    /// Where the domain folders go (replaced when they exist).
    #[arg(long, default_value = "assets/domains")]
    out: PathBuf,
    /// Cartoon avatars per class (split 70/15/15 into train/val/test).
    #[arg(long, default_value_t = 300)]
    avatars_per_class: usize,
    /// Seed of the avatars' random parts and colours.
    #[arg(long, default_value_t = 3407)]
    seed: u64,
    /// Width and height of every image, in pixels.
    #[arg(long, default_value_t = 128)]
    size: u32,
    /// The real photos' faces: found by MTCNN and aligned by their landmarks, as `gfer
    /// predict` does (its weights are fetched when missing), or `none` for fixed crops.
    #[arg(long, value_enum, default_value = "landmarks")]
    align: Alignment,
}

pub fn run(args: DomainsArgs) -> anyhow::Result<()> {
    match args.command {
        DomainsCommand::Build(args) => {
            let options = BuildOptions {
                assets: args.assets,
                out: args.out,
                avatars_per_class: args.avatars_per_class,
                seed: args.seed,
                size: args.size,
                align_photos: args.align == Alignment::Landmarks,
            };
            let start = Instant::now();
            let summaries = domains::build(&options)?;
            print!("{}", table(&summaries));
            println!(
                "built in {:.1} s; manifests: {}/<domain>/{}",
                start.elapsed().as_secs_f64(),
                options.out.display(),
                domains::MANIFEST
            );
            Ok(())
        }
    }
}

/// Domains x classes image counts, with each domain's split sizes.
fn table(summaries: &[DomainSummary]) -> String {
    let mut header = format!("{:<10}", "domain");
    for class in Expression::ALL {
        header.push_str(&format!(" {:>9}", class.name()));
    }
    header.push_str(&format!(" {:>6}  train/val/test", "total"));
    let mut lines = vec![header];
    for summary in summaries {
        let mut line = format!("{:<10}", summary.name);
        for count in summary.class_counts {
            line.push_str(&format!(" {count:>9}"));
        }
        let splits: Vec<String> = Split::ALL
            .iter()
            .map(|&split| summary.split_counts[split as usize].to_string())
            .collect();
        line.push_str(&format!(" {:>6}  {}", summary.total(), splits.join("/")));
        lines.push(line);
    }
    lines.join("\n") + "\n"
}
