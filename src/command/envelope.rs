//! The envelope every log entry's command travels in, in two formats:
//!
//! ```text
//! format 1: u8 1 | Option<Uuid> request_id | Command        (one id per entry, never used)
//! format 2: u8 2 | u64 stamp (cluster time, ms) | Command   (ids per command: Command::Client)
//! ```
//!
//! Format 1 is byte for byte what builds before format 2 wrote, so they read what a newer
//! node writes until the cluster switches (`Command::FormatSwitch`). Bincode writes a struct
//! as its fields in order, so the format byte comes first and says how to read the rest.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::{Command, Op};

/// The first envelope format: what builds before cluster time wrote.
pub const FORMAT_V1: u8 = 1;
/// Cluster-time stamps and per-command request ids.
pub const FORMAT_V2: u8 = 2;
/// The newest envelope format this build reads (and writes once the cluster switched).
pub const COMMAND_FORMAT: u8 = FORMAT_V2;

/// The envelope every log entry carries.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCommand {
    pub format: u8,
    /// Format 1's per-entry id, reserved and never acted on (format 2 keeps ids per command).
    pub request_id: Option<Uuid>,
    /// Cluster time of the proposal in milliseconds (format 2; 0 in format 1).
    pub stamp: u64,
    pub command: Command,
}

impl LogCommand {
    /// A format-1 envelope: what a node writes until the cluster switches to format 2.
    pub fn new(command: Command) -> Self {
        LogCommand {
            format: FORMAT_V1,
            request_id: None,
            stamp: 0,
            command,
        }
    }

    /// A format-2 envelope stamped with cluster time `stamp`.
    pub fn stamped(command: Command, stamp: u64) -> Self {
        LogCommand {
            format: FORMAT_V2,
            request_id: None,
            stamp,
            command,
        }
    }

    /// The envelope a leader writes for `command` in a cluster on log `format`: format 1
    /// until the cluster switched, then format 2 with put and delete as client writes and
    /// the stamp `stamp` gives.
    pub fn for_cluster(command: Command, format: u8, stamp: impl FnOnce() -> u64) -> Self {
        if format >= FORMAT_V2 {
            LogCommand::stamped(command.into_format_2(), stamp())
        } else {
            LogCommand::new(command)
        }
    }

    /// The cluster-time stamp, when the envelope has one.
    pub fn cluster_time(&self) -> Option<u64> {
        (self.format >= FORMAT_V2).then_some(self.stamp)
    }
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print values: they may be secrets.
        match &self.command {
            Command::SetClusterId { id } => write!(f, "set_cluster_id({id})"),
            Command::Put { value, .. } => write!(f, "put({} bytes)", value.len()),
            Command::Delete { .. } => write!(f, "delete"),
            Command::Batch(cmds) => write!(f, "batch({})", cmds.len()),
            Command::TokenCreate { record, .. } => write!(f, "token_create({})", record.id),
            Command::TokenRevoke { .. } => write!(f, "token_revoke"),
            Command::Client(r) => match &r.op {
                Op::Put { value, .. } => write!(f, "put({} bytes)", value.len()),
                op => write!(f, "{}", op.name()),
            },
            Command::FormatSwitch { format } => write!(f, "format_switch({format})"),
            Command::LeaseExpire { id, .. } => write!(f, "lease_expire({id})"),
            Command::LockWithdraw { .. } => write!(f, "lock_withdraw"),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::IdempotencySettings(s) => write!(
                f,
                "idempotency_settings({} ms, {} entries)",
                s.window_ms, s.max_entries
            ),
        }
    }
}

const FIELDS: &[&str] = &["format", "request_id_or_stamp", "command"];

impl Serialize for LogCommand {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("LogCommand", 3)?;
        st.serialize_field("format", &self.format)?;
        if self.format >= FORMAT_V2 {
            st.serialize_field("stamp", &self.stamp)?;
        } else {
            st.serialize_field("request_id", &self.request_id)?;
        }
        st.serialize_field("command", &self.command)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for LogCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("LogCommand", FIELDS, EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = LogCommand;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a log command envelope (format, id or stamp, command)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LogCommand, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &self);
        let format: u8 = seq.next_element()?.ok_or_else(|| missing(0))?;
        let (request_id, stamp) = match format {
            FORMAT_V1 => {
                let id: Option<Uuid> = seq.next_element()?.ok_or_else(|| missing(1))?;
                (id, 0)
            }
            FORMAT_V2 => (None, seq.next_element()?.ok_or_else(|| missing(1))?),
            other => {
                return Err(de::Error::custom(format!(
                    "log command format {other}: this build reads formats 1 to {COMMAND_FORMAT}; upgrade this node"
                )))
            }
        };
        let command: Command = seq.next_element()?.ok_or_else(|| missing(2))?;
        Ok(LogCommand {
            format,
            request_id,
            stamp,
            command,
        })
    }
}
