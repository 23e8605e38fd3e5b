//! The matcher: a pure, deterministic function from an inventory (Entra credentials, Key
//! Vault items, what could not be read), the rules and the hint checks to links between
//! credentials and the items that hold them, each with a score, a confidence, its evidence
//! and its vetoes, plus a verdict per credential (may it rotate, and if not, why).
//!
//! The signals are a table of data ([`SIGNALS`]); the thresholds and ambiguity rules are
//! DESIGN §7's. Inputs are sorted first, so the result does not depend on their order.
//!
//! Candidate pruning: a pair (credential, item) is considered only when the item can be
//! reached from the credential through an index: a tag value equal to the key id, the
//! app's client or object id or its name; a certificate thumbprint; or a name token of the
//! app (its rarest one, then checked in full). The weaker signals (dates, content type,
//! environment, a client-id sibling) only add to pairs found that way, never create one:
//! a date within a day of some credential's expiry is everywhere in a large tenant.
//!
//! Resolution: an item holds at most one credential, the best-scoring unvetoed one. Pairs
//! tied at the top are all AMBIGUOUS, whether the credentials belong to one app (DESIGN's
//! case: retiring needs the right key id) or to several: a tie says the evidence cannot
//! tell them apart, and rotating either would be a guess.
//!
//! Owns: scoring, resolution and verdicts.
//! Never touches: I/O, clocks, secret values (hint checks arrive as booleans).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::model::{
    AppCredential, CredentialKind, Inventory, ItemKind, Origin, Unreachable, UnreachableKind,
    VaultItem, id_key, looks_like_guid,
};
use super::rules::{REKEY_APP_ID_TAG, REKEY_KEY_ID_TAG, Rules};

/// How sure a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    None,
    Low,
    Medium,
    High,
    /// Two credentials fit one item equally well: capped at LOW, never rotated
    /// (retirement needs the right key id).
    Ambiguous,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::None => "none",
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
            Confidence::Ambiguous => "ambiguous",
        }
    }

    /// Order for thresholds: ambiguous counts as LOW.
    pub fn rank(self) -> u8 {
        match self {
            Confidence::None => 0,
            Confidence::Low | Confidence::Ambiguous => 1,
            Confidence::Medium => 2,
            Confidence::High => 3,
        }
    }

    /// Whether a copy at this confidence may rotate at threshold `min`. Ambiguous never
    /// may.
    pub fn meets(self, min: Confidence) -> bool {
        self != Confidence::Ambiguous && self.rank() >= min.rank() && self.rank() > 0
    }

    /// Parses `high`, `medium`, `low`, `none` or `ambiguous`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" => Confidence::None,
            "low" => Confidence::Low,
            "medium" => Confidence::Medium,
            "high" => Confidence::High,
            "ambiguous" => Confidence::Ambiguous,
            _ => return None,
        })
    }
}

/// A reason to believe an item holds a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    TagKeyId,
    Thumbprint,
    RekeyTags,
    AppIdTag,
    HintMatch,
    AppNameTag,
    NameTemplate,
    NameContainsApp,
    ClientIdSibling,
    ExpiryNearEnd,
    CreatedNearStart,
    ContentType,
    EnvironmentShared,
}

/// One row of the signal table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSpec {
    pub signal: Signal,
    /// The evidence code, stable: reports and journals carry it.
    pub code: &'static str,
    pub points: u32,
    /// HIGH at once.
    pub definitive: bool,
    /// Says which app (or which secret) it is: HIGH needs one.
    pub identity: bool,
    pub meaning: &'static str,
}

/// Points a definitive signal is worth (above any sum of the others' thresholds).
pub const DEFINITIVE_POINTS: u32 = 100;
/// HIGH needs at least this score and an identity signal.
pub const HIGH_MIN: u32 = 80;
pub const MEDIUM_MIN: u32 = 45;
pub const LOW_MIN: u32 = 15;
/// An item's `exp` this close to a credential's `endDateTime` counts.
pub const EXPIRY_NEAR_MS: i64 = 24 * 3_600_000;
/// An item's `created` this close to a credential's `startDateTime` counts.
pub const CREATED_NEAR_MS: i64 = 10 * 60_000;

