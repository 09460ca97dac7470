//! `gfer protocol` on two generated data sets in two formats (class folders and a
//! manifest), and the feature cache's invalidation rules.

mod common;

use candle_core::Device;
use gfer::backbone::load_encoder;
use gfer::data::ImageSource;
use gfer::eval::protocol::{self, name_specs, ProtocolConfig};
use gfer::image::{Preprocess, Preset};
use gfer::model::classifier::Method;
use gfer::model::CafeConfig;
use gfer::train::cache::{self, CacheKey};
use gfer::train::session::{FastConfig, TrainConfig};
use gfer::train::trainer::Recipe;
use std::sync::atomic::AtomicBool;

#[test]
fn protocol_writes_the_table_per_class_tables_and_confusion_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("a"), 6, 3);
    let manifest = common::write_manifest_dataset(&dir.path().join("b"), 6, 3);
    let a = format!("faces=folder:{}", dir.path().join("a").display());
    let b = format!("listed=manifest:{}", manifest.display());
    let out = dir.path().join("out");
    let cfg = ProtocolConfig {
        sources: name_specs(&[a.clone(), b.clone()]),
        targets: name_specs(&[a, b]),
        methods: vec![Method::Cafe, Method::LinearProbe],
        base: TrainConfig {
            data: String::new(),
            backbone: None,
            weights: Some(common::tiny_clip()),
            preprocess: Preset::Cafe,
            method: Method::Cafe,
            cafe: CafeConfig::default(),
            mask_init: None,
            allow_partial: false,
            recipe: Recipe {
                epochs: 3,
                batch_size: 8,
                lr: 2e-3,
                ..Recipe::default()
            },
            max_pixels: 1 << 24,
            fast: Some(FastConfig {
                views: 2,
                hidden: vec![],
                cache_dir: dir.path().join("ignored"),
            }),
        },
        out: out.clone(),
        reference_paper: false,
    };
    let progress = indicatif::ProgressBar::hidden();
    let table = protocol::run(&cfg, &AtomicBool::new(false), &progress, &Device::Cpu)
        .expect("protocol runs");
    assert_eq!(table.targets, vec!["faces", "listed"]);
    assert_eq!(table.rows.len(), 4, "2 sources x 2 methods");
    for row in &table.rows {
        assert!(
            row.accuracy.iter().all(|a| (0.0..=1.0).contains(a)),
            "{row:?}"
        );
    }
    let markdown = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    assert!(
        markdown.contains("| cafe | faces |") && markdown.contains("unseen mean"),
        "{markdown}"
    );
    let csv = std::fs::read_to_string(out.join("table.csv")).expect("table.csv");
    assert_eq!(csv.lines().count(), 5);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).expect("json"))
            .expect("valid json");
    assert_eq!(json["rows"].as_array().map(|r| r.len()), Some(4));
    let per_class = std::fs::read_to_string(out.join("per_class.md")).expect("per_class.md");
    assert!(per_class.contains("| happiness |"), "{per_class}");
    for method in ["cafe", "linear-probe"] {
        for cell in [
            "faces__faces",
            "faces__listed",
            "listed__faces",
            "listed__listed",
        ] {
            let png = out.join("cells").join(method).join(format!("{cell}.png"));
            let image = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert!(image.width() > 400 && image.height() > 400);
            assert!(out
                .join("cells")
                .join(method)
                .join(format!("{cell}.json"))
                .exists());
        }
    }
    // Both methods of a source share the feature cache: one clean file, one views file.
    let cached: Vec<_> = std::fs::read_dir(out.join("cache"))
        .expect("cache")
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");
}

#[test]
fn the_cache_recomputes_exactly_what_a_change_affects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::Cpu;
    let encoder = load_encoder(None, &common::tiny_clip(), &device).expect("encoder");
    let images: Vec<_> = (0..5)
        .map(|i| common::synthetic_face(i % 7, i, 32))
        .collect();
    let sources: Vec<ImageSource> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let path = dir.path().join(format!("{i}.png"));
            image.save(&path).expect("write");
            ImageSource::File { path, crop: None }
        })
        .collect();
    let hashes: Vec<String> = images.iter().map(gfer::image::content_hash).collect();
    let stop = AtomicBool::new(false);
    let progress = indicatif::ProgressBar::hidden();
    let limits = Default::default();
    let cache_dir = dir.path().join("cache");
    let build = |encoder: &dyn gfer::backbone::Encoder, seed: u64, n: usize| {
        let key = CacheKey {
            encoder,
            preprocess: Preprocess::new(Preset::Cafe, 32),
            seed,
            views: 3,
        };
        let (clean, views, c, v) = cache::build(
            &cache_dir,
            &key,
            (&sources[..n], &hashes[..n]),
            (&[], &[]),
            &limits,
            &stop,
            &progress,
        )
        .expect("cache builds");
        (clean, views, (c.computed, c.reused), (v.computed, v.reused))
    };
    let (_, views_a, clean, views) = build(encoder.as_ref(), 1, 3);
    assert_eq!((clean, views), ((3, 0), (3, 0)));
    // Two more images: only they are encoded.
    let (_, _, clean, views) = build(encoder.as_ref(), 1, 5);
    assert_eq!((clean, views), ((2, 3), (2, 3)));
    // Another seed: the augmented views change, the clean ones do not.
    let (_, views_b, clean, views) = build(encoder.as_ref(), 2, 5);
    assert_eq!((clean, views), ((0, 5), (5, 0)));
    let row_a = views_a.row_of(&hashes[0]).expect("row");
    let row_b = views_b.row_of(&hashes[0]).expect("row");
    assert_ne!(
        views_a.get(row_a, 0),
        views_b.get(row_b, 0),
        "another seed gives other views"
    );
    // The same seed again: nothing to do.
    let (_, _, clean, views) = build(encoder.as_ref(), 1, 5);
    assert_eq!((clean, views), ((0, 5), (0, 5)));
    // Other encoder weights: everything is encoded again.
    let other = dir.path().join("other.safetensors");
    let mut file = gfer::tensorfile::load(&common::tiny_clip(), &device).expect("load");
    let t = file.tensors["visual_projection.weight"].clone();
    file.tensors
        .insert("visual_projection.weight".into(), (t * 2.0).expect("scale"));
    gfer::tensorfile::save(&other, &file.tensors, &file.metadata).expect("save");
    let other = load_encoder(None, &other, &device).expect("other encoder");
    let (_, _, clean, views) = build(other.as_ref(), 1, 5);
    assert_eq!((clean, views), ((5, 0), (5, 0)));
}
