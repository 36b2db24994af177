//! Number canonicalisation.
//!
//! A Keyline "number" is whatever a person dials: digits, letters in any
//! script, a name, an existing phone number, or an office number with an
//! extension suffix such as `+82-2-555-0100/202`. Two spellings that a person
//! would consider the same number must map to the same canonical string, so
//! that the directory can use it as a key:
//!
//! * separators are dropped: any Unicode whitespace, `-`, `.`, `(`, `)`;
//! * the text is put in Unicode NFC, letters are lower-cased with
//!   [`char::to_lowercase`], and the result is put in NFC again;
//! * a leading `+` is kept (a `+` anywhere else is an error);
//! * a single `/` is kept: it separates an office number from an extension,
//!   and neither side may be empty;
//! * control characters, invisible formatting characters (zero-width
//!   characters, bidi overrides and isolates, BOM, ...), private-use
//!   characters, noncharacters and variation selectors are refused, since
//!   they make distinct numbers look identical on screen;
//! * the canonical form is at most [`MAX_CHARS`] characters.
//!
//! Canonicalisation is idempotent: `canonicalize(c) == Ok(c)` for every
//! canonical `c`.
//!
//! Unassigned code points are not detected (the standard library carries no
//! general-category table); they pass through unchanged.

use thiserror::Error;
use unicode_normalization::UnicodeNormalization;

/// Longest canonical number, in characters (Unicode scalar values).
pub const MAX_CHARS: usize = 64;

/// Longest input accepted before any work is done, in bytes. Generous enough
/// for any number padded with separators, small enough that hostile input
/// costs nothing.
pub const MAX_INPUT_BYTES: usize = 1024;

/// Separates an office number from an extension.
pub const EXTENSION_SEPARATOR: char = '/';

/// Why a string is not a valid number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NumberError {
    /// Nothing left once separators were dropped (or only a `+`).
    #[error("number is empty")]
    Empty,
    /// A control character (tab and newline included).
    #[error("number contains a control character (U+{:04X})", u32::from(*.0))]
    ControlChar(char),
    /// An invisible, formatting, private-use or otherwise ambiguous character.
    #[error("number contains an invisible or disallowed character (U+{:04X})", u32::from(*.0))]
    DisallowedChar(char),
    /// Longer than [`MAX_CHARS`] once canonical.
    #[error("number is too long (max {max} characters)", max = MAX_CHARS)]
    TooLong,
    /// The raw input exceeds [`MAX_INPUT_BYTES`].
    #[error("number input is too long (max {max} bytes)", max = MAX_INPUT_BYTES)]
    InputTooLong,
    /// A `+` that is not the first character.
    #[error("'+' is only allowed at the start")]
    MisplacedPlus,
    /// More than one `/`.
    #[error("number contains more than one '/' (only one extension is allowed)")]
    MultipleExtensions,
    /// Nothing (or only `+`) before the `/`.
    #[error("number has an extension but no office number before the '/'")]
    EmptyOffice,
    /// Nothing after the `/`.
    #[error("number has a '/' but no extension after it")]
    EmptyExtension,
    /// Normalisation did not settle (never expected; guards idempotence).
    #[error("number could not be normalised")]
    Unstable,
}

/// Canonicalises a number as described in the [module documentation](self).
pub fn canonicalize(input: &str) -> Result<String, NumberError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(NumberError::InputTooLong);
    }
    if input.is_ascii() {
        return canonicalize_ascii(input);
    }
    canonicalize_general(input)
}

