//! The rules a new password must meet, after NIST SP 800-63B (rev. 4, section 3.1.1.2):
//! a minimum length that depends on whether the password is the only factor, a
//! generous maximum, every printable character (spaces and any script) allowed, no
//! composition rules ("one digit, one symbol"), and a refusal of passwords that are
//! known to be common or breached, or that contain the username or the service's name.
//!
//! The blocklist is local (`data/common-passwords.txt`, vendored from Django with its
//! licence): a password is never sent anywhere to be checked. Sans-IO: the edge passes
//! the username and the service names in.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::Serialize;

/// Minimum length, in characters, when the password is the only factor (a patient
/// without an authenticator).
pub const MIN_LEN_SINGLE_FACTOR: usize = 15;
/// Minimum length when the account also has a second factor.
pub const MIN_LEN_WITH_MFA: usize = 8;
/// Maximum length. NIST asks for at least 64; long passphrases are welcome.
pub const MAX_LEN: usize = 256;
/// Usernames or service names shorter than this are not searched for inside a
/// password ("ab" would refuse too much for what it protects).
const MIN_CONTEXT_WORD: usize = 3;

static COMMON_TEXT: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_TEXT
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// How many passwords the local blocklist holds.
pub fn blocklist_len() -> usize {
    common().len()
}

/// Why a password was refused. Each has a short message for the person choosing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordProblem {
    #[error("too short")]
    TooShort {
        /// The minimum that applied.
        min: usize,
    },
    #[error("too long")]
    TooLong,
    /// A control character (a line break, a tab, an escape).
    #[error("contains a control character")]
    ControlCharacter,
    /// On the list of common or breached passwords.
    #[error("too common")]
    Common,
    #[error("contains the username")]
    ContainsUsername,
    #[error("contains the service name")]
    ContainsServiceName,
}

impl PasswordProblem {
    /// A short machine code (`password_too_short`, ...), for the page to react to.
    pub fn code(self) -> &'static str {
        match self {
            PasswordProblem::TooShort { .. } => "password_too_short",
            PasswordProblem::TooLong => "password_too_long",
            PasswordProblem::ControlCharacter => "password_control_character",
            PasswordProblem::Common => "password_common",
            PasswordProblem::ContainsUsername => "password_contains_username",
            PasswordProblem::ContainsServiceName => "password_contains_service_name",
        }
    }

    /// What the person reads.
    pub fn message(self) -> &'static str {
        match self {
            PasswordProblem::TooShort {
                min: MIN_LEN_SINGLE_FACTOR,
            } => "The password must have at least 15 characters.",
            PasswordProblem::TooShort { .. } => "The password must have at least 8 characters.",
            PasswordProblem::TooLong => "The password must have at most 256 characters.",
            PasswordProblem::ControlCharacter => {
                "The password cannot contain line breaks, tabs or other control characters."
            }
            PasswordProblem::Common => {
                "This password is too common: it is on a list of passwords attackers try first."
            }
            PasswordProblem::ContainsUsername => "The password cannot contain your username.",
            PasswordProblem::ContainsServiceName => {
                "The password cannot contain the name of this service."
            }
        }
    }
}

/// What a password is checked against besides itself.
#[derive(Clone, Copy, Debug)]
pub struct PasswordContext<'a> {
    pub username: &'a str,
    /// The service's names (the product and the clinic's issuer name).
    pub service_names: &'a [&'a str],
    /// Whether the account has (or is about to have) a second factor.
    pub second_factor: bool,
}

/// The minimum length that applies.
pub fn min_len(second_factor: bool) -> usize {
    if second_factor {
        MIN_LEN_WITH_MFA
    } else {
        MIN_LEN_SINGLE_FACTOR
    }
}

/// Checks a new password; the first problem found, in the order the page lists the
/// rules.
pub fn check(password: &str, cx: PasswordContext<'_>) -> Result<(), PasswordProblem> {
    // Characters are Unicode code points, as NIST counts them.
    let n = password.chars().count();
    let min = min_len(cx.second_factor);
    if n < min {
        return Err(PasswordProblem::TooShort { min });
    }
    if n > MAX_LEN {
        return Err(PasswordProblem::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordProblem::ControlCharacter);
    }
    let lower = password.to_lowercase();
    if common().contains(lower.trim()) {
        return Err(PasswordProblem::Common);
    }
    let contains = |word: &str| {
        let w = word.trim().to_lowercase();
        w.chars().count() >= MIN_CONTEXT_WORD && lower.contains(&w)
    };
    if contains(cx.username) {
        return Err(PasswordProblem::ContainsUsername);
    }
    if cx.service_names.iter().any(|s| contains(s)) {
        return Err(PasswordProblem::ContainsServiceName);
    }
    Ok(())
}

