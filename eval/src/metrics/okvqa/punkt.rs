//! NLTK's Punkt sentence splitter with its English model, as `sent_tokenize` runs it in
//! nltk 3.8.1 (`nltk/tokenize/punkt.py`, `PunktSentenceTokenizer.tokenize` with
//! `realign_boundaries=True`, loaded from `tokenizers/punkt/english.pickle`).
//!
//! Only the decision procedure is needed, not training:
//!
//! 1. candidates: each `.`, `?` or `!` followed by a non-word punctuation character or by
//!    whitespace and another token (`period_context_re`), with the word before it
//!    (`_match_potential_end_contexts`, including its overlap removal);
//! 2. each candidate's context is split into Punkt word tokens and annotated: first pass by
//!    type (sentence-final punctuation, ellipsis, known abbreviation), second pass with the
//!    collocation, orthographic and sentence-starter heuristics; a break is taken when a token
//!    marked as a sentence break is followed by another token;
//! 3. the slices are realigned so that closing quotes and brackets after the break stay with
//!    the sentence before.
//!
//! The model parameters (abbreviations, collocations, sentence starters, orthographic
//! contexts) come from the English pickle.

use std::collections::{HashMap, HashSet};

use super::{OkVqaError, PyChars, Sections, py_lower};

const ORTHO_BEG_UC: u32 = 1 << 1;
const ORTHO_MID_UC: u32 = 1 << 2;
const ORTHO_UNK_UC: u32 = 1 << 3;
const ORTHO_BEG_LC: u32 = 1 << 4;
const ORTHO_MID_LC: u32 = 1 << 5;
const ORTHO_UNK_LC: u32 = 1 << 6;
const ORTHO_UC: u32 = ORTHO_BEG_UC | ORTHO_MID_UC | ORTHO_UNK_UC;
const ORTHO_LC: u32 = ORTHO_BEG_LC | ORTHO_MID_LC | ORTHO_UNK_LC;

/// The English Punkt model.
#[derive(Debug)]
pub struct Punkt {
    abbrev_types: HashSet<String>,
    collocations: HashSet<(String, String)>,
    sent_starters: HashSet<String>,
    ortho_context: HashMap<String, u32>,
}

/// Punkt's `_re_non_word_chars`: characters that cannot appear within words.
fn is_non_word(c: char) -> bool {
    matches!(
        c,
        ')' | '"' | ';' | '}' | ']' | '*' | ':' | '@' | '\'' | '(' | '{' | '[' | '?' | '!'
    )
}

/// Python's `string.whitespace` (ASCII only), used by `_get_last_whitespace_index`.
fn is_ascii_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{0B}' | '\u{0C}')
}

/// A candidate break from `period_context_re`: the end character's index, and the index range
/// of the following token when the lookahead took the whitespace branch.
struct Candidate {
    at: usize,
    after_end: usize,
    next_tok: Option<usize>,
}

/// Three-valued result of `_ortho_heuristic`.
#[derive(PartialEq, Eq)]
enum Ortho {
    Yes,
    No,
    Unknown,
}

/// A `PunktToken` with the annotations the decision uses.
struct Token {
    tok: Vec<char>,
    typ: String,
    period_final: bool,
    sentbreak: bool,
    abbr: bool,
    ellipsis: bool,
}

impl Token {
    fn new(tok: &[char], py: &PyChars) -> Self {
        let lower = py_lower(&tok.iter().collect::<String>());
        let typ = if is_numeric_type(&lower.chars().collect::<Vec<_>>(), py) {
            "##number##".to_string()
        } else {
            lower
        };
        Token {
            period_final: tok.last() == Some(&'.'),
            tok: tok.to_vec(),
            typ,
            sentbreak: false,
            abbr: false,
            ellipsis: false,
        }
    }

    fn type_no_period(&self) -> &str {
        if self.typ.chars().count() > 1 && self.typ.ends_with('.') {
            &self.typ[..self.typ.len() - 1]
        } else {
            &self.typ
        }
    }

    fn type_no_sentperiod(&self) -> &str {
        if self.sentbreak {
            self.type_no_period()
        } else {
            &self.typ
        }
    }

    fn first_upper(&self, py: &PyChars) -> bool {
        self.tok.first().is_some_and(|&c| py.is_upper(c))
    }

    fn first_lower(&self, py: &PyChars) -> bool {
        self.tok.first().is_some_and(|&c| py.is_lower(c))
    }

