//! Penn Treebank tokenisation as pycocoevalcap runs it.
//!
//! pycocoevalcap 1.2 (`tokenizer/ptbtokenizer.py`) writes every caption of a set on its own
//! line (after replacing `\n` by a space), runs the Stanford CoreNLP 3.4.1 `PTBTokenizer` over
//! the whole file with `-preserveLines -lowerCase`, and then drops every token found in its
//! punctuation list ([`COCO_PUNCTUATION`]). This module reimplements that pipeline in Rust.
//!
//! # How the lexer works
//!
//! The Java tokenizer is a JFlex scanner (`PTBLexer.flex`, CoreNLP tag v3.4.1). We rebuild its
//! rules in the same priority order as small regular expressions made from combinators (no
//! regex crate) and run them with the same semantics JFlex uses:
//!
//! * at each position every rule is tried; the longest match wins, and among equally long
//!   matches the rule listed first wins;
//! * a rule `r1/r2` (trailing context) competes with the length of `r1 r2` but only `r1` is
//!   consumed; we take the longest `r1` that completes such a match;
//! * literal letters match both cases (`%caseless`), character classes are case-sensitive;
//! * the text is handled as UTF-16 code units, as Java does: a character outside the Basic
//!   Multilingual Plane is two surrogate units that no letter/digit class accepts.
//!
//! The rule actions reproduce the options the command line leaves on (PTB3 escaping, LaTeX
//! quotes, `-LRB-`/`-RRB-` brackets, `...` ellipses, `--` dashes, `cannot` → `can not`,
//! `gonna` → `gon na`, duplicated sentence-final periods after abbreviations, and so on) and
//! off (`americanize`, slash escaping, strict Treebank 3 mode). Tokens are lower-cased with
//! full Unicode rules like Java's `toLowerCase(Locale.ENGLISH)`.
//!
//! Because the Java run sees all captions as one file, a trailing-context rule can look across
//! the line break into the next caption (for example `etc.` at the end of a caption becomes
//! `etc. .` only if the next caption starts with an upper-case letter). [`tokenize_lines`]
//! therefore tokenises a whole set of lines as one stream, exactly like the Java run; callers
//! that want identical results must pass the captions in the order pycocoevalcap writes them.
//!
//! # Known differences from the Java tokenizer (and how we handle them)
//!
//! 1. **Line-break characters inside a caption.** Java's lexer also ends a line at `\r`,
//!    U+2028, U+2029, U+000B and U+000C, which makes pycocoevalcap pair every later caption
//!    with the wrong image. We turn those characters into spaces before lexing, so each caption
//!    stays on its own line. (U+0085 is not affected: Java lexes it as an ellipsis, and so do
//!    we.)
//! 2. **SGML attribute values spanning lines.** In Java a quoted attribute value of an SGML
//!    tag (`<a href='...'>`) may run across the line break into the next caption; ours stops at
//!    `\n`, keeping captions separate.
//! 3. **`[:letter:]`.** JFlex uses Java's `Character.isLetter` (general categories L*).
//!    Rust's standard library has no general-category lookup, so we use
//!    `char::is_alphabetic` minus numeric characters and the circled letters U+24B6..U+24E9.
//!    Measured over the BMP against Java 17 this admits 904 more code points and misses none:
//!    830 combining marks (Mn/Mc, the `Other_Alphabetic` vowel signs of Indic, Arabic, Hebrew
//!    and similar scripts, e.g. U+0345) and 74 letters assigned after Unicode 13. A combining
//!    mark after a letter can therefore stay inside a hyphenated or apostrophe word where Java
//!    would split it off. Latin, Greek, Cyrillic and CJK text is unaffected.
//! 4. **Unicode versions.** Letter, digit, upper-case and lower-casing tables come from the
//!    Unicode version of the Rust toolchain, Java's from its JDK. Only characters assigned or
//!    re-categorised between versions can differ.
//! 5. **Untokenizable characters** (the JFlex catch-all rule) are dropped silently, as the
//!    default `untokenizable=firstDelete` does (Java also logs a warning on stderr).
//!
//! Everything else in the 3.4.1 grammar is implemented, including the rarely relevant rules
//! (URLs, e-mail addresses, SGML tags, phone numbers, smileys, character entities), so that
//! captions with odd punctuation come out token for token like Java's output. The test
//! `eval/tests/metrics_parity.rs` checks this against the real Java tokenizer's output saved
//! in `tests/fixtures/metrics/`.
//!
//! # A note on `-LRB-` and friends
//!
//! pycocoevalcap's punctuation list spells the bracket tokens in upper case (`-LRB-`, `-RRB-`,
//! `-LCB-`, `-RCB-`), but `-lowerCase` has already turned them into `-lrb-` etc., so the
//! filter never removes them: `a dog (brown)` scores as `a dog -lrb- brown -rrb-`. We keep
//! this behaviour because the published numbers include it.
//!
//! Long because the grammar's macros and rules mirror PTBLexer.flex one to one, in its order.

mod regex;
mod unicode;

use std::sync::OnceLock;

use regex::{Re, alt, can_start_with, cap, cls, ends, lit, opt, plus, rep, seq, star, words};
use unicode::{
    LETTER_EXTRA, MISC_SYMBOL, ascii_alnum, ascii_alpha, ascii_digit, ascii_upper, in_ranges,
    is_digit, is_in, is_letter, is_upper,
};

