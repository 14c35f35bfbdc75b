//! Compiles an instance's rules into the two maps a packet finds its rules in
//! (docs/datapath.md, "Finding the rules"): CHAOS_PEERS, an LPM trie from (role, address
//! prefix) to an address class, and CHAOS_DISPATCH, from (interface, direction, source
//! class, destination class) to the slots of the rules acting there.
//!
//! An address class stands for the set of peer sets an address belongs to. The trie
//! returns the longest prefix that covers an address, and every prefix that covers the
//! address also covers that longest one, so the peer sets of an address are a function of
//! its longest prefix: each prefix gets the class of "every set holding it or a shorter
//! prefix above it". Overlapping peers of different rules (10.0.0.0/8 in one, 10.1.0.0/16
//! in another) therefore need no per-rule lookups.
//!
//! Pure: no kernel, so the compiler is unit-tested here and the instance only writes the
//! difference between two compiled states.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chaos_ebpf_common::{direction, flags, lookups, role, DispatchKey, Prefix, Rule, DISPATCH_WIDTH};

/// A set of peer prefixes, by number (one per rule's peers, one per matrix group).
pub type SetId = u32;

/// What a rule matches by address in one direction: both parts must hold; None is any
/// address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrMatch {
    pub direction: u32,
    pub src: Option<SetId>,
    pub dst: Option<SetId>,
}

/// How one rule is found: its interface (0: all) and its address matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleAddrs {
    pub ifindex: u32,
    pub matches: Vec<AddrMatch>,
}

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// (role, prefix) -> address class (never 0).
    pub addrs: HashMap<(u32, Prefix), u32>,
    /// Dispatch key -> rule slots, ascending.
    pub dispatch: HashMap<DispatchKey, Vec<u32>>,
    /// Bits of chaos_ebpf_common::lookups.
    pub lookups: u32,
}

/// Why rules do not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooMany {
    /// More than DISPATCH_WIDTH rules act on the same packets.
    Stacked { slots: Vec<u32> },
    /// The combinations of interfaces, directions and address classes need more
    /// dispatch entries than the map holds.
    Entries { needed: usize, limit: usize },
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TooMany::Stacked { slots } => write!(
                f,
                "{} faults would act on the same packets (rule slots {slots:?}); at most {DISPATCH_WIDTH} can",
                slots.len()
            ),
            TooMany::Entries { needed, limit } => write!(
                f,
                "the faults' interfaces, directions and overlapping peer sets need {needed} dispatch entries; at most {limit} fit"
            ),
        }
    }
}

/// The rules of one instance and their peer sets, compiled on every change.
#[derive(Debug, Default)]
pub struct Compiler {
    rules: BTreeMap<u32, RuleAddrs>,
    sets: BTreeMap<SetId, Vec<Prefix>>,
    next_set: SetId,
    /// Per role (index role - 1): membership -> class, kept across compiles so an
    /// address whose sets did not change keeps its class (its trie entry is not
    /// rewritten).
    classes: [HashMap<Vec<SetId>, u32>; ROLES],
    next_class: u32,
}

/// The address matches of an ordinary rule: its peers (set `peers`, when the rule has
/// the PEERS flag) are the destination of what it sends and the source of what it
/// receives, or the source on egress too for rules acting on the far end of a veth.
fn rule_matches(rule: &Rule, peers: Option<SetId>) -> Vec<AddrMatch> {
    let mut out = Vec::new();
    let peers = if rule.flags & flags::PEERS != 0 { peers } else { None };
    let restricted = rule.flags & flags::PEERS != 0;
    for dir in [direction::EGRESS, direction::INGRESS] {
        if rule.directions & dir == 0 {
            continue;
        }
        let peer_is_source = dir == direction::INGRESS || rule.flags & flags::PEER_IS_SOURCE != 0;
        let m = match (restricted, peer_is_source) {
            (false, _) => AddrMatch { direction: dir, src: None, dst: None },
            // A rule with the PEERS flag and no set matches nothing.
            (true, _) if peers.is_none() => continue,
            (true, true) => AddrMatch { direction: dir, src: peers, dst: None },
            (true, false) => AddrMatch { direction: dir, src: None, dst: peers },
        };
        out.push(m);
    }
    out
}

