//! Loading the embedded eBPF object into a network namespace, attaching it to that
//! namespace's interfaces, and writing rules, peers, leases and the protected list into
//! its maps. One `Instance` per namespace: interface indices are only unique inside a
//! namespace, so each namespace gets its own maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use chaos_ebpf_common::{
    action, direct_index, names, tls, AddrKeyData, Config, DispatchKey, FlowKey, FlowState, Prefix, ProtectedPorts,
    Rule, RuleCounters, RuleList, DISPATCH_WIDTH, MAX_DISPATCH, MAX_FLOWS, MAX_FLOWS_LIMIT, MAX_PEERS, MAX_PEERS_LIMIT,
    MAX_PROTECTED, MAX_RULES, MIN_FLOWS,
};

use crate::{
    attach::AttachMode,
    devices::Segmenter,
    dispatch::{Addressing, Compiled, Compiler, RuleAddrs, SetId},
    error::Error,
    ledger::{self, InstanceState, NetlinkFilter},
    netlink,
    netns::{Interface, Netns, NetnsId},
};

/// One peer prefix of a rule (model::Cidr::prefix encodes it).
pub type PeerEntry = Prefix;

/// How large the maps whose size depends on the faults are made at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Entries of the address trie: every peer prefix of the rules in force, once per
    /// role it is used in (1..=MAX_PEERS_LIMIT).
    pub peers: u32,
    /// Flows of the flow table (loss and jitter decisions, burst state, refused TLS
    /// connections); MIN_FLOWS when no rule keeps per-flow state.
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity { peers: MAX_PEERS, flows: MAX_FLOWS }
    }
}

impl Capacity {
    /// What rules need: a flow table only for rules that keep per-flow state.
    pub fn for_rules<'a>(rules: impl IntoIterator<Item = &'a Rule>, peers: usize) -> Self {
        let stateful = rules.into_iter().any(keeps_flow_state);
        Capacity {
            peers: (peers as u64).clamp(MAX_PEERS as u64, MAX_PEERS_LIMIT as u64) as u32,
            flows: if stateful { MAX_FLOWS } else { MIN_FLOWS },
        }
    }
}

/// Whether a rule's decisions use CHAOS_FLOWS (per-flow index, burst state, refused
/// connections).
pub fn keeps_flow_state(rule: &Rule) -> bool {
    match rule.action {
        action::LOSS | action::TLS_REFUSE => true,
        action::DELAY => rule.jitter_ns != 0,
        _ => false,
    }
}

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-ebpf.o"));

struct Attached {
    iface: Interface,
    hook: TcAttachType,
    /// One of names::PROGRAMS.
    program: &'static str,
    link: SchedClassifierLink,
}

/// The eBPF object loaded into one network namespace.
pub struct Instance {
    pub netns: Netns,
    mode: AttachMode,
    ebpf: Option<Ebpf>,
    attached: Vec<Attached>,
    clsact_added: Vec<Interface>,
    /// The clsact qdiscs this instance added, then deleted (netlink attach).
    qdiscs_added: QdiscChanges,
    qdiscs_deleted: QdiscChanges,
    used_slots: BTreeSet<u32>,
    /// The rules' address matches and peer sets, and what the lookup maps hold now.
    compiler: Compiler,
    compiled: Compiled,
    /// The peer sets of each slot's rule (freed with it).
    sets: BTreeMap<u32, Vec<SetId>>,
    /// The version of the last CHAOS_DISPATCH entry written (RuleList::version).
    next_version: u32,
    capacity: Capacity,
    /// The ALPN digests of each TLS_REFUSE rule by its tls_bit, mirrored in
    /// CHAOS_TLS_ALPN; and each slot's bit.
    tls_alpn: BTreeMap<u32, [u64; tls::MAX_RULE_ALPN]>,
    tls_bits: BTreeMap<u32, u32>,
    /// The run's bit in the judged-by mask of re-sent copies (ledger::free_judge_bit).
    judge_bit: u32,
}

fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    }
}

impl Instance {
    /// Loads the programs (not yet attached) with maps of the default capacity, and
    /// writes the protected list.
    pub fn load(netns: Netns, mode: AttachMode, protected: &[ProtectedPorts], judge_bit: u32) -> Result<Self> {
        Self::load_with(netns, mode, protected, judge_bit, Capacity::default())
    }

