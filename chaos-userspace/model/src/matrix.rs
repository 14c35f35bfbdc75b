//! Groups of nodes and partition matrices (issue 11): which groups of a cluster cannot
//! reach which, as one fault. Every way of writing a matrix in a scenario (explicit cuts,
//! ring, bridge, majority-minority, halves) becomes one canonical value: the list of
//! groups (each a list of members) and the set of ordered cut pairs `(i, j)` of group
//! indices, meaning "packets from group i to group j are dropped". Pure: the engine
//! binds members to namespaces and addresses when it applies a matrix.

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::Serialize;

use crate::spec::{list_some, shorten, Cidr, Problem};

/// Most groups one matrix (and the scenario's `groups:`) may have.
pub const MAX_GROUPS: usize = 256;
/// Most members one group or one matrix may have once node ranges are expanded.
pub const MAX_MEMBERS: usize = 4096;
/// Most members all the matrices of one scenario may have together (each step keeps its
/// own copy of its groups).
pub const MAX_MEMBERS_IN_ALL: usize = 1 << 18;
/// Longest cgroup path of a member (as for targets).
const MAX_PATH: usize = 256;

/// What a group member is. More kinds (pods) can be added without changing the matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupMember {
    /// A cluster-lab node by name (`node:n3`; `node:n1-n8` is eight of them).
    Node(String),
    /// Every address in an IPv4 or IPv6 prefix.
    Cidr(CidrKey),
    /// The processes of a cgroup v2 (path relative to the cgroup2 mount, or absolute).
    Cgroup(String),
}

/// A `Cidr` that can be ordered and hashed, as members are compared and indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrKey {
    pub addr: std::net::IpAddr,
    pub len: u8,
}

impl From<Cidr> for CidrKey {
    fn from(c: Cidr) -> Self {
        CidrKey { addr: c.addr, len: c.len }
    }
}

impl CidrKey {
    pub fn cidr(self) -> Cidr {
        Cidr { addr: self.addr, len: self.len }
    }

    /// Whether `self` contains `other` (same family, `other` inside).
    fn contains(self, other: CidrKey) -> bool {
        let ((f, lo, hi), (g, olo, ohi)) = (self.range(), other.range());
        f == g && lo <= olo && ohi <= hi
    }

    /// The family and the first and last address (IPv4 in the top 32 bits, so the
    /// prefix length counts from the top in both families).
    fn range(self) -> (bool, u128, u128) {
        let bits = match self.addr {
            std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            std::net::IpAddr::V6(v6) => u128::from(v6),
        };
        let free = 128 - u32::from(self.len);
        let mask = if free >= 128 { u128::MAX } else { (1u128 << free) - 1 };
        (self.addr.is_ipv4(), bits & !mask, bits | mask)
    }
}

/// Members seen so far and who owns each, to find overlaps in O(log n) per member:
/// nodes by name, prefixes as address ranges, cgroups as paths. Prefixes (and cgroup
/// subtrees) are either nested or apart, so among members that do not overlap one
/// another, a new one can only overlap its neighbours in address (or path) order.
#[derive(Debug, Default)]
pub struct MemberIndex {
    nodes: std::collections::HashMap<String, usize>,
    cidrs: std::collections::BTreeMap<(bool, u128), (u128, GroupMember, usize)>,
    cgroups: std::collections::BTreeMap<Vec<String>, (GroupMember, usize)>,
}

impl MemberIndex {
    /// Adds `m` for `owner`; or, when it overlaps a member already in, that member and
    /// its owner (the index is left as it was).
    pub fn insert(&mut self, m: &GroupMember, owner: usize) -> Result<(), (GroupMember, usize)> {
        match m {
            GroupMember::Node(n) => {
                if let Some(&other) = self.nodes.get(n) {
                    return Err((m.clone(), other));
                }
                self.nodes.insert(n.clone(), owner);
            }
            GroupMember::Cidr(c) => {
                let (v4, lo, hi) = c.range();
                if let Some(((f, _), (prev_hi, other, o))) = self.cidrs.range(..=(v4, lo)).next_back() {
                    if *f == v4 && *prev_hi >= lo {
                        return Err((other.clone(), *o));
                    }
                }
                if let Some(((f, next_lo), (_, other, o))) = self.cidrs.range((v4, lo)..).next() {
                    if *f == v4 && *next_lo <= hi {
                        return Err((other.clone(), *o));
                    }
                }
                self.cidrs.insert((v4, lo), (hi, m.clone(), owner));
            }
            GroupMember::Cgroup(p) => {
                let path: Vec<String> = p.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect();
                let prefix_of = |a: &[String], b: &[String]| b.starts_with(a);
                if let Some((before, (other, o))) = self.cgroups.range(..=path.clone()).next_back() {
                    if prefix_of(before, &path) {
                        return Err((other.clone(), *o));
                    }
                }
                if let Some((after, (other, o))) = self.cgroups.range(path.clone()..).next() {
                    if prefix_of(&path, after) {
                        return Err((other.clone(), *o));
                    }
                }
                self.cgroups.insert(path, (m.clone(), owner));
            }
        }
        Ok(())
    }
}

