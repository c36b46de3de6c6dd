//! The model the history is checked against: one register per key, whose state is a small
//! id standing for absence or for one of the key's values (interned, so that states compare
//! and hash as integers). Used by [`super::ops`] to reduce unknown outcomes, by the search
//! for its transitions and by the explanation to print states.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// Model state id: 0 is "absent", `n > 0` is `Some(value n)` of the key's interner.
pub(super) type State = u32;
pub(super) const ABSENT: State = 0;

/// An operation reduced to what the model needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Write(State),
    Delete,
    Read(State),
}

/// The register's transition: the state after `kind`, or `None` if `kind` is illegal in
/// `state`.
pub(super) fn step(state: State, kind: Kind) -> Option<State> {
    match kind {
        Kind::Write(v) => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(seen) => (seen == state).then_some(state),
    }
}

/// The state an operation leaves behind if it is linearized (reads leave it unchanged, so
/// this is only meaningful for writes and deletes).
pub(super) fn result_of(kind: Kind) -> Option<State> {
    match kind {
        Kind::Write(v) => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(_) => None,
    }
}

/// A JSON value hashed consistently with its `==` (object keys in sorted order, so the
/// result does not depend on serde_json's map representation).
struct ValueKey<'a>(&'a Value);

impl PartialEq for ValueKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ValueKey<'_> {}

impl Hash for ValueKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_value(self.0, h);
    }
}

fn hash_value<H: Hasher>(v: &Value, h: &mut H) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            b.hash(h);
        }
        Value::Number(n) => {
            h.write_u8(2);
            // `Number`'s == compares representation (u64, i64 or f64) and value.
            if let Some(u) = n.as_u64() {
                h.write_u8(0);
                h.write_u64(u);
            } else if let Some(i) = n.as_i64() {
                h.write_u8(1);
                h.write_i64(i);
            } else if let Some(f) = n.as_f64() {
                h.write_u8(2);
                // 0.0 == -0.0 but their bits differ.
                h.write_u64(if f == 0.0 { 0 } else { f.to_bits() });
            } else {
                n.to_string().hash(h);
            }
        }
        Value::String(s) => {
            h.write_u8(3);
            s.hash(h);
        }
        Value::Array(a) => {
            h.write_u8(4);
            h.write_usize(a.len());
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(m) => {
            h.write_u8(5);
            h.write_usize(m.len());
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, x) in entries {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

/// Maps the values of one key to small state ids, so that the model state is a `u32` and
/// cache entries compare cheaply.
pub(super) struct Interner<'a> {
    ids: HashMap<ValueKey<'a>, State>,
    values: Vec<&'a Value>,
}

impl<'a> Interner<'a> {
    pub(super) fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }

    /// `null` is absence (a read of an absent key records `null`).
    pub(super) fn intern(&mut self, v: &'a Value) -> State {
        if v.is_null() {
            return ABSENT;
        }
        let next = self.values.len() as State + 1;
        let id = *self.ids.entry(ValueKey(v)).or_insert(next);
        if id == next {
            self.values.push(v);
        }
        id
    }

    pub(super) fn describe(&self, state: State) -> String {
        match state
            .checked_sub(1)
            .and_then(|i| self.values.get(i as usize))
        {
            Some(v) => format!("Some({v})"),
            None => "None".to_string(),
        }
    }
}
