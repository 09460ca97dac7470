//! The protocol's tables, merged from the cells its runs wrote: `table.md`, `table.csv`,
//! `table.json` and `per_class.md`, in the fixed order of the runs, from every run whose
//! cells are all there; the others are listed as failed (their run folder holds
//! `failed.txt`) or missing (not run yet, or still running). One process or many (a job
//! array, `--cell K/N`) give the same files, byte for byte: both merge from the cells.

use crate::error::{Error, Result};
use crate::eval::table::{AccuracyTable, TableRow};
use crate::experiments::protocol::cells::{self, Cell};
use crate::experiments::protocol::{read_plan, runs, ProtocolConfig, Run, FAILED};
use crate::formats::{write_file_atomically, FileLock};
use std::path::Path;

/// What a merge found.
pub struct Merged {
    /// The table of the finished runs.
    pub table: AccuracyTable,
    /// Runs not finished and not failed, as `METHOD on SOURCE`.
    pub missing: Vec<String>,
    /// Failed runs, as `METHOD on SOURCE`, with the error their task recorded.
    pub failed: Vec<(String, String)>,
}

impl Merged {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.failed.is_empty()
    }
}

/// Merges the protocol in the folder `out` (as `gfer protocol --merge OUT`).
pub fn merge(out: &Path) -> Result<Merged> {
    merge_plan(&read_plan(out)?)
}

/// Merges and writes the tables of a protocol. Merges run one at a time, so the last task
/// to merge sees every cell written before it.
pub fn merge_plan(cfg: &ProtocolConfig) -> Result<Merged> {
    let _merging = FileLock::acquire(&cfg.out.join("table.json"), "merge")?;
    let targets: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
    let target_kinds: Vec<String> = cfg.targets.iter().map(|t| t.kind().to_string()).collect();
    let mut merged = Merged {
        table: AccuracyTable {
            targets,
            target_kinds,
            rows: Vec::new(),
        },
        missing: Vec::new(),
        failed: Vec::new(),
    };
    let mut per_class = String::from("# Per-class accuracy (recall, %) of every cell\n\n");
    for run in runs(cfg) {
        match read_run_cells(cfg, &run)? {
            Some(cells) => {
                let accuracy = cells.iter().map(|c| c.metrics.accuracy).collect();
                cells
                    .iter()
                    .for_each(|c| per_class.push_str(&c.per_class_section()));
                merged.table.rows.push(TableRow::new(
                    run.variant.label(),
                    run.source.name.clone(),
                    run.source.kind().to_string(),
                    accuracy,
                    &merged.table.target_kinds,
                ));
            }
            None => {
                let failed = run.dir(cfg).join(FAILED);
                match std::fs::read_to_string(&failed) {
                    Ok(why) => merged.failed.push((run.describe(), why.trim().to_string())),
                    Err(_) => merged.missing.push(run.describe()),
                }
            }
        }
    }
    write_tables(cfg, &merged.table, &per_class)?;
    Ok(merged)
}

/// Every target's cell of a run, in target order; `None` until all are there.
fn read_run_cells(cfg: &ProtocolConfig, run: &Run) -> Result<Option<Vec<Cell>>> {
    let mut cells = Vec::with_capacity(cfg.targets.len());
    for target in &cfg.targets {
        let stem = cells::cell_stem(&cfg.out, run.variant, &run.source.name, &target.name);
        match cells::read_cell(&stem)? {
            Some(cell) => cells.push(cell),
            None => return Ok(None),
        }
    }
    Ok(Some(cells))
}

/// `table.md`, `table.csv`, `table.json` and `per_class.md`; with the paper's numbers
/// asked for, a warning naming the data sets the paper did not use.
fn write_tables(cfg: &ProtocolConfig, table: &AccuracyTable, per_class: &str) -> Result<()> {
    let (out, reference) = (&cfg.out, cfg.reference_paper);
    let unmatched = table.unmatched_by_paper();
    if reference && !unmatched.is_empty() {
        tracing::warn!(
            "--reference paper: the paper has no numbers for {} (it used rafdb, ferplus, \
             affectnet, sfew and mma); their cells show ours alone",
            unmatched.join(", ")
        );
    }
    write_file_atomically(&out.join("table.md"), table.markdown(reference).as_bytes())?;
    write_file_atomically(&out.join("table.csv"), table.csv(reference).as_bytes())?;
    let json = serde_json::to_vec_pretty(table)
        .map_err(|e| Error::internal(format!("table.json: {e}")))?;
    write_file_atomically(&out.join("table.json"), &json)?;
    write_file_atomically(&out.join("per_class.md"), per_class.as_bytes())
}
