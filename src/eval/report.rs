//! Reports people read: confusion-matrix images.

use crate::eval::metrics::Metrics;
use crate::image::draw::{draw_rect, draw_text, fill_rect, text_width};
use image::{Rgb, RgbImage};

const CELL: u32 = 64;
const SCALE: u32 = 2;
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// A confusion matrix as a picture: one cell per (true, predicted) pair, shaded by the
/// share of the true class's images, with the count written in it; true classes down
/// the left (with their image counts), predicted classes along the top, the title and
/// the overall accuracy above.
pub fn confusion_image(metrics: &Metrics, title: &str) -> RgbImage {
    let classes = &metrics.confusion.classes;
    let n = classes.len() as u32;
    let support = metrics.confusion.support();
    let row_labels: Vec<String> = classes
        .iter()
        .zip(&support)
        .map(|(c, s)| format!("{c} ({s})"))
        .collect();
    let left = row_labels
        .iter()
        .map(|l| text_width(l, SCALE))
        .max()
        .unwrap_or(0)
        + 24;
    let header = 3 * 8 * SCALE + 40;
    let width = (left + n * CELL + 16).max(text_width(title, SCALE) + 16);
    let height = header + n * CELL + 8 * SCALE + 24;
    let mut img = RgbImage::from_pixel(width, height, WHITE);

    draw_text(&mut img, 8, 6, title, SCALE, BLACK);
    let summary = format!(
        "accuracy {:.2}%  macro-F1 {:.2}%  n={}   rows: true, columns: predicted",
        100.0 * metrics.accuracy,
        100.0 * metrics.macro_f1,
        metrics.total
    );
    draw_text(&mut img, 8, 6 + 10 * SCALE as i64, &summary, 1, BLACK);
    for (j, class) in classes.iter().enumerate() {
        // Column headings: three letters fit a cell at this scale with room to spare.
        let short: String = class.chars().take(3).collect();
        let x = left + j as u32 * CELL;
        draw_centred(&mut img, x, header - 8 * SCALE - 6, &short, BLACK);
    }
    for (i, label) in row_labels.iter().enumerate() {
        let y = header + i as u32 * CELL;
        draw_text(
            &mut img,
            8,
            (y + (CELL - 8 * SCALE) / 2) as i64,
            label,
            SCALE,
            BLACK,
        );
        for j in 0..n as usize {
            let count = metrics.confusion.counts[i][j];
            let share = if support[i] == 0 {
                0.0
            } else {
                count as f64 / support[i] as f64
            };
            draw_cell(&mut img, left + j as u32 * CELL, y, count, share);
        }
    }
    img
}

/// One cell at (x, y): shaded from white (share 0) to dark blue (1), framed, its count in
/// the middle.
fn draw_cell(img: &mut RgbImage, x: u32, y: u32, count: u64, share: f64) {
    let shade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
    let color = Rgb([shade(20.0), shade(60.0), shade(160.0)]);
    let (x0, y0, x1, y1) = (x as i64, y as i64, (x + CELL) as i64, (y + CELL) as i64);
    fill_rect(img, x0, y0, x1, y1, color);
    draw_rect(img, (x0, y0, x1 + 1, y1 + 1), 1, BLACK);
    let ink = if share > 0.5 { WHITE } else { BLACK };
    draw_centred(img, x, y + (CELL - 8 * SCALE) / 2, &count.to_string(), ink);
}

/// `text` centred in the cell-wide column starting at `x`, its top at `y`.
fn draw_centred(img: &mut RgbImage, x: u32, y: u32, text: &str, ink: Rgb<u8>) {
    let tx = x as i64 + (CELL as i64 - text_width(text, SCALE) as i64) / 2;
    draw_text(img, tx, y as i64, text, SCALE, ink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Confusion;

    #[test]
    fn confusion_image_shades_by_share() {
        let mut c = Confusion::new(vec!["happiness".into(), "anger".into()]);
        for _ in 0..9 {
            c.add(0, 0);
        }
        c.add(0, 1);
        c.add(1, 0);
        let img = confusion_image(&c.metrics(), "test");
        assert!(img.width() > 2 * CELL && img.height() > 2 * CELL);
        // The (happiness, happiness) cell (90%) is darker than (happiness, anger) (10%).
        let left = img.width() - 2 * CELL - 16;
        let header = 3 * 8 * SCALE + 40;
        let corner = |i: u32, j: u32| img.get_pixel(left + j * CELL + 3, header + i * CELL + 3)[0];
        assert!(
            corner(0, 0) < corner(0, 1),
            "{} vs {}",
            corner(0, 0),
            corner(0, 1)
        );
    }
}
