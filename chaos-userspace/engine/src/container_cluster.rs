//! A scenario's `cluster:` (docs/compose.md): containers with a label as the members the
//! lab's roles name (`node:NAME`, `leader`, `followers`, `minority`, `majority`), so that
//! the samples of the cluster lab (a leader kill, a split brain) run against the etcd
//! members of a compose stack. Members are named by their container names; the leader
//! is the member whose etcd says it leads (`etcd_server_is_leader 1` on its /metrics,
//! at the container's address); kill, restart, pause and resume go through the Docker
//! API. `cert-expiry` swaps a member's certificate pair in the scenario's `certs`
//! directory (which the member's container mounts) for one minted by the caller's
//! [`CertMinter`] (the CLI's, from the lab's PKI code: the engine does not import the
//! lab), recorded for `cleanup` before anything changes, and restarts the container.
//! `surge` starts clones of the `workload` nodes ([`container_surge`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Result};
use chaos_datapath::error::Error;
use chaos_model::{action::ActionSpec, lab::ClusterSpec, plan::Plan};

use crate::{
    action::{kill_container, Lab, LabMember, LabView, SurgeOutcome},
    container::{self, Change},
    container_surge::{self, Workload},
    container_undo::{self, CertSwap, Pending, UndoKind},
};

/// How long one member may take to answer who leads.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a restarted member may take to answer on its client port.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// What the minter of an expired (or soon expiring) certificate gets: sign a pair for
/// `name` at `ip` with the CA key, valid from `not_before` to `not_after`, written to
/// `cert` and `key` (each through a rename).
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub name: String,
    pub ip: Ipv4Addr,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub type CertMinter = Box<dyn Fn(&CertRequest) -> Result<()> + Send + Sync>;