    /// As [`Instance::load`], with the capacity of the maps that depend on the faults.
    pub fn load_with(
        netns: Netns,
        mode: AttachMode,
        protected: &[ProtectedPorts],
        judge_bit: u32,
        capacity: Capacity,
    ) -> Result<Self> {
        if capacity.peers == 0 || capacity.peers > MAX_PEERS_LIMIT {
            return Err(Error::unsupported(
                format!("{} peer prefixes asked for; the address trie holds 1 to {MAX_PEERS_LIMIT}", capacity.peers),
                "use fewer or wider prefixes",
            )
            .into());
        }
        if !(MIN_FLOWS..=MAX_FLOWS_LIMIT).contains(&capacity.flows) {
            return Err(Error::unsupported(
                format!(
                    "a flow table of {} flows asked for; it holds {MIN_FLOWS} to {MAX_FLOWS_LIMIT}",
                    capacity.flows
                ),
                format!("give a size from {MIN_FLOWS} to {MAX_FLOWS_LIMIT}"),
            )
            .into());
        }
        if protected.len() > MAX_PROTECTED as usize {
            return Err(Error::unsupported(
                format!("{} protected port ranges given; at most {MAX_PROTECTED} fit", protected.len()),
                "merge ranges (e.g. 8000-8100) or protect fewer",
            )
            .into());
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::PEERS, capacity.peers)
            .map_max_entries(names::FLOWS, capacity.flows)
            .load(OBJECT)
            .context("loading the chaos-ebpf object into the kernel")?;
        for name in names::PROGRAMS {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?.try_into()?;
            prog.load().with_context(|| format!("verifying and loading program {name}"))?;
        }
        let mut instance = Self {
            netns,
            mode,
            ebpf: Some(ebpf),
            attached: Vec::new(),
            clsact_added: Vec::new(),
            qdiscs_added: QdiscChanges::default(),
            qdiscs_deleted: QdiscChanges::default(),
            used_slots: BTreeSet::new(),
            compiler: Compiler::default(),
            compiled: Compiled::default(),
            sets: BTreeMap::new(),
            next_version: 0,
            capacity,
            tls_alpn: BTreeMap::new(),
            tls_bits: BTreeMap::new(),
            judge_bit,
        };
        {
            let mut table: Array<&mut MapData, ProtectedPorts> = Array::try_from(instance.map_mut(names::PROTECTED)?)?;
            for (i, entry) in protected.iter().enumerate() {
                table.set(i as u32, entry, 0)?;
            }
        }
        instance.write_config(protected.len() as u32)?;
        Ok(instance)
    }

    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("instance used after shutdown")
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .as_mut()
            .expect("instance used after shutdown")
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn write_config(&mut self, nr_protected: u32) -> Result<()> {
        let nr_rules = self.used_slots.len() as u32;
        let lookups = self.compiled.lookups;
        let judge_bit = self.judge_bit;
        let mut config: Array<&mut MapData, Config> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        let old = config.get(&0, 0)?;
        let nr_protected = if nr_protected == u32::MAX { old.nr_protected } else { nr_protected };
        // Non-zero, different for every run, the judge bit in its low 5 bits.
        let cookie = (std::process::id() << 5) | (judge_bit & 31) | (1 << 31);
        config.set(0, Config { nr_rules, nr_protected, cookie, lookups }, 0)?;
        Ok(())
    }

    /// Attaches both classifiers to each interface (inside this instance's namespace).
    pub fn attach(&mut self, interfaces: &[Interface]) -> Result<()> {
        self.netns.try_clone()?.run(|| self.attach_inside(interfaces))?
    }

    fn attach_inside(&mut self, interfaces: &[Interface]) -> Result<()> {
        for iface in interfaces {
            if self.attached.iter().any(|a| a.iface.index == iface.index) {
                continue;
            }
            self.attach_program(iface, names::PROG_INGRESS, TcAttachType::Ingress)?;
            self.attach_program(iface, names::PROG_EGRESS, TcAttachType::Egress)?;
        }
        Ok(())
    }

