//! Metrics and telemetry of leases: how many this node's applied table holds, with how many
//! keys, and the expiries the leader proposed that ended a lease.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics::{Counter, Gauge};

use super::{Event, Observer};

pub const LEASES: &str = "concord_leases";
pub const LEASE_KEYS: &str = "concord_lease_keys";
pub const LEASE_EXPIRIES: &str = "concord_lease_expiries_total";

pub struct LeaseMetrics {
    pub leases: Gauge,
    pub keys: Gauge,
    pub expiries: Counter,
}

impl LeaseMetrics {
    pub fn register() -> LeaseMetrics {
        describe_gauge!(LEASES, "Leases in this node's applied state.");
        describe_gauge!(
            LEASE_KEYS,
            "Keys attached to leases, in this node's applied state."
        );
        describe_counter!(
            LEASE_EXPIRIES,
            "Leases this node, as leader, ended by expiry (a lease without keepalives past its ttl)."
        );
        LeaseMetrics {
            leases: gauge!(LEASES),
            keys: gauge!(LEASE_KEYS),
            expiries: counter!(LEASE_EXPIRIES),
        }
    }
}

impl Observer {
    pub fn lease_figures(&self, leases: usize, keys: usize) {
        self.lease.leases.set(leases as f64);
        self.lease.keys.set(keys as f64);
    }

    /// The leader's expiry of lease `id` applied: `keys` keys went at `revision`.
    pub fn lease_expired(&self, id: u64, keys: u64, revision: u64) {
        self.lease.expiries.increment(1);
        self.emit(Event::LeaseExpired { id, keys, revision });
    }
}