    /// `\.\.+$`: two or more periods and nothing else.
    fn is_ellipsis(&self) -> bool {
        self.tok.len() >= 2 && self.tok.iter().all(|&c| c == '.')
    }

    /// `[^\W\d]\.$`: a letter (word character, not a digit) and a period.
    fn is_initial(&self, py: &PyChars) -> bool {
        self.tok.len() == 2
            && py.is_word(self.tok[0])
            && !py.is_decimal(self.tok[0])
            && self.tok[1] == '.'
    }
}

/// `^-?[\.,]?\d[\d,\.-]*\.?$` over the whole (lower-cased) token.
fn is_numeric_type(s: &[char], py: &PyChars) -> bool {
    let rest_ok = |r: &[char]| {
        r.first().is_some_and(|&c| py.is_decimal(c))
            && r[1..]
                .iter()
                .all(|&c| py.is_decimal(c) || matches!(c, ',' | '.' | '-'))
    };
    let after_sign: &[&[char]] = if s.first() == Some(&'-') {
        &[&s[1..], s]
    } else {
        &[s]
    };
    after_sign.iter().any(|r| {
        rest_ok(r) || (r.first().is_some_and(|&c| c == '.' || c == ',') && rest_ok(&r[1..]))
    })
}

/// `_re_multi_char_punct` at `i`: `-{2,}`, `\.{2,}` or `(?:\.\s){2,}\.`; returns the end.
fn multi_char(s: &[char], i: usize, py: &PyChars) -> Option<usize> {
    let run = |c: char| {
        let mut j = i;
        while s.get(j) == Some(&c) {
            j += 1;
        }
        j
    };
    for c in ['-', '.'] {
        let j = run(c);
        if j - i >= 2 {
            return Some(j);
        }
    }
    let mut reps = 0;
    let mut j = i;
    while s.get(j) == Some(&'.') && s.get(j + 1).is_some_and(|&c| py.is_space(c)) {
        reps += 1;
        j += 2;
    }
    if reps >= 2 && s.get(j) == Some(&'.') {
        Some(j + 1)
    } else if reps >= 3 {
        Some(j - 1)
    } else {
        None
    }
}

/// Punkt's word tokenizer (`_word_tokenize_fmt` with `findall`) on one line.
fn word_tokenize(line: &[char], py: &PyChars) -> Vec<Vec<char>> {
    let n = line.len();
    // The end of a word: whitespace, `$`, a non-word character, multi-character punctuation,
    // or a comma followed by one of those.
    let word_end = |e: usize| -> bool {
        let dollar = |k: usize| k == n || (k + 1 == n && line[k] == '\n');
        if dollar(e) {
            return true;
        }
        let c = line[e];
        if py.is_space(c) || is_non_word(c) || multi_char(line, e, py).is_some() {
            return true;
        }
        c == ','
            && (dollar(e + 1)
                || py.is_space(line[e + 1])
                || is_non_word(line[e + 1])
                || multi_char(line, e + 1, py).is_some())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if let Some(end) = multi_char(line, i, py) {
            out.push(line[i..end].to_vec());
            i = end;
            continue;
        }
        let c = line[i];
        if py.is_space(c) {
            i += 1;
            continue;
        }
        let word_start = !matches!(
            c,
            '(' | '"'
                | '`'
                | '{'
                | '['
                | ':'
                | ';'
                | '&'
                | '#'
                | '*'
                | '@'
                | ')'
                | '}'
                | ']'
                | '-'
                | ','
        );
        let mut end = i + 1;
        if word_start {
            while !word_end(end) {
                end += 1;
            }
        }
        out.push(line[i..end].to_vec());
        i = end;
    }
    out
}

impl Punkt {
    pub(crate) fn parse(data: &Sections) -> Result<Self, OkVqaError> {
        let set = |name: &str| -> Result<HashSet<String>, OkVqaError> {
            Ok(data.section(name)?.map(|(_, l)| l.to_string()).collect())
        };
        let mut collocations = HashSet::new();
        for (line, text) in data.section("colloc")? {
            let (a, b) = text
                .split_once('\t')
                .ok_or_else(|| data.error(line, "expected two tab-separated types"))?;
            collocations.insert((a.to_string(), b.to_string()));
        }
        let mut ortho_context = HashMap::new();
        for (line, text) in data.section("ortho")? {
            let flags = text
                .split_once('\t')
                .and_then(|(t, f)| Some((t, f.parse::<u32>().ok()?)))
                .ok_or_else(|| data.error(line, "expected `type<TAB>flags`"))?;
            ortho_context.insert(flags.0.to_string(), flags.1);
        }
        Ok(Punkt {
            abbrev_types: set("abbrev")?,
            collocations,
            sent_starters: set("starter")?,
            ortho_context,
        })
    }

