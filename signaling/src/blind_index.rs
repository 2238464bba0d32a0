//! Search terms for finding a patient by name or date of birth without decrypting the
//! patient table.
//!
//! Names and dates of birth are sealed at rest ([`crate::crypto`]). To find a patient,
//! the store keeps a *keyed blind index*: for every term of a patient's record, the
//! HMAC-SHA256 of the term under a key derived from the keyring
//! ([`crate::crypto::Keyring::blind_index`]). A search computes the same MACs for the
//! words it is given and looks them up; only the matching rows are opened.
//!
//! This module is the pure part: what the terms of a record are. A name is split into
//! words, each case-folded with accents removed (`Zoë` and `ZOE` give the same
//! term), so a search matches whole words in any case and with or without accents;
//! a date of birth is one term. Each kind of term carries its own prefix, so a name
//! word can never match a date.
//!
//! What the index reveals to someone with the database but not the keys: how many
//! words each patient's name has, which patients share a name word or a date of
//! birth, and, by frequency, which words are common. It reveals no word: the key is
//! never stored (docs/security.md, "Patient search").

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// At most this many name words are indexed (and searched) per record.
pub const MAX_NAME_TERMS: usize = 12;

/// A calendar date of birth, checked (month 1-12, the day exists in that month,
/// years 1850-2200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateOfBirth {
    year: u16,
    month: u8,
    day: u8,
}

impl DateOfBirth {
    /// `YYYY-MM-DD` exactly; anything else (other separators, out-of-range fields,
    /// 2023-02-29) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u16> {
            let part = s.get(r)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let year = num(0..4)?;
        let month = u8::try_from(num(5..7)?).ok()?;
        let day = u8::try_from(num(8..10)?).ok()?;
        if !(1850..=2200).contains(&year) || !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        (day <= days).then_some(DateOfBirth { year, month, day })
    }
}

impl fmt::Display for DateOfBirth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One word as the index stores it: compatibility-decomposed (NFKD), combining marks
/// dropped, lower-cased, `ß` as `ss`. `"Zoë"` -> `"zoe"`, `"ＭÜLLER"` -> `"muller"`.
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.nfkd().filter(|c| !is_combining_mark(*c)) {
        for l in c.to_lowercase() {
            if l == 'ß' {
                out.push_str("ss");
            } else {
                out.push(l);
            }
        }
    }
    out
}

/// The distinct words of a name, folded ([`fold`]), in order of first appearance;
/// words are separated by anything that is not a letter or a digit (spaces, hyphens,
/// apostrophes, dots). At most [`MAX_NAME_TERMS`].
pub fn name_words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in name.split(|c: char| !c.is_alphanumeric()) {
        let w = fold(w);
        if w.is_empty() || out.contains(&w) {
            continue;
        }
        out.push(w);
        if out.len() == MAX_NAME_TERMS {
            break;
        }
    }
    out
}

/// The index term of a name word (already folded).
pub fn name_term(word: &str) -> Vec<u8> {
    term(b"name", word.as_bytes())
}

/// The index term of a date of birth.
pub fn dob_term(dob: DateOfBirth) -> Vec<u8> {
    term(b"dob", dob.to_string().as_bytes())
}

/// Every index term of a patient record.
pub fn record_terms(name: &str, dob: Option<DateOfBirth>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = name_words(name).iter().map(|w| name_term(w)).collect();
    out.extend(dob.map(dob_term));
    out
}

/// `kind 0x00 value`: the kind cannot run into the value, so terms of different kinds
/// never collide.
fn term(kind: &[u8], value: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(kind.len() + 1 + value.len());
    t.extend_from_slice(kind);
    t.push(0);
    t.extend_from_slice(value);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_case_and_accent_insensitive() {
        assert_eq!(name_words("Zoë Müller-Łukasz"), ["zoe", "muller", "łukasz"]);
        assert_eq!(name_words("ZOE  muller"), ["zoe", "muller"]);
        assert_eq!(name_words("José Ñúñez"), ["jose", "nunez"]);
        assert_eq!(name_words("Straße"), ["strasse"]);
        // Compatibility forms (full-width letters, ligatures) fold to plain letters.
        assert_eq!(name_words("ＡＮＮＡ ﬁne"), ["anna", "fine"]);
        assert_eq!(name_words("O'Brien, Dr."), ["o", "brien", "dr"]);
        assert_eq!(name_words("anna Anna ANNA"), ["anna"]);
        assert!(name_words("  -- ").is_empty());
        let many = (0..40)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(name_words(&many).len(), MAX_NAME_TERMS);
    }

    #[test]
    fn name_and_date_terms_never_collide() {
        let d = DateOfBirth::parse("1980-02-29").unwrap();
        assert_ne!(name_term("1980-02-29"), dob_term(d));
        let terms = record_terms("Ann Lee", Some(d));
        assert_eq!(terms.len(), 3);
        assert!(terms.contains(&name_term("ann")));
        assert!(terms.contains(&dob_term(d)));
    }

    #[test]
    fn dates_of_birth_are_checked() {
        assert_eq!(
            DateOfBirth::parse("1980-02-29").map(|d| d.to_string()),
            Some("1980-02-29".into())
        );
        for bad in [
            "1981-02-29",
            "1900-02-29",
            "2000-13-01",
            "2000-00-10",
            "2000-04-31",
            "2000-01-00",
            "1700-01-01",
            "80-01-01",
            "1980/01/01",
            "1980-1-01",
            "1980-01-01 ",
            "+980-01-01",
            "١٩٨٠-01-01",
            "",
        ] {
            assert_eq!(DateOfBirth::parse(bad), None, "{bad}");
        }
        assert!(DateOfBirth::parse("2000-02-29").is_some());
    }
}
