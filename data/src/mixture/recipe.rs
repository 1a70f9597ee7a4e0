//! Mixture recipes: which sources to read, how to read them and how often to draw from each.
//!
//! A recipe is a YAML (`.yaml`, `.yml`) or TOML (`.toml`) file; see `docs/data.md` for the full
//! format and [`super`] for the sampling rules. Relative paths in a recipe file (patterns, image
//! roots, prefix-rule roots, URL manifests) are resolved against the directory of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// What happens when a source has no more samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// Start the source again from its beginning (a new epoch over it). The default.
    #[default]
    Restart,
    /// End the whole mixture.
    Stop,
    /// Remove the source from the mixture; the others go on with their weights renormalised.
    Drop,
}

/// The layout of a source, i.e. which reader reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Image-caption pairs in WebDataset tar shards (img2dataset: CC3M, CC12M, LAION, Datacomp).
    #[serde(alias = "wds", alias = "webdataset_captions")]
    Webdataset,
    /// Interleaved documents in WebDataset tar shards (`key.json` + image members, MINT-1T PDF).
    #[serde(alias = "wds_interleaved")]
    WebdatasetInterleaved,
    /// Interleaved documents in JSON-lines files (OBELICS / MINT-1T HTML style).
    #[serde(alias = "interleaved")]
    JsonlInterleaved,
    /// Parquet tables with a column layout ([`SourceOptions::layout`]).
    Parquet,
    /// LLaVA / M4-Instruct / Mantis conversations (JSON array or JSON lines).
    #[serde(alias = "llava_json", alias = "llava_jsonl", alias = "sft")]
    Llava,
    /// Preference pairs: generic `{prompt, image, chosen, rejected}` rows and VLFeedback rows.
    #[serde(alias = "vlfeedback", alias = "preference")]
    Dpo,
    /// VLGuard safety conversations (tagged with their safety flags).
    #[serde(alias = "safety")]
    Vlguard,
}

impl SourceKind {
    /// Whether the reader takes a list of JSON files read one after the other (sharded by record).
    pub fn is_json_records(self) -> bool {
        matches!(
            self,
            SourceKind::Llava | SourceKind::Dpo | SourceKind::Vlguard
        )
    }
}

/// One image-root rule of a source (like xGen-MM's `IMAGE_FOLDER_DICT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRuleSpec {
    /// Paths starting with this prefix have it replaced by the directory [`RootRuleSpec::root`].
    #[serde(default)]
    pub prefix: Option<String>,
    /// Paths containing this text have every occurrence replaced by [`RootRuleSpec::replace`].
    #[serde(default)]
    pub substring: Option<String>,
    /// The directory of a prefix rule.
    #[serde(default)]
    pub root: Option<String>,
    /// The replacement text of a substring rule.
    #[serde(default)]
    pub replace: Option<String>,
}

/// How image URLs map to local files (interleaved and Parquet sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlRuleSpec {
    /// URLs are never available locally (images given by URL are missing).
    #[default]
    Unavailable,
    /// The file named by the URL's last path segment, under the image root.
    Basename,
    /// The file named by the SHA-1 hex of the URL (with [`SourceOptions::url_extensions`]).
    Sha1,
}

/// What an interleaved document does with an image that is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingImagesSpec {
    /// Drop the image, keep the document (unless too few images remain). The default.
    #[default]
    DropImage,
    /// Skip the document.
    DropDocument,
}

/// How VLFeedback completions become pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairsSpec {
    /// Every pair with distinct scores (the official recipe). The default.
    #[default]
    All,
    /// One pair per row: the best against a seeded random lower-scored completion.
    Binarized,
}

