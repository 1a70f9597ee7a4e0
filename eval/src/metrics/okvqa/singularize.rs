//! `inflection.singularize` (the `inflection` package, 0.5.1).
//!
//! A word that ends in one of the uncountable words (`(?i)\b(word)\Z`) is returned as is;
//! otherwise the first rule of `SINGULARS` whose pattern is found in the word rewrites it
//! (`re.sub`), and a word that no rule matches is returned as is. `SINGULARS` is the package's
//! list with the irregular pairs that `_irregular(...)` puts in front of it, in the final order.
//!
//! The patterns are kept verbatim and run by a small backtracking matcher for the regex subset
//! they use (`(?i)`, literals, capturing and `(?:)` groups with `|` and `?`, `[...]`, `[^...]`,
//! `^`, `$`), with Python's leftmost-first semantics and its `(?i)` case folding for `str`.

use super::{PyChars, ci_eq};

/// `SINGULARS` after the irregulars were added: `(pattern, replacement)`, `\1` = group 1.
const SINGULARS: [(&str, &str); 42] = [
    (r"(?i)(z)ombies$", r"\1ombie"),
    (r"k[iI][nN][eE]$", "cow"),
    (r"K[iI][nN][eE]$", "Cow"),
    (r"(?i)(m)oves$", r"\1ove"),
    (r"(?i)(s)exes$", r"\1ex"),
    (r"(?i)(c)hildren$", r"\1hild"),
    (r"(?i)(h)umans$", r"\1uman"),
    (r"(?i)(m)en$", r"\1an"),
    (r"(?i)(p)eople$", r"\1erson"),
    (r"(?i)(database)s$", r"\1"),
    (r"(?i)(quiz)zes$", r"\1"),
    (r"(?i)(matr)ices$", r"\1ix"),
    (r"(?i)(vert|ind)ices$", r"\1ex"),
    (r"(?i)(passer)sby$", r"\1by"),
    (r"(?i)^(ox)en", r"\1"),
    (r"(?i)(alias|status)(es)?$", r"\1"),
    (r"(?i)(octop|vir)(us|i)$", r"\1us"),
    (r"(?i)^(a)x[ie]s$", r"\1xis"),
    (r"(?i)(cris|test)(is|es)$", r"\1is"),
    (r"(?i)(shoe)s$", r"\1"),
    (r"(?i)(o)es$", r"\1"),
    (r"(?i)(bus)(es)?$", r"\1"),
    (r"(?i)(m|l)ice$", r"\1ouse"),
    (r"(?i)(x|ch|ss|sh)es$", r"\1"),
    (r"(?i)(m)ovies$", r"\1ovie"),
    (r"(?i)(s)eries$", r"\1eries"),
    (r"(?i)([^aeiouy]|qu)ies$", r"\1y"),
    (r"(?i)([lr])ves$", r"\1f"),
    (r"(?i)(tive)s$", r"\1"),
    (r"(?i)(hive)s$", r"\1"),
    (r"(?i)([^f])ves$", r"\1fe"),
    (r"(?i)(t)he(sis|ses)$", r"\1hesis"),
    (r"(?i)(s)ynop(sis|ses)$", r"\1ynopsis"),
    (r"(?i)(p)rogno(sis|ses)$", r"\1rognosis"),
    (r"(?i)(p)arenthe(sis|ses)$", r"\1arenthesis"),
    (r"(?i)(d)iagno(sis|ses)$", r"\1iagnosis"),
    (r"(?i)(b)a(sis|ses)$", r"\1asis"),
    (r"(?i)(a)naly(sis|ses)$", r"\1nalysis"),
    (r"(?i)([ti])a$", r"\1um"),
    (r"(?i)(n)ews$", r"\1ews"),
    (r"(?i)(ss)$", r"\1"),
    (r"(?i)s$", ""),
];

/// `UNCOUNTABLES`.
const UNCOUNTABLES: [&str; 9] = [
    "equipment",
    "fish",
    "information",
    "jeans",
    "money",
    "rice",
    "series",
    "sheep",
    "species",
];

/// `inflection.singularize(word)`.
pub fn singularize(word: &str, py: &PyChars) -> String {
    let chars: Vec<char> = word.chars().collect();
    for unc in UNCOUNTABLES {
        let n = unc.len();
        if chars.len() >= n {
            let at = chars.len() - n;
            let boundary = at == 0 || !py.is_word(chars[at - 1]);
            if boundary && super::ci_at(&chars, at, unc) {
                return word.to_string();
            }
        }
    }
    for (pattern, replacement) in SINGULARS {
        let regex = Regex::parse(pattern);
        if let Some(found) = regex.search(&chars) {
            return regex.substitute(&chars, found, replacement);
        }
    }
    word.to_string()
}

/// A node of the regex subset.
#[derive(Debug)]
enum Node {
    Lit(char),
    Class {
        negated: bool,
        set: Vec<char>,
    },
    Start,
    End,
    Group {
        alts: Vec<Vec<Node>>,
        capture: bool,
        optional: bool,
    },
    /// Internal markers: group 1 opens / closes here.
    Open,
    Close,
}

/// A match: start, end and the span of group 1.
#[derive(Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    group: Option<(usize, usize)>,
}

/// A parsed pattern.
struct Regex {
    nodes: Vec<Node>,
    ignore_case: bool,
}

