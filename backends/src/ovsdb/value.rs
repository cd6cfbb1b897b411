//! OVSDB values (RFC 7047 §5.1) and their JSON notation.
//!
//! OVSDB does not use plain JSON for columns: UUIDs are `["uuid", "…"]`, sets are
//! `["set", [...]]` (but a one-element set may be sent as the bare atom, and an optional column
//! that is empty is `["set", []]`), maps are `["map", [[k, v], ...]]`. These types make that
//! notation explicit so ops are built without hand-written JSON and replies are parsed without
//! guessing.

use std::fmt;

use serde_json::{Value as Json, json};

use super::error::{OvsdbError, Result};

/// A row UUID as assigned by the server, validated to the canonical 8-4-4-4-12 hex form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Validates `s` as a canonical UUID string.
    pub fn parse(s: &str) -> Result<Self> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
        if lens_ok && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit())) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(OvsdbError::Value {
                value: format!("{s:?}"),
                reason: "not a UUID (expected 8-4-4-4-12 hex digits)".into(),
            })
        }
    }

    /// The UUID in its canonical lowercase text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One scalar OVSDB value.
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    Uuid(Uuid),
    /// Refers to a row inserted earlier in the same transaction (`uuid-name` of an insert op).
    NamedUuid(String),
}

impl Atom {
    /// A reference to the row that the insert op with `uuid_name == name` creates.
    pub fn named_uuid(name: impl Into<String>) -> Self {
        Self::NamedUuid(name.into())
    }

    /// JSON notation of this atom.
    pub fn to_json(&self) -> Json {
        match self {
            Self::Integer(i) => json!(i),
            Self::Real(r) => json!(r),
            Self::Boolean(b) => json!(b),
            Self::String(s) => json!(s),
            Self::Uuid(u) => json!(["uuid", u.as_str()]),
            Self::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// Parses the JSON notation of an atom.
    pub fn from_json(json: &Json) -> Result<Self> {
        let bad =
            |reason: &str| OvsdbError::Value { value: json.to_string(), reason: reason.into() };
        match json {
            Json::Bool(b) => Ok(Self::Boolean(*b)),
            Json::String(s) => Ok(Self::String(s.clone())),
            Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(Self::Integer(i)),
                (None, Some(r)) if !n.is_u64() => Ok(Self::Real(r)),
                _ => Err(bad("integer out of the 64-bit signed range")),
            },
            Json::Array(a) => match (a.first().and_then(Json::as_str), a.get(1), a.len()) {
                (Some("uuid"), Some(Json::String(u)), 2) => Ok(Self::Uuid(Uuid::parse(u)?)),
                (Some("named-uuid"), Some(Json::String(n)), 2) => Ok(Self::NamedUuid(n.clone())),
                _ => Err(bad("expected an atom or [\"uuid\"|\"named-uuid\", <string>]")),
            },
            Json::Null | Json::Object(_) => Err(bad("not an OVSDB atom")),
        }
    }

    /// The integer, if this is an integer atom.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The UUID, if this is a (server-assigned) UUID atom.
    pub fn as_uuid(&self) -> Option<&Uuid> {
        match self {
            Self::Uuid(u) => Some(u),
            _ => None,
        }
    }
}

impl From<i64> for Atom {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}

impl From<u16> for Atom {
    fn from(v: u16) -> Self {
        Self::Integer(v.into())
    }
}

impl From<bool> for Atom {
    fn from(v: bool) -> Self {
        Self::Boolean(v)
    }
}

impl From<&str> for Atom {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}

impl From<String> for Atom {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}

impl From<Uuid> for Atom {
    fn from(v: Uuid) -> Self {
        Self::Uuid(v)
    }
}

/// A column value: an atom, a set or a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Atom(Atom),
    Set(Vec<Atom>),
    Map(Vec<(Atom, Atom)>),
}

impl Value {
    /// The empty set: how an unset optional column (e.g. `Port.tag`) is written and read.
    pub fn empty() -> Self {
        Self::Set(Vec::new())
    }

    /// A set of atoms (`["set", [...]]`).
    pub fn set<A: Into<Atom>>(items: impl IntoIterator<Item = A>) -> Self {
        Self::Set(items.into_iter().map(Into::into).collect())
    }

