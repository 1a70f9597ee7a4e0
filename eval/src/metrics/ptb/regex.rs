//! A tiny set-of-positions regular-expression engine over UTF-16 code units, enough to write
//! the PTB lexer's JFlex rules as combinators (no regex crate).
//!
//! Contract: [`ends`] returns, for an expression and a set of start positions, every position at
//! which some match starting at one of them ends (sorted, without duplicates). Matches are anchored
//! at the given starts and nothing else: there is no search, and the caller picks the longest end
//! itself (JFlex's longest-match rule). Literal ASCII letters ([`Re::Lit`]) match both cases, as
//! JFlex's `%caseless` does; character classes ([`Re::Class`]) are case-sensitive predicates.
//! There is no backtracking: each step maps a set of positions to the next set.

/// One regular expression over UTF-16 code units.
pub(super) enum Re {
    /// One unit accepted by a predicate: a JFlex character class (case-sensitive).
    Class(fn(u16) -> bool),
    /// One literal ASCII character; letters match either case (`%caseless`).
    Lit(u8),
    /// Concatenation.
    Seq(Vec<Re>),
    /// Alternation.
    Alt(Vec<Re>),
    /// Repetition `{min,max}` (`max == None` is unbounded).
    Rep(Box<Re>, usize, Option<usize>),
}

/// All end positions of matches of `re` that start at any of `starts` (sorted, unique).
pub(super) fn ends(re: &Re, t: &[u16], starts: &[usize]) -> Vec<usize> {
    match re {
        Re::Class(accepts) => starts
            .iter()
            .filter(|&&s| s < t.len() && accepts(t[s]))
            .map(|&s| s + 1)
            .collect(),
        Re::Lit(c) => starts
            .iter()
            .filter(|&&s| {
                s < t.len() && u8::try_from(t[s]).is_ok_and(|u| u.eq_ignore_ascii_case(c))
            })
            .map(|&s| s + 1)
            .collect(),
        Re::Seq(parts) => {
            let mut cur = starts.to_vec();
            for part in parts {
                if cur.is_empty() {
                    break;
                }
                cur = ends(part, t, &cur);
            }
            cur
        }
        Re::Alt(options) => {
            let mut out: Vec<usize> = options.iter().flat_map(|o| ends(o, t, starts)).collect();
            out.sort_unstable();
            out.dedup();
            out
        }
        Re::Rep(inner, min, max) => {
            let mut out = if *min == 0 {
                starts.to_vec()
            } else {
                Vec::new()
            };
            let mut cur = starts.to_vec();
            let mut count = 0;
            while max.is_none_or(|m| count < m) {
                let next = ends(inner, t, &cur);
                count += 1;
                if next.is_empty() {
                    break;
                }
                if count >= *min {
                    // Past the minimum, a position already reached continues exactly as before
                    // when there is no upper bound, so only fresh positions need exploring.
                    let fresh: Vec<usize> = next
                        .iter()
                        .copied()
                        .filter(|p| out.binary_search(p).is_err())
                        .collect();
                    out.extend_from_slice(&fresh);
                    out.sort_unstable();
                    cur = if max.is_none() { fresh } else { next };
                    if cur.is_empty() {
                        break;
                    }
                } else {
                    cur = next;
                }
            }
            out
        }
    }
}

/// Whether `re` can match the empty string.
pub(super) fn nullable(re: &Re) -> bool {
    match re {
        Re::Class(_) | Re::Lit(_) => false,
        Re::Seq(parts) => parts.iter().all(nullable),
        Re::Alt(options) => options.iter().any(nullable),
        Re::Rep(inner, min, _) => *min == 0 || nullable(inner),
    }
}