impl GroupMember {
    pub const FORMS: &'static str =
        "node:n3, node:n1-n8, an address or prefix (198.18.0.0/24, fd00::/64) or cgroup:PATH";

    /// Parses one member as written in a group; a node range gives one member per node.
    pub fn parse(text: &str) -> Result<Vec<GroupMember>, Problem> {
        let shown = shorten(text, 60);
        if let Some(name) = text.strip_prefix("node:") {
            return node_members(name);
        }
        if let Some(path) = text.strip_prefix("cgroup:") {
            if path.is_empty() || path.len() > MAX_PATH || path.split('/').any(|c| c == "..") {
                return Err(Problem::new(
                    format!("'{shown}' is not a cgroup path"),
                    "write cgroup:PATH (inside the cgroup2 mount, at most 256 bytes, no '..')",
                ));
            }
            // `cgroup:/` is the root: every process.
            let path = match path.trim_end_matches('/') {
                "" => "/",
                trimmed => trimmed,
            };
            return Ok(vec![GroupMember::Cgroup(path.to_owned())]);
        }
        if let Ok(cidr) = text.parse::<Cidr>() {
            return Ok(vec![GroupMember::Cidr(cidr.into())]);
        }
        match text.split_once(':') {
            Some(("pod", _)) => Err(Problem::new(
                format!("'{shown}': pods are not supported as group members yet"),
                format!("name the pod's node or address instead: {}", GroupMember::FORMS),
            )),
            Some((kind, _)) if !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                Err(Problem::new(
                    format!("unknown group member kind '{}' in '{shown}'", shorten(kind, 20)),
                    format!("write a member as {}", GroupMember::FORMS),
                ))
            }
            _ => Err(Problem::new(
                format!("'{shown}' is not a group member"),
                format!("write a member as {}", GroupMember::FORMS),
            )),
        }
    }

    /// Whether two members can name the same packets: the same node, nested prefixes,
    /// nested cgroups. A node and an address are not compared (the lab gives nodes their
    /// addresses when a run binds them).
    pub fn overlaps(&self, other: &GroupMember) -> bool {
        match (self, other) {
            (GroupMember::Node(a), GroupMember::Node(b)) => a == b,
            (GroupMember::Cidr(a), GroupMember::Cidr(b)) => a.contains(*b) || b.contains(*a),
            (GroupMember::Cgroup(a), GroupMember::Cgroup(b)) => {
                let (a, b) = (a.trim_start_matches('/'), b.trim_start_matches('/'));
                let nested = |outer: &str, inner: &str| {
                    outer.is_empty() || inner == outer || inner.strip_prefix(outer).is_some_and(|r| r.starts_with('/'))
                };
                nested(a, b) || nested(b, a)
            }
            _ => false,
        }
    }

    /// Orders nodes by name with numbers as numbers (n2 before n10), then the others.
    pub fn natural_key(&self) -> (u8, String, u64, String) {
        match self {
            GroupMember::Node(n) => {
                let digits = n.find(|c: char| c.is_ascii_digit()).unwrap_or(n.len());
                let number = n[digits..].parse::<u64>().unwrap_or(u64::MAX);
                (0, n[..digits].to_owned(), number, n.clone())
            }
            other => (1, String::new(), 0, other.to_string()),
        }
    }

    pub fn is_node(&self) -> bool {
        matches!(self, GroupMember::Node(_))
    }
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupMember::Node(n) => write!(f, "node:{n}"),
            GroupMember::Cidr(c) => write!(f, "{}", c.cidr()),
            GroupMember::Cgroup(p) => write!(f, "cgroup:{p}"),
        }
    }
}

