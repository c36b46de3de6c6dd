//! Network namespaces for the mesh: one per node with its server, veth pairs to the root
//! namespace (clients) and to each other namespace (routes), and partitions by setting mesh
//! links down. Needs root and `ip netns`.

use super::*;

/// The namespaces and veths of one cluster. Records what exists so that teardown removes
/// exactly that, also after a setup that failed halfway.
pub(super) struct Netns {
    pub(super) tag: String,
    /// Our claim on the client subnets `10.77.<4 slot + i>.0/24`; removed at teardown.
    pub(super) slot: Option<(u8, PathBuf)>,
    pub(super) namespaces: Vec<String>,
    pub(super) root_links: Vec<String>,
    pub(super) cut: BTreeSet<(u64, u64)>,
}

impl Netns {
    pub(super) fn setup(tag: &str) -> Result<Netns, Error> {
        let mut netns = Netns {
            tag: tag.to_string(),
            slot: None,
            namespaces: Vec::new(),
            root_links: Vec::new(),
            cut: BTreeSet::new(),
        };
        // On error `netns` is dropped, which tears down what was created so far.
        netns.build()?;
        Ok(netns)
    }

    /// `10.77.<4 slot + id>.<host>`: host 1 is the root side, 2 the namespace side.
    pub(super) fn client_ip(&self, id: u64, host: u8) -> String {
        let slot = self.slot.as_ref().map_or(0, |(s, _)| u64::from(*s));
        format!("10.77.{}.{host}", slot * 4 + id)
    }

