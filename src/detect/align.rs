//! Face alignment from five landmarks, as the aligned training sets were made: the
//! similarity transform (rotation, uniform scale, translation; no shear, no mirroring)
//! that best maps the detected eye centres, nose tip and mouth corners onto a canonical
//! five-point template, by least squares (Umeyama's closed form), then the crop resampled
//! through it (bilinear), upright and at a fixed size.
//!
//! [`Template::default`] is the canonical five-point face of the ArcFace alignment
//! (insightface's 112x112 reference points, the usual choice for MTCNN's five points),
//! widened by a margin so the crop shows the whole face with some hair and chin, as
//! RAF-DB's 100x100 aligned images do. A data set's own template can be measured from its
//! aligned images (the mean of their detected landmarks: [`Template::measured`]).

use crate::detect::Landmarks;
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

/// insightface's reference points for 112x112 aligned faces.
const ARCFACE_112: Landmarks = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Where the five points go in the aligned crop, as fractions of its side.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub points: Landmarks,
}

impl Default for Template {
    /// ArcFace's points with a margin of 0.2 of the side around the face, as `gfer
    /// predict` aligns by default.
    fn default() -> Self {
        Template::arcface(0.2)
    }
}

impl Template {
    /// ArcFace's points, shrunk towards the crop's centre so that `margin` of the side is
    /// added around the face on every side.
    pub fn arcface(margin: f32) -> Self {
        let shrink = 1.0 / (1.0 + 2.0 * margin);
        Template {
            points: ARCFACE_112.map(|[x, y]| {
                [
                    0.5 + (x / 112.0 - 0.5) * shrink,
                    0.5 + (y / 112.0 - 0.5) * shrink,
                ]
            }),
        }
    }

    /// The mean position of landmarks found on already aligned `side` x `side` images: the
    /// template those images were aligned to.
    pub fn measured(landmarks: &[Landmarks], side: f32) -> Result<Self> {
        if landmarks.is_empty() {
            return Err(Error::config("no landmarks to measure a template from"));
        }
        let n = landmarks.len() as f32;
        let mut points = [[0.0f32; 2]; 5];
        for face in landmarks {
            for (p, q) in points.iter_mut().zip(face) {
                p[0] += q[0] / side / n;
                p[1] += q[1] / side / n;
            }
        }
        Ok(Template { points })
    }

    /// The points in pixels of a `side` x `side` crop.
    fn in_pixels(&self, side: u32) -> Landmarks {
        self.points.map(|[x, y]| [x * side as f32, y * side as f32])
    }
}

/// A similarity transform `p -> s R p + t`, stored as `[a, -b, tx; b, a, ty]` with
/// `a = s cos(angle)`, `b = s sin(angle)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// The similarity that maps `from` onto `to` with the least squared error (Umeyama
    /// 1991, without reflection).
    pub fn fit(from: &Landmarks, to: &Landmarks) -> Result<Self> {
        let n = from.len() as f64;
        let mean = |points: &Landmarks| {
            let (x, y) = points
                .iter()
                .fold((0.0, 0.0), |(x, y), p| (x + p[0] as f64, y + p[1] as f64));
            (x / n, y / n)
        };
        let ((fx, fy), (tx, ty)) = (mean(from), mean(to));
        // For a 2-D similarity the least-squares fit reduces to a complex ratio:
        // (a + ib) = sum(conj(f) t) / sum(|f|^2) over the centred points.
        let (mut re, mut im, mut norm) = (0.0, 0.0, 0.0);
        for (f, t) in from.iter().zip(to) {
            let (ux, uy) = (f[0] as f64 - fx, f[1] as f64 - fy);
            let (vx, vy) = (t[0] as f64 - tx, t[1] as f64 - ty);
            re += ux * vx + uy * vy;
            im += ux * vy - uy * vx;
            norm += ux * ux + uy * uy;
        }
        if norm < 1e-9 {
            return Err(Error::Detection(
                "the five landmarks coincide: no alignment".into(),
            ));
        }
        let (a, b) = (re / norm, im / norm);
        Ok(Similarity {
            a,
            b,
            tx: tx - (a * fx - b * fy),
            ty: ty - (b * fx + a * fy),
        })
    }

    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        let (x, y) = (p[0] as f64, p[1] as f64);
        [
            (self.a * x - self.b * y + self.tx) as f32,
            (self.b * x + self.a * y + self.ty) as f32,
        ]
    }

    fn inverse(&self) -> Similarity {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        }
    }
}

/// The face's roll: the angle of the line from the left eye to the right eye against the
/// horizontal, in degrees, positive when the right eye (as seen) is lower.
pub fn roll_degrees(landmarks: &Landmarks) -> f32 {
    let [left, right] = [landmarks[0], landmarks[1]];
    (right[1] - left[1]).atan2(right[0] - left[0]).to_degrees()
}

