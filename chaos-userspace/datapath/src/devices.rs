//! Device settings chaos-ebpf changes for a fault, recorded and shared by every run on the
//! device, and restored exactly by the last one out (or by `cleanup` after a crash).
//!
//! - Per-segment decisions: the TC hooks see socket buffers, and one GSO buffer can carry
//!   dozens of wire packets (~43 for a TCP bulk transfer on veth). On egress the device's
//!   `gso_max_segs` set to 1 makes the stack hand it one segment per buffer; on ingress
//!   the same on the far end of a veth, and GRO and LRO off on the device itself (they
//!   merge segments before the ingress hook).
//! - Per-segment decisions for buffers the stack builds anyway (UDP_SEGMENT ignores
//!   `gso_max_segs`): a segmenter, a veth pair in the device's namespace (outer end
//!   `chaos<ifindex>gso` with `gso_max_segs` 1, inner end `chaos<ifindex>seg`). The
//!   program sends such a buffer out of the outer end, the kernel segments it there, and
//!   the judge programs on the inner end's ingress decide each segment and send it back
//!   (chaos_ebpf_common::segment).
//! - sch_fq, which enforces the departure times of delay and rate faults: installed as the
//!   root qdisc in place of a default one, or under each transmit queue of an `mq`
//!   (keeping the multiqueue layout); what it replaced is restored from the options the
//!   kernel dumped. A qdisc chaos-ebpf did not create is never deleted or changed.
//!
//! One record per device, `dev-<netns dev>-<netns ino>-<ifindex>.json` in the ledger
//! directory, lists the runs using it (their liveness is their run lock, ledger.rs), the
//! original values, and the qdiscs chaos-ebpf replaced. Every change happens under one
//! exclusive lock (on the ledger directory), so two runs starting or ending together see each
//! other's changes. Functions here act on the calling thread's network namespace.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    error::Error,
    ledger::{self, ProcessState, STATE_DIR},
    netlink::{self, FqSettings, Qdisc},
    netns::{Interface, NetnsId},
};

/// Handle major of the root sch_fq chaos-ebpf installs (`ce00:`); the fq under transmit
/// queue N of an mq gets `ce01+N:`. Ownership is the record; the handle double-checks
/// that the qdisc in place is still the one chaos-ebpf put there.
const FQ_ROOT_HANDLE: u32 = 0xce00_0000;
const TC_H_ROOT: u32 = 0xffff_ffff;

fn fq_child_handle(queue: u32) -> u32 {
    (0xce01 + (queue & 0xff)) << 16
}

/// Root qdiscs a device gets by default (handle 0:). Replacing one and deleting our fq
/// later brings the same default back.
const DEFAULT_ROOT_QDISCS: [&str; 5] = ["noqueue", "pfifo_fast", "fq_codel", "pfifo", "mq"];

/// What one run needs of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    /// Decisions on this device's egress: one segment per buffer (gso_max_segs 1).
    #[serde(default)]
    pub segment_egress: bool,
    /// Decisions on this device's ingress: GRO and LRO off.
    #[serde(default)]
    pub unmerge_ingress: bool,
    /// Departure times on this device's egress: sch_fq.
    #[serde(default)]
    pub fq: bool,
    /// Decisions on this device (either hook) that GSO buffers must not skip: a
    /// segmenter pair.
    #[serde(default)]
    pub segmenter: bool,
}

impl Needs {
    fn union(self, other: Needs) -> Needs {
        Needs {
            segment_egress: self.segment_egress || other.segment_egress,
            unmerge_ingress: self.unmerge_ingress || other.unmerge_ingress,
            fq: self.fq || other.fq,
            segmenter: self.segmenter || other.segmenter,
        }
    }

    pub fn any(self) -> bool {
        self.segment_egress || self.unmerge_ingress || self.fq || self.segmenter
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    pid: u32,
    needs: Needs,
}

/// Device values before chaos-ebpf changed them (None: not changed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Original {
    gso_max_segs: Option<u32>,
    gro: Option<bool>,
    lro: Option<bool>,
}

/// A qdisc chaos-ebpf replaced with its fq.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Replaced {
    parent: u32,
    /// The handle of our fq there.
    ours: u32,
    kind: String,
    handle: u32,
    /// Its options as dumped (hex), sent back to restore it.
    options: String,
}