/// The signals, their points and what they mean (DESIGN §7). Indexed by [`Signal`].
pub const SIGNALS: &[SignalSpec] = &[
    spec(
        Signal::TagKeyId,
        "tag-key-id",
        DEFINITIVE_POINTS,
        true,
        true,
        "a tag's value is the credential's keyId (Azure's samples write CredentialId)",
    ),
    spec(
        Signal::Thumbprint,
        "x5t",
        DEFINITIVE_POINTS,
        true,
        true,
        "the certificate's x5t is the credential's thumbprint",
    ),
    spec(
        Signal::RekeyTags,
        "rekey-tags",
        DEFINITIVE_POINTS,
        true,
        true,
        "rekey-app-id and rekey-key-id name this app and key (rekey wrote it)",
    ),
    spec(
        Signal::AppIdTag,
        "tag-app-id",
        50,
        false,
        true,
        "a tag's value is the app's client id or object id",
    ),
    spec(
        Signal::HintMatch,
        "hint-match",
        40,
        false,
        true,
        "the value starts with the password's three-character hint",
    ),
    spec(
        Signal::AppNameTag,
        "tag-app-name",
        25,
        false,
        false,
        "an app-name tag holds the app's display name",
    ),
    spec(
        Signal::NameTemplate,
        "name-template",
        25,
        false,
        false,
        "the item's name is a configured template for the app",
    ),
    spec(
        Signal::NameContainsApp,
        "name-contains-app",
        15,
        false,
        false,
        "the item's name contains the app's name",
    ),
    spec(
        Signal::ClientIdSibling,
        "client-id-sibling",
        20,
        false,
        false,
        "a sibling item holds the client id (<stem>-client-id beside <stem>-client-secret)",
    ),
    spec(
        Signal::ExpiryNearEnd,
        "exp-near-end",
        15,
        false,
        false,
        "the item expires within 24 h of the credential",
    ),
    spec(
        Signal::CreatedNearStart,
        "created-near-start",
        10,
        false,
        false,
        "the item was created within 10 min of the credential",
    ),
    spec(
        Signal::ContentType,
        "content-type",
        5,
        false,
        false,
        "the item's content type fits the credential's kind",
    ),
    spec(
        Signal::EnvironmentShared,
        "environment",
        5,
        false,
        false,
        "the app and the item (or its vault) name the same environment",
    ),
];

const fn spec(
    signal: Signal,
    code: &'static str,
    points: u32,
    definitive: bool,
    identity: bool,
    meaning: &'static str,
) -> SignalSpec {
    SignalSpec {
        signal,
        code,
        points,
        definitive,
        identity,
        meaning,
    }
}

impl Signal {
    /// This signal's row of [`SIGNALS`].
    pub fn spec(self) -> &'static SignalSpec {
        &SIGNALS[self as usize]
    }
}

/// A reason an item cannot hold a credential, whatever else says it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Veto {
    /// The value was read and does not start with the password's hint.
    HintMismatch,
    /// An app tag names another app.
    TagOtherApp,
    /// A key tag names another key.
    TagOtherKey,
    /// A certificate whose thumbprint is not the credential's.
    ThumbprintMismatch,
}

impl Veto {
    pub fn code(self) -> &'static str {
        match self {
            Veto::HintMismatch => "hint-mismatch",
            Veto::TagOtherApp => "tag-other-app",
            Veto::TagOtherKey => "tag-other-key",
            Veto::ThumbprintMismatch => "x5t-mismatch",
        }
    }
}

/// One piece of evidence: a signal and what carried it (a tag key, a template, a sibling
/// name, an environment), never a value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Evidence {
    pub signal: Signal,
    pub detail: String,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail.as_str() {
            "" => f.write_str(self.signal.spec().code),
            d => write!(f, "{}({d})", self.signal.spec().code),
        }
    }
}

/// One veto and what carried it (a tag key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VetoEvidence {
    pub veto: Veto,
    pub detail: String,
}

impl std::fmt::Display for VetoEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail.as_str() {
            "" => f.write_str(self.veto.code()),
            d => write!(f, "{}({d})", self.veto.code()),
        }
    }
}

/// Which item a hint check was about, and which credential's hint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HintKey {
    /// The credential's key id (lower case).
    pub key_id: String,
    /// The vault's name (lower case).
    pub vault: String,
    /// The item's name (lower case).
    pub item: String,
}

