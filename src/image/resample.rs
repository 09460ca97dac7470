//! Pillow's resampling (`Image.resize`, libImaging's `ImagingResample`) for 8-bit RGB,
//! reimplemented so that gfer's inputs match what the reference models were trained on.
//!
//! The algorithm: two separable passes (horizontal, then vertical), each a convolution
//! whose kernel support is widened by the downscale factor (so shrinking antialiases).
//! Per output pixel the kernel weights are computed in f64, normalised to sum to 1, then
//! turned into 22-bit fixed point; sums start at one half and are shifted back and
//! clamped to u8. The intermediate image of the first pass is rounded to u8, as in
//! Pillow, so the order of the passes matters; it follows Pillow 13. Integer sums make the result independent of summation order, so the passes
//! can run over rows in parallel and still match Pillow bit for bit.

use ::image::RgbImage;
use rayon::prelude::*;
use std::ops::Range;

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the value minus
/// 2 for the overshoot of kernels with negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Triangle filter, support 1 (`Image.BILINEAR`).
    Bilinear,
    /// Keys cubic convolution with a = -0.5, support 2 (`Image.BICUBIC`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The kernel, written with the same operations in the same order as Pillow's so
    /// that the f64 weights are identical.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point kernels of one axis: output pixel `o` reads `len[o]` input pixels from
/// `first[o]` on, with weights `weights[o * ksize..][..len[o]]`.
struct Kernels {
    ksize: usize,
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Kernels {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range
    /// mapped onto `out_size` pixels, keeping only the outputs in `window`.
    fn new(in_size: usize, out_size: usize, window: Range<usize>, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inverse = 1.0 / filter_scale;
        let mut kernels = Kernels {
            ksize,
            first: Vec::with_capacity(window.len()),
            len: Vec::with_capacity(window.len()),
            weights: Vec::with_capacity(window.len() * ksize),
        };
        let mut row = vec![0f64; ksize];
        for o in window {
            let center = (o as f64 + 0.5) * scale;
            // `as` truncates like C's (int) cast; negatives clamp to 0 either way.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let len = hi.saturating_sub(lo);
            let mut total = 0.0;
            for (i, w) in row.iter_mut().enumerate().take(len) {
                *w = filter.weight(((i + lo) as f64 - center + 0.5) * inverse);
                total += *w;
            }
            for i in 0..ksize {
                let w = if i < len && total != 0.0 {
                    row[i] / total
                } else if i < len {
                    row[i]
                } else {
                    0.0
                };
                let fixed = w * (1 << PRECISION_BITS) as f64;
                kernels.weights.push(if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                });
            }
            kernels.first.push(lo);
            kernels.len.push(len);
        }
        kernels
    }

    fn weights(&self, o: usize) -> &[i32] {
        &self.weights[o * self.ksize..][..self.len[o]]
    }

    /// The input pixels read by any output.
    fn span(&self) -> Range<usize> {
        let last = self.first.len() - 1;
        self.first[0]..self.first[last] + self.len[last]
    }
}

#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize to `width` x `height` exactly as Pillow's `Image.resize((width, height), filter)`.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_window(img, (width, height), (0, 0, width, height), filter)
}

/// Resize to `full` = (width, height) and keep only the window (left, top, width,
/// height) of the result, computing nothing outside it. Equal, pixel for pixel, to
/// resizing the whole image and cropping (e.g. torchvision's `CenterCrop`).
pub fn resize_window(
    img: &RgbImage,
    full: (u32, u32),
    window: (u32, u32, u32, u32),
    filter: Filter,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (full_w, full_h) = (full.0 as usize, full.1 as usize);
    let (left, top, out_w, out_h) = (
        window.0 as usize,
        window.1 as usize,
        window.2 as usize,
        window.3 as usize,
    );
    assert!(
        left + out_w <= full_w && top + out_h <= full_h,
        "window {window:?} outside the {full_w}x{full_h} result"
    );
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(window.2, window.3);
    }
    // A pass runs only when its side changes size; kernels only for the window.
    let horizontal =
        (full_w != in_w).then(|| Kernels::new(in_w, full_w, left..left + out_w, filter));
    let vertical = (full_h != in_h).then(|| Kernels::new(in_h, full_h, top..top + out_h, filter));
    // The source columns and rows the window depends on.
    let cols = horizontal
        .as_ref()
        .map_or(left..left + out_w, Kernels::span);
    let rows = vertical.as_ref().map_or(top..top + out_h, Kernels::span);
    let src = img.as_raw();
    let out = match (&horizontal, &vertical) {
        (None, None) => copy_region(src, in_w, cols, rows),
        (Some(h), None) => horizontal_pass(src, in_w, rows, 0, h),
        (None, Some(v)) => vertical_pass(src, in_w, cols, 0, v),
        // Pillow 13 runs the vertical pass first when the height shrinks by more than
        // twice as many pixels as the width (earlier Pillow always went horizontal
        // first; the two orders differ by at most 1 level on a few pixels).
        (Some(h), Some(v))
            if full_h < in_h && 2 * (in_w as i64 - full_w as i64) < (in_h - full_h) as i64 =>
        {
            let narrowed = vertical_pass(src, in_w, cols.clone(), 0, v);
            horizontal_pass(&narrowed, cols.len(), 0..out_h, cols.start, h)
        }
        (Some(h), Some(v)) => {
            let shortened = horizontal_pass(src, in_w, rows.clone(), 0, h);
            vertical_pass(&shortened, out_w, 0..out_w, rows.start, v)
        }
    };
    RgbImage::from_raw(window.2, window.3, out)
        .unwrap_or_else(|| unreachable!("buffer sized for the window"))
}