    /// Claims the first free slot. A slot file is created with `create_new` (atomic, so two
    /// processes never get the same slot) and holds its owner's pid; the file of a dead
    /// owner is stale and taken over. A slot whose subnets are in use in the root namespace
    /// for any other reason is skipped.
    pub(super) fn claim_slot(&mut self) -> Result<(), Error> {
        let dir = Path::new(SLOT_DIR);
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {SLOT_DIR}")))?;
        let addrs = ip_output(&["-4", "-o", "addr", "show"])?;
        let own = format!("{} {}", std::process::id(), self.tag);
        for slot in 0..MAX_SLOTS {
            let in_use = IDS
                .iter()
                .any(|&id| addrs.contains(&format!(" 10.77.{}.1/", u64::from(slot) * 4 + id)));
            if in_use {
                continue;
            }
            let path = dir.join(format!("slot-{slot}"));
            for _ in 0..2 {
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        file.write_all(own.as_bytes())
                            .map_err(io_err(format!("writing {}", path.display())))?;
                        self.slot = Some((slot, path));
                        return Ok(());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let owner = std::fs::read_to_string(&path).unwrap_or_default();
                        let alive = owner
                            .split_whitespace()
                            .next()
                            .and_then(|p| p.parse::<u32>().ok())
                            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                        // An empty file may be a claim being written right now: leave it.
                        if alive || owner.is_empty() {
                            break;
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        return Err(io_err(format!("creating {}", path.display()))(e));
                    }
                }
            }
        }
        Err(Error::Spec(format!(
            "all {MAX_SLOTS} client subnet slots of {SLOT_DIR} are taken"
        )))
    }

    pub(super) fn build(&mut self) -> Result<(), Error> {
        for id in IDS {
            let link = root_link(&self.tag, id);
            if link.len() > MAX_IFNAME {
                return Err(Error::Spec(format!(
                    "interface name {link} is longer than {MAX_IFNAME} characters"
                )));
            }
        }
        // The client subnets live in the root namespace, where another cluster's would be
        // ambiguous routes: claim subnets of our own.
        self.claim_slot()?;
        for id in IDS {
            let ns = ns_name(&self.tag, id);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Client link: root side in the root namespace, `c0` inside the namespace.
            let link = root_link(&self.tag, id);
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "c0", "netns", &ns,
            ])?;
            self.root_links.push(link.clone());
            ip(&[
                "addr",
                "add",
                &format!("{}/24", self.client_ip(id, 1)),
                "dev",
                &link,
            ])?;
            ip(&["link", "set", &link, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.client_ip(id, 2)),
                "dev",
                "c0",
            ])?;
            ip(&["-n", &ns, "link", "set", "c0", "up"])?;
        }
        // Mesh: in namespace i the link to j is `m<j>`. Both ends live in namespaces, so
        // their names only need to be unique there.
        for (a, b) in mesh_pairs() {
            let (ns_a, ns_b) = (ns_name(&self.tag, a), ns_name(&self.tag, b));
            let (link_a, link_b) = (format!("m{b}"), format!("m{a}"));
            ip(&[
                "-n", &ns_a, "link", "add", &link_a, "type", "veth", "peer", "name", &link_b,
                "netns", &ns_b,
            ])?;
            ip(&[
                "-n",
                &ns_a,
                "addr",
                "add",
                &format!("{}/30", mesh_ip(a, b)),
                "dev",
                &link_a,
            ])?;
            ip(&[
                "-n",
                &ns_b,
                "addr",
                "add",
                &format!("{}/30", mesh_ip(b, a)),
                "dev",
                &link_b,
            ])?;
            ip(&["-n", &ns_a, "link", "set", &link_a, "up"])?;
            ip(&["-n", &ns_b, "link", "set", &link_b, "up"])?;
        }
        Ok(())
    }

    /// Both ends of the mesh link between `a < b`, so neither side can send.
    pub(super) fn set_mesh_link(&mut self, a: u64, b: u64, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &ns_name(&self.tag, a),
            "link",
            "set",
            &format!("m{b}"),
            state,
        ])?;
        ip(&[
            "-n",
            &ns_name(&self.tag, b),
            "link",
            "set",
            &format!("m{a}"),
            state,
        ])?;
        if up {
            self.cut.remove(&(a, b));
        } else {
            self.cut.insert((a, b));
        }
        Ok(())
    }

    /// Best effort and idempotent. The root side of a veth disappears with its peer's
    /// namespace; it is deleted explicitly anyway.
    pub(super) fn teardown(&mut self) {
        for link in self.root_links.drain(..) {
            // Fails when the link is gone already; nothing to do then.
            let _ = ip(&["link", "del", &link]);
        }
        for ns in self.namespaces.drain(..) {
            if let Err(e) = delete_namespace(&ns) {
                tracing::warn!("could not delete network namespace {ns}: {e}");
            }
        }
        self.cut.clear();
        if let Some((_, path)) = self.slot.take() {
            let own = format!("{} {}", std::process::id(), self.tag);
            if std::fs::read_to_string(&path).is_ok_and(|owner| owner == own) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `cc<pid>` for a process's first cluster, `cc<pid>s<seq>` for later ones.
pub(super) fn run_tag(pid: u32, seq: u32) -> String {
    if seq == 0 {
        format!("cc{pid}")
    } else {
        format!("cc{pid}s{seq}")
    }
}

pub(super) fn ns_name(tag: &str, id: u64) -> String {
    format!("{tag}n{id}")
}

/// Root side of namespace `id`'s client veth (≤ 15 characters for any pid up to 2^22).
pub(super) fn root_link(tag: &str, id: u64) -> String {
    format!("{tag}c{id}")
}

/// The pairs `(a, b)`, `a < b`, in a fixed order; the position is the pair's /30 subnet.
pub(super) fn mesh_pairs() -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    for &a in &IDS {
        for &b in IDS.iter().filter(|&&b| b > a) {
            pairs.push((a, b));
        }
    }
    pairs
}

/// The address of server `own` on its mesh link to server `peer`: in subnet
/// `10.78.<pair index>.0/30` the lower id has `.1`, the higher `.2`.
pub(super) fn mesh_ip(own: u64, peer: u64) -> String {
    let pair = (own.min(peer), own.max(peer));
    let k = mesh_pairs().iter().position(|&p| p == pair).unwrap_or(0);
    let host = if own < peer { 1 } else { 2 };
    format!("10.78.{k}.{host}")
}

/// The pid in a name of our scheme (`cc<pid>[s<seq>]n<1..3>`), `None` for any other name.
pub(super) fn stale_candidate_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("cc")?;
    let (rest, id) = rest.split_at(rest.len().checked_sub(2)?);
    if !matches!(id, "n1" | "n2" | "n3") {
        return None;
    }
    let (pid, seq) = match rest.split_once('s') {
        Some((pid, seq)) => (pid, Some(seq)),
        None => (rest, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || seq.is_some_and(|s| !all_digits(s)) {
        return None;
    }
    pid.parse().ok()
}

/// `ip netns del`, retried for up to 2 s while the namespace file remains. The unlink in
/// `ip netns del` fails with EBUSY while another mount namespace still holds a copy of the
/// namespace's bind mount, which happens for a moment after a process started by
/// `ip netns exec` (each gets its own mount namespace) died. Processes still inside are
/// killed first: a namespace with a live process would outlive its name.
pub(super) fn delete_namespace(ns: &str) -> Result<(), Error> {
    let file = Path::new("/run/netns").join(ns);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        kill_namespace_processes(ns);
        let result = ip(&["netns", "del", ns]);
        if result.is_ok() || !file.exists() || Instant::now() >= deadline {
            return result.or_else(|e| if file.exists() { Err(e) } else { Ok(()) });
        }
        // Called from `Drop` too, so it can only block; the wait is rare and short.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs every process in namespace `ns` (`ip netns pids`). Only used on namespaces this
/// module created, whose processes it started.
pub(super) fn kill_namespace_processes(ns: &str) {
    let Ok(pids) = ip_output(&["netns", "pids", ns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let _ = signal(pid, "-KILL");
    }
}

/// Runs `ip <args>`; fails with its stderr unless it exits 0.
pub(super) fn ip(args: &[&str]) -> Result<(), Error> {
    ip_output(args).map(|_| ())
}

pub(super) fn ip_output(args: &[&str]) -> Result<String, Error> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running `{command}`")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective uid 0, read from `/proc/self/status` (no libc in the dependencies).
pub(super) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
