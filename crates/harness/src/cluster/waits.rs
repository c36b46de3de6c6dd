//! Waiting on a [`Cluster`]: for a leader, a stable cluster, an applied index, a node that
//! answers or has left. Every wait polls against a deadline and names what it waited for.

use super::*;

impl Cluster {
    /// Polls `check` every 100 ms until it returns `Ok(true)` or `timeout` passes. `Err` from
    /// `check` counts as "not yet" (a node may be down mid-wait); the last one is reported.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        wait_until(timeout, what, check)
            .await
            .map_err(|e| self.failed_with(e))
    }

    /// Waits until a majority of the voters agree on a leader that itself reports role
    /// `leader`, asking the live (running, not paused) nodes. Returns the leader's id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no status polled yet");
        loop {
            match self.agreed_leader().await {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                let statuses = self.status_summary().await;
                return Err(self.failed_with(anyhow!(
                    "timed out after {timeout:?} waiting for a leader agreed by a majority \
                     (last: {last}); statuses: {statuses}"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Some node of the cluster other than `leader`.
    pub fn a_follower(&self, leader: u64) -> Result<u64> {
        self.ids()
            .into_iter()
            .find(|&id| id != leader)
            .ok_or_else(|| anyhow!("no node besides the leader {leader}"))
    }

    /// One poll of [`Cluster::wait_for_leader`]: `Some(leader)` when a majority of voters
    /// name the same leader and it reports role `leader`.
    pub async fn agreed_leader(&self) -> Result<Option<u64>> {
        let live = self.live_ids();
        let polls = futures::future::join_all(live.iter().map(|&id| self.status(id))).await;
        let statuses: BTreeMap<u64, Value> = live
            .iter()
            .zip(polls)
            .filter_map(|(&id, r)| r.ok().map(|s| (id, s)))
            .collect();
        Ok(process::agreed_leader(
            &statuses,
            self.initial_members.len(),
        ))
    }

    /// Stronger than [`Cluster::wait_for_leader`]: waits until *every* live node names the
    /// same leader, reports role `leader` or `follower` and the full voter set, and has
    /// applied up to the leader's commit index (as read in the same poll). Use it before
    /// checking per-node state: a majority may elect a leader while one node is still
    /// uninitialized. Returns the leader's id.
    pub async fn wait_stable(&self, timeout: Duration) -> Result<u64> {
        let found = std::cell::Cell::new(None);
        let what = "every live node to follow one leader and apply its commit index";
        let live = self.live_ids();
        let (live, found_ref) = (&live, &found);
        wait_until(timeout, what, || async move {
            let polls = futures::future::join_all(live.iter().map(|&id| self.status(id))).await;
            let mut statuses = BTreeMap::new();
            for (id, r) in live.iter().zip(polls) {
                statuses.insert(*id, r?);
            }
            let leader = statuses
                .values()
                .next()
                .and_then(|s| s["leader"].as_u64())
                .ok_or_else(|| anyhow!("no leader named: {statuses:?}"))?;
            let Some(leader_status) = statuses.get(&leader) else {
                bail!("leader {leader} is not a live node");
            };
            let commit = leader_status["commit_index"].as_u64().unwrap_or(0);
            let voters = &leader_status["members"]["voters"];
            for (id, s) in &statuses {
                let want_role = if *id == leader { "leader" } else { "follower" };
                if s["leader"].as_u64() != Some(leader)
                    || s["role"] != json!(want_role)
                    || s["members"]["voters"] != *voters
                    || s["last_applied"].as_u64().unwrap_or(0) < commit
                {
                    bail!(
                        "node {id}: role={} leader={} last_applied={} voters={} \
                         (leader {leader} commit_index={commit})",
                        s["role"],
                        s["leader"],
                        s["last_applied"],
                        s["members"]["voters"]
                    );
                }
            }
            // A new cluster's leader commits the log format switch about a second after its
            // election: wait for it while every voter is live, so that no test sees that
            // entry appear in its window (builds before format 2 report no `log_format`).
            let all_live = voters.as_array().is_some_and(|v| v.len() == statuses.len());
            let pending = statuses.values().all(|s| s["log_format"].is_object())
                && statuses
                    .values()
                    .any(|s| s["log_format"]["cluster"] != s["log_format"]["reads"]);
            if all_live && pending {
                bail!("the log format switch is still pending (leader {leader})");
            }
            found_ref.set(Some(leader));
            Ok(true)
        })
        .await
        .map_err(|e| self.failed_with(e))?;
        found
            .get()
            .ok_or_else(|| anyhow!("wait_stable finished without a leader"))
    }

    /// Waits until node `id` reports `last_applied >= index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> Result<()> {
        let what = format!("node {id} to apply log index {index}");
        self.wait_until(timeout, &what, || async move {
            let status = self.status(id).await?;
            let applied = status["last_applied"]
                .as_u64()
                .ok_or_else(|| anyhow!("status without last_applied: {status}"))?;
            Ok(applied >= index)
        })
        .await
    }

    /// Waits until every live node reports `last_applied >= index`.
    pub async fn wait_all_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        for id in self.live_ids() {
            self.wait_applied(id, index, timeout).await?;
        }
        Ok(())
    }

    /// Waits until node `id` answers its admin status (it is up and serving).
    pub async fn wait_node_answers(&self, id: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait(id)? {
                bail!(
                    "node {id} exited with {exit} before answering its admin status; log tail:\n{}",
                    tail(&self.log(id), 4000)
                );
            }
            let last = match self.status(id).await {
                Ok(_) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for node {id} to answer \
                     {}.node.{id}.admin.status (last: {last}); log tail:\n{}",
                    self.prefix,
                    tail(&self.log(id), 4000)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
