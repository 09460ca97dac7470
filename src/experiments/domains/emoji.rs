//! Emoji faces of three artists, one domain each: Noto (Google's 64 px PNGs from npm
//! `emoji-datasource-google`), Twemoji (`@twemoji/svg`) and OpenMoji (`openmoji`), the
//! SVGs rendered with resvg. Each face is framed by its drawn content (a square around
//! it with a small margin), so that the artists differ in drawing, not in framing.

use super::{missing_asset, parse_svg, read_text, render_svg_region, Planned, Split};
use crate::image::resample::{self, Filter};
use crate::{Error, Expression, Result};
use image::{Rgb, RgbImage, RgbaImage};
use resvg::{tiny_skia, usvg};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The faces that map cleanly to a class (offline-assets.md), by code point in upper-case
/// hex without the variation selector FE0F.
pub const CLASS_MAP: &[(Expression, &[&str])] = &[
    (
        Expression::Happiness,
        &[
            "1F600", "1F603", "1F604", "1F601", "1F606", "1F60A", "1F642", "263A", "1F602", "1F923",
        ],
    ),
    (
        Expression::Sadness,
        &[
            "1F622", "1F62D", "1F61E", "1F614", "2639", "1F641", "1F625", "1F979",
        ],
    ),
    (Expression::Anger, &["1F620", "1F621", "1F92C", "1F624"]),
    (Expression::Surprise, &["1F62E", "1F62F", "1F632"]),
    (Expression::Fear, &["1F628", "1F631", "1F630", "1F627"]),
    (Expression::Disgust, &["1F922", "1F92E"]),
    (Expression::Neutral, &["1F610", "1F611"]),
];

/// Margin around the drawn face, as a fraction of its larger side.
const MARGIN: f32 = 0.04;

/// The class of an emoji code point (upper- or lower-case hex, with or without FE0F).
pub fn class_of(code: &str) -> Option<Expression> {
    let code = base_code(code);
    CLASS_MAP
        .iter()
        .find(|(_, codes)| codes.contains(&code.as_str()))
        .map(|(class, _)| *class)
}

/// Upper-case code point sequence without the variation selector.
fn base_code(code: &str) -> String {
    code.to_ascii_uppercase()
        .split('-')
        .filter(|part| *part != "FE0F")
        .collect::<Vec<_>>()
        .join("-")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artist {
    Noto,
    Twemoji,
    Openmoji,
}

impl Artist {
    pub const ALL: [Artist; 3] = [Artist::Noto, Artist::Twemoji, Artist::Openmoji];

    /// The domain name.
    pub fn domain(self) -> &'static str {
        match self {
            Artist::Noto => "noto",
            Artist::Twemoji => "twemoji",
            Artist::Openmoji => "openmoji",
        }
    }

    /// The folder holding this artist's images, under the assets folder.
    fn image_dir(self, assets: &Path) -> PathBuf {
        match self {
            Artist::Noto => assets.join("emoji/google/package/img/google/64"),
            Artist::Twemoji => assets.join("emoji/twemoji/package"),
            Artist::Openmoji => assets.join("emoji/openmoji/package/color/svg"),
        }
    }

    /// The SVG file names this artist may use for a code point, in order of preference.
    fn svg_names(self, code: &str) -> Vec<String> {
        match self {
            Artist::Noto => Vec::new(),
            // Twemoji names are lower case and drop FE0F, except for a few sequences.
            Artist::Twemoji => vec![
                format!("{}.svg", code.to_ascii_lowercase()),
                format!("{}-fe0f.svg", code.to_ascii_lowercase()),
            ],
            Artist::Openmoji => vec![format!("{code}.svg")],
        }
    }
}

/// An emoji image file.
#[derive(Clone, Debug)]
pub enum EmojiSource {
    Png(PathBuf),
    Svg(PathBuf),
}

/// One entry of emoji-datasource's `emoji.json` (the fields used here).
#[derive(Deserialize)]
struct NotoEntry {
    unified: String,
    non_qualified: Option<String>,
    image: String,
    #[serde(default)]
    has_img_google: bool,
}

