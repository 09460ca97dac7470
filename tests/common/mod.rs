//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file fetched by `scripts/fetch-assets` or generated at test time by
/// `scripts/make_reference.py` (both into the ignored `assets/` folder). When it is
/// missing the test is skipped with a message saying how to get it, unless
/// `GFER_REQUIRE_ASSETS=1` (set by CI), in which case the test fails.
pub fn asset(relative: &str, how_to_get_it: &str) -> Option<PathBuf> {
    let path = root().join("assets").join(relative);
    if path.exists() {
        return Some(path);
    }
    let message = format!("assets/{relative} is missing; {how_to_get_it}");
    if std::env::var("GFER_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("{message} (GFER_REQUIRE_ASSETS=1, so this is an error)");
    }
    eprintln!("SKIP: {message}");
    None
}

/// A committed fixture under tests/fixtures/.
pub fn fixture(relative: &str) -> PathBuf {
    let path = root().join("tests/fixtures").join(relative);
    assert!(
        Path::new(&path).exists(),
        "missing committed fixture {}; regenerate with scripts/make_reference.py",
        path.display()
    );
    path
}