/// The hint checks done (opt-in): whether each read value started with the hint.
pub type Hints = BTreeMap<HintKey, bool>;

/// What resolution made of a scored pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The item holds this credential.
    Linked,
    /// Another credential fits the item equally well.
    Ambiguous,
    /// Another credential (index into [`Matched::credentials`]) fits the item better.
    Lost { to: usize },
    /// Something proves the item does not hold it.
    Vetoed,
}

/// A scored pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Index into [`Matched::credentials`].
    pub credential: usize,
    /// Index into [`Matched::items`].
    pub item: usize,
    pub score: u32,
    /// The confidence the score alone gives.
    pub level: Confidence,
    /// The link's confidence after vetoes and ties (`None` when vetoed or lost).
    pub confidence: Confidence,
    pub evidence: Vec<Evidence>,
    pub vetoes: Vec<VetoEvidence>,
    pub outcome: Outcome,
}

impl Pair {
    /// Whether the pair is reported as a link (linked, ambiguous or vetoed).
    pub fn is_link(&self) -> bool {
        !matches!(self.outcome, Outcome::Lost { .. })
    }

    /// Whether the item counts as a copy of the credential (≥ LOW, not vetoed).
    pub fn is_copy(&self) -> bool {
        matches!(self.outcome, Outcome::Linked | Outcome::Ambiguous)
    }
}

/// A credential's verdict: the confidence of its weakest copy, and whether it may rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Of the weakest copy (no partial coverage: it governs); `None` without copies;
    /// `Ambiguous` when any copy is.
    pub confidence: Confidence,
    /// Every copy meets the minimum confidence and nothing it may live in went unread.
    pub ready: bool,
    /// Why (not) ready, in a sentence.
    pub reason: String,
}

/// The matcher's result, sorted: credentials by (tenant, origin, object id, key id),
/// items by (vault, kind, name), pairs by (credential, item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub credentials: Vec<AppCredential>,
    pub items: Vec<VaultItem>,
    /// Every pair that scored at least LOW, or would have but for a veto.
    pub pairs: Vec<Pair>,
    /// One per credential, in the same order.
    pub verdicts: Vec<Verdict>,
    pub unreachable: Vec<Unreachable>,
}

impl Matched {
    /// The pairs reported as links (linked, ambiguous, vetoed).
    pub fn links(&self) -> impl Iterator<Item = &Pair> {
        self.pairs.iter().filter(|p| p.is_link())
    }

    /// The pairs of credential `c`.
    pub fn pairs_of(&self, c: usize) -> impl Iterator<Item = &Pair> {
        let start = self.pairs.partition_point(|p| p.credential < c);
        self.pairs[start..]
            .iter()
            .take_while(move |p| p.credential == c)
    }
}

/// A vault item whose current value may be read to compare with credentials' hints:
/// only items that already score for some password credential with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintCandidate {
    pub tenant: String,
    pub vault: String,
    pub item: String,
    /// `(key id, hint)` of each credential to compare with; the hints stay in memory.
    pub hints: Vec<(String, String)>,
}

/// The items worth reading for the hint check (`read_values_for_hint`): each item at most
/// once, with every scoring, unvetoed password credential's hint.
pub fn hint_candidates(inventory: &Inventory, rules: &Rules) -> Vec<HintCandidate> {
    let (credentials, items) = sorted(inventory);
    let index = Index::new(&items);
    let none = Hints::new();
    let mut by_item: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for c in &credentials {
        let Some(hint) = &c.hint else { continue };
        if c.kind != CredentialKind::Password {
            continue;
        }
        let names = Names::of(c, rules);
        for ii in index.candidates(c, &names) {
            if items[ii].kind != ItemKind::Secret {
                continue;
            }
            if let Some(s) = score(c, &names, &items[ii], ii, &index, rules, &none)
                && s.vetoes.is_empty()
                && s.score > 0
            {
                by_item
                    .entry(ii)
                    .or_default()
                    .push((c.key_id.clone(), hint.clone()));
            }
        }
    }
    by_item
        .into_iter()
        .map(|(ii, hints)| HintCandidate {
            tenant: items[ii].tenant.clone(),
            vault: items[ii].vault.clone(),
            item: items[ii].name.clone(),
            hints,
        })
        .collect()
}

