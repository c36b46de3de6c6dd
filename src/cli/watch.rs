//! `concord watch PREFIX`: prints the changes under a prefix (or of one key with `--key`) as
//! they come, one line each (`put key=value rev=N`), or one JSON event per line with
//! `--json` (NDJSON, for scripts). Stops after `--count` events or once every revision up to
//! `--until-revision` has been seen (exit 0), on `compacted` (exit 1, the message says to
//! list again), or on Ctrl-C (the watch is cancelled, exit 130). The stream resumes by itself
//! when its node dies or ends the watch; each resume is reported on stderr.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;

use super::{display_value, emit, Global};
use concord::client::{Client, ClientError, EventType, Watch, WatchEvent, WatchStream};

/// The exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: i32 = 130;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watch every key starting with PREFIX ("" for every key), or the key PREFIX with --key.
    #[arg(value_name = "PREFIX")]
    pub prefix: String,
    /// PREFIX is one key, not a prefix.
    #[arg(long)]
    pub key: bool,
    /// The first revision to show (default: the next one). A revision the cluster no longer
    /// keeps is refused with `compacted`.
    #[arg(long, value_name = "N")]
    pub from_revision: Option<u64>,
    /// Show each key's value before the change.
    #[arg(long)]
    pub prev: bool,
    /// Only these event types, comma-separated: put, delete, expire.
    #[arg(long, value_name = "TYPES", value_delimiter = ',', value_parser = parse_type)]
    pub types: Vec<EventType>,
    /// Events without values.
    #[arg(long)]
    pub keys_only: bool,
    /// Watch on this node only (resumes wait for it to come back).
    #[arg(long, value_name = "ID")]
    pub node: Option<u64>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop once every revision up to R has been shown.
    #[arg(long, value_name = "R")]
    pub until_revision: Option<u64>,
}

fn parse_type(s: &str) -> Result<EventType, String> {
    EventType::parse(s.trim())
        .ok_or_else(|| format!("'{s}' is not an event type: put, delete or expire"))
}

impl WatchArgs {
    fn watch(&self) -> Watch {
        let mut w = if self.key {
            Watch::key(self.prefix.clone())
        } else {
            Watch::prefix(self.prefix.clone())
        };
        w = w
            .from(self.from_revision.unwrap_or(0))
            .prev_value(self.prev)
            .keys_only(self.keys_only);
        if !self.types.is_empty() {
            w = w.types(&self.types);
        }
        if let Some(id) = self.node {
            w = w.node(id);
        }
        w
    }

    fn done(&self, shown: u64, stream: &WatchStream) -> bool {
        self.count.is_some_and(|n| shown >= n)
            || self
                .until_revision
                .is_some_and(|r| stream.next_revision() > r)
    }
}

/// Runs the watch; the exit code.
pub async fn run(client: &Client, global: &Global, args: &WatchArgs) -> Result<i32, ClientError> {
    let mut stream = client.watch_with(args.watch()).await?;
    if !global.json {
        eprintln!(
            "watching {}{} from revision {} on node {} (Ctrl-C to stop)",
            if args.key { "key " } else { "prefix " },
            args.prefix,
            stream.next_revision(),
            stream.node().map_or("?".into(), |n| n.to_string()),
        );
    }
    let mut resumes = stream.resumes_watch();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    // --until-revision is also met by progress notices, which yield no event: look again
    // now and then.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut shown = 0u64;
    while !args.done(shown, &stream) {
        tokio::select! {
            _ = &mut stop => {
                stream.cancel().await?;
                return Ok(EXIT_INTERRUPTED);
            }
            Ok(()) = resumes.changed() => {
                let r = resumes.borrow_and_update().clone();
                eprintln!(
                    "resumed (#{}) at revision {} on node {}: {}",
                    r.count, r.start_revision, r.node, r.reason
                );
            }
            _ = tick.tick() => {}
            next = stream.next() => match next {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(e)) => {
                    if args.until_revision.is_some_and(|r| e.revision > r) {
                        break;
                    }
                    emit(&line(global, &e));
                    shown += 1;
                }
            },
        }
    }
    Ok(0)
}

/// One event: its JSON with `--json`, else `put key=value rev=N` (`prev=...` when asked).
fn line(global: &Global, e: &WatchEvent) -> String {
    if global.json {
        return serde_json::to_string(e).unwrap_or_default();
    }
    let mut s = match &e.value {
        Some(v) => format!(
            "{} {}={} rev={}",
            e.kind,
            e.key,
            display_value(v),
            e.revision
        ),
        None => format!("{} {} rev={}", e.kind, e.key, e.revision),
    };
    if let Some(p) = &e.prev_value {
        s.push_str(&format!(" prev={}", display_value(p)));
    }
    s
}

/// The message for a watch that cannot go on: for `compacted`, what to do about it.
pub fn compacted_hint(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Compacted { compact_revision } => Some(format!(
            "the cluster compacted its change log up to revision {compact_revision}: the \
             revisions to watch from are gone. List the keys again (concord scan) and watch \
             from revision {} or later (or without --from-revision)",
            compact_revision + 1
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_print_as_one_readable_line_or_one_json_object() {
        let e: WatchEvent = serde_json::from_value(json!({"type": "put", "key": "a",
            "value": "x", "revision": 4, "create_revision": 3, "version": 2, "lease": 0,
            "prev_value": 1}))
        .expect("an event");
        let human = Global {
            config: None,
            nats_url: None,
            subject_prefix: None,
            timeout_ms: 1,
            json: false,
            token: None,
        };
        assert_eq!(line(&human, &e), "put a=x rev=4 prev=1");
        let json_out = Global {
            json: true,
            ..human
        };
        let back: serde_json::Value = serde_json::from_str(&line(&json_out, &e)).expect("JSON out");
        assert_eq!(back["type"], "put");
        assert_eq!(back["revision"], 4);
        assert!(parse_type("expire").is_ok() && parse_type("nope").is_err());
        let hint = compacted_hint(&ClientError::Compacted {
            compact_revision: 9,
        });
        assert!(hint.is_some_and(|h| h.contains("revision 10")));
    }
}
