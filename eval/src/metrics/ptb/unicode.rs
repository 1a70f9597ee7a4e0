//! The character classes of the PTB lexer over UTF-16 code units: ASCII classes, JFlex's
//! `[:letter:]`, `[:digit:]` and `[:uppercase:]` (Java's `Character.isLetter`, `isDigit`,
//! `isUpperCase`), and the grammar's own tables ([`LETTER_EXTRA`], [`MISC_SYMBOL`]).
//!
//! Contract: every predicate takes one UTF-16 code unit, as Java's lexer sees the text; a
//! surrogate half (half of a character outside the Basic Multilingual Plane) is never a letter,
//! digit or upper-case unit. How `[:letter:]` differs from Java's is documented in the
//! [`ptb`](super) module docs ("Known differences").

/// Whether `u` is one of the characters of `set` (all in the BMP).
pub(super) fn is_in(u: u16, set: &str) -> bool {
    set.encode_utf16().any(|c| c == u)
}
/// Whether `u` lies in one of the inclusive `ranges`.
pub(super) fn in_ranges(u: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}
/// The `char` of a BMP code unit; `None` for a surrogate half.
pub(super) fn as_char(u: u16) -> Option<char> {
    char::from_u32(u32::from(u))
}
/// `[a-zA-Z]`.
pub(super) fn ascii_alpha(u: u16) -> bool {
    u8::try_from(u).is_ok_and(|b| b.is_ascii_alphabetic())
}
/// `[a-zA-Z0-9]`.
pub(super) fn ascii_alnum(u: u16) -> bool {
    u8::try_from(u).is_ok_and(|b| b.is_ascii_alphanumeric())
}
/// `[0-9]`.
pub(super) fn ascii_digit(u: u16) -> bool {
    u8::try_from(u).is_ok_and(|b| b.is_ascii_digit())
}
/// `[A-Z]`.
pub(super) fn ascii_upper(u: u16) -> bool {
    u8::try_from(u).is_ok_and(|b| b.is_ascii_uppercase())
}

/// JFlex `[:letter:]` (Java `Character.isLetter`), approximated as documented in the module
/// docs.
pub(super) fn is_letter(u: u16) -> bool {
    as_char(u)
        .is_some_and(|c| c.is_alphabetic() && !c.is_numeric() && !(0x24B6..=0x24E9).contains(&u))
}
/// JFlex `[:digit:]` (Java `Character.isDigit`: general category Nd).
pub(super) fn is_digit(u: u16) -> bool {
    as_char(u).is_some_and(crate::metrics::is_decimal_digit)
}
/// JFlex `[:uppercase:]` (Java `Character.isUpperCase`).
pub(super) fn is_upper(u: u16) -> bool {
    as_char(u).is_some_and(char::is_uppercase)
}

/// Extra characters the grammar's `LETTER` macro accepts besides `[:letter:]`.
pub(super) const LETTER_EXTRA: &[(u16, u16)] = &[
    (0x00AD, 0x00AD),
    (0x0237, 0x024F),
    (0x02C2, 0x02C5),
    (0x02D2, 0x02DF),
    (0x02E5, 0x02FF),
    (0x0300, 0x036F),
    (0x0370, 0x037D),
    (0x0384, 0x0385),
    (0x03CF, 0x03CF),
    (0x03F6, 0x03F6),
    (0x03FC, 0x03FF),
    (0x0483, 0x0487),
    (0x04CF, 0x04CF),
    (0x04F6, 0x04FF),
    (0x0510, 0x0525),
    (0x055A, 0x055F),
    (0x0591, 0x05BD),
    (0x05BF, 0x05BF),
    (0x05C1, 0x05C2),
    (0x05C4, 0x05C5),
    (0x05C7, 0x05C7),
    (0x0615, 0x061A),
    (0x063B, 0x063F),
    (0x064B, 0x065E),
    (0x0670, 0x0670),
    (0x06D6, 0x06EF),
    (0x06FA, 0x06FF),
    (0x070F, 0x070F),
    (0x0711, 0x0711),
    (0x0730, 0x074F),
    (0x0750, 0x077F),
    (0x07A6, 0x07B1),
    (0x07CA, 0x07F5),
    (0x07FA, 0x07FA),
    (0x0900, 0x0903),
    (0x093C, 0x093C),
    (0x093E, 0x094E),
    (0x0951, 0x0955),
    (0x0962, 0x0963),
    (0x0981, 0x0983),
    (0x09BC, 0x09C4),
    (0x09C7, 0x09C8),
    (0x09CB, 0x09CD),
    (0x09D7, 0x09D7),
    (0x09E2, 0x09E3),
    (0x0A01, 0x0A03),
    (0x0A3C, 0x0A3C),
    (0x0A3E, 0x0A4F),
    (0x0A81, 0x0A83),
    (0x0ABC, 0x0ACF),
    (0x0B82, 0x0B82),
    (0x0BBE, 0x0BC2),
    (0x0BC6, 0x0BC8),
    (0x0BCA, 0x0BCD),
    (0x0C01, 0x0C03),
    (0x0C3E, 0x0C56),
    (0x0D3E, 0x0D44),
    (0x0D46, 0x0D48),
    (0x0E30, 0x0E3A),
    (0x0E47, 0x0E4E),
    (0x0EB1, 0x0EBC),
    (0x0EC8, 0x0ECD),
];