    /// Gives devices their segmenter pairs (devices::Segmenter): GSO buffers matched on
    /// `device` go out of the pair's outer end, and the judge programs on the inner end's
    /// ingress decide their segments.
    pub fn attach_segmenters<'a>(
        &mut self,
        segmenters: impl IntoIterator<Item = (&'a Interface, &'a Segmenter)>,
    ) -> Result<()> {
        let segmenters: Vec<_> = segmenters.into_iter().collect();
        self.netns.try_clone()?.run(|| self.attach_segmenters_inside(segmenters))?
    }

    fn attach_segmenters_inside(&mut self, segmenters: Vec<(&Interface, &Segmenter)>) -> Result<()> {
        for (device, segmenter) in segmenters {
            let inner = Interface {
                name: segmenter.inner.clone(),
                index: segmenter.inner_index,
                hw_type: crate::netns::ARPHRD_ETHER,
                up: true,
            };
            if !self.attached.iter().any(|a| a.iface.index == inner.index) {
                self.attach_program(&inner, names::PROG_JUDGE_EGRESS, TcAttachType::Ingress)?;
                self.attach_program(&inner, names::PROG_JUDGE_INGRESS, TcAttachType::Ingress)?;
            }
            let mut table: HashMap<&mut MapData, u32, u32> = HashMap::try_from(self.map_mut(names::SEGMENTERS)?)?;
            table
                .insert(device.index, segmenter.outer_index, 0)
                .with_context(|| format!("recording the segmenter of {}", device.name))?;
        }
        Ok(())
    }

    /// Attaches one program to one hook; call inside the namespace.
    fn attach_program(&mut self, iface: &Interface, name: &'static str, hook: TcAttachType) -> Result<()> {
        if self.mode == AttachMode::Netlink && !self.clsact_added.iter().any(|i| i.index == iface.index) {
            let change = QdiscChange::start(iface.index);
            match tc::qdisc_add_clsact(&iface.name) {
                Ok(()) => {
                    self.qdiscs_added.record(change);
                    fs::create_dir_all(ledger::STATE_DIR)?;
                    fs::write(ledger::clsact_marker(self.netns.id, iface.index), b"")?;
                    self.clsact_added.push(iface.clone());
                }
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding a clsact qdisc to {}", iface.name)),
            }
        }
        let ebpf = self.ebpf.as_mut().expect("instance used after shutdown");
        let prog: &mut SchedClassifier = ebpf.program_mut(name).expect("loaded").try_into()?;
        // First on the hook, so a program attached before ours (a CNI's) that returns
        // pass or redirect cannot bypass the faults; unmatched packets continue to it
        // (TC_ACT_UNSPEC). Netlink: filters run in ascending priority and 1 is the lowest
        // a filter can ask for (0 lets the kernel pick); cls_bpf filters sharing
        // priority 1 (Cilium's) run newest first.
        let options = match self.mode {
            AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions { priority: 1, ..Default::default() }),
            _ => TcAttachOptions::TcxOrder(LinkOrder::first()),
        };
        let id = prog
            .attach_with_options(&iface.name, hook, options)
            .with_context(|| format!("attaching {name} to {} {} ({:?})", iface.name, hook_name(hook), self.mode))?;
        let link = prog.take_link(id)?;
        self.attached.push(Attached { iface: iface.clone(), hook, program: name, link });
        Ok(())
    }

    /// Fails (exit 2, before anything is attached) when a hook of one of `interfaces`
    /// already runs as many programs as the kernel allows there (63 per TCX hook:
    /// bpf_mprog keeps 64 slots, one of them the end marker): a stack of 63 chaos-ebpf
    /// runs, or other programs.
    pub fn check_room(&self, interfaces: &[Interface]) -> Result<()> {
        if self.mode == AttachMode::Netlink {
            return Ok(());
        }
        self.netns.run(|| self.check_room_inside(interfaces))?
    }

    fn check_room_inside(&self, interfaces: &[Interface]) -> Result<()> {
        const TCX_MAX_PROGRAMS: usize = 63;
        for iface in interfaces {
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, programs) = SchedClassifier::query_tcx(&iface.name, hook)
                    .with_context(|| format!("listing the programs on {} {}", iface.name, hook_name(hook)))?;
                if programs.len() >= TCX_MAX_PROGRAMS {
                    let ours =
                        programs.iter().filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("chaos_"))).count();
                    return Err(Error::unsupported(
                        format!(
                            "{} {} in {} already runs {} BPF programs ({ours} of them chaos-ebpf runs), the kernel's limit per TCX hook",
                            iface.name,
                            hook_name(hook),
                            self.netns.path.display(),
                            programs.len()
                        ),
                        "end some of the stacked runs (`chaos-ebpf status` lists them) and put their faults into one scenario: one run takes up to 32 faults per namespace",
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Whether every attachment is still in place and every interface still there;
    /// `Err` says what changed (someone detached a link, deleted a filter or a device).
    pub fn check_attachments(&self) -> std::result::Result<(), String> {
        self.netns.run(|| self.check_attachments_inside()).map_err(|e| format!("{e:#}"))?
    }

    fn check_attachments_inside(&self) -> std::result::Result<(), String> {
        let present = crate::netns::interfaces().map_err(|e| format!("{e:#}"))?;
        let ids = self.program_ids().map_err(|e| format!("{e:#}"))?;
        for a in &self.attached {
            if !present.iter().any(|i| i.index == a.iface.index && i.name == a.iface.name) {
                return Err(format!("interface {} in {} is gone", a.iface.name, self.netns.path.display()));
            }
            let program = program_id(&ids, a.program);
            let attached = program_attached(self.mode, &a.iface, a.hook, program)
                .map_err(|e| format!("checking the {} hook of {}: {e}", hook_name(a.hook), a.iface.name))?;
            if !attached {
                return Err(format!(
                    "the {} program on {} in {} was detached by someone else",
                    hook_name(a.hook),
                    a.iface.name,
                    self.netns.path.display()
                ));
            }
        }
        Ok(())
    }

    /// Ids of the programs, in the order of names::PROGRAMS.
    fn program_ids(&self) -> Result<[u32; 4]> {
        let mut ids = [0; 4];
        for (i, name) in names::PROGRAMS.into_iter().enumerate() {
            let prog: &SchedClassifier = self.ebpf().program(name).expect("loaded").try_into()?;
            ids[i] = prog.info()?.id();
        }
        Ok(ids)
    }

    /// Runs one of the instance's programs on `frame` (an Ethernet frame) `repeat` times
    /// in the kernel (BPF_PROG_TEST_RUN): its verdict, and the mean ns per run as the
    /// kernel measured it. For benchmarks; nothing is attached or sent.
    pub fn test_run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog: &SchedClassifier =
            self.ebpf().program(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into()?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        crate::bpfsys::test_run(fd, frame, repeat).with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))
    }

    /// A free rule slot, or an error when all are taken.
    pub fn free_slot(&self) -> Result<u32> {
        (0..MAX_RULES).find(|s| !self.used_slots.contains(s)).ok_or_else(|| {
            Error::unsupported(
                format!("more than {MAX_RULES} faults at once in network namespace {}", self.netns.path.display()),
                "run fewer faults at the same time on this namespace",
            )
            .into()
        })
    }

    /// Writes a rule and its peers, then starts its lease. The counters of the slot
    /// start from zero, and flow state of an earlier rule in the slot is gone.
    pub fn install(&mut self, slot: u32, rule: &Rule, peers: &[PeerEntry], lease: Duration) -> Result<()> {
        let (sets, addrs) = self.compiler.rule_addrs(rule, Addressing::Peers(peers));
        self.install_addressed(slot, rule, addrs, sets, lease)
    }

    /// Writes a partition matrix as one rule: packets from a group to a group it is cut
    /// from (`cuts`, pairs of indices into `groups`), on the rule's interface and
    /// directions, get the rule's action. Nothing acts until every entry is written and
    /// the lease starts: one map write turns the whole matrix on (and [`Instance::remove`]
    /// off), so no packet sees half a partition.
    pub fn install_matrix(
        &mut self,
        slot: u32,
        rule: &Rule,
        groups: &[Vec<PeerEntry>],
        cuts: &[(usize, usize)],
        lease: Duration,
    ) -> Result<()> {
        if let Some((a, b)) = cuts.iter().find(|(a, b)| *a >= groups.len() || *b >= groups.len()) {
            return Err(anyhow!("cut ({a}, {b}) names a group beyond the {} given", groups.len()));
        }
        let (sets, addrs) = self.compiler.rule_addrs(rule, Addressing::Matrix { groups, cuts });
        self.install_addressed(slot, rule, addrs, sets, lease)
    }

    fn install_addressed(
        &mut self,
        slot: u32,
        rule: &Rule,
        addrs: RuleAddrs,
        sets: Vec<SetId>,
        lease: Duration,
    ) -> Result<()> {
        if slot >= MAX_RULES || self.used_slots.contains(&slot) {
            for set in sets {
                self.compiler.remove_set(set);
            }
            return Err(anyhow!("rule slot {slot} is not free"));
        }
        let mut rule = *rule;
        let written = self.assign_tls_bit(slot, &mut rule).and_then(|()| {
            self.clear_flows(slot)?;
            let zero = PerCpuValues::try_from(vec![RuleCounters::default(); possible_cpus()?])?;
            let mut counters: PerCpuArray<&mut MapData, RuleCounters> =
                PerCpuArray::try_from(self.map_mut(names::COUNTERS)?)?;
            counters.set(slot, zero, 0)?;
            self.set_tls_alpn(slot, &rule)?;
            // The rule first: the lookup maps may list it as soon as they are written,
            // and with no lease it does nothing until `renew` below.
            let mut rules: Array<&mut MapData, Rule> = Array::try_from(self.map_mut(names::RULES)?)?;
            rules.set(slot, rule, 0)?;
            self.compiler.set_rule(slot, addrs);
            self.sets.insert(slot, sets.clone());
            self.used_slots.insert(slot);
            self.recompile()
        });
        if let Err(e) = written {
            // Back to what was there: the slot's rule out of the lookup maps and its ALPN
            // names out of CHAOS_TLS_ALPN again.
            let _ = self.set_tls_alpn(slot, &Rule::default());
            let _ = self.forget(slot);
            return Err(e);
        }
        self.renew(slot, lease)?;
        self.write_config(u32::MAX)
    }

    /// A TLS_REFUSE rule gets a free bit of the CHAOS_TLS_ALPN masks.
    fn assign_tls_bit(&mut self, slot: u32, rule: &mut Rule) -> Result<()> {
        if rule.action != action::TLS_REFUSE {
            return Ok(());
        }
        let bit = match self.tls_bits.get(&slot) {
            Some(bit) => *bit,
            None => (0..tls::MAX_RULES).find(|b| !self.tls_bits.values().any(|used| used == b)).ok_or_else(|| {
                Error::unsupported(
                    format!("more than {} tls-refuse faults at once in one network namespace", tls::MAX_RULES),
                    "run fewer tls-refuse faults at the same time (one can refuse up to 4 ALPN names)",
                )
            })?,
        };
        self.tls_bits.insert(slot, bit);
        rule.tls_bit = bit;
        Ok(())
    }

    /// Compiles the rules and writes what changed in the lookup maps: new and changed
    /// dispatch entries first, then the address classes, then what is no longer used.
    /// Each write replaces one entry at once, so a packet meets the old rules or the new
    /// ones for its addresses, never a list that does not exist.
    fn recompile(&mut self) -> Result<()> {
        let next = self.compiler.compile(MAX_DISPATCH as usize).map_err(|e| {
            Error::unsupported(
                e.to_string(),
                "run fewer faults on the same traffic at once, or merge them (e.g. one loss fault with several peers)",
            )
        })?;
        let prefixes = next.addrs.len();
        if prefixes > self.capacity.peers as usize {
            return Err(Error::unsupported(
                format!(
                    "the faults in force need {prefixes} peer prefixes in {}; this instance holds {}",
                    self.netns.path.display(),
                    self.capacity.peers
                ),
                "use fewer or wider peer prefixes (or start `chaos-ebpf agent` with a larger --max-peers)",
            )
            .into());
        }
        let mut lists: Vec<(DispatchKey, RuleList)> = Vec::new();
        for (key, slots) in &next.dispatch {
            if self.compiled.dispatch.get(key) == Some(slots) {
                continue;
            }
            self.next_version = self.next_version.wrapping_add(1);
            let mut list = RuleList { count: slots.len() as u32, version: self.next_version, ..RuleList::default() };
            list.slots[..slots.len().min(DISPATCH_WIDTH)].copy_from_slice(&slots[..slots.len().min(DISPATCH_WIDTH)]);
            lists.push((*key, list));
        }
        for (key, list) in &lists {
            self.write_list(key, Some(list))?;
        }
        let changed: Vec<((u32, Prefix), u32)> = next
            .addrs
            .iter()
            .filter(|(k, class)| self.compiled.addrs.get(k) != Some(class))
            .map(|(k, class)| (*k, *class))
            .collect();
        let mut changed = changed;
        let mut stale_addrs: Vec<(u32, Prefix)> =
            self.compiled.addrs.keys().filter(|k| !next.addrs.contains_key(k)).copied().collect();
        // In the trie's own order (role, family, address bits): each write then walks
        // nodes the one before it just touched, instead of a random path through a trie
        // of a million nodes (most of an install's kernel time at that size).
        changed.sort_unstable_by_key(|((which, p), _)| trie_order(*which, p));
        stale_addrs.sort_unstable_by_key(|(which, p)| trie_order(*which, p));
        let stale_lists: Vec<DispatchKey> =
            self.compiled.dispatch.keys().filter(|k| !next.dispatch.contains_key(k)).copied().collect();
        // The lookups needed by the new state, before any address class or entry goes.
        let old_lookups = self.compiled.lookups;
        self.compiled.lookups = old_lookups | next.lookups;
        self.write_config(u32::MAX)?;
        {
            write_trie(self.map_mut(names::PEERS)?, &changed, &stale_addrs)?;
        }
        for key in &stale_lists {
            self.write_list(key, None)?;
        }
        self.compiled = next;
        self.write_config(u32::MAX)
    }

    /// Writes (or, with None, removes) the rule list of `key`: in CHAOS_DIRECT when its
    /// classes fit there (removed: a list of count 0), else in CHAOS_DISPATCH. Each is
    /// one map write, replacing the whole entry at once.
    fn write_list(&mut self, key: &DispatchKey, list: Option<&RuleList>) -> Result<()> {
        let direct = (key.ifindex == 0).then(|| direct_index(key.direction, key.src_class, key.dst_class)).flatten();
        if let Some(index) = direct {
            let mut table: Array<&mut MapData, RuleList> = Array::try_from(self.map_mut(names::DIRECT)?)?;
            return table.set(index, list.copied().unwrap_or_default(), 0).context("writing a CHAOS_DIRECT entry");
        }
        let mut table: HashMap<&mut MapData, DispatchKey, RuleList> =
            HashMap::try_from(self.map_mut(names::DISPATCH)?)?;
        match list {
            Some(list) => table.insert(key, list, 0).context("writing a CHAOS_DISPATCH entry")?,
            // Already gone is not an error (as before).
            None => {
                let _ = table.remove(key);
            }
        }
        Ok(())
    }

    /// Drops a slot's rule from the compiler and its sets (without touching the maps).
    fn forget(&mut self, slot: u32) -> Result<()> {
        self.compiler.remove_rule(slot);
        for set in self.sets.remove(&slot).unwrap_or_default() {
            self.compiler.remove_set(set);
        }
        self.used_slots.remove(&slot);
        self.tls_bits.remove(&slot);
        self.recompile()
    }

    /// Changes the rule in a slot that is in force (a ramp's next intensity): one map
    /// write, so the kernel sees the old rule or the new one, never none; counters and
    /// flow state (a burst in progress) carry on. What the rule matches by interface,
    /// direction and peers stays as installed.
    pub fn update_rule(&mut self, slot: u32, rule: &Rule) -> Result<()> {
        if !self.used_slots.contains(&slot) {
            return Err(anyhow::anyhow!("rule slot {slot} is not in use"));
        }
        let mut rule = *rule;
        self.assign_tls_bit(slot, &mut rule)?;
        self.set_tls_alpn(slot, &rule)?;
        let mut rules: Array<&mut MapData, Rule> = Array::try_from(self.map_mut(names::RULES)?)?;
        rules.set(slot, rule, 0)?;
        Ok(())
    }

    /// Records the ALPN names a slot's rule refuses (none unless TLS_REFUSE) and writes
    /// CHAOS_TLS_ALPN (digest -> mask of tls_bits) when that changes what it should
    /// hold. The kernel reads a rule's bit only while its slot holds a TLS_REFUSE rule,
    /// so a mask written a moment before or after the rule is harmless.
    fn set_tls_alpn(&mut self, slot: u32, rule: &Rule) -> Result<()> {
        let bit = self.tls_bits.get(&slot).copied();
        let before = bit.and_then(|b| self.tls_alpn.get(&b).copied());
        let now = match bit {
            Some(bit) if rule.action == action::TLS_REFUSE && rule.tls_alpn.iter().any(|d| *d != 0) => {
                self.tls_alpn.insert(bit, rule.tls_alpn);
                Some(rule.tls_alpn)
            }
            Some(bit) => {
                self.tls_alpn.remove(&bit);
                None
            }
            None => None,
        };
        if before == now {
            return Ok(());
        }
        let mut wanted: BTreeMap<u64, u32> = BTreeMap::new();
        for (bit, digests) in &self.tls_alpn {
            for digest in digests.iter().filter(|d| **d != 0) {
                *wanted.entry(*digest).or_default() |= 1 << bit;
            }
        }
        let mut map: HashMap<&mut MapData, u64, u32> = HashMap::try_from(self.map_mut(names::TLS_ALPN)?)?;
        let stale: Vec<u64> = map.keys().filter_map(|k| k.ok()).filter(|k| !wanted.contains_key(k)).collect();
        for digest in stale {
            map.remove(&digest).context("removing an ALPN name from CHAOS_TLS_ALPN")?;
        }
        for (digest, rules) in wanted {
            map.insert(digest, rules, 0).context("writing an ALPN name to CHAOS_TLS_ALPN")?;
        }
        Ok(())
    }

    /// Extends the lease of a slot to now + `lease`.
    pub fn renew(&mut self, slot: u32, lease: Duration) -> Result<()> {
        let expiry = monotonic_ns() + lease.as_nanos() as u64;
        let mut leases: Array<&mut MapData, u64> = Array::try_from(self.map_mut(names::LEASES)?)?;
        leases.set(slot, expiry, 0)?;
        Ok(())
    }

    /// Ends a rule: lease first (the kernel stops acting at once), then the entries.
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        {
            let mut leases: Array<&mut MapData, u64> = Array::try_from(self.map_mut(names::LEASES)?)?;
            leases.set(slot, 0, 0)?;
        }
        {
            let mut rules: Array<&mut MapData, Rule> = Array::try_from(self.map_mut(names::RULES)?)?;
            rules.set(slot, Rule::default(), 0)?;
        }
        self.set_tls_alpn(slot, &Rule::default())?;
        self.forget(slot)?;
        self.write_config(u32::MAX)
    }

    fn clear_flows(&mut self, slot: u32) -> Result<()> {
        let mut flows: HashMap<&mut MapData, FlowKey, FlowState> = HashMap::try_from(self.map_mut(names::FLOWS)?)?;
        // The slot's own entries, and the connections its TLS_REFUSE rule refused.
        let stale: Vec<FlowKey> = flows
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(k, v)| {
                k.slot == slot
                    || (k.slot == tls::REFUSED_FLOW_SLOT && v.bad == tls::REFUSED && v.next_index == slot as u64)
            })
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            let _ = flows.remove(&key);
        }
        Ok(())
    }

    /// Counters of a slot, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<RuleCounters> {
        let map = self.ebpf().map(names::COUNTERS).ok_or_else(|| anyhow!("counters map missing"))?;
        let counters: PerCpuArray<&MapData, RuleCounters> = PerCpuArray::try_from(map)?;
        let mut total = RuleCounters::default();
        for per_cpu in counters.get(&slot, 0)?.iter() {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// What `status` and `cleanup` need to find this instance from another process.
    pub fn state(&self) -> Result<InstanceState> {
        let program_ids = self.program_ids()?.to_vec();
        let netlink_filters = self
            .attached
            .iter()
            .filter_map(|a| {
                Some(NetlinkFilter {
                    iface: a.iface.name.clone(),
                    ifindex: a.iface.index,
                    hook: hook_name(a.hook).to_owned(),
                    priority: a.link.priority().ok()?,
                    handle: u32::from(a.link.handle().ok()?),
                })
            })
            .collect();
        Ok(InstanceState {
            netns: self.netns.path.clone(),
            netns_id: self.netns.id,
            mode: self.mode,
            program_ids,
            interfaces: self
                .attached
                .iter()
                .filter(|a| a.program == names::PROG_INGRESS)
                .map(|a| a.iface.name.clone())
                .collect(),
            netlink_filters,
            clsact_added: self.clsact_added.iter().map(|i| i.name.clone()).collect(),
        })
    }

    /// Detaches everything (inside the namespace: a netlink detach names an interface
    /// index, which would mean another device outside it), deletes the clsact qdiscs
    /// this instance added, and unloads the programs.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.ebpf.is_none() {
            return Ok(());
        }
        let ids = self.program_ids().ok();
        let ebpf = self.ebpf.take();
        let removals: Vec<Removal> = self
            .attached
            .drain(..)
            .map(|a| Removal {
                program: ids.map(|ids| program_id(&ids, a.program)),
                iface: a.iface,
                hook: a.hook,
                link: a.link,
            })
            .collect();
        let (mode, id) = (self.mode, self.netns.id);
        let (deleted, remaining) = self.netns.run(move || {
            let (mut removed, mut remaining) = (Vec::new(), Vec::new());
            let deleted = remove_attachments(mode, id, removals, &mut removed, &mut remaining);
            (deleted, remaining)
        })?;
        self.qdiscs_deleted = deleted;
        drop(ebpf);
        self.clsact_added.clear();
        if remaining.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("revert incomplete: {}", remaining.join("; ")))
        }
    }
}