/// Matches credentials to items (see the module header for the rules).
pub fn match_inventory(inventory: &Inventory, rules: &Rules, hints: &Hints) -> Matched {
    let (credentials, items) = sorted(inventory);
    let index = Index::new(&items);

    let mut pairs: Vec<Pair> = Vec::new();
    for (ci, c) in credentials.iter().enumerate() {
        let names = Names::of(c, rules);
        for ii in index.candidates(c, &names) {
            let Some(s) = score(c, &names, &items[ii], ii, &index, rules, hints) else {
                continue;
            };
            let level = level(&s);
            // Keep what is (or but for a veto would be) at least LOW.
            if level == Confidence::None {
                continue;
            }
            let vetoed = !s.vetoes.is_empty();
            pairs.push(Pair {
                credential: ci,
                item: ii,
                score: s.score,
                level,
                confidence: if vetoed { Confidence::None } else { level },
                evidence: s.evidence,
                vetoes: s.vetoes,
                outcome: if vetoed {
                    Outcome::Vetoed
                } else {
                    Outcome::Linked
                },
            });
        }
    }
    resolve(&mut pairs);
    pairs.sort_by_key(|p| (p.credential, p.item));

    let mut unreachable = inventory.unreachable.clone();
    unreachable.sort();
    unreachable.dedup();
    let verdicts = (0..credentials.len())
        .map(|ci| verdict(ci, &credentials, &items, &pairs, &unreachable, rules))
        .collect();
    Matched {
        credentials,
        items,
        pairs,
        verdicts,
        unreachable,
    }
}

/// One item, one credential: per item, the best unvetoed pair wins; pairs tied at the top
/// are all ambiguous; the rest lost.
fn resolve(pairs: &mut [Pair]) {
    pairs.sort_by_key(|p| (p.item, std::cmp::Reverse(p.score), p.credential));
    let mut start = 0;
    while start < pairs.len() {
        let item = pairs[start].item;
        let end = start + pairs[start..].partition_point(|p| p.item == item);
        let group = &mut pairs[start..end];
        let contenders: Vec<usize> = (0..group.len())
            .filter(|&k| group[k].outcome != Outcome::Vetoed)
            .collect();
        if let Some(&top) = contenders.first() {
            let best = group[top].score;
            let tied: Vec<usize> = contenders
                .iter()
                .copied()
                .filter(|&k| group[k].score == best)
                .collect();
            let winner = group[top].credential;
            for &k in &contenders {
                let p = &mut group[k];
                if tied.len() > 1 && p.score == best {
                    p.outcome = Outcome::Ambiguous;
                    p.confidence = Confidence::Ambiguous;
                } else if k != top || tied.len() > 1 {
                    p.outcome = Outcome::Lost { to: winner };
                    p.confidence = Confidence::None;
                }
            }
        }
        start = end;
    }
}

