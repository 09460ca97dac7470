//! Cartoon faces composed from the Avataaars SVG parts shipped in PyPI
//! `python-avatars==1.4.1` (`python_avatars/avatar_parts/`), the way its `Avatar.render`
//! composes them: the style template (`styles/<style>.svg`) gets the skin colour on
//! `Skin-Color` and the background colour on `Background-Color`; the children of each
//! part's root element are appended to the template's `Top`, `Eyebrow`, `Eyes`, `Nose`,
//! `Mouth` and `Clothing` groups; the top (hair or hat) gets its colour on `Hair-Color`
//! or `Fabric-Color` and receives the facial hair (coloured on `Facial-Hair-Color`) and
//! the accessory in its `Facial-Hair` and `Accessory` groups; clothes get their colour on
//! `Fabric-Color` and, for the graphic shirt, the graphic in `Graphic`. Every id of a part
//! and every reference to one is prefixed with the part's name, so that parts do not
//! clash.
//!
//! The expression of each class comes from its mouth, eyes and eyebrows (the recipe of
//! offline-assets.md, see [`recipe`]); everything else is drawn at random from a ChaCha
//! stream per avatar, so avatar `i` of a class is the same for a seed whatever N is.
//! The image is the square around the head (hair and shoulders included).

use super::{missing_asset, parse_svg, render_svg_region, Planned, Split};
use crate::{Error, Expression, Result};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resvg::tiny_skia;
use resvg::usvg::roxmltree;
use std::collections::BTreeMap;
use std::path::Path;

pub const DOMAIN: &str = "avatars";

const SVG_NS: &str = "http://www.w3.org/2000/svg";
const XLINK_NS: &str = "http://www.w3.org/1999/xlink";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// The square of the 264x280 avatar canvas that is rendered: x, y, side.
const HEAD_REGION: (f32, f32, f32) = (32.0, 10.0, 200.0);

/// python_avatars' colour enums (`SkinColor`, `HairColor`, `ClothingColor`,
/// `BackgroundColor`).
const SKIN_COLORS: [&str; 7] = [
    "#FD9841", "#F8D25C", "#FFDBB4", "#EDB98A", "#D08B5B", "#AE5D29", "#614335",
];
const HAIR_COLORS: [&str; 10] = [
    "#A55728", "#2C1B18", "#B58143", "#D6B370", "#724133", "#4A312C", "#F59797", "#ECDCBF",
    "#C93305", "#E8E1E1",
];
const CLOTHING_COLORS: [&str; 14] = [
    "#262E33", "#65C9FF", "#5199E4", "#25557C", "#E6E6E6", "#929598", "#3C4F5C", "#B1E2FF",
    "#A7FFC4", "#FFDEB5", "#FFFFB1", "#FF488E", "#FF5C5C", "#FFFFFF",
];
const BACKGROUND_COLORS: [&str; 3] = ["#65C9FF", "#262E33", "#FFFFFF"];
const STYLES: [&str; 2] = ["styles/circle", "styles/transparent"];

/// The parts that make a class's expression; one of each list is drawn per avatar.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    pub mouths: &'static [&'static str],
    pub eyes: &'static [&'static str],
    pub eyebrows: &'static [&'static str],
}

/// The per-class recipe of offline-assets.md. Eyebrows come in the outlined and the
/// `_natural` drawing where both exist; happiness leaves them free between default and
/// raised (python_avatars' own `happy()` raises them).
pub fn recipe(class: Expression) -> Recipe {
    let (mouths, eyes, eyebrows): (&[&str], &[&str], &[&str]) = match class {
        Expression::Happiness => (
            &["mouth/smile", "mouth/big_smile"],
            &["eyes/happy"],
            &[
                "eyebrows/default",
                "eyebrows/default_natural",
                "eyebrows/raised_excited",
                "eyebrows/raised_excited_natural",
            ],
        ),
        Expression::Sadness => (
            &["mouth/sad", "mouth/concerned"],
            &["eyes/cry"],
            &["eyebrows/sad_concerned", "eyebrows/sad_concerned_natural"],
        ),
        Expression::Anger => (
            &["mouth/serious", "mouth/grimace"],
            &["eyes/squint"],
            &["eyebrows/angry", "eyebrows/angry_natural"],
        ),
        Expression::Surprise => (
            &["mouth/disbelief"],
            &["eyes/surprised"],
            &["eyebrows/raised_excited", "eyebrows/raised_excited_natural"],
        ),
        Expression::Fear => (
            &["mouth/scream_open"],
            &["eyes/surprised"],
            &["eyebrows/sad_concerned", "eyebrows/sad_concerned_natural"],
        ),
        Expression::Disgust => (
            &["mouth/vomit", "mouth/grimace"],
            &["eyes/squint"],
            &["eyebrows/frown_natural"],
        ),
        Expression::Neutral => (
            &["mouth/serious"],
            &["eyes/default"],
            &["eyebrows/default", "eyebrows/default_natural"],
        ),
    };
    Recipe {
        mouths,
        eyes,
        eyebrows,
    }
}

