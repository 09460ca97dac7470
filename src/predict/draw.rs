//! `--draw`: a copy of the photo with each face's box and label drawn on it, with
//! [`crate::image::draw`]'s built-in bitmap font (no font file needed).

use super::ImagePrediction;
use crate::image::draw::{draw_rect, draw_text, fill_rect, text_width};
use image::{Rgb, RgbImage};

/// One colour per class (by class index, cycling), bright enough to see on photos.
const PALETTE: [[u8; 3]; 8] = [
    [255, 215, 0],
    [148, 0, 211],
    [34, 139, 34],
    [255, 105, 180],
    [30, 144, 255],
    [220, 20, 60],
    [200, 200, 200],
    [255, 140, 0],
];

/// The photo with every face's box and `LABEL 87%` above it (inside the box when the box
/// touches the top edge).
pub fn annotate(
    image: &RgbImage,
    prediction: &ImagePrediction,
    class_names: &[String],
) -> RgbImage {
    let mut canvas = image.clone();
    let (width, height) = canvas.dimensions();
    let thickness = i64::from((width.min(height) / 250).max(2));
    let scale = (width.min(height) / 400).clamp(1, 4);
    for face in &prediction.faces {
        let class = class_names
            .iter()
            .position(|n| *n == face.label)
            .unwrap_or(0);
        let colour = Rgb(PALETTE[class % PALETTE.len()]);
        let b = face.bbox;
        let (x0, y0) = (i64::from(b.x), i64::from(b.y));
        let (x1, y1) = (x0 + i64::from(b.width), y0 + i64::from(b.height));
        draw_rect(&mut canvas, (x0, y0, x1, y1), thickness, colour);
        let text = format!("{} {:.0}%", face.label, face.confidence * 100.0);
        let pad = i64::from(scale);
        let label_height = 8 * i64::from(scale) + 2 * pad;
        let top = if y0 >= label_height {
            y0 - label_height
        } else {
            y0 + thickness
        };
        let label_width = i64::from(text_width(&text, scale)) + 2 * pad;
        fill_rect(
            &mut canvas,
            x0,
            top,
            x0 + label_width,
            top + label_height,
            colour,
        );
        draw_text(
            &mut canvas,
            x0 + pad,
            top + pad,
            &text,
            scale,
            Rgb([0, 0, 0]),
        );
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Rect;
    use crate::predict::Face;

    #[test]
    fn box_and_label_are_drawn_in_the_class_colour_and_nothing_else_changes() {
        let photo = RgbImage::from_pixel(300, 200, Rgb([10, 20, 30]));
        let bbox = Rect {
            x: 100,
            y: 80,
            width: 60,
            height: 60,
        };
        let prediction = ImagePrediction {
            width: 300,
            height: 200,
            faces: vec![Face {
                bbox,
                crop: bbox,
                detection_score: Some(3.0),
                landmarks: None,
                roll: None,
                aligned: false,
                track: None,
                probabilities: vec![0.1, 0.9],
                label: "happy".into(),
                confidence: 0.9,
            }],
            too_small: 0,
        };
        let names = vec!["sad".to_string(), "happy".to_string()];
        let drawn = annotate(&photo, &prediction, &names);
        let colour = Rgb(PALETTE[1]);
        assert_eq!(drawn.get_pixel(100, 110), &colour, "left edge of the box");
        assert_eq!(drawn.get_pixel(159, 139), &colour, "bottom-right corner");
        assert_eq!(
            drawn.get_pixel(130, 110),
            &Rgb([10, 20, 30]),
            "inside the box"
        );
        // The label sits on a filled strip just above the box, with black ink in it.
        let strip: Vec<&Rgb<u8>> = (100..160).map(|x| drawn.get_pixel(x, 75)).collect();
        assert!(strip.contains(&&colour) && strip.contains(&&Rgb([0, 0, 0])));
        assert_eq!(
            drawn.get_pixel(20, 20),
            &Rgb([10, 20, 30]),
            "far from any face"
        );
    }

    #[test]
    fn labels_at_the_edges_are_clipped_not_panicking() {
        let photo = RgbImage::from_pixel(40, 12, Rgb([0, 0, 0]));
        let bbox = Rect {
            x: 30,
            y: 0,
            width: 10,
            height: 12,
        };
        let prediction = ImagePrediction {
            width: 40,
            height: 12,
            faces: vec![Face {
                bbox,
                crop: bbox,
                detection_score: None,
                landmarks: None,
                roll: None,
                aligned: false,
                track: None,
                probabilities: vec![1.0],
                label: "a label much wider than the photo".into(),
                confidence: 1.0,
            }],
            too_small: 0,
        };
        let drawn = annotate(&photo, &prediction, &["x".to_string()]);
        assert_eq!(drawn.dimensions(), (40, 12));
    }
}