/// pycocoevalcap's `PUNCTUATIONS`: tokens dropped after tokenisation (compared case-sensitively
/// with the lower-cased tokens, so the upper-case bracket names never match).
pub const COCO_PUNCTUATION: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Tokenises `lines` like `PTBTokenizer -preserveLines -lowerCase` run on the lines joined by
/// `\n`, returning the lower-cased tokens of each line (one entry per input line, in order).
///
/// Line-break characters inside a line are treated as spaces (see the module docs).
pub fn tokenize_lines<S: AsRef<str>>(lines: &[S]) -> Vec<Vec<String>> {
    let mut text: Vec<u16> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            text.push(u16::from(b'\n'));
        }
        for unit in line.as_ref().encode_utf16() {
            let is_break = matches!(unit, 0x0A | 0x0B | 0x0C | 0x0D | 0x2028 | 0x2029);
            text.push(if is_break { u16::from(b' ') } else { unit });
        }
    }
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    let mut lexer = Lexer {
        text: &text,
        pos: 0,
    };
    while let Some(token) = lexer.next_token() {
        match token {
            Token::Newline => out.push(Vec::new()),
            Token::Text(text) => {
                let token = text.to_lowercase();
                if let Some(line) = out.last_mut() {
                    line.push(token);
                }
            }
        }
    }
    // Every `\n` we inserted lexes as exactly one newline token, so the counts agree; this only
    // guards the invariant for the type system.
    out.resize_with(lines.len().max(1), Vec::new);
    out.truncate(lines.len());
    out
}