impl Serialize for GroupMember {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `n3` is one node; `n1-n8` and `n1-8` are n1..n8 (one prefix of letters, then numbers).
fn node_members(name: &str) -> Result<Vec<GroupMember>, Problem> {
    let bad = || {
        Problem::new(
            format!("'node:{}' is not a lab node or node range", shorten(name, 40)),
            "write node:n3 or a range node:n1-n8 (members are n1..nN; `chaos-ebpf lab status` lists them)",
        )
    };
    let split = |s: &str| -> Option<(String, u64)> {
        let digits = s.find(|c: char| c.is_ascii_digit())?;
        let (prefix, number) = s.split_at(digits);
        if !prefix.chars().all(|c| c.is_ascii_alphabetic()) || number.len() > 9 {
            return None;
        }
        Some((prefix.to_owned(), number.parse().ok()?))
    };
    if let Some((Some((prefix, first)), Some((hi_prefix, last)))) =
        name.split_once('-').map(|(a, b)| (split(a), split(b)))
    {
        if !hi_prefix.is_empty() && hi_prefix != prefix {
            return Err(bad());
        }
        if first > last {
            return Err(Problem::new(
                format!("node range 'node:{}' runs backwards", shorten(name, 40)),
                "write the lower node first (node:n1-n8)",
            ));
        }
        if last - first >= MAX_MEMBERS as u64 {
            return Err(Problem::new(
                format!(
                    "node range 'node:{}' has {} nodes; a group has at most {MAX_MEMBERS}",
                    shorten(name, 40),
                    last - first + 1
                ),
                "split the nodes into smaller groups",
            ));
        }
        return Ok((first..=last).map(|i| GroupMember::Node(format!("{prefix}{i}"))).collect());
    }
    match crate::action::LabSelector::parse(&format!("node:{name}")) {
        Some(Ok(crate::action::LabSelector::Node(n))) => Ok(vec![GroupMember::Node(n)]),
        _ => Err(bad()),
    }
}

/// One group of a matrix: its name (as in `groups:`, or given by a shorthand) and members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatrixGroup {
    pub name: String,
    pub members: Vec<GroupMember>,
}

impl MatrixGroup {
    /// `node:n1..n8 (8 nodes)`, `198.18.0.0/29, cgroup:/x (2 members)`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut run: Option<(String, u64, u64)> = None;
        let close = |run: &mut Option<(String, u64, u64)>, parts: &mut Vec<String>| {
            if let Some((p, a, b)) = run.take() {
                parts.push(if a == b { format!("node:{p}{a}") } else { format!("node:{p}{a}..{p}{b}") });
            }
        };
        for m in &self.members {
            let numbered = match m {
                GroupMember::Node(n) => n
                    .find(|c: char| c.is_ascii_digit())
                    .filter(|&d| n[..d].chars().all(|c| c.is_ascii_alphabetic()))
                    .and_then(|d| Some((n[..d].to_owned(), n[d..].parse::<u64>().ok()?))),
                _ => None,
            };
            match (numbered, &mut run) {
                (Some((p, i)), Some((rp, _, last))) if *rp == p && *last + 1 == i => *last = i,
                (Some((p, i)), _) => {
                    close(&mut run, &mut parts);
                    run = Some((p, i, i));
                }
                (None, _) => {
                    close(&mut run, &mut parts);
                    parts.push(m.to_string());
                }
            }
        }
        close(&mut run, &mut parts);
        let nodes = self.members.iter().filter(|m| m.is_node()).count();
        let count = if nodes == self.members.len() {
            format!("{nodes} node{}", if nodes == 1 { "" } else { "s" })
        } else {
            format!("{} members", self.members.len())
        };
        format!("{} ({count})", list_some(parts.iter().map(|p| shorten(p, 60)), 4))
    }
}

/// Groups and the ordered pairs of groups that cannot reach each other: `(i, j)` drops
/// packets from a member of group i to a member of group j. A symmetric cut is both
/// `(i, j)` and `(j, i)`. The engine applies a matrix as one update and heals it as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMatrix {
    groups: Vec<MatrixGroup>,
    cut_pairs: BTreeSet<(usize, usize)>,
}

impl PartitionMatrix {
    /// A matrix of `groups` and `cut_pairs`; pairs of a group with itself and indices out
    /// of range are programming errors of the caller (validation refuses them first).
    pub fn new(groups: Vec<MatrixGroup>, cut_pairs: BTreeSet<(usize, usize)>) -> Self {
        debug_assert!(cut_pairs.iter().all(|&(i, j)| i != j && i < groups.len() && j < groups.len()));
        PartitionMatrix { groups, cut_pairs }
    }

