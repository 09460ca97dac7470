//! `gfer protocol` on two generated data sets in two formats (class folders and a
//! manifest), and the feature cache's invalidation rules.

use crate::common;

use candle_core::Device;
use gfer::backbone::{load_encoder, Encoder, Precision};
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
            precision: Precision::F32,
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
        cell: None,
    };
    let progress = indicatif::ProgressBar::hidden();
    let table = protocol::run(&cfg, &AtomicBool::new(false), &progress, &Device::Cpu)
        .expect("protocol runs")
        .table;
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
    let cached = cache_files(&out.join("cache"));
    assert_eq!(cached.len(), 2, "{cached:?}");
}

#[test]
fn the_cache_recomputes_exactly_what_a_change_affects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::Cpu;
    let encoder =
        load_encoder(None, &common::tiny_clip(), &device, Precision::F32).expect("encoder");
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
    let other = load_encoder(None, &other, &device, Precision::F32).expect("other encoder");
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
    let encoder =
        load_encoder(None, &common::tiny_clip(), &device, Precision::F32).expect("encoder");
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
            precision: Precision::F32,
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
        cell: None,
    };
    let progress = indicatif::ProgressBar::hidden();
    let table = protocol::run(&cfg, &AtomicBool::new(false), &progress, &Device::Cpu)
        .expect("protocol runs")
        .table;
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
    let cached = cache_files(&out.join("cache"));
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

/// README's "Reproducing the paper's Table 1" command as arguments after `gfer`: the
/// shell variables its block sets expanded, continuation lines joined, quotes removed.
fn readme_table_1_command() -> Vec<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).expect("README.md");
    let section = readme
        .split("#### Reproducing the paper's Table 1")
        .nth(1)
        .expect("README has the Table 1 section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut command = String::new();
    for line in block.replace("\\\n", " ").lines() {
        match line.split_once('=') {
            Some((name, value)) if !line.starts_with("gfer") && !name.contains(' ') => {
                variables.push((format!("\"${name}\""), value.to_string()))
            }
            _ => command.push_str(line),
        }
    }
    let words: Vec<String> = command
        .split_whitespace()
        .map(|word| {
            let expanded = variables
                .iter()
                .find(|(name, _)| name == word)
                .map_or(word, |(_, value)| value.as_str());
            expanded.trim_matches('"').to_string()
        })
        .collect();
    assert_eq!(words[..2], ["gfer", "protocol"], "{words:?}");
    words[1..].to_vec()
}

/// Writes RAF-DB, FERPlus, AffectNet, SFEW 2.0 and MMA copies in their native formats under
/// `data`, at the paths README's Table 1 command names, each with `per_class` synthetic
/// faces per class in its training split and in the split the paper tests on.
fn write_paper_datasets(data: &std::path::Path, per_class: usize) {
    use gfer::Expression;
    let face = |class: Expression, i: usize| common::synthetic_face(class.index(), i, 48);
    let save = |image: image::RgbImage, path: std::path::PathBuf| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        image.save(&path).expect("write image");
    };
    // RAF-DB: labels are the canonical index plus one; the split is the name's prefix.
    let raf = data.join("RAF-DB/basic");
    let mut labels = String::new();
    for (split, offset) in [("train", 0), ("test", 100)] {
        for class in Expression::ALL {
            for i in 0..per_class {
                let stem = format!("{split}_{:05}", offset + class.index() * per_class + i + 1);
                save(
                    face(class, offset + i),
                    raf.join(format!("Image/aligned/{stem}_aligned.jpg")),
                );
                labels.push_str(&format!("{stem}.jpg {}\n", class.index() + 1));
            }
        }
    }
    std::fs::create_dir_all(raf.join("EmoLabel")).expect("folder");
    std::fs::write(raf.join("EmoLabel/list_patition_label.txt"), labels).expect("labels");
    // FERPlus, the generated folders: ten votes for the class in FERPlus's vote order.
    let fer_order = [6, 3, 0, 4, 5, 2, 1].map(|i| Expression::ALL[i]);
    for (folder, offset) in [("FER2013Train", 200), ("FER2013Test", 300)] {
        let mut rows = String::new();
        for class in Expression::ALL {
            let column = fer_order.iter().position(|&c| c == class).expect("voted");
            for i in 0..per_class {
                let name = format!("fer{:07}.png", offset + class.index() * per_class + i);
                save(
                    face(class, offset + i),
                    data.join("FERPlus").join(folder).join(&name),
                );
                let votes: Vec<&str> = (0..10)
                    .map(|v| if v == column { "10" } else { "0" })
                    .collect();
                rows.push_str(&format!("{name},\"(0, 0, 48, 48)\",{}\n", votes.join(",")));
            }
        }
        std::fs::write(data.join("FERPlus").join(folder).join("label.csv"), rows).expect("csv");
    }
    // AffectNet: codes 0 neutral .. 6 anger, the face box covering the image.
    let affect_order = [6, 3, 4, 0, 1, 2, 5].map(|i| Expression::ALL[i]);
    let affectnet = data.join("AffectNet");
    for (file, offset) in [("training.csv", 400), ("validation.csv", 500)] {
        let mut rows = String::from(
            "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n",
        );
        for class in Expression::ALL {
            let code = affect_order
                .iter()
                .position(|&c| c == class)
                .expect("coded");
            for i in 0..per_class {
                let name = format!("{code}/{}_{i}.jpg", offset + class.index());
                save(
                    face(class, offset + i),
                    affectnet.join("Manually_Annotated_Images").join(&name),
                );
                rows.push_str(&format!("{name},0,0,48,48,,{code},0.0,0.0\n"));
            }
        }
        std::fs::write(affectnet.join(file), rows).expect("csv");
    }
    // SFEW 2.0 and MMA: class folders.
    let sfew_names = [
        "Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral",
    ];
    let mma_names = [
        "surprise", "fear", "disgust", "happy", "sad", "angry", "neutral",
    ];
    for class in Expression::ALL {
        for i in 0..per_class {
            let sfew = data.join("SFEW2");
            let name = sfew_names[class.index()];
            save(
                face(class, 600 + i),
                sfew.join(format!("Train_Aligned_Faces/{name}/t{i}.png")),
            );
            save(
                face(class, 700 + i),
                sfew.join(format!("Val_Aligned_Faces/{name}/v{i}.png")),
            );
            let mma = data.join("MMAFEDB");
            let name = mma_names[class.index()];
            save(
                face(class, 800 + i),
                mma.join(format!("train/{name}/t{i}.jpg")),
            );
            save(
                face(class, 900 + i),
                mma.join(format!("test/{name}/s{i}.jpg")),
            );
        }
    }
}