impl Regex {
    /// Parses one of the patterns above (their syntax is fixed, so there is nothing to report).
    fn parse(pattern: &str) -> Regex {
        let (ignore_case, body) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let chars: Vec<char> = body.chars().collect();
        let mut i = 0;
        let nodes = Self::parse_seq(&chars, &mut i);
        Regex { nodes, ignore_case }
    }

    /// A sequence up to `|`, `)` or the end.
    fn parse_seq(p: &[char], i: &mut usize) -> Vec<Node> {
        let mut seq = Vec::new();
        while let Some(&c) = p.get(*i) {
            match c {
                '|' | ')' => break,
                '^' => {
                    seq.push(Node::Start);
                    *i += 1;
                }
                '$' => {
                    seq.push(Node::End);
                    *i += 1;
                }
                '[' => {
                    *i += 1;
                    let negated = p.get(*i) == Some(&'^');
                    if negated {
                        *i += 1;
                    }
                    let mut set = Vec::new();
                    while let Some(&c) = p.get(*i) {
                        *i += 1;
                        if c == ']' {
                            break;
                        }
                        set.push(c);
                    }
                    seq.push(Node::Class { negated, set });
                }
                '(' => {
                    *i += 1;
                    let capture = !(p.get(*i) == Some(&'?') && p.get(*i + 1) == Some(&':'));
                    if !capture {
                        *i += 2;
                    }
                    let mut alts = vec![Self::parse_seq(p, i)];
                    while p.get(*i) == Some(&'|') {
                        *i += 1;
                        alts.push(Self::parse_seq(p, i));
                    }
                    *i += 1; // ')'
                    let optional = p.get(*i) == Some(&'?');
                    if optional {
                        *i += 1;
                    }
                    seq.push(Node::Group {
                        alts,
                        capture,
                        optional,
                    });
                }
                c => {
                    seq.push(Node::Lit(c));
                    *i += 1;
                }
            }
        }
        seq
    }

    fn char_eq(&self, c: char, lit: char) -> bool {
        c == lit
            || (self.ignore_case && lit.is_ascii_alphabetic() && ci_eq(c, lit.to_ascii_lowercase()))
    }

    /// `re.search`: the leftmost start with a match, the first match there in backtracking
    /// order. Only the first group is captured (the replacements use only `\1`).
    fn search(&self, s: &[char]) -> Option<Found> {
        let items: Vec<&Node> = self.nodes.iter().collect();
        (0..=s.len()).find_map(|start| {
            self.match_items(s, &items, start, None)
                .map(|(end, group)| Found { start, end, group })
        })
    }

    /// Matches `items` at `pos`, returning the end and group 1's span.
    fn match_items(
        &self,
        s: &[char],
        items: &[&Node],
        pos: usize,
        group: Option<(usize, usize)>,
    ) -> Option<(usize, Option<(usize, usize)>)> {
        let Some((node, rest)) = items.split_first() else {
            return Some((pos, group));
        };
        match node {
            Node::Lit(c) => {
                let ok = s.get(pos).is_some_and(|&x| self.char_eq(x, *c));
                if ok {
                    self.match_items(s, rest, pos + 1, group)
                } else {
                    None
                }
            }
            Node::Class { negated, set } => {
                let x = *s.get(pos)?;
                let inside = set.iter().any(|&c| self.char_eq(x, c));
                if inside != *negated {
                    self.match_items(s, rest, pos + 1, group)
                } else {
                    None
                }
            }
            Node::Start => {
                if pos == 0 {
                    self.match_items(s, rest, pos, group)
                } else {
                    None
                }
            }
            Node::End => {
                let at_end = pos == s.len() || (pos + 1 == s.len() && s[pos] == '\n');
                if at_end {
                    self.match_items(s, rest, pos, group)
                } else {
                    None
                }
            }
            Node::Open => self.match_items(s, rest, pos, Some((pos, pos))),
            Node::Close => {
                let opened = group.map(|(a, _)| (a, pos));
                self.match_items(s, rest, pos, opened)
            }
            Node::Group {
                alts,
                capture,
                optional,
            } => {
                // Only the first capturing group of the pattern is group 1.
                let is_first = *capture && std::ptr::eq(*node, self.first_capture()?);
                for alt in alts {
                    let mut seq: Vec<&Node> = Vec::new();
                    if is_first {
                        seq.push(&Node::Open);
                    }
                    seq.extend(alt.iter());
                    if is_first {
                        seq.push(&Node::Close);
                    }
                    seq.extend(rest.iter().copied());
                    if let Some(found) = self.match_items(s, &seq, pos, group) {
                        return Some(found);
                    }
                }
                if *optional {
                    return self.match_items(s, rest, pos, group);
                }
                None
            }
        }
    }

    /// The first capturing group at the top level (every pattern here has it there, if any).
    fn first_capture(&self) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| matches!(n, Node::Group { capture: true, .. }))
    }

    /// `re.sub(pattern, replacement, word)`: patterns here are anchored by `$` or `^`, so they
    /// match once; the match is replaced with `replacement` (`\1` = group 1).
    fn substitute(&self, s: &[char], found: Found, replacement: &str) -> String {
        let mut out: String = s[..found.start].iter().collect();
        let group: String = found
            .group
            .map(|(a, b)| s[a..b].iter().collect())
            .unwrap_or_default();
        out.push_str(&replacement.replace(r"\1", &group));
        out.extend(&s[found.end..]);
        out
    }
}