    /// The groups, in the order the cut pairs index them.
    pub fn groups(&self) -> &[MatrixGroup] {
        &self.groups
    }

    /// Every ordered pair `(from, to)` of group indices whose packets are dropped.
    pub fn cut_pairs(&self) -> &BTreeSet<(usize, usize)> {
        &self.cut_pairs
    }

    /// Whether packets from group `from` to group `to` are dropped.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut_pairs.contains(&(from, to))
    }

    /// Members of all groups together.
    pub fn member_count(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// `8 groups, 64 members; 40 cut pairs (20 both ways)`.
    pub fn counts(&self) -> String {
        let both = self.cut_pairs.iter().filter(|&&(i, j)| i < j && self.is_cut(j, i)).count();
        let one_way = self.cut_pairs.len() - 2 * both;
        let members = self.member_count();
        let mut out = format!(
            "{} groups, {members} members; {} cut pairs ({both} both ways",
            self.groups.len(),
            self.cut_pairs.len()
        );
        if one_way > 0 {
            out += &format!(", {one_way} one-way");
        }
        out + ")"
    }

    /// The cuts as people read them: `a x b` (both ways) and `a -> b` (one way).
    pub fn cuts_text(&self) -> Vec<String> {
        let name = |i: usize| shorten(&self.groups[i].name, 30);
        let mut out = Vec::new();
        for &(i, j) in &self.cut_pairs {
            if self.is_cut(j, i) {
                if i < j {
                    out.push(format!("{} x {}", name(i), name(j)));
                }
            } else {
                out.push(format!("{} -> {}", name(i), name(j)));
            }
        }
        out
    }
}

/// A matrix as a run applies it: each group's members as address prefixes (a lab node
/// by its addresses), and the cut pairs. One rule carries it all.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundMatrix {
    /// `ring: 8 groups, 64 members; 40 cut pairs (20 both ways)`.
    pub summary: String,
    pub groups: Vec<Vec<Cidr>>,
    pub cuts: Vec<(usize, usize)>,
}

impl BoundMatrix {
    /// Prefixes of all groups together (each takes a source and a destination entry).
    pub fn prefixes(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// How a matrix was written; halves may shuffle their nodes with the step's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatrixForm {
    Cut,
    Ring,
    Bridge,
    MajorityMinority,
    Halves { shuffle: bool },
}

impl MatrixForm {
    pub fn name(self) -> &'static str {
        match self {
            MatrixForm::Cut => "cut",
            MatrixForm::Ring => "ring",
            MatrixForm::Bridge => "bridge",
            MatrixForm::MajorityMinority => "majority-minority",
            MatrixForm::Halves { shuffle: false } => "halves",
            MatrixForm::Halves { shuffle: true } => "halves, shuffled",
        }
    }
}

/// A validated partition matrix step: its form and its matrix before any shuffle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixSpec {
    pub form: MatrixForm,
    /// For shuffled halves, the halves in the order written; `expand` shuffles them.
    pub matrix: PartitionMatrix,
}

impl MatrixSpec {
    /// The matrix the step applies, decided with the step's seed (`PlannedStep::seed`):
    /// only shuffled halves depend on it; the same seed gives the same halves.
    pub fn expand(&self, step_seed: u64) -> PartitionMatrix {
        match self.form {
            MatrixForm::Halves { shuffle: true } => {
                let groups = &self.matrix.groups;
                let pool: Vec<GroupMember> = groups.iter().flat_map(|g| g.members.iter().cloned()).collect();
                let (mut first, mut second) = halves(pool, Some(step_seed));
                // In node order within each half, so the plan can show runs (n1..n4).
                first.sort_by_cached_key(GroupMember::natural_key);
                second.sort_by_cached_key(GroupMember::natural_key);
                halves_matrix(first, second)
            }
            _ => self.matrix.clone(),
        }
    }
}

/// Cut pairs of a ring of `n` groups: each group reaches only its two neighbours
/// (i-1 and i+1, modulo n), every other pair is cut both ways. A ring of 3 cuts nothing.
pub fn ring_cuts(n: usize) -> BTreeSet<(usize, usize)> {
    let mut cuts = BTreeSet::new();
    for i in 0..n {
        for j in 0..n {
            let neighbours = (i + 1) % n == j || (j + 1) % n == i;
            if i != j && !neighbours {
                cuts.insert((i, j));
            }
        }
    }
    cuts
}

