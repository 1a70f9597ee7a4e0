//! NLTK's `NLTKWordTokenizer` (nltk 3.8.1, `nltk/tokenize/destructive.py`), the word tokenizer
//! behind `word_tokenize`, applied to one sentence.
//!
//! NLTK runs a fixed list of regular-expression substitutions over the text and splits the
//! result on whitespace. Each step below reproduces one `re.sub` by hand: the text is scanned
//! left to right, a match is tried at each position with the regex engine's backtracking order,
//! and scanning resumes after the match. Character classes follow Python 3.11's `str` regexes
//! (`\w`, `\d`, `\s`, `\b`, `$` also before a final newline, `(?i)`); see [`PyChars`].
//! `convert_parentheses` is off, as in `word_tokenize`.

use super::{PyChars, ci_at};

/// A match found at some position: where it ends and what replaces it.
type Hit = Option<(usize, Vec<char>)>;

/// Python `re.sub` for a pattern that never matches the empty string: `at(text, i)` tries a
/// match starting at `i`.
fn sub(text: &[char], mut at: impl FnMut(&[char], usize) -> Hit) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < text.len() {
        match at(text, i) {
            Some((end, replacement)) => {
                out.extend(replacement);
                i = end;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
}

/// `" " + piece + " "`.
fn padded(piece: &[char]) -> Vec<char> {
    let mut v = Vec::with_capacity(piece.len() + 2);
    v.push(' ');
    v.extend_from_slice(piece);
    v.push(' ');
    v
}

/// Concatenation of string pieces.
fn cat(pieces: &[&[char]]) -> Vec<char> {
    pieces.iter().flat_map(|p| p.iter().copied()).collect()
}

/// Python's `$` without MULTILINE: the end, or just before a newline that ends the text.
fn at_dollar(text: &[char], i: usize) -> bool {
    i == text.len() || (i + 1 == text.len() && text[i] == '\n')
}

/// Whether `text[i]` equals `c`.
fn is(text: &[char], i: usize, c: char) -> bool {
    text.get(i) == Some(&c)
}

/// `\b` before position `i` whose character is a word character: start or a non-word before.
fn boundary_before(text: &[char], i: usize, py: &PyChars) -> bool {
    i == 0 || !py.is_word(text[i - 1])
}

/// `\b` after a word character ending at `i`: end or a non-word character next.
fn boundary_after(text: &[char], i: usize, py: &PyChars) -> bool {
    text.get(i).is_none_or(|&c| !py.is_word(c))
}

/// The final-period rule `([^\.])(\.)([<closers>]*)\s*$`: at `i` a non-period, a period, the
/// longest run of closers, then only whitespace to the end. Returns the run's end.
fn final_period(text: &[char], i: usize, closers: &[char], py: &PyChars) -> Option<usize> {
    if text[i] == '.' || !is(text, i + 1, '.') {
        return None;
    }
    let mut j = i + 2;
    while j < text.len() && closers.contains(&text[j]) {
        j += 1;
    }
    // Backtracking into the closer run cannot help: a shorter run leaves a closer that `\s*`
    // would have to take, and the first character that stopped the run still blocks.
    text[j..].iter().all(|&c| py.is_space(c)).then_some(j)
}

/// `NLTKWordTokenizer().tokenize(text)`.
pub fn tokenize(text: &str, py: &PyChars) -> Vec<String> {
    let mut t: Vec<char> = text.chars().collect();

    // STARTING_QUOTES
    // ([«“‘„]|[`]+) -> " \1 "
    t = sub(&t, |s, i| match s[i] {
        '«' | '“' | '‘' | '„' => Some((i + 1, padded(&s[i..=i]))),
        '`' => {
            let mut j = i;
            while is(s, j, '`') {
                j += 1;
            }
            Some((j, padded(&s[i..j])))
        }
        _ => None,
    });
    // ^\" -> ``
    if t.first() == Some(&'"') {
        t.splice(0..1, ['`', '`']);
    }
    // (``) -> " \1 "
    t = sub(&t, |s, i| {
        (is(s, i, '`') && is(s, i + 1, '`')).then(|| (i + 2, padded(&s[i..i + 2])))
    });
    // ([ \(\[{<])(\"|\'{2}) -> "\1 `` "
    t = sub(&t, |s, i| {
        if !matches!(s[i], ' ' | '(' | '[' | '{' | '<') {
            return None;
        }
        let end = if is(s, i + 1, '"') {
            i + 2
        } else if is(s, i + 1, '\'') && is(s, i + 2, '\'') {
            i + 3
        } else {
            return None;
        };
        Some((end, cat(&[&s[i..=i], &[' ', '`', '`', ' ']])))
    });
    // (?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b -> "\1 \2"
    t = sub(&t, |s, i| {
        if s[i] != '\'' {
            return None;
        }
        let blocked = ["re", "ve", "ll", "m", "t", "s", "d", "n"]
            .iter()
            .any(|w| ci_at(s, i + 1, w));
        let w = *s.get(i + 1)?;
        (!blocked && py.is_word(w) && boundary_after(s, i + 2, py))
            .then(|| (i + 2, vec!['\'', ' ', w]))
    });

    // PUNCTUATION
    // ([^\.])(\.)([\]\)}>"\'»”’ ]*)\s*$ -> "\1 \2 \3 "
    const CLOSERS_WIDE: [char; 10] = [']', ')', '}', '>', '"', '\'', '»', '”', '’', ' '];
    t = sub(&t, |s, i| {
        let j = final_period(s, i, &CLOSERS_WIDE, py)?;
        Some((
            s.len(),
            cat(&[&s[i..=i], &[' ', '.', ' '], &s[i + 2..j], &[' ']]),
        ))
    });
    // ([:,])([^\d]) -> " \1 \2"
    t = sub(&t, |s, i| {
        let next = *s.get(i + 1)?;
        (matches!(s[i], ':' | ',') && !py.is_decimal(next))
            .then(|| (i + 2, vec![' ', s[i], ' ', next]))
    });
    // ([:,])$ -> " \1 "
    t = sub(&t, |s, i| {
        (matches!(s[i], ':' | ',') && at_dollar(s, i + 1)).then(|| (i + 1, padded(&s[i..=i])))
    });
    // \.{2,} -> " \g<0> "
    t = sub(&t, |s, i| {
        let mut j = i;
        while is(s, j, '.') {
            j += 1;
        }
        (j - i >= 2).then(|| (j, padded(&s[i..j])))
    });
    // [;@#$%&] -> " \g<0> "
    t = sub(&t, |s, i| {
        matches!(s[i], ';' | '@' | '#' | '$' | '%' | '&').then(|| (i + 1, padded(&s[i..=i])))
    });
    // ([^\.])(\.)([\]\)}>"\']*)\s*$ -> "\1 \2\3 "
    const CLOSERS: [char; 6] = [']', ')', '}', '>', '"', '\''];
    t = sub(&t, |s, i| {
        let j = final_period(s, i, &CLOSERS, py)?;
        Some((
            s.len(),
            cat(&[&s[i..=i], &[' ', '.'], &s[i + 2..j], &[' ']]),
        ))
    });
    // [?!] -> " \g<0> "
    t = sub(&t, |s, i| {
        matches!(s[i], '?' | '!').then(|| (i + 1, padded(&s[i..=i])))
    });
    // ([^'])' -> "\1 ' "
    t = sub(&t, |s, i| {
        (s[i] != '\'' && is(s, i + 1, '\'') && is(s, i + 2, ' '))
            .then(|| (i + 3, vec![s[i], ' ', '\'', ' ']))
    });
    // [*] -> " \g<0> "
    t = sub(&t, |s, i| (s[i] == '*').then(|| (i + 1, padded(&s[i..=i]))));

    // PARENS_BRACKETS: [\]\[\(\)\{\}\<\>] -> " \g<0> "
    t = sub(&t, |s, i| {
        matches!(s[i], ']' | '[' | '(' | ')' | '{' | '}' | '<' | '>')
            .then(|| (i + 1, padded(&s[i..=i])))
    });
    // DOUBLE_DASHES: -- -> " -- "
    t = sub(&t, |s, i| {
        (is(s, i, '-') && is(s, i + 1, '-')).then(|| (i + 2, padded(&s[i..i + 2])))
    });

    let mut u = Vec::with_capacity(t.len() + 2);
    u.push(' ');
    u.extend(t);
    u.push(' ');
    t = u;

    // ENDING_QUOTES
    // ([»”’]) -> " \1 "
    t = sub(&t, |s, i| {
        matches!(s[i], '»' | '”' | '’').then(|| (i + 1, padded(&s[i..=i])))
    });
    // '' -> " '' "
    t = sub(&t, |s, i| {
        (is(s, i, '\'') && is(s, i + 1, '\'')).then(|| (i + 2, padded(&s[i..i + 2])))
    });
    // " -> " '' "
    t = sub(&t, |s, i| {
        (s[i] == '"').then(|| (i + 1, vec![' ', '\'', '\'', ' ']))
    });
    // ([^' ])('[sS]|'[mM]|'[dD]|') -> "\1 \2 "
    t = sub(&t, |s, i| {
        if matches!(s[i], '\'' | ' ') || !is(s, i + 1, '\'') {
            return None;
        }
        let clitic = s
            .get(i + 2)
            .is_some_and(|c| matches!(c, 's' | 'S' | 'm' | 'M' | 'd' | 'D'))
            && is(s, i + 3, ' ');
        if clitic {
            Some((i + 4, cat(&[&s[i..=i], &[' '], &s[i + 1..i + 3], &[' ']])))
        } else if is(s, i + 2, ' ') {
            Some((i + 3, vec![s[i], ' ', '\'', ' ']))
        } else {
            None
        }
    });
    // ([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) -> "\1 \2 "
    t = sub(&t, |s, i| {
        if matches!(s[i], '\'' | ' ') || !is(s, i + 4, ' ') {
            return None;
        }
        let piece: String = s.get(i + 1..i + 4)?.iter().collect();
        ["'ll", "'LL", "'re", "'RE", "'ve", "'VE", "n't", "N'T"]
            .contains(&piece.as_str())
            .then(|| (i + 5, cat(&[&s[i..=i], &[' '], &s[i + 1..i + 4], &[' ']])))
    });

    // CONTRACTIONS2: (?i)\b(can)(not)\b and friends -> " \1 \2 "
    const CONTRACTIONS2: [(&str, &str); 7] = [
        ("can", "not"),
        ("d", "'ye"),
        ("gim", "me"),
        ("gon", "na"),
        ("got", "ta"),
        ("lem", "me"),
        ("more", "'n"),
    ];
    for (a, b) in CONTRACTIONS2 {
        let (la, lb) = (a.chars().count(), b.chars().count());
        t = sub(&t, |s, i| {
            let hit = boundary_before(s, i, py)
                && ci_at(s, i, a)
                && ci_at(s, i + la, b)
                && boundary_after(s, i + la + lb, py);
            hit.then(|| split_pair(s, i, la, lb))
        });
    }
    // (?i)\b(wan)(na)(?=\s) -> " \1 \2 "
    t = sub(&t, |s, i| {
        let hit = boundary_before(s, i, py)
            && ci_at(s, i, "wan")
            && ci_at(s, i + 3, "na")
            && s.get(i + 5).is_some_and(|&c| py.is_space(c));
        hit.then(|| split_pair(s, i, 3, 2))
    });
    // CONTRACTIONS3: (?i) ('t)(is)\b and (?i) ('t)(was)\b -> " \1 \2 "
    for b in ["is", "was"] {
        let lb = b.len();
        t = sub(&t, |s, i| {
            let hit = s[i] == ' '
                && ci_at(s, i + 1, "'t")
                && ci_at(s, i + 3, b)
                && boundary_after(s, i + 3 + lb, py);
            hit.then(|| split_pair(s, i + 1, 2, lb))
        });
    }

    let joined: String = t.into_iter().collect();
    super::super::py_split(&joined)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Replacement `" \1 \2 "` for two adjacent groups of lengths `la` and `lb` starting at `i`.
fn split_pair(s: &[char], i: usize, la: usize, lb: usize) -> (usize, Vec<char>) {
    let end = i + la + lb;
    (
        end,
        cat(&[&[' '], &s[i..i + la], &[' '], &s[i + la..end], &[' ']]),
    )
}