/// The clsact qdiscs one instance added or deleted (netlink attach), and what the kernel
/// did meanwhile. The kernel swaps a qdisc with the device's transmit stopped
/// (dev_deactivate: until an RCU grace period has passed) and drops what is sent in that
/// moment; TCX attach changes no qdisc. Kernels that count those drops (6.12 does, 6.1
/// does not) count them in the device's tx_dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QdiscChanges {
    pub devices: u32,
    /// The longest netlink request, which waits for the transmit to be started again:
    /// a bound on how long it was stopped.
    pub longest_ms: f64,
    /// The growth of the devices' tx_dropped over the requests.
    pub tx_dropped: u64,
}

/// One qdisc change under way: when it began and the device's tx_dropped then.
struct QdiscChange {
    ifindex: u32,
    started: std::time::Instant,
    tx_dropped: Option<u64>,
}

/// A device's transmit drops, in the calling thread's namespace.
fn tx_dropped(ifindex: u32) -> Option<u64> {
    netlink::link_info(ifindex).ok()?.tx_dropped
}

impl QdiscChange {
    fn start(ifindex: u32) -> QdiscChange {
        QdiscChange { ifindex, tx_dropped: tx_dropped(ifindex), started: std::time::Instant::now() }
    }
}

impl QdiscChanges {
    fn record(&mut self, change: QdiscChange) {
        let ms = change.started.elapsed().as_secs_f64() * 1000.0;
        let after = tx_dropped(change.ifindex);
        self.devices += 1;
        self.longest_ms = self.longest_ms.max(ms);
        self.tx_dropped += after.zip(change.tx_dropped).map_or(0, |(after, before)| after.saturating_sub(before));
    }
}

