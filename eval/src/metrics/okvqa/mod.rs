//! OpenFlamingo's OK-VQA answer post-processing (`open_flamingo/eval/ok_vqa_utils.py`).
//!
//! OpenFlamingo scores OK-VQA predictions after `postprocess_ok_vqa_generation`: the generated
//! text is cut before the first `Question`, `Answer` or `Short` and before the first `", "`
//! (as for every VQA set), then stemmed by its `OKVQAStemmer` to match the stemmed `answers` of
//! OK-VQA v1.1:
//!
//! 1. `nltk.tokenize.word_tokenize`: Punkt sentence splitting with NLTK's English model
//!    (`punkt`) and the Treebank-style `NLTKWordTokenizer` on each sentence (`treebank`);
//! 2. `nltk.pos_tag`: NLTK's averaged-perceptron English tagger (`tagger`);
//! 3. for each token, first match wins: the 168-entry manual table (`manual`); a token ending
//!    in `ing` → `WordNetLemmatizer().lemmatize(token, 'v')` (`morphy`); a token tagged
//!    `NNS*`/`NNPS*` → `inflection.singularize` (`singularize`); otherwise unchanged;
//! 4. the tokens joined with single spaces.
//!
//! Reproduced for nltk 3.8.1 (its `averaged_perceptron_tagger` pickle, `punkt/english.pickle`,
//! WordNet 3.0) and inflection 0.5.1, checked string for string against them on
//! `tests/fixtures/metrics/okvqa_fixture.json`. The model data is embedded (gzip text under
//! `eval/data/okvqa/`, written by `make_data.py` there); see `docs/metrics.md` for sources and
//! licences. Nothing is lower-cased: the table and the `ing` test are case-sensitive, as in
//! OpenFlamingo. Ground-truth answers are not touched.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

pub mod manual;
mod morphy;
mod punkt;
mod singularize;
mod tagger;
mod treebank;

use punkt::Punkt;
use tagger::PerceptronTagger;

/// The averaged-perceptron tagger model (`tagger.txt.gz`).
const TAGGER_DATA: &[u8] = include_bytes!("../../../data/okvqa/tagger.txt.gz");
/// The Punkt English parameters (`punkt_english.txt.gz`).
const PUNKT_DATA: &[u8] = include_bytes!("../../../data/okvqa/punkt_english.txt.gz");
/// WordNet 3.0's verb exceptions and verb lemmas (`wordnet_verbs.txt.gz`).
const WORDNET_DATA: &[u8] = include_bytes!("../../../data/okvqa/wordnet_verbs.txt.gz");
/// Python 3.11's character classes (`pyunicode.txt.gz`).
const PYUNICODE_DATA: &[u8] = include_bytes!("../../../data/okvqa/pyunicode.txt.gz");