/// The grammar's `MISCSYMBOL` class.
pub(super) const MISC_SYMBOL: &[(u16, u16)] = &[
    (0x002B, 0x002B), // +
    (0x0025, 0x0025), // %
    (0x0026, 0x0026), // &
    (0x007E, 0x007E), // ~
    (0x005E, 0x005E), // ^
    (0x007C, 0x007C), // |
    (0x005C, 0x005C), // backslash
    (0x00A6, 0x00A9),
    (0x00AC, 0x00AC),
    (0x00AE, 0x00AF),
    (0x00B0, 0x00BA),
    (0x00D7, 0x00D7),
    (0x00F7, 0x00F7),
    (0x0387, 0x0387),
    (0x05BE, 0x05BE),
    (0x05C0, 0x05C0),
    (0x05C3, 0x05C3),
    (0x05C6, 0x05C6),
    (0x05F3, 0x05F4),
    (0x0600, 0x0603),
    (0x0606, 0x060A),
    (0x060C, 0x060C),
    (0x0614, 0x0614),
    (0x061B, 0x061B),
    (0x061E, 0x061E),
    (0x066A, 0x066A),
    (0x066D, 0x066D),
    (0x0703, 0x070D),
    (0x07F6, 0x07F8),
    (0x0964, 0x0965),
    (0x0E4F, 0x0E4F),
    (0x1FBD, 0x1FBD),
    (0x2016, 0x2017),
    (0x2020, 0x2023),
    (0x2030, 0x2038),
    (0x203B, 0x203B),
    (0x203E, 0x2042),
    (0x2044, 0x2044),
    (0x207A, 0x207F),
    (0x208A, 0x208E),
    (0x2100, 0x214F),
    (0x2190, 0x21FF),
    (0x2200, 0x2BFF),
    (0x3012, 0x3012),
    (0x30FB, 0x30FB),
    (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF20),
    (0xFF3B, 0xFF40),
    (0xFF5B, 0xFF65),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The single UTF-16 unit of a BMP character.
    fn unit(c: char) -> u16 {
        let mut buf = [0u16; 2];
        let encoded = c.encode_utf16(&mut buf);
        assert_eq!(encoded.len(), 1, "{c:?} is outside the BMP");
        encoded[0]
    }

    #[test]
    fn letters() {
        for c in ['a', 'Z', 'é', 'ß', 'Ж', 'λ', '中'] {
            assert!(is_letter(unit(c)), "{c:?} is a letter");
        }
        // Digits, punctuation, space, circled letters and letter numbers are not.
        for c in ['5', '.', ',', '-', ' ', '\u{A0}', 'Ⓐ', 'Ⅷ'] {
            assert!(!is_letter(unit(c)), "{c:?} is not a letter");
        }
        // Half of a character outside the BMP (U+1D400) is no letter, as in Java.
        let surrogates: Vec<u16> = '𝐀'.encode_utf16(&mut [0u16; 2]).to_vec();
        assert_eq!(surrogates, vec![0xD835, 0xDC00]);
        assert!(!is_letter(surrogates[0]));
        assert!(!is_letter(surrogates[1]));
        assert_eq!(as_char(0xD835), None);
        assert_eq!(as_char(0x0041), Some('A'));
    }

    #[test]
    fn digits_and_upper_case() {
        assert!(is_digit(unit('7')));
        assert!(is_digit(unit('\u{0663}'))); // ARABIC-INDIC DIGIT THREE (Nd)
        assert!(!is_digit(unit('a')));
        assert!(!is_digit(unit('½'))); // No, not Nd
        assert!(is_upper(unit('A')));
        assert!(is_upper(unit('É')));
        assert!(!is_upper(unit('a')));
        assert!(!is_upper(unit('1')));
    }

    #[test]
    fn ascii_classes() {
        assert!(ascii_alpha(unit('q')));
        assert!(!ascii_alpha(unit('é')));
        assert!(ascii_alnum(unit('7')));
        assert!(!ascii_alnum(unit('_')));
        assert!(ascii_digit(unit('0')));
        assert!(!ascii_digit(unit('\u{0663}')));
        assert!(ascii_upper(unit('Q')));
        assert!(!ascii_upper(unit('q')));
        assert!(is_in(unit('!'), "!?"));
        assert!(!is_in(unit('.'), "!?"));
    }

    #[test]
    fn grammar_tables() {
        // The soft hyphen and combining marks count as letters in the grammar's LETTER.
        assert!(in_ranges(0x00AD, LETTER_EXTRA));
        assert!(in_ranges(0x0301, LETTER_EXTRA));
        assert!(!in_ranges(unit('a'), LETTER_EXTRA));
        // MISCSYMBOL: math and currency-like symbols, arrows; not sentence punctuation or space.
        for c in ['+', '%', '&', '~', '|', '\\', '°', '×', '→', '∑'] {
            assert!(in_ranges(unit(c), MISC_SYMBOL), "{c:?} is a misc symbol");
        }
        for c in ['.', ',', '!', '?', '(', '"', ' ', 'a', '0'] {
            assert!(
                !in_ranges(unit(c), MISC_SYMBOL),
                "{c:?} is not a misc symbol"
            );
        }
    }
}