fn verdict(
    ci: usize,
    credentials: &[AppCredential],
    items: &[VaultItem],
    pairs: &[Pair],
    unreachable: &[Unreachable],
    rules: &Rules,
) -> Verdict {
    let c = &credentials[ci];
    let first = pairs.partition_point(|p| p.credential < ci);
    let copies: Vec<&Pair> = pairs[first..]
        .iter()
        .take_while(|p| p.credential == ci)
        .filter(|p| p.is_copy())
        .collect();
    let place = |p: &Pair| format!("{}/{}", items[p.item].vault, items[p.item].name);
    let min = rules.min_confidence;
    let not_ready = |confidence, reason: String| Verdict {
        confidence,
        ready: false,
        reason,
    };
    if copies.is_empty() {
        return not_ready(Confidence::None, "not in any scanned vault".to_owned());
    }
    let weakest = copies
        .iter()
        .map(|p| p.confidence)
        .min_by_key(|k| (*k != Confidence::Ambiguous, k.rank()))
        .unwrap_or(Confidence::None);
    if let Some(p) = copies.iter().find(|p| p.outcome == Outcome::Ambiguous) {
        let others: Vec<&str> = pairs
            .iter()
            .filter(|q| q.item == p.item && q.credential != ci && q.is_copy())
            .map(|q| credentials[q.credential].key_id.as_str())
            .collect();
        return not_ready(
            weakest,
            format!(
                "ambiguous: {} fits key {} equally well; retiring needs the right keyId",
                place(p),
                others.join(", ")
            ),
        );
    }
    if let Some(p) = copies
        .iter()
        .filter(|p| !p.confidence.meets(min))
        .min_by_key(|p| p.confidence.rank())
    {
        return not_ready(
            weakest,
            format!(
                "copy {} is only {}; every copy must be {} or more (no partial coverage)",
                place(p),
                p.confidence.as_str(),
                min.as_str()
            ),
        );
    }
    // A vault of any tenant may hold a copy (apps of one tenant keep secrets in another's
    // vaults), so anything unread leaves every credential's coverage unknown.
    let unread: Vec<String> = unreachable
        .iter()
        .filter(|u| {
            !(u.kind == UnreachableKind::VaultCertificates && c.kind == CredentialKind::Password)
        })
        .map(|u| format!("{} {}", u.kind.as_str().replace('_', " "), u.name))
        .collect();
    if !unread.is_empty() {
        return not_ready(
            weakest,
            format!(
                "{} could not be read; a copy may live there",
                unread.join(", ")
            ),
        );
    }
    if c.origin == Origin::ServicePrincipal {
        return not_ready(
            weakest,
            "a service principal's credential: reported, rotated only when configured".into(),
        );
    }
    Verdict {
        confidence: weakest,
        ready: true,
        reason: format!("every copy ({}) is {} or more", copies.len(), min.as_str()),
    }
}

/// The credentials and items, sorted and without duplicates: the result must not depend
/// on the order Graph and Key Vault listed them in. Secrets that back certificates are
/// left out (the certificate stands for them).
fn sorted(inventory: &Inventory) -> (Vec<AppCredential>, Vec<VaultItem>) {
    let mut credentials = inventory.credentials.clone();
    credentials.sort_by(|a, b| {
        a.sort_key()
            .cmp(&b.sort_key())
            .then_with(|| credential_rest(a).cmp(&credential_rest(b)))
    });
    credentials.dedup_by(|a, b| a.sort_key() == b.sort_key());
    let mut items: Vec<VaultItem> = inventory
        .items
        .iter()
        .filter(|i| !i.managed)
        .cloned()
        .collect();
    items.sort_by(|a, b| a.cmp_key(b).then_with(|| item_rest(a).cmp(&item_rest(b))));
    items.dedup_by(|a, b| a.cmp_key(b).is_eq());
    (credentials, items)
}

/// Every field, so duplicates sort the same whatever order they came in.
type CredentialRest<'a> = (
    (&'a str, &'a str, Option<&'a String>),
    (Option<i64>, Option<i64>, CredentialKind),
    (Option<&'a String>, Option<super::model::Thumbprint>),
);

fn credential_rest(c: &AppCredential) -> CredentialRest<'_> {
    (
        (&c.app_id, &c.app_name, c.display_name.as_ref()),
        (c.start_ms, c.end_ms, c.kind),
        (c.hint.as_ref(), c.thumbprint),
    )
}

/// Every field, so duplicates sort the same whatever order they came in.
type ItemRest<'a> = (
    (&'a str, &'a str, &'a BTreeMap<String, String>),
    (Option<&'a String>, Option<i64>, Option<i64>),
    (bool, Option<super::model::Thumbprint>, bool),
);

fn item_rest(i: &VaultItem) -> ItemRest<'_> {
    (
        (&i.tenant, &i.name, &i.tags),
        (i.content_type.as_ref(), i.exp_ms, i.created_ms),
        (i.enabled, i.x5t, i.managed),
    )
}

/// The item indexes candidates are found through.
struct Index {
    by_tag_value: HashMap<String, Vec<usize>>,
    by_x5t: HashMap<[u8; 20], Vec<usize>>,
    by_token: HashMap<String, Vec<usize>>,
    tokens: Vec<Vec<String>>,
    /// `(vault, joined tokens)` of every item, for sibling lookups.
    names: HashMap<(String, String), usize>,
    items_name: Vec<String>,
}