/// Whether `re` can match a non-empty text whose first unit is `u` (a cheap pre-filter).
pub(super) fn can_start_with(re: &Re, u: u16) -> bool {
    match re {
        Re::Class(accepts) => accepts(u),
        Re::Lit(c) => u8::try_from(u).is_ok_and(|b| b.eq_ignore_ascii_case(c)),
        Re::Seq(parts) => {
            for part in parts {
                if can_start_with(part, u) {
                    return true;
                }
                if !nullable(part) {
                    return false;
                }
            }
            false
        }
        Re::Alt(options) => options.iter().any(|o| can_start_with(o, u)),
        Re::Rep(inner, _, max) => *max != Some(0) && can_start_with(inner, u),
    }
}

/// One unit accepted by `accepts` (a case-sensitive character class).
pub(super) fn cls(accepts: fn(u16) -> bool) -> Re {
    Re::Class(accepts)
}
/// The ASCII literal `s`; its letters match either case.
pub(super) fn lit(s: &str) -> Re {
    Re::Seq(s.bytes().map(Re::Lit).collect())
}
/// `parts` one after the other.
pub(super) fn seq(parts: Vec<Re>) -> Re {
    Re::Seq(parts)
}
/// Any one of `options`.
pub(super) fn alt(options: Vec<Re>) -> Re {
    Re::Alt(options)
}
/// Any one of the caseless literals in `list`.
pub(super) fn words(list: &[&str]) -> Re {
    Re::Alt(list.iter().map(|w| lit(w)).collect())
}
/// `r?`: zero or one `r`.
pub(super) fn opt(r: Re) -> Re {
    Re::Rep(Box::new(r), 0, Some(1))
}
/// `r*`: any number of `r`.
pub(super) fn star(r: Re) -> Re {
    Re::Rep(Box::new(r), 0, None)
}
/// `r+`: one or more `r`.
pub(super) fn plus(r: Re) -> Re {
    Re::Rep(Box::new(r), 1, None)
}
/// `r{min,max}`.
pub(super) fn rep(r: Re, min: usize, max: usize) -> Re {
    Re::Rep(Box::new(r), min, Some(max))
}
/// `[X]rest`: a case-sensitive first letter followed by a caseless literal.
pub(super) fn cap(first: fn(u16) -> bool, rest: &str) -> Re {
    seq(vec![cls(first), lit(rest)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UTF-16 units of `s`.
    fn units(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    /// The match ends of `re` in `s` from the single start `start`.
    fn ends_at(re: &Re, s: &str, start: usize) -> Vec<usize> {
        ends(re, &units(s), &[start])
    }

    fn digit(u: u16) -> bool {
        u8::try_from(u).is_ok_and(|b| b.is_ascii_digit())
    }

    fn upper(u: u16) -> bool {
        u8::try_from(u).is_ok_and(|b| b.is_ascii_uppercase())
    }

    #[test]
    fn literal_matches_either_case() {
        assert_eq!(ends_at(&lit("ab"), "ab", 0), vec![2]);
        assert_eq!(ends_at(&lit("ab"), "ABc", 0), vec![2]);
        assert_eq!(ends_at(&lit("ab"), "aB", 0), vec![2]);
        assert_eq!(ends_at(&lit("ab"), "ac", 0), Vec::<usize>::new());
    }

    #[test]
    fn character_class_is_case_sensitive() {
        let a = cls(|u| u == u16::from(b'a'));
        assert_eq!(ends_at(&a, "a", 0), vec![1]);
        assert_eq!(ends_at(&a, "A", 0), Vec::<usize>::new());
        // A case-sensitive first letter followed by a caseless rest.
        let inc = cap(upper, "nc");
        assert_eq!(ends_at(&inc, "Inc.", 0), vec![3]);
        assert_eq!(ends_at(&inc, "INC", 0), vec![3]);
        assert_eq!(ends_at(&inc, "inc", 0), Vec::<usize>::new());
    }

    #[test]
    fn class_repetition_reports_every_end() {
        assert_eq!(ends_at(&plus(cls(digit)), "123x", 0), vec![1, 2, 3]);
        assert_eq!(ends_at(&plus(cls(digit)), "x123", 0), Vec::<usize>::new());
        assert_eq!(ends_at(&plus(cls(digit)), "x123", 1), vec![2, 3, 4]);
    }

    #[test]
    fn alternation_keeps_all_lengths() {
        let re = alt(vec![lit("a"), lit("abc"), lit("ab")]);
        assert_eq!(ends_at(&re, "abcd", 0), vec![1, 2, 3]);
        assert_eq!(
            ends_at(&words(&["cat", "ca", "dog"]), "cats", 0),
            vec![2, 3]
        );
        assert_eq!(ends_at(&words(&["cat", "dog"]), "DOG", 0), vec![3]);
        assert_eq!(
            ends_at(&words(&["cat", "dog"]), "cow", 0),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn bounded_and_unbounded_repetition() {
        assert_eq!(ends_at(&rep(lit("a"), 2, 3), "aaaa", 0), vec![2, 3]);
        assert_eq!(ends_at(&rep(lit("a"), 2, 3), "ab", 0), Vec::<usize>::new());
        assert_eq!(ends_at(&star(lit("a")), "aab", 0), vec![0, 1, 2]);
        assert_eq!(ends_at(&opt(lit("x")), "y", 0), vec![0]);
        assert_eq!(ends_at(&opt(lit("x")), "xx", 0), vec![0, 1]);
        assert_eq!(ends_at(&plus(lit("ab")), "ababa", 0), vec![2, 4]);
        let ones_or_twos = star(alt(vec![lit("a"), lit("aa")]));
        assert_eq!(ends_at(&ones_or_twos, "aaa", 0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn matches_are_anchored_at_the_given_starts() {
        // No search: `b` is not found from position 0 of "ab".
        assert_eq!(ends_at(&lit("b"), "ab", 0), Vec::<usize>::new());
        assert_eq!(ends_at(&lit("b"), "ab", 1), vec![2]);
        assert_eq!(ends(&lit("b"), &units("abab"), &[1, 3]), vec![2, 4]);
        // A start at (or past) the end matches only what can be empty.
        assert_eq!(ends_at(&lit("a"), "a", 1), Vec::<usize>::new());
        assert_eq!(ends_at(&star(lit("a")), "a", 1), vec![1]);
        // A whole-text match is an end equal to the length.
        let number = seq(vec![
            plus(cls(digit)),
            opt(seq(vec![lit("."), plus(cls(digit))])),
        ]);
        assert_eq!(ends_at(&number, "3.25", 0), vec![1, 3, 4]);
        assert_eq!(ends_at(&number, "3.x", 0), vec![1]);
    }

    #[test]
    fn sequence_fails_when_a_part_fails() {
        let re = seq(vec![lit("a"), cls(digit), lit("z")]);
        assert_eq!(ends_at(&re, "a1z", 0), vec![3]);
        assert_eq!(ends_at(&re, "ab", 0), Vec::<usize>::new());
        assert_eq!(ends_at(&re, "a1", 0), Vec::<usize>::new());
        assert_eq!(ends_at(&re, "", 0), Vec::<usize>::new());
    }

    #[test]
    fn nullable_and_first_unit_filter() {
        assert!(nullable(&star(lit("a"))));
        assert!(nullable(&seq(vec![opt(lit("a")), opt(lit("b"))])));
        assert!(nullable(&alt(vec![lit("a"), opt(lit("b"))])));
        assert!(!nullable(&lit("a")));
        assert!(!nullable(&seq(vec![opt(lit("a")), lit("b")])));

        let re = seq(vec![opt(lit("x")), lit("y")]);
        assert!(can_start_with(&re, u16::from(b'y')));
        assert!(can_start_with(&re, u16::from(b'X')));
        assert!(!can_start_with(&re, u16::from(b'z')));
        assert!(!can_start_with(&rep(lit("a"), 0, 0), u16::from(b'a')));
        assert!(!can_start_with(&cls(digit), u16::from(b'a')));
    }
}
