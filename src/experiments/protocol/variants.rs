//! What the protocol's table is made of: named data sets ([`NamedDataset`]) and methods
//! in their variants ([`MethodVariant`]), each with the row label and folder name it gets.

use crate::model::classifier::{MaskInput, Method};
use serde::{Deserialize, Serialize};

/// A data set in the protocol: a short name for the tables, and its spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedDataset {
    pub name: String,
    pub spec: String,
}

impl NamedDataset {
    /// The data-set kind of its spec (`rafdb`, `ferplus`, ...), whatever its name.
    pub fn kind(&self) -> &str {
        crate::eval::table::spec_kind(&self.spec)
    }
}

/// `NAME=KIND:PATH...` names a data set; a bare spec is named by its kind (with a number
/// added when two share one).
pub fn name_specs(specs: &[String]) -> Vec<NamedDataset> {
    let mut out: Vec<NamedDataset> = Vec::new();
    for spec in specs {
        let (name, spec) = match spec.split_once('=') {
            Some((name, rest)) if !name.contains(':') && !name.is_empty() => {
                (name.to_string(), rest.to_string())
            }
            _ => (
                crate::eval::table::spec_kind(spec).to_string(),
                spec.clone(),
            ),
        };
        let taken = |n: &str| out.iter().any(|o| o.name == n);
        let mut unique = name.clone();
        let mut k = 2;
        while taken(&unique) {
            unique = format!("{name}-{k}");
            k += 1;
        }
        out.push(NamedDataset { name: unique, spec });
    }
    out
}

/// A method in one variant: the authors' full recipe, or fast mode (cached frozen
/// features) with a mask generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodVariant {
    pub method: Method,
    /// `None`: the full recipe; `Some(generator)`: fast mode with that mask generator.
    pub fast: Option<MaskInput>,
}

impl MethodVariant {
    pub fn full(method: Method) -> Self {
        MethodVariant { method, fast: None }
    }

    pub fn fast(method: Method, generator: MaskInput) -> Self {
        MethodVariant {
            method,
            fast: Some(generator),
        }
    }

    /// `METHOD` (the variant `default` says: what `--fast` selects), `METHOD:full`,
    /// `METHOD:fast` (fast mode with `default`'s generator, or `feature`), or
    /// `METHOD:fast:GENERATOR` (`feature`, `resnet18`, `tokens:LAYER`).
    pub fn parse(text: &str, default: Option<MaskInput>) -> std::result::Result<Self, String> {
        let (name, variant) = match text.split_once(':') {
            Some((name, variant)) => (name, Some(variant)),
            None => (text, None),
        };
        let method = <Method as clap::ValueEnum>::from_str(name, false).map_err(|_| {
            let known: Vec<&str> = <Method as clap::ValueEnum>::value_variants()
                .iter()
                .map(|m| m.name())
                .collect();
            format!("'{name}' is not a method ({})", known.join(", "))
        })?;
        let fast = match variant {
            None => default,
            Some("full") => None,
            Some("fast") => Some(default.unwrap_or_default()),
            Some(other) => match other.strip_prefix("fast:") {
                Some(generator) => Some(generator.parse()?),
                None => {
                    return Err(format!(
                        "'{text}': the variant after '{name}:' is full, fast or fast:GENERATOR"
                    ))
                }
            },
        };
        Ok(MethodVariant { method, fast })
    }

    /// The generator that matters: methods without a mask generator read F whatever
    /// the flag says.
    pub fn generator(&self) -> Option<MaskInput> {
        self.fast.map(|g| {
            if self.method.uses_generator() {
                g
            } else {
                MaskInput::Feature
            }
        })
    }

    /// The row label of the tables: `cafe:full`, `cafe:fast`, `cafe:fast:resnet18`,
    /// `cafe:fast:tokens:6` (the generator is named unless it is `feature`).
    pub fn label(&self) -> String {
        match self.generator() {
            None => format!("{}:full", self.method.name()),
            Some(MaskInput::Feature) => format!("{}:fast", self.method.name()),
            Some(generator) => format!("{}:fast:{generator}", self.method.name()),
        }
    }

    /// The label as a folder name (`cafe-fast-tokens-6`): the run folder
    /// `OUT/runs/SOURCE/<this>` and the cells folder `OUT/cells/<this>`.
    pub fn slug(&self) -> String {
        self.label().replace(':', "-")
    }
}

/// Recorded by its row label (`cafe:fast:resnet18`), which names the variant completely.
impl Serialize for MethodVariant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

impl<'de> Deserialize<'de> for MethodVariant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let label = String::deserialize(d)?;
        MethodVariant::parse(&label, None).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for MethodVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_variants_parse_and_label_themselves() {
        let parse = |s: &str, default| MethodVariant::parse(s, default).map(|v| v.label());
        // A bare method takes the default variant (what --fast selects).
        assert_eq!(parse("cafe", None).as_deref(), Ok("cafe:full"));
        assert_eq!(
            parse("cafe", Some(MaskInput::Resnet18)).as_deref(),
            Ok("cafe:fast:resnet18")
        );
        assert_eq!(
            parse("cafe:full", Some(MaskInput::Feature)).as_deref(),
            Ok("cafe:full")
        );
        assert_eq!(parse("cafe:fast", None).as_deref(), Ok("cafe:fast"));
        assert_eq!(
            parse("cafe:fast", Some(MaskInput::Tokens(4))).as_deref(),
            Ok("cafe:fast:tokens:4")
        );
        assert_eq!(
            parse("cafe-no-sep:fast:tokens:6", None).as_deref(),
            Ok("cafe-no-sep:fast:tokens:6")
        );
        // Without a mask generator the generator does not matter, nor appear.
        assert_eq!(
            parse("linear-probe:fast:resnet18", None).as_deref(),
            Ok("linear-probe:fast")
        );
        assert_eq!(parse("resnet:full", None).as_deref(), Ok("resnet:full"));
        let variant = MethodVariant::parse("cafe:fast:tokens:6", None).unwrap();
        assert_eq!(
            variant,
            MethodVariant::fast(Method::Cafe, MaskInput::Tokens(6))
        );
        assert_eq!(variant.slug(), "cafe-fast-tokens-6");
        assert_eq!(MethodVariant::full(Method::Cafe).slug(), "cafe-full");
        for bad in [
            "cafo",
            "cafe:slow",
            "cafe:fast:vgg",
            "cafe:fast:tokens:0",
            "cafe:",
        ] {
            assert!(MethodVariant::parse(bad, None).is_err(), "{bad}");
        }
    }
}
