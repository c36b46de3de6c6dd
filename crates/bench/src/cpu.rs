//! CPU time of other processes (the servers under test), from `/proc/<pid>/stat`: what a
//! system spends per operation, measured the same way for Concord, etcd and NATS.

/// Clock ticks per second of the times in `/proc/<pid>/stat`. The kernel reports them in
/// USER_HZ, which is part of its ABI and 100 on every architecture this runs on (x86,
/// arm); reading it from sysconf would need `unsafe` for the same constant.
const USER_HZ: f64 = 100.0;

/// utime + stime (fields 14 and 15) of one `/proc/<pid>/stat` line, in ticks. The command
/// name (field 2) is in parentheses and may itself hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Total CPU ticks (user + system) used so far by each of `pids`.
pub fn ticks(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        total += parse_stat_ticks(&text).ok_or_else(|| format!("{path}: unreadable"))?;
    }
    Ok(total)
}

pub fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ
}

/// Parses `--cpu-pids 12,34,56`.
pub fn parse_pids(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("'{p}' is not a pid")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_odd_command_name() {
        // A real line of a nats-server, with the name replaced by one holding ") (" and spaces.
        let line = "4242 (nats) (srv x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    1500 250 0 0 20 0 12 0 987654 1234567 890 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(1750));
        let plain = "1 (concord) R 0 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat_ticks(plain), Some(10));
    }

    #[test]
    fn stat_line_garbage() {
        assert_eq!(parse_stat_ticks(""), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        // utime not a number
        assert_eq!(parse_stat_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 10 x 1"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(ticks(&[me]).is_ok());
        assert!(ticks(&[me, u32::MAX]).is_err());
    }

    #[test]
    fn pid_lists() {
        assert_eq!(parse_pids("1,22, 333"), Ok(vec![1, 22, 333]));
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("1,x").is_err());
        assert!(parse_pids("-3").is_err());
    }

    #[test]
    fn seconds() {
        assert!((ticks_to_seconds(250) - 2.5).abs() < 1e-9);
    }
}
