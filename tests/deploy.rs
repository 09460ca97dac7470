//! The job files in deploy/: the Slurm array script and the Kubernetes Indexed Job. Each
//! is run here as its scheduler would run task 5, with a stand-in `gfer` that records its
//! arguments; the recorded command must be one the real `gfer protocol` accepts (it then
//! stops at the missing data sets, not at its arguments), and its `--cell` must split the
//! runs as the file's array size says. The manifest is also checked against Kubernetes's
//! schema, offline.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The 5 sources x 8 methods of the paper's table with its ablations.
const RUNS: usize = 40;

/// A stand-in `gfer` in `dir` that writes its arguments, one per line, to `args.txt`.
fn recording_gfer(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("gfer");
    let record = dir.join("args.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The recorded arguments, with the output folder moved into `dir`.
fn recorded_args(dir: &Path, out: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("args.txt")).expect("the job ran gfer");
    let moved = dir.join("out").display().to_string();
    text.lines()
        .map(|arg| {
            if arg == out {
                moved.clone()
            } else {
                arg.to_string()
            }
        })
        .collect()
}

/// The real `gfer` accepts the arguments: it fails on the missing data, not on them.
fn assert_gfer_accepts(args: &[String], cell: &str) {
    assert_eq!(args[0], "protocol", "{args:?}");
    let at = args.iter().position(|a| a == "--cell").expect("--cell");
    assert_eq!(args[at + 1], cell, "{args:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "not a usage error: {stderr}");
    assert!(
        stderr.contains("RAF-DB/basic"),
        "fails on the data: {stderr}"
    );
}

#[test]
fn the_slurm_array_script_runs_one_protocol_cell_per_task() {
    let script = common::root().join("deploy/slurm/protocol.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Slurm reads #SBATCH lines up to the first command, each `#SBATCH --option[=value]`.
    let header: Vec<&str> = text
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with('#'))
        .filter(|l| l.starts_with("#SBATCH"))
        .collect();
    let all = text.lines().filter(|l| l.starts_with("#SBATCH")).count();
    assert_eq!(
        header.len(),
        all,
        "an #SBATCH line after the first command is ignored"
    );
    for line in &header {
        let option = line.trim_start_matches("#SBATCH").trim();
        assert!(option.starts_with("--") && !option.contains(' '), "{line}");
    }
    assert!(header.contains(&"#SBATCH --array=0-39"), "{header:?}");
    assert!(header.iter().any(|l| l.starts_with("#SBATCH --gres=gpu:")));

    let dir = tempfile::tempdir().unwrap();
    let gfer = recording_gfer(dir.path());
    let run = Command::new("bash")
        .arg(&script)
        .env("GFER", &gfer)
        .env("SLURM_ARRAY_TASK_ID", "5")
        .env("SLURM_ARRAY_TASK_COUNT", RUNS.to_string())
        .env("OUT", "/job/out")
        .env("DATA", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_gfer_accepts(&recorded_args(dir.path(), "/job/out"), &format!("5/{RUNS}"));
}

#[test]
fn the_kubernetes_indexed_job_runs_one_protocol_cell_per_pod() {
    let manifest = common::root().join("deploy/kubernetes/protocol-job.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    for line in [
        "kind: Job",
        "completionMode: Indexed",
        &format!("completions: {RUNS}"),
        "nvidia.com/gpu: \"1\"",
        "mountPath: /shared",
    ] {
        assert!(text.contains(line), "the manifest lacks `{line}`");
    }
    // Kubernetes's own schema, offline (kubectl's client dry run needs an API server).
    let validator = common::root().join(".venv/bin/kubernetes-validate");
    if validator.exists() {
        let check = Command::new(&validator)
            .arg("--strict")
            .arg(&manifest)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stdout).to_string()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{said}");
    } else {
        common::missing(
            ".venv/bin/kubernetes-validate",
            "run scripts/setup-python (it checks the manifest against Kubernetes's schema)",
        );
    }

    // The container's command, as the Pod of index 5 runs it.
    let script: String = text
        .split("            - |\n")
        .nth(1)
        .expect("a `- |` script under args")
        .lines()
        .take_while(|l| l.starts_with("              "))
        .map(|l| format!("{}\n", &l[14..]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let gfer = recording_gfer(dir.path());
    let path = format!(
        "{}:{}",
        gfer.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("sh")
        .args(["-c", &script])
        .env("PATH", path)
        .env("JOB_COMPLETION_INDEX", "5")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_gfer_accepts(
        &recorded_args(dir.path(), "/shared/table1"),
        &format!("5/{RUNS}"),
    );
}
