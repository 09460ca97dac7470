//! Data-set specs: `KIND:PATH[:key=value...]`, one syntax for every command.
//!
//! Options every kind takes: `split=train|val|test` (read only that split) and
//! `domain=NAME` (the domain name samples carry; default the kind's name, or the folder
//! or manifest name for the generic kinds). Options of one kind are listed in
//! [`Kind::layout`].

use super::Split;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The data-set formats gfer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    RafDb,
    Fer2013,
    FerPlus,
    AffectNet,
    Sfew,
    Mma,
    CkPlus,
    Folder,
    Manifest,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::RafDb,
        Kind::Fer2013,
        Kind::FerPlus,
        Kind::AffectNet,
        Kind::Sfew,
        Kind::Mma,
        Kind::CkPlus,
        Kind::Folder,
        Kind::Manifest,
    ];

    /// The name used in specs and as the default domain.
    pub fn name(self) -> &'static str {
        match self {
            Kind::RafDb => "rafdb",
            Kind::Fer2013 => "fer2013",
            Kind::FerPlus => "ferplus",
            Kind::AffectNet => "affectnet",
            Kind::Sfew => "sfew",
            Kind::Mma => "mma",
            Kind::CkPlus => "ckplus",
            Kind::Folder => "folder",
            Kind::Manifest => "manifest",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The layout a path of this kind must have, and the kind's own options.
    pub fn layout(self) -> &'static str {
        match self {
            Kind::RafDb => {
                "DIR with EmoLabel/list_patition_label.txt (or list_partition_label.txt; \
                 lines `train_00001.jpg 5`) and Image/aligned/<stem>_aligned.jpg; \
                 option images=aligned|original (Image/original/<name>)"
            }
            Kind::Fer2013 => {
                "DIR holding fer2013.csv (emotion,pixels,Usage), icml_face_data.csv, or \
                 train.csv [+ test.csv], or image folders train|test/<class>/; or PATH to \
                 one of those CSV files"
            }
            Kind::FerPlus => {
                "DIR with fer2013new.csv and fer2013.csv (joined row by row; option \
                 fer2013=PATH when fer2013.csv lies elsewhere), or DIR with \
                 FER2013Train|FER2013Valid|FER2013Test/ each holding label.csv and PNGs"
            }
            Kind::AffectNet => {
                "DIR with training.csv and/or validation.csv and Manually_Annotated_Images/, \
                 or DIR with train_set|val_set/ each holding images/<id>.jpg and \
                 annotations/<id>_exp.npy"
            }
            Kind::Sfew => "DIR with Train_Aligned_Faces/<Class>/ and/or Val_Aligned_Faces/<Class>/",
            Kind::Mma => {
                "DIR with MMAFEDB/{train,valid,test}/<class>/ (or the MMAFEDB folder itself)"
            }
            Kind::CkPlus => {
                "DIR with cohn-kanade-images/Sxxx/nnn/*.png and Emotion/Sxxx/nnn/*_emotion.txt; \
                 no official split: every image goes to train, or to the split named by \
                 unsplit=val|test; option neutral=first adds each labelled sequence's \
                 first frame as neutral"
            }
            Kind::Folder => {
                "DIR with {train,val,test}/<class>/ images, or <class>/ images directly \
                 (then all in one split: option unsplit=train|val|test, default train)"
            }
            Kind::Manifest => {
                "CSV file with rows `path,label[,split][,domain]` (optional header; label \
                 by name or canonical index 0-6; paths relative to the CSV; split default \
                 train)"
            }
        }
    }

    /// Options of this kind besides the common `split=` and `domain=`.
    fn own_options(self) -> &'static [&'static str] {
        match self {
            Kind::RafDb => &["images"],
            Kind::FerPlus => &["fer2013"],
            Kind::CkPlus => &["neutral", "unsplit"],
            Kind::Folder => &["unsplit"],
            _ => &[],
        }
    }
}

/// Every kind with its layout, for error messages.
pub fn kinds_help() -> String {
    let mut help = String::from("kinds and the layout each expects:");
    for kind in Kind::ALL {
        help.push_str(&format!("\n  {}:{}", kind.name(), kind.layout()));
    }
    help.push_str("\n  options for every kind: split=train|val|test, domain=NAME");
    help
}

/// A parsed spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The spec as written.
    pub text: String,
    pub kind: Kind,
    pub path: PathBuf,
    /// `split=`: read only this split.
    pub only_split: Option<Split>,
    /// `domain=`: the domain name samples carry.
    pub domain: Option<String>,
    options: BTreeMap<String, String>,
}