/// The `cols` x `rows` region of an RGB buffer `src_w` pixels wide.
fn copy_region(src: &[u8], src_w: usize, cols: Range<usize>, rows: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for y in rows {
        out.extend_from_slice(&src[(y * src_w + cols.start) * 3..(y * src_w + cols.end) * 3]);
    }
    out
}

/// Horizontal convolution of the given rows of `src` (`src_w` pixels wide, whose
/// column 0 is source column `col_offset`): one output row per input row.
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    rows: Range<usize>,
    col_offset: usize,
    k: &Kernels,
) -> Vec<u8> {
    let out_w = k.first.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    out.par_chunks_mut(out_w * 3)
        .zip(rows)
        .for_each(|(out_row, y)| {
            let row = &src[y * src_w * 3..(y + 1) * src_w * 3];
            for (o, px) in out_row.chunks_exact_mut(3).enumerate() {
                let first = (k.first[o] - col_offset) * 3;
                let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
                for (p, &w) in row[first..].chunks_exact(3).zip(k.weights(o)) {
                    s0 += p[0] as i32 * w;
                    s1 += p[1] as i32 * w;
                    s2 += p[2] as i32 * w;
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        });
    out
}

/// Vertical convolution of the given columns of `src` (`src_w` pixels wide, whose
/// row 0 is source row `row_offset`): one output row per kernel.
fn vertical_pass(
    src: &[u8],
    src_w: usize,
    cols: Range<usize>,
    row_offset: usize,
    k: &Kernels,
) -> Vec<u8> {
    let stride = cols.len() * 3;
    let mut out = vec![0u8; k.first.len() * stride];
    out.par_chunks_mut(stride)
        .enumerate()
        .for_each(|(o, out_row)| {
            let mut sums = vec![HALF; stride];
            for (j, &w) in k.weights(o).iter().enumerate() {
                let y = k.first[o] - row_offset + j;
                let row = &src[(y * src_w + cols.start) * 3..][..stride];
                for (s, &p) in sums.iter_mut().zip(row) {
                    *s += p as i32 * w;
                }
            }
            for (dst, s) in out_row.iter_mut().zip(sums) {
                *dst = clip8(s);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            ::image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn same_size_is_identity() {
        let img = gradient(17, 9);
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            assert_eq!(resize(&img, 17, 9, filter), img);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 29, ::image::Rgb([200, 3, 77]));
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (w, h) in [(1, 1), (5, 40), (224, 224), (7, 3)] {
                let out = resize(&img, w, h, filter);
                assert!(
                    out.pixels().all(|p| p.0 == [200, 3, 77]),
                    "{filter:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn kernels_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(100, 224), (1000, 224), (3, 5), (224, 224)] {
            let k = Kernels::new(n_in, n_out, 0..n_out, Filter::Bicubic);
            for o in 0..n_out {
                let sum: i64 = k.weights(o).iter().map(|&w| w as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.ksize as i64,
                    "{n_in}->{n_out} at {o}: {sum}"
                );
            }
        }
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = gradient(61, 43);
        let full = resize(&img, 80, 57, Filter::Bicubic);
        let window = resize_window(&img, (80, 57), (9, 4, 50, 50), Filter::Bicubic);
        let cropped = ::image::imageops::crop_imm(&full, 9, 4, 50, 50).to_image();
        assert_eq!(window, cropped);
    }
}
