//! The cluster lab (`chaos-ebpf lab up`) as the engine's [`Lab`]: chaos-lab's member
//! control behind a mutex, since every call may rewrite the lab's state files. The
//! engine never imports the lab (docs/architecture.md); this is where the two meet.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{anyhow, Result};
use chaos_engine::{
    action::{Lab, LabMember, LabView, SurgeOutcome},
    matrix::Fabric,
};
use chaos_lab::{
    cluster::{self, STATE_DIR},
    control::{KillOutcome, LabControl},
    surge::{self, SurgeParams},
};
use chaos_model::plan::{Plan, PlannedFault};

pub struct ClusterLab {
    control: Mutex<LabControl>,
}

/// The lab when the plan names lab members or has lab actions: the containers of its
/// `cluster:` when it has one, else the cluster lab; an error (exit 2) naming `lab up`
/// when there is neither.
pub fn open_for(plan: &Plan) -> Result<Option<Arc<dyn Lab>>> {
    let uses_lab = plan.steps.iter().any(|s| {
        s.faults.iter().any(PlannedFault::names_lab_members) || s.action.as_ref().is_some_and(|a| a.needs_lab())
    });
    if !uses_lab {
        return Ok(None);
    }
    if let Some(spec) = &plan.cluster {
        chaos_engine::container_cluster::refuse_lab_only_actions(plan)?;
        let cluster =
            chaos_engine::container_cluster::ContainerCluster::open(spec)?.with_cert_minter(Box::new(mint_cert));
        chaos_engine::container_surge::refuse_unfit(plan)?;
        return Ok(Some(Arc::new(cluster)));
    }
    let control = LabControl::open(Path::new(STATE_DIR))?;
    Ok(Some(Arc::new(ClusterLab { control: Mutex::new(control) })))
}

/// `cert-expiry` on a cluster of containers: the pair from the lab's PKI code, signed by
/// the cluster's CA.
fn mint_cert(request: &chaos_engine::container_cluster::CertRequest) -> Result<()> {
    let certs = chaos_lab::certs::LabCerts {
        ca: request.ca.clone(),
        ca_key: request.ca_key.clone(),
        // Not used to mint a member's pair.
        client: chaos_lab::certs::CertFiles { cert: PathBuf::new(), key: PathBuf::new() },
        members: Vec::new(),
    };
    let files = chaos_lab::certs::CertFiles { cert: request.cert.clone(), key: request.key.clone() };
    chaos_lab::certs::mint_member(
        &certs,
        &request.name,
        request.ip,
        time::OffsetDateTime::from(request.not_before),
        time::OffsetDateTime::from(request.not_after),
        &files,
    )
}

fn signal_name(signal: i32) -> String {
    chaos_model::action::Signal(signal).name()
}

impl ClusterLab {
    fn control(&self) -> Result<MutexGuard<'_, LabControl>> {
        self.control.lock().map_err(|_| anyhow!("the lab's control was poisoned by a panicked action"))
    }
}

impl Lab for ClusterLab {
    fn view(&self) -> Result<LabView> {
        let control = self.control()?;
        let members = control
            .members()
            .into_iter()
            .map(|m| LabMember { name: m.name, netns: m.netns, ip: IpAddr::V4(m.ip) })
            .collect();
        Ok(LabView { members, leader: control.leader()? })
    }

    fn wait_leader(&self, not: Option<&str>, within: Duration) -> Result<Option<(String, Duration)>> {
        self.control()?.wait_leader(not, within)
    }

    /// (The lab's members are its own processes: `lab down` stops them, and a killed one
    /// is not restarted by `cleanup`.)
    fn kill(&self, member: &str, signal: i32, grace: Option<Duration>, _restart: bool) -> Result<String> {
        let KillOutcome { member, pid, signals, elapsed } = self.control()?.kill(member, signal, grace)?;
        let sent: Vec<String> = signals.iter().map(|s| signal_name(*s)).collect();
        Ok(format!(
            "killed {member} (etcd pid {pid}) with {}: gone after {} ms",
            sent.join(" then "),
            elapsed.as_millis()
        ))
    }

    fn restart(&self, member: &str) -> Result<String> {
        let outcome = self.control()?.restart(member)?;
        Ok(format!(
            "restarted {} (etcd pid {}): healthy after {} ms",
            outcome.member,
            outcome.pid,
            outcome.elapsed.as_millis()
        ))
    }

    fn pause(&self, member: &str) -> Result<String> {
        self.control()?.pause(member)?;
        Ok(format!("paused {member} (SIGSTOP)"))
    }

    fn resume(&self, member: &str) -> Result<String> {
        self.control()?.resume(member)?;
        Ok(format!("resumed {member} (SIGCONT)"))
    }

    fn expire_cert(&self, member: &str, expires_in: Option<Duration>) -> Result<String> {
        self.control()?.expire_cert(member, expires_in)?;
        Ok(match expires_in {
            Some(d) => format!("{member} restarted on a certificate that expires {} s after now", d.as_secs()),
            None => format!("{member} restarted on an expired certificate"),
        })
    }

    fn restore_cert(&self, member: &str) -> Result<String> {
        self.control()?.restore_cert(member)?;
        Ok(format!("{member} restarted on its original certificate"))
    }

    fn surge(&self, count: u32, rate: f64, cycles: u32, stop: &AtomicBool) -> Result<SurgeOutcome> {
        // The state as it is now: members restarted by earlier steps have new pids.
        let state = cluster::load(Path::new(STATE_DIR))?.ok_or_else(|| anyhow!("the lab is gone"))?;
        let params = SurgeParams { count, rate, cycles, member: None, settle: Duration::from_millis(500) };
        let report = surge::surge(&state, &params, stop, &mut |_| {})?;
        let ms = |v: Option<u64>| v.map_or_else(|| "not within 30 s".to_owned(), |v| format!("{v} ms"));
        let per_cycle = |pick: fn(&surge::CycleReport) -> Option<u64>| -> Vec<Option<f64>> {
            report.cycles.iter().map(|c| pick(c).map(|v| v as f64)).collect()
        };
        Ok(SurgeOutcome {
            summary: format!(
                "surge: {} cycles of {count} nodes seen by {} nodes; slowest join {}, slowest leave {}",
                report.cycles.len(),
                report.observers.len(),
                ms(report.join_max_ms),
                ms(report.leave_max_ms)
            ),
            join_converged_ms: per_cycle(|c| c.join_max_ms),
            leave_converged_ms: per_cycle(|c| c.leave_max_ms),
            completed: report.converged && report.cycles.len() == cycles as usize,
        })
    }
}

/// The light-node lab in `dir` as the engine's [`Fabric`], when the plan has a partition
/// matrix and such a lab is up (the engine refuses a matrix of nodes without one).
pub fn light_fabric(plan: &Plan, dir: &Path) -> Result<Option<Fabric>> {
    if !chaos_engine::matrix::has_matrices(plan) || chaos_lab::hyper::load(dir)?.is_none() {
        return Ok(None);
    }
    let (state, nodes) = chaos_lab::hyper::nodes(dir)?;
    let nodes = nodes.into_iter().map(|n| (n.name, vec![IpAddr::V4(n.ipv4), IpAddr::V6(n.ipv6)])).collect();
    Ok(Some(Fabric { netns: state.hub, nodes }))
}