/// The parts and colours of one avatar. Parts are named by their path under
/// `avatar_parts/` without `.svg` (`mouth/smile`, `top/hair/bob`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Avatar {
    pub style: &'static str,
    pub background_color: &'static str,
    pub skin_color: &'static str,
    /// A hair (`top/hair/...`) or a hat (`top/hat/...`).
    pub top: String,
    pub hair_color: &'static str,
    pub hat_color: &'static str,
    pub facial_hair: Option<String>,
    pub facial_hair_color: &'static str,
    pub accessory: Option<String>,
    pub clothing: String,
    pub clothing_color: &'static str,
    /// The print of `clothes/graphic_shirt`.
    pub graphic: Option<String>,
    pub nose: String,
    pub eyebrows: &'static str,
    pub eyes: &'static str,
    pub mouth: &'static str,
}

/// Every SVG part of the package, by name.
pub struct AvatarParts {
    files: BTreeMap<String, String>,
}

/// Changes made to an SVG while it is copied into the composed avatar.
#[derive(Default)]
struct Edits<'a> {
    /// Prepended to every id and every reference to one.
    prefix: String,
    /// (element id, attribute, value): attributes set on the element with that id.
    attributes: Vec<(&'a str, &'a str, &'a str)>,
    /// (element id, markup): markup appended to the children of the element with that id.
    contents: Vec<(&'a str, String)>,
}

impl AvatarParts {
    /// Reads every part under `assets/python-avatars/python_avatars/avatar_parts/`.
    pub fn load(assets: &Path) -> Result<AvatarParts> {
        let root = assets.join("python-avatars/python_avatars/avatar_parts");
        if !root.is_dir() {
            return Err(missing_asset(&root, "avatars"));
        }
        let mut files = BTreeMap::new();
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::Data {
                file: root.clone(),
                line: None,
                message: e.to_string(),
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "svg") {
                let name = path
                    .strip_prefix(&root)
                    .unwrap_or(path)
                    .with_extension("")
                    .to_string_lossy()
                    .replace('\\', "/");
                files.insert(name, super::read_text(path)?);
            }
        }
        let parts = AvatarParts { files };
        // Every part a recipe or the composition needs must be there.
        let needed = Expression::ALL.iter().flat_map(|&class| {
            let r = recipe(class);
            [r.mouths, r.eyes, r.eyebrows].concat()
        });
        for name in needed.chain(STYLES) {
            if !parts.files.contains_key(name) {
                return Err(missing_asset(&root.join(format!("{name}.svg")), "avatars"));
            }
        }
        for folder in ["top/hair", "clothes", "nose"] {
            if parts.names_in(folder).is_empty() {
                return Err(missing_asset(&root.join(folder), "avatars"));
            }
        }
        Ok(parts)
    }

    /// The parts directly in `folder`, sorted.
    fn names_in(&self, folder: &str) -> Vec<&str> {
        self.files
            .keys()
            .filter(|name| name.rsplit_once('/').map(|(parent, _)| parent) == Some(folder))
            .map(String::as_str)
            .collect()
    }

    fn text(&self, name: &str) -> Result<&str> {
        self.files
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::Config(format!("python-avatars has no part {name}.svg")))
    }

    /// Draws the free parts and colours of an avatar of `class`.
    pub fn random_avatar(&self, class: Expression, rng: &mut impl Rng) -> Avatar {
        let recipe = recipe(class);
        let pick = |names: &[&'static str], rng: &mut dyn rand::RngCore| -> &'static str {
            names.choose(rng).copied().unwrap_or_default()
        };
        let pick_part = |folder: &str, rng: &mut dyn rand::RngCore| -> Option<String> {
            self.names_in(folder).choose(rng).map(|s| s.to_string())
        };
        let tops: Vec<&str> = [self.names_in("top/hair"), self.names_in("top/hat")].concat();
        let top = tops.choose(rng).map(|s| s.to_string()).unwrap_or_default();
        let clothing = pick_part("clothes", rng).unwrap_or_default();
        // The custom-text print needs a font; the other prints are drawings.
        let graphics: Vec<&str> = self
            .names_in("clothes/graphic")
            .into_iter()
            .filter(|name| !name.ends_with("/custom_text"))
            .collect();
        let graphic = (clothing == "clothes/graphic_shirt")
            .then(|| graphics.choose(rng).map(|s| s.to_string()))
            .flatten();
        // Like python_avatars, no facial hair and no accessory half of the time.
        let facial_hair = rng
            .gen_bool(0.5)
            .then(|| pick_part("facial_hair", rng))
            .flatten();
        let accessory = rng
            .gen_bool(0.5)
            .then(|| pick_part("accessories", rng))
            .flatten();
        Avatar {
            style: pick(&STYLES, rng),
            background_color: pick(&BACKGROUND_COLORS, rng),
            skin_color: pick(&SKIN_COLORS, rng),
            top,
            hair_color: pick(&HAIR_COLORS, rng),
            hat_color: pick(&CLOTHING_COLORS, rng),
            facial_hair,
            facial_hair_color: pick(&HAIR_COLORS, rng),
            accessory,
            clothing,
            clothing_color: pick(&CLOTHING_COLORS, rng),
            graphic,
            nose: pick_part("nose", rng).unwrap_or_default(),
            eyebrows: pick(recipe.eyebrows, rng),
            eyes: pick(recipe.eyes, rng),
            mouth: pick(recipe.mouths, rng),
        }
    }

    /// The avatar as one SVG document.
    pub fn compose(&self, avatar: &Avatar) -> Result<String> {
        let mut top_contents = Vec::new();
        if let Some(facial_hair) = &avatar.facial_hair {
            let markup = self.compose_part(
                facial_hair,
                Edits {
                    attributes: vec![("Facial-Hair-Color", "fill", avatar.facial_hair_color)],
                    ..Edits::default()
                },
            )?;
            top_contents.push(("Facial-Hair", markup));
        }
        if let Some(accessory) = &avatar.accessory {
            top_contents.push(("Accessory", self.compose_part(accessory, Edits::default())?));
        }
        let top_color = if avatar.top.starts_with("top/hat/") {
            ("Fabric-Color", "fill", avatar.hat_color)
        } else {
            ("Hair-Color", "fill", avatar.hair_color)
        };
        let top = self.compose_part(
            &avatar.top,
            Edits {
                attributes: vec![top_color],
                contents: top_contents,
                ..Edits::default()
            },
        )?;

        let mut clothing_contents = Vec::new();
        if let Some(graphic) = &avatar.graphic {
            // python_avatars moves the print onto the chest through the id
            // `Clothing/Graphic/<Capitalised-Name>`.
            let graphic_id = format!("Clothing/Graphic/{}", capitalised_id(graphic));
            let markup = self.compose_part(
                graphic,
                Edits {
                    attributes: vec![(&graphic_id, "transform", "translate(77.000000, 58.000000)")],
                    ..Edits::default()
                },
            )?;
            clothing_contents.push(("Graphic", markup));
        }
        let clothing = self.compose_part(
            &avatar.clothing,
            Edits {
                attributes: vec![("Fabric-Color", "fill", avatar.clothing_color)],
                contents: clothing_contents,
                ..Edits::default()
            },
        )?;

        let plain = |name: &str| self.compose_part(name, Edits::default());
        let edits = Edits {
            prefix: prefix_for(avatar.style),
            attributes: vec![
                ("Background-Color", "fill", avatar.background_color),
                ("Skin-Color", "fill", avatar.skin_color),
            ],
            contents: vec![
                ("Top", top),
                ("Eyebrow", plain(avatar.eyebrows)?),
                ("Eyes", plain(avatar.eyes)?),
                ("Nose", plain(&avatar.nose)?),
                ("Mouth", plain(avatar.mouth)?),
                ("Clothing", clothing),
            ],
        };
        let text = self.text(avatar.style)?;
        let doc = parse_xml(text, avatar.style)?;
        let mut out = String::with_capacity(text.len() * 4);
        write_node(doc.root_element(), &edits, &mut out, true);
        Ok(out)
    }

    /// The children of a part's root element, edited, as markup.
    fn compose_part(&self, name: &str, mut edits: Edits) -> Result<String> {
        edits.prefix = prefix_for(name);
        let doc = parse_xml(self.text(name)?, name)?;
        let mut out = String::new();
        for child in doc.root_element().children() {
            write_node(child, &edits, &mut out, false);
        }
        Ok(out)
    }

    /// Renders the avatar's head square onto white, `size` x `size`.
    pub fn render(&self, avatar: &Avatar, size: u32) -> Result<RgbImage> {
        let name = format!(
            "avatar with {} {} {}",
            avatar.mouth, avatar.eyes, avatar.eyebrows
        );
        let tree = parse_svg(&self.compose(avatar)?, &name)?;
        let (x, y, side) = HEAD_REGION;
        let region = tiny_skia::Rect::from_xywh(x, y, side, side).ok_or_else(|| Error::Image {
            path: name.clone(),
            reason: "empty head region".to_string(),
        })?;
        render_svg_region(&tree, region, size, &name)
    }
}