impl Instance {
    /// The clsact qdiscs this instance added (so far) and deleted (at its shutdown).
    pub fn qdisc_changes(&self) -> (QdiscChanges, QdiscChanges) {
        (self.qdiscs_added, self.qdiscs_deleted)
    }
}

/// Trie entries per batch call: bounds the buffers (28-byte keys) and the time one
/// syscall keeps the kernel busy; a million peers take 16 calls.
const TRIE_BATCH: usize = 1 << 16;

/// Writes `changed` into the peer trie, then deletes `stale`, in batches of
/// [`TRIE_BATCH`] entries per bpf(2) call (BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH:
/// one syscall instead of one per prefix, which at a million prefixes is most of an
/// install). The kernel writes a batch's entries one by one, each as a single update
/// does, so a packet still meets an entry's old class or its new one. A kernel without
/// batch operations on LPM tries gets the same writes one call each. A stale entry that
/// is already gone is not an error (as before).
fn write_trie(trie: &mut aya::maps::Map, changed: &[((u32, Prefix), u32)], stale: &[(u32, Prefix)]) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    // Checks the map's type and its key and value sizes before any raw write.
    LpmTrie::<&mut MapData, AddrKeyData, u32>::try_from(&mut *trie)?;
    let aya::maps::Map::LpmTrie(data) = &*trie else { return Err(anyhow!("map {} is not an LPM trie", names::PEERS)) };
    let fd = data.fd().as_fd().as_raw_fd();
    let mut batched = true;
    for chunk in changed.chunks(TRIE_BATCH) {
        if batched {
            let keys = key_bytes(chunk.iter().map(|(k, _)| k));
            let values: Vec<u8> = chunk.iter().flat_map(|(_, class)| class.to_ne_bytes()).collect();
            match crate::bpfsys::map_update_batch(fd, &keys, &values, chunk.len()) {
                Ok(()) => continue,
                Err(e) if e.unsupported() => batched = false,
                Err(e) => {
                    return Err(e.error).with_context(|| format!("adding peer prefixes ({} written)", e.done));
                }
            }
        }
        let mut map: LpmTrie<&mut MapData, AddrKeyData, u32> = LpmTrie::try_from(&mut *trie)?;
        for ((which, prefix), class) in chunk {
            map.insert(&trie_key(*which, prefix), class, 0).context("adding a peer prefix")?;
        }
    }
    for chunk in stale.chunks(TRIE_BATCH) {
        let mut rest = chunk;
        while batched && !rest.is_empty() {
            let keys = key_bytes(rest.iter());
            match crate::bpfsys::map_delete_batch(fd, &keys, rest.len()) {
                Ok(()) => rest = &[],
                Err(e) if e.unsupported() => batched = false,
                // The entry at `done` is gone already (or cannot go): skip it.
                Err(e) => rest = &rest[(e.done + 1).min(rest.len())..],
            }
        }
        if !batched {
            let mut map: LpmTrie<&mut MapData, AddrKeyData, u32> = LpmTrie::try_from(&mut *trie)?;
            for (which, prefix) in rest {
                let _ = map.remove(&trie_key(*which, prefix));
            }
        }
    }
    Ok(())
}

