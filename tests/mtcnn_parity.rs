//! MTCNN against facenet-pytorch 2.6.0's, on real photos (references written at test time
//! by `scripts/make_reference.py mtcnn --testtime`): the same faces, boxes and landmarks
//! within one pixel, probabilities within 1e-3. The weights are facenet-pytorch's own
//! legacy-format `.pt` files, read by gfer.

use crate::common;
use gfer::detect::mtcnn::{Mtcnn, MtcnnFace, MtcnnSettings};
use gfer::formats::tensorfile;
use std::path::Path;

const HOW: &str =
    "run gfer assets fetch mtcnn photos ckplus && scripts/make_reference.py mtcnn --testtime";

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

/// The reference faces of one photo.
fn reference(file: &Path) -> (String, Vec<MtcnnFace>) {
    let loaded = tensorfile::load(file, &candle_core::Device::Cpu).expect("reference");
    let image = loaded.metadata["image"].clone();
    let boxes = loaded.tensors["boxes"].to_vec2::<f32>().unwrap();
    let probs = loaded.tensors["probs"].to_vec1::<f32>().unwrap();
    let points = loaded.tensors["points"].to_vec3::<f32>().unwrap();
    let faces = (0..probs.len())
        .map(|i| MtcnnFace {
            corners: [boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]],
            score: probs[i],
            landmarks: std::array::from_fn(|j| [points[i][j][0], points[i][j][1]]),
        })
        .collect();
    (image, faces)
}

#[test]
fn mtcnn_finds_facenet_pytorchs_faces_boxes_and_landmarks() {
    let (Some(weights), Some(references)) = (
        common::asset("facenet-pytorch/facenet_pytorch/data", HOW),
        common::asset("reference/mtcnn", HOW),
    ) else {
        return;
    };
    let mtcnn = Mtcnn::load(&weights, MtcnnSettings::default()).expect("MTCNN weights");
    let mut files: Vec<_> = std::fs::read_dir(&references)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{HOW}");
    let (mut photos, mut faces) = (0, 0);
    for file in files {
        let (image, expected) = reference(&file);
        let photo = gfer::image::open(
            &common::root().join("assets").join(&image),
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let found = mtcnn.detect_faces(&photo).unwrap();
        assert_eq!(found.len(), expected.len(), "{image}: faces");
        for want in &expected {
            let got = found
                .iter()
                .max_by(|a, b| {
                    iou(&a.corners, &want.corners).total_cmp(&iou(&b.corners, &want.corners))
                })
                .expect("a face");
            let close = |a: f32, b: f32| (a - b).abs() <= 1.0;
            assert!(
                got.corners
                    .iter()
                    .zip(&want.corners)
                    .all(|(a, b)| close(*a, *b)),
                "{image}: box {:?} vs facenet-pytorch {:?}",
                got.corners,
                want.corners
            );
            assert!(
                (got.score - want.score).abs() <= 1e-3,
                "{image}: score {} vs {}",
                got.score,
                want.score
            );
            for (p, q) in got.landmarks.iter().zip(&want.landmarks) {
                assert!(
                    close(p[0], q[0]) && close(p[1], q[1]),
                    "{image}: landmark {p:?} vs {q:?}"
                );
            }
        }
        photos += 1;
        faces += expected.len();
    }
    println!("MTCNN matched facenet-pytorch on {photos} photos, {faces} faces");
}