/// What a partition matrix's rule matches: on each of the rule's directions, packets from
/// a member of group `a` to a member of group `b`, for every cut pair `(a, b)` (indices
/// into `groups`, the groups' sets).
fn matrix_matches(rule: &Rule, groups: &[SetId], cuts: &[(usize, usize)]) -> Vec<AddrMatch> {
    let mut out = Vec::new();
    for dir in [direction::EGRESS, direction::INGRESS] {
        if rule.directions & dir != 0 {
            out.extend(cuts.iter().map(|&(a, b)| AddrMatch {
                direction: dir,
                src: Some(groups[a]),
                dst: Some(groups[b]),
            }));
        }
    }
    out
}

/// The addresses a rule acts on: its peers (with the PEERS flag), or the groups of a
/// partition matrix and its cut pairs (indices into `groups`).
pub enum Addressing<'a> {
    Peers(&'a [Prefix]),
    Matrix { groups: &'a [Vec<Prefix>], cuts: &'a [(usize, usize)] },
}

impl Compiler {
    /// Registers the peer sets `rule` needs: the sets, and how the rule is found (for
    /// `set_rule`). A run's install and its preflight both call this, so they agree.
    pub fn rule_addrs(&mut self, rule: &Rule, addressing: Addressing<'_>) -> (Vec<SetId>, RuleAddrs) {
        let (sets, matches) = match addressing {
            Addressing::Peers(peers) => {
                let set = (rule.flags & flags::PEERS != 0).then(|| self.add_set(peers.to_vec()));
                (set.into_iter().collect::<Vec<_>>(), rule_matches(rule, set))
            }
            Addressing::Matrix { groups, cuts } => {
                let sets: Vec<SetId> = groups.iter().map(|g| self.add_set(g.clone())).collect();
                let matches = matrix_matches(rule, &sets, cuts);
                (sets, matches)
            }
        };
        (sets, RuleAddrs { ifindex: rule.ifindex, matches })
    }

    /// Registers a peer set (as its [`aggregate`]: the same addresses in the fewest
    /// prefixes); its id is unique for this compiler's lifetime.
    pub fn add_set(&mut self, prefixes: Vec<Prefix>) -> SetId {
        self.next_set += 1;
        self.sets.insert(self.next_set, aggregate(prefixes));
        self.next_set
    }

    pub fn remove_set(&mut self, id: SetId) {
        self.sets.remove(&id);
    }

    pub fn set_rule(&mut self, slot: u32, addrs: RuleAddrs) {
        self.rules.insert(slot, addrs);
    }

    pub fn remove_rule(&mut self, slot: u32) -> Option<RuleAddrs> {
        self.rules.remove(&slot)
    }

    pub fn rule(&self, slot: u32) -> Option<&RuleAddrs> {
        self.rules.get(&slot)
    }

    /// Prefixes over all sets (what the trie must hold, per role used).
    pub fn prefix_count(&self) -> usize {
        self.sets.values().map(Vec::len).sum()
    }

