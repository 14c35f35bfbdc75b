//! A scenario's `cluster:` (docs/compose.md): containers with a label as the members the
//! lab's roles name (`node:NAME`, `leader`, `followers`, `minority`, `majority`), so that
//! the samples of the cluster lab (a leader kill, a split brain) run against the etcd
//! members of a compose stack. Members are named by their container names; the leader
//! is the member whose etcd says it leads (`etcd_server_is_leader 1` on its /metrics,
//! at the container's address); kill, restart, pause and resume go through the Docker
//! API. Certificate swaps and surges need the cluster lab's own control: refused before
//! the run starts ([`refuse_lab_only_actions`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use chaos_datapath::error::Error;
use chaos_model::{action::ActionSpec, lab::ClusterSpec, plan::Plan};

use crate::{
    action::{kill_container, Lab, LabMember, LabView, SurgeOutcome},
    container::{self, Change},
    container_undo::{self, Pending, UndoKind},
};

/// How long one member may take to answer who leads.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a restarted member may take to answer on its client port.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

pub struct ContainerCluster {
    key: String,
    value: String,
    port: u16,
    /// Paused members' entries in the run's container record (`cleanup` unpauses them
    /// after a crash), until they are resumed.
    paused: std::sync::Mutex<Vec<(String, Pending)>>,
}

impl ContainerCluster {
    /// The cluster a scenario names; exit 2 when no running container has the label.
    pub fn open(spec: &ClusterSpec) -> Result<ContainerCluster> {
        let (key, value) = spec.label().map_err(|p| Error::unsupported(p.problem, p.fix))?;
        let cluster = ContainerCluster {
            key: key.to_owned(),
            value: value.to_owned(),
            port: spec.etcd_metrics_port(),
            paused: std::sync::Mutex::new(Vec::new()),
        };
        if container::with_label(key, value)?.is_empty() {
            return Err(Error::unsupported(
                format!("cluster: no running container has the label {key}={value}"),
                "start the members first (deploy/compose/stack.sh up), or fix cluster.containers",
            )
            .into());
        }
        Ok(cluster)
    }

    fn members(&self) -> Result<Vec<(LabMember, container::Container)>> {
        let mut members = Vec::new();
        for name in container::with_label(&self.key, &self.value)? {
            // A member killed a moment ago is listed no more, or not running: left out.
            let Ok(c) = container::inspect(&name) else { continue };
            let Some(ip) = c.ip else { continue };
            members.push((LabMember { name: c.name.clone(), netns: c.netns_path(), ip: IpAddr::V4(ip) }, c));
        }
        Ok(members)
    }

    /// Whether etcd at `ip` says it leads; None when it does not answer in time.
    fn leads(&self, ip: IpAddr) -> Option<bool> {
        let url = format!("http://{}/metrics", SocketAddr::new(ip, self.port));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let (status, body) = runtime
            .block_on(async { tokio::time::timeout(ASK_TIMEOUT, crate::hypothesis::http_get(&url)).await })
            .ok()?
            .ok()?;
        if status != 200 {
            return None;
        }
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix("etcd_server_is_leader "))
            .map(|v| v.trim().parse::<f64>().is_ok_and(|v| v == 1.0))
    }

    /// The one member that says it leads (none when no member or two say so).
    fn leader(&self, members: &[(LabMember, container::Container)]) -> Option<String> {
        let claims: Vec<&str> =
            members.iter().filter(|(m, _)| self.leads(m.ip) == Some(true)).map(|(m, _)| m.name.as_str()).collect();
        match claims.as_slice() {
            [one] => Some((*one).to_owned()),
            _ => None,
        }
    }
}

impl Lab for ContainerCluster {
    fn view(&self) -> Result<LabView> {
        let members = self.members()?;
        let leader = self.leader(&members);
        Ok(LabView { members: members.into_iter().map(|(m, _)| m).collect(), leader })
    }

    fn wait_leader(&self, not: Option<&str>, within: Duration) -> Result<Option<(String, Duration)>> {
        let start = Instant::now();
        loop {
            if let Some(name) = self.leader(&self.members()?) {
                if Some(name.as_str()) != not {
                    return Ok(Some((name, start.elapsed())));
                }
            }
            if start.elapsed() >= within {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    fn kill(&self, member: &str, signal: i32, grace: Option<Duration>) -> Result<String> {
        kill_container(member, signal, grace)
    }

    fn restart(&self, member: &str) -> Result<String> {
        let start = Instant::now();
        container::change(member, Change::Start)?;
        loop {
            let answered = container::inspect(member).ok().and_then(|c| c.ip).and_then(|ip| self.leads(IpAddr::V4(ip)));
            if answered.is_some() {
                return Ok(format!(
                    "container {member} started again: etcd answers after {} ms",
                    start.elapsed().as_millis()
                ));
            }
            if start.elapsed() >= HEALTHY_WITHIN {
                bail!(
                    "container {member} was started again, but its etcd did not answer within {} s",
                    HEALTHY_WITHIN.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn pause(&self, member: &str) -> Result<String> {
        let pending = container_undo::record(member, UndoKind::Unpause, &format!("cluster member {member}"))?;
        if let Err(e) = container::change(member, Change::Pause) {
            container_undo::done(pending);
            return Err(e);
        }
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).push((member.to_owned(), pending));
        Ok(format!("container {member} paused (every process frozen)"))
    }

    fn resume(&self, member: &str) -> Result<String> {
        container::change(member, Change::Unpause)?;
        if container::state(member)?.1 {
            bail!("container {member} is still paused after the unpause");
        }
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = paused.iter().position(|(m, _)| m == member) {
            container_undo::done(paused.remove(at).1);
        }
        Ok(format!("container {member} unpaused"))
    }

    fn expire_cert(&self, member: &str, _expires_in: Option<Duration>) -> Result<String> {
        bail!("cert-expiry of {member}: a cluster of containers has no certificate control (refused before the run)")
    }

    fn restore_cert(&self, member: &str) -> Result<String> {
        bail!("cert-expiry of {member}: a cluster of containers has no certificate control")
    }

    fn surge(&self, _count: u32, _rate: f64, _cycles: u32, _stop: &AtomicBool) -> Result<SurgeOutcome> {
        bail!("surge: a cluster of containers has no surge (refused before the run)")
    }
}

/// Exit 2 before anything starts for a `cluster:` scenario with a `cert-expiry` but no
/// `certs`, or a `surge` but no `workload`.
pub fn refuse_lab_only_actions(plan: &Plan) -> Result<()> {
    let Some(cluster) = &plan.cluster else { return Ok(()) };
    for step in &plan.steps {
        let Some(action) = &step.action else { continue };
        let missing = match action.spec {
            ActionSpec::CertExpiry { .. } if cluster.certs.is_none() => "certs: DIR (the members' PKI)",
            ActionSpec::Surge { .. } if cluster.workload.is_none() => "workload: KEY=VALUE (the workload nodes' label)",
            _ => continue,
        };
        return Err(Error::unsupported(
            format!(
                "step '{}': {} on containers needs cluster.{missing}, and this scenario's cluster: has none",
                step.name,
                action.spec.kind().name()
            ),
            format!("add {missing} under cluster: (deploy/compose/scenarios has examples)"),
        )
        .into());
    }
    Ok(())
}