/// A segmenter pair chaos-ebpf created for a device (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmenter {
    /// Where GSO buffers are sent (gso_max_segs 1).
    pub outer: String,
    pub outer_index: u32,
    /// Where their segments arrive, to be judged.
    pub inner: String,
    pub inner_index: u32,
}

/// Names of the segmenter pair of device `ifindex`: `chaos<ifindex>gso` and
/// `chaos<ifindex>seg` (at most 15 bytes up to ifindex 9,999,999).
fn segmenter_names(ifindex: u32) -> (String, String) {
    (format!("chaos{ifindex}gso"), format!("chaos{ifindex}seg"))
}

/// Whether `name` is one of chaos-ebpf's segmenter devices: never a target.
pub fn is_segmenter(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("chaos") else { return false };
    let digits = rest.strip_suffix("gso").or_else(|| rest.strip_suffix("seg"));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    netns: PathBuf,
    netns_id: NetnsId,
    ifindex: u32,
    iface: String,
    users: Vec<User>,
    original: Original,
    replaced: Vec<Replaced>,
    /// The root was the device's default mq (handle 0:) with default children: deleting
    /// the root brings all of it back exactly (replacing a child by hand would get a new
    /// handle, and deleting a child leaves its queue without a qdisc).
    #[serde(default)]
    default_mq: bool,
    /// The segmenter pair chaos-ebpf created for this device (names first, indices
    /// once created).
    #[serde(default)]
    segmenter: Option<Segmenter>,
}

fn record_path(netns: NetnsId, ifindex: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("dev-{}-{}-{ifindex}.json", netns.dev, netns.ino))
}

/// Every device record: (path, netns id, ifindex).
pub fn records() -> Vec<(PathBuf, NetnsId, u32)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.strip_prefix("dev-")?.strip_suffix(".json")?.split('-');
            let dev = parts.next()?.parse().ok()?;
            let ino = parts.next()?.parse().ok()?;
            let ifindex = parts.next()?.parse().ok()?;
            Some((e.path(), NetnsId { dev, ino }, ifindex))
        })
        .collect()
}

/// The lock every device change happens under: the ledger directory itself (flock works
/// on directories), so no lock file is left behind.
struct DevicesLock(#[allow(dead_code)] File);

fn lock() -> Result<DevicesLock> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let dir = File::open(STATE_DIR).with_context(|| format!("opening {STATE_DIR}"))?;
    // Held for a few netlink requests at a time by anyone; a holder that was stopped
    // in the middle must not hang every other run, so the wait is bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match dir.try_lock() {
            Ok(()) => return Ok(DevicesLock(dir)),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::unsupported(
                    format!("another chaos-ebpf has held the lock of {STATE_DIR} for over 5 s (it may be stopped)"),
                    "resume or end it (`chaos-ebpf status` lists the runs), then try again",
                )
                .into())
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {STATE_DIR}")),
        }
    }
}

/// Runs `f` under the ledger lock (for choices several starting runs must not make
/// alike, such as the judge bit).
pub fn with_ledger_lock<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _lock = lock()?;
    f()
}

fn read_record(path: &Path) -> Option<DeviceRecord> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

impl DeviceRecord {
    fn path(&self) -> PathBuf {
        record_path(self.netns_id, self.ifindex)
    }

    fn save(&self) -> Result<()> {
        ledger::write_json(&self.path(), self)
    }
}

/// Users whose run is still alive (ourselves included).
fn prune_dead(record: &mut DeviceRecord) {
    let me = std::process::id();
    record.users.retain(|u| u.pid == me || ledger::liveness(u.pid).0 != ProcessState::Dead);
}