impl Spec {
    /// Parses `KIND:PATH[:key=value...]`. The path may itself contain `:`; trailing
    /// `:key=value` parts are options. The path is not checked here.
    pub fn parse(text: &str) -> Result<Spec> {
        let error = |message: String| Error::Dataset {
            spec: text.to_string(),
            message: format!("{message}\n{}", kinds_help()),
        };
        let (kind_name, rest) = text
            .split_once(':')
            .ok_or_else(|| error("a data-set spec is KIND:PATH[:key=value...]".into()))?;
        let kind = Kind::from_name(kind_name.trim())
            .ok_or_else(|| error(format!("unknown data-set kind '{kind_name}'")))?;
        let mut parts: Vec<&str> = rest.split(':').collect();
        let mut options = BTreeMap::new();
        while parts.len() > 1 {
            let Some((key, value)) = parts[parts.len() - 1].split_once('=') else {
                break;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                break;
            }
            options.insert(key.to_string(), value.to_string());
            parts.pop();
        }
        let path = parts.join(":");
        if path.is_empty() {
            return Err(error(format!("the spec names no path for {kind_name}")));
        }
        let mut spec = Spec {
            text: text.to_string(),
            kind,
            path: PathBuf::from(path),
            only_split: None,
            domain: None,
            options: BTreeMap::new(),
        };
        for (key, value) in options {
            match key.as_str() {
                "split" => {
                    spec.only_split = Some(value.parse().map_err(|e: String| spec.error(e))?)
                }
                "domain" if !value.is_empty() => spec.domain = Some(value),
                _ if kind.own_options().contains(&key.as_str()) => {
                    spec.options.insert(key, value);
                }
                _ => {
                    let mut known = vec!["split", "domain"];
                    known.extend(kind.own_options());
                    return Err(spec.error(format!(
                        "unknown option '{key}={value}' for {}; it takes {}",
                        kind.name(),
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(spec)
    }

    /// A kind-specific option's value.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// An error about this spec.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Dataset {
            spec: self.text.clone(),
            message: message.into(),
        }
    }

    /// An error saying the files are not laid out as this kind expects.
    pub fn layout_error(&self, message: impl Into<String>) -> Error {
        self.error(format!(
            "{}; {} expects {}",
            message.into(),
            self.kind.name(),
            self.kind.layout()
        ))
    }

    /// Fails with every kind's layout when the path does not exist.
    pub fn require_path(&self) -> Result<()> {
        if self.path.exists() {
            return Ok(());
        }
        Err(self.error(format!(
            "{} does not exist; {} expects {}\n{}",
            self.path.display(),
            self.kind.name(),
            self.kind.layout(),
            kinds_help()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_path_and_options() {
        let spec = Spec::parse("affectnet:/data/affectnet:split=val").unwrap();
        assert_eq!(spec.kind, Kind::AffectNet);
        assert_eq!(spec.path, PathBuf::from("/data/affectnet"));
        assert_eq!(spec.only_split, Some(Split::Val));

        let spec = Spec::parse("ckplus:/data/ck:neutral=first:domain=ck").unwrap();
        assert_eq!(spec.option("neutral"), Some("first"));
        assert_eq!(spec.domain.as_deref(), Some("ck"));

        // A colon inside the path stays in the path.
        let spec = Spec::parse("folder:/data/a:b/c").unwrap();
        assert_eq!(spec.path, PathBuf::from("/data/a:b/c"));
    }

    #[test]
    fn unknown_kind_lists_every_kind_with_its_layout() {
        let err = Spec::parse("raf:/data/raf").unwrap_err().to_string();
        assert!(err.contains("unknown data-set kind 'raf'"), "{err}");
        for kind in Kind::ALL {
            assert!(err.contains(&format!("{}:{}", kind.name(), kind.layout())));
        }
        let err = Spec::parse("/data/raf").unwrap_err().to_string();
        assert!(err.contains("KIND:PATH"), "{err}");
    }

    #[test]
    fn unknown_option_is_refused() {
        let err = Spec::parse("rafdb:/x:colour=grey").unwrap_err().to_string();
        assert!(
            err.contains("unknown option 'colour=grey' for rafdb"),
            "{err}"
        );
        let err = Spec::parse("rafdb:/x:split=holdout")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown split 'holdout'"), "{err}");
    }

    #[test]
    fn missing_path_is_named_with_the_layout() {
        let spec = Spec::parse("sfew:/no/such/sfew").unwrap();
        let err = spec.require_path().unwrap_err().to_string();
        assert!(err.contains("/no/such/sfew does not exist"), "{err}");
        assert!(err.contains("Train_Aligned_Faces"), "{err}");
        assert!(err.contains("rafdb:"), "{err}");
    }
}