/// pycocoevalcap's post-processing of one tokenizer output line: split on single spaces,
/// drop [`COCO_PUNCTUATION`] tokens, join with single spaces.
pub fn remove_coco_punctuation<S: AsRef<str>>(tokens: &[S]) -> String {
    let line: Vec<&str> = tokens.iter().map(AsRef::as_ref).collect();
    let line = line.join(" ");
    super::py_rstrip(&line)
        .split(' ')
        .filter(|w| !COCO_PUNCTUATION.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The full pycocoevalcap tokenisation of a list of captions, in the given order: the strings
/// that BLEU, ROUGE-L and CIDEr see.
pub fn coco_tokenize<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    tokenize_lines(captions)
        .iter()
        .map(|tokens| remove_coco_punctuation(tokens))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The grammar's macros (names as in PTBLexer.flex).
// ---------------------------------------------------------------------------------------------

fn space() -> Re {
    cls(|u| matches!(u, 0x20 | 0x09 | 0xA0 | 0x2000..=0x200A | 0x3000))
}
fn newline() -> Re {
    alt(vec![
        seq(vec![opt(cls(|u| u == 0x0D)), cls(|u| u == 0x0A)]),
        cls(|u| matches!(u, 0x0D | 0x2028 | 0x2029 | 0x0B | 0x0C | 0x85)),
    ])
}
fn spacenl() -> Re {
    alt(vec![space(), newline()])
}
fn spacenls() -> Re {
    plus(spacenl())
}
fn sgml() -> Re {
    let name_start = || cls(ascii_alpha);
    let name_rest = || star(cls(|u| ascii_alnum(u) || is_in(u, "_:.-")));
    let spaces0 = || star(lit(" "));
    // Quoted attribute values stop at a line break here (Java's do not; see module docs).
    let value = alt(vec![
        seq(vec![
            lit("'"),
            star(cls(|u| u != 0x27 && u != 0x0A)),
            lit("'"),
        ]),
        seq(vec![
            lit("\""),
            star(cls(|u| u != 0x22 && u != 0x0A)),
            lit("\""),
        ]),
    ]);
    let attribute = alt(vec![
        seq(vec![name_start(), name_rest()]),
        seq(vec![
            name_start(),
            name_rest(),
            spaces0(),
            lit("="),
            spaces0(),
            value,
        ]),
    ]);
    let inner = alt(vec![
        seq(vec![
            cls(|u| is_in(u, "!?")),
            cls(|u| ascii_alpha(u) || u == 0x2D),
            star(cls(|u| !is_in(u, ">\r\n"))),
        ]),
        seq(vec![
            name_start(),
            name_rest(),
            star(seq(vec![plus(lit(" ")), attribute])),
            spaces0(),
            opt(lit("/")),
        ]),
        seq(vec![lit("/"), name_start(), name_rest()]),
    ]);
    seq(vec![lit("<"), inner, spaces0(), lit(">")])
}
fn sentend() -> Re {
    seq(vec![spacenl(), alt(vec![spacenl(), cls(is_upper), sgml()])])
}
fn digit() -> Re {
    cls(|u| is_digit(u) || (0x07C0..=0x07C9).contains(&u))
}
fn ascii_digits(min: usize, max: usize) -> Re {
    rep(cls(ascii_digit), min, max)
}
fn date() -> Re {
    let sep = || cls(|u| is_in(u, "-/"));
    seq(vec![
        rep(digit(), 1, 2),
        sep(),
        rep(digit(), 1, 2),
        sep(),
        rep(digit(), 2, 4),
    ])
}
fn number() -> Re {
    let num = alt(vec![
        plus(digit()),
        seq(vec![
            star(digit()),
            plus(seq(vec![
                cls(|u| matches!(u, 0x2E | 0x3A | 0x2C | 0xAD | 0x066B | 0x066C)),
                plus(digit()),
            ])),
        ]),
    ]);
    seq(vec![opt(cls(|u| is_in(u, "-+"))), num])
}
fn subsupnum() -> Re {
    seq(vec![
        opt(cls(|u| matches!(u, 0x207A | 0x207B | 0x208A | 0x208B))),
        alt(vec![
            plus(cls(|u| {
                matches!(u, 0x2070 | 0xB9 | 0xB2 | 0xB3 | 0x2074..=0x2079)
            })),
            plus(cls(|u| (0x2080..=0x2089).contains(&u))),
        ]),
    ])
}
fn frac() -> Re {
    seq(vec![
        opt(seq(vec![
            rep(digit(), 1, 4),
            cls(|u| matches!(u, 0x2D | 0x20 | 0xA0)),
        ])),
        rep(digit(), 1, 4),
        alt(vec![
            seq(vec![opt(lit("\\")), lit("/")]),
            cls(|u| u == 0x2044),
        ]),
        rep(digit(), 1, 4),
    ])
}
fn frac2() -> Re {
    cls(|u| matches!(u, 0xBC | 0xBD | 0xBE | 0x2153..=0x215E))
}
fn dolsign() -> Re {
    alt(vec![seq(vec![star(cls(ascii_upper)), lit("$")]), lit("#")])
}
fn dolsign2() -> Re {
    cls(|u| {
        matches!(
            u,
            0xA2 | 0xA3
                | 0xA4
                | 0xA5
                | 0x80
                | 0x20A0
                | 0x20AC
                | 0x060B
                | 0x0E3F
                | 0x20A4
                | 0xFFE0
                | 0xFFE1
                | 0xFFE5
                | 0xFFE6
        )
    })
}
fn splet() -> Re {
    seq(vec![
        lit("&"),
        cls(|u| is_in(u, "aeiouAEIOU")),
        words(&["acute", "grave", "uml"]),
        lit(";"),
    ])
}
fn letter() -> Re {
    alt(vec![
        cls(|u| is_letter(u) || in_ranges(u, LETTER_EXTRA)),
        splet(),
    ])
}
fn letter_or_digit() -> Re {
    alt(vec![letter(), digit()])
}
fn word() -> Re {
    seq(vec![
        letter(),
        star(letter_or_digit()),
        star(seq(vec![
            cls(|u| is_in(u, ".!?")),
            letter(),
            star(letter_or_digit()),
        ])),
    ])
}
fn filename() -> Re {
    let ext = words(&[
        "bat", "bmp", "c", "class", "cgi", "cpp", "dll", "doc", "docx", "exe", "gif", "gz", "h",
        "htm", "html", "jar", "java", "jpeg", "jpg", "mov", "mp3", "pdf", "php", "pl", "png",
        "ppt", "ps", "py", "sql", "tar", "txt", "wav", "x", "xml", "zip",
    ]);
    seq(vec![
        plus(letter_or_digit()),
        star(seq(vec![lit("."), plus(letter_or_digit())])),
        lit("."),
        ext,
    ])
}
fn apos() -> Re {
    alt(vec![
        cls(|u| matches!(u, 0x27 | 0x92 | 0x2019)),
        lit("&apos;"),
    ])
}
fn aposetcetera() -> Re {
    alt(vec![
        apos(),
        cls(|u| matches!(u, 0x60 | 0x91 | 0x2018 | 0x201B)),
    ])
}
fn hyphen() -> Re {
    cls(|u| matches!(u, 0x2D | 0x5F | 0x058A | 0x2010 | 0x2011))
}
fn thing() -> Re {
    let letter_digit = || cls(|u| is_letter(u) || is_digit(u));
    let prefix = || {
        opt(seq(vec![
            cls(|u| is_in(u, "dDoOlL")),
            aposetcetera(),
            letter_digit(),
        ]))
    };
    seq(vec![
        prefix(),
        plus(letter_digit()),
        star(seq(vec![hyphen(), prefix(), plus(letter_digit())])),
    ])
}
fn thinga() -> Re {
    seq(vec![
        plus(cls(ascii_upper)),
        plus(seq(vec![
            alt(vec![cls(|u| is_in(u, "+&")), lit("&amp;")]),
            plus(cls(ascii_upper)),
        ])),
    ])
}
fn thing3() -> Re {
    let part = || {
        seq(vec![
            plus(cls(ascii_alnum)),
            rep(seq(vec![lit("-"), plus(cls(ascii_alpha))]), 0, 2),
        ])
    };
    seq(vec![
        part(),
        rep(seq(vec![opt(lit("\\")), lit("/"), part()]), 1, 2),
    ])
}
fn acro_tail() -> Vec<Re> {
    vec![
        seq(vec![
            words(&["Canada", "Sino", "Korean", "EU", "Japan", "non"]),
            lit("-U.S"),
        ]),
        seq(vec![lit("U.S.-"), words(&["U.K", "U.S.S.R"])]),
    ]
}
fn acro() -> Re {
    let mut options = vec![seq(vec![
        cls(ascii_alpha),
        star(seq(vec![lit("."), cls(ascii_alpha)])),
    ])];
    options.extend(acro_tail());
    alt(options)
}
fn acro2() -> Re {
    let mut options = vec![seq(vec![
        cls(ascii_alpha),
        plus(seq(vec![lit("."), cls(ascii_alpha)])),
    ])];
    options.extend(acro_tail());
    alt(options)
}
fn hthing() -> Re {
    seq(vec![
        cls(ascii_alnum),
        star(cls(|u| ascii_alnum(u) || matches!(u, 0x2E | 0x2C | 0xAD))),
        plus(seq(vec![
            lit("-"),
            alt(vec![
                plus(cls(|u| ascii_alnum(u) || u == 0xAD)),
                seq(vec![acro2(), lit(".")]),
            ]),
        ])),
    ])
}
fn redaux() -> Re {
    seq(vec![
        apos(),
        alt(vec![
            cls(|u| is_in(u, "msdMSD")),
            lit("re"),
            lit("ve"),
            lit("ll"),
        ]),
    ])
}
fn sword() -> Re {
    seq(vec![
        star(cls(|u| ascii_alpha(u) || u == 0xAD)),
        cls(|u| ascii_alpha(u) && u != 0x4E && u != 0x6E),
        star(cls(|u| u == 0xAD)),
    ])
}
fn sredaux() -> Re {
    seq(vec![lit("n"), aposetcetera(), lit("t")])
}
fn apoword() -> Re {
    let jletter = || cls(is_letter);
    alt(vec![
        seq(vec![apos(), lit("n"), opt(apos())]),
        seq(vec![cls(|u| is_in(u, "lLdDjJ")), apos()]),
        seq(vec![lit("Dunkin"), apos()]),
        seq(vec![lit("somethin"), apos()]),
        seq(vec![lit("ol"), apos()]),
        seq(vec![apos(), lit("em")]),
        seq(vec![
            cls(|u| matches!(u, 0x41..=0x48 | 0x4A..=0x58 | 0x5A | 0x6E)),
            aposetcetera(),
            rep(jletter(), 2, 2),
            star(jletter()),
        ]),
        seq(vec![apos(), cls(|u| (0x32..=0x39).contains(&u)), lit("0s")]),
        seq(vec![apos(), lit("til"), opt(lit("l"))]),
        seq(vec![
            jletter(),
            star(jletter()),
            cls(|u| is_in(u, "aeiouyAEIOUY")),
            aposetcetera(),
            cls(|u| is_in(u, "aeiou") || ascii_upper(u)),
            star(jletter()),
        ]),
        seq(vec![apos(), lit("cause")]),
        seq(vec![lit("cont'd"), opt(lit("."))]),
        words(&[
            "'twas",
            "nor'easter",
            "c'mon",
            "e'er",
            "s'mores",
            "ev'ry",
            "li'l",
            "nat'l",
        ]),
        seq(vec![lit("O"), aposetcetera(), lit("o")]),
    ])
}
fn apoword2() -> Re {
    seq(vec![lit("y"), apos()])
}
fn fullurl() -> Re {
    seq(vec![
        lit("http"),
        opt(lit("s")),
        lit("://"),
        plus(cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|(){}"))),
        cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|.!?(){},-")),
    ])
}
fn likelyurl() -> Re {
    let www = seq(vec![
        lit("www."),
        plus(seq(vec![
            plus(cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|.!?(){},"))),
            lit("."),
        ])),
        rep(cls(ascii_alpha), 2, 4),
    ]);
    // The grammar's class `[^ ... {},-_$]` contains the range `,-_` (U+002C..U+005F).
    let dotcom = seq(vec![
        plus(seq(vec![
            plus(cls(|u| {
                !is_in(u, " \t\n\u{0C}\r\"`'<>|.!?(){}$") && !(0x2C..=0x5F).contains(&u)
            })),
            lit("."),
        ])),
        words(&["com", "net", "org", "edu"]),
    ]);
    let path = opt(seq(vec![
        lit("/"),
        plus(cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|()"))),
        cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|.!?(){},-")),
    ]));
    seq(vec![alt(vec![www, dotcom]), path])
}
fn email() -> Re {
    let host_part = || plus(cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|(){}.\u{A0}")));
    seq(vec![
        opt(alt(vec![lit("&lt;"), lit("<")])),
        cls(ascii_alnum),
        star(cls(|u| !is_in(u, " \t\n\u{0C}\r\"<>|()\u{A0}{}"))),
        lit("@"),
        star(seq(vec![host_part(), lit(".")])),
        host_part(),
        opt(alt(vec![lit("&gt;"), lit(">")])),
    ])
}
fn twitter() -> Re {
    alt(vec![
        seq(vec![
            lit("@"),
            cls(|u| ascii_alpha(u) || u == 0x5F),
            star(cls(|u| ascii_alnum(u) || u == 0x5F)),
        ]),
        seq(vec![lit("#"), plus(letter())]),
    ])
}
fn abbrev1() -> Re {
    let month = words(&[
        "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
    ]);
    let days = words(&["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]);
    let state = alt(vec![
        words(&[
            "Ala", "Ariz", "Calif", "Colo", "Conn", "Ct", "Dak", "Fla", "Ga", "Ind", "Kan", "Kans",
            "Ky", "Md", "Mich", "Minn", "Mo", "Mont", "Neb", "Nev", "Okla", "Penn", "Tenn", "Va",
            "Vt", "Wis", "Wisc", "Wyo",
        ]),
        cap(|u| u == 0x41, "z"),
        cap(|u| u == 0x41, "rk"),
        cap(|u| u == 0x44, "el"),
        cap(|u| u == 0x49, "ll"),
        cap(|u| u == 0x4C, "a"),
        cap(|u| u == 0x4D, "ass"),
        cap(|u| u == 0x4D, "iss"),
        cap(|u| u == 0x4F, "re"),
        cap(|u| u == 0x50, "a"),
        cap(|u| u == 0x54, "ex"),
        cap(|u| u == 0x57, "ash"),
    ]);
    let company = alt(vec![
        words(&[
            "Inc", "Co", "Cos", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ",
            "Intl", "Sys",
        ]),
        seq(vec![
            lit("p"),
            opt(lit("p")),
            lit("t"),
            cls(|u| is_in(u, "ye")),
            opt(lit("s")),
        ]),
    ]);
    let numeric = words(&["tel", "est", "ext", "sq"]);
    let person = words(&["Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq"]);
    let misc = words(&["etc", "al", "seq", "Bldg"]);
    seq(vec![
        alt(vec![month, days, state, company, numeric, person, misc]),
        lit("."),
    ])
}
fn abbrev4() -> Re {
    let title = alt(vec![
        words(&[
            "Mr", "Mrs", "Ms", "Dr", "Drs", "Prof", "Profs", "Sen", "Sens", "Rep", "Reps", "Atty",
            "Attys", "Lt", "Col", "Gen", "Messrs", "Gov", "Govs", "Adm", "Rev", "Maj", "Sgt",
            "Cpl", "Pvt", "Capt", "St", "Ste", "Ave", "Pres", "Lieut", "Hon", "Brig", "Cmdr",
            "Comdr", "Pfc", "Spc", "Supt", "Supts", "Det", "Mt", "Ft", "Adj", "Adv", "Asst",
            "Assoc", "Ens", "Insp", "Mlle", "Mme", "Msgr", "Sfc",
        ]),
        cap(|u| u == 0x4D, "iss"),
    ]);
    let company2 = alt(vec![
        words(&["Invt", "Elec", "Natl", "Dept"]),
        seq(vec![lit("M"), cls(|u| is_in(u, "ft")), lit("g")]),
    ]);
    alt(vec![
        title,
        words(&[
            "vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph",
        ]),
        acro(),
        company2,
    ])
}
fn abbrev3() -> Re {
    seq(vec![
        words(&[
            "ca", "fig", "figs", "prop", "no", "nos", "art", "bldg", "pp", "op",
        ]),
        lit("."),
    ])
}
fn phone() -> Re {
    let sep = || cls(|u| matches!(u, 0x2D | 0x20 | 0xA0));
    let plusses = || opt(seq(vec![lit("+"), opt(lit("+"))]));
    let dashed = seq(vec![
        alt(vec![
            seq(vec![
                lit("("),
                ascii_digits(2, 3),
                lit(")"),
                opt(cls(|u| matches!(u, 0x20 | 0xA0))),
            ]),
            seq(vec![
                plusses(),
                opt(seq(vec![ascii_digits(2, 4), sep()])),
                ascii_digits(2, 4),
                sep(),
            ]),
        ]),
        ascii_digits(3, 4),
        opt(sep()),
        ascii_digits(3, 5),
    ]);
    let dotted = seq(vec![
        opt(seq(vec![plusses(), ascii_digits(2, 4), lit(".")])),
        ascii_digits(2, 4),
        lit("."),
        ascii_digits(3, 4),
        lit("."),
        ascii_digits(3, 5),
    ]);
    alt(vec![dashed, dotted])
}
fn ldots() -> Re {
    alt(vec![
        rep(lit("."), 3, 5),
        seq(vec![
            rep(seq(vec![lit("."), cls(|u| matches!(u, 0x20 | 0xA0))]), 2, 4),
            lit("."),
        ]),
        cls(|u| matches!(u, 0x85 | 0x2026)),
    ])
}
fn fnmarks() -> Re {
    alt(vec![plus(lit("@")), plus(lit("#")), plus(lit("_"))])
}
fn asts() -> Re {
    alt(vec![plus(lit("*")), rep(lit("\\*"), 1, 3)])
}
fn insentp() -> Re {
    cls(|u| matches!(u, 0x2C | 0x3B | 0x3A | 0x3001))
}
fn quotes() -> Re {
    alt(vec![
        apos(),
        lit("''"),
        rep(
            cls(|u| {
                matches!(
                    u,
                    0x60 | 0x2018
                        | 0x2019
                        | 0x201A
                        | 0x201B
                        | 0x201C
                        | 0x201D
                        | 0x91
                        | 0x92
                        | 0x93
                        | 0x94
                        | 0x201E
                        | 0x201F
                        | 0x2039
                        | 0x203A
                        | 0xAB
                        | 0xBB
                )
            }),
            1,
            2,
        ),
    ])
}
fn dblquot() -> Re {
    alt(vec![lit("\""), lit("&quot;")])
}
fn tbspec() -> Re {
    let amp = || alt(vec![lit("&"), lit("&amp;")]);
    alt(vec![
        seq(vec![
            lit("-"),
            words(&["RRB", "LRB", "RCB", "LCB", "RSB", "LSB"]),
            lit("-"),
        ]),
        lit("C.D.s"),
        lit("pro-"),
        lit("anti-"),
        seq(vec![lit("S"), amp(), lit("P-500")]),
        seq(vec![lit("S"), amp(), lit("Ls")]),
        seq(vec![lit("Cap"), apos(), lit("n")]),
        seq(vec![lit("c"), apos(), lit("est")]),
    ])
}
fn tbspec2() -> Re {
    seq(vec![apos(), cls(ascii_digit), cls(ascii_digit)])
}
fn smiley() -> Re {
    seq(vec![
        opt(cls(|u| is_in(u, "<>"))),
        cls(|u| is_in(u, ":;=")),
        opt(cls(|u| is_in(u, "-o*'"))),
        cls(|u| is_in(u, "()DPdpO\\{@|[]")),
    ])
}
fn asian_smiley() -> Re {
    let eye = || cls(|u| is_in(u, "^x=~<>"));
    let eye2 = || cls(|u| is_in(u, "-^x=~<>'"));
    alt(vec![
        // The grammar writes `[\^x=~<>]\.\[\^x=~<>]`: the escaped `\[` makes the tail a literal.
        seq(vec![eye(), lit("."), lit("[^x=~<>]")]),
        seq(vec![eye2(), lit("_"), eye2()]),
        seq(vec![
            lit("("),
            eye2(),
            opt(cls(|u| is_in(u, "_."))),
            eye2(),
            lit(")"),
        ]),
        seq(vec![
            lit("("),
            cls(|u| is_in(u, "^x=~<>'")),
            lit("-"),
            cls(|u| is_in(u, "^x=~<>'`")),
            lit(")"),
        ]),
    ])
}
fn acronym_context() -> Re {
    let a = |u: u16| u == 0x41;
    let b = |u: u16| u == 0x42;
    let e = |u: u16| u == 0x45;
    let h = |u: u16| u == 0x48;
    let i = |u: u16| u == 0x49;
    let l = |u: u16| u == 0x4C;
    let m = |u: u16| u == 0x4D;
    let n = |u: u16| u == 0x4E;
    let o = |u: u16| u == 0x4F;
    let s = |u: u16| u == 0x53;
    let t = |u: u16| u == 0x54;
    let w = |u: u16| u == 0x57;
    let y = |u: u16| u == 0x59;
    let next_word = alt(vec![
        cap(a, "bout"),
        cap(a, "ccording"),
        cap(a, "dditionally"),
        cap(a, "fter"),
        cap(a, "n"),
        cls(a),
        cap(a, "s"),
        cap(a, "t"),
        cap(b, "ut"),
        cap(e, "arlier"),
        cap(h, "e"),
        cap(h, "er"),
        cap(h, "ere"),
        cap(h, "owever"),
        cap(i, "f"),
        cap(i, "n"),
        cap(i, "t"),
        cap(l, "ast"),
        cap(m, "any"),
        cap(m, "ore"),
        cap(m, "r."),
        cap(m, "s."),
        cap(n, "ow"),
        cap(o, "nce"),
        cap(o, "ne"),
        cap(o, "ther"),
        cap(o, "ur"),
        cap(s, "he"),
        cap(s, "ince"),
        cap(s, "o"),
        cap(s, "ome"),
        cap(s, "uch"),
        cap(t, "hat"),
        cap(t, "he"),
        cap(t, "heir"),
        cap(t, "hen"),
        cap(t, "here"),
        cap(t, "hese"),
        cap(t, "hey"),
        cap(t, "his"),
        cap(w, "e"),
        cap(w, "hen"),
        cap(w, "hile"),
        cap(w, "hat"),
        cap(y, "et"),
        cap(y, "ou"),
        sgml(),
    ]);
    seq(vec![spacenls(), next_word, spacenl()])
}

// ---------------------------------------------------------------------------------------------
// The rules, in the grammar's priority order, and their actions.
// ---------------------------------------------------------------------------------------------

/// What a rule does with the text it matched (`yytext`).
#[derive(Clone, Copy)]
enum Act {
    /// Emit the text unchanged.
    Keep,
    /// Emit the text without soft hyphens (U+00AD); `-` if nothing is left.
    SoftHyphens,
    /// Emit all but the last `n` units and lex those again (`cannot` → `can` + `not`).
    PushBack(usize),
    /// Emit the text with spaces turned into non-breaking spaces.
    Nbsp,
    /// Emit `--`.
    Dash,
    /// Emit the text with `&amp;` (any case) turned into `&`.
    Amp,
    /// Emit the text with LaTeX-style quotes; `left` marks an opening quote.
    Quotes { left: bool },
    /// Emit vulgar fractions spelled out (`½` → `1/2`).
    Fraction,
    /// Emit currency signs normalised (`£` → `#`, `€` → `$`, `¢` → `cents`).
    Currency,
    /// An acronym before a sentence-starting word: `I.` → `I` + `.`, `U.S.` → `U.S.` + `.`.
    Acronym,
    /// Emit the text, then lex its final period again (`etc.` → `etc.` + `.`).
    DuplicatePeriod,
    /// A phone number: spaces → non-breaking spaces, parentheses → `-LRB-`/`-RRB-`.
    Phone,
    /// A smiley: parentheses → `-LRB-`/`-RRB-`.
    Parens,
    /// Emit a fixed string.
    Fixed(&'static str),
    /// A run of hyphens: `--` if 3 or 4 long, else unchanged.
    Hyphens,
    /// Emit `...`.
    Ellipsis,
    /// Whitespace: no token.
    Skip,
    /// A line break: ends the output line.
    Newline,
    /// A character no rule knows: deleted.
    Drop,
}

/// One lexer rule: `pat` optionally followed by the trailing context `ctx`.
struct Rule {
    pat: Re,
    ctx: Option<Re>,
    act: Act,
    /// For each ASCII unit, whether `pat` can start with it (pre-computed filter).
    ascii_start: [bool; 128],
}

impl Rule {
    /// Whether the rule's pattern can start with unit `u`.
    fn may_start_with(&self, u: u16) -> bool {
        match self.ascii_start.get(usize::from(u)) {
            Some(&known) => known,
            None => can_start_with(&self.pat, u),
        }
    }
}

fn rule(pat: Re, act: Act) -> Rule {
    let mut ascii_start = [false; 128];
    for (u, slot) in (0u16..).zip(ascii_start.iter_mut()) {
        *slot = can_start_with(&pat, u);
    }
    Rule {
        pat,
        ctx: None,
        act,
        ascii_start,
    }
}
fn rule_ctx(pat: Re, ctx: Re, act: Act) -> Rule {
    Rule {
        ctx: Some(ctx),
        ..rule(pat, act)
    }
}

/// The rules active in the default (`YyTraditionalTreebank3`) state, in priority order.
fn build_rules() -> Vec<Rule> {
    let not_ascii_letter = || cls(|u| !ascii_alpha(u));
    vec![
        rule(lit("c++"), Act::Keep),
        rule(seq(vec![cls(|u| is_in(u, "cCfF")), lit("#")]), Act::Keep),
        rule(lit("cannot"), Act::PushBack(3)),
        rule(lit("'twas"), Act::PushBack(3)),
        rule(lit("'tis"), Act::PushBack(2)),
        rule(
            words(&["gonna", "gotta", "lemme", "gimme", "wanna"]),
            Act::PushBack(2),
        ),
        rule(sgml(), Act::Nbsp),
        rule(
            alt(vec![
                words(&["&MD;", "&mdash;", "&ndash;"]),
                cls(|u| matches!(u, 0x96 | 0x97 | 0x2013 | 0x2014 | 0x2015)),
            ]),
            Act::Dash,
        ),
        rule(lit("&amp;"), Act::Amp),
        rule(
            seq(vec![
                lit("&"),
                alt(vec![
                    words(&["HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq"]),
                    seq(vec![lit("#"), plus(cls(ascii_digit))]),
                ]),
                lit(";"),
            ]),
            Act::Keep,
        ),
        rule_ctx(word(), redaux(), Act::SoftHyphens),
        rule_ctx(sword(), sredaux(), Act::SoftHyphens),
        rule(word(), Act::SoftHyphens),
        rule(apoword(), Act::Keep),
        rule_ctx(apoword2(), cls(is_letter), Act::Keep),
        rule(fullurl(), Act::Keep),
        rule(likelyurl(), Act::Keep),
        rule(email(), Act::Keep),
        rule(twitter(), Act::Keep),
        rule_ctx(redaux(), not_ascii_letter(), Act::Quotes { left: false }),
        rule_ctx(sredaux(), not_ascii_letter(), Act::Quotes { left: false }),
        rule(date(), Act::Keep),
        rule(number(), Act::SoftHyphens),
        rule(subsupnum(), Act::Keep),
        rule(frac(), Act::Nbsp),
        rule(frac2(), Act::Fraction),
        rule(tbspec(), Act::Amp),
        rule(thing3(), Act::Keep),
        rule(dolsign(), Act::Keep),
        rule(dolsign2(), Act::Currency),
        rule_ctx(seq(vec![acro(), lit(".")]), acronym_context(), Act::Acronym),
        rule_ctx(
            abbrev3(),
            seq(vec![opt(spacenl()), cls(is_digit)]),
            Act::Keep,
        ),
        rule_ctx(
            seq(vec![
                alt(vec![
                    seq(vec![lit("pt"), cls(|u| is_in(u, "eyEY"))]),
                    lit("co"),
                ]),
                lit("."),
            ]),
            seq(vec![space(), words(&["ltd", "lim"])]),
            Act::Keep,
        ),
        rule_ctx(abbrev1(), sentend(), Act::DuplicatePeriod),
        rule_ctx(
            abbrev1(),
            seq(vec![cls(|_| true), cls(|_| true)]),
            Act::Keep,
        ),
        rule(abbrev1(), Act::DuplicatePeriod),
        rule(seq(vec![abbrev4(), lit(".")]), Act::Keep),
        rule_ctx(abbrev4(), space(), Act::Keep),
        rule_ctx(acro(), spacenl(), Act::Keep),
        rule_ctx(tbspec2(), spacenl(), Act::Keep),
        rule_ctx(
            filename(),
            alt(vec![spacenl(), cls(|u| is_in(u, ".?!,"))]),
            Act::Keep,
        ),
        rule_ctx(seq(vec![word(), lit(".")]), insentp(), Act::SoftHyphens),
        rule(phone(), Act::Phone),
        rule_ctx(
            dblquot(),
            cls(|u| ascii_alnum(u) || u == 0x24),
            Act::Quotes { left: true },
        ),
        rule(dblquot(), Act::Quotes { left: false }),
        rule(cls(|u| u == 0x7F), Act::Skip),
        rule(alt(vec![lit("<"), lit("&lt;")]), Act::Fixed("<")),
        rule(alt(vec![lit(">"), lit("&gt;")]), Act::Fixed(">")),
        rule_ctx(smiley(), cls(|u| !ascii_alnum(u)), Act::Parens),
        rule(asian_smiley(), Act::Parens),
        rule(lit("{"), Act::Fixed("-LCB-")),
        rule(lit("}"), Act::Fixed("-RCB-")),
        rule(lit("["), Act::Fixed("-LSB-")),
        rule(lit("]"), Act::Fixed("-RSB-")),
        rule(lit("("), Act::Fixed("-LRB-")),
        rule(lit(")"), Act::Fixed("-RRB-")),
        rule(plus(lit("-")), Act::Hyphens),
        rule(ldots(), Act::Ellipsis),
        rule(fnmarks(), Act::Keep),
        rule(asts(), Act::Keep),
        rule(insentp(), Act::Keep),
        rule(plus(cls(|u| is_in(u, "?!"))), Act::Keep),
        rule(
            cls(|u| {
                matches!(
                    u,
                    0x2E | 0xA1 | 0xBF | 0x037E | 0x0589 | 0x061F | 0x06D4 | 0x0700
                        ..=0x0702 | 0x07FA | 0x3002
                )
            }),
            Act::Keep,
        ),
        rule(lit("="), Act::Keep),
        rule(lit("/"), Act::Keep),
        rule_ctx(seq(vec![hthing(), lit(".")]), insentp(), Act::SoftHyphens),
        rule(hthing(), Act::SoftHyphens),
        rule_ctx(seq(vec![thing(), lit(".")]), insentp(), Act::Keep),
        rule(thing(), Act::Keep),
        rule_ctx(seq(vec![thinga(), lit(".")]), insentp(), Act::Amp),
        rule(thinga(), Act::Amp),
        rule_ctx(
            lit("'"),
            seq(vec![
                cls(ascii_alpha),
                cls(|u| !matches!(u, 0x20 | 0x09 | 0x0A | 0x0D | 0xA0)),
            ]),
            Act::Quotes { left: true },
        ),
        rule(redaux(), Act::Quotes { left: false }),
        rule(sredaux(), Act::Quotes { left: false }),
        rule(quotes(), Act::Quotes { left: false }),
        rule(words(&["<<", ">>"]), Act::Keep),
        rule(cls(|u| in_ranges(u, MISC_SYMBOL)), Act::Keep),
        rule(
            alt(vec![
                cls(|u| u == 0),
                plus(space()),
                cls(|u| matches!(u, 0x200B | 0x200E | 0x200F | 0xFEFF)),
            ]),
            Act::Skip,
        ),
        rule(newline(), Act::Newline),
        rule(lit("&nbsp;"), Act::Skip),
        rule(cls(|u| u != 0x0A), Act::Drop),
    ]
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(build_rules)
}

/// The length of the whole match (`r1 r2`) and the end of `r1`, if `rule` matches at `pos`.
fn match_rule(rule: &Rule, t: &[u16], pos: usize) -> Option<(usize, usize)> {
    let pat_ends = ends(&rule.pat, t, &[pos]);
    match &rule.ctx {
        None => pat_ends.last().filter(|&&e| e > pos).map(|&e| (e, e)),
        Some(ctx) => {
            let mut best: Option<(usize, usize)> = None;
            // Ascending ends with `>=` keeps the longest `r1` among equally long totals.
            for &end in pat_ends.iter().filter(|&&e| e > pos) {
                if let Some(&total) = ends(ctx, t, &[end]).last()
                    && best.is_none_or(|(best_total, _)| total >= best_total)
                {
                    best = Some((total, end));
                }
            }
            best
        }
    }
}

/// One lexer output.
enum Token {
    /// A token's text (not yet lower-cased).
    Text(String),
    /// A line break.
    Newline,
}

/// The scanner state: the whole input and the current position (in UTF-16 units).
struct Lexer<'a> {
    text: &'a [u16],
    pos: usize,
}

impl Lexer<'_> {
    /// The next token, or `None` at the end of the input.
    fn next_token(&mut self) -> Option<Token> {
        while self.pos < self.text.len() {
            let mut best: Option<(usize, usize, Act)> = None;
            let first = self.text[self.pos];
            for rule in rules().iter().filter(|r| r.may_start_with(first)) {
                if let Some((total, end)) = match_rule(rule, self.text, self.pos)
                    && best.is_none_or(|(best_total, _, _)| total > best_total)
                {
                    best = Some((total, end, rule.act));
                }
            }
            // The catch-all rule matches everything but `\n`, which the newline rule takes, so
            // `best` is always set; advancing by one keeps the loop finite regardless.
            let Some((_, end, act)) = best else {
                self.pos += 1;
                continue;
            };
            let matched = &self.text[self.pos..end];
            let (token, consumed) = apply(act, matched);
            self.pos += consumed.max(1);
            if token.is_some() {
                return token;
            }
        }
        None
    }
}

/// Runs a rule action: the token to emit (if any) and how many units to consume.
fn apply(act: Act, matched: &[u16]) -> (Option<Token>, usize) {
    let len = matched.len();
    let text = || String::from_utf16_lossy(matched);
    let emit = |s: String| (Some(Token::Text(s)), len);
    match act {
        Act::Keep => emit(text()),
        Act::SoftHyphens => {
            let s: String = text().chars().filter(|&c| c != '\u{AD}').collect();
            emit(if s.is_empty() { "-".to_string() } else { s })
        }
        Act::PushBack(n) => {
            let keep = len.saturating_sub(n).max(1);
            (
                Some(Token::Text(String::from_utf16_lossy(&matched[..keep]))),
                keep,
            )
        }
        Act::Nbsp => emit(text().replace(' ', "\u{A0}")),
        Act::Dash => emit("--".to_string()),
        Act::Amp => emit(replace_amp(&text())),
        Act::Quotes { left } => emit(latex_quotes(&text(), left)),
        Act::Fraction => emit(
            text()
                .replace('\u{BC}', "1/4")
                .replace('\u{BD}', "1/2")
                .replace('\u{BE}', "3/4")
                .replace('\u{2153}', "1/3")
                .replace('\u{2154}', "2/3"),
        ),
        Act::Currency => emit(
            text()
                .replace('\u{A2}', "cents")
                .replace('\u{A3}', "#")
                .replace(['\u{80}', '\u{A4}', '\u{20A0}', '\u{20AC}'], "$"),
        ),
        Act::Acronym => {
            if len == 2 {
                (
                    Some(Token::Text(String::from_utf16_lossy(&matched[..1]))),
                    1,
                )
            } else {
                (Some(Token::Text(text())), len - 1)
            }
        }
        Act::DuplicatePeriod => (Some(Token::Text(text())), len.saturating_sub(1)),
        Act::Phone => emit(parens_to_ptb(&text().replace(' ', "\u{A0}"))),
        Act::Parens => emit(parens_to_ptb(&text())),
        Act::Fixed(s) => emit(s.to_string()),
        Act::Hyphens => emit(if (3..=4).contains(&len) {
            "--".to_string()
        } else {
            text()
        }),
        Act::Ellipsis => emit("...".to_string()),
        Act::Skip | Act::Drop => (None, len),
        Act::Newline => (Some(Token::Newline), len),
    }
}

/// `(?i:&amp;)` → `&`.
fn replace_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("&amp;") {
        out.push_str(&rest[..i]);
        out.push('&');
        rest = &rest[i + 5..];
    }
    out.push_str(rest);
    out
}

/// `(` → `-LRB-`, `)` → `-RRB-`.
fn parens_to_ptb(s: &str) -> String {
    s.replace('(', "-LRB-").replace(')', "-RRB-")
}

/// The lexer's `latexQuotes` normalisation.
fn latex_quotes(s: &str, left: bool) -> String {
    let s = if left {
        s.replace("&apos;", "`")
            .replace('\'', "`")
            .replace("&quot;", "``")
            .replace('"', "``")
    } else {
        s.replace("&apos;", "'")
            .replace("&quot;", "''")
            .replace('"', "''")
    };
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{91}' | '\u{2018}' | '\u{201B}' | '\u{2039}' => out.push('`'),
            '\u{92}' | '\u{2019}' | '\u{203A}' => out.push('\''),
            '\u{93}' | '\u{201C}' | '\u{AB}' => out.push_str("``"),
            '\u{94}' | '\u{201D}' | '\u{BB}' => out.push_str("''"),
            other => out.push(other),
        }
    }
    out
}