impl Index {
    fn new(items: &[VaultItem]) -> Self {
        let mut by_tag_value: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_x5t: HashMap<[u8; 20], Vec<usize>> = HashMap::new();
        let mut by_token: HashMap<String, Vec<usize>> = HashMap::new();
        let mut tokens = Vec::with_capacity(items.len());
        let mut names = HashMap::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            for v in item.tags.values() {
                let list = by_tag_value.entry(id_key(v)).or_default();
                if list.last() != Some(&k) {
                    list.push(k);
                }
            }
            if let Some(t) = item.x5t {
                by_x5t.entry(t.0).or_default().push(k);
            }
            let toks = name_tokens(&item.name);
            let mut seen: Vec<&str> = Vec::with_capacity(toks.len());
            for t in &toks {
                if !seen.contains(&t.as_str()) {
                    seen.push(t);
                    by_token.entry(t.clone()).or_default().push(k);
                }
            }
            names
                .entry((item.vault.clone(), toks.join("-")))
                .or_insert(k);
            tokens.push(toks);
        }
        Self {
            by_tag_value,
            by_x5t,
            by_token,
            tokens,
            names,
            items_name: items.iter().map(|i| i.name.clone()).collect(),
        }
    }

    /// Items reachable from `c` (whose names are `names`), sorted, without repeats.
    fn candidates(&self, c: &AppCredential, names: &Names) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for id in [&c.key_id, &c.app_id, &c.object_id] {
            if let Some(list) = self.by_tag_value.get(id.as_str()) {
                out.extend(list);
            }
        }
        if let Some(list) = self.by_tag_value.get(&id_key(&c.app_name)) {
            out.extend(list);
        }
        if let Some(list) = c.thumbprint.and_then(|t| self.by_x5t.get(&t.0)) {
            out.extend(list);
        }
        if meaningful(&names.app) {
            out.extend(self.rarest(&names.app));
        }
        for (_, expanded) in &names.templates {
            if meaningful(expanded) {
                out.extend(self.rarest(expanded));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The items holding the least common of `tokens` (all must be there for a name
    /// signal, so the rarest is enough to find them).
    fn rarest(&self, tokens: &[String]) -> &[usize] {
        tokens
            .iter()
            .map(|t| self.by_token.get(t).map_or(&[][..], Vec::as_slice))
            .min_by_key(|l| l.len())
            .unwrap_or(&[])
    }
}

/// A name's tokens: runs of letters and digits, split again at lower-to-upper case
/// changes (`PaymentsApi` → `payments`, `api`), lower-cased.
pub fn name_tokens(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        current.extend(ch.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A credential's name tokens, once: its app's, and each name template's for it.
struct Names<'r> {
    app: Vec<String>,
    templates: Vec<(&'r str, Vec<String>)>,
}

impl<'r> Names<'r> {
    fn of(c: &AppCredential, rules: &'r Rules) -> Self {
        Self {
            app: name_tokens(&c.app_name),
            templates: rules
                .name_templates
                .iter()
                .map(|t| (t.as_str(), name_tokens(&expand(t, c))))
                .collect(),
        }
    }
}

/// Too short a name matches everything: at least three characters.
fn meaningful(tokens: &[String]) -> bool {
    tokens.iter().map(String::len).sum::<usize>() >= 3
}

fn expand(template: &str, c: &AppCredential) -> String {
    template
        .replace("{app}", &c.app_name)
        .replace("{app_id}", &c.app_id)
}

fn contains_run(haystack: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Name endings of an item holding a client secret or certificate, and of its sibling
/// holding the client id.
const SECRET_ENDINGS: &[&[&str]] = &[
    &["client", "secret"],
    &["clientsecret"],
    &["secret"],
    &["password"],
    &["certificate"],
    &["cert"],
];
const ID_ENDINGS: &[&[&str]] = &[
    &["client", "id"],
    &["clientid"],
    &["app", "id"],
    &["appid"],
    &["application", "id"],
];

fn ends_with(tokens: &[String], ending: &[&str]) -> bool {
    tokens.len() >= ending.len()
        && tokens[tokens.len() - ending.len()..]
            .iter()
            .zip(ending)
            .all(|(a, b)| a == b)
}

/// Whether the item's name says it holds a client id (not a credential).
fn is_id_item(tokens: &[String]) -> bool {
    ID_ENDINGS.iter().any(|e| ends_with(tokens, e))
}

/// The sibling holding the client id, if the vault has one.
fn sibling(index: &Index, item: &VaultItem, ii: usize) -> Option<String> {
    let tokens = &index.tokens[ii];
    for ending in SECRET_ENDINGS {
        if !ends_with(tokens, ending) || tokens.len() == ending.len() {
            continue;
        }
        let stem = &tokens[..tokens.len() - ending.len()];
        for id in ID_ENDINGS {
            let mut name: Vec<&str> = stem.iter().map(String::as_str).collect();
            name.extend_from_slice(id);
            if let Some(&k) = index.names.get(&(item.vault.clone(), name.join("-"))) {
                return Some(index.items_name[k].clone());
            }
        }
    }
    None
}

/// The environment a token names, if any.
fn environment(token: &str) -> Option<&'static str> {
    Some(match token {
        "prod" | "prd" | "production" | "live" => "prod",
        "dev" | "development" => "dev",
        "test" | "tst" | "testing" => "test",
        "qa" => "qa",
        "uat" => "uat",
        "stage" | "staging" | "stg" => "staging",
        "preprod" => "preprod",
        "sandbox" | "sbx" => "sandbox",
        _ => return None,
    })
}

/// Whether a content type says the secret holds this kind of credential.
fn content_type_says(kind: CredentialKind, ct: &str) -> bool {
    let ct = ct.to_ascii_lowercase();
    let words: &[&str] = match kind {
        CredentialKind::Password => &["secret", "password", "client"],
        CredentialKind::Certificate => &["pkcs12", "pem", "x-pkcs", "certificate"],
    };
    words.iter().any(|w| ct.contains(w))
}

fn content_type_fits(kind: CredentialKind, item: &VaultItem) -> Option<String> {
    if item.kind == ItemKind::Certificate {
        return None;
    }
    let ct = item.content_type.as_deref()?;
    content_type_says(kind, ct).then(|| ct.to_ascii_lowercase())
}

/// Whether the item's content type says it holds the other kind of credential (a client
/// secret is no certificate, a PKCS#12 bundle no password).
fn content_type_contradicts(kind: CredentialKind, item: &VaultItem) -> bool {
    let other = match kind {
        CredentialKind::Password => CredentialKind::Certificate,
        CredentialKind::Certificate => CredentialKind::Password,
    };
    item.kind == ItemKind::Secret
        && item
            .content_type
            .as_deref()
            .is_some_and(|ct| content_type_says(other, ct) && !content_type_says(kind, ct))
}

struct Scored {
    score: u32,
    definitive: bool,
    identity: bool,
    evidence: Vec<Evidence>,
    vetoes: Vec<VetoEvidence>,
}

fn near(a: Option<i64>, b: Option<i64>, within_ms: i64) -> bool {
    matches!((a, b), (Some(a), Some(b)) if (a - b).abs() <= within_ms)
}

fn add(ev: &mut Vec<Evidence>, signal: Signal, detail: &str) {
    if !ev.iter().any(|e| e.signal == signal) {
        ev.push(Evidence {
            signal,
            detail: detail.to_owned(),
        });
    }
}

fn veto(vetoes: &mut Vec<VetoEvidence>, veto: Veto, detail: &str) {
    vetoes.push(VetoEvidence {
        veto,
        detail: detail.to_owned(),
    });
}

/// Scores one pair (`ii` is the item's index); `None` when the item cannot hold this kind
/// of credential.
fn score(
    c: &AppCredential,
    names: &Names<'_>,
    item: &VaultItem,
    ii: usize,
    index: &Index,
    rules: &Rules,
    hints: &Hints,
) -> Option<Scored> {
    match (c.kind, item.kind) {
        (CredentialKind::Password, ItemKind::Certificate) => return None,
        _ if item.managed => return None,
        _ => {}
    }
    let mut ev: Vec<Evidence> = Vec::new();
    let mut vetoes: Vec<VetoEvidence> = Vec::new();

    // Tags: rekey's own pair first, then every tag by value, then the keys that name.
    let tag = |key: &str| {
        item.tags
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| id_key(v))
    };
    let rekey_own = tag(REKEY_APP_ID_TAG).as_deref() == Some(c.app_id.as_str())
        && tag(REKEY_KEY_ID_TAG).as_deref() == Some(c.key_id.as_str());
    if rekey_own {
        add(&mut ev, Signal::RekeyTags, "");
    }
    for (k, v) in &item.tags {
        let value = id_key(v);
        if value == c.key_id {
            if !rekey_own {
                add(&mut ev, Signal::TagKeyId, k);
            }
        } else if rules.tag_keys.is_key_id(k) && looks_like_guid(&value) {
            // A key tag naming another key: of this app or of another one.
            veto(&mut vetoes, Veto::TagOtherKey, k);
        }
        if value == c.app_id || value == c.object_id {
            if !rekey_own {
                add(&mut ev, Signal::AppIdTag, k);
            }
        } else if rules.tag_keys.is_app_id(k) && looks_like_guid(&value) {
            veto(&mut vetoes, Veto::TagOtherApp, k);
        }
        if rules.tag_keys.is_app_name(k) && v.trim().eq_ignore_ascii_case(c.app_name.trim()) {
            add(&mut ev, Signal::AppNameTag, k);
        }
    }

    // Certificates: the thumbprint decides.
    if c.kind == CredentialKind::Certificate
        && let (Some(x5t), Some(thumb)) = (item.x5t, c.thumbprint)
    {
        if x5t == thumb {
            add(&mut ev, Signal::Thumbprint, "");
        } else {
            veto(&mut vetoes, Veto::ThumbprintMismatch, "");
        }
    }

    let definitive_so_far = ev.iter().any(|e| e.signal.spec().definitive);
    let tokens = &index.tokens[ii];
    if !definitive_so_far && (is_id_item(tokens) || content_type_contradicts(c.kind, item)) {
        // `<app>-client-id` holds the client id, not the credential; a secret whose
        // content type names the other kind of credential does not hold this one.
        return None;
    }

    // Hint (only when a value was read).
    if c.kind == CredentialKind::Password {
        let key = HintKey {
            key_id: c.key_id.clone(),
            vault: item.vault.clone(),
            item: item.name.to_ascii_lowercase(),
        };
        match hints.get(&key) {
            Some(true) => add(&mut ev, Signal::HintMatch, ""),
            Some(false) => veto(&mut vetoes, Veto::HintMismatch, ""),
            None => {}
        }
    }

    // Names.
    let app = &names.app;
    let template = names.templates.iter().find(|(_, t)| t == tokens);
    if let Some((t, _)) = template {
        add(&mut ev, Signal::NameTemplate, t);
    } else if meaningful(app) && contains_run(tokens, app) {
        add(&mut ev, Signal::NameContainsApp, "");
    }
    if let Some(s) = sibling(index, item, ii) {
        add(&mut ev, Signal::ClientIdSibling, &s);
    }

    // Dates, content type, environment.
    if near(item.exp_ms, c.end_ms, EXPIRY_NEAR_MS) {
        add(&mut ev, Signal::ExpiryNearEnd, "");
    }
    if near(item.created_ms, c.start_ms, CREATED_NEAR_MS) {
        add(&mut ev, Signal::CreatedNearStart, "");
    }
    if let Some(ct) = content_type_fits(c.kind, item) {
        add(&mut ev, Signal::ContentType, &ct);
    }
    let app_envs: Vec<&str> = app.iter().filter_map(|t| environment(t)).collect();
    if !app_envs.is_empty() {
        let shared = tokens
            .iter()
            .chain(name_tokens(&item.vault).iter())
            .filter_map(|t| environment(t))
            .find(|e| app_envs.contains(e));
        if let Some(e) = shared {
            add(&mut ev, Signal::EnvironmentShared, e);
        }
    }

    ev.sort();
    vetoes.sort();
    vetoes.dedup();
    let score = ev.iter().map(|e| e.signal.spec().points).sum();
    Some(Scored {
        score,
        definitive: ev.iter().any(|e| e.signal.spec().definitive),
        identity: ev.iter().any(|e| e.signal.spec().identity),
        evidence: ev,
        vetoes,
    })
}

/// The confidence a score gives, before vetoes and ties.
fn level(s: &Scored) -> Confidence {
    if s.definitive || (s.score >= HIGH_MIN && s.identity) {
        Confidence::High
    } else if s.score >= MEDIUM_MIN {
        Confidence::Medium
    } else if s.score >= LOW_MIN {
        Confidence::Low
    } else {
        Confidence::None
    }
}
