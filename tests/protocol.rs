//! `gfer protocol` on two generated data sets in two formats (class folders and a
//! manifest), and the feature cache's invalidation rules.

use crate::common;

use candle_core::Device;
use gfer::backbone::{load_encoder, Encoder};
use gfer::data::ImageSource;
use gfer::experiments::protocol::{self, name_specs, MethodVariant, ProtocolConfig};
use gfer::image::{DecodeLimits, Preprocess, Preset};
use gfer::model::classifier::{MaskInput, Method};
use gfer::model::CafeConfig;
use gfer::train::cache::{self, CacheImages, CacheKey};
use gfer::train::fit::Recipe;
use gfer::train::run::{FastConfig, TrainConfig};
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
        methods: vec![
            MethodVariant::fast(Method::Cafe, MaskInput::Feature),
            MethodVariant::fast(Method::LinearProbe, MaskInput::Feature),
        ],
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
            fast: None,
        },
        fast: FastConfig {
            views: 2,
            generator: Default::default(),
            hidden: Some(vec![]),
            cache_dir: dir.path().join("ignored"),
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
        markdown.contains("| cafe:fast | faces |") && markdown.contains("unseen mean"),
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
    for method in ["cafe-fast", "linear-probe-fast"] {
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
            mask: None,
        };
        let built = cache::build(
            &cache_dir,
            &key,
            CacheImages {
                sources: &sources[..n],
                hashes: &hashes[..n],
                limits: &limits,
            },
            CacheImages {
                sources: &[],
                hashes: &[],
                limits: &limits,
            },
            &stop,
            &progress,
        )
        .expect("cache builds");
        let (c, v) = (built.counts.clean, built.counts.views);
        (
            built.clean,
            built.views,
            (c.computed, c.reused),
            (v.computed, v.reused),
        )
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
    let mut file = gfer::formats::tensorfile::load(&common::tiny_clip(), &device).expect("load");
    let t = file.tensors["visual_projection.weight"].clone();
    file.tensors
        .insert("visual_projection.weight".into(), (t * 2.0).expect("scale"));
    gfer::formats::tensorfile::save(&other, &file.tensors, &file.metadata).expect("save");
    let other = load_encoder(None, &other, &device).expect("other encoder");
    let (_, _, clean, views) = build(other.as_ref(), 1, 5);
    assert_eq!((clean, views), ((5, 0), (5, 0)));
}

