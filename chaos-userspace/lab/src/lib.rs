//! The embedded lab: N nodes as network namespaces on one bridge, on TEST-NET-1
//! (192.0.2.0/24), and a UDP echo probe between two of them that measures what the
//! faults do to real traffic. Created and torn down by the tool (`lab:` in a scenario);
//! `cleanup` removes what a killed run left ([`remove_leftovers`]).

pub mod node;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub mod certs;
pub mod cluster;
pub mod control;
pub mod etcd;
pub mod hyper;
pub mod prometheus;
pub mod surge;
pub mod verify;

use chaos_datapath::{
    error::Error,
    netns::{self, Netns},
};
pub use chaos_engine::run::ProbeCounts;
pub use chaos_model::lab::{node_address, LabSpec, TrafficSpec, LAB_PREFIX};

const HUB: &str = "chaos-lab-hub";
const PROBE_PORT: u16 = 7007;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        Error::unsupported(
            format!("cannot run `ip` (iproute2) to build the lab: {e}"),
            "install iproute2 (bash scripts/setup.sh does)",
        )
    })?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A running lab; dropping it deletes its namespaces (and with them every veth).
pub struct Lab {
    spec: LabSpec,
    created: Vec<String>,
}

impl Lab {
    pub fn create(spec: &LabSpec) -> Result<Lab> {
        let names: Vec<String> =
            std::iter::once(HUB.to_owned()).chain((1..=spec.nodes).map(|i| format!("{LAB_PREFIX}n{i}"))).collect();
        for name in &names {
            if netns::path_for(name).exists() {
                return Err(Error::unsupported(
                    format!("network namespace {name} already exists: another lab is running or one was left behind"),
                    "stop the other run, or remove leftovers with `chaos-ebpf cleanup`",
                )
                .into());
            }
        }
        let mut lab = Lab { spec: spec.clone(), created: Vec::new() };
        for name in &names {
            ip(&["netns", "add", name])?;
            lab.created.push(name.clone());
        }
        ip(&["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", HUB, "link", "set", "br0", "up"])?;
        for i in 1..=spec.nodes {
            let node = format!("{LAB_PREFIX}n{i}");
            let hub_side = format!("vn{i}");
            ip(&["-n", HUB, "link", "add", &hub_side, "type", "veth", "peer", "name", "eth0", "netns", &node])?;
            ip(&["-n", HUB, "link", "set", &hub_side, "master", "br0", "up"])?;
            ip(&["-n", &node, "addr", "add", &format!("{}/24", node_address(i)), "dev", "eth0"])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    pub fn node_netns(&self, name: &str) -> PathBuf {
        netns::path_for(&format!("{LAB_PREFIX}{name}"))
    }

    /// Starts the UDP echo probe, if the lab has traffic.
    pub fn start_probe(&self) -> Result<Option<Probe>> {
        let Some(t) = &self.spec.traffic else {
            return Ok(None);
        };
        let to = self.spec.node_index(&t.to).expect("validated");
        Probe::start(&self.node_netns(&t.from), &self.node_netns(&t.to), node_address(to), t.rate).map(Some)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &name]) {
                tracing::warn!("removing lab namespace {name}: {e:#}");
            }
        }
    }
}

/// Counts of the probe: requests sent, requests that reached the echo server, replies
/// that came back.

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    sent: AtomicU64,
    delivered: AtomicU64,
    echoed: AtomicU64,
}

pub struct Probe {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds a UDP socket inside a namespace (the socket keeps that namespace after the
/// thread leaves it).
fn socket_in(netns_path: &std::path::Path, port: u16) -> Result<UdpSocket> {
    let ns = Netns::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
    ns.run(|| -> Result<UdpSocket> {
        let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(socket)
    })?
}

impl Probe {
    fn start(from: &std::path::Path, to: &std::path::Path, to_addr: Ipv4Addr, rate: u32) -> Result<Probe> {
        let shared = Arc::new(Shared::default());
        let server = socket_in(to, PROBE_PORT)?;
        let client = socket_in(from, 0)?;
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = server.recv_from(&mut buf) {
                    s.delivered.fetch_add(1, Ordering::Relaxed);
                    let _ = server.send_to(&buf[..n], peer);
                }
            }
        }));
        let receiver = client.try_clone()?;
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.stop.load(Ordering::Relaxed) {
                if receiver.recv(&mut buf).is_ok() {
                    s.echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let s = shared.clone();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        threads.push(std::thread::spawn(move || {
            let start = Instant::now();
            let dest = SocketAddr::from((to_addr, PROBE_PORT));
            let mut seq: u64 = 0;
            while !s.stop.load(Ordering::Relaxed) {
                let _ = client.send_to(&seq.to_be_bytes(), dest);
                s.sent.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                // Paced against the start time, so sleeps that overrun do not drift.
                let due = start + interval.mul_f64(seq as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }));
        Ok(Probe { shared, threads })
    }

    fn counts_now(&self) -> ProbeCounts {
        ProbeCounts {
            sent: self.shared.sent.load(Ordering::Relaxed),
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            echoed: self.shared.echoed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Deletes lab namespaces a killed run left (by their name prefix); call only when no
/// run is alive, since a live run's lab has the same names.
pub fn remove_leftovers(removed: &mut Vec<String>, remaining: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(netns::NETNS_RUN_DIR) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(LAB_PREFIX) {
            let ok = Command::new("ip").args(["netns", "del", &name]).status().is_ok_and(|s| s.success());
            if ok {
                removed.push(format!("lab namespace {name}"));
            } else {
                remaining.push(format!("lab namespace {name}"));
            }
        }
    }
}

impl chaos_engine::run::Probe for Probe {
    fn counts(&self) -> ProbeCounts {
        self.counts_now()
    }
}
