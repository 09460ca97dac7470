//! Minimal drawing on RGB images: rectangles and ASCII text in a built-in 8x8 bitmap font,
//! so reports and annotated photos need no font files on the machine.

use image::{Rgb, RgbImage};

/// Fills the rectangle `[x0, x1) x [y0, y1)`, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Draws the outline of a rectangle `thickness` pixels wide, inside the given bounds.
pub fn draw_rect(
    img: &mut RgbImage,
    (x0, y0, x1, y1): (i64, i64, i64, i64),
    thickness: i64,
    color: Rgb<u8>,
) {
    fill_rect(img, x0, y0, x1, y0 + thickness, color);
    fill_rect(img, x0, y1 - thickness, x1, y1, color);
    fill_rect(img, x0, y0, x0 + thickness, y1, color);
    fill_rect(img, x1 - thickness, y0, x1, y1, color);
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 8 * scale
}

/// Draws ASCII `text` with its top-left corner at (x, y); each font pixel becomes a
/// `scale` x `scale` square. Characters outside ASCII are drawn as `?`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as i64 * 8 * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = gx + col * s;
                    let py = y + row as i64 * s;
                    fill_rect(img, px, py, px + s, py + s, color);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_marks_pixels_inside_its_box_only() {
        let mut img = RgbImage::new(40, 12);
        draw_text(&mut img, 2, 2, "Hi", 1, Rgb([255, 0, 0]));
        let lit: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] == 255)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(!lit.is_empty());
        assert!(lit
            .iter()
            .all(|&(x, y)| (2..18).contains(&x) && (2..10).contains(&y)));
        assert_eq!(text_width("Hi", 2), 32);
    }

    #[test]
    fn rect_is_clipped_to_the_image() {
        let mut img = RgbImage::new(10, 10);
        draw_rect(&mut img, (-5, -5, 20, 20), 2, Rgb([0, 255, 0]));
        fill_rect(&mut img, 8, 8, 100, 100, Rgb([0, 0, 255]));
        assert_eq!(img.get_pixel(9, 9)[2], 255);
    }
}