/// [`canonicalize`] for ASCII input (what nearly every look-up and
/// registration carries), in one pass and one allocation. ASCII text is
/// already NFC and stays NFC when lower-cased, no ASCII character is
/// [`is_disallowed`], and the only ASCII separators that are not control
/// characters (refused first) are space and `-.()`; so this gives exactly
/// what the general path gives (a property test holds it to that).
fn canonicalize_ascii(input: &str) -> Result<String, NumberError> {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        match b {
            0x00..=0x1F | 0x7F => return Err(NumberError::ControlChar(char::from(b))),
            b' ' | b'-' | b'.' | b'(' | b')' => {}
            _ => out.push(char::from(b.to_ascii_lowercase())),
        }
    }
    if out.is_empty() {
        return Err(NumberError::Empty);
    }
    validate_canonical(&out)?;
    Ok(out)
}

/// [`canonicalize`] for any input (length already checked).
fn canonicalize_general(input: &str) -> Result<String, NumberError> {
    for c in input.chars() {
        check_char(c)?;
    }

    let stripped: String = input.chars().filter(|&c| !is_separator(c)).collect();
    if stripped.is_empty() {
        return Err(NumberError::Empty);
    }

    // NFC, lower-case, NFC. Repeated until it settles so that the result is
    // a fixed point and canonicalisation is idempotent whatever odd
    // interaction of composition and case mapping the input exercises.
    let mut current = stripped;
    let mut settled = false;
    for _ in 0..4 {
        let next = normalize_once(&current);
        if next == current {
            settled = true;
            break;
        }
        current = next;
    }
    if !settled {
        return Err(NumberError::Unstable);
    }

    validate_canonical(&current)?;
    Ok(current)
}

/// A number in canonical form.
///
/// The only ways to make one are [`Number::parse`] (also behind
/// [`FromStr`](std::str::FromStr) and deserialisation), so a `Number` held
/// anywhere is known to be canonical: parse once at the edge (a command
/// line, a wire message, a web form) and pass it on typed. It serialises as
/// its canonical string; deserialising a string that is not a valid number
/// fails with the [`NumberError`]'s text, and one that is valid but not
/// canonical is canonicalised.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Number(String);

