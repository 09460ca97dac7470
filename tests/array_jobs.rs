//! The protocol, feature extraction and fast mode's cache as job arrays: several `gfer`
//! processes on one shared folder, each with its part (`--cell K/N`, `--shard K/N`), give
//! what one process gives; a killed task resumes; a merge names what is missing.

use crate::common;
use gfer::backbone::features::FeatureSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

fn gfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gfer"))
}

fn succeed(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{what} failed: {stderr}");
    stderr
}

/// Two generated data sets in two formats, as `NAME=SPEC`.
fn two_datasets(dir: &Path) -> (String, String) {
    common::write_folder_dataset(&dir.join("a"), 6, 3);
    let manifest = common::write_manifest_dataset(&dir.join("b"), 6, 3);
    (
        format!("faces=folder:{}", dir.join("a").display()),
        format!("listed=manifest:{}", manifest.display()),
    )
}

/// `gfer protocol` with 2 sources x 2 methods in fast mode on the tiny CLIP, into `out`.
fn protocol(data: &(String, String), out: &Path, cell: Option<&str>) -> Command {
    let mut command = gfer();
    command
        .args(["protocol", "--source", &data.0, "--source", &data.1])
        .args(["--target", &data.0, "--target", &data.1])
        .args(["--method", "cafe:fast,linear-probe:fast", "--weights"])
        .arg(common::tiny_clip())
        .args(["--epochs", "3", "--batch-size", "8", "--lr", "2e-3"])
        .args(["--views", "2", "--mlp-hidden", "--out"])
        .arg(out);
    if let Some(cell) = cell {
        command.args(["--cell", cell]);
    }
    command
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files one process and a job array must agree on, byte for byte.
fn tables(out: &Path) -> [String; 3] {
    ["table.json", "table.md", "per_class.md"].map(|name| read(out.join(name)))
}

#[test]
fn protocol_tasks_on_one_folder_give_the_single_process_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = two_datasets(dir.path());
    let single = dir.path().join("single");
    succeed(
        protocol(&data, &single, None).output().unwrap(),
        "one process",
    );

    // Four tasks at once on one folder: the caches and the merge are shared.
    let shared = dir.path().join("shared");
    let tasks: Vec<Child> = (0..4)
        .map(|k| {
            protocol(&data, &shared, Some(&format!("{k}/4")))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a task")
        })
        .collect();
    for (k, task) in tasks.into_iter().enumerate() {
        succeed(task.wait_with_output().unwrap(), &format!("task {k}/4"));
    }
    assert_eq!(tables(&shared), tables(&single));
    let merge = gfer()
        .args(["protocol", "--merge"])
        .arg(&shared)
        .output()
        .unwrap();
    succeed(merge, "--merge of a finished protocol");
    assert_eq!(tables(&shared), tables(&single));

    // Half the runs: --merge fails, naming the other half.
    let halves = dir.path().join("halves");
    succeed(
        protocol(&data, &halves, Some("0/2")).output().unwrap(),
        "task 0/2",
    );
    let merge = gfer()
        .args(["protocol", "--merge"])
        .arg(&halves)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&merge.stderr);
    assert_eq!(merge.status.code(), Some(1), "{stderr}");
    // Runs in order: cafe:fast on faces, linear-probe:fast on faces, then on listed.
    for missing in ["linear-probe:fast on faces", "linear-probe:fast on listed"] {
        assert!(stderr.contains(&format!("missing: {missing}")), "{stderr}");
    }
    assert!(!stderr.contains("missing: cafe:fast"), "{stderr}");

    // The other half, killed as soon as its first cell is written, then run again.
    let mut task = protocol(&data, &halves, Some("1/2"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start task 1/2");
    let first_cell = halves.join("cells/linear-probe-fast/faces__faces.json");
    while !first_cell.exists() {
        assert!(task.try_wait().unwrap().is_none(), "task 1/2 ended early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    task.kill().expect("kill task 1/2");
    task.wait().unwrap();
    let merge = gfer()
        .args(["protocol", "--merge"])
        .arg(&halves)
        .output()
        .unwrap();
    assert_eq!(
        merge.status.code(),
        Some(1),
        "the killed task left a run to do"
    );
    succeed(
        protocol(&data, &halves, Some("1/2")).output().unwrap(),
        "task 1/2 again",
    );
    assert_eq!(tables(&halves), tables(&single));

    // A task with another configuration is refused.
    let mut other = protocol(&data, &halves, Some("0/2"));
    other.args(["--seed", "7"]);
    let output = other.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("protocol.json records another configuration"),
        "{stderr}"
    );
}

#[test]
fn sharded_extraction_gathers_into_the_unsharded_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("faces"), 3, 2);
    let extract = |out: &Path, shard: Option<&str>| {
        let mut command = gfer();
        command
            .args(["extract", "--batch-size", "4", "--weights"])
            .arg(common::tiny_clip())
            .arg("--out")
            .arg(out)
            .arg(dir.path().join("faces"));
        if let Some(shard) = shard {
            command.args(["--shard", shard]);
        }
        succeed(command.output().unwrap(), "gfer extract")
    };
    let whole = dir.path().join("whole.safetensors");
    extract(&whole, None);
    let parts = dir.path().join("parts.safetensors");
    let tasks: Vec<_> = ["0/3", "1/3", "2/3"]
        .map(|shard| {
            let (parts, dir) = (parts.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let output = gfer()
                    .args(["extract", "--batch-size", "4", "--weights"])
                    .arg(common::tiny_clip())
                    .arg("--out")
                    .arg(&parts)
                    .arg(dir.join("faces"))
                    .args(["--shard", shard])
                    .output()
                    .unwrap();
                succeed(output, shard);
            })
        })
        .into();
    for task in tasks {
        task.join().expect("shard task");
    }
    let shard = FeatureSet::load(&dir.path().join("parts.shard-1-of-3.safetensors")).unwrap();
    assert_eq!(shard.len(), 12, "every third of 35 images, from the second");
    let stderr = extract(&parts, None);
    assert!(stderr.contains(": 0 encoded, 35 already there"), "{stderr}");
    let (whole, parts) = (
        FeatureSet::load(&whole).unwrap(),
        FeatureSet::load(&parts).unwrap(),
    );
    assert_eq!(whole.rows, parts.rows);
    assert_eq!(whole.values, parts.values);
}

#[test]
fn the_feature_cache_built_in_parts_is_the_one_training_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("faces"), 4, 2);
    let spec = format!("folder:{}", dir.path().join("faces").display());
    let cache = dir.path().join("cache");
    let train = || {
        let mut command = gfer();
        command
            .args(["train", "--fast", "--data", &spec, "--weights"])
            .arg(common::tiny_clip())
            .args(["--epochs", "1", "--views", "3", "--cache"])
            .arg(&cache);
        command
    };
    let parts: Vec<Child> = ["0/2", "1/2"]
        .map(|shard| {
            train()
                .args(["--cache-only", "--shard", shard])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a part")
        })
        .into();
    for part in parts {
        let output = part.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        succeed(output, "--cache-only --shard");
        assert!(
            stdout.contains("0 reused"),
            "each part encodes its own images: {stdout}"
        );
    }
    let mut run = train();
    run.arg("--out").arg(dir.path().join("run"));
    let stderr = succeed(run.output().unwrap(), "training on the cache");
    assert!(
        stderr.contains("clean views 0 encoded, 42 reused; augmented views 0 encoded, 28 reused"),
        "{stderr}"
    );
}
