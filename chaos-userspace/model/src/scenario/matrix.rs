//! The `groups:` of a scenario and its partition matrix steps, validated with positions:
//! each form (cut, ring, bridge, majority-minority, halves) becomes one `MatrixSpec`
//! (matrix.rs has the canonical value and the expansions).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    path,
    raw::{RawOneOrMany, RawPartition, RawStep},
    timeline, Draft, Validator,
};
use crate::{
    locate::Seg,
    matrix::{self, GroupMember, MatrixForm, MatrixGroup, MatrixSpec, PartitionMatrix},
    spec::{self, Cidr, Problem},
};

/// Groups by name, each with its members (node ranges expanded).
pub(super) type Groups = BTreeMap<String, Vec<GroupMember>>;

/// Members seen so far, in order, with an index that finds overlaps.
#[derive(Default)]
struct Seen {
    members: Vec<(GroupMember, usize)>,
    index: matrix::MemberIndex,
}

impl Seen {
    /// Adds `m` for `owner`, or returns the member it overlaps and that one's owner.
    fn add(&mut self, m: &GroupMember, owner: usize) -> Result<(), (GroupMember, usize)> {
        self.index.insert(m, owner)?;
        self.members.push((m.clone(), owner));
        Ok(())
    }
}

impl Validator<'_> {
    /// The top-level `groups:`: names that are words, members that parse, no group
    /// empty, no member twice in a group.
    pub(super) fn groups(&self, raw: &BTreeMap<String, Vec<String>>) -> Result<Groups, Problem> {
        if raw.len() > matrix::MAX_GROUPS {
            return Err(self.error(
                &[Seg::Key("groups")],
                format!("{} groups; at most {}", raw.len(), matrix::MAX_GROUPS),
                "use node ranges (node:n1-n8) or prefixes to make fewer, larger groups",
            ));
        }
        let mut groups = BTreeMap::new();
        for (name, list) in raw {
            let shown = spec::shorten(name, 40);
            let at = |j: Option<usize>| {
                let mut p = path(&[Seg::Key("groups"), Seg::Name(name.clone())]);
                p.extend(j.map(Seg::Index));
                p
            };
            if name.is_empty() || name.len() > 64 || name.contains(':') || name.parse::<Cidr>().is_ok() {
                return Err(self.error(
                    &at(None),
                    format!("group name '{shown}' is empty, longer than 64, or looks like a member"),
                    "name the group with a word (east, g1, racks-a): members are node:.., prefixes and cgroup:..",
                ));
            }
            if list.is_empty() {
                return Err(self.error(
                    &at(None),
                    format!("group '{shown}' is empty"),
                    format!("list its members ({}), or remove it", GroupMember::FORMS),
                ));
            }
            let mut seen = Seen::default();
            for (j, text) in list.iter().enumerate() {
                let members = GroupMember::parse(text)
                    .map_err(|e| self.error(&at(Some(j)), format!("group '{shown}': {}", e.problem), e.fix))?;
                for m in &members {
                    if let Err((other, _)) = seen.add(m, 0) {
                        let problem = if &other == m {
                            format!("group '{shown}' has {m} twice")
                        } else {
                            format!("group '{shown}' has {m} and {other}, which overlap")
                        };
                        return Err(self.error(&at(Some(j)), problem, "list each member once"));
                    }
                }
                if seen.members.len() > matrix::MAX_MEMBERS {
                    return Err(self.error(
                        &at(Some(j)),
                        format!("group '{shown}' has more than {} members", matrix::MAX_MEMBERS),
                        "use prefixes instead of many addresses, or fewer nodes",
                    ));
                }
            }
            groups.insert(name.clone(), seen.members.into_iter().map(|(m, _)| m).collect());
        }
        Ok(groups)
    }

    /// A partition matrix step: a fault of its own, with windows like any step.
    pub(super) fn matrix_step(
        &self,
        i: usize,
        step: &RawStep,
        name: String,
        duration: Option<std::time::Duration>,
        groups: &Groups,
    ) -> Result<Draft, Problem> {
        let at = |key: &'static str| [Seg::Key("steps"), Seg::Index(i), Seg::Key(key)];
        let partition = step.partition.as_ref().expect("a matrix step has a partition");
        for (key, set) in [("fault", step.fault.is_some()), ("action", step.action.is_some())] {
            if set {
                return Err(self.error(
                    &at(key),
                    format!("a step gives both {key} and partition"),
                    format!("a partition matrix is a fault of its own: drop {key}: (with: runs two steps together)"),
                ));
            }
        }
        let foreign = [("target", step.target.is_some()), ("targets", step.targets.is_some())]
            .into_iter()
            .chain(step.fault_fields().into_iter().filter(|(key, _)| !matches!(*key, "intensity" | "repeat")))
            .chain(step.action_fields().into_iter().map(|(key, _, set)| (key, set)));
        if let Some((key, _)) = foreign.into_iter().find(|(_, set)| *set) {
            return Err(self.error(
                &at(key),
                format!("a partition matrix takes no {key}"),
                "remove it: the matrix's groups and cuts say who cannot reach whom",
            ));
        }
        let (shape, length) = self.shape(i, step, duration)?;
        let windows = timeline::windows(&shape, length);
        if windows.iter().any(|w| w.intensity != 1.0) {
            return Err(self.error(
                &at("intensity"),
                "a partition matrix has no magnitude to scale: its intensity can only be 1",
                "remove intensity: (repeat: makes a matrix that comes and goes)",
            ));
        }
        let spec = self.matrix(i, partition, groups)?;
        Ok(Draft { name, seed: step.seed, faults: Vec::new(), action: None, matrix: Some(spec), windows, length })
    }

    fn matrix(&self, i: usize, p: &RawPartition, groups: &Groups) -> Result<MatrixSpec, Problem> {
        let base = path(&[Seg::Key("steps"), Seg::Index(i), Seg::Key("partition")]);
        let key = |k: &'static str| {
            let mut v = base.clone();
            v.push(Seg::Key(k));
            v
        };
        let forms = [
            ("groups", p.groups.is_some() || p.cut.is_some()),
            ("ring", p.ring.is_some()),
            ("bridge", p.bridge.is_some()),
            ("majority-minority", p.majority_minority.is_some()),
            ("halves", p.halves.is_some()),
        ];
        let given: Vec<&str> = forms.iter().filter(|(_, set)| *set).map(|(k, _)| *k).collect();
        match given.as_slice() {
            [] => {
                return Err(self.error(
                    &base,
                    "the partition gives no matrix",
                    "write one of groups: with cut:, ring:, bridge:, majority-minority: or halves: (docs/scenarios.md)",
                ))
            }
            [_] => {}
            [first, second, ..] => {
                let second = forms.iter().map(|(k, _)| *k).find(|k| k == second).unwrap_or("groups");
                return Err(self.error(
                    &key(second),
                    format!("the partition gives both {first} and {second}"),
                    "give one form per step (with: runs two steps together)",
                ));
            }
        }
        if let Some(names) = &p.ring {
            let groups = self.matrix_groups("ring", names, |j| with(&key("ring"), &[Seg::Index(j)]), groups)?;
            if groups.len() < 4 {
                return Err(self.error(
                    &key("ring"),
                    format!("a ring of {} groups cuts nothing: every group neighbours all the others", groups.len()),
                    "put 4 or more groups in the ring, or write the pairs with groups: and cut:",
                ));
            }
            let cuts = matrix::ring_cuts(groups.len());
            return Ok(MatrixSpec { form: MatrixForm::Ring, matrix: PartitionMatrix::new(groups, cuts) });
        }
        if let Some(b) = &p.bridge {
            let sides = with(&key("bridge"), &[Seg::Key("sides")]);
            if b.sides.len() != 2 {
                return Err(self.error(
                    &sides,
                    format!("a bridge has 2 sides; {} given", b.sides.len()),
                    "write bridge: {sides: [a, b], via: c}",
                ));
            }
            let names = [b.sides[0].clone(), b.sides[1].clone(), b.via.clone()];
            let at = |j: usize| match j {
                2 => with(&key("bridge"), &[Seg::Key("via")]),
                _ => with(&sides, &[Seg::Index(j)]),
            };
            let groups = self.matrix_groups("bridge", &names, at, groups)?;
            return Ok(MatrixSpec {
                form: MatrixForm::Bridge,
                matrix: PartitionMatrix::new(groups, matrix::bridge_cuts()),
            });
        }
        if let Some(mm) = &p.majority_minority {
            let mm_at = key("majority-minority");
            let minority_at = with(&mm_at, &[Seg::Key("minority")]);
            let split = |n: usize, what: &str| -> Result<usize, Problem> {
                let k = mm.minority.map_or(matrix::default_minority(n), |k| k as usize);
                if k == 0 || 2 * k >= n {
                    let at = if mm.minority.is_some() { &minority_at } else { &mm_at };
                    return Err(self.error(
                        at,
                        format!("a minority of {k} of {n} {what} is not smaller than the majority, or empty"),
                        if n >= 3 {
                            format!("give minority: 1..{}", matrix::default_minority(n))
                        } else {
                            format!("give at least 3 {what}")
                        },
                    ));
                }
                Ok(k)
            };
            return match (&mm.groups, &mm.of) {
                (Some(_), Some(_)) => Err(self.error(
                    &with(&mm_at, &[Seg::Key("of")]),
                    "majority-minority gives both groups and of",
                    "split groups (groups: [a, b, c]) or the nodes of a set (of: [node:n1-n5]), not both",
                )),
                (None, None) => Err(self.error(
                    &mm_at,
                    "majority-minority gives neither groups nor of",
                    "write majority-minority: {groups: [a, b, c, d, e]} or {of: [node:n1-n5]}",
                )),
                (Some(names), None) => {
                    let at = |j| with(&mm_at, &[Seg::Key("groups"), Seg::Index(j)]);
                    let groups = self.matrix_groups("majority-minority", names, at, groups)?;
                    let k = split(groups.len(), "groups")?;
                    let cuts = matrix::majority_minority_cuts(groups.len() - k, k);
                    Ok(MatrixSpec { form: MatrixForm::MajorityMinority, matrix: PartitionMatrix::new(groups, cuts) })
                }
                (None, Some(of)) => {
                    let mut nodes = self.node_set(of, &with(&mm_at, &[Seg::Key("of")]), groups, "majority-minority")?;
                    let k = split(nodes.len(), "nodes")?;
                    let minority = nodes.split_off(nodes.len() - k);
                    let groups = vec![
                        MatrixGroup { name: "majority".into(), members: nodes },
                        MatrixGroup { name: "minority".into(), members: minority },
                    ];
                    Ok(MatrixSpec {
                        form: MatrixForm::MajorityMinority,
                        matrix: PartitionMatrix::new(groups, matrix::bridge_cuts()),
                    })
                }
            };
        }
        if let Some(h) = &p.halves {
            let of_at = with(&key("halves"), &[Seg::Key("of")]);
            let nodes = self.node_set(&h.of, &of_at, groups, "halves")?;
            if nodes.len() < 2 {
                return Err(self.error(&of_at, "halves of fewer than 2 nodes", "name 2 or more nodes"));
            }
            let (first, second) = matrix::halves(nodes, None);
            return Ok(MatrixSpec {
                form: MatrixForm::Halves { shuffle: h.shuffle },
                matrix: matrix::halves_matrix(first, second),
            });
        }
        // groups: with cut:
        let (Some(names), Some(cut)) = (&p.groups, &p.cut) else {
            return Err(if p.groups.is_none() {
                self.error(&key("cut"), "cut: needs groups: (the matrix's groups)", "add groups: [a, b, c]")
            } else {
                self.error(
                    &key("groups"),
                    "groups: needs cut: (the pairs cut from each other)",
                    "add cut: [[a, b]] (both ways) or [[a, \"->\", b]] (a's packets to b)",
                )
            });
        };
        let matrix_groups = self.matrix_groups("groups", names, |j| with(&key("groups"), &[Seg::Index(j)]), groups)?;
        if cut.is_empty() {
            return Err(self.error(&key("cut"), "cut: is empty: the matrix cuts nothing", "add pairs: cut: [[a, b]]"));
        }
        let mut cuts = BTreeSet::new();
        for (k, item) in cut.iter().enumerate() {
            let item_at = with(&key("cut"), &[Seg::Index(k)]);
            let (from, to, both) = match item.as_slice() {
                [a, b] => ((a, 0), (b, 1), true),
                [a, arrow, b] if arrow == "->" => ((a, 0), (b, 2), false),
                _ => {
                    return Err(self.error(
                        &item_at,
                        format!("cut {} is not a pair", k + 1),
                        "write [a, b] (cut both ways) or [a, \"->\", b] (only a's packets to b)",
                    ))
                }
            };
            let index = |(name, j): (&String, usize)| -> Result<usize, Problem> {
                let at = with(&item_at, &[Seg::Index(j)]);
                match names.iter().position(|n| n == name) {
                    Some(x) => Ok(x),
                    None if groups.contains_key(name) => Err(self.error(
                        &at,
                        format!("cut names group '{}', which is not in this matrix's groups", spec::shorten(name, 40)),
                        format!("add it to groups: [...] of the partition, or cut one of: {}", list(names)),
                    )),
                    None => Err(self.unknown_group(&at, "cut", name, groups)),
                }
            };
            let (a, b) = (index(from)?, index(to)?);
            if a == b {
                return Err(self.error(
                    &item_at,
                    format!("a cut of group '{}' with itself", spec::shorten(&names[a], 40)),
                    "cut two different groups (members of one group always reach each other)",
                ));
            }
            let pairs: &[(usize, usize)] = if both { &[(a, b), (b, a)] } else { &[(a, b)] };
            if pairs.iter().any(|p| cuts.contains(p)) {
                return Err(self.error(
                    &item_at,
                    format!(
                        "the cut of '{}' and '{}' is given twice",
                        spec::shorten(&names[a], 30),
                        spec::shorten(&names[b], 30)
                    ),
                    "give each pair once ([a, b] already cuts both ways)",
                ));
            }
            cuts.extend(pairs.iter().copied());
        }
        Ok(MatrixSpec { form: MatrixForm::Cut, matrix: PartitionMatrix::new(matrix_groups, cuts) })
    }

    /// `field` names where the group is named (ring, cut, ...), for the message.
    fn unknown_group(&self, at: &[Seg], field: &str, name: &str, groups: &Groups) -> Problem {
        let fix = if groups.is_empty() {
            "define it under groups: at the top of the file (groups: {a: [node:n1-n4]})".to_owned()
        } else {
            format!("name one of the groups: {}", list(groups.keys()))
        };
        self.error(at, format!("{field}: unknown group '{}'", spec::shorten(name, 40)), fix)
    }

    /// The groups a matrix lists, in order: each defined, listed once, and no member in
    /// two of them.
    fn matrix_groups(
        &self,
        field: &str,
        names: &[String],
        at: impl Fn(usize) -> Vec<Seg>,
        groups: &Groups,
    ) -> Result<Vec<MatrixGroup>, Problem> {
        if names.len() > matrix::MAX_GROUPS {
            return Err(self.error(
                &at(0),
                format!("{} groups in one matrix; at most {}", names.len(), matrix::MAX_GROUPS),
                "merge groups",
            ));
        }
        let mut out: Vec<MatrixGroup> = Vec::with_capacity(names.len());
        let mut seen = Seen::default();
        for (j, name) in names.iter().enumerate() {
            let shown = spec::shorten(name, 40);
            let Some(members) = groups.get(name) else {
                return Err(self.unknown_group(&at(j), field, name, groups));
            };
            if out.iter().any(|g| &g.name == name) {
                return Err(self.error(
                    &at(j),
                    format!("group '{shown}' is listed twice in this matrix"),
                    "list each group once",
                ));
            }
            for m in members {
                if let Err((other, owner)) = seen.add(m, j) {
                    let as_other = if &other == m { String::new() } else { format!(" ({other})") };
                    return Err(self.error(
                        &at(j),
                        format!(
                            "{} is in group '{shown}' and in group '{}'{as_other} of this matrix",
                            spec::shorten(&m.to_string(), 60),
                            spec::shorten(&names[owner], 40)
                        ),
                        "a member belongs to one group of a matrix: remove it from one of them",
                    ));
                }
            }
            if seen.members.len() > matrix::MAX_MEMBERS {
                return Err(self.error(
                    &at(j),
                    format!("the matrix has more than {} members", matrix::MAX_MEMBERS),
                    "use prefixes or fewer nodes",
                ));
            }
            out.push(MatrixGroup { name: name.clone(), members: members.clone() });
        }
        Ok(out)
    }

    /// The nodes of `of`: group names and node members, in order, each node once.
    fn node_set(
        &self,
        of: &RawOneOrMany,
        at: &[Seg],
        groups: &Groups,
        form: &str,
    ) -> Result<Vec<GroupMember>, Problem> {
        let items: Vec<(String, Vec<Seg>)> = match of {
            RawOneOrMany::One(one) => vec![(one.clone(), at.to_vec())],
            RawOneOrMany::Many(many) => {
                many.iter().enumerate().map(|(j, t)| (t.clone(), with(at, &[Seg::Index(j)]))).collect()
            }
        };
        if items.is_empty() {
            return Err(self.error(at, format!("{form} of no nodes"), "name nodes: of: [node:n1-n8] or a group"));
        }
        let mut seen = Seen::default();
        for (text, item_at) in &items {
            let members = match groups.get(text) {
                Some(members) => members.clone(),
                None if text.contains(':') || text.parse::<Cidr>().is_ok() => {
                    GroupMember::parse(text).map_err(|e| self.error(item_at, e.problem, e.fix))?
                }
                None => return Err(self.unknown_group(item_at, &format!("{form} of"), text, groups)),
            };
            for m in &members {
                if !m.is_node() {
                    return Err(self.error(
                        item_at,
                        format!("{form} splits lab nodes; {} is not a node", spec::shorten(&m.to_string(), 60)),
                        "name nodes (node:n1-n8) or groups of nodes; cut prefixes and cgroups with groups: and cut:",
                    ));
                }
                if seen.add(m, 0).is_err() {
                    return Err(self.error(item_at, format!("{m} is named twice"), "name each node once"));
                }
            }
            if seen.members.len() > matrix::MAX_MEMBERS {
                return Err(self.error(
                    item_at,
                    format!("more than {} nodes", matrix::MAX_MEMBERS),
                    "name fewer nodes",
                ));
            }
        }
        Ok(seen.members.into_iter().map(|(m, _)| m).collect())
    }
}