/// The rules as the page shows them (`GET /api/password/policy`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PolicyView {
    pub min_length_single_factor: usize,
    pub min_length_with_second_factor: usize,
    pub max_length: usize,
    pub blocklist_size: usize,
    pub rules: Vec<&'static str>,
}

pub fn policy_view() -> PolicyView {
    PolicyView {
        min_length_single_factor: MIN_LEN_SINGLE_FACTOR,
        min_length_with_second_factor: MIN_LEN_WITH_MFA,
        max_length: MAX_LEN,
        blocklist_size: blocklist_len(),
        rules: vec![
            "At least 15 characters, or at least 8 if you also use an authenticator app.",
            "At most 256 characters. Spaces and every language's letters are welcome; a \
             long phrase you remember is a good password.",
            "No need for digits or symbols.",
            "Not a common password, and not containing your username or the service's name.",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(second_factor: bool) -> PasswordContext<'static> {
        PasswordContext {
            username: "drsmith",
            service_names: &["Confide", "Riverside Clinic"],
            second_factor,
        }
    }

    #[test]
    fn the_minimum_depends_on_the_second_factor() {
        assert_eq!(
            check("seven c", cx(true)),
            Err(PasswordProblem::TooShort { min: 8 })
        );
        assert_eq!(check("tangerine-ox", cx(true)), Ok(()));
        assert_eq!(
            check("tangerine-ox", cx(false)),
            Err(PasswordProblem::TooShort { min: 15 })
        );
        assert_eq!(check("tangerine-ox-walks", cx(false)), Ok(()));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // Eight characters, 24 bytes.
        assert_eq!(check("日本語のパスワ語", cx(true)), Ok(()));
        assert_eq!(
            check("日本語のパスワ", cx(true)),
            Err(PasswordProblem::TooShort { min: 8 })
        );
    }

    #[test]
    fn long_passphrases_spaces_and_any_script_are_allowed_without_composition_rules() {
        let long = "a sentence I will remember ".repeat(9); // 243 characters
        assert_eq!(check(&long, cx(false)), Ok(()));
        assert_eq!(check("all lower case words here", cx(false)), Ok(()));
        assert_eq!(check("Ωμέγα καλημέρα φίλε", cx(false)), Ok(()));
        let too_long = "x".repeat(MAX_LEN + 1);
        assert_eq!(check(&too_long, cx(false)), Err(PasswordProblem::TooLong));
        const { assert!(MAX_LEN >= 64, "NIST: at least 64") };
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            check("a password with\na newline", cx(false)),
            Err(PasswordProblem::ControlCharacter)
        );
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        assert!(blocklist_len() > 19_000, "{}", blocklist_len());
        for p in [
            "password",
            "Password1",
            "QWERTYUIOP",
            "iloveyou",
            "12345678",
        ] {
            assert_eq!(check(p, cx(true)), Err(PasswordProblem::Common), "{p}");
        }
    }

    #[test]
    fn the_username_and_the_service_name_are_refused() {
        assert_eq!(
            check("DrSmith-and-more", cx(true)),
            Err(PasswordProblem::ContainsUsername)
        );
        assert_eq!(
            check("my confide password", cx(false)),
            Err(PasswordProblem::ContainsServiceName)
        );
        assert_eq!(
            check("riverside clinic 2026!", cx(false)),
            Err(PasswordProblem::ContainsServiceName)
        );
        // A very short username is not searched for.
        let short = PasswordContext {
            username: "al",
            ..cx(true)
        };
        assert_eq!(check("totally fine words", short), Ok(()));
    }

    #[test]
    fn every_problem_has_a_code_and_a_message() {
        for p in [
            PasswordProblem::TooShort { min: 8 },
            PasswordProblem::TooShort { min: 15 },
            PasswordProblem::TooLong,
            PasswordProblem::ControlCharacter,
            PasswordProblem::Common,
            PasswordProblem::ContainsUsername,
            PasswordProblem::ContainsServiceName,
        ] {
            assert!(p.code().starts_with("password_"));
            assert!(p.message().ends_with('.'));
        }
        assert!(
            PasswordProblem::TooShort { min: 15 }
                .message()
                .contains("15")
        );
    }
}