/// The artist's faces of [`CLASS_MAP`] that exist in the fetched package, all in the
/// test split. A face the artist lacks is left out (and logged).
pub fn plan(artist: Artist, assets: &Path) -> Result<Vec<Planned<EmojiSource>>> {
    let dir = artist.image_dir(assets);
    if !dir.is_dir() {
        return Err(missing_asset(&dir, "emoji"));
    }
    let noto = match artist {
        Artist::Noto => Some(read_noto_metadata(assets)?),
        _ => None,
    };
    let mut plan = Vec::new();
    for &(class, codes) in CLASS_MAP {
        for &code in codes {
            let source = match &noto {
                Some(entries) => noto_image(entries, code, &dir)?.map(EmojiSource::Png),
                None => artist
                    .svg_names(code)
                    .into_iter()
                    .map(|name| dir.join(name))
                    .find(|path| path.is_file())
                    .map(EmojiSource::Svg),
            };
            match source {
                Some(source) => plan.push(Planned {
                    file: format!("{}/{code}.png", class.name()),
                    label: class,
                    split: Split::Test,
                    source,
                }),
                None => tracing::warn!("{} has no image for U+{code}; left out", artist.domain()),
            }
        }
    }
    Ok(plan)
}

fn read_noto_metadata(assets: &Path) -> Result<Vec<NotoEntry>> {
    let path = assets.join("emoji/google/package/emoji.json");
    if !path.is_file() {
        return Err(missing_asset(&path, "emoji"));
    }
    serde_json::from_str(&read_text(&path)?).map_err(|e| Error::Data {
        file: path,
        line: None,
        message: format!("not emoji-datasource metadata: {e}"),
    })
}

/// The Noto PNG of a code point, when the metadata says Google draws it. The metadata
/// promising an image that is not on disk means a broken fetch, which is an error.
fn noto_image(entries: &[NotoEntry], code: &str, dir: &Path) -> Result<Option<PathBuf>> {
    let entry = entries.iter().find(|e| {
        base_code(&e.unified) == code
            || e.non_qualified.as_deref().map(base_code) == Some(code.to_string())
    });
    match entry {
        Some(entry) if entry.has_img_google => {
            let path = dir.join(&entry.image);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(missing_asset(&path, "emoji"))
            }
        }
        _ => Ok(None),
    }
}

