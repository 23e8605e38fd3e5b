//! Decoding a journaled [`RotationEvent`] without buffering it.
//!
//! The journal stores payloads with sorted keys, so an event's `"type"` tag comes after
//! most of its fields. serde's derive for an internally tagged enum therefore copies every
//! field into an intermediate tree before it knows the variant, which made decoding the
//! largest cost of folding a journal. The journal records each event's kind beside its
//! payload, so [`RotationEvent::from_journal`] takes the variant from the kind and decodes
//! its fields straight from the text, checking on the way that the payload's `"type"` is
//! that kind. Of an object it accepts and refuses what the derive does; the tests hold
//! the two together.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::event::{ErrorClass, Plan, RotationEvent, StepId, Trigger};

impl RotationEvent {
    /// Decodes the event a journal recorded as `kind` with this JSON `payload`: as
    /// `serde_json::from_str` decodes an object, about 1.5 times as fast.
    ///
    /// # Errors
    /// The payload is not one JSON object, its `"type"` is missing or is not `kind`, `kind`
    /// names no event, or a field of the event is missing or malformed.
    pub fn from_journal(kind: &str, payload: &str) -> serde_json::Result<RotationEvent> {
        let mut text = serde_json::Deserializer::from_str(payload);
        let event = ByType::deserialize(Tagged {
            kind,
            text: &mut text,
        })?;
        text.end()?;
        Ok(event)
    }
}

/// [`RotationEvent`] externally tagged: the same variants and fields (the compiler checks
/// they match), decoded given the variant's name.
#[derive(Deserialize)]
#[serde(remote = "RotationEvent")]
enum ByType {
    Requested {
        rotation_id: String,
        plan: Plan,
        trigger: Trigger,
        actor: String,
    },
    StepStarted {
        step: StepId,
        attempt: u32,
        key: String,
    },
    StepSucceeded {
        step: StepId,
        id: Option<String>,
        reconciled: bool,
    },
    StepFailed {
        step: StepId,
        attempt: u32,
        class: ErrorClass,
        message: String,
        retry_at_ms: Option<i64>,
    },
    StepNotApplied {
        step: StepId,
        orphan_discarded: Option<String>,
    },
    ValueLost {
        credential_id: Option<String>,
    },
    CompensationStarted {
        reason: String,
    },
    GraceScheduled {
        due_at_ms: i64,
    },
    Completed,
    Compensated,
}

/// The payload as an externally tagged enum: the variant is the journaled kind, and its
/// content the payload's object, whose `"type"` is checked and then hidden from the
/// variant (which, as the derive's, skips no other field it does not know).
struct Tagged<'a, 'de> {
    kind: &'a str,
    text: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
}

impl<'de> Deserializer<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> serde_json::Result<V::Value> {
        Err(de::Error::custom(
            "a rotation event decodes only as an enum",
        ))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> serde_json::Result<(S::Value, Self)> {
        let name: de::value::StrDeserializer<'_, serde_json::Error> = self.kind.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    /// A unit variant's payload is its tag alone; any other field is ignored.
    fn unit_variant(self) -> serde_json::Result<()> {
        self.text.deserialize_map(Checked {
            kind: self.kind,
            fields: Skip,
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        self.text.deserialize_map(Checked {
            kind: self.kind,
            fields: visitor,
        })
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _: S) -> serde_json::Result<S::Value> {
        Err(de::Error::custom("rotation events have no newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> serde_json::Result<V::Value> {
        Err(de::Error::custom("rotation events have no tuple variant"))
    }
}

/// Visits the payload's object with `fields`, through [`TagChecked`].
struct Checked<'a, V> {
    kind: &'a str,
    fields: V,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Checked<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} event object", self.kind)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.fields.visit_map(TagChecked {
            kind: self.kind,
            map,
            tagged: false,
        })
    }
}

