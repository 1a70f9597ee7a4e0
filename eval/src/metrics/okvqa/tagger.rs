//! NLTK's English part-of-speech tagger: `nltk.pos_tag` → `PerceptronTagger.tag` (nltk 3.8.1,
//! `nltk/tag/perceptron.py`, model `taggers/averaged_perceptron_tagger`).
//!
//! For each token, left to right: a token found in the model's `tagdict` (frequent words that
//! always had one tag in training; the lookup is case-sensitive) gets that tag; otherwise the
//! tag with the highest sum of the weights of 14 features (the token's suffix and first
//! character, the two previous predicted tags, the normalised neighbouring words and their
//! suffixes), ties broken by the larger tag name. Every weight of the model is a multiple of
//! 0.001 and is rebuilt from its integer number of thousandths bit for bit; per tag the sum is
//! taken in NLTK's feature order, so the scores are the same floating-point numbers.

use std::collections::HashMap;

use super::{OkVqaError, PyChars, Sections, py_lower};

/// The averaged-perceptron model: classes, tag dictionary and feature weights.
#[derive(Debug)]
pub struct PerceptronTagger {
    classes: Vec<String>,
    tagdict: HashMap<String, u8>,
    weights: HashMap<String, Vec<(u8, f64)>>,
}

const START: [&str; 2] = ["-START-", "-START2-"];
const END: [&str; 2] = ["-END-", "-END2-"];

/// Python's `s[-3:]`: the last three characters.
fn last3(s: &str) -> &str {
    match s.char_indices().rev().nth(2) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

impl PerceptronTagger {
    pub(crate) fn parse(data: &Sections) -> Result<Self, OkVqaError> {
        let classes: Vec<String> = data
            .section("classes")?
            .map(|(_, l)| l.to_string())
            .collect();
        if classes.len() > usize::from(u8::MAX) {
            return Err(data.error(0, "too many classes"));
        }
        let index: HashMap<&str, u8> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u8))
            .collect();
        let tag_index = |line: usize, tag: &str| {
            index
                .get(tag)
                .copied()
                .ok_or_else(|| data.error(line, &format!("unknown tag {tag:?}")))
        };
        let mut tagdict = HashMap::new();
        for (line, text) in data.section("tagdict")? {
            let (word, tag) = text
                .split_once('\t')
                .ok_or_else(|| data.error(line, "expected `word<TAB>tag`"))?;
            tagdict.insert(word.to_string(), tag_index(line, tag)?);
        }
        let mut weights = HashMap::new();
        for (line, text) in data.section("weights")? {
            let (feature, list) = text
                .split_once('\t')
                .ok_or_else(|| data.error(line, "expected `feature<TAB>weights`"))?;
            let mut ws = Vec::new();
            // A feature can have no weights left (an empty dict in the pickle).
            for item in list.split(',').filter(|item| !item.is_empty()) {
                let (tag, milli) = item
                    .rsplit_once('=')
                    .and_then(|(t, m)| Some((t, m.parse::<i64>().ok()?)))
                    .ok_or_else(|| data.error(line, "expected `tag=thousandths`"))?;
                // Python's round(w, 3) gives the double nearest to milli / 1000, and IEEE
                // division of two exactly representable integers is that same double.
                ws.push((tag_index(line, tag)?, milli as f64 / 1000.0));
            }
            weights.insert(feature.to_string(), ws);
        }
        Ok(PerceptronTagger {
            classes,
            tagdict,
            weights,
        })
    }

    /// `PerceptronTagger.normalize`: hyphenated words, years and numbers become placeholders,
    /// everything else is lower-cased.
    fn normalize(word: &str, py: &PyChars) -> String {
        let first = word.chars().next();
        if word.contains('-') && first != Some('-') {
            return "!HYPHEN".to_string();
        }
        let all_digits = first.is_some() && word.chars().all(|c| py.is_digit(c));
        if all_digits && word.chars().count() == 4 {
            return "!YEAR".to_string();
        }
        if first.is_some_and(|c| py.is_digit(c)) {
            return "!DIGITS".to_string();
        }
        py_lower(word)
    }

    /// `PerceptronTagger.tag(tokens)`: one Penn Treebank tag per token.
    pub fn tag(&self, tokens: &[String], py: &PyChars) -> Vec<&str> {
        let mut context: Vec<String> = START.iter().map(|s| s.to_string()).collect();
        context.extend(tokens.iter().map(|w| Self::normalize(w, py)));
        context.extend(END.iter().map(|s| s.to_string()));

        let (mut prev, mut prev2) = (START[0], START[1]);
        let mut out = Vec::with_capacity(tokens.len());
        for (i, word) in tokens.iter().enumerate() {
            let tag = match self.tagdict.get(word.as_str()) {
                Some(&t) => self.classes[usize::from(t)].as_str(),
                None => self.predict(&Self::features(i, word, &context, prev, prev2)),
            };
            out.push(tag);
            prev2 = prev;
            prev = tag;
        }
        out
    }

    /// `_get_features`, in NLTK's insertion order.
    fn features(i: usize, word: &str, context: &[String], prev: &str, prev2: &str) -> Vec<String> {
        let i = i + START.len();
        let first: String = word.chars().next().map(String::from).unwrap_or_default();
        vec![
            "bias".to_string(),
            format!("i suffix {}", last3(word)),
            format!("i pref1 {first}"),
            format!("i-1 tag {prev}"),
            format!("i-2 tag {prev2}"),
            format!("i tag+i-2 tag {prev} {prev2}"),
            format!("i word {}", context[i]),
            format!("i-1 tag+i word {prev} {}", context[i]),
            format!("i-1 word {}", context[i - 1]),
            format!("i-1 suffix {}", last3(&context[i - 1])),
            format!("i-2 word {}", context[i - 2]),
            format!("i+1 word {}", context[i + 1]),
            format!("i+1 suffix {}", last3(&context[i + 1])),
            format!("i+2 word {}", context[i + 2]),
        ]
    }

    /// `AveragedPerceptron.predict`: the class with the highest `(score, name)`.
    fn predict(&self, features: &[String]) -> &str {
        let mut scores = vec![0.0f64; self.classes.len()];
        // NLTK's features are a dict: a repeated feature counts twice (value 2), still in the
        // position of its first occurrence.
        let mut counted: Vec<(&str, f64)> = Vec::with_capacity(features.len());
        for f in features {
            match counted.iter_mut().find(|(g, _)| *g == f.as_str()) {
                Some((_, v)) => *v += 1.0,
                None => counted.push((f.as_str(), 1.0)),
            }
        }
        for (feature, value) in counted {
            if let Some(ws) = self.weights.get(feature) {
                for &(tag, w) in ws {
                    scores[usize::from(tag)] += value * w;
                }
            }
        }
        let mut best = 0;
        for k in 1..self.classes.len() {
            let better = match scores[k].partial_cmp(&scores[best]) {
                Some(std::cmp::Ordering::Greater) => true,
                Some(std::cmp::Ordering::Equal) => self.classes[k] > self.classes[best],
                _ => false,
            };
            if better {
                best = k;
            }
        }
        self.classes[best].as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::last3;

    #[test]
    fn last_three_characters() {
        assert_eq!(last3("running"), "ing");
        assert_eq!(last3("ab"), "ab");
        assert_eq!(last3("naïve"), "ïve");
        assert_eq!(last3(""), "");
    }
}
