//! `gfer protocol`: the cross-domain experiment of the paper in one command.

use anyhow::Context;
use clap::Args;
use gfer::data::Shard;
use gfer::experiments::protocol::{self, name_specs, MethodVariant, ProtocolConfig};
use gfer::model::classifier::Method;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Train on each source, test on every target: the paper's cross-domain table",
    long_about = "For every source data set and every method: trains on the source's train \
split (runs kept under OUT/runs/SOURCE/VARIANT, so a rerun continues where it stopped), \
evaluates on every target's test split (val when it has none), and writes OUT/table.md, \
table.csv and table.json (sources x targets, mean over all targets and over the unseen ones), \
OUT/per_class.md and, for every cell, OUT/cells/VARIANT/SOURCE__TARGET.{json,png} (metrics and \
a confusion-matrix image). Full and fast variants of a method can share one table \
(--method cafe:full,cafe:fast); each has its own run folder OUT/runs/SOURCE/VARIANT \
(e.g. cafe-full, cafe-fast, cafe-fast-resnet18). Name data sets with NAME=SPEC (e.g. \
raf=rafdb:/data/raf-basic); a target with the same name as the source counts as seen.

As a job array (Slurm, a Kubernetes Indexed Job), every task runs the same command on one \
shared OUT with --cell K/N: task K takes every N-th run (source x method, in the order given) \
from the K-th. The task that finishes last writes the tables; `gfer protocol --merge OUT` \
writes them from whatever has finished and lists what has not (exit status 1 while any run \
is missing or failed). A killed task resumes when run again."
)]
pub struct ProtocolArgs {
    /// Source data sets to train on (repeat the flag or separate with commas).
    #[arg(
        long = "source",
        required_unless_present = "merge",
        value_delimiter = ','
    )]
    sources: Vec<String>,
    /// Target data sets to test on.
    #[arg(
        long = "target",
        required_unless_present = "merge",
        value_delimiter = ','
    )]
    targets: Vec<String>,
    /// Methods to compare, side by side in one table, each as METHOD[:VARIANT]: `cafe`
    /// (the variant --fast selects: fast with --generator, else full), `cafe:full` (the
    /// authors' recipe), `cafe:fast` (fast mode with --generator), `cafe:fast:GENERATOR`
    /// (fast mode with GENERATOR: feature, resnet18, tokens:LAYER). E.g.
    /// `--method cafe:full,cafe:fast,cafe:fast:tokens:6,linear-probe:fast`. Rows are
    /// labelled METHOD:full, METHOD:fast or METHOD:fast:GENERATOR.
    #[arg(
        long = "method",
        value_delimiter = ',',
        default_value = "cafe",
        value_name = "METHOD[:full|:fast[:GENERATOR]]"
    )]
    methods: Vec<String>,
    /// Output folder.
    #[arg(long, required_unless_present = "merge")]
    out: Option<PathBuf>,
    /// In a job array: run only task K's part of N (every N-th run from the K-th).
    #[arg(long, value_name = "K/N", value_parser = super::parse_shard)]
    cell: Option<Shard>,
    /// Write the tables of the protocol in this folder from its finished runs, list the
    /// runs still missing or failed, and fail while any is.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["sources", "targets", "out", "cell"])]
    merge: Option<PathBuf>,
    /// Put the published numbers (paper Table 1) beside ours, with the difference.
    #[arg(long, value_parser = ["paper"])]
    reference: Option<String>,
    #[command(flatten)]
    train: super::train::TrainingFlags,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(args: ProtocolArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.merge {
        let merged = protocol::merge(out)?;
        return report(
            &merged,
            out,
            protocol::read_plan(out)?.reference_paper,
            true,
        );
    }
    let out = args.out.clone().context("--out is required")?;
    let device = args.device.device()?;
    let stop = super::stop_on_ctrl_c()?;
    let progress = super::progress_bar(0, "images");
    let default = args.train.fast.then_some(args.train.generator);
    let methods = args
        .methods
        .iter()
        .map(|m| MethodVariant::parse(m, default))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("--method {e}"))?;
    let cfg = ProtocolConfig {
        sources: name_specs(&args.sources),
        targets: name_specs(&args.targets),
        methods,
        base: args.train.config(String::new(), Method::Cafe),
        fast: args.train.fast_config(),
        out: out.clone(),
        reference_paper: args.reference.is_some(),
        cell: args.cell,
    };
    let merged = protocol::run(&cfg, &stop, &progress, &device)?;
    progress.finish_and_clear();
    report(&merged, &out, cfg.reference_paper, false)
}

/// The table when every run has finished; else what is still missing or failed, which is
/// an error for `--merge` and the normal state of a job array's early tasks.
fn report(
    merged: &protocol::Merged,
    out: &std::path::Path,
    reference: bool,
    incomplete_is_error: bool,
) -> anyhow::Result<()> {
    if merged.is_complete() {
        println!("{}", merged.table.markdown(reference));
        println!(
            "written: {0}/table.md, table.csv, table.json, per_class.md, cells/ (confusion images), runs/",
            out.display()
        );
        return Ok(());
    }
    for (run, why) in &merged.failed {
        eprintln!("failed: {run}: {why}");
    }
    for run in &merged.missing {
        eprintln!("missing: {run}");
    }
    eprintln!(
        "{} of {} runs finished; {}/table.md holds those. The task that finishes last writes the \
         whole table (or run gfer protocol --merge {}).",
        merged.table.rows.len(),
        merged.table.rows.len() + merged.missing.len() + merged.failed.len(),
        out.display(),
        out.display()
    );
    if incomplete_is_error {
        anyhow::bail!(
            "{} runs missing, {} failed",
            merged.missing.len(),
            merged.failed.len()
        );
    }
    Ok(())
}
