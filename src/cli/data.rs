//! `gfer data stats` and `gfer data check`.

use anyhow::Context;
use clap::{Args, Subcommand};
use gfer::data::check::{check, CheckReport};
use gfer::data::stats::{stats, Stats};
use gfer::data::{kinds_help, LoadOptions};
use gfer::image::DecodeLimits;
use gfer::Expression;

#[derive(Args)]
#[command(after_help = kinds_help())]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Counts per split and class, images dropped and why, image sizes and colour modes.
    #[command(after_help = kinds_help())]
    Stats {
        /// The data set, KIND:PATH[:key=value...], e.g. rafdb:/data/raf-basic.
        spec: String,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// List label lines that do not parse instead of stopping at the first.
        #[arg(long)]
        skip_bad_lines: bool,
    },
    /// Images that do not decode, exact duplicates within and across data sets (by a hash
    /// of the decoded pixels), missing images and label lines that do not parse.
    #[command(after_help = kinds_help())]
    Check {
        /// One or more data sets, KIND:PATH[:key=value...].
        #[arg(required = true)]
        specs: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Stats {
            spec,
            json,
            skip_bad_lines,
        } => {
            let options = LoadOptions { skip_bad_lines };
            let dataset = gfer::data::open(&spec, &options)?;
            let stats = stats(&dataset);
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", stats_table(&stats));
            }
        }
        DataCommand::Check { specs, json } => {
            // Every bad line is worth listing here, not just the first.
            let options = LoadOptions {
                skip_bad_lines: true,
            };
            let datasets = specs
                .iter()
                .map(|spec| {
                    gfer::data::open(spec, &options).with_context(|| format!("reading {spec}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let report = check(&datasets, &DecodeLimits::default());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_text(&report));
            }
        }
    }
    Ok(())
}

fn stats_table(stats: &Stats) -> String {
    let mut out = format!("{} ({})\n", stats.spec, stats.kind);
    for note in &stats.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    let mut header = format!("{:<6}", "split");
    for expression in Expression::ALL {
        header.push_str(&format!(" {:>9}", expression.name()));
    }
    out.push_str(&format!("{header} {:>9}\n", "total"));
    for (split, s) in &stats.splits {
        let mut row = format!("{:<6}", split.name());
        for count in s.counts.0 {
            row.push_str(&format!(" {count:>9}"));
        }
        out.push_str(&format!("{row} {:>9}\n", s.total));
    }
    for (split, s) in &stats.splits {
        let list = |map: &std::collections::BTreeMap<String, usize>| {
            map.iter()
                .map(|(key, n)| format!("{key} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !s.dropped.is_empty() {
            out.push_str(&format!("{split}: dropped: {}\n", list(&s.dropped)));
        }
        out.push_str(&format!("{split}: sizes: {}\n", most_common(&s.sizes, 5)));
        out.push_str(&format!("{split}: colour: {}\n", list(&s.colour)));
        for unreadable in &s.unreadable {
            out.push_str(&format!("{split}: unreadable: {unreadable}\n"));
        }
    }
    if !stats.bad_lines.is_empty() {
        out.push_str(&format!(
            "{} label lines did not parse and were skipped:\n",
            stats.bad_lines.len()
        ));
        for line in &stats.bad_lines {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// The `shown` most frequent entries (`key n`), then how many others there are: data
/// sets of uncropped photos have thousands of sizes.
fn most_common(map: &std::collections::BTreeMap<String, usize>, shown: usize) -> String {
    let mut entries: Vec<(&String, &usize)> = map.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut text = entries
        .iter()
        .take(shown)
        .map(|(key, n)| format!("{key} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if entries.len() > shown {
        let rest: usize = entries[shown..].iter().map(|(_, n)| **n).sum();
        text.push_str(&format!(
            " and {} other sizes ({rest} images)",
            entries.len() - shown
        ));
    }
    text
}

fn check_text(report: &CheckReport) -> String {
    let mut out = String::new();
    for set in &report.sets {
        out.push_str(&format!(
            "{}: {} images, {} missing, {} unreadable, {} label lines that do not parse\n",
            set.spec,
            set.samples,
            set.missing.len(),
            set.unreadable.len(),
            set.bad_lines.len()
        ));
        for missing in &set.missing {
            out.push_str(&format!("  missing: {missing}\n"));
        }
        for unreadable in &set.unreadable {
            out.push_str(&format!("  unreadable: {unreadable}\n"));
        }
        for line in &set.bad_lines {
            out.push_str(&format!("  bad line: {line}\n"));
        }
    }
    let within = report.within_set().count();
    let across = report.across_sets().count();
    out.push_str(&format!(
        "duplicates: {within} groups within a data set, {across} groups across data sets\n"
    ));
    for group in &report.duplicates {
        let mut kinds = Vec::new();
        if group.within_set {
            kinds.push("within a set");
        }
        if group.across_sets {
            kinds.push("across sets");
        }
        if group.labels_differ {
            kinds.push("LABELS DIFFER");
        }
        out.push_str(&format!(
            "  {} ({}):\n",
            &group.hash[..16],
            kinds.join(", ")
        ));
        for copy in &group.copies {
            out.push_str(&format!(
                "    {} {} {} {}\n",
                copy.spec, copy.split, copy.label, copy.image
            ));
        }
    }
    if report.is_clean() {
        out.push_str("no problems found\n");
    }
    out
}
