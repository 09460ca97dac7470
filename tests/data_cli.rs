//! `gfer data stats` and `gfer data check`, run as the binary on the committed fixture
//! data sets (scripts/reference/datasets.py).

use crate::common;

use serde_json::Value;
use std::process::{Command, Output};

fn fixture_spec(kind: &str, name: &str) -> String {
    format!(
        "{kind}:{}",
        common::fixture(&format!("datasets/{name}")).display()
    )
}

fn gfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the gfer binary runs")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "gfer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

const CLASSES: [&str; 7] = [
    "surprise",
    "fear",
    "disgust",
    "happiness",
    "sadness",
    "anger",
    "neutral",
];

fn class_counts(split: &Value) -> Vec<u64> {
    let counts = split["counts"].as_object().expect("counts is an object");
    let keys: Vec<&str> = counts.keys().map(String::as_str).collect();
    let mut sorted_classes = CLASSES.to_vec();
    sorted_classes.sort();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort();
    assert_eq!(sorted_keys, sorted_classes, "exactly the seven class keys");
    CLASSES
        .iter()
        .map(|c| counts[*c].as_u64().unwrap())
        .collect()
}

#[test]
fn stats_json_has_splits_counts_drops_sizes_and_colours() {
    let json = json_of(&gfer(&[
        "data",
        "stats",
        &fixture_spec("mma", "mma"),
        "--json",
    ]));
    let splits = json["splits"].as_object().unwrap();
    let names: Vec<&str> = splits.keys().map(String::as_str).collect();
    assert_eq!(names, ["test", "train", "val"]);
    assert_eq!(
        class_counts(&json["splits"]["train"]),
        [1, 1, 1, 2, 1, 2, 1]
    );
    assert_eq!(class_counts(&json["splits"]["val"]), [0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(class_counts(&json["splits"]["test"]), [0, 0, 0, 1, 1, 0, 0]);
    assert!(json["splits"]["train"]["dropped"]
        .as_object()
        .unwrap()
        .is_empty());
    // MMA mixes grey and RGB files: the header's colour mode is reported per split.
    assert_eq!(json["splits"]["train"]["colour"]["grey"], 5);
    assert_eq!(json["splits"]["train"]["colour"]["rgb"], 4);
    assert_eq!(json["splits"]["train"]["sizes"]["16x16"], 9);
    assert_eq!(json["splits"]["val"]["sizes"]["48x48"], 1);
    assert_eq!(json["kind"], "mma");
}

#[test]
fn stats_json_counts_dropped_images_by_reason() {
    let json = json_of(&gfer(&[
        "data",
        "stats",
        &fixture_spec("ferplus", "fer2013"),
        "--json",
    ]));
    let train = &json["splits"]["train"];
    assert_eq!(class_counts(train), [0, 1, 1, 1, 0, 0, 2]);
    assert_eq!(train["dropped"]["empty image name"], 1);
    assert_eq!(train["dropped"]["contempt"], 1);
    assert_eq!(train["dropped"]["no majority"], 1);
    assert_eq!(json["splits"]["val"]["dropped"]["not a face"], 1);
    assert_eq!(json["splits"]["test"]["dropped"]["unknown"], 1);
    assert_eq!(train["colour"]["grey"], 5);
    assert_eq!(train["sizes"]["48x48"], 5);
}

#[test]
fn stats_table_for_people() {
    let output = gfer(&["data", "stats", &fixture_spec("rafdb", "rafdb")]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("surprise      fear   disgust happiness"),
        "{text}"
    );
    assert!(text.contains("train          1         0         0         1         1         0         1         4"), "{text}");
    assert!(text.contains("train: dropped: missing image 1"), "{text}");
    assert!(text.contains("train: sizes: 12x12 4"), "{text}");
}

#[test]
fn check_finds_the_planted_cross_set_duplicate() {
    let output = gfer(&[
        "data",
        "check",
        &fixture_spec("fer2013", "fer2013"),
        &fixture_spec("mma", "mma"),
        "--json",
    ]);
    let json = json_of(&output);
    let groups = json["duplicates"].as_array().unwrap();
    let across: Vec<&Value> = groups.iter().filter(|g| g["across_sets"] == true).collect();
    assert_eq!(across.len(), 1, "{groups:?}");
    let images: Vec<&str> = across[0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert!(images[0].ends_with("fer2013.csv:12"), "{images:?}");
    assert!(
        images[1].ends_with("valid/angry/fer_row10.png"),
        "{images:?}"
    );
    let within: Vec<&Value> = groups.iter().filter(|g| g["within_set"] == true).collect();
    assert_eq!(within.len(), 1);
    assert_eq!(within[0]["copies"][0]["split"], "train");
    assert_eq!(within[0]["copies"][1]["split"], "test");

    let text = gfer(&[
        "data",
        "check",
        &fixture_spec("fer2013", "fer2013"),
        &fixture_spec("mma", "mma"),
    ]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("duplicates: 1 groups within a data set, 1 groups across data sets"),
        "{text}"
    );
}

#[test]
fn check_lists_missing_images_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(images.join("a.png"))
        .unwrap();
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(
        &manifest,
        "images/a.png,happy\nimages/broken.png,sad\nimages/gone.png,fear\nimages/a.png,grumpy\n",
    )
    .unwrap();
    let spec = format!("manifest:{}", manifest.display());
    let json = json_of(&gfer(&["data", "check", &spec, "--json"]));
    let set = &json["sets"][0];
    assert_eq!(set["missing"].as_array().unwrap().len(), 1);
    assert!(set["missing"][0].as_str().unwrap().ends_with("gone.png"));
    assert_eq!(set["unreadable"].as_array().unwrap().len(), 1);
    assert!(set["unreadable"][0]
        .as_str()
        .unwrap()
        .contains("broken.png"));
    assert_eq!(set["bad_lines"][0]["line"], 4);
    assert_eq!(set["bad_lines"][0]["text"], "images/a.png,grumpy");

    // stats stops at the bad line unless told to skip it.
    let output = gfer(&["data", "stats", &spec]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("m.csv:4: label 'grumpy'"), "{err}");
    assert!(err.contains("`images/a.png,grumpy`"), "{err}");
    let output = gfer(&["data", "stats", &spec, "--skip-bad-lines"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("1 label lines did not parse and were skipped"),
        "{text}"
    );
    assert!(text.contains("m.csv:4"), "{text}");
}

#[test]
fn unknown_kind_lists_kinds_and_layouts() {
    let output = gfer(&["data", "stats", "raf:/data/raf"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("unknown data-set kind 'raf'"), "{err}");
    assert!(
        err.contains("rafdb:DIR with EmoLabel/list_patition_label.txt"),
        "{err}"
    );
    assert!(err.contains("manifest:CSV file"), "{err}");
}