/// Relative difference max|a - b| / max|b|.
fn differs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn mask_input_caches_recompute_only_when_the_resnet_or_the_layer_changes() {
    use gfer::model::{init_var_builder, FrozenResnet};
    use gfer::train::cache::MaskSource;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::Cpu;
    let encoder = load_encoder(None, &common::tiny_clip(), &device).expect("encoder");
    let images: Vec<_> = (0..4)
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
    // Two frozen ResNets: the same architecture, other weights.
    let resnet = |seed: u64| {
        let path = dir.path().join(format!("resnet{seed}.safetensors"));
        common::write_tiny_resnet(&path, seed);
        let given =
            gfer::model::resnet::load_checkpoint(&path, common::TINY_RESNET_WIDTHS, false, &device)
                .expect("checkpoint");
        let given = given
            .into_iter()
            .map(|(n, t)| (format!("{}.{n}", FrozenResnet::PREFIX), t))
            .collect();
        let vb = init_var_builder(given, 0, &device);
        FrozenResnet::new(&vb.pp(FrozenResnet::PREFIX), common::TINY_RESNET_WIDTHS)
            .expect("frozen ResNet")
    };
    let (net_a, net_b) = (resnet(1), resnet(2));
    assert_ne!(net_a.fingerprint(), net_b.fingerprint());
    let stop = AtomicBool::new(false);
    let progress = indicatif::ProgressBar::hidden();
    let cache_dir = dir.path().join("cache");
    let encoder = encoder.as_ref();
    fn key<'a>(encoder: &'a dyn Encoder, mask: Option<MaskSource<'a>>) -> CacheKey<'a> {
        CacheKey {
            encoder,
            preprocess: Preprocess::new(Preset::Cafe, 32),
            seed: 5,
            views: 2,
            mask,
        }
    }
    // (clean F, views F, clean mask input, views mask input) as (computed, reused).
    type Counts = [(usize, usize); 4];
    let build = |key: &CacheKey| -> (cache::Cache, Counts) {
        let built = cache::build(
            &cache_dir,
            key,
            CacheImages {
                sources: &sources[..3],
                hashes: &hashes[..3],
                limits: &DecodeLimits::default(),
            },
            CacheImages {
                sources: &sources[3..],
                hashes: &hashes[3..],
                limits: &DecodeLimits::default(),
            },
            &stop,
            &progress,
        )
        .expect("cache builds");
        let c = built.counts;
        let pair = |b: gfer::train::cache::BuildCount| (b.computed, b.reused);
        let none = (usize::MAX, usize::MAX);
        let counts = [
            pair(c.clean),
            pair(c.views),
            c.mask_clean.map(pair).unwrap_or(none),
            c.mask_views.map(pair).unwrap_or(none),
        ];
        (built, counts)
    };
    let none = (usize::MAX, usize::MAX);
    let (net_a, net_b) = (&net_a, &net_b);

    // The encoder features alone first: 4 clean images (3 train + 1 held out), 3 with views.
    assert_eq!(build(&key(encoder, None)).1, [(4, 0), (3, 0), none, none]);
    // ResNet A: only its files are computed; F is reused.
    let (with_a, counts) = build(&key(encoder, Some(MaskSource::Resnet(net_a))));
    assert_eq!(counts, [(0, 4), (0, 3), (4, 0), (3, 0)]);
    // Another checkpoint: its own files; F still reused.
    assert_eq!(
        build(&key(encoder, Some(MaskSource::Resnet(net_b)))).1,
        [(0, 4), (0, 3), (4, 0), (3, 0)]
    );
    // Back to A: nothing to compute.
    assert_eq!(
        build(&key(encoder, Some(MaskSource::Resnet(net_a)))).1,
        [(0, 4), (0, 3), (0, 4), (0, 3)]
    );
    // Tokens of block 1, then block 2: each layer computes its own files only.
    let (with_tokens, counts) = build(&key(encoder, Some(MaskSource::Tokens(1))));
    assert_eq!(counts, [(0, 4), (0, 3), (4, 0), (3, 0)]);
    assert_eq!(
        build(&key(encoder, Some(MaskSource::Tokens(2)))).1,
        [(0, 4), (0, 3), (4, 0), (3, 0)]
    );
    assert_eq!(
        build(&key(encoder, Some(MaskSource::Tokens(1)))).1,
        [(0, 4), (0, 3), (0, 4), (0, 3)]
    );
    // A new image: F and the mask input are computed for it alone.
    let (_, counts) = {
        let built = cache::build(
            &cache_dir,
            &key(encoder, Some(MaskSource::Tokens(1))),
            CacheImages {
                sources: &sources,
                hashes: &hashes,
                limits: &DecodeLimits::default(),
            },
            CacheImages {
                sources: &[],
                hashes: &[],
                limits: &DecodeLimits::default(),
            },
            &stop,
            &progress,
        )
        .expect("cache builds");
        (
            (),
            [
                built.counts.views,
                built.counts.mask_views.expect("mask views"),
            ],
        )
    };
    assert_eq!(
        counts.map(|c| (c.computed, c.reused)),
        [(1, 3), (1, 3)],
        "the held-out image gains views"
    );

    // Every cached value is what the encoder and the ResNet give on the same view: the
    // clean view and augmented view 1 of image 0.
    let a_key = key(encoder, Some(MaskSource::Resnet(net_a)));
    let row = |c: &gfer::train::cache::CachedFeatures, view: usize| {
        c.get(c.row_of(&hashes[0]).expect("row"), view).to_vec()
    };
    let mask_clean = with_a.mask_clean.as_ref().expect("mask clean");
    let mask_views = with_a.mask_views.as_ref().expect("mask views");
    let tokens_views = with_tokens.mask_views.as_ref().expect("token views");
    for view in [None, Some(1)] {
        let pixels = cache::view_pixels(&a_key, &images[0], &hashes[0], view);
        let pixels = candle_core::Tensor::from_vec(pixels, (1, 3, 32, 32), &device).expect("t");
        let flat = |t: candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f = flat(encoder.encode(&pixels).expect("encode"));
        let (_, tokens) = encoder.encode_with_tokens(&pixels, 1).expect("tokens");
        let pooled = flat(net_a.pooled(&pixels, Preset::Cafe).expect("pooled"));
        match view {
            None => {
                assert!(differs(&row(&with_a.clean, 0), &f) < 1e-4);
                assert!(differs(&row(mask_clean, 0), &pooled) < 1e-4);
            }
            Some(v) => {
                assert!(differs(&row(&with_a.views, v), &f) < 1e-4);
                assert!(differs(&row(mask_views, v), &pooled) < 1e-4);
                assert!(differs(&row(tokens_views, v), &flat(tokens)) < 1e-4);
                // Another view is another image.
                assert!(differs(&row(mask_views, 0), &pooled) > 1e-3);
            }
        }
    }
}