/// `avatars_per_class` avatars of every class, in canonical class order; the first 70%
/// of each class are train, then 15% val, then 15% test.
pub fn plan(parts: &AvatarParts, avatars_per_class: usize, seed: u64) -> Vec<Planned<Avatar>> {
    let n = avatars_per_class;
    let held_out = (n * 15 + 50) / 100;
    let mut plan = Vec::with_capacity(n * Expression::COUNT);
    for class in Expression::ALL {
        for i in 0..n {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(((class.index() as u64) << 32) | i as u64);
            let split = if i < n - 2 * held_out {
                Split::Train
            } else if i < n - held_out {
                Split::Val
            } else {
                Split::Test
            };
            plan.push(Planned {
                file: format!("{0}/{0}-{i:05}.png", class.name()),
                label: class,
                split,
                source: parts.random_avatar(class, &mut rng),
            });
        }
    }
    plan
}

/// `clothes/graphic/skull_outline` -> `Skull-Outline`.
fn capitalised_id(name: &str) -> String {
    let stem = name.rsplit('/').next().unwrap_or(name);
    stem.split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The id prefix of a part: `mouth/smile` -> `mouth-smile_`.
fn prefix_for(name: &str) -> String {
    format!("{}_", name.replace('/', "-"))
}

fn parse_xml<'a>(text: &'a str, name: &str) -> Result<roxmltree::Document<'a>> {
    roxmltree::Document::parse(text).map_err(|e| Error::Image {
        path: format!("python-avatars part {name}.svg"),
        reason: format!("not XML: {e}"),
    })
}

