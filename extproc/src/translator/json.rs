//! Top-level JSON object access without building a tree: each member's value stays a borrowed
//! raw slice, so a large prompt is scanned once and copied once, never re-encoded.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The members of a JSON object, in order, values unparsed.
#[derive(Debug)]
pub struct RawObject<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Why a body is not a usable JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawObjectError {
    /// Not JSON, or not an object.
    Syntax(String),
    /// The same member twice (ambiguous between us and the provider).
    Duplicate(String),
}

impl<'a> RawObject<'a> {
    /// Parses `body` as one JSON object.
    pub fn parse(body: &'a [u8]) -> Result<Self, RawObjectError> {
        let obj: RawObject<'a> =
            serde_json::from_slice(body).map_err(|e| RawObjectError::Syntax(e.to_string()))?;
        if let Some(k) = first_duplicate(&obj.members) {
            return Err(RawObjectError::Duplicate(k.to_string()));
        }
        Ok(obj)
    }

    /// The raw value of a member.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The members, in order, values unparsed.
    pub fn members(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.members.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Writes the object back, with `replace` members substituted (or appended when absent).
    /// Replacement values must already be JSON text.
    pub fn write_with(&self, replace: &[(&str, &str)], capacity_hint: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity_hint + 64);
        out.push(b'{');
        let mut first = true;
        let mut push = |out: &mut Vec<u8>, k: &str, v: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            // Keys came from valid JSON or from us; serialising a str cannot fail.
            out.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        };
        for (k, v) in &self.members {
            let value = replace
                .iter()
                .find(|(rk, _)| *rk == k)
                .map(|(_, rv)| *rv)
                .unwrap_or(v.get());
            push(&mut out, k, value);
        }
        for (rk, rv) in replace {
            if self.get(rk).is_none() {
                push(&mut out, rk, rv);
            }
        }
        out.push(b'}');
        out
    }
}

/// The first member named twice. Linear: a few members are compared pairwise, more go
/// through a hash set (pairwise comparison of every member was quadratic: 100,000 members
/// took seconds).
fn first_duplicate<'m>(members: &'m [(Cow<'_, str>, &RawValue)]) -> Option<&'m str> {
    if members.len() <= 16 {
        return members.iter().enumerate().find_map(|(i, (k, _))| {
            members[..i]
                .iter()
                .any(|(other, _)| other == k)
                .then_some(k.as_ref())
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .find_map(|(k, _)| (!seen.insert(k.as_ref())).then_some(k.as_ref()))
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((k.0, v));
                }
                Ok(RawObject { members })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_rewritten_in_place_and_appended() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"hi \"there\""}],"n":1}"#;
        let obj = RawObject::parse(body).unwrap();
        assert_eq!(obj.get("model").unwrap().get(), r#""a""#);
        let out = obj.write_with(&[("model", r#""b""#), ("extra", "true")], body.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "b");
        assert_eq!(v["extra"], true);
        assert_eq!(v["messages"][0]["content"], "hi \"there\"");
        assert_eq!(v["n"], 1);
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .starts_with(r#"{"model":"b","messages""#));
    }

    #[test]
    fn escaped_keys_and_errors() {
        let obj = RawObject::parse(br#"{"mo\u0064el":"x"}"#).unwrap();
        assert_eq!(obj.get("model").unwrap().get(), r#""x""#);
        assert!(matches!(
            RawObject::parse(b"[1]"),
            Err(RawObjectError::Syntax(_))
        ));
        assert!(matches!(
            RawObject::parse(b"{\"a\":"),
            Err(RawObjectError::Syntax(_))
        ));
        assert_eq!(
            RawObject::parse(br#"{"model":"a","model":"b"}"#).unwrap_err(),
            RawObjectError::Duplicate("model".into())
        );
        // Many members: the hash-set path finds the same.
        let mut wide: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        wide.insert(0, '{');
        wide.push_str("\"k7\":0}");
        assert_eq!(
            RawObject::parse(wide.as_bytes()).unwrap_err(),
            RawObjectError::Duplicate("k7".into())
        );
    }

    #[test]
    fn a_hundred_thousand_members_parse_in_linear_time() {
        let mut body = String::from("{\"model\":\"m\"");
        for i in 0..100_000 {
            body.push_str(&format!(",\"k{i}\":{i}"));
        }
        body.push('}');
        let started = std::time::Instant::now();
        let obj = RawObject::parse(body.as_bytes()).unwrap();
        assert_eq!(obj.get("k99999").unwrap().get(), "99999");
        // Seconds when the duplicate check was quadratic; milliseconds now (debug build).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