    /// `sent_tokenize(text)`: the sentences of `text`.
    pub fn sentences(&self, text: &str, py: &PyChars) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let slices = self.slices_from_text(&chars, py);
        realign_boundaries(&chars, &slices, py)
            .into_iter()
            .map(|(a, b)| chars[a.min(b)..b].iter().collect())
            .collect()
    }

    /// `period_context_re().finditer(text)`.
    fn candidates(chars: &[char], py: &PyChars) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            if !matches!(c, '.' | '?' | '!') {
                continue;
            }
            match chars.get(i + 1) {
                Some(&next) if is_non_word(next) => out.push(Candidate {
                    at: i,
                    after_end: i + 2,
                    next_tok: None,
                }),
                Some(&next) if py.is_space(next) => {
                    let mut j = i + 1;
                    while j < chars.len() && py.is_space(chars[j]) {
                        j += 1;
                    }
                    let mut k = j;
                    while k < chars.len() && !py.is_space(chars[k]) {
                        k += 1;
                    }
                    if k > j {
                        out.push(Candidate {
                            at: i,
                            after_end: k,
                            next_tok: Some(j),
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// `_match_potential_end_contexts`: each candidate (after overlap removal) with its context
    /// text, the word before the end character through the token after it.
    fn end_contexts(chars: &[char], py: &PyChars) -> Vec<(Candidate, Vec<char>)> {
        let slice = |a: usize, b: usize| -> &[char] { &chars[a.min(b)..b] };
        let context = |(a, b): (usize, usize), m: &Candidate| -> Vec<char> {
            let mut v = slice(a, b).to_vec();
            v.extend_from_slice(&chars[m.at..m.after_end]);
            v
        };
        let mut out = Vec::new();
        let mut previous_slice = (0usize, 0usize);
        let mut previous: Option<Candidate> = None;
        for m in Self::candidates(chars, py) {
            let before = slice(previous_slice.1, m.at);
            let last_ws = before.iter().rposition(|&c| is_ascii_ws(c)).unwrap_or(0);
            let start = if last_ws != 0 {
                last_ws + previous_slice.1 + 1
            } else {
                previous_slice.0
            };
            let word_slice = (start, m.at);
            if let Some(p) = previous.take()
                && previous_slice.1 <= word_slice.0
            {
                let text = context(previous_slice, &p);
                out.push((p, text));
            }
            previous = Some(m);
            previous_slice = word_slice;
        }
        if let Some(p) = previous {
            let text = context(previous_slice, &p);
            out.push((p, text));
        }
        out
    }

    /// `_slices_from_text`.
    fn slices_from_text(&self, chars: &[char], py: &PyChars) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut last_break = 0;
        for (m, context) in Self::end_contexts(chars, py) {
            if self.text_contains_sentbreak(&context, py) {
                out.push((last_break, m.at + 1));
                last_break = m.next_tok.unwrap_or(m.at + 1);
            }
        }
        let mut end = chars.len();
        while end > 0 && py.is_space(chars[end - 1]) {
            end -= 1;
        }
        out.push((last_break, end));
        out
    }

    /// `text_contains_sentbreak`: a token annotated as a sentence break is followed by another.
    fn text_contains_sentbreak(&self, text: &[char], py: &PyChars) -> bool {
        let mut tokens = Vec::new();
        for line in text.split(|&c| c == '\n') {
            if line.iter().any(|&c| !py.is_space(c)) {
                tokens.extend(word_tokenize(line, py).iter().map(|t| Token::new(t, py)));
            }
        }
        for t in tokens.iter_mut() {
            self.first_pass(t);
        }
        for k in 0..tokens.len().saturating_sub(1) {
            let (head, tail) = tokens.split_at_mut(k + 1);
            self.second_pass(&mut head[k], &tail[0], py);
        }
        let n = tokens.len();
        tokens.iter().take(n.saturating_sub(1)).any(|t| t.sentbreak)
    }

    /// `_first_pass_annotation`.
    fn first_pass(&self, t: &mut Token) {
        let tok: String = t.tok.iter().collect();
        if matches!(tok.as_str(), "." | "?" | "!") {
            t.sentbreak = true;
        } else if t.is_ellipsis() {
            t.ellipsis = true;
        } else if t.period_final && !tok.ends_with("..") {
            let head = py_lower(&tok[..tok.len() - 1]);
            let last = head.rsplit('-').next().unwrap_or("");
            if self.abbrev_types.contains(&head) || self.abbrev_types.contains(last) {
                t.abbr = true;
            } else {
                t.sentbreak = true;
            }
        }
    }

    /// `_ortho_heuristic`.
    fn ortho_heuristic(&self, t: &Token, py: &PyChars) -> Ortho {
        if t.tok.len() == 1 && matches!(t.tok[0], ';' | ':' | ',' | '.' | '!' | '?') {
            return Ortho::No;
        }
        let ortho = self.ortho(t.type_no_sentperiod());
        if t.first_upper(py) && ortho & ORTHO_LC != 0 && ortho & ORTHO_MID_UC == 0 {
            return Ortho::Yes;
        }
        if t.first_lower(py) && (ortho & ORTHO_UC != 0 || ortho & ORTHO_BEG_LC == 0) {
            return Ortho::No;
        }
        Ortho::Unknown
    }

    fn ortho(&self, typ: &str) -> u32 {
        self.ortho_context.get(typ).copied().unwrap_or(0)
    }

    /// `_second_pass_annotation` of `t1` followed by `t2`.
    fn second_pass(&self, t1: &mut Token, t2: &Token, py: &PyChars) {
        if !t1.period_final {
            return;
        }
        let typ = t1.type_no_period().to_string();
        let next_typ = t2.type_no_sentperiod().to_string();
        let is_initial = t1.is_initial(py);

        if self.collocations.contains(&(typ.clone(), next_typ.clone())) {
            t1.sentbreak = false;
            t1.abbr = true;
            return;
        }
        if (t1.abbr || t1.ellipsis) && !is_initial {
            if self.ortho_heuristic(t2, py) == Ortho::Yes {
                t1.sentbreak = true;
                return;
            }
            if t2.first_upper(py) && self.sent_starters.contains(&next_typ) {
                t1.sentbreak = true;
                return;
            }
        }
        if is_initial || typ == "##number##" {
            let starter = self.ortho_heuristic(t2, py);
            if starter == Ortho::No {
                t1.sentbreak = false;
                t1.abbr = true;
                return;
            }
            if starter == Ortho::Unknown
                && is_initial
                && t2.first_upper(py)
                && self.ortho(&next_typ) & ORTHO_LC == 0
            {
                t1.sentbreak = false;
                t1.abbr = true;
            }
        }
    }
}

/// `_realign_boundaries`: a sentence followed by closing quotes or brackets
/// (`["\')\]}]+?(?:\s+|(?=--)|$)`, `$` multi-line) keeps them.
fn realign_boundaries(
    chars: &[char],
    slices: &[(usize, usize)],
    py: &PyChars,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut realign = 0;
    for (k, &(start, stop)) in slices.iter().enumerate() {
        let s1 = (start + realign, stop);
        let Some(&s2) = slices.get(k + 1) else {
            if s1.0 < s1.1 {
                out.push(s1);
            }
            continue;
        };
        match boundary_realignment(&chars[s2.0.min(s2.1)..s2.1], py) {
            Some((closers, end)) => {
                out.push((s1.0, s2.0 + closers));
                realign = end;
            }
            None => {
                realign = 0;
                if s1.0 < s1.1 {
                    out.push(s1);
                }
            }
        }
    }
    out
}

/// `re_boundary_realignment.match(text)`: the number of closers (the match without its
/// trailing whitespace) and the match end.
fn boundary_realignment(text: &[char], py: &PyChars) -> Option<(usize, usize)> {
    let mut k = 0;
    while text
        .get(k)
        .is_some_and(|&c| matches!(c, '"' | '\'' | ')' | ']' | '}'))
    {
        k += 1;
        let mut ws = k;
        while ws < text.len() && py.is_space(text[ws]) {
            ws += 1;
        }
        if ws > k {
            return Some((k, ws));
        }
        if text.get(k) == Some(&'-') && text.get(k + 1) == Some(&'-') {
            return Some((k, k));
        }
        if k == text.len() || text[k] == '\n' {
            return Some((k, k));
        }
    }
    None
}