/// README's Table 1 command, run as the binary exactly as written but for its paths (the
/// five data sets generated in their native formats, the tiny CLIP fixture for ViT-B/32,
/// the CAFE references' MS-Celeb-like ResNet-18) and one added `--epochs 1`: every cell
/// of the table whose source and target the paper used shows the paper's number, in
/// table.md, table.csv and table.json.
#[test]
fn readme_table_1_command_shows_the_paper_beside_every_cell() {
    let how = "run scripts/make_reference.py cafe --testtime";
    let Some(resnet) = common::asset("reference/resnet18/resnet18_msceleb_like.pth", how) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    write_paper_datasets(&data, 2);
    let out = dir.path().join("table1");
    let args: Vec<String> = readme_table_1_command()
        .into_iter()
        .map(|arg| match arg.as_str() {
            "ViT-B-32.safetensors" => common::tiny_clip().display().to_string(),
            "resnet18_msceleb.pth" => resnet.display().to_string(),
            "runs/table1" => out.display().to_string(),
            _ => arg.replace("/data/", &format!("{}/", data.display())),
        })
        .collect();
    assert!(args.iter().any(|a| a == "--reference"), "{args:?}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(&args)
        .args(["--epochs", "1"])
        .output()
        .expect("run gfer");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("the paper has no numbers"), "{stderr}");

    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("table.json")).expect("table.json"))
            .expect("json");
    let targets = table["targets"].as_array().expect("targets").len();
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!((rows.len(), targets), (5, 5));
    let markdown = std::fs::read_to_string(out.join("table.md")).expect("table.md");
    let csv = std::fs::read_to_string(out.join("table.csv")).expect("table.csv");
    for row in rows {
        let source = row["source"].as_str().expect("source");
        let kind = row["source_kind"].as_str().expect("kind");
        for (t, kind_t) in table["target_kinds"]
            .as_array()
            .expect("kinds")
            .iter()
            .enumerate()
        {
            let want = gfer::eval::table::paper_accuracy(kind, kind_t.as_str().expect("kind"))
                .expect("the paper used every source and target here");
            assert_eq!(row["paper"][t].as_f64(), Some(want), "{source} -> {kind_t}");
            assert!(
                markdown.contains(&format!("(paper {want:.2}, ")),
                "{want} in\n{markdown}"
            );
        }
        let line = csv
            .lines()
            .find(|l| l.starts_with(&format!("cafe:full,{source},")))
            .expect("csv row");
        let papers = line
            .split(',')
            .skip(2 + targets + 2)
            .filter(|v| !v.is_empty())
            .count();
        assert_eq!(papers, targets, "{line}");
    }
}

/// The cache's files by name, sorted, without the empty hidden files its locks use.
fn cache_files(cache: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .expect("cache")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}
