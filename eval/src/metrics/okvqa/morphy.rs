//! `WordNetLemmatizer().lemmatize(word, 'v')` (nltk 3.8.1, `nltk/stem/wordnet.py`): the
//! shortest of the candidates that `wn._morphy(word, 'v')` returns, or the word unchanged when
//! there is none.
//!
//! `_morphy` (`nltk/corpus/reader/wordnet.py`) for verbs:
//!
//! 0. a word listed in WordNet's `verb.exc` returns the word and its listed base forms that are
//!    verb lemmas, and nothing else is tried;
//! 1. otherwise the detachment rules (`s`→``, `ies`→`y`, `es`→`e`, `es`→``, `ed`→`e`, `ed`→``,
//!    `ing`→`e`, `ing`→``) are applied once; the word itself and those forms that are verb lemmas
//!    in WordNet's `index.verb` are returned if any;
//! 2. else the rules are applied again to all forms, round after round, until a round yields a
//!    lemma or no form is left.
//!
//! Candidates keep their order of discovery without repeats, and `min(.., key=len)` takes the
//! first of the shortest. The data is WordNet 3.0 (the `wordnet` package of nltk_data).

use std::collections::{HashMap, HashSet};

use super::{OkVqaError, Sections};

/// NLTK's `MORPHOLOGICAL_SUBSTITUTIONS[VERB]`, in order.
const VERB_RULES: [(&str, &str); 8] = [
    ("s", ""),
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
];

/// WordNet's verb lemmas and verb exception list.
#[derive(Debug)]
pub struct VerbLemmatizer {
    lemmas: HashSet<String>,
    exceptions: HashMap<String, Vec<String>>,
}

impl VerbLemmatizer {
    pub(crate) fn parse(data: &Sections) -> Result<Self, OkVqaError> {
        let mut exceptions = HashMap::new();
        for (line, text) in data.section("exc")? {
            let mut terms = text.split_whitespace().map(str::to_string);
            let form = terms
                .next()
                .ok_or_else(|| data.error(line, "empty exception line"))?;
            // NLTK's dict assignment: a later line for the same form wins.
            exceptions.insert(form, terms.collect());
        }
        let lemmas = data
            .section("lemmas")?
            .map(|(_, l)| l.to_string())
            .collect();
        Ok(VerbLemmatizer { lemmas, exceptions })
    }

    /// `WordNetLemmatizer().lemmatize(word, 'v')`.
    pub fn lemmatize(&self, word: &str) -> String {
        let candidates = self.morphy(word);
        let mut best: Option<&String> = None;
        for c in &candidates {
            if best.is_none_or(|b| c.chars().count() < b.chars().count()) {
                best = Some(c);
            }
        }
        best.cloned().unwrap_or_else(|| word.to_string())
    }

    /// `wn._morphy(form, 'v')`.
    pub fn morphy(&self, form: &str) -> Vec<String> {
        if let Some(bases) = self.exceptions.get(form) {
            let mut forms = vec![form.to_string()];
            forms.extend(bases.iter().cloned());
            return self.filter(&forms);
        }
        let mut forms = apply_rules(&[form.to_string()]);
        let mut first = vec![form.to_string()];
        first.extend(forms.iter().cloned());
        let results = self.filter(&first);
        if !results.is_empty() {
            return results;
        }
        while !forms.is_empty() {
            forms = apply_rules(&forms);
            let results = self.filter(&forms);
            if !results.is_empty() {
                return results;
            }
        }
        Vec::new()
    }

    /// `filter_forms`: verb lemmas among `forms`, first occurrences in order.
    fn filter(&self, forms: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in forms {
            if self.lemmas.contains(f) && !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }
}

/// `apply_rules`: every rule whose suffix ends a form, for every form, in order. Repeats are
/// dropped (keeping the first): later rounds and the filter only see first occurrences, so the
/// result is the same and the rounds stay small.
fn apply_rules(forms: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for form in forms {
        for (old, new) in VERB_RULES {
            if let Some(stem) = form.strip_suffix(old) {
                let next = format!("{stem}{new}");
                if !out.contains(&next) {
                    out.push(next);
                }
            }
        }
    }
    out
}
