//! Decoding and encoding of the key-space requests and replies.

use super::*;

fn code(r: Result<(KvRequest, Common), WireError>) -> ErrorKind {
    r.expect_err("should fail").code
}

#[test]
fn put_keeps_value_text() {
    let (req, c) = decode_kv(
        KvOp::Put,
        br#"{"key":"a","value":{"x": [1, 2]},"timeout_ms":50}"#,
    )
    .unwrap();
    assert_eq!(
        req,
        KvRequest::Put {
            key: "a".into(),
            value: r#"{"x": [1, 2]}"#.into(),
            if_revision: None,
            lease: None,
            ttl_ms: None,
            fence: None,
        }
    );
    assert_eq!(c.timeout, Some(Duration::from_millis(50)));
    let (req, _) = decode_kv(KvOp::Delete, br#"{"key":"a","if_revision":0}"#).unwrap();
    assert_eq!(
        req,
        KvRequest::Delete {
            key: "a".into(),
            if_revision: Some(0),
            fence: None,
        }
    );
    let e = decode_kv(KvOp::Put, br#"{"key":"a","value":1,"if_revision":-1}"#).unwrap_err();
    assert_eq!(e.code, ErrorKind::BadRequest);
}

#[test]
fn bad_bodies_are_bad_request() {
    assert_eq!(
        code(decode_kv(KvOp::Put, b"not json")),
        ErrorKind::BadRequest
    );
    assert_eq!(code(decode_kv(KvOp::Put, b"[1,2]")), ErrorKind::BadRequest);
    assert_eq!(
        code(decode_kv(KvOp::Put, br#"{"value":1}"#)),
        ErrorKind::BadRequest
    );
    assert_eq!(
        code(decode_kv(KvOp::Get, br#"{"key":5}"#)),
        ErrorKind::BadRequest
    );
    let e = decode_kv(KvOp::Get, br#"{"key":"a","consistency":"eventual"}"#).unwrap_err();
    assert_eq!(e.code, ErrorKind::BadRequest);
    assert!(e.message.contains("eventual"), "{}", e.message);
    let e = decode_kv(KvOp::Delete, br#"{"key":"a","bogus":1}"#).unwrap_err();
    assert!(e.message.contains("bogus"), "{}", e.message);
}

#[test]
fn scan_defaults() {
    let (req, _) = decode_kv(KvOp::Scan, b"{}").unwrap();
    assert_eq!(
        req,
        KvRequest::Scan {
            prefix: String::new(),
            limit: None,
            after: None,
            consistency: Consistency::Linearizable,
            min_revision: None
        }
    );
}

#[test]
fn replies_embed_raw_json() {
    let meta = KeyMeta {
        revision: 7,
        create_revision: 5,
        version: 2,
        lease: 0,
    };
    let r = encode_get(&meta, br#"{"a":1}"#, 9).unwrap();
    assert_eq!(
        r,
        &br#"{"ok":true,"value":{"a":1},"revision":7,"create_revision":5,"version":2,"lease":0,"store_revision":9}"#[..]
    );
    let e = encode_error(&crate::error::not_found("key 'a' not found"));
    assert_eq!(
        e,
        br#"{"ok":false,"error":{"code":"not_found","message":"key 'a' not found"}}"#
    );
    let e = encode_error(&crate::error::not_found("key 'a' not found").at_store_revision(4));
    assert_eq!(
        e,
        &br#"{"ok":false,"error":{"code":"not_found","message":"key 'a' not found","store_revision":4}}"#[..]
    );
}

#[test]
fn reply_code_reads_the_error_code() {
    assert_eq!(reply_code(br#"{"ok":true,"revision":3}"#), Ok(()));
    let e = encode_error(&crate::error::unauthorized("no token"));
    assert_eq!(reply_code(&e), Err(ErrorKind::Unauthorized));
    assert_eq!(reply_code(br#"{"ok":false,"#), Err(ErrorKind::Internal));
    assert_eq!(
        request_key(br#"{"key":"a\"b","value":1}"#).as_deref(),
        Some("a\"b")
    );
    assert_eq!(request_key(br#"{"prefix":"p:"}"#).as_deref(), Some("p:"));
    assert_eq!(request_key(b"[1]"), None);
}

#[test]
fn errors_quote_a_bounded_excerpt_of_client_input() {
    let huge = "f".repeat(500 * 1024);
    for body in [
        format!(r#"{{"key":"a","{huge}":1}}"#),
        format!(r#"{{"key":"a","consistency":"{huge}"}}"#),
        format!(r#"{{"key":"a","min_revision":"{huge}"}}"#),
        format!(r#"{{"key":"a","`{}":1}}"#, "`".repeat(500 * 1024)),
        format!(r#"{{"key":"a",{huge}}}"#),
    ] {
        let e = decode_kv(KvOp::Get, body.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorKind::BadRequest);
        assert!(e.message.len() < 700, "{} bytes", e.message.len());
        assert!(encode_error(&e).len() < crate::api::server::SMALL_REPLY_BYTES);
    }
    // The names serde expects survive the cut of the name it did not.
    let e = decode_kv(KvOp::Get, format!(r#"{{"{huge}":1}}"#).as_bytes()).unwrap_err();
    assert!(
        e.message.contains("cut, 512000 bytes") && e.message.contains("`consistency`"),
        "{}",
        e.message
    );
}

#[test]
fn pages_are_cut_by_encoded_bytes() {
    let items: Vec<Item> = (0..100)
        .map(|i| Item {
            key: format!("k{i:03}{}", "\"".repeat(100)),
            meta: KeyMeta::plain(i),
            json: b"1".to_vec(),
        })
        .collect();
    let whole = encode_scan(&items, false, usize::MAX, 7).unwrap();
    // The store revision is at least the newest item's.
    assert!(whole.ends_with(br#"],"more":false,"store_revision":99}"#));
    let page = encode_scan(&items, false, 4096, 500).unwrap();
    assert!(page.len() <= 4096 && page.ends_with(br#"],"more":true,"store_revision":500}"#));
    let v: serde_json::Value = serde_json::from_slice(&page).unwrap();
    let n = v["items"].as_array().unwrap().len();
    assert!(n > 0 && n < 100);
    assert_eq!(v["items"][0]["key"], items[0].key.as_str());
    // The same shape serde gives a struct.
    let one = encode_scan(&items[..1], false, usize::MAX, 3).unwrap();
    let expect = format!(
        r#"{{"ok":true,"items":[{{"key":{},"value":1,"revision":0,"create_revision":0,"version":1,"lease":0}}],"more":false,"store_revision":3}}"#,
        serde_json::to_string(&items[0].key).unwrap()
    );
    assert_eq!(one, expect.as_bytes());
    let e = encode_scan(&items, false, 64, 0).unwrap_err();
    assert_eq!(e.code, ErrorKind::ValueTooLarge);
    let (body, n) =
        encode_page("tokens", (0..5).map(Ok::<u32, WireError>), 3, false, 1024).unwrap();
    assert_eq!(
        (body.as_slice(), n),
        (&br#"{"ok":true,"tokens":[0,1,2],"more":true}"#[..], 3)
    );
    let (body, _) =
        encode_page("tokens", (0..3).map(Ok::<u32, WireError>), 3, false, 1024).unwrap();
    assert_eq!(body, br#"{"ok":true,"tokens":[0,1,2],"more":false}"#);
}

#[test]
fn write_replies_are_small() {
    // The largest put and delete replies: every field at its widest.
    let put = encode_ok(&PutReply {
        ok: true,
        revision: u64::MAX,
        lease: None,
    });
    let del = encode_ok(&DeleteReply {
        ok: true,
        deleted: false,
        revision: u64::MAX,
    });
    for r in [put, del] {
        assert!(r.len() < crate::api::server::SMALL_REPLY_BYTES);
    }
}