/// `base` with `more` appended.
fn with(base: &[Seg], more: &[Seg]) -> Vec<Seg> {
    let mut v = base.to_vec();
    v.extend_from_slice(more);
    v
}

fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    spec::list_some(names.into_iter().map(|n| spec::shorten(n, 20)), 6)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::{
        matrix::{self, GroupMember, MatrixForm, PartitionMatrix},
        plan::Plan,
        scenario::parse,
        spec::Problem,
    };

    /// Groups for the tests: 9 lines, so a test's `rest` starts on line 10. f overlaps a
    /// (node:n2), g overlaps c (198.18.0.4/30).
    const HEAD: &str = "apiVersion: chaos-ebpf/v1\ngroups:\n  a: [node:n1-n2]\n  b: [node:n3]\n  c: [198.18.0.0/29, fd00::/64]\n  d: [cgroup:/chaos/d]\n  e: [node:n4-5]\n  f: [node:n2-n3]\n  g: [198.18.0.4/30]\n";

    fn v1(rest: &str) -> Result<Plan, Problem> {
        parse("m.yaml", &format!("{HEAD}{rest}"))
    }

    /// The matrix of a scenario whose one step is `partition: {partition}`.
    fn matrix_of(partition: &str) -> (MatrixForm, PartitionMatrix) {
        let plan = v1(&format!("steps:\n  - {{name: m, partition: {partition}, duration: 1s}}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = plan.steps[0].matrix.clone().expect("a matrix step");
        assert!(plan.steps[0].faults.is_empty() && plan.steps[0].action.is_none());
        (spec.form, spec.expand(plan.steps[0].seed(1)))
    }

    fn names(m: &PartitionMatrix) -> Vec<&str> {
        m.groups().iter().map(|g| g.name.as_str()).collect()
    }

    fn pairs(list: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
        list.iter().copied().collect()
    }

    /// The error of a bad file, at (line, column), with `word` in its problem or fix.
    fn bad(rest: &str, line: usize, column: usize, word: &str) -> Problem {
        let e = v1(rest).expect_err(rest);
        assert_eq!((e.at.line, e.at.column), (line, column), "{e}");
        assert!(e.problem.contains(word) || e.fix.contains(word), "'{word}' not in: {e}");
        assert!(!e.fix.is_empty());
        for l in e.to_string().lines() {
            assert!(l.len() <= 300, "{l}");
        }
        e
    }

    /// A one-step file with `partition: {partition}` on line 11, from column 26.
    fn bad_matrix(partition: &str, column: usize, word: &str) -> Problem {
        bad(&format!("steps:\n  - {{name: m, partition: {partition}, duration: 1s}}\n"), 11, column, word)
    }

    #[test]
    fn explicit_cuts_expand_to_ordered_pairs() {
        let (form, m) = matrix_of("{groups: [a, b, c], cut: [[a, b], [b, \"->\", c]]}");
        assert_eq!(form, MatrixForm::Cut);
        assert_eq!(names(&m), ["a", "b", "c"]);
        assert_eq!(m.cut_pairs(), &pairs(&[(0, 1), (1, 0), (1, 2)]));
        assert!(m.is_cut(1, 2) && !m.is_cut(2, 1), "one way: b's packets to c");
        assert_eq!(m.groups()[0].members, GroupMember::parse("node:n1-n2").unwrap());
        assert_eq!(m.groups()[2].members.len(), 2);
    }

    #[test]
    fn shorthands_expand() {
        let (form, m) = matrix_of("{ring: [a, b, c, d]}");
        assert_eq!(form, MatrixForm::Ring);
        assert_eq!(m.cut_pairs(), &matrix::ring_cuts(4));
        assert_eq!(m.cut_pairs(), &pairs(&[(0, 2), (2, 0), (1, 3), (3, 1)]));

        let (_, m) = matrix_of("{bridge: {sides: [a, b], via: c}}");
        assert_eq!(names(&m), ["a", "b", "c"]);
        assert_eq!(m.cut_pairs(), &pairs(&[(0, 1), (1, 0)]));

        // Of 5 groups: the first 3 are the majority, the last 2 the minority.
        let (_, m) = matrix_of("{majority-minority: {groups: [a, b, c, d, e]}}");
        assert_eq!(m.cut_pairs(), &matrix::majority_minority_cuts(3, 2));
        assert_eq!(m.cut_pairs().len(), 12);
        let (_, m) = matrix_of("{majority-minority: {groups: [a, b, c, d, e], minority: 1}}");
        assert_eq!(m.cut_pairs(), &matrix::majority_minority_cuts(4, 1));

        // Of 5 nodes: 3 + 2.
        let (form, m) = matrix_of("{majority-minority: {of: [b, node:n1-n2, e]}}");
        assert_eq!(form, MatrixForm::MajorityMinority);
        assert_eq!(names(&m), ["majority", "minority"]);
        let members = |i: usize| m.groups()[i].members.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(members(0), ["node:n3", "node:n1", "node:n2"]);
        assert_eq!(members(1), ["node:n4", "node:n5"]);
        assert_eq!(m.cut_pairs(), &pairs(&[(0, 1), (1, 0)]));

        let (form, m) = matrix_of("{halves: {of: node:n1-n8}}");
        assert_eq!(form, MatrixForm::Halves { shuffle: false });
        assert_eq!(m.groups()[0].members, GroupMember::parse("node:n1-n4").unwrap());
        assert_eq!(m.groups()[1].members, GroupMember::parse("node:n5-n8").unwrap());
    }

    #[test]
    fn a_ring_of_eight_over_64_nodes() {
        let groups: String = (0..8).map(|g| format!("  g{}: [node:n{}-n{}]\n", g + 1, g * 8 + 1, g * 8 + 8)).collect();
        let src = format!(
            "apiVersion: chaos-ebpf/v1\nseed: 5\ngroups:\n{groups}steps:\n  - name: ring\n    partition: {{ring: [g1, g2, g3, g4, g5, g6, g7, g8]}}\n    duration: 10s\n"
        );
        let plan = parse("r.yaml", &src).unwrap();
        let m = plan.steps[0].matrix.as_ref().unwrap().expand(0);
        assert_eq!(m.groups().len(), 8);
        assert_eq!(m.cut_pairs(), &matrix::ring_cuts(8));
        assert_eq!(m.cut_pairs().len(), 40);
        let text = plan.render_text(5, true);
        for needle in [
            "partition matrix (ring): 8 groups, 64 members; 40 cut pairs (20 both ways)",
            "group 0 g1: node:n1..n8 (8 nodes)",
            "group 7 g8: node:n57..n64 (8 nodes)",
            "cut: g1 x g3, g1 x g4, g1 x g5, g1 x g6, g1 x g7,",
            "... and 8 more",
            "window 0ms .. 10s at intensity 1",
        ] {
            assert!(text.contains(needle), "'{needle}' not in:\n{text}");
        }
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"matrix\":{\"form\":\"ring\""), "{json}");
    }

    #[test]
    fn shuffled_halves_follow_the_step_seed() {
        let src = |seed: u64| {
            format!("apiVersion: chaos-ebpf/v1\nseed: {seed}\nsteps:\n  - name: split\n    partition: {{halves: {{of: node:n1-n16, shuffle: true}}}}\n    duration: 1s\n")
        };
        let halves = |seed: u64| {
            let plan = parse("h.yaml", &src(seed)).unwrap();
            let step = &plan.steps[0];
            let m = step.matrix.as_ref().unwrap().expand(step.seed(seed));
            (plan.render_text(seed, true), m)
        };
        let (text, m) = halves(7);
        assert_eq!(halves(7), (text.clone(), m.clone()), "same seed, same halves and plan");
        assert_eq!((m.groups()[0].members.len(), m.groups()[1].members.len()), (8, 8));
        assert_ne!(m.groups()[0].members, GroupMember::parse("node:n1-n8").unwrap(), "shuffled");
        assert_ne!(halves(8).1, m, "another seed, another split");
        assert!(text.contains("partition matrix (halves, shuffled): 2 groups, 16 members; 2 cut pairs"), "{text}");
        assert!(text.contains("cut: first-half x second-half"), "{text}");
    }

    #[test]
    fn a_matrix_is_one_step_of_the_timeline() {
        let plan = v1("targets: {x: netns:x}\nsteps:\n  - {name: one, fault: loss, target: x, probability: 0.1, duration: 4s}\n  - {name: cut, with: one, offset: 1s, partition: {groups: [a, b], cut: [[a, b]]}, repeat: {on: 1s, off: 1s, count: 2}}\n  - {name: after-cut, after: cut, partition: {bridge: {sides: [a, b], via: e}}, duration: 2s}\n").unwrap();
        let windows = |i: usize| -> Vec<(u128, u128)> {
            plan.steps[i].windows.iter().map(|w| (w.start.as_millis(), w.end.as_millis())).collect()
        };
        assert_eq!(windows(1), [(1000, 2000), (3000, 4000)]);
        assert_eq!(windows(2), [(4000, 6000)]);
        assert_eq!(plan.steps[0].faults[0].rule_id, 1);
        assert!(plan.entries(1).iter().all(|e| e.step == "one"), "a matrix has no map entries of its own yet");
        assert_eq!(plan.peak_use().rules, 1);
    }

    /// Large groups in many matrix steps: refused by the limit, fast.
    #[test]
    fn large_matrices_stay_bounded() {
        let cidrs =
            |g: u32| (0..1000).map(|i| format!("10.{g}.{}.{}", i / 256, i % 256)).collect::<Vec<_>>().join(", ");
        let groups: String = (1..=4).map(|g| format!("  g{g}: [{}]\n", cidrs(g))).collect();
        let steps = "  - {partition: {ring: [g1, g2, g3, g4]}, duration: 1s}\n".repeat(1000);
        let src = format!("apiVersion: chaos-ebpf/v1\ngroups:\n{groups}steps:\n{steps}");
        let start = std::time::Instant::now();
        let e = parse("big.yaml", &src).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "took {:?}", start.elapsed());
        assert!(e.problem.contains("more than 262144 members in all"), "{e}");
        // One group of 4096 nodes in a range, split in halves: fine.
        let plan = parse(
            "n.yaml",
            "apiVersion: chaos-ebpf/v1\nsteps:\n  - {partition: {halves: {of: node:n1-n4096}}, duration: 1s}\n",
        )
        .unwrap();
        assert_eq!(plan.steps[0].matrix.as_ref().unwrap().matrix.member_count(), 4096);
        let e = parse(
            "n.yaml",
            "apiVersion: chaos-ebpf/v1\nsteps:\n  - {partition: {halves: {of: [node:n1-n4096, node:m1]}}, duration: 1s}\n",
        )
        .unwrap_err();
        assert!(e.problem.contains("more than 4096 nodes"), "{e}");
    }

    #[test]
    fn group_errors_name_the_position_and_the_fix() {
        let steps = "steps: [{fault: none, duration: 1s}]\n";
        let group = |g: &str| format!("apiVersion: chaos-ebpf/v1\ngroups:\n  {g}\n{steps}");
        let at = |g: &str, line: usize, column: usize, word: &str| {
            let e = parse("g.yaml", &group(g)).expect_err(g);
            assert_eq!((e.at.line, e.at.column), (line, column), "{e}");
            assert!(e.problem.contains(word) || e.fix.contains(word), "'{word}' not in: {e}");
            assert!(e.to_string().starts_with(&format!("g.yaml:{line}:{column}: ")), "{e}");
        };
        at("empty: []", 3, 3, "group 'empty' is empty");
        at("x: [node:n1, host:h1]", 3, 16, "unknown group member kind 'host'");
        at("x: [pod:web-1]", 3, 7, "pods are not supported");
        at("x: [n3]", 3, 7, "node:n3");
        at("x: [node:n1-n4, node:n3]", 3, 19, "has node:n3 twice");
        at("x: [198.18.0.0/24, 198.18.0.9]", 3, 22, "198.18.0.9/32 and 198.18.0.0/24, which overlap");
        at("x: [node:n9-n1]", 3, 7, "backwards");
        at("10.0.0.1: [node:n1]", 3, 3, "looks like a member");
        at("\"a:b\": [node:n1]", 3, 3, "looks like a member");
    }

    #[test]
    fn matrix_errors_name_the_position_and_the_fix() {
        // Members in two groups of one matrix: at the second group.
        bad_matrix("{groups: [a, f], cut: [[a, f]]}", 39, "node:n2 is in group 'f' and in group 'a'");
        bad_matrix(
            "{groups: [c, g], cut: [[c, g]]}",
            39,
            "198.18.0.4/30 is in group 'g' and in group 'c' (198.18.0.0/29)",
        );
        bad_matrix("{groups: [a, a], cut: [[a, b]]}", 39, "listed twice");
        bad_matrix("{groups: [a, b], cut: [[a, a]]}", 49, "with itself");
        bad_matrix("{groups: [a, b], cut: [[a, zz]]}", 53, "cut: unknown group 'zz'");
        bad_matrix("{groups: [a, b], cut: [[a, c]]}", 53, "not in this matrix's groups");
        bad_matrix("{groups: [a, b], cut: [[a, b], [b, a]]}", 57, "given twice");
        bad_matrix("{groups: [a, b], cut: [[a, \"->\", b], [a, b]]}", 63, "given twice");
        bad_matrix("{groups: [a, b], cut: [[a, \"=>\", b]]}", 49, "not a pair");
        bad_matrix("{groups: [a, b], cut: []}", 43, "cuts nothing");
        bad_matrix("{groups: [a, b]}", 27, "needs cut");
        bad_matrix("{groups: [a, nine], cut: [[a, nine]]}", 39, "name one of the groups: a, b, c, d, e, f");
        bad_matrix("{ring: [a, b, c, nine]}", 43, "ring: unknown group 'nine'");
        bad_matrix("{ring: [a, b, c]}", 27, "a ring of 3 groups cuts nothing");
        bad_matrix("{ring: [a, b, c, d], halves: {of: e}}", 47, "both ring and halves");
        bad_matrix("{}", 15, "gives no matrix");
        bad_matrix("{bridge: {sides: [a], via: c}}", 36, "2 sides");
        bad_matrix("{bridge: {sides: [a, b], via: f}}", 56, "node:n2 is in group 'f' and in group 'a' of this matrix");
        bad_matrix("{majority-minority: {groups: [a, b, c], minority: 2}}", 76, "give minority: 1..1");
        bad_matrix("{majority-minority: {of: [a]}}", 27, "give at least 3 nodes");
        bad_matrix("{halves: {of: [c]}}", 41, "198.18.0.0/29 is not a node");
        bad_matrix("{halves: {of: [a, node:n1]}}", 44, "node:n1 is named twice");
        bad_matrix("{halves: {of: [nowhere]}}", 41, "halves of: unknown group 'nowhere'");
        bad_matrix("{stripes: [a, b]}", 27, "unknown field `stripes`");
        bad_matrix("{halves: {of: {x: 1}}}", 35, "steps[0].partition.halves is neither a name nor a list of names");
        bad_matrix("{groups: [a, b], cut: [a, b]}", 49, "expected a sequence");
        // The step around it.
        let step = |fields: &str| {
            format!("steps:\n  - {{name: m, {fields}, partition: {{ring: [a, b, c, d]}}, duration: 1s}}\n")
        };
        bad(&step("fault: partition"), 11, 22, "drop fault:");
        bad(&step("target: netns:x"), 11, 23, "takes no target");
        bad(&step("peers: [10.0.0.1]"), 11, 15, "takes no peers");
        bad(&step("intensity: 0.5"), 11, 26, "no magnitude");
        bad(&step("action: kill"), 11, 23, "drop action:");
        bad("steps:\n  - {name: m, partition: {ring: [a, b, c, d]}}\n", 11, 6, "no duration");
    }
}