/// Why the embedded stemmer data could not be loaded (only possible if a data file under
/// `eval/data/okvqa/` is corrupt).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OkVqaError {
    /// A data file is not valid gzip or not UTF-8.
    #[error("okvqa data {file}: cannot decompress: {msg}")]
    Decompress {
        /// The data file.
        file: &'static str,
        /// The decoder's message.
        msg: String,
    },
    /// A data file does not have the expected layout.
    #[error("okvqa data {file}, line {line}: {msg}")]
    Format {
        /// The data file.
        file: &'static str,
        /// One-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

/// OpenFlamingo's `OKVQAStemmer` with its data: word tokenizer, POS tagger, WordNet verb
/// lemmatizer, `inflection.singularize` and the manual table.
#[derive(Debug)]
pub struct OkVqaStemmer {
    chars: PyChars,
    punkt: Punkt,
    tagger: PerceptronTagger,
    lemmatizer: morphy::VerbLemmatizer,
    manual: HashMap<&'static str, &'static str>,
}

impl OkVqaStemmer {
    /// Loads the embedded data (about 6 MB of text, a few hundred milliseconds).
    pub fn new() -> Result<Self, OkVqaError> {
        let chars = PyChars::parse(&Sections::load("pyunicode.txt.gz", PYUNICODE_DATA)?)?;
        let punkt = Punkt::parse(&Sections::load("punkt_english.txt.gz", PUNKT_DATA)?)?;
        let tagger = PerceptronTagger::parse(&Sections::load("tagger.txt.gz", TAGGER_DATA)?)?;
        let lemmatizer =
            morphy::VerbLemmatizer::parse(&Sections::load("wordnet_verbs.txt.gz", WORDNET_DATA)?)?;
        Ok(OkVqaStemmer {
            chars,
            punkt,
            tagger,
            lemmatizer,
            manual: manual::MANUAL_MATCHES.iter().copied().collect(),
        })
    }

    /// A stemmer shared by the whole process, loaded on first use.
    ///
    /// # Panics
    ///
    /// If the embedded data is corrupt (the crate's tests load it, so a release cannot ship
    /// that way).
    pub fn shared() -> &'static OkVqaStemmer {
        static SHARED: OnceLock<OkVqaStemmer> = OnceLock::new();
        SHARED.get_or_init(|| match OkVqaStemmer::new() {
            Ok(stemmer) => stemmer,
            Err(e) => panic!("the embedded OK-VQA stemmer data is corrupt: {e}"),
        })
    }

    /// `nltk.tokenize.word_tokenize(text)`: Punkt sentences, each split by the Treebank-style
    /// word tokenizer.
    pub fn word_tokenize(&self, text: &str) -> Vec<String> {
        self.punkt
            .sentences(text, &self.chars)
            .into_iter()
            .flat_map(|sentence| treebank::tokenize(&sentence, &self.chars))
            .collect()
    }

    /// `nltk.pos_tag(tokens)`: Penn Treebank tags from the averaged perceptron.
    pub fn pos_tag(&self, tokens: &[String]) -> Vec<&str> {
        self.tagger.tag(tokens, &self.chars)
    }

    /// `WordNetLemmatizer().lemmatize(word, 'v')`.
    pub fn lemmatize_verb(&self, word: &str) -> String {
        self.lemmatizer.lemmatize(word)
    }

    /// `OKVQAStemmer.stem`: tokenize, tag, then for each token the manual table, the verb
    /// lemma of an `-ing` token, the singular of a plural noun, or the token; joined by spaces.
    pub fn stem(&self, text: &str) -> String {
        let tokens = self.word_tokenize(text);
        let tags = self.pos_tag(&tokens);
        let stemmed: Vec<String> = tokens
            .iter()
            .zip(tags)
            .map(|(word, tag)| {
                if let Some(to) = self.manual.get(word.as_str()) {
                    (*to).to_string()
                } else if word.ends_with("ing") {
                    self.lemmatizer.lemmatize(word)
                } else if tag.starts_with("NNS") || tag.starts_with("NNPS") {
                    singularize::singularize(word, &self.chars)
                } else {
                    word.clone()
                }
            })
            .collect();
        stemmed.join(" ")
    }

    /// `postprocess_ok_vqa_generation`: the VQA cut ([`super::vqa::postprocess_vqa`]) then
    /// [`OkVqaStemmer::stem`].
    pub fn postprocess(&self, prediction: &str) -> String {
        self.stem(&super::vqa::postprocess_vqa(prediction))
    }
}

/// OpenFlamingo's `postprocess_ok_vqa_generation` with the shared stemmer
/// ([`OkVqaStemmer::shared`]): applied to OK-VQA predictions instead of
/// `postprocess_vqa_generation`.
pub fn postprocess_ok_vqa_generation(prediction: &str) -> String {
    OkVqaStemmer::shared().postprocess(prediction)
}

/// Python 3.11's `str` character predicates that the reference code depends on (through
/// `\w`, `str.isdigit`, `str.isupper`, `str.islower`), as code point ranges.
#[derive(Debug)]
pub(crate) struct PyChars {
    word: Vec<(u32, u32)>,
    digit: Vec<(u32, u32)>,
    upper: Vec<(u32, u32)>,
    lower: Vec<(u32, u32)>,
}

impl PyChars {
    fn parse(data: &Sections) -> Result<Self, OkVqaError> {
        let ranges = |name: &str| -> Result<Vec<(u32, u32)>, OkVqaError> {
            let mut out = Vec::new();
            for (line, text) in data.section(name)? {
                let parsed = text.split_once('\t').and_then(|(a, b)| {
                    Some((
                        u32::from_str_radix(a, 16).ok()?,
                        u32::from_str_radix(b, 16).ok()?,
                    ))
                });
                match parsed {
                    Some(range) => out.push(range),
                    None => return Err(data.error(line, "expected two hex code points")),
                }
            }
            Ok(out)
        };
        Ok(PyChars {
            word: ranges("word")?,
            digit: ranges("digit")?,
            upper: ranges("upper")?,
            lower: ranges("lower")?,
        })
    }

    fn contains(ranges: &[(u32, u32)], c: char) -> bool {
        let u = c as u32;
        let i = ranges.partition_point(|&(_, hi)| hi < u);
        ranges.get(i).is_some_and(|&(lo, _)| lo <= u)
    }

    /// Python regex `\w` in a `str` pattern: `c.isalnum() or c == '_'`.
    pub(crate) fn is_word(&self, c: char) -> bool {
        Self::contains(&self.word, c)
    }