/// The payload's entries without its `"type"`, which must be present once and name `kind`.
struct TagChecked<'a, A> {
    kind: &'a str,
    map: A,
    tagged: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TagChecked<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(Text(key)) = self.map.next_key()? else {
                return match self.tagged {
                    true => Ok(None),
                    false => Err(de::Error::missing_field("type")),
                };
            };
            if key != "type" {
                let key: de::value::StrDeserializer<'_, A::Error> =
                    key.as_ref().into_deserializer();
                return seed.deserialize(key).map(Some);
            }
            if std::mem::replace(&mut self.tagged, true) {
                return Err(de::Error::duplicate_field("type"));
            }
            let Text(tag) = self.map.next_value()?;
            if tag != self.kind {
                return Err(de::Error::custom(format_args!(
                    "the payload's type `{tag}` is not the journaled kind `{}`",
                    self.kind
                )));
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A JSON string, borrowed from the payload unless it has escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// A unit variant's fields: every one is read and ignored.
struct Skip;

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<de::IgnoredAny>()?.is_some() {
            map.next_value::<de::IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::saga::{Action, Role, TargetRef};

    /// One event of every variant, with every optional field set.
    fn one_of_each() -> Vec<RotationEvent> {
        let step = StepId::new(Action::Write, 1);
        let plan = Plan {
            secret: "payments-api".into(),
            lock_key: "payments-api".into(),
            targets: vec![
                TargetRef::new(Role::Rotator, "random"),
                TargetRef::new(Role::Store, "vault"),
            ],
            grace_ms: 60_000,
            attempts_max: 3,
        };
        vec![
            RotationEvent::Requested {
                rotation_id: "r1".into(),
                plan,
                trigger: Trigger::Bulk,
                actor: "ops \"quoted\" \u{e9}".into(),
            },
            RotationEvent::StepStarted {
                step,
                attempt: 2,
                key: "k".into(),
            },
            RotationEvent::StepSucceeded {
                step,
                id: Some("v2".into()),
                reconciled: true,
            },
            RotationEvent::StepFailed {
                step,
                attempt: 1,
                class: ErrorClass::RateLimited,
                message: "throttled".into(),
                retry_at_ms: Some(-5),
            },
            RotationEvent::StepNotApplied {
                step,
                orphan_discarded: Some("v3".into()),
            },
            RotationEvent::ValueLost {
                credential_id: Some("c".into()),
            },
            RotationEvent::CompensationStarted { reason: "r".into() },
            RotationEvent::GraceScheduled { due_at_ms: 7 },
            RotationEvent::Completed,
            RotationEvent::Compensated,
        ]
    }

    /// Both decoders, side by side: the same value, or both an error. The kind journaled
    /// beside the payload is its `"type"`, as rekey writes it.
    fn agree(text: &str) -> Option<RotationEvent> {
        let derived = serde_json::from_str::<RotationEvent>(text);
        let kind = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| Some(v.get("type")?.as_str()?.to_owned()))
            .unwrap_or_default();
        let fast = RotationEvent::from_journal(&kind, text);
        match (derived, fast) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{text}");
                Some(b)
            }
            (Err(_), Err(_)) => None,
            (a, b) => panic!("the decoders disagree on {text}: derive {a:?}, from_journal {b:?}"),
        }
    }

    #[test]
    fn every_variant_decodes_as_the_derive_decodes_it() {
        let events = one_of_each();
        assert_eq!(events.len(), 10, "one of each variant");
        for e in events {
            // As serde writes it (tag first) and as the journal stores it (keys sorted).
            let written = serde_json::to_string(&e).unwrap();
            let canonical = serde_json::to_value(&e).unwrap().to_string();
            for text in [written, canonical] {
                assert_eq!(agree(&text), Some(e.clone()), "{text}");
            }
        }
    }

    #[test]
    fn every_payload_missing_or_mistyping_a_field_is_judged_as_the_derive_judges_it() {
        let mut judged = (0, 0);
        for e in one_of_each() {
            let Value::Object(fields) = serde_json::to_value(&e).unwrap() else {
                panic!("an event is an object")
            };
            for key in fields.keys() {
                for change in [None, Some(Value::Bool(true)), Some(Value::Null)] {
                    let mut changed = fields.clone();
                    match change {
                        None => changed.remove(key),
                        Some(v) => changed.insert(key.clone(), v),
                    };
                    let text = Value::Object(changed).to_string();
                    match agree(&text) {
                        Some(_) => judged.0 += 1,
                        None => judged.1 += 1,
                    }
                }
            }
        }
        // Nulls in optional fields are accepted; most changes are refused.
        assert!(judged.0 > 0 && judged.1 > judged.0, "{judged:?}");
    }

    #[test]
    fn malformed_payloads_are_refused_by_both() {
        for text in [
            "",
            "not json",
            "{}",
            "[]",
            r#""Completed""#,
            r#"{"type":"Nope"}"#,
            r#"{"type":7}"#,
            r#"{"type":"GraceScheduled"}"#,
            r#"{"due_at_ms":"soon","type":"GraceScheduled"}"#,
            r#"{"type":"Completed"} trailing"#,
            r#"{"type":"Completed","type":"Completed"}"#,
        ] {
            assert_eq!(agree(text), None, "{text}");
        }
        // Fields a variant does not know are skipped by both.
        assert_eq!(
            agree(r#"{"later":{"x":[1]},"type":"Completed"}"#),
            Some(RotationEvent::Completed)
        );
    }

    #[test]
    fn a_payload_must_name_its_journaled_kind_once() {
        let refusal = |kind: &str, text: &str| {
            RotationEvent::from_journal(kind, text)
                .expect_err(text)
                .to_string()
        };
        let wrong = refusal("Completed", r#"{"type":"Compensated"}"#);
        assert!(
            wrong.contains("`Compensated` is not the journaled kind `Completed`"),
            "{wrong}"
        );
        assert!(refusal("GraceScheduled", r#"{"due_at_ms":1}"#).contains("missing field `type`"));
        assert!(
            refusal("Completed", r#"{"type":"Completed","type":"Completed"}"#)
                .contains("duplicate field `type`")
        );
        assert!(refusal("Nope", r#"{"type":"Nope"}"#).contains("unknown variant `Nope`"));
        assert!(refusal("Completed", r#"{"type":"Completed"} x"#).contains("trailing characters"));
        // Only an object is an event, though the derive would also read an array.
        refusal("Completed", r#"["Completed"]"#);
        assert_eq!(
            RotationEvent::from_journal(
                "GraceScheduled",
                r#"{"due_at_ms":1,"type":"GraceScheduled"}"#
            )
            .unwrap(),
            RotationEvent::GraceScheduled { due_at_ms: 1 }
        );
    }
}