/// Trie keys packed as the kernel reads a batch of them.
fn key_bytes<'a>(keys: impl Iterator<Item = &'a (u32, Prefix)>) -> Vec<u8> {
    const SIZE: usize = std::mem::size_of::<Key<AddrKeyData>>();
    let mut out = Vec::with_capacity(keys.size_hint().0 * SIZE);
    for (which, prefix) in keys {
        let key = trie_key(*which, prefix);
        // SAFETY: Key is repr(C, packed) of a u32 and byte arrays: SIZE plain bytes.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts((&key as *const Key<AddrKeyData>).cast::<u8>(), SIZE)
        });
    }
    out
}

/// The order of trie keys as the trie walks them.
fn trie_order(which: u32, prefix: &Prefix) -> (u32, u8, [u8; 16], u8) {
    (which, prefix.family, prefix.addr, prefix.len)
}

fn trie_key(which: u32, prefix: &Prefix) -> Key<AddrKeyData> {
    Key::new(AddrKeyData::HEADER_BITS + prefix.len as u32, AddrKeyData::new(which, prefix.family, prefix.addr))
}

/// One attachment to remove: the run's own link, or a dead run's netlink filter rebuilt
/// from its ledger record (`SchedClassifierLink::attached`).
pub struct Removal {
    pub iface: Interface,
    pub hook: TcAttachType,
    /// The attached program's id, when known (to tell a filter still in place apart).
    pub program: Option<u32>,
    pub link: SchedClassifierLink,
}

