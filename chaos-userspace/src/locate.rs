//! Finding where a value sits in a YAML file, so validation errors that serde cannot see
//! (a probability above 1, an unknown target name) still say file:line:column.

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
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
            (Seg::Index(i), Node::Seq(items, _)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                if !matches!(seg, Seg::Key(_)) || matches!(n, Node::Scalar(_)) {
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