#[test]
fn full_and_fast_variants_come_out_side_by_side_in_one_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_folder_dataset(&dir.path().join("a"), 4, 2);
    let manifest = common::write_manifest_dataset(&dir.path().join("b"), 1, 2);
    let resnet = dir.path().join("resnet.safetensors");
    common::write_tiny_resnet(&resnet, 3);
    let a = format!("faces=folder:{}", dir.path().join("a").display());
    let b = format!("listed=manifest:{}", manifest.display());
    let out = dir.path().join("out");
    let variants = [
        "cafe:full",
        "cafe:fast",
        "cafe:fast:resnet18",
        "cafe:fast:tokens:2",
        "linear-probe:fast",
        // The same run as the one before: run once.
        "linear-probe:fast:resnet18",
    ];
    let methods = variants
        .iter()
        .map(|v| MethodVariant::parse(v, None).expect("variant"))
        .collect();
    let cfg = ProtocolConfig {
        sources: name_specs(std::slice::from_ref(&a)),
        targets: name_specs(&[a, b]),
        methods,
        base: TrainConfig {
            data: String::new(),
            backbone: None,
            weights: Some(common::tiny_clip()),
            preprocess: Preset::Cafe,
            method: Method::Cafe,
            cafe: CafeConfig {
                trunk_widths: common::TINY_RESNET_WIDTHS,
                ..CafeConfig::default()
            },
            // The full variant's ResNet starts from it; the resnet18 generator reads it.
            mask_init: Some(resnet),
            allow_partial: false,
            recipe: Recipe {
                epochs: 2,
                batch_size: 8,
                lr: 2e-3,
                ..Recipe::default()
            },
            max_pixels: 1 << 24,
            fast: None,
        },
        fast: FastConfig {
            views: 2,
            generator: MaskInput::Feature,
            hidden: Some(vec![16]),
            cache_dir: dir.path().join("ignored"),
        },
        out: out.clone(),
        reference_paper: false,
    };
    let progress = indicatif::ProgressBar::hidden();
    let table = protocol::run(&cfg, &AtomicBool::new(false), &progress, &Device::Cpu)
        .expect("protocol runs");
    let labels: Vec<&str> = table.rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        labels,
        [
            "cafe:full",
            "cafe:fast",
            "cafe:fast:resnet18",
            "cafe:fast:tokens:2",
            "linear-probe:fast"
        ]
    );
    let markdown = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    for label in &labels {
        assert!(
            markdown.contains(&format!("| {label} | faces |")),
            "{markdown}"
        );
    }
    for (row, slug) in table.rows.iter().zip([
        "cafe-full",
        "cafe-fast",
        "cafe-fast-resnet18",
        "cafe-fast-tokens-2",
        "linear-probe-fast",
    ]) {
        // Each variant has its own run folder and cells.
        let run = out.join("runs/faces").join(slug);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("config.json")).expect("config.json"),
        )
        .expect("json");
        match slug {
            "cafe-full" => assert!(config["fast"].is_null(), "{config}"),
            "linear-probe-fast" => assert_eq!(config["fast"]["generator"], "feature"),
            _ => assert_eq!(
                config["fast"]["generator"].as_str(),
                row.method.strip_prefix("cafe:fast:").or(Some("feature"))
            ),
        }
        for cell in ["faces__faces", "faces__listed"] {
            assert!(out
                .join("cells")
                .join(slug)
                .join(format!("{cell}.png"))
                .exists());
        }
        // The seen target is the source's held-out split: the protocol's evaluation (from
        // the evaluation cache, mask inputs included) agrees with the run's own.
        let log = std::fs::read_to_string(run.join("log.jsonl")).expect("log");
        let last: serde_json::Value =
            serde_json::from_str(log.lines().last().expect("a line")).expect("json");
        let held_out = last["eval_accuracy"].as_f64().expect("held-out accuracy");
        assert!(
            (row.accuracy[0] - held_out).abs() < 1e-9,
            "{}: protocol {} vs training {held_out}",
            row.method,
            row.accuracy[0]
        );
    }
    // F once, and each mask input's own files (clean views cover the targets too).
    let mut cached: Vec<String> = std::fs::read_dir(out.join("cache"))
        .expect("cache")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached.len(), 6, "{cached:?}");
    assert_eq!(
        cached.iter().filter(|n| n.contains("resnet18")).count(),
        2,
        "{cached:?}"
    );
    assert_eq!(
        cached.iter().filter(|n| n.contains("tokens2")).count(),
        2,
        "{cached:?}"
    );
}