/// Removes what a run attached, the one implementation behind a run's revert
/// ([`Instance::shutdown`]) and the crash sweep: detaches every link (an attachment on a
/// vanished device, or a filter someone else deleted, is gone already and not an
/// error), then, on the netlink path, deletes each clsact qdisc chaos-ebpf added on
/// those devices once no filter is left on it. Call inside the namespace. What was
/// removed goes to `removed` (netlink filters only: TCX links also go with the
/// process), what is still there to `remaining`; returns the clsact qdiscs it deleted.
pub fn remove_attachments(
    mode: AttachMode,
    netns: NetnsId,
    removals: Vec<Removal>,
    removed: &mut Vec<String>,
    remaining: &mut Vec<String>,
) -> QdiscChanges {
    use aya::programs::links::Link as _;
    let mut devices: Vec<u32> = Vec::new();
    for r in removals {
        if !devices.contains(&r.iface.index) {
            devices.push(r.iface.index);
        }
        let what = format!("{} {}", r.iface.name, hook_name(r.hook));
        match r.link.detach() {
            Ok(()) if mode == AttachMode::Netlink => removed.push(format!("netlink filter {what}")),
            Ok(()) => {}
            Err(e) if still_attached(mode, &r.iface, r.hook, r.program) => {
                remaining.push(format!("detaching from {what}: {e}"))
            }
            Err(_) => {}
        }
    }
    let mut deleted = QdiscChanges::default();
    if mode != AttachMode::Netlink {
        return deleted;
    }
    for ifindex in devices {
        let change = QdiscChange::start(ifindex);
        match release_clsact(netns, ifindex) {
            Ok(true) => {
                deleted.record(change);
                removed.push(format!("clsact qdisc on ifindex {ifindex}"));
            }
            Ok(false) => {}
            Err(e) => remaining.push(format!("releasing the clsact qdisc of ifindex {ifindex}: {e}")),
        }
    }
    deleted
}