impl Number {
    /// Canonicalises `input` (see the [module documentation](self)).
    pub fn parse(input: &str) -> Result<Self, NumberError> {
        canonicalize(input).map(Number)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The office number and the extension, if any (see [`split_extension`]).
    pub fn split_extension(&self) -> (&str, Option<&str>) {
        split_extension(&self.0)
    }

    /// True when this looks like a short internal extension (see
    /// [`is_extension_like`]).
    pub fn is_extension_like(&self) -> bool {
        is_extension_like(&self.0)
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for Number {
    type Err = NumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Number::parse(s)
    }
}

impl AsRef<str> for Number {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Number {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Number {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Number {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Number {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<Number> for String {
    fn from(n: Number) -> String {
        n.0
    }
}

impl serde::Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Number, E> {
                Number::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visit)
    }
}

/// Splits a canonical number into the office number and the extension, if
/// any: `"+8225550100/202"` gives `("+8225550100", Some("202"))`.
pub fn split_extension(canon: &str) -> (&str, Option<&str>) {
    match canon.split_once(EXTENSION_SEPARATOR) {
        Some((office, ext)) => (office, Some(ext)),
        None => (canon, None),
    }
}

/// True when `canon` looks like a short internal extension: 2 to 6 ASCII
/// digits and nothing else.
pub fn is_extension_like(canon: &str) -> bool {
    (2..=6).contains(&canon.len()) && canon.bytes().all(|b| b.is_ascii_digit())
}

/// One round of NFC, lower-casing, NFC, with separators dropped again (none
/// are expected to appear, but the output must never contain one).
fn normalize_once(s: &str) -> String {
    s.nfc()
        .flat_map(char::to_lowercase)
        .nfc()
        .filter(|&c| !is_separator(c))
        .collect()
}

/// Separators dropped from input: any Unicode whitespace and `-.()`.
/// Control characters that are also whitespace (tab, newline) never get
/// here: they are refused first.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')
}

fn check_char(c: char) -> Result<(), NumberError> {
    if c.is_control() {
        return Err(NumberError::ControlChar(c));
    }
    if is_disallowed(c) {
        return Err(NumberError::DisallowedChar(c));
    }
    Ok(())
}

/// Characters that are invisible, change text direction or rendering, or
/// have no agreed meaning, and so could make two different numbers look the
/// same (or one number look like another).
fn is_disallowed(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD                      // soft hyphen
        | 0x034F                    // combining grapheme joiner
        | 0x061C                    // Arabic letter mark
        | 0x115F | 0x1160           // Hangul choseong/jungseong fillers
        | 0x17B4 | 0x17B5           // Khmer inherent vowels (invisible)
        | 0x180B..=0x180F           // Mongolian variation selectors, vowel separator
        | 0x200B..=0x200F           // zero-width space/joiners, LRM, RLM
        | 0x2028 | 0x2029           // line/paragraph separators
        | 0x202A..=0x202E           // bidi embeddings and overrides
        | 0x2060..=0x206F           // word joiner, invisible operators, isolates, deprecated formats
        | 0x3164                    // Hangul filler
        | 0xE000..=0xF8FF           // private use
        | 0xFDD0..=0xFDEF           // noncharacters
        | 0xFE00..=0xFE0F           // variation selectors
        | 0xFEFF                    // BOM / zero-width no-break space
        | 0xFFA0                    // halfwidth Hangul filler
        | 0xFFF0..=0xFFFB           // specials, interlinear annotation
        | 0x1BCA0..=0x1BCA3         // shorthand format controls
        | 0x1D173..=0x1D17A         // musical symbol format controls
        | 0xE0000..=0xE0FFF         // tags, variation selectors supplement
        | 0xF0000..=0x10FFFF        // supplementary private use planes
    ) || (u32::from(c) & 0xFFFE) == 0xFFFE // U+xxFFFE/U+xxFFFF noncharacters
}

/// Checks the structure of a normalised number: `+` placement, the `/`
/// extension separator, emptiness and length.
fn validate_canonical(s: &str) -> Result<(), NumberError> {
    for c in s.chars() {
        // Normalisation never introduces these; checked anyway so that the
        // output is guaranteed clean.
        check_char(c)?;
    }
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.contains('+') {
        return Err(NumberError::MisplacedPlus);
    }
    if body.is_empty() {
        return Err(NumberError::Empty);
    }
    let mut parts = body.split(EXTENSION_SEPARATOR);
    let office = parts.next().unwrap_or_default();
    if let Some(ext) = parts.next() {
        if parts.next().is_some() {
            return Err(NumberError::MultipleExtensions);
        }
        if office.is_empty() {
            return Err(NumberError::EmptyOffice);
        }
        if ext.is_empty() {
            return Err(NumberError::EmptyExtension);
        }
    }
    if s.chars().count() > MAX_CHARS {
        return Err(NumberError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        canonicalize(s).expect("valid number")
    }

    #[test]
    fn number_type_is_canonical_and_serialises_as_its_text() {
        let n = Number::parse("+82 (2) 555-0100/202").expect("valid");
        assert_eq!(n, "+8225550100/202");
        assert_eq!(n.split_extension(), ("+8225550100", Some("202")));
        assert_eq!(n.to_string(), "+8225550100/202");
        let json = serde_json::to_string(&n).expect("serialise");
        assert_eq!(json, "\"+8225550100/202\"");
        let back: Number = serde_json::from_str("\"+82-2-555-0100/202\"").expect("parse");
        assert_eq!(back, n);
        let err = serde_json::from_str::<Number>("\"a\\u0000b\"").expect_err("control char");
        assert!(err.to_string().contains("control character"), "{err}");
        assert!(serde_json::from_str::<Number>("12").is_err());
        let mut set = std::collections::HashSet::new();
        set.insert(n.clone());
        assert!(set.contains("+8225550100/202"));
    }

    #[test]
    fn phone_number_separators_dropped() {
        assert_eq!(canon("+1 (555) 010-0199"), "+15550100199");
        assert_eq!(canon("555.010.0199"), "5550100199");
        assert_eq!(canon("  +44 20 7946 0958 "), "+442079460958");
        // Non-ASCII whitespace: no-break space, ideographic space, thin space.
        assert_eq!(
            canon("+1\u{00A0}555\u{3000}0100\u{2009}199"),
            "+15550100199"
        );
    }

    #[test]
    fn names_are_case_folded_and_unspaced() {
        assert_eq!(canon("Alice Smith"), "alicesmith");
        assert_eq!(canon("ALICE.SMITH"), "alicesmith");
        assert_eq!(canon("Front Desk (Lobby)"), "frontdesklobby");
    }

    #[test]
    fn office_number_with_extension() {
        let c = canon("+82-2-555-0100/202");
        assert_eq!(c, "+8225550100/202");
        assert_eq!(split_extension(&c), ("+8225550100", Some("202")));
        assert_eq!(split_extension("+8225550100"), ("+8225550100", None));
        assert_eq!(canon("Sales / 12"), "sales/12");
    }

    #[test]
    fn korean_hangul() {
        assert_eq!(canon("김민준"), "김민준");
        // Conjoining jamo compose to the precomposed syllable under NFC.
        assert_eq!(
            canon("\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF}"),
            "한글"
        );
        assert_eq!(canon("서울 사무소 / 101"), "서울사무소/101");
    }

    #[test]
    fn latin_nfd_input_gives_nfc_output() {
        // "José" with a combining acute accent (NFD).
        let nfd = "Jose\u{0301}";
        assert_eq!(canon(nfd), "jos\u{00E9}");
        assert_eq!(canon("JOS\u{00C9}"), "jos\u{00E9}");
        // "Ångström" fully decomposed and upper-case.
        assert_eq!(canon("A\u{030A}NGSTRO\u{0308}M"), "\u{00E5}ngstr\u{00F6}m");
        // A combining mark separated from its base by a separator attaches
        // to the base once the separator is gone.
        assert_eq!(canon("e \u{0301}"), "\u{00E9}");
    }

    #[test]
    fn greek_and_cyrillic_case_folding() {
        assert_eq!(canon("ΑΘΗΝΑ"), "αθηνα");
        // Capital alpha + combining acute (NFD) -> small alpha with tonos.
        assert_eq!(canon("\u{0391}\u{0301}"), "\u{03AC}");
        assert_eq!(canon("МОСКВА Офис"), "москваофис");
        assert_eq!(canon("Ёлка"), "ёлка");
    }

    #[test]
    fn other_scripts_allowed() {
        assert_eq!(canon("東京本社"), "東京本社");
        assert_eq!(canon("مكتب"), "مكتب");
        assert_eq!(canon("कार्यालय"), "कार्यालय");
    }

    #[test]
    fn extension_like() {
        assert!(is_extension_like("20"));
        assert!(is_extension_like("202"));
        assert!(is_extension_like("123456"));
        assert!(!is_extension_like("2"));
        assert!(!is_extension_like("1234567"));
        assert!(!is_extension_like("20a"));
        assert!(!is_extension_like("+202"));
        assert!(!is_extension_like("٢٠٢")); // Arabic-Indic digits are not ASCII
        assert!(!is_extension_like(""));
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(canonicalize(""), Err(NumberError::Empty));
        assert_eq!(canonicalize("  - . ( ) "), Err(NumberError::Empty));
        assert_eq!(canonicalize("+"), Err(NumberError::Empty));
        assert_eq!(canonicalize(" + ( ) "), Err(NumberError::Empty));
    }

    #[test]
    fn control_characters_are_errors() {
        assert_eq!(
            canonicalize("12\u{7}3"),
            Err(NumberError::ControlChar('\u{7}'))
        );
        assert_eq!(canonicalize("123\n"), Err(NumberError::ControlChar('\n')));
        assert_eq!(canonicalize("1\t2"), Err(NumberError::ControlChar('\t')));
        assert_eq!(
            canonicalize("\u{0}"),
            Err(NumberError::ControlChar('\u{0}'))
        );
        assert_eq!(
            canonicalize("a\u{85}b"),
            Err(NumberError::ControlChar('\u{85}'))
        );
        assert_eq!(
            NumberError::ControlChar('\u{7}').to_string(),
            "number contains a control character (U+0007)"
        );
    }

    #[test]
    fn invisible_and_bidi_characters_are_errors() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{00AD}',
            '\u{2060}',
            '\u{FE0F}',
            '\u{E000}',
            '\u{FFFF}',
            '\u{E0041}',
        ] {
            let s = format!("12{c}34");
            assert_eq!(
                canonicalize(&s),
                Err(NumberError::DisallowedChar(c)),
                "{c:?}"
            );
        }
        assert_eq!(
            NumberError::DisallowedChar('\u{202E}').to_string(),
            "number contains an invisible or disallowed character (U+202E)"
        );
    }

    #[test]
    fn plus_only_at_start() {
        assert_eq!(canon("+1"), "+1");
        assert_eq!(canon(" (+1) 555"), "+1555");
        assert_eq!(canonicalize("1+1"), Err(NumberError::MisplacedPlus));
        assert_eq!(canonicalize("++1"), Err(NumberError::MisplacedPlus));
        assert_eq!(canonicalize("+1555/+20"), Err(NumberError::MisplacedPlus));
        assert_eq!(
            NumberError::MisplacedPlus.to_string(),
            "'+' is only allowed at the start"
        );
    }

    #[test]
    fn slash_rules() {
        assert_eq!(canonicalize("1/2/3"), Err(NumberError::MultipleExtensions));
        assert_eq!(canonicalize("/202"), Err(NumberError::EmptyOffice));
        assert_eq!(canonicalize(" - /202"), Err(NumberError::EmptyOffice));
        assert_eq!(canonicalize("+/202"), Err(NumberError::EmptyOffice));
        assert_eq!(canonicalize("5550100/"), Err(NumberError::EmptyExtension));
        assert_eq!(
            canonicalize("5550100/ - "),
            Err(NumberError::EmptyExtension)
        );
        assert_eq!(canonicalize("/"), Err(NumberError::EmptyOffice));
    }

    #[test]
    fn length_limit() {
        let ok = "1".repeat(MAX_CHARS);
        assert_eq!(canon(&ok), ok);
        assert_eq!(
            canonicalize(&"1".repeat(MAX_CHARS + 1)),
            Err(NumberError::TooLong)
        );
        // The limit applies after canonicalisation: separators don't count.
        let padded = "1-".repeat(MAX_CHARS);
        assert_eq!(canon(&padded), "1".repeat(MAX_CHARS));
        // The limit counts characters, not bytes.
        let hangul = "한".repeat(MAX_CHARS);
        assert_eq!(canon(&hangul), hangul);
        assert_eq!(
            canonicalize(&"한".repeat(MAX_CHARS + 1)),
            Err(NumberError::TooLong)
        );
        assert_eq!(
            canonicalize(&" ".repeat(MAX_INPUT_BYTES + 1)),
            Err(NumberError::InputTooLong)
        );
        assert_eq!(
            NumberError::TooLong.to_string(),
            "number is too long (max 64 characters)"
        );
    }

    #[test]
    fn tricky_case_mappings() {
        // U+0130 lower-cases to "i" + combining dot above, which has no
        // precomposed form; the result must still be a fixed point.
        let c = canon("İstanbul");
        assert_eq!(c, "i\u{0307}stanbul");
        assert_eq!(canonicalize(&c), Ok(c.clone()));
        // Kelvin and Ohm signs normalise to K and Ω, then lower-case.
        assert_eq!(canon("\u{212A}\u{2126}"), "k\u{03C9}");
    }

    /// Characters likely to exercise the interesting paths: separators,
    /// combining marks, case pairs, Hangul jamo, `+` and `/`.
    fn interesting_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                ' ', '-', '.', '(', ')', '+', '/', '\t', '\u{A0}', '\u{3000}', '\u{200B}',
                '\u{0301}', '\u{0308}', '\u{030A}', '\u{0307}', '\u{0345}', 'A', 'a', 'İ', 'ı',
                'ß', 'ẞ', 'Σ', 'ς', 'Ω', '\u{2126}', '\u{212A}', 'Å', '\u{212B}', 'Ǆ', 'ǅ',
                '\u{1100}', '\u{1161}', '\u{11A8}', '한', 'Ё', 'ё', '0', '9', '١', 'ﬁ', 'ᾼ',
                '\u{1F88}',
            ]),
            any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = canonicalize(&s);
        }

        #[test]
        fn idempotent(s in prop::collection::vec(interesting_char(), 0..40)) {
            let s: String = s.into_iter().collect();
            if let Ok(c) = canonicalize(&s) {
                prop_assert_eq!(canonicalize(&c), Ok(c.clone()));
            }
        }

        #[test]
        fn idempotent_any(s in any::<String>()) {
            if let Ok(c) = canonicalize(&s) {
                prop_assert_eq!(canonicalize(&c), Ok(c.clone()));
            }
        }

        #[test]
        fn output_is_clean(s in prop::collection::vec(interesting_char(), 0..80)) {
            let s: String = s.into_iter().collect();
            if let Ok(c) = canonicalize(&s) {
                prop_assert!(!c.is_empty());
                prop_assert!(c.chars().count() <= MAX_CHARS);
                prop_assert!(!c.chars().any(is_separator), "separator in {:?}", c);
                prop_assert!(!c.chars().any(char::is_control), "control in {:?}", c);
                prop_assert!(!c.chars().any(is_disallowed), "disallowed in {:?}", c);
                let body = c.strip_prefix('+').unwrap_or(&c);
                prop_assert!(!body.contains('+'), "misplaced '+' in {:?}", c);
                prop_assert!(c.matches('/').count() <= 1);
                let (office, ext) = split_extension(&c);
                prop_assert!(!office.trim_start_matches('+').is_empty());
                prop_assert!(ext.is_none_or(|e| !e.is_empty()));
                prop_assert!(unicode_normalization::is_nfc(&c));
            }
        }

        #[test]
        fn ascii_fast_path_matches_the_general_path(s in "[ -~\\x00-\\x1f\\x7f]{0,80}") {
            prop_assert!(s.is_ascii());
            prop_assert_eq!(canonicalize_ascii(&s), canonicalize_general(&s));
        }

        #[test]
        fn ascii_fast_path_matches_on_number_like_input(
            s in prop::collection::vec(prop::sample::select(vec![
                ' ', '-', '.', '(', ')', '+', '/', '\t', '\n', '\u{7f}', 'A', 'Z', 'a', 'z', '0', '9',
            ]), 0..70),
        ) {
            let s: String = s.into_iter().collect();
            prop_assert_eq!(canonicalize_ascii(&s), canonicalize_general(&s));
        }

        #[test]
        fn separators_do_not_matter(
            parts in prop::collection::vec("[0-9a-zA-Z]{1,4}", 1..6),
            seps in prop::collection::vec(prop::sample::select(vec![" ", "-", ".", "(", ")", "\u{A0}"]), 6),
        ) {
            let plain: String = parts.concat();
            let mut spaced = String::new();
            for (p, s) in parts.iter().zip(seps.iter()) {
                spaced.push_str(p);
                spaced.push_str(s);
            }
            prop_assert_eq!(canonicalize(&spaced), canonicalize(&plain));
        }
    }
}