/// Reader options of a source. Every field is optional; each applies to the kinds named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceOptions {
    /// Images allowed per sample: LLaVA records with more are skipped (default 4); interleaved
    /// documents keep their first ones (default 6, 0 = no limit).
    pub max_images: Option<usize>,
    /// Interleaved documents with fewer images are skipped (default 1).
    pub min_images: Option<usize>,
    /// LLaVA / DPO / VLGuard: check at read time that image files exist (default true; when
    /// off, a missing file is found when the image is decoded).
    pub check_images: bool,
    /// Interleaved: what a missing image does.
    pub missing_images: MissingImagesSpec,
    /// Interleaved: report every dropped image as a bad sample (default true).
    pub report_dropped_images: bool,
    /// Interleaved (JSON field or Parquet column): the text list (default `texts`).
    pub texts_field: Option<String>,
    /// Interleaved (JSON field or Parquet column): the image list (default `images`).
    pub images_field: Option<String>,
    /// Interleaved and Parquet: how URLs map to files under the image root.
    pub url_rule: UrlRuleSpec,
    /// Extensions tried by the `sha1` URL rule (default `jpg`, `png`, and none).
    pub url_extensions: Vec<String>,
    /// A `url<TAB>path` manifest mapping URLs to files under the image root (overrides
    /// `url_rule`).
    pub url_manifest: Option<String>,
    /// WebDataset captions: where the caption comes from, in order: a member extension (`txt`) or
    /// `member.field` for a JSON field (`json.caption`). Default `txt`, `json.caption`.
    pub caption_sources: Vec<String>,
    /// WebDataset captions: image extensions in order of preference.
    pub image_extensions: Vec<String>,
    /// Parquet: the layout, a preset (`blip3_kale`, `llava_next`, `obelics`, `rlaif_v`) or a
    /// generic layout (`caption`, `conversation`, `interleaved`, `preference`) whose columns
    /// default to `caption`/`image`, `conversations`/`image`, `texts`/`images` and
    /// `question`/`image`/`chosen`/`rejected`, overridable with `columns`.
    pub layout: Option<String>,
    /// Parquet: column names by role (`caption`, `image`, `conversations`, `question`, `chosen`,
    /// `rejected`).
    pub columns: BTreeMap<String, String>,
    /// Parquet: a column holding the sample id.
    pub id_column: Option<String>,
    /// Parquet: rows per record batch (default 256).
    pub batch_size: Option<usize>,
    /// DPO: how VLFeedback rows become pairs.
    pub pairs: PairsSpec,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            max_images: None,
            min_images: None,
            check_images: true,
            missing_images: MissingImagesSpec::default(),
            report_dropped_images: true,
            texts_field: None,
            images_field: None,
            url_rule: UrlRuleSpec::default(),
            url_extensions: Vec::new(),
            url_manifest: None,
            caption_sources: Vec::new(),
            image_extensions: Vec::new(),
            layout: None,
            columns: BTreeMap::new(),
            id_column: None,
            batch_size: None,
            pairs: PairsSpec::default(),
        }
    }
}

/// One source of a mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A unique name (used in statistics, logs and [`crate::pipeline::TrainSample::source`]).
    pub name: String,
    /// Which reader reads it.
    pub kind: SourceKind,
    /// Files, directories, brace patterns (`shard-{0000..0099}.tar`) or wildcards, in order.
    #[serde(alias = "path", deserialize_with = "one_or_many")]
    pub paths: Vec<String>,
    /// Sampling weight (weighted mode): the source is drawn with probability weight / total.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Sample count (count mode): the source contributes exactly this many items per mixture
    /// epoch, drawn without replacement when the source has at least that many, else with
    /// replacement.
    #[serde(default)]
    pub samples: Option<u64>,
    /// The directory relative image paths are joined to.
    #[serde(default)]
    pub image_root: Option<String>,
    /// Image-root rules tried before `image_root` (LLaVA, DPO, VLGuard).
    #[serde(default)]
    pub root_rules: Vec<RootRuleSpec>,
    /// Accept image paths of the dataset files that resolve outside their image root (`..`,
    /// absolute paths, symbolic links leaving the root). Off by default: such paths are refused
    /// and counted as [`crate::error::BadKind::OutsideRoot`] bad samples (see [`crate::paths`]).
    #[serde(default)]
    pub allow_outside_root: bool,
    /// What happens when the source runs out (weighted mode); default: the recipe's setting.
    #[serde(default)]
    pub on_exhausted: Option<Exhausted>,
    /// Shuffle the order of the source's files (shards) with the recipe seed, anew each epoch.
    #[serde(default)]
    pub shuffle_shards: bool,
    /// Reader options.
    #[serde(default)]
    pub options: SourceOptions,
}

