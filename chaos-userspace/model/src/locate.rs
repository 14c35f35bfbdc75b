//! Finding where a value sits in a YAML file, so validation errors that serde cannot see
//! (a probability above 1, an unknown target name) still say file:line:column; and
//! bounding what a YAML document may cost before serde_yaml builds it.

use crate::problem::Problem;
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// Deepest nesting of mappings and sequences a scenario may have. Real scenarios nest
/// 4 deep; serde_yaml's own limit (128) only applies after libyaml has parsed the whole
/// document, which for deep flow nesting is quadratic (400 KB of `[` took 82 s).
pub const MAX_DEPTH: usize = 64;

/// Most nodes a document may have once aliases are expanded. serde_yaml bounds alias
/// *jumps* (100 per event) but not what each jump copies, so nested aliases (a
/// "billion laughs") grow exponentially within that bound; counting expanded nodes
/// stops them. The largest sample scenario has a few hundred nodes.
pub const MAX_NODES: u64 = 250_000;

/// Streams the document's events (yaml-rust2 parses without recursion) and refuses,
/// at the first event that crosses a limit: nesting deeper than `MAX_DEPTH`, more than
/// `MAX_NODES` nodes after alias expansion, an alias to the node that contains it, and
/// any tag (`!foo`, `!!str`: scenario fields have fixed types, and serde_yaml would take
/// an unknown tag for an enum variant). A syntax error is reported here too, so that no
/// document reaches serde_yaml unchecked.
pub fn check_costs(source: &str) -> Result<(), Problem> {
    // The position is 1-based; the caller names the file.
    let error = |mark: Marker, problem: String, fix: &str| {
        Problem::located("", mark.line().max(1), mark.col() + 1, problem, fix)
    };
    let mut parser = Parser::new_from_str(source);
    // Expanded size of each anchored node, by anchor id (ids are unique per document).
    let mut anchor_sizes: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
    // Open collections: anchor id and the node count when they started.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut nodes: u64 = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            let m = *e.marker();
            if e.info().contains("recursion limit") {
                // yaml-rust2's own nesting bound, met before ours in flow collections.
                return error(
                    m,
                    format!("the document nests deeper than {MAX_DEPTH} levels"),
                    "a scenario nests 4 levels deep; look for unbalanced [ or {",
                );
            }
            error(m, format!("YAML syntax: {}", e.info()), "fix the YAML syntax at this position")
        })?;
        let tag = match &event {
            Event::Scalar(_, _, _, tag) | Event::SequenceStart(_, tag) | Event::MappingStart(_, tag) => tag.as_ref(),
            _ => None,
        };
        if let Some(tag) = tag {
            return Err(error(
                mark,
                format!("YAML tag '{}' is not supported", crate::spec::shorten(&format!("{}{}", tag.handle, tag.suffix), 40)),
                "remove the tag: scenario values are plain strings, numbers and lists (quote a value to make it a string)",
            ));
        }
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(_, _, anchor, _) => {
                nodes += 1;
                if anchor > 0 {
                    anchor_sizes.insert(anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                open.push((anchor, nodes - 1));
                if open.len() > MAX_DEPTH {
                    return Err(error(
                        mark,
                        format!("the document nests deeper than {MAX_DEPTH} levels"),
                        "a scenario nests 4 levels deep; look for unbalanced [ or {",
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop() {
                    if anchor > 0 {
                        anchor_sizes.insert(anchor, nodes - start);
                    }
                }
            }
            Event::Alias(anchor) => {
                let Some(size) = anchor_sizes.get(&anchor) else {
                    return Err(error(
                        mark,
                        "an alias refers to the node that contains it (a recursive document)".into(),
                        "remove the alias or point it at a node defined before it",
                    ));
                };
                nodes = nodes.saturating_add(*size);
            }
            _ => {}
        }
        if nodes > MAX_NODES {
            return Err(error(
                mark,
                format!("the document has more than {MAX_NODES} nodes once its aliases (*name) are expanded"),
                "write the scenario without nested aliases; a scenario needs a few hundred nodes",
            ));
        }
    }
}

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    /// A key the user chose (a target's or a peer set's name).
    Name(String),
    Index(usize),
}

#[derive(Debug)]
enum Node {
    Map(Vec<(String, Marker, Node)>, Marker),
    Seq(Vec<Node>, Marker),
    Scalar(Marker),
}

impl Node {
    /// Where the node starts. A block mapping's start event is marked after its first
    /// key, so use that key's position instead.
    fn mark(&self) -> Marker {
        match self {
            Node::Map(entries, m) => entries.first().map_or(*m, |(_, key_mark, _)| *key_mark),
            Node::Seq(_, m) | Node::Scalar(m) => *m,
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<(String, Marker)>)>,
    /// Pending mapping key while building a mapping's entries.
    root: Option<Node>,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((Node::Seq(items, _), _)) => items.push(node),
            Some((Node::Map(entries, _), pending)) => match pending.take() {
                None => {
                    // A key: only scalar keys are meaningful for our paths.
                    let text = match &node {
                        Node::Scalar(_) => String::new(),
                        _ => String::from("<complex key>"),
                    };
                    *pending = Some((text, node.mark()));
                }
                Some((key, mark)) => entries.push((key, mark, node)),
            },
            Some((Node::Scalar(_), _)) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => self.stack.push((Node::Map(Vec::new(), mark), None)),
            Event::SequenceStart(..) => self.stack.push((Node::Seq(Vec::new(), mark), None)),
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            Event::Scalar(value, ..) => {
                // Keys need their text: record it when this scalar is a key.
                if let Some((Node::Map(_, _), pending)) = self.stack.last_mut() {
                    if pending.is_none() {
                        *pending = Some((value, mark));
                        return;
                    }
                }
                self.push_value(Node::Scalar(mark));
            }
            Event::Alias(_) => self.push_value(Node::Scalar(mark)),
            _ => {}
        }
    }
}

/// 1-based (line, column) of the value at `path`, or of the deepest part of the path
/// that exists (the key of a bad value, the mapping a missing key belongs in).
pub fn locate(source: &str, path: &[Seg]) -> (usize, usize) {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    if parser.load(&mut builder, false).is_err() {
        return (1, 1);
    }
    let Some(mut node) = builder.root.as_ref() else {
        return (1, 1);
    };
    let mut best = node.mark();
    for seg in path {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Map(entries, _)) => {
                entries.iter().find(|(key, _, _)| key == k).map(|(_, key_mark, value)| {
                    best = *key_mark;
                    value
                })
            }
            (Seg::Name(k), Node::Map(entries, _)) => {
                entries.iter().find(|(key, _, _)| key == k).map(|(_, key_mark, value)| {
                    best = *key_mark;
                    value
                })
            }
            (Seg::Index(i), Node::Seq(items, _)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                if !matches!(seg, Seg::Key(_) | Seg::Name(_)) || matches!(n, Node::Scalar(_)) {
                    best = n.mark();
                }
            }
            None => break,
        }
    }
    (best.line(), best.col() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_keys_and_missing_fields() {
        let src = "name: x\nsteps:\n  - fault: loss\n    probability: 3\n  - fault: partition\n";
        assert_eq!(locate(src, &[Seg::Key("name")]), (1, 7));
        assert_eq!(locate(src, &[Seg::Key("steps"), Seg::Index(0), Seg::Key("probability")]), (4, 18));
        // Missing key: the step's mapping.
        assert_eq!(locate(src, &[Seg::Key("steps"), Seg::Index(1), Seg::Key("mode")]), (5, 5));
    }
}