fn needed(record: &DeviceRecord) -> Needs {
    record.users.iter().fold(Needs::default(), |all, u| all.union(u.needs))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

/// The sch_fq chaos-ebpf installs, and what it requires of an fq it finds: at most
/// `flow_limit` delayed packets held per flow (fq's default of 100 would cut a delayed
/// flow to 100 packets per delay), and a horizon just past the longest delay a rule may
/// ask for (beyond it fq drops, and the drop is counted by fq, not as a delay). Fewer
/// held packets or a shorter horizon in an fq chaos-ebpf did not create would drop
/// delayed packets that the counters call delayed.
fn fq_settings() -> FqSettings {
    FqSettings {
        limit: 100_000,
        flow_limit: 10_000,
        horizon_us: (chaos_ebpf_common::MAX_DELAY_NS / 1000) as u32 + 1_000_000,
    }
}

/// Registers this run as a user of `iface` (in the calling thread's namespace) and makes
/// the changes `needs` asks for that are not in place yet; returns the device's
/// segmenter pair when `needs` asks for one. Fails (exit 2 for what the user must fix)
/// without changing anything it has not recorded.
pub fn acquire(netns_path: &Path, netns: NetnsId, iface: &Interface, needs: Needs) -> Result<Option<Segmenter>> {
    let _lock = lock()?;
    let path = record_path(netns, iface.index);
    let mut record = read_record(&path).unwrap_or_else(|| DeviceRecord {
        netns: netns_path.to_owned(),
        netns_id: netns,
        ifindex: iface.index,
        iface: iface.name.clone(),
        users: Vec::new(),
        original: Original::default(),
        replaced: Vec::new(),
        default_mq: false,
        segmenter: None,
    });
    prune_dead(&mut record);
    let me = std::process::id();
    match record.users.iter_mut().find(|u| u.pid == me) {
        Some(user) => user.needs = user.needs.union(needs),
        None => record.users.push(User { pid: me, needs }),
    }
    // Recorded first: a crash in the middle leaves a record cleanup can act on.
    record.save()?;
    // On failure the record keeps what was changed: the run's revert (or cleanup)
    // releases it like any other.
    let result = apply(&mut record, needs);
    record.save()?;
    result?;
    Ok(if needs.segmenter { record.segmenter.clone() } else { None })
}

fn apply(record: &mut DeviceRecord, needs: Needs) -> Result<()> {
    let ifindex = record.ifindex;
    let iface = record.iface.clone();
    if needs.segment_egress && record.original.gso_max_segs.is_none() {
        let info = netlink::link_info(ifindex).with_context(|| format!("reading {iface}"))?;
        let current = info.gso_max_segs.unwrap_or(1);
        if current != 1 {
            record.original.gso_max_segs = Some(current);
            record.save()?;
            netlink::set_gso_max_segs(ifindex, 1).map_err(|e| {
                Error::unsupported(
                    format!(
                        "cannot set gso_max_segs 1 on {iface} ({e}), so decisions would act on buffers of many packets"
                    ),
                    "use a kernel that accepts IFLA_GSO_MAX_SEGS (Linux >= 4.16), or report the device type",
                )
            })?;
        }
    }
    if needs.unmerge_ingress {
        if record.original.gro.is_none() && ethtool::gro(&iface)? {
            record.original.gro = Some(true);
            record.save()?;
            ethtool::set_gro(&iface, false).with_context(|| format!("turning GRO off on {iface}"))?;
        }
        if record.original.lro.is_none() && ethtool::lro(&iface)? {
            record.original.lro = Some(true);
            record.save()?;
            ethtool::set_lro(&iface, false).with_context(|| format!("turning LRO off on {iface}"))?;
        }
    }
    if needs.fq && record.replaced.is_empty() {
        install_fq(record)?;
    }
    if needs.segmenter && record.segmenter.is_none() {
        add_segmenter(record)?;
    }
    Ok(())
}

/// Creates the device's segmenter pair, recorded by name before it exists.
fn add_segmenter(record: &mut DeviceRecord) -> Result<()> {
    let iface = record.iface.clone();
    let (outer, inner) = segmenter_names(record.ifindex);
    if outer.len() >= libc::IFNAMSIZ {
        return Err(Error::unsupported(
            format!("{iface} has interface index {}, too large to name its segmenter pair", record.ifindex),
            "target a device with an index below 10,000,000",
        )
        .into());
    }
    record.segmenter = Some(Segmenter { outer: outer.clone(), outer_index: 0, inner: inner.clone(), inner_index: 0 });
    record.save()?;
    // MTU: the largest a veth takes, so no segment of any device is too long for it.
    if let Err(e) = netlink::add_veth_pair(&outer, &inner, 65535, 1) {
        record.segmenter = None;
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(Error::unsupported(
                format!("a device named {outer} or {inner} already exists next to {iface}, and chaos-ebpf has no record of creating it"),
                format!("if it is left over from a chaos-ebpf run, delete it (`ip link del {outer}`); chaos-ebpf needs these names for {iface}'s segmenter pair"),
            )
            .into());
        }
        return Err(e).with_context(|| format!("creating the segmenter pair {outer}/{inner} for {iface}"));
    }
    let index = |name: &str| -> Result<u32> {
        nix::net::if_::if_nametoindex(name)
            .map_err(|e| anyhow!("the segmenter device {name} vanished right after it was created ({e})"))
    };
    let (outer_index, inner_index) = (index(&outer)?, index(&inner)?);
    record.segmenter = Some(Segmenter { outer, outer_index, inner: inner.clone(), inner_index });
    record.save()?;
    netlink::set_up(inner_index).with_context(|| format!("bringing the segmenter end {inner} of {iface} up"))
}