    /// A map (`["map", [[k, v], ...]]`).
    pub fn map<K: Into<Atom>, V: Into<Atom>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self::Map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// JSON notation of this value.
    pub fn to_json(&self) -> Json {
        match self {
            Self::Atom(a) => a.to_json(),
            Self::Set(items) => json!(["set", items.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Self::Map(pairs) => json!([
                "map",
                pairs.iter().map(|(k, v)| json!([k.to_json(), v.to_json()])).collect::<Vec<_>>()
            ]),
        }
    }

    /// Parses the JSON notation of a column value.
    pub fn from_json(json: &Json) -> Result<Self> {
        let bad =
            |reason: &str| OvsdbError::Value { value: json.to_string(), reason: reason.into() };
        let Some(arr) = json.as_array() else {
            return Atom::from_json(json).map(Self::Atom);
        };
        match (arr.first().and_then(Json::as_str), arr.get(1), arr.len()) {
            (Some("set"), Some(Json::Array(items)), 2) => {
                items.iter().map(Atom::from_json).collect::<Result<_>>().map(Self::Set)
            }
            (Some("map"), Some(Json::Array(pairs)), 2) => pairs
                .iter()
                .map(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([k, v]) => Ok((Atom::from_json(k)?, Atom::from_json(v)?)),
                    _ => Err(bad("map entries must be [key, value] pairs")),
                })
                .collect::<Result<_>>()
                .map(Self::Map),
            _ => Atom::from_json(json).map(Self::Atom),
        }
    }

    /// The elements of a set-typed column, accepting the bare-atom form of a one-element set.
    pub fn into_atoms(self) -> std::result::Result<Vec<Atom>, String> {
        match self {
            Self::Atom(a) => Ok(vec![a]),
            Self::Set(items) => Ok(items),
            Self::Map(_) => Err("expected a set or atom, found a map".into()),
        }
    }

    /// The pairs of a map-typed column.
    pub fn into_pairs(self) -> std::result::Result<Vec<(Atom, Atom)>, String> {
        match self {
            Self::Map(pairs) => Ok(pairs),
            other => Err(format!("expected a map, found {}", other.to_json())),
        }
    }
}

impl<T: Into<Atom>> From<T> for Value {
    fn from(v: T) -> Self {
        Self::Atom(v.into())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";

    #[test]
    fn atom_notation() {
        let uuid = Uuid::parse(U).unwrap();
        assert_eq!(Atom::from(4095u16).to_json(), json!(4095));
        assert_eq!(Atom::from("trunk").to_json(), json!("trunk"));
        assert_eq!(Atom::from(uuid.clone()).to_json(), json!(["uuid", U]));
        assert_eq!(Atom::named_uuid("p").to_json(), json!(["named-uuid", "p"]));
        assert_eq!(Atom::from_json(&json!(["uuid", U])).unwrap(), Atom::Uuid(uuid));
        assert_eq!(Atom::from_json(&json!(1.5)).unwrap(), Atom::Real(1.5));
        assert_eq!(Atom::from_json(&json!(-3)).unwrap(), Atom::Integer(-3));
    }

    #[test]
    fn set_and_map_notation() {
        assert_eq!(Value::set([4095u16]).to_json(), json!(["set", [4095]]));
        assert_eq!(Value::empty().to_json(), json!(["set", []]));
        assert_eq!(
            Value::map([("tag", "5"), ("net_uuid", "x")]).to_json(),
            json!(["map", [["tag", "5"], ["net_uuid", "x"]]])
        );
        let v = Value::from_json(&json!(["map", [["iface-id", "abc"]]])).unwrap();
        assert_eq!(v, Value::map([("iface-id", "abc")]));
        assert_eq!(Value::from_json(&json!(7)).unwrap(), Value::from(7i64));
    }

    #[test]
    fn one_element_set_may_be_a_bare_atom() {
        let bare = Value::from_json(&json!(4095)).unwrap();
        assert_eq!(bare.into_atoms().unwrap(), vec![Atom::Integer(4095)]);
        let empty = Value::from_json(&json!(["set", []])).unwrap();
        assert!(empty.into_atoms().unwrap().is_empty());
        assert!(Value::map([("a", "b")]).into_atoms().is_err());
        assert!(Value::from(1i64).into_pairs().is_err());
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            json!(null),
            json!({"a": 1}),
            json!(["uuid", "not-a-uuid"]),
            json!(["uuid", 5]),
            json!(["set", [null]]),
            json!(["map", [["k"]]]),
            json!(["frob", []]),
            json!(18446744073709551615u64),
        ] {
            let err = Value::from_json(&bad).unwrap_err();
            assert!(!err.is_transient());
            assert!(err.to_string().contains("invalid OVSDB value"), "{err}");
        }
    }

    fn atom_strategy() -> impl Strategy<Value = Atom> {
        prop_oneof![
            any::<i64>().prop_map(Atom::Integer),
            // Short fractions: serde_json's default float parser is not exact for 17 digits.
            (-1_000_000i32..1_000_000).prop_map(|i| Atom::Real(f64::from(i) + 0.25)),
            any::<bool>().prop_map(Atom::Boolean),
            ".{0,16}".prop_map(Atom::String),
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                .prop_map(|s| Atom::Uuid(Uuid::parse(&s).unwrap())),
            "[a-z_]{1,8}".prop_map(Atom::NamedUuid),
        ]
    }

    proptest! {
        #[test]
        fn value_roundtrip(kind in 0u8..3, atoms in proptest::collection::vec(atom_strategy(), 0..5)) {
            let value = match kind {
                0 => Value::Atom(atoms.first().cloned().unwrap_or(Atom::Boolean(true))),
                1 => Value::Set(atoms),
                _ => Value::Map(atoms.iter().cloned().zip(atoms.iter().rev().cloned()).collect()),
            };
            let text = value.to_json().to_string();
            let parsed = Value::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
            prop_assert_eq!(parsed, value);
        }

        #[test]
        fn from_json_never_panics(s in "[\\[\\]\"a-z0-9,{}:.\\-]{0,40}") {
            if let Ok(json) = serde_json::from_str::<Json>(&s) {
                let _ = Value::from_json(&json);
            }
        }
    }
}
