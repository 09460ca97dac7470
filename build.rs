//! Finds the SeetaFace frontal model that the `rustface` crate ships inside its source
//! package (BSD-2-Clause, see NOTICES.md) and hands it to the compiler, so face detection
//! needs no download and the third-party file is not committed here.

use std::path::PathBuf;

const MODEL: &str = "rustface-0.1.7/model/seeta_fd_frontal_v1.0.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