/// The `side` x `side` upright crop of the face whose five points are `landmarks`: each
/// output pixel bilinearly sampled where the inverse transform puts it, pixels outside
/// the image repeating its nearest edge.
pub fn aligned_crop(
    image: &RgbImage,
    landmarks: &Landmarks,
    template: &Template,
    side: u32,
) -> Result<RgbImage> {
    let to_crop = Similarity::fit(landmarks, &template.in_pixels(side))?;
    let to_image = to_crop.inverse();
    let (w, h) = (image.width() as f32, image.height() as f32);
    let sample = |x: f32, y: f32| -> Rgb<u8> {
        // Pixel centres at integer + 0.5, as the template's coordinates are.
        let (x, y) = ((x - 0.5).clamp(0.0, w - 1.0), (y - 0.5).clamp(0.0, h - 1.0));
        let (x0, y0) = (x.floor() as u32, y.floor() as u32);
        let (x1, y1) = (
            (x0 + 1).min(image.width() - 1),
            (y0 + 1).min(image.height() - 1),
        );
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let p = |x, y| image.get_pixel(x, y).0.map(f32::from);
        let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
        Rgb(std::array::from_fn(|k| {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bottom = c[k] + (d[k] - c[k]) * fx;
            (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8
        }))
    };
    Ok(RgbImage::from_fn(side, side, |u, v| {
        let [x, y] = to_image.apply([u as f32 + 0.5, v as f32 + 0.5]);
        sample(x, y)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotate(points: &Landmarks, angle: f32, scale: f32, shift: [f32; 2]) -> Landmarks {
        let (s, c) = angle.to_radians().sin_cos();
        points.map(|[x, y]| {
            [
                scale * (c * x - s * y) + shift[0],
                scale * (s * x + c * y) + shift[1],
            ]
        })
    }

    #[test]
    fn the_transform_maps_the_landmarks_onto_the_template() -> Result<()> {
        let template = Template::default().in_pixels(100);
        let seen = rotate(&template, 25.0, 1.7, [40.0, -12.0]);
        let fit = Similarity::fit(&seen, &template)?;
        for (p, q) in seen.iter().zip(&template) {
            let mapped = fit.apply(*p);
            assert!((mapped[0] - q[0]).abs() < 1e-3 && (mapped[1] - q[1]).abs() < 1e-3);
        }
        // Inverse then forward is the identity.
        let back = fit.inverse().apply(fit.apply([3.0, 4.0]));
        assert!((back[0] - 3.0).abs() < 1e-4 && (back[1] - 4.0).abs() < 1e-4);
        // The template's own eyes are not quite level (ArcFace's points are measured).
        let expected_roll = 25.0 + roll_degrees(&template);
        assert!((roll_degrees(&seen) - expected_roll).abs() < 1e-3);
        Ok(())
    }

    /// A face drawn as five dots, rotated by 30 degrees and scaled by 2, comes back
    /// upright: each dot where the template puts it.
    #[test]
    fn a_rotated_scaled_face_comes_back_upright() -> Result<()> {
        let template = Template::default();
        let upright = template.in_pixels(64);
        let seen = rotate(&upright, 30.0, 2.0, [90.0, 20.0]);
        let mut image = RgbImage::from_pixel(240, 240, Rgb([0, 0, 0]));
        for [x, y] in seen {
            for dy in -3i32..=3 {
                for dx in -3i32..=3 {
                    let (px, py) = ((x as i32 + dx) as u32, (y as i32 + dy) as u32);
                    image.put_pixel(px, py, Rgb([255, 255, 255]));
                }
            }
        }
        let crop = aligned_crop(&image, &seen, &template, 64)?;
        for [x, y] in upright {
            let bright = crop.get_pixel(x as u32, y as u32)[0];
            assert!(bright > 200, "dot at ({x}, {y}) is {bright}");
        }
        // Half-way between the eyes is dark: nothing else was drawn.
        let [l, r] = [upright[0], upright[1]];
        let middle = crop.get_pixel(((l[0] + r[0]) / 2.0) as u32, l[1] as u32)[0];
        assert!(middle < 50, "{middle}");
        Ok(())
    }

    #[test]
    fn coincident_landmarks_are_refused_and_a_template_is_measured() -> Result<()> {
        assert!(Similarity::fit(&[[5.0, 5.0]; 5], &Template::default().points).is_err());
        let faces = [Template::default().in_pixels(100); 3];
        let measured = Template::measured(&faces, 100.0)?;
        for (m, d) in measured.points.iter().zip(&Template::default().points) {
            assert!((m[0] - d[0]).abs() < 1e-6 && (m[1] - d[1]).abs() < 1e-6);
        }
        Ok(())
    }
}