pub struct ContainerCluster {
    key: String,
    value: String,
    port: u16,
    certs: Option<PathBuf>,
    minter: Option<CertMinter>,
    /// The workload nodes `surge` clones and asks.
    workload: Option<Workload>,
    /// Members running on a swapped certificate: their entries in the run's container
    /// record and the files, until restored.
    swapped: std::sync::Mutex<Vec<(String, Pending, CertSwap)>>,
    /// Members killed with `restart: true`: their entries in the run's container record
    /// (`cleanup` starts them after a crash), until started again.
    killed: std::sync::Mutex<Vec<(String, Pending)>>,
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
            certs: spec.certs.as_deref().map(PathBuf::from),
            minter: None,
            workload: Workload::of(spec)?,
            swapped: std::sync::Mutex::new(Vec::new()),
            killed: std::sync::Mutex::new(Vec::new()),
            paused: std::sync::Mutex::new(Vec::new()),
        };
        if container::with_label(key, value)?.is_empty() {
            return Err(Error::unsupported(
                format!("cluster: no running container has the label {key}={value}"),
                "start the members first (deploy/compose/stack.sh up), or fix cluster.containers",
            )
            .into());
        }
        if let Some(dir) = &cluster.certs {
            for file in ["ca.pem", "ca-key.pem"] {
                if !dir.join(file).is_file() {
                    return Err(Error::unsupported(
                        format!("cluster.certs: {} has no {file}", dir.display()),
                        "give the directory of the members' PKI (the stack's is /var/lib/chaos-ebpf/stack/pki)",
                    )
                    .into());
                }
            }
        }
        Ok(cluster)
    }

    /// Who mints certificates for `cert-expiry` (without one, it fails).
    pub fn with_cert_minter(mut self, minter: CertMinter) -> ContainerCluster {
        self.minter = Some(minter);
        self
    }

    /// The member's pair in the PKI directory, checked to exist.
    fn cert_files(&self, member: &str) -> Result<(PathBuf, CertSwap)> {
        let Some(dir) = &self.certs else {
            bail!("cert-expiry of {member}: the scenario's cluster: has no certs (refused before the run)")
        };
        let swap = CertSwap::beside(&dir.join(format!("{member}.pem")), &dir.join(format!("{member}-key.pem")));
        for file in [&swap.cert, &swap.key] {
            if !file.is_file() {
                bail!(
                    "cert-expiry of {member}: {} is missing; the PKI in {} has no pair for it",
                    file.display(),
                    dir.display()
                );
            }
        }
        Ok((dir.clone(), swap))
    }

    /// Stops and starts the member (etcd reads its certificate when it starts) and waits
    /// until its etcd answers on the metrics port.
    fn restart_member(&self, member: &str) -> Result<String> {
        container::change(member, Change::Stop(container_undo::RESTART_GRACE))?;
        self.restart(member)
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
        let body = crate::hypothesis::http_get_ok_blocking(&url, ASK_TIMEOUT)?;
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

    fn kill(&self, member: &str, signal: i32, grace: Option<Duration>, restart: bool) -> Result<String> {
        if !restart {
            return kill_container(member, signal, grace);
        }
        // Recorded first: a run that dies before the restart leaves it to `cleanup`.
        let pending = container_undo::record(member, UndoKind::Start, &format!("cluster member {member}"))?;
        match kill_container(member, signal, grace) {
            Ok(what) => {
                self.killed.lock().unwrap_or_else(|e| e.into_inner()).push((member.to_owned(), pending));
                Ok(what)
            }
            Err(e) => {
                // Still running: nothing to start again. Otherwise the entry stays for
                // `cleanup` (the step fails and restarts nothing).
                if container::state(member).is_ok_and(|(running, _)| running) {
                    container_undo::done(pending);
                }
                Err(e)
            }
        }
    }

    fn restart(&self, member: &str) -> Result<String> {
        let start = Instant::now();
        container::change(member, Change::Start)?;
        loop {
            let answered = container::inspect(member).ok().and_then(|c| c.ip).and_then(|ip| self.leads(IpAddr::V4(ip)));
            if answered.is_some() {
                let mut killed = self.killed.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(at) = killed.iter().position(|(m, _)| m == member) {
                    container_undo::done(killed.remove(at).1);
                }
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

    fn expire_cert(&self, member: &str, expires_in: Option<Duration>) -> Result<String> {
        let Some(minter) = &self.minter else { bail!("cert-expiry of {member}: no certificate minter was given") };
        let (dir, swap) = self.cert_files(member)?;
        if self.swapped.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(m, ..)| m == member) {
            bail!("cert-expiry of {member}: it already runs with a swapped certificate");
        }
        let Some(ip) = container::inspect(member)?.ip else {
            bail!("cert-expiry of {member}: the container has no IPv4 address for the certificate")
        };
        let pending = container_undo::record_cert(member, swap.clone(), &format!("cluster member {member}"))?;
        let now = SystemTime::now();
        let (not_before, not_after) = match expires_in {
            None => (now - Duration::from_secs(2 * 86_400), now - Duration::from_secs(86_400)),
            Some(d) => (now - Duration::from_secs(3_600), now + d),
        };
        let request = CertRequest {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            name: member.to_owned(),
            ip,
            not_before,
            not_after,
            cert: swap.cert.clone(),
            key: swap.key.clone(),
        };
        let result = swap.back_up().and_then(|()| minter(&request)).and_then(|()| self.restart_member(member));
        match result {
            Ok(restarted) => {
                self.swapped.lock().unwrap_or_else(|e| e.into_inner()).push((member.to_owned(), pending, swap));
                let what = match expires_in {
                    None => "one that expired a day ago".to_owned(),
                    Some(d) => format!("one that expires in {} s", d.as_secs()),
                };
                Ok(format!("certificate of {member} swapped for {what}; {restarted}"))
            }
            Err(e) => {
                // Nothing half-done stays: the original goes back and the member, which
                // ran before, runs on it (the record goes once that is done).
                let undo = swap.put_back().and_then(|_| match container::state(member)?.0 {
                    true => self.restart_member(member).map(drop),
                    false => self.restart(member).map(drop),
                });
                match undo {
                    Ok(()) => {
                        container_undo::done(pending);
                        Err(e.context(format!("swapping the certificate of {member} (the original is back)")))
                    }
                    Err(u) => Err(e.context(format!(
                        "and putting the original certificate of {member} back failed: {u:#} (`chaos-ebpf cleanup` tries again after this run)"
                    ))),
                }
            }
        }
    }

    fn restore_cert(&self, member: &str) -> Result<String> {
        let at = self.swapped.lock().unwrap_or_else(|e| e.into_inner()).iter().position(|(m, ..)| m == member);
        let Some(at) = at else { return Ok(format!("certificate of {member} was not swapped: nothing to restore")) };
        let swap = self.swapped.lock().unwrap_or_else(|e| e.into_inner())[at].2.clone();
        swap.put_back()?;
        let restarted = self.restart_member(member)?;
        let (_, pending, _) = self.swapped.lock().unwrap_or_else(|e| e.into_inner()).remove(at);
        container_undo::done(pending);
        Ok(format!("original certificate of {member} restored; {restarted}"))
    }

    fn surge(&self, count: u32, rate: f64, cycles: u32, stop: &AtomicBool) -> Result<SurgeOutcome> {
        let Some(workload) = &self.workload else {
            bail!("surge: the scenario's cluster: has no workload (refused before the run)")
        };
        container_surge::surge(workload, count, rate, cycles, stop)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cluster: &str, action: &str) -> Plan {
        let text = format!(
            "apiVersion: chaos-ebpf/v1\nname: t\ncluster:\n{cluster}steps:\n  - {{name: s, action: {action}, target: node:m, duration: 1s}}\n"
        );
        chaos_model::scenario::parse("t.yaml", &text).expect("a valid scenario")
    }

    #[test]
    fn cert_expiry_needs_certs_and_surge_needs_workload() {
        let bare = "  containers: a=b\n";
        let e = refuse_lab_only_actions(&plan(bare, "cert-expiry")).unwrap_err().to_string();
        assert!(e.contains("cert-expiry") && e.contains("cluster.certs"), "{e}");
        assert!(refuse_lab_only_actions(&plan(&format!("{bare}  certs: /pki\n"), "cert-expiry")).is_ok());
        assert!(refuse_lab_only_actions(&plan(bare, "pause")).is_ok());
        let surge = |cluster: &str| {
            let text = format!(
                "apiVersion: chaos-ebpf/v1\nname: t\ncluster:\n{cluster}steps:\n  - {{name: s, action: surge, count: 2, rate: 2/s, cycles: 1, duration: 5s}}\n"
            );
            refuse_lab_only_actions(&chaos_model::scenario::parse("t.yaml", &text).expect("a valid scenario"))
        };
        let e = surge(bare).unwrap_err().to_string();
        assert!(e.contains("surge") && e.contains("cluster.workload"), "{e}");
        assert!(surge(&format!("{bare}  workload: app=node\n")).is_ok());
    }
}