fn program_id(ids: &[u32; 4], program: &str) -> u32 {
    ids[names::PROGRAMS.iter().position(|p| *p == program).expect("one of names::PROGRAMS")]
}

/// Whether `program` is attached to the hook of `iface`, in the calling thread's
/// namespace: in the TCX chain, or as a netlink filter.
fn program_attached(mode: AttachMode, iface: &Interface, hook: TcAttachType, program: u32) -> Result<bool, String> {
    match mode {
        AttachMode::Netlink => netlink::clsact_filters(iface.index, hook == TcAttachType::Ingress)
            .map(|filters| filters.iter().any(|f| f.program_id == Some(program)))
            .map_err(|e| e.to_string()),
        _ => SchedClassifier::query_tcx(&iface.name, hook)
            .map(|(_, progs)| progs.iter().any(|p| p.id() == program))
            .map_err(|e| e.to_string()),
    }
}

/// Whether `program` (unknown: assume so) is still attached to the hook of `iface` after
/// a failed detach; a vanished interface took it with it.
fn still_attached(mode: AttachMode, iface: &Interface, hook: TcAttachType, program: Option<u32>) -> bool {
    let present = crate::netns::interfaces().map(|list| list.iter().any(|i| i.index == iface.index)).unwrap_or(true);
    let Some(program) = program.filter(|_| present) else { return present };
    program_attached(mode, iface, hook, program).unwrap_or(true)
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Deletes a clsact qdisc chaos-ebpf added once no filter (ours or anyone's) is left on
/// it. Call inside the interface's namespace. A clsact without our marker was there
/// before and stays.
pub fn release_clsact(netns: crate::netns::NetnsId, ifindex: u32) -> std::io::Result<bool> {
    let marker = ledger::clsact_marker(netns, ifindex);
    if !marker.exists() {
        return Ok(false);
    }
    let gone = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENODEV);
    // A device that is gone (a segmenter pair deleted before its marker is looked at)
    // took its qdisc with it: a filter dump of it may come back empty rather than fail.
    let deleted = match netlink::clsact_has_filters(ifindex) {
        Ok(true) => return Ok(false),
        Ok(false) => match netlink::delete_clsact(ifindex) {
            Ok(deleted) => deleted,
            Err(e) if gone(&e) => false,
            Err(e) => return Err(e),
        },
        Err(e) if gone(&e) => false,
        Err(e) => return Err(e),
    };
    let _ = fs::remove_file(&marker);
    Ok(deleted)
}

/// The number of possible CPUs (per-CPU map values), read once: aya's nr_cpus parses a
/// sysfs file on every call, a fifth of a millisecond of each install.
fn possible_cpus() -> Result<usize> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(n) = CPUS.get() {
        return Ok(*n);
    }
    let n = nr_cpus().map_err(|(_, e)| e)?;
    Ok(*CPUS.get_or_init(|| n))
}

/// CLOCK_MONOTONIC in ns, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
