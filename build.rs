//! Finds the SeetaFace frontal model that the `rustface` crate ships inside its source
//! package (BSD-2-Clause, see NOTICES.md) and hands it to the compiler, so face detection
//! needs no download and the third-party file is not committed here; and records the git
//! commit gfer is built from, so that an installed binary writes it into every run folder
//! without a checkout beside it.

use std::path::PathBuf;
use std::process::Command;

const MODEL: &str = "rustface-0.1.7/model/seeta_fd_frontal_v1.0.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    record_revision();
    record_cuda_compute_cap();
    embed_seetaface_model();
}

/// `GFER_CUDA_COMPUTE_CAP`: the compute capability a CUDA build's kernels are built for
/// (candle-kernels reads `CUDA_COMPUTE_CAP`), so that gfer can refuse an older GPU with a
/// message instead of failing at the first kernel.
fn record_cuda_compute_cap() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
            println!("cargo:rustc-env=GFER_CUDA_COMPUTE_CAP={cap}");
        }
    }
}

/// `GFER_GIT_REVISION`: the commit of the checkout being built, empty outside one.
fn record_revision() {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=GFER_GIT_REVISION={revision}");
    // Built again when HEAD moves: HEAD itself, the branch it names, the packed refs.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn embed_seetaface_model() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("neither CARGO_HOME nor HOME is set: cannot find the rustface package");
    let registry = cargo_home.join("registry").join("src");
    let found = std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .map(|index| index.path().join(MODEL))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| {
            panic!(
                "the SeetaFace model {MODEL} was not found under {}; \
                 run `cargo fetch` (rustface 0.1.7 ships it in its package)",
                registry.display()
            )
        });
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&found, out.join("seeta_fd_frontal_v1.0.bin")).expect("copy the SeetaFace model");
}
