//! The console's CSRF check: each session has a random token, rendered as a hidden field
//! (`csrf`) in every form that changes state; a `POST` without it, or with another, is
//! refused with 403. The comparison takes the same time however much matches.

use subtle::ConstantTimeEq;

/// The form field carrying the token.
pub const FIELD: &str = "csrf";
/// Bytes of a form the check reads, at most (the console's forms are small).
pub const FORM_BYTES_MAX: usize = 64 * 1024;

/// Whether the URL-encoded `form` carries `expected` as its [`FIELD`].
pub fn accepted(form: &[u8], expected: &str) -> bool {
    let given = url::form_urlencoded::parse(form)
        .find(|(name, _)| name == FIELD)
        .map(|(_, value)| value.into_owned());
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sessions_own_token_is_accepted() {
        assert!(accepted(b"a=1&csrf=tok3n&b=2", "tok3n"));
        assert!(!accepted(b"a=1&b=2", "tok3n"));
        assert!(!accepted(b"csrf=", "tok3n"));
        assert!(!accepted(b"csrf=tok3", "tok3n"));
        assert!(!accepted(b"csrf=tok3nn", "tok3n"));
    }
}
