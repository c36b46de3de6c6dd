//! `concord txn [FILE]`: sends a transaction body (JSON, as `P.kv.txn` takes it) read from
//! FILE or stdin, and prints the reply for people: whether the compares held, the revision,
//! and one line per result, named by the op of the branch that ran. `--json` prints the
//! cluster's reply as it came. A `conflict` (an `incr` op on a value that is not an integer,
//! or out of range) exits with [`super::EXIT_CONFLICT`].

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use uuid::Uuid;

use super::kv::{report_write, Write};
use super::{display_value, emit, report, Global};
use concord::client::{Client, ClientError, TxnReply, TxnResult};

/// Reads the body from `file` (`None` or `-`: stdin).
fn read_body(file: Option<&Path>) -> Result<Value, String> {
    let text = match file {
        None => read_stdin()?,
        Some(p) if p == Path::new("-") => read_stdin()?,
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
    };
    let body: Value =
        serde_json::from_str(&text).map_err(|e| format!("the txn body is not JSON: {e}"))?;
    if !body.is_object() {
        return Err("the txn body must be a JSON object with compare, success, failure".into());
    }
    Ok(body)
}

fn read_stdin() -> Result<String, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the txn body from stdin: {e}"))?;
    Ok(text)
}

/// `concord txn`: the exit code. `id` is the request id unless the body names one.
pub async fn run(client: &Client, global: &Global, file: Option<&Path>, id: Uuid) -> i32 {
    let mut body = match read_body(file) {
        Ok(b) => b,
        Err(m) => return report(global, &ClientError::Server(concord::error::bad_request(m))),
    };
    // A body that names its own id keeps it (the same file run again applies once).
    let id = match body["request_id"].as_str().map(Uuid::parse_str) {
        Some(Ok(own)) => own,
        _ => {
            body["request_id"] = id.to_string().into();
            id
        }
    };
    let w = Write {
        key: "",
        if_revision: None,
        id,
    };
    let reply = match client.txn_json(body.clone()).await {
        Ok(r) => r,
        Err(e) => return report_write(global, &e, &w),
    };
    if global.json {
        emit(&reply.to_string());
        return 0;
    }
    match TxnReply::from_reply(reply) {
        Ok(r) => {
            emit(&reply_text(&body, &r));
            0
        }
        Err(e) => report(global, &e),
    }
}

/// The reply for people: a first line, then one line per result.
pub fn reply_text(body: &Value, r: &TxnReply) -> String {
    let mut lines = Vec::with_capacity(r.results.len() + 1);
    let at = match (r.revision, r.store_revision) {
        (Some(rev), _) => format!("written at revision {rev}"),
        (None, Some(s)) => format!("nothing written (store at revision {s})"),
        (None, None) => "nothing written".into(),
    };
    lines.push(if r.succeeded {
        format!("succeeded: the compares held, success ran; {at}")
    } else {
        format!("failed: a compare did not hold, failure ran; {at}")
    });
    let branch = if r.succeeded { "success" } else { "failure" };
    let ops = body[branch].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for (i, result) in r.results.iter().enumerate() {
        let name = ops.get(i).map(op_name).unwrap_or_default();
        lines.push(format!("{name}: {}", result_text(result)));
    }
    lines.join("\n")
}

/// `put 'k'`, `delete_prefix 'p/'`: the op and the key it names, from the request.
fn op_name(op: &Value) -> String {
    let Some((kind, args)) = op.as_object().and_then(|o| o.iter().next()) else {
        return "?".into();
    };
    match args["key"].as_str().or(args["prefix"].as_str()) {
        Some(k) => format!("{kind} '{k}'"),
        None => kind.clone(),
    }
}

fn result_text(r: &TxnResult) -> String {
    match r {
        TxnResult::Put { revision } => format!("revision {revision}"),
        TxnResult::Delete { deleted: true } => "deleted".into(),
        TxnResult::Delete { deleted: false } => "not found, nothing deleted".into(),
        TxnResult::DeletePrefix { count, more, .. } => {
            let more = if *more { ", more remain" } else { "" };
            format!("{count} deleted{more}")
        }
        TxnResult::Get(Some(kv)) => format!(
            "{} (revision {}, version {})",
            display_value(&kv.value),
            kv.revision,
            kv.version
        ),
        TxnResult::Get(None) => "not found".into(),
        TxnResult::Incr { value } => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_print_one_line_per_result_named_by_its_op() {
        let body = json!({"compare": [],
            "success": [{"put": {"key": "a", "value": 1}}, {"incr": {"key": "n"}},
                        {"delete_prefix": {"prefix": "tmp/"}}],
            "failure": [{"get": {"key": "a"}}, {"get": {"key": "b"}}]});
        let ok = TxnReply::from_reply(json!({"ok": true, "succeeded": true, "revision": 9,
            "results": [{"put": {"revision": 9}}, {"incr": {"value": 3}},
                        {"delete_prefix": {"deleted": true, "count": 2, "more": false}}]}))
        .expect("a reply");
        assert_eq!(
            reply_text(&body, &ok),
            "succeeded: the compares held, success ran; written at revision 9\n\
             put 'a': revision 9\nincr 'n': 3\ndelete_prefix 'tmp/': 2 deleted"
        );
        let failed = TxnReply::from_reply(json!({"ok": true, "succeeded": false,
            "store_revision": 8, "results": [
                {"get": {"found": true, "value": "x", "revision": 4, "create_revision": 4,
                         "version": 1, "lease": 0}},
                {"get": {"found": false}}]}))
        .expect("a reply");
        assert_eq!(
            reply_text(&body, &failed),
            "failed: a compare did not hold, failure ran; nothing written (store at revision \
             8)\nget 'a': x (revision 4, version 1)\nget 'b': not found"
        );
    }

    #[test]
    fn bodies_must_be_json_objects() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let p = dir.path().join("t.json");
        std::fs::write(&p, "[1]").expect("write");
        assert!(read_body(Some(&p)).is_err_and(|m| m.contains("object")));
        std::fs::write(&p, "{").expect("write");
        assert!(read_body(Some(&p)).is_err_and(|m| m.contains("not JSON")));
        std::fs::write(&p, r#"{"success":[]}"#).expect("write");
        assert_eq!(read_body(Some(&p)).ok(), Some(json!({"success": []})));
        assert!(read_body(Some(&dir.path().join("missing"))).is_err());
    }
}
