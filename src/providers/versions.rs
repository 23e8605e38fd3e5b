//! Which store versions to disable so that one enabled version of those rekey knows is
//! left (invariant I8): the live one. Pure, so every store applies the same rule and the
//! rule is tested once.
//!
//! rekey knows the versions it wrote (they carry its tags) and the version a rotation
//! captured. A retirement keeps the store's current version; a compensation keeps the
//! copy of the old value it wrote back, or none when the secret did not exist before.

/// One listed version of a secret, as a store sees it (no value).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub id: &'a str,
    pub enabled: bool,
    /// Carries rekey's tags: written by some rotation.
    pub written_by_rekey: bool,
}

/// The enabled versions rekey knows of, other than `live`, in listing order.
/// Ids compare without regard to case (Key Vault ids are URLs).
pub fn superseded<'a>(
    versions: impl IntoIterator<Item = Listed<'a>>,
    live: Option<&str>,
    captured: Option<&str>,
) -> Vec<&'a str> {
    let same = |a: &str, b: Option<&str>| b.is_some_and(|b| a.eq_ignore_ascii_case(b));
    versions
        .into_iter()
        .filter(|v| v.enabled && !same(v.id, live))
        .filter(|v| v.written_by_rekey || same(v.id, captured))
        .map(|v| v.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, enabled: bool, written_by_rekey: bool) -> Listed<'_> {
        Listed {
            id,
            enabled,
            written_by_rekey,
        }
    }

    #[test]
    fn keeps_the_live_version_and_what_rekey_never_touched() {
        let versions = [
            listed("hand-made", true, false),
            listed("captured", true, false),
            listed("failed-rotation", true, true),
            listed("already-off", false, true),
            listed("LIVE", true, true),
        ];
        assert_eq!(
            superseded(versions, Some("live"), Some("CAPTURED")),
            ["captured", "failed-rotation"]
        );
    }

    #[test]
    fn without_a_live_version_every_known_enabled_one_goes() {
        let versions = [listed("a", true, true), listed("b", true, true)];
        assert_eq!(superseded(versions, None, None), ["a", "b"]);
    }
}
