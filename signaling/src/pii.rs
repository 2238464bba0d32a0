//! Redaction wrapper for values that identify a person.

use std::fmt;

/// Wraps personal data so that `Debug`/`Display` never print it; logs show
/// `<redacted>` and code has to reach for `.expose()` on purpose.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pii<T>(pub T);

impl<T> Pii<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pii_is_never_formatted() {
        let p = Pii("Jane Roe".to_string());
        assert_eq!(format!("{p} {p:?}"), "<redacted> <redacted>");
    }
}