/// Whether a recipe draws by weight or by sample count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixMode {
    /// Every source has a `weight`: an endless weighted interleaving.
    Weighted,
    /// Every source has a `samples` count: epochs of exactly that many items per source.
    Counts,
}

/// A mixture recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The seed of every random choice (interleaving, sample selection, shard order).
    #[serde(default)]
    pub seed: u64,
    /// The default for sources that run out (weighted mode), and what happens at the end of a
    /// mixture epoch (count mode; `drop` acts as `stop` there).
    #[serde(default)]
    pub on_exhausted: Exhausted,
    /// The sources, in order.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// The reference's data-mix form: `{annotation json path: sample count}`, read as LLaVA
    /// sources in count mode (sorted by path). Combined with `sources` only if those have counts
    /// too.
    #[serde(default)]
    pub data_path: BTreeMap<String, u64>,
    /// Image root of the `data_path` sources.
    #[serde(default)]
    pub image_root: Option<String>,
    /// [`SourceSpec::allow_outside_root`] of the `data_path` sources.
    #[serde(default)]
    pub allow_outside_root: bool,
    /// Substring image-folder rules of the `data_path` sources (xGen-MM's `IMAGE_FOLDER_DICT`:
    /// every occurrence of the key is replaced by the value; keys are tried in sorted order).
    #[serde(default)]
    pub image_folders: BTreeMap<String, String>,
}