/// Writes an SVG element (or text) with its subtree, applying `edits`. Elements and
/// attributes outside the SVG, XLink and XML namespaces (editor metadata, `blush:color`)
/// are dropped, and so are attributes with an empty value.
fn write_node(node: roxmltree::Node, edits: &Edits, out: &mut String, declare_namespaces: bool) {
    if node.is_text() {
        escape_into(node.text().unwrap_or_default(), false, out);
        return;
    }
    if !node.is_element() || node.tag_name().namespace() != Some(SVG_NS) {
        return;
    }
    let tag = node.tag_name().name();
    let id = node.attribute("id");
    let is_target = |target: &str| id == Some(target);
    out.push('<');
    out.push_str(tag);
    if declare_namespaces {
        out.push_str(&format!(r#" xmlns="{SVG_NS}" xmlns:xlink="{XLINK_NS}""#));
    }
    let overrides: Vec<(&str, &str)> = edits
        .attributes
        .iter()
        .filter(|(target, ..)| is_target(target))
        .map(|&(_, name, value)| (name, value))
        .collect();
    for attribute in node.attributes() {
        let name = match attribute.namespace() {
            None => attribute.name().to_string(),
            Some(XLINK_NS) => format!("xlink:{}", attribute.name()),
            Some(XML_NS) => format!("xml:{}", attribute.name()),
            Some(_) => continue,
        };
        // An empty value (python_avatars leaves `fill=""` on parts it does not colour) is
        // invalid; browsers ignore the attribute and inherit, usvg would paint black.
        let value = attribute.value();
        if value.is_empty() || overrides.iter().any(|(overridden, _)| *overridden == name) {
            continue;
        }
        let value = if name == "id" {
            format!("{}{value}", edits.prefix)
        } else if attribute.name() == "href" && value.starts_with('#') {
            format!("#{}{}", edits.prefix, &value[1..])
        } else {
            value.replace("url(#", &format!("url(#{}", edits.prefix))
        };
        write_attribute(&name, &value, out);
    }
    for (name, value) in overrides {
        write_attribute(name, value, out);
    }
    out.push('>');
    for child in node.children() {
        write_node(child, edits, out, false);
    }
    for (target, markup) in &edits.contents {
        if is_target(target) {
            out.push_str(markup);
        }
    }
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
}

fn write_attribute(name: &str, value: &str, out: &mut String) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_into(value, true, out);
    out.push('"');
}

fn escape_into(text: &str, in_attribute: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if in_attribute => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(files: &[(&str, &str)]) -> AvatarParts {
        AvatarParts {
            files: files
                .iter()
                .map(|(name, text)| (name.to_string(), text.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parts_are_prefixed_recoloured_and_nested() {
        let parts = parts(&[(
            "top/hair/bob",
            r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"
                 xmlns:blush="http://design.blush">
                <defs><path id="path-1" d="M0 0"/></defs>
                <g id="Hair-Color" mask="url(#mask-2)" fill="" blush:color="Hair-500">
                    <use xlink:href="#path-1"/></g>
                <g id="Accessory"></g>
                <rect fill="" x="1"/>
                <metadata><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></metadata>
               </svg>"##,
        )]);
        let markup = parts
            .compose_part(
                "top/hair/bob",
                Edits {
                    attributes: vec![("Hair-Color", "fill", "#A55728")],
                    contents: vec![("Accessory", "<circle r=\"1\"></circle>".to_string())],
                    ..Edits::default()
                },
            )
            .unwrap();
        let compact: String = markup.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            compact,
            "<defs><path id=\"top-hair-bob_path-1\" d=\"M0 0\"></path></defs> \
             <g id=\"top-hair-bob_Hair-Color\" mask=\"url(#top-hair-bob_mask-2)\" fill=\"#A55728\"> \
             <use xlink:href=\"#top-hair-bob_path-1\"></use></g> \
             <g id=\"top-hair-bob_Accessory\"><circle r=\"1\"></circle></g> \
             <rect x=\"1\"></rect> <metadata></metadata>"
        );
    }

    #[test]
    fn graphic_ids_are_capitalised_like_python_avatars() {
        assert_eq!(
            capitalised_id("clothes/graphic/skull_outline"),
            "Skull-Outline"
        );
        assert_eq!(capitalised_id("clothes/graphic/bat"), "Bat");
    }

    #[test]
    fn every_class_has_its_own_mouth_eyes_and_brows() {
        // No two classes may share all three lists, or they could not be told apart.
        for a in Expression::ALL {
            for b in Expression::ALL.into_iter().filter(|&b| b > a) {
                let (ra, rb) = (recipe(a), recipe(b));
                let overlaps = |x: &[&str], y: &[&str]| x.iter().any(|p| y.contains(p));
                let all_overlap = overlaps(ra.mouths, rb.mouths)
                    && overlaps(ra.eyes, rb.eyes)
                    && overlaps(ra.eyebrows, rb.eyebrows);
                assert!(!all_overlap, "{a} and {b} can be drawn alike");
            }
        }
        assert_eq!(recipe(Expression::Surprise).mouths, ["mouth/disbelief"]);
        assert_eq!(recipe(Expression::Fear).eyes, ["eyes/surprised"]);
        assert_eq!(
            recipe(Expression::Disgust).eyebrows,
            ["eyebrows/frown_natural"]
        );
    }

    #[test]
    fn splits_are_70_15_15() {
        let parts = parts(&[]);
        let plan = plan(&parts, 20, 1);
        let count = |split| {
            plan.iter()
                .filter(|p| p.label == Expression::Fear && p.split == split)
                .count()
        };
        assert_eq!(
            (count(Split::Train), count(Split::Val), count(Split::Test)),
            (14, 3, 3)
        );
        assert_eq!(plan.len(), 140);
    }
}