    /// The maps' content for the current rules, or why it cannot be built.
    pub fn compile(&mut self, max_entries: usize) -> Result<Compiled, TooMany> {
        let mut out = Compiled::default();
        // Per role (index role - 1): the classes in use (0 always: "in no set"), and for
        // each set the classes that contain it.
        let mut containing: [HashMap<SetId, BTreeSet<u32>>; ROLES] = Default::default();
        let mut all_classes: [BTreeSet<u32>; ROLES] = std::array::from_fn(|_| BTreeSet::from([0]));
        for index in 0..ROLES {
            let which = index as u32 + 1;
            let used: BTreeSet<SetId> =
                self.rules.values().flat_map(|r| &r.matches).filter_map(|m| set_in_role(m, which)).collect();
            if used.is_empty() {
                self.classes[index].clear();
                continue;
            }
            out.lookups |= lookups::by_role(which);
            // Each prefix, and the sets holding exactly it.
            let total: usize = used.iter().filter_map(|set| self.sets.get(set)).map(Vec::len).sum();
            let mut exact: HashMap<Prefix, Vec<SetId>> = HashMap::with_capacity(total);
            out.addrs.reserve(total);
            for set in &used {
                for prefix in self.sets.get(set).map(Vec::as_slice).unwrap_or_default() {
                    let holders = exact.entry(*prefix).or_default();
                    if holders.last() != Some(set) {
                        holders.push(*set);
                    }
                }
            }
            // Only the prefix lengths in use can cover a prefix (usually one or two).
            let lengths: BTreeSet<(u8, u8)> = exact.keys().map(|p| (p.family, p.len)).collect();
            // The shortest length in use per family: a prefix of that length is covered
            // by itself only, and its sets are those holding it (ascending, as `used`
            // is): no set to build per prefix, which at a million peers is most of a
            // compile.
            let shortest = |family: u8| lengths.iter().find(|(f, _)| *f == family).map_or(0, |(_, len)| *len);
            let mut memberships: HashMap<Vec<SetId>, u32> = HashMap::new();
            for (prefix, holders) in &exact {
                let member: std::borrow::Cow<[SetId]> = if prefix.len <= shortest(prefix.family) {
                    std::borrow::Cow::Borrowed(holders)
                } else {
                    let mut member: BTreeSet<SetId> = BTreeSet::new();
                    for &(family, len) in &lengths {
                        if family != prefix.family || len > prefix.len {
                            continue;
                        }
                        if let Some(holders) = exact.get(&prefix.truncated(len)) {
                            member.extend(holders);
                        }
                    }
                    std::borrow::Cow::Owned(member.into_iter().collect())
                };
                let class = match memberships.get(member.as_ref()) {
                    Some(class) => *class,
                    None => {
                        let member = member.into_owned();
                        let class = match self.classes[index].get(&member) {
                            Some(class) => *class,
                            None => {
                                self.next_class += 1;
                                self.next_class
                            }
                        };
                        for set in &member {
                            containing[index].entry(*set).or_default().insert(class);
                        }
                        all_classes[index].insert(class);
                        memberships.insert(member, class);
                        class
                    }
                };
                out.addrs.insert((which, *prefix), class);
            }
            self.classes[index] = memberships;
        }

        // Interface-specific rules first: their cells are the only ones under their
        // interface, and rules for every interface join those cells too (the kernel
        // looks the interface up first and falls back to the entry for all).
        let specific: Vec<(&u32, &RuleAddrs)> = self.rules.iter().filter(|(_, r)| r.ifindex != 0).collect();
        let general: Vec<(&u32, &RuleAddrs)> = self.rules.iter().filter(|(_, r)| r.ifindex == 0).collect();
        let empty = BTreeSet::new();
        // The classes a match accepts in one role: those holding its set, or, for any
        // address, every class of that role (just 0 when no rule restricts it).
        let classes_of = |which: u32, set: Option<SetId>| -> &BTreeSet<u32> {
            let index = which as usize - 1;
            match set {
                None => &all_classes[index],
                Some(set) => containing[index].get(&set).unwrap_or(&empty),
            }
        };
        let mut cells: HashMap<DispatchKey, Vec<u32>> = HashMap::new();
        let add = |cells: &mut HashMap<DispatchKey, Vec<u32>>, key: DispatchKey, slot: u32| -> Result<(), TooMany> {
            let list = cells.entry(key).or_default();
            if list.last() != Some(&slot) {
                list.push(slot);
            }
            if cells.len() > max_entries {
                return Err(TooMany::Entries { needed: cells.len(), limit: max_entries });
            }
            Ok(())
        };
        let specific_keys: BTreeSet<u32> = specific.iter().map(|(_, r)| r.ifindex).collect();
        for (slot, rule) in specific.iter().chain(&general) {
            for m in &rule.matches {
                let (src_role, dst_role) = role::of(m.direction);
                for &src_class in classes_of(src_role, m.src) {
                    for &dst_class in classes_of(dst_role, m.dst) {
                        let key = DispatchKey { ifindex: rule.ifindex, direction: m.direction, src_class, dst_class };
                        add(&mut cells, key, **slot)?;
                        if rule.ifindex == 0 {
                            for &ifindex in &specific_keys {
                                let key = DispatchKey { ifindex, ..key };
                                if cells.contains_key(&key) {
                                    add(&mut cells, key, **slot)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        for list in cells.values_mut() {
            list.sort_unstable();
            list.dedup();
            if list.len() > DISPATCH_WIDTH {
                return Err(TooMany::Stacked { slots: list.clone() });
            }
        }
        if !specific_keys.is_empty() {
            out.lookups |= lookups::BY_IFINDEX;
        }
        out.dispatch = cells;
        Ok(out)
    }
}

/// The same addresses as `prefixes`, in the fewest prefixes: duplicates and prefixes
/// inside another of the set dropped, then two halves of one prefix (10.0.0.4/32 and
/// 10.0.0.5/32) merged into it (10.0.0.4/31), again and again. A set stands for the
/// union of its prefixes, so this changes no lookup (the compiler gives each address the
/// sets that cover it), and a lab's consecutive node addresses become a few trie entries
/// instead of one each: a matrix over 1,024 nodes writes a handful. IPv4 (mapped)
/// prefixes are merged no wider than the whole IPv4 space.
pub fn aggregate(mut prefixes: Vec<Prefix>) -> Vec<Prefix> {
    // Sorted by address then length, what is kept is disjoint and in order: a prefix
    // covering the next one can only be the last kept, and two halves of one prefix are
    // the last two kept. One pass, as a million peers need.
    prefixes.sort_unstable_by_key(|p| (p.family, p.addr, p.len));
    let floor = |p: &Prefix| if p.family == chaos_ebpf_common::family::IPV4 { 96 } else { 0 };
    let mut out: Vec<Prefix> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        if out.last().is_some_and(|k| k.family == p.family && k.len <= p.len && p.truncated(k.len) == *k) {
            continue;
        }
        out.push(p);
        while let [.., low, high] = out[..] {
            let halves = low.family == high.family
                && low.len == high.len
                && low.len > floor(&low)
                && low.addr < high.addr
                && sibling(&low) == high;
            if !halves {
                break;
            }
            out.truncate(out.len() - 2);
            out.push(low.truncated(low.len - 1));
        }
    }
    out
}

/// The other half of `p`'s parent prefix (its last bit flipped).
fn sibling(p: &Prefix) -> Prefix {
    let bit = p.len as usize - 1;
    let mut addr = p.addr;
    addr[bit / 8] ^= 0x80 >> (bit % 8);
    Prefix { addr, ..*p }
}

/// Roles of CHAOS_PEERS keys (chaos_ebpf_common::role): 1..=4.
const ROLES: usize = 4;

/// The set a match restricts the address in `which` role to (None: any, or another
/// hook's role).
fn set_in_role(m: &AddrMatch, which: u32) -> Option<SetId> {
    let (src_role, dst_role) = role::of(m.direction);
    if which == src_role {
        m.src
    } else if which == dst_role {
        m.dst
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_ebpf_common::{action, family};
    use std::net::Ipv4Addr;

    fn v4(text: &str) -> Prefix {
        let (addr, len) = text.split_once('/').unwrap();
        let addr: Ipv4Addr = addr.parse().unwrap();
        Prefix::new(family::IPV4, addr.to_ipv6_mapped().octets(), 96 + len.parse::<u8>().unwrap())
    }

    fn rule(directions: u32, peers: bool) -> Rule {
        Rule { action: action::DROP, directions, flags: if peers { flags::PEERS } else { 0 }, ..Rule::default() }
    }

    /// The slots a packet from `src` to `dst` finds, as the kernel would: longest
    /// prefix per role, then the interface's entry, else the one for all.
    fn lookup(c: &Compiled, ifindex: u32, dir: u32, src: Prefix, dst: Prefix) -> Vec<u32> {
        let class = |which: u32, addr: Prefix| {
            (0..=128u8)
                .rev()
                .find_map(|len| c.addrs.get(&(which, addr.truncated(len))).filter(|_| len <= addr.len))
                .copied()
                .unwrap_or(0)
        };
        let (src_role, dst_role) = role::of(dir);
        let src_class = if c.lookups & lookups::by_role(src_role) != 0 { class(src_role, src) } else { 0 };
        let dst_class = if c.lookups & lookups::by_role(dst_role) != 0 { class(dst_role, dst) } else { 0 };
        let key = DispatchKey { ifindex, direction: dir, src_class, dst_class };
        if c.lookups & lookups::BY_IFINDEX != 0 {
            if let Some(list) = c.dispatch.get(&key) {
                return list.clone();
            }
        }
        c.dispatch.get(&DispatchKey { ifindex: 0, ..key }).cloned().unwrap_or_default()
    }

    #[test]
    fn overlapping_peers_of_two_rules_each_find_their_rule() {
        let mut c = Compiler::default();
        let wide = c.add_set(vec![v4("10.0.0.0/8")]);
        let narrow = c.add_set(vec![v4("10.1.0.0/16")]);
        let r = rule(direction::EGRESS, true);
        c.set_rule(3, RuleAddrs { ifindex: 0, matches: rule_matches(&r, Some(wide)) });
        c.set_rule(7, RuleAddrs { ifindex: 0, matches: rule_matches(&r, Some(narrow)) });
        let out = c.compile(1 << 16).unwrap();
        let any = v4("192.0.2.1/32");
        assert_eq!(lookup(&out, 5, direction::EGRESS, any, v4("10.1.2.3/32")), vec![3, 7]);
        assert_eq!(lookup(&out, 5, direction::EGRESS, any, v4("10.2.2.3/32")), vec![3]);
        assert_eq!(lookup(&out, 5, direction::EGRESS, any, v4("11.0.0.1/32")), Vec::<u32>::new());
        // Ingress was not asked for.
        assert_eq!(lookup(&out, 5, direction::INGRESS, v4("10.1.2.3/32"), any), Vec::<u32>::new());
        assert_eq!(out.lookups, lookups::by_role(role::EGRESS_DESTINATION));
    }

    #[test]
    fn a_rule_without_peers_joins_every_class_and_interface_rules_keep_it() {
        let mut c = Compiler::default();
        let peers = c.add_set(vec![v4("198.51.100.0/24")]);
        let both = rule(direction::BOTH, true);
        c.set_rule(1, RuleAddrs { ifindex: 0, matches: rule_matches(&both, Some(peers)) });
        c.set_rule(2, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::BOTH, false), None) });
        c.set_rule(4, RuleAddrs { ifindex: 9, matches: rule_matches(&rule(direction::INGRESS, false), None) });
        let out = c.compile(1 << 16).unwrap();
        let (peer, other) = (v4("198.51.100.7/32"), v4("203.0.113.9/32"));
        assert_eq!(lookup(&out, 1, direction::EGRESS, other, peer), vec![1, 2]);
        assert_eq!(lookup(&out, 1, direction::INGRESS, peer, other), vec![1, 2]);
        assert_eq!(lookup(&out, 1, direction::INGRESS, other, peer), vec![2], "ingress peers are sources");
        assert_eq!(lookup(&out, 9, direction::INGRESS, peer, other), vec![1, 2, 4]);
        assert_eq!(lookup(&out, 9, direction::INGRESS, other, other), vec![2, 4]);
        assert_eq!(lookup(&out, 9, direction::EGRESS, other, peer), vec![1, 2]);
        let roles = lookups::by_role(role::EGRESS_DESTINATION) | lookups::by_role(role::INGRESS_SOURCE);
        assert_eq!(out.lookups, roles | lookups::BY_IFINDEX);
    }

    #[test]
    fn a_matrix_cuts_only_its_pairs() {
        let mut c = Compiler::default();
        let groups: Vec<SetId> =
            ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"].iter().map(|g| c.add_set(vec![v4(g)])).collect();
        // A ring of three cut one way round: a->b, b->c.
        let matches = [(0, 1), (1, 2)]
            .iter()
            .map(|&(a, b)| AddrMatch { direction: direction::INGRESS, src: Some(groups[a]), dst: Some(groups[b]) })
            .collect();
        c.set_rule(0, RuleAddrs { ifindex: 0, matches });
        let out = c.compile(1 << 16).unwrap();
        let node = |g: u8| v4(&format!("10.0.{g}.5/32"));
        for a in 0..3u8 {
            for b in 0..3u8 {
                let cut = matches!((a, b), (0, 1) | (1, 2));
                let found = lookup(&out, 4, direction::INGRESS, node(a), node(b));
                assert_eq!(found.is_empty(), !cut, "{a}->{b}");
            }
        }
        assert_eq!(out.dispatch.len(), 2, "one entry per cut pair");
    }

    #[test]
    fn too_many_stacked_rules_are_refused() {
        let mut c = Compiler::default();
        for slot in 0..=DISPATCH_WIDTH as u32 {
            c.set_rule(slot, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::EGRESS, false), None) });
        }
        match c.compile(1 << 16) {
            Err(TooMany::Stacked { slots }) => assert_eq!(slots.len(), DISPATCH_WIDTH + 1),
            other => panic!("{other:?}"),
        }
        assert!(c.compile(0).is_err());
    }

    #[test]
    fn unchanged_addresses_keep_their_class() {
        let mut c = Compiler::default();
        let a = c.add_set(vec![v4("10.0.0.0/24")]);
        c.set_rule(0, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::EGRESS, true), Some(a)) });
        let before = c.compile(1 << 16).unwrap();
        let b = c.add_set(vec![v4("10.9.0.0/24")]);
        c.set_rule(1, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::EGRESS, true), Some(b)) });
        let after = c.compile(1 << 16).unwrap();
        let key = (role::EGRESS_DESTINATION, v4("10.0.0.0/24"));
        assert_eq!(before.addrs[&key], after.addrs[&key]);
        assert_eq!(after.addrs.len(), 2);
    }

    #[test]
    fn a_thousand_rules_in_both_directions_need_one_entry_per_rule_and_hook() {
        let mut c = Compiler::default();
        for slot in 0..1000u32 {
            let set = c.add_set(vec![Prefix::new(
                family::IPV4,
                Ipv4Addr::from(0x0a00_0000 + slot).to_ipv6_mapped().octets(),
                128,
            )]);
            c.set_rule(slot, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::BOTH, true), Some(set)) });
        }
        let out = c.compile(1 << 16).unwrap();
        assert_eq!(out.dispatch.len(), 2000);
        assert_eq!(out.addrs.len(), 2000);
    }

    /// Every address of a small space, looked up by longest prefix, gets the same sets
    /// before and after aggregation; consecutive addresses merge into few prefixes.
    #[test]
    fn consecutive_addresses_aggregate_exactly() {
        let host = |i: u32| v4(&format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i)));
        // 0..512 (one /23), then 600..700 (odd bounds), a /30 inside the /23 and a
        // duplicate: covered and repeated prefixes go.
        let mut raw: Vec<Prefix> = (0..512).chain(600..700).map(host).collect();
        raw.push(v4("10.0.0.8/30"));
        raw.push(host(3));
        let merged = aggregate(raw.clone());
        assert_eq!(merged.iter().filter(|p| p.len == 96 + 23).count(), 1, "{merged:?}");
        assert!(merged.len() <= 1 + 2 * 7, "{} prefixes: {merged:?}", merged.len());
        let in_set = |set: &[Prefix], addr: Prefix| set.iter().any(|p| addr.truncated(p.len) == *p);
        for i in 0..1024 {
            assert_eq!(in_set(&raw, host(i)), in_set(&merged, host(i)), "10.0.x.x + {i}");
        }
        // Two sets overlapping where one is merged: the lookups are those of the raw sets.
        let mut c = Compiler::default();
        let wide = c.add_set((0..256).map(host).collect());
        let narrow = c.add_set(vec![host(5), host(300)]);
        let r = rule(direction::EGRESS, true);
        c.set_rule(1, RuleAddrs { ifindex: 0, matches: rule_matches(&r, Some(wide)) });
        c.set_rule(2, RuleAddrs { ifindex: 0, matches: rule_matches(&r, Some(narrow)) });
        let out = c.compile(1 << 16).unwrap();
        assert!(out.addrs.len() <= 3, "{:?}", out.addrs);
        let any = v4("192.0.2.1/32");
        for i in 0..400 {
            let want: Vec<u32> =
                [(i < 256, 1), (i == 5 || i == 300, 2)].iter().filter(|(m, _)| *m).map(|(_, s)| *s).collect();
            assert_eq!(lookup(&out, 1, direction::EGRESS, any, host(i)), want, "10.0.x.x + {i}");
        }
        // IPv4 merges stop at the whole IPv4 space.
        assert_eq!(aggregate(vec![v4("0.0.0.0/1"), v4("128.0.0.0/1")]), vec![v4("0.0.0.0/0")]);
    }

    #[test]
    fn a_million_exact_peers_share_one_class() {
        let mut c = Compiler::default();
        let prefixes: Vec<Prefix> = (0..1_000_000u32)
            .map(|i| Prefix::new(family::IPV4, Ipv4Addr::from(0x0a00_0000 + i).to_ipv6_mapped().octets(), 128))
            .collect();
        let set = c.add_set(prefixes.clone());
        c.set_rule(0, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::EGRESS, true), Some(set)) });
        let out = c.compile(1 << 16).unwrap();
        // Consecutive: 10.0.0.0 to 10.15.66.63 in 8 prefixes (/12, /15, ...).
        assert!(out.addrs.len() < 20, "{}", out.addrs.len());
        // Every other address: nothing merges.
        let mut c = Compiler::default();
        let set = c.add_set(prefixes.iter().step_by(2).copied().collect());
        c.set_rule(0, RuleAddrs { ifindex: 0, matches: rule_matches(&rule(direction::EGRESS, true), Some(set)) });
        let out = c.compile(1 << 16).unwrap();
        assert_eq!(out.addrs.len(), 500_000);
        assert_eq!(out.addrs.values().collect::<BTreeSet<_>>().len(), 1);
        assert_eq!(out.dispatch.len(), 1);
    }
}