impl Recipe {
    /// Loads a recipe file, choosing the syntax by extension (`.yaml`/`.yml` or `.toml`), and
    /// resolves its relative paths against the file's directory. The recipe is validated.
    pub fn load(path: &Path) -> Result<Recipe, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let base = path.parent().unwrap_or(Path::new(""));
        let name = path.display().to_string();
        match ext.as_str() {
            "yaml" | "yml" => Recipe::from_yaml_str(&text, base, &name),
            "toml" => Recipe::from_toml_str(&text, base, &name),
            _ => Err(DataError::format(
                &name,
                "unknown recipe syntax: expected a .yaml, .yml or .toml file",
            )),
        }
    }

    /// Parses YAML recipe text; relative paths are resolved against `base_dir`; `name` locates the
    /// text in errors. The recipe is validated.
    pub fn from_yaml_str(text: &str, base_dir: &Path, name: &str) -> Result<Recipe, DataError> {
        let recipe: Recipe = serde_yaml::from_str(text)
            .map_err(|e| DataError::format(name, format!("invalid recipe: {e}")))?;
        recipe.finish(base_dir, name)
    }

    /// Parses TOML recipe text; see [`Recipe::from_yaml_str`].
    pub fn from_toml_str(text: &str, base_dir: &Path, name: &str) -> Result<Recipe, DataError> {
        let recipe: Recipe = toml::from_str(text)
            .map_err(|e| DataError::format(name, format!("invalid recipe: {e}")))?;
        recipe.finish(base_dir, name)
    }

    /// Expands `data_path`, resolves paths and validates.
    fn finish(mut self, base_dir: &Path, name: &str) -> Result<Recipe, DataError> {
        self.expand_data_path();
        self.resolve_paths(base_dir);
        self.validate()
            .map_err(|e| DataError::format(name, e.to_string()))?;
        Ok(self)
    }

    /// Turns the `data_path` entries into LLaVA sources with sample counts (and empties it).
    pub fn expand_data_path(&mut self) {
        let data_path = std::mem::take(&mut self.data_path);
        for (path, count) in data_path {
            let root_rules = self
                .image_folders
                .iter()
                .map(|(pattern, replacement)| RootRuleSpec {
                    prefix: None,
                    substring: Some(pattern.clone()),
                    root: None,
                    replace: Some(replacement.clone()),
                })
                .collect();
            self.sources.push(SourceSpec {
                name: path.clone(),
                kind: SourceKind::Llava,
                paths: vec![path],
                weight: None,
                samples: Some(count),
                image_root: self.image_root.clone(),
                root_rules,
                allow_outside_root: self.allow_outside_root,
                on_exhausted: None,
                shuffle_shards: false,
                options: SourceOptions::default(),
            });
        }
    }

    /// Joins relative paths (patterns, image roots, prefix-rule roots, URL manifests) to
    /// `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let join = |p: &str| -> String {
            if p.is_empty() || Path::new(p).is_absolute() || base_dir.as_os_str().is_empty() {
                p.to_string()
            } else {
                base_dir.join(p).display().to_string()
            }
        };
        if let Some(root) = &self.image_root {
            self.image_root = Some(join(root));
        }
        for source in &mut self.sources {
            source.paths = source.paths.iter().map(|p| join(p)).collect();
            source.image_root = source.image_root.as_deref().map(join);
            for rule in &mut source.root_rules {
                if rule.prefix.is_some() {
                    rule.root = rule.root.as_deref().map(join);
                }
            }
            source.options.url_manifest = source.options.url_manifest.as_deref().map(join);
        }
    }

    /// Whether the recipe draws by weight or by count (see [`Recipe::validate`]).
    pub fn mode(&self) -> MixMode {
        if self.sources.iter().all(|s| s.samples.is_some()) && !self.sources.is_empty() {
            MixMode::Counts
        } else {
            MixMode::Weighted
        }
    }

    /// Checks the recipe: at least one source, unique names, at least one path each, either a
    /// positive finite `weight` on every source or a `samples` count on every source (never
    /// both), consistent root rules, and a Parquet layout where needed.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::Config(msg));
        if !self.data_path.is_empty() {
            return bad("data_path was not expanded".into());
        }
        if self.sources.is_empty() {
            return bad("the recipe has no sources".into());
        }
        let mut names = BTreeSet::new();
        for s in &self.sources {
            if s.name.is_empty() {
                return bad("a source has an empty name".into());
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!("source name {:?} is used twice", s.name));
            }
            if s.paths.is_empty() {
                return bad(format!("source {:?} has no paths", s.name));
            }
            if s.weight.is_some() && s.samples.is_some() {
                return bad(format!(
                    "source {:?} has both a weight and a sample count",
                    s.name
                ));
            }
            if let Some(w) = s.weight
                && !(w.is_finite() && w > 0.0)
            {
                return bad(format!(
                    "source {:?}: weight must be positive and finite, got {w}",
                    s.name
                ));
            }
            for rule in &s.root_rules {
                match (&rule.prefix, &rule.substring, &rule.root, &rule.replace) {
                    (Some(_), None, Some(_), None) | (None, Some(_), None, Some(_)) => {}
                    _ => {
                        return bad(format!(
                            "source {:?}: a root rule is either {{prefix, root}} or \
                             {{substring, replace}}",
                            s.name
                        ));
                    }
                }
            }
            if s.kind == SourceKind::Parquet && s.options.layout.is_none() {
                return bad(format!(
                    "source {:?}: parquet sources need options.layout",
                    s.name
                ));
            }
            if s.options.batch_size == Some(0) {
                return bad(format!("source {:?}: batch_size must be positive", s.name));
            }
        }
        let weighted = self.sources.iter().filter(|s| s.weight.is_some()).count();
        let counted = self.sources.iter().filter(|s| s.samples.is_some()).count();
        let n = self.sources.len();
        if !(weighted == n || counted == n) {
            return bad(format!(
                "every source needs a weight (weighted mode) or every source a samples count \
                 (count mode); {weighted} of {n} have a weight and {counted} a count"
            ));
        }
        Ok(())
    }
}

/// Accepts a string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