/// Cut pairs of a bridge: groups 0 and 1 (the sides) cut from each other both ways,
/// group 2 (the bridge) reaching both.
pub fn bridge_cuts() -> BTreeSet<(usize, usize)> {
    BTreeSet::from([(0, 1), (1, 0)])
}

/// Cut pairs between the first `majority` groups and the next `minority` groups, both ways.
pub fn majority_minority_cuts(majority: usize, minority: usize) -> BTreeSet<(usize, usize)> {
    let mut cuts = BTreeSet::new();
    for i in 0..majority {
        for j in majority..majority + minority {
            cuts.insert((i, j));
            cuts.insert((j, i));
        }
    }
    cuts
}

/// The size of the minority of `n` by default: (n-1)/2, as the `minority` lab selector.
pub fn default_minority(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// Two halves of `members`, the first one larger when the count is odd. With a seed the
/// members are shuffled first (Fisher-Yates, decided by SipHash of the seed), so the
/// same seed always gives the same halves.
pub fn halves<T>(mut members: Vec<T>, seed: Option<u64>) -> (Vec<T>, Vec<T>) {
    if let Some(seed) = seed {
        for i in (1..members.len()).rev() {
            let j = (chaos_ebpf_common::siphash24(seed, 0x6861_6c76_6573, &[i as u64]) % (i as u64 + 1)) as usize;
            members.swap(i, j);
        }
    }
    let second = members.split_off(members.len().div_ceil(2));
    (members, second)
}

/// The matrix of two halves cut from each other both ways.
pub fn halves_matrix(first: Vec<GroupMember>, second: Vec<GroupMember>) -> PartitionMatrix {
    PartitionMatrix::new(
        vec![
            MatrixGroup { name: "first-half".into(), members: first },
            MatrixGroup { name: "second-half".into(), members: second },
        ],
        bridge_cuts(),
    )
}

impl FromStr for GroupMember {
    type Err = Problem;
    /// One member (a node range is refused here: use `GroupMember::parse`).
    fn from_str(s: &str) -> Result<Self, Problem> {
        let mut all = GroupMember::parse(s)?;
        match all.len() {
            1 => Ok(all.remove(0)),
            _ => Err(Problem::new(format!("'{}' names several members", shorten(s, 60)), "name one member")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
        list.iter().copied().collect()
    }

    #[test]
    fn rings_cut_all_but_neighbours() {
        assert!(ring_cuts(3).is_empty(), "in a ring of 3 every group neighbours both others");
        assert_eq!(ring_cuts(4), pairs(&[(0, 2), (2, 0), (1, 3), (3, 1)]));
        let eight = ring_cuts(8);
        // 8 groups, 5 non-neighbours each.
        assert_eq!(eight.len(), 8 * 5);
        for i in 0..8 {
            assert!(!eight.contains(&(i, (i + 1) % 8)) && !eight.contains(&((i + 1) % 8, i)));
            assert!(eight.contains(&(i, (i + 2) % 8)) && eight.contains(&(i, (i + 4) % 8)));
        }
        assert!(eight.iter().all(|&(i, j)| eight.contains(&(j, i))), "symmetric");
    }

    #[test]
    fn bridge_and_majority_minority_expand() {
        assert_eq!(bridge_cuts(), pairs(&[(0, 1), (1, 0)]));
        // 5 = 3 + 2: every majority group is cut from every minority group, both ways.
        assert_eq!(default_minority(5), 2);
        let cuts = majority_minority_cuts(3, 2);
        assert_eq!(cuts.len(), 12);
        assert!(cuts.contains(&(0, 3)) && cuts.contains(&(4, 2)));
        assert!(!cuts.contains(&(0, 1)) && !cuts.contains(&(3, 4)));
        assert_eq!(default_minority(4), 1);
        assert_eq!(default_minority(64), 31);
    }

    #[test]
    fn halves_are_deterministic_by_seed() {
        let nodes: Vec<u32> = (1..=9).collect();
        let (a, b) = halves(nodes.clone(), None);
        assert_eq!((a, b), ((1..=5).collect(), (6..=9).collect()));
        let one = halves(nodes.clone(), Some(42));
        assert_eq!(one, halves(nodes.clone(), Some(42)), "same seed, same halves");
        assert_eq!((one.0.len(), one.1.len()), (5, 4));
        let mut all: Vec<u32> = one.0.iter().chain(&one.1).copied().collect();
        all.sort_unstable();
        assert_eq!(all, nodes, "a split, nothing lost or doubled");
        let other = halves(nodes.clone(), Some(43));
        assert_ne!(one, other, "another seed, another split");
        assert_ne!(one.0, (1..=5).collect::<Vec<_>>(), "seed 42 shuffles");
    }

    #[test]
    fn members_parse_and_overlap() {
        let m = GroupMember::parse("node:n1-n8").unwrap();
        assert_eq!(m.len(), 8);
        assert_eq!(m[7], GroupMember::Node("n8".into()));
        assert_eq!(GroupMember::parse("node:n3-5").unwrap().len(), 3);
        assert_eq!(GroupMember::parse("node:n3").unwrap(), [GroupMember::Node("n3".into())]);
        for (text, word) in [
            ("node:n8-n1", "backwards"),
            ("node:n1-m4", "not a lab node"),
            ("node:n0-n99999", "at most 4096"),
            ("pod:web-1", "pods are not supported"),
            ("host:x", "unknown group member kind 'host'"),
            ("n3", "not a group member"),
            ("cgroup:../x", "not a cgroup path"),
            ("10.0.0.0/33", "not a group member"),
        ] {
            let e = GroupMember::parse(text).unwrap_err();
            assert!(e.problem.contains(word), "{text}: {}", e.problem);
        }
        let p = |s: &str| s.parse::<GroupMember>().unwrap();
        assert!(p("198.18.0.0/24").overlaps(&p("198.18.0.7")));
        assert!(p("198.18.0.7").overlaps(&p("198.18.0.0/24")));
        assert!(!p("198.18.0.0/25").overlaps(&p("198.18.0.128/25")));
        assert!(!p("0.0.0.0/0").overlaps(&p("fd00::1")), "families apart");
        assert!(p("cgroup:/a").overlaps(&p("cgroup:a/b")));
        assert!(!p("cgroup:/a").overlaps(&p("cgroup:/ab")));
        assert!(!p("node:n1").overlaps(&p("198.18.0.1")));
        assert_eq!(p("cgroup:/").to_string(), "cgroup:/", "the root cgroup");
        assert!(p("cgroup:/").overlaps(&p("cgroup:/x/y")));
    }

    /// The index finds exactly the overlaps `overlaps` finds, pair by pair.
    #[test]
    fn the_member_index_agrees_with_overlaps() {
        let texts = [
            "198.18.0.0/15",
            "198.18.0.0/24",
            "198.18.0.7",
            "198.18.1.0/24",
            "198.19.255.255",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "fd00::/64",
            "fd00::1",
            "fd00:0:0:1::/64",
            "::/0",
            "::ffff:198.18.0.1",
            "cgroup:/a",
            "cgroup:a/b",
            "cgroup:/ab",
            "cgroup:/a/b/c",
            "cgroup:/",
            "cgroup:/z",
            "node:n1",
            "node:n10",
        ];
        let members: Vec<GroupMember> = texts.iter().map(|t| t.parse().unwrap()).collect();
        // Every ordered subset of three: insert in order, compare with the pairwise answer.
        for a in 0..members.len() {
            for b in 0..members.len() {
                for c in 0..members.len() {
                    let picked = [a, b, c];
                    let mut index = MemberIndex::default();
                    let mut kept: Vec<usize> = Vec::new();
                    for &x in &picked {
                        let pairwise = kept.iter().any(|&k| members[k].overlaps(&members[x]));
                        let result = index.insert(&members[x], x);
                        assert_eq!(result.is_err(), pairwise, "{} after {:?}", members[x], kept);
                        if let Err((other, owner)) = result {
                            assert!(other.overlaps(&members[x]) && members[owner] == other);
                        } else {
                            kept.push(x);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn summaries_and_counts() {
        let mut members = GroupMember::parse("node:n1-n8").unwrap();
        members.push(GroupMember::Node("n10".into()));
        let g = MatrixGroup { name: "g".into(), members };
        assert_eq!(g.summary(), "node:n1..n8, node:n10 (9 nodes)");
        let groups: Vec<MatrixGroup> = (0..4)
            .map(|i| MatrixGroup { name: format!("g{i}"), members: vec![GroupMember::Node(format!("n{i}"))] })
            .collect();
        let mut cuts = ring_cuts(4);
        cuts.insert((0, 1));
        let m = PartitionMatrix::new(groups, cuts);
        assert_eq!(m.counts(), "4 groups, 4 members; 5 cut pairs (2 both ways, 1 one-way)");
        assert_eq!(m.cuts_text(), ["g0 -> g1", "g0 x g2", "g1 x g3"]);
    }
}