/// Renders an emoji onto white, framed by its drawn content, `size` x `size`.
pub fn render(source: &EmojiSource, size: u32) -> Result<RgbImage> {
    match source {
        EmojiSource::Svg(path) => {
            let name = path.display().to_string();
            let tree = parse_svg(&read_text(path)?, &name)?;
            let nothing_drawn = || Error::Image {
                path: name.clone(),
                reason: "the SVG draws nothing".to_string(),
            };
            let [left, top, right, bottom] = drawn_bounds(tree.root()).ok_or_else(nothing_drawn)?;
            let (width, height) = (right - left, bottom - top);
            let side = width.max(height) * (1.0 + 2.0 * MARGIN);
            let region = tiny_skia::Rect::from_xywh(
                left + (width - side) / 2.0,
                top + (height - side) / 2.0,
                side,
                side,
            )
            .ok_or_else(nothing_drawn)?;
            render_svg_region(&tree, region, size, &name)
        }
        EmojiSource::Png(path) => {
            let image = image::open(path)
                .map_err(|e| Error::Image {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
                .to_rgba8();
            let framed = frame_on_white(&image).ok_or_else(|| Error::Image {
                path: path.display().to_string(),
                reason: "the image is fully transparent".to_string(),
            })?;
            Ok(resample::resize(&framed, size, size, Filter::Bicubic))
        }
    }
}

/// Left, top, right, bottom of everything a group draws (strokes included), in canvas
/// coordinates. Empty groups are skipped: OpenMoji's empty layers (`<g id="hair"/>`)
/// would otherwise stretch the group's own box to the origin.
fn drawn_bounds(group: &usvg::Group) -> Option<[f32; 4]> {
    let mut bounds: Option<[f32; 4]> = None;
    for child in group.children() {
        let child_bounds = match child {
            usvg::Node::Group(group) => drawn_bounds(group),
            drawn => {
                let r = drawn.abs_stroke_bounding_box();
                Some([r.left(), r.top(), r.right(), r.bottom()])
            }
        };
        if let Some([l, t, r, b]) = child_bounds {
            bounds = Some(match bounds {
                None => [l, t, r, b],
                Some([l0, t0, r0, b0]) => [l0.min(l), t0.min(t), r0.max(r), b0.max(b)],
            });
        }
    }
    bounds
}

/// Composites the visible part of `image` onto a white square around it (with
/// [`MARGIN`]). `None` when nothing is visible.
fn frame_on_white(image: &RgbaImage) -> Option<RgbImage> {
    let visible = |p: &image::Rgba<u8>| p.0[3] > 0;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in image.enumerate_pixels() {
        if visible(p) {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    if x0 >= x1 {
        return None;
    }
    let content = (x1 - x0).max(y1 - y0);
    let side = (content as f32 * (1.0 + 2.0 * MARGIN)).round() as u32;
    // Offsets of the content inside the square, centring it.
    let left = (side - (x1 - x0)) / 2;
    let top = (side - (y1 - y0)) / 2;
    let mut framed = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    for y in y0..y1 {
        for x in x0..x1 {
            let [r, g, b, a] = image.get_pixel(x, y).0;
            let over_white =
                |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
            framed.put_pixel(
                x - x0 + left,
                y - y0 + top,
                Rgb([over_white(r), over_white(g), over_white(b)]),
            );
        }
    }
    Some(framed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn class_map_has_33_distinct_faces_in_every_class() {
        let codes: Vec<&str> = CLASS_MAP
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        assert_eq!(codes.len(), 33);
        assert_eq!(codes.iter().collect::<HashSet<_>>().len(), 33);
        let classes: HashSet<Expression> = CLASS_MAP.iter().map(|(e, _)| *e).collect();
        assert_eq!(classes.len(), Expression::COUNT);
        let sizes: Vec<(Expression, usize)> =
            CLASS_MAP.iter().map(|(e, c)| (*e, c.len())).collect();
        assert_eq!(
            sizes,
            [
                (Expression::Happiness, 10),
                (Expression::Sadness, 8),
                (Expression::Anger, 4),
                (Expression::Surprise, 3),
                (Expression::Fear, 4),
                (Expression::Disgust, 2),
                (Expression::Neutral, 2),
            ]
        );
    }

    #[test]
    fn code_points_map_to_classes_in_any_spelling() {
        assert_eq!(class_of("1F600"), Some(Expression::Happiness));
        assert_eq!(class_of("263a-fe0f"), Some(Expression::Happiness));
        assert_eq!(class_of("2639-FE0F"), Some(Expression::Sadness));
        assert_eq!(class_of("1f631"), Some(Expression::Fear));
        assert_eq!(class_of("1F92E"), Some(Expression::Disgust));
        assert_eq!(class_of("1F611"), Some(Expression::Neutral));
        // Thinking face and red heart are not expressions here.
        assert_eq!(class_of("1F914"), None);
        assert_eq!(class_of("2764-FE0F"), None);
    }

    #[test]
    fn file_names_follow_each_artist() {
        assert_eq!(
            Artist::Twemoji.svg_names("263A"),
            ["263a.svg", "263a-fe0f.svg"]
        );
        assert_eq!(Artist::Openmoji.svg_names("1F60A"), ["1F60A.svg"]);
    }

    #[test]
    fn noto_metadata_resolves_qualified_and_unqualified_codes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("263a-fe0f.png"), b"png").unwrap();
        let entries: Vec<NotoEntry> = serde_json::from_str(
            r#"[{"unified":"263A-FE0F","non_qualified":"263A","image":"263a-fe0f.png","has_img_google":true},
                {"unified":"1F979","non_qualified":null,"image":"1f979.png","has_img_google":false}]"#,
        )
        .unwrap();
        let found = noto_image(&entries, "263A", dir.path()).unwrap();
        assert_eq!(found, Some(dir.path().join("263a-fe0f.png")));
        // Google does not draw it: left out. Not in the metadata at all: left out.
        assert_eq!(noto_image(&entries, "1F979", dir.path()).unwrap(), None);
        assert_eq!(noto_image(&entries, "1F600", dir.path()).unwrap(), None);
    }

    #[test]
    fn svg_framing_ignores_empty_layers() {
        let tree = super::super::parse_svg(
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">
                <g id="hair"/><g id="line"><rect x="20" y="30" width="10" height="20"/></g></svg>"#,
            "test",
        )
        .unwrap();
        assert_eq!(drawn_bounds(tree.root()), Some([20.0, 30.0, 30.0, 50.0]));
    }

    #[test]
    fn framing_centres_the_visible_part_on_white() {
        // A 2x1 opaque black bar inside a 10x10 transparent image.
        let mut image = RgbaImage::new(10, 10);
        image.put_pixel(3, 5, image::Rgba([0, 0, 0, 255]));
        image.put_pixel(4, 5, image::Rgba([0, 0, 0, 128]));
        let framed = frame_on_white(&image).unwrap();
        assert_eq!(framed.dimensions(), (2, 2));
        assert_eq!(framed.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(framed.get_pixel(1, 0).0, [127, 127, 127]);
        assert_eq!(framed.get_pixel(0, 1).0, [255, 255, 255]);
        assert!(frame_on_white(&RgbaImage::new(4, 4)).is_none());
    }
}