/// Deletes the segmenter pair of a record, if the device there is still the one
/// chaos-ebpf created (same index, name and kind).
fn delete_segmenter(segmenter: &Segmenter) -> std::io::Result<bool> {
    let index = nix::net::if_::if_nametoindex(segmenter.outer.as_str()).unwrap_or(0);
    // Recorded before creation and never created, or gone with its namespace.
    if index == 0 || (segmenter.outer_index != 0 && index != segmenter.outer_index) {
        return Ok(false);
    }
    if netlink::link_info(index)?.kind.as_deref() != Some("veth") {
        return Ok(false);
    }
    netlink::delete_link(index)?;
    Ok(true)
}

fn check_foreign_fq(iface: &str, q: &Qdisc) -> Result<()> {
    let limits = netlink::fq_limits(&q.options);
    let want = fq_settings();
    let short = |name: &str, have: Option<u32>, need: u32, unit: &str| -> Result<()> {
        match have {
            Some(v) if v >= need => Ok(()),
            have => Err(Error::unsupported(
                format!(
                    "{iface} already has an sch_fq that chaos-ebpf did not create ({:x}:), and its {name} is {}{unit}; delayed packets beyond {need}{unit} would be dropped",
                    q.handle >> 16,
                    have.map_or("unknown".into(), |v| v.to_string()),
                ),
                format!("raise it (`tc qdisc change dev {iface} {} fq {name} {need}`) or remove that fq so chaos-ebpf installs its own", if q.parent == TC_H_ROOT { "root".to_owned() } else { format!("parent {:x}:{:x}", q.parent >> 16, q.parent & 0xffff) }),
            )
            .into()),
        }
    };
    short("flow_limit", limits.flow_limit, want.flow_limit, " packets")?;
    short("limit", limits.limit, want.limit, " packets")?;
    // A horizon shorter than the longest delay drops (or, without horizon_drop, caps)
    // the packets it is asked to hold.
    short("horizon", limits.horizon_us, want.horizon_us, "us")?;
    Ok(())
}

fn install_fq(record: &mut DeviceRecord) -> Result<()> {
    let settings = fq_settings();
    let ifindex = record.ifindex;
    let iface = record.iface.clone();
    let qdiscs = netlink::qdiscs(ifindex).with_context(|| format!("reading the qdiscs of {iface}"))?;
    let root = qdiscs.iter().find(|q| q.parent == TC_H_ROOT);
    let options = netlink::fq_options(&settings);
    let mut targets: Vec<(u32, u32, Qdisc)> = Vec::new();
    match root {
        Some(q) if q.kind == "fq" => return check_foreign_fq(&iface, q),
        Some(q) if q.kind == "mq" => {
            // fq under every transmit queue, keeping the multiqueue layout.
            record.default_mq = q.handle == 0
                && qdiscs
                    .iter()
                    .filter(|c| c.parent >> 16 == q.handle >> 16 && c.parent != TC_H_ROOT)
                    .all(|c| c.handle == 0 && DEFAULT_ROOT_QDISCS.contains(&c.kind.as_str()));
            for child in qdiscs.iter().filter(|c| c.parent >> 16 == q.handle >> 16 && c.parent != TC_H_ROOT) {
                if child.kind == "fq" {
                    check_foreign_fq(&iface, child)?;
                    continue;
                }
                let queue = (child.parent & 0xffff).saturating_sub(1);
                targets.push((child.parent, fq_child_handle(queue), child.clone()));
            }
        }
        Some(q) if q.handle != 0 || !DEFAULT_ROOT_QDISCS.contains(&q.kind.as_str()) => {
            return Err(Error::unsupported(
                format!(
                    "{iface} has a configured root qdisc ({} {:x}:); delay and rate need sch_fq there, and chaos-ebpf does not replace a qdisc it cannot restore exactly",
                    q.kind,
                    q.handle >> 16
                ),
                format!("make fq the root qdisc yourself (`tc qdisc replace dev {iface} root fq flow_limit {} limit {}`), or target an interface with its default qdisc", settings.flow_limit, settings.limit),
            )
            .into())
        }
        Some(q) => targets.push((TC_H_ROOT, FQ_ROOT_HANDLE, q.clone())),
        None => targets.push((
            TC_H_ROOT,
            FQ_ROOT_HANDLE,
            Qdisc { handle: 0, parent: TC_H_ROOT, kind: String::new(), options: Vec::new() },
        )),
    }
    for (parent, ours, original) in targets {
        record.replaced.push(Replaced {
            parent,
            ours,
            kind: original.kind.clone(),
            handle: original.handle,
            options: hex(&original.options),
        });
        record.save()?;
        if let Err(e) = netlink::replace_qdisc(ifindex, parent, ours, "fq", &options) {
            record.replaced.pop();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Err(Error::unsupported(
                    format!(
                        "this kernel has no sch_fq (CONFIG_NET_SCH_FQ), so nothing would enforce the departure times a delay or rate fault sets on {iface}"
                    ),
                    "load it (`modprobe sch_fq`) or use a kernel that has it (Debian's do); loss, partition and blackhole work without it",
                )
                .into());
            }
            return Err(e).with_context(|| format!("installing sch_fq on {iface}"));
        }
    }
    Ok(())
}

