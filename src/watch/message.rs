//! The JSON a watch sends (DESIGN.md "Watch"), written by hand into one buffer: values are
//! stored JSON text and go out as they are, never parsed; keys go through the escaping
//! serializer.
//!
//! ```text
//! {"watch_id","seq","events":[event,…],"store_revision","fragment"?:true}
//! event: {"type","key","value"?,"revision","create_revision","version","lease","prev_value"?}
//! {"watch_id","end":{"code","message","resume_revision"}}
//! ```

use std::io::Write;

use fjall::Slice;

use super::request::Spec;
use crate::store::history::ChangeEvent;
use crate::store::keys;

/// Appends `e` as a JSON event; `prev` is the record of the key's previous version, when
/// the watch asked for it and it had one.
pub fn event(out: &mut Vec<u8>, e: &ChangeEvent, spec: &Spec, prev: Option<&Slice>) {
    let (meta, value) = e.parts();
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(e.kind.name().as_bytes());
    out.extend_from_slice(b"\",\"key\":");
    if serde_json::to_writer(&mut *out, &e.key).is_err() {
        out.extend_from_slice(b"null");
    }
    if !spec.keys_only {
        if let Some(json) = value {
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(json);
        }
    }
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        ",\"revision\":{},\"create_revision\":{},\"version\":{},\"lease\":{}",
        meta.revision, meta.create_revision, meta.version, meta.lease
    );
    if let Some((_, json)) = prev.and_then(|p| keys::decode_record(p)) {
        out.extend_from_slice(b",\"prev_value\":");
        out.extend_from_slice(json);
    }
    out.push(b'}');
}

/// A message of `events` (events already joined by commas).
pub fn message(id: &str, seq: u64, events: &[u8], store_revision: u64, fragment: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() + 96 + id.len());
    let _ = write!(out, "{{\"watch_id\":\"{id}\",\"seq\":{seq},\"events\":[");
    out.extend_from_slice(events);
    let _ = write!(out, "],\"store_revision\":{store_revision}");
    if fragment {
        out.extend_from_slice(b",\"fragment\":true");
    }
    out.push(b'}');
    out
}

/// The final message of a watch; a `compacted` end also names the compact revision.
pub fn end(
    id: &str,
    code: &str,
    message: &str,
    resume_revision: u64,
    compact_revision: Option<u64>,
) -> Vec<u8> {
    let mut end =
        serde_json::json!({"code": code, "message": message, "resume_revision": resume_revision});
    if let Some(c) = compact_revision {
        end["compact_revision"] = c.into();
    }
    serde_json::to_vec(&serde_json::json!({"watch_id": id, "end": end})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::{EventKind, KeyFilter};
    use crate::store::keys::KeyMeta;
    use serde_json::{json, Value};

    fn spec(keys_only: bool) -> Spec {
        Spec {
            filter: KeyFilter::Prefix(String::new()),
            start: 0,
            prev_value: true,
            types: [true; 3],
            keys_only,
            deliver: "x".into(),
            window: 1,
            token: None,
        }
    }

    fn put(key: &str, json: &str) -> ChangeEvent {
        let meta = KeyMeta {
            revision: 9,
            create_revision: 4,
            version: 3,
            lease: 0,
        };
        ChangeEvent {
            kind: EventKind::Put,
            revision: 9,
            key: key.into(),
            record: Slice::from(keys::encode_record(&meta, json.as_bytes())),
            prev_revision: 5,
            prev_inline: None,
            prev_large: None,
            stamp: 0,
        }
    }

    fn render(e: &ChangeEvent, spec: &Spec, prev: Option<&Slice>) -> Value {
        let mut out = Vec::new();
        event(&mut out, e, spec, prev);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn events_have_the_design_shape() {
        let prev = Slice::from(keys::encode_value(5, br#"{"a":1}"#));
        let e = put("we\"ird", r#"{"a":2}"#);
        assert_eq!(
            render(&e, &spec(false), Some(&prev)),
            json!({"type":"put","key":"we\"ird","value":{"a":2},"revision":9,
                   "create_revision":4,"version":3,"lease":0,"prev_value":{"a":1}})
        );
        assert_eq!(
            render(&e, &spec(true), None),
            json!({"type":"put","key":"we\"ird","revision":9,"create_revision":4,"version":3,"lease":0})
        );
        let d = ChangeEvent {
            kind: EventKind::Delete,
            record: Slice::from(&[][..]),
            ..put("k", "1")
        };
        assert_eq!(
            render(&d, &spec(false), None),
            json!({"type":"delete","key":"k","revision":9,"create_revision":0,"version":0,"lease":0})
        );
    }

    #[test]
    fn messages_and_ends_are_json() {
        let m: Value =
            serde_json::from_slice(&message("n1-2", 3, b"{\"a\":1},{\"b\":2}", 40, true)).unwrap();
        assert_eq!(
            m,
            json!({"watch_id":"n1-2","seq":3,"events":[{"a":1},{"b":2}],"store_revision":40,"fragment":true})
        );
        let m: Value = serde_json::from_slice(&message("w", 1, b"", 7, false)).unwrap();
        assert_eq!(
            m,
            json!({"watch_id":"w","seq":1,"events":[],"store_revision":7})
        );
        let e: Value = serde_json::from_slice(&end("w", "cancelled", "bye", 8, None)).unwrap();
        assert_eq!(
            e,
            json!({"watch_id":"w","end":{"code":"cancelled","message":"bye","resume_revision":8}})
        );
        let e: Value = serde_json::from_slice(&end("w", "compacted", "old", 3, Some(5))).unwrap();
        assert_eq!(e["end"]["compact_revision"], 5);
    }
}