    /// Python regex `\d`: `c.isdecimal()`.
    pub(crate) fn is_decimal(&self, c: char) -> bool {
        super::is_decimal_digit(c)
    }

    /// Python's `c.isdigit()` (decimals plus superscripts, circled digits, ...).
    pub(crate) fn is_digit(&self, c: char) -> bool {
        Self::contains(&self.digit, c)
    }

    /// Python regex `\s`, `str.split()`: `c.isspace()`.
    pub(crate) fn is_space(&self, c: char) -> bool {
        super::is_py_space(c)
    }

    /// Python's `c.isupper()` for one character.
    pub(crate) fn is_upper(&self, c: char) -> bool {
        Self::contains(&self.upper, c)
    }

    /// Python's `c.islower()` for one character.
    pub(crate) fn is_lower(&self, c: char) -> bool {
        Self::contains(&self.lower, c)
    }
}

/// Python's `str.lower()`. Rust's [`str::to_lowercase`] applies the same full mappings
/// (including the final-sigma rule); only the Unicode versions differ.
pub(crate) fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// Case-insensitive match of `c` against the lower-case ASCII letter `letter`, as Python's `re`
/// does for `str` patterns with `(?i)`: besides the two ASCII cases, `İ` and `ı` match `i`, `ſ`
/// matches `s` and the Kelvin sign matches `k`.
pub(crate) fn ci_eq(c: char, letter: char) -> bool {
    (c.is_ascii() && c.to_ascii_lowercase() == letter)
        || match letter {
            'i' => c == '\u{130}' || c == '\u{131}',
            's' => c == '\u{17F}',
            'k' => c == '\u{212A}',
            _ => false,
        }
}

/// Case-insensitive match of `chars` at `at` against the lower-case ASCII `word`.
pub(crate) fn ci_at(chars: &[char], at: usize, word: &str) -> bool {
    let mut i = at;
    for letter in word.chars() {
        match chars.get(i) {
            Some(&c) if c == letter || ci_eq(c, letter) => i += 1,
            _ => return false,
        }
    }
    true
}

/// A decompressed data file: named sections, each `name<TAB>count` followed by `count` lines.
pub(crate) struct Sections {
    file: &'static str,
    lines: Vec<String>,
}

impl Sections {
    fn load(file: &'static str, gz: &[u8]) -> Result<Self, OkVqaError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .map_err(|e| OkVqaError::Decompress {
                file,
                msg: e.to_string(),
            })?;
        Ok(Sections {
            file,
            lines: text.lines().map(str::to_string).collect(),
        })
    }

    /// The lines of section `name` with their one-based line numbers.
    pub(crate) fn section(
        &self,
        name: &str,
    ) -> Result<impl Iterator<Item = (usize, &str)>, OkVqaError> {
        let mut i = 0;
        while i < self.lines.len() {
            let (head, count) = self.lines[i].split_once('\t').unwrap_or(("", ""));
            let count: usize = count
                .parse()
                .map_err(|_| self.error(i + 1, "expected a section header `name<TAB>count`"))?;
            if i + 1 + count > self.lines.len() {
                return Err(self.error(i + 1, "section runs past the end of the file"));
            }
            if head == name {
                let body = &self.lines[i + 1..i + 1 + count];
                let first = i + 2;
                return Ok(body
                    .iter()
                    .enumerate()
                    .map(move |(k, l)| (first + k, l.as_str())));
            }
            i += 1 + count;
        }
        Err(self.error(0, &format!("no section `{name}`")))
    }

    pub(crate) fn error(&self, line: usize, msg: &str) -> OkVqaError {
        OkVqaError::Format {
            file: self.file,
            line,
            msg: msg.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openflamingo_examples() {
        let s = OkVqaStemmer::shared();
        assert_eq!(s.postprocess("dogs, cats"), "dog");
        // `men` is tagged NNS and singularized; `'s` is its own token.
        assert_eq!(s.postprocess("men's Question: x"), "man 's");
        assert_eq!(s.postprocess("running"), "run");
        assert_eq!(s.postprocess("police"), "police");
        assert_eq!(s.postprocess(""), "");
    }

    #[test]
    fn python_char_classes() {
        let s = OkVqaStemmer::shared();
        assert!(s.chars.is_word('é') && s.chars.is_word('_') && !s.chars.is_word('-'));
        assert!(s.chars.is_digit('²') && !s.chars.is_decimal('²'));
        assert!(s.chars.is_upper('A') && !s.chars.is_upper('a') && s.chars.is_lower('a'));
        assert!(ci_eq('ſ', 's') && ci_eq('S', 's') && !ci_eq('t', 's'));
    }
}