/// Takes this run (or the dead runs) off the device's record and restores what no
/// remaining user needs. Call in the device's namespace. Returns what was restored.
pub fn release(netns: NetnsId, ifindex: u32) -> Result<Vec<String>> {
    release_to(netns, ifindex, Needs::default())
}

/// Like [`release`], but this process stays a user needing `keep` (the agent keeps a
/// device's segmenter pair, whose judge programs it attached once, while it has no
/// fault there: the device's settings are restored, the pair stays).
pub fn release_to(netns: NetnsId, ifindex: u32, keep: Needs) -> Result<Vec<String>> {
    let _lock = lock()?;
    let path = record_path(netns, ifindex);
    let Some(mut record) = read_record(&path) else { return Ok(Vec::new()) };
    let me = std::process::id();
    record.users.retain(|u| u.pid != me);
    if keep.any() {
        record.users.push(User { pid: me, needs: keep });
    }
    prune_dead(&mut record);
    let still = needed(&record);
    let mut done = Vec::new();
    let mut errors = Vec::new();
    let gone = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENODEV);
    let iface = record.iface.clone();
    if !still.fq && !record.replaced.is_empty() && record.default_mq {
        let all_ours = netlink::qdiscs(ifindex).is_ok_and(|list| {
            record.replaced.iter().all(|r| list.iter().any(|q| q.parent == r.parent && q.handle == r.ours))
        });
        if all_ours {
            match netlink::delete_qdisc(ifindex, TC_H_ROOT, 0) {
                Ok(_) => done.push(format!("sch_fq under the mq of {iface} replaced by the default mq")),
                Err(e) if gone(&e) => {}
                Err(e) => errors.push(format!("restoring the default mq of {iface}: {e}")),
            }
            record.replaced.clear();
        }
        record.default_mq = false;
    }
    if !still.fq && !record.replaced.is_empty() {
        let current = netlink::qdiscs(ifindex);
        for r in std::mem::take(&mut record.replaced) {
            let ours_in_place = match &current {
                Ok(list) => list.iter().any(|q| q.parent == r.parent && q.handle == r.ours && q.kind == "fq"),
                Err(_) => false,
            };
            if !ours_in_place {
                // Someone replaced our fq (or the device went away): theirs stays.
                continue;
            }
            let restored = if r.parent == TC_H_ROOT {
                // Deleting the root brings back the device's default, which it had.
                netlink::delete_qdisc(ifindex, TC_H_ROOT, r.ours).map(|_| ())
            } else {
                netlink::replace_qdisc(ifindex, r.parent, r.handle, &r.kind, &unhex(&r.options))
            };
            match restored {
                Ok(()) => done.push(format!(
                    "sch_fq on {iface} replaced by the original {}",
                    if r.kind.is_empty() { "default" } else { &r.kind }
                )),
                Err(e) if gone(&e) => {}
                Err(e) => {
                    errors.push(format!("restoring the {} qdisc of {iface}: {e}", r.kind));
                    record.replaced.push(r);
                }
            }
        }
    }
    if !still.segment_egress {
        if let Some(original) = record.original.gso_max_segs {
            // Only what we set: if someone changed it since, theirs stays.
            match netlink::link_info(ifindex) {
                Ok(info) if info.gso_max_segs == Some(1) => match netlink::set_gso_max_segs(ifindex, original) {
                    Ok(()) => {
                        done.push(format!("gso_max_segs {original} on {iface}"));
                        record.original.gso_max_segs = None;
                    }
                    Err(e) if gone(&e) => record.original.gso_max_segs = None,
                    Err(e) => errors.push(format!("restoring gso_max_segs of {iface}: {e}")),
                },
                _ => record.original.gso_max_segs = None,
            }
        }
    }
    if !still.unmerge_ingress {
        if record.original.gro == Some(true) {
            match ethtool::set_gro(&iface, true) {
                Ok(()) => done.push(format!("GRO on {iface}")),
                Err(e) if gone(&e) => {}
                Err(e) => errors.push(format!("turning GRO back on on {iface}: {e}")),
            }
            record.original.gro = None;
        }
        if record.original.lro == Some(true) {
            match ethtool::set_lro(&iface, true) {
                Ok(()) => done.push(format!("LRO on {iface}")),
                Err(e) if gone(&e) => {}
                Err(e) => errors.push(format!("turning LRO back on on {iface}: {e}")),
            }
            record.original.lro = None;
        }
    }
    if !still.segmenter {
        if let Some(segmenter) = record.segmenter.take() {
            match delete_segmenter(&segmenter) {
                Ok(true) => done.push(format!("segmenter pair {} of {iface} deleted", segmenter.outer)),
                Ok(false) => {}
                Err(e) if gone(&e) => {}
                Err(e) => {
                    errors.push(format!("deleting the segmenter pair {} of {iface}: {e}", segmenter.outer));
                    record.segmenter = Some(segmenter);
                }
            }
        }
    }
    let nothing_left = record.replaced.is_empty()
        && record.segmenter.is_none()
        && record.original.gso_max_segs.is_none()
        && record.original.gro.is_none()
        && record.original.lro.is_none();
    if record.users.is_empty() && nothing_left {
        let _ = fs::remove_file(&path);
    } else {
        record.save()?;
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(anyhow!("{}", errors.join("; ")))
    }
}

/// Legacy GRO/LRO switches through the SIOCETHTOOL ioctl (the ethtool netlink family
/// needs a generic netlink client for two flags).
mod ethtool {
    use std::{io, os::fd::AsRawFd};

    const SIOCETHTOOL: libc::c_ulong = libc::SIOCETHTOOL;
    const ETHTOOL_GFLAGS: u32 = 0x25;
    const ETHTOOL_SFLAGS: u32 = 0x26;
    const ETHTOOL_GGRO: u32 = 0x2b;
    const ETHTOOL_SGRO: u32 = 0x2c;
    const ETH_FLAG_LRO: u32 = 1 << 15;

    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }

    nix::ioctl_readwrite_bad!(ethtool, SIOCETHTOOL, libc::ifreq);

    fn call(iface: &str, cmd: u32, data: u32) -> io::Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        let socket = crate::netns::query_socket().map_err(io::Error::other)?;
        let mut req = crate::netns::ifreq(iface);
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: the ifreq points at `value`, which outlives the call.
        unsafe { ethtool(socket.as_raw_fd(), &mut req) }?;
        Ok(value.data)
    }

    /// Devices without the ethtool operation have no GRO/LRO to turn off.
    fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL))
    }

    pub fn gro(iface: &str) -> io::Result<bool> {
        match call(iface, ETHTOOL_GGRO, 0) {
            Ok(v) => Ok(v != 0),
            Err(e) if unsupported(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn set_gro(iface: &str, on: bool) -> io::Result<()> {
        call(iface, ETHTOOL_SGRO, on as u32).map(|_| ())
    }

    pub fn lro(iface: &str) -> io::Result<bool> {
        match call(iface, ETHTOOL_GFLAGS, 0) {
            Ok(flags) => Ok(flags & ETH_FLAG_LRO != 0),
            Err(e) if unsupported(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn set_lro(iface: &str, on: bool) -> io::Result<()> {
        let flags = call(iface, ETHTOOL_GFLAGS, 0)?;
        let flags = if on { flags | ETH_FLAG_LRO } else { flags & !ETH_FLAG_LRO };
        call(iface, ETHTOOL_SFLAGS, flags).map(|_| ())
    }
}
