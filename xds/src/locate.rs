//! Maps a field path (`services[1].ports[0].port`) to its line in a YAML/JSON source,
//! so that semantic errors can name a line just as parse errors do.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One path segment: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A field of a message.
    Field(String),
    /// An element of a repeated field.
    Index(usize),
}

#[derive(Debug)]
enum Node {
    Scalar(usize),
    Seq(usize, Vec<Node>),
    Map(usize, Vec<(String, Node)>),
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar(l) | Node::Seq(l, _) | Node::Map(l, _) => *l,
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<String>)>,
    pending_key: Vec<Option<String>>,
    root: Option<Node>,
}

impl Builder {
    fn push_value(&mut self, node: Node, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((Node::Seq(_, items), _)) => items.push(node),
            Some((Node::Map(_, entries), _)) => {
                if let Some(slot) = self.pending_key.last_mut() {
                    match slot.take() {
                        None => *slot = Some(key_text.unwrap_or_default()),
                        Some(key) => entries.push((key, node)),
                    }
                }
            }
            Some((Node::Scalar(_), _)) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) => self.push_value(Node::Scalar(line), Some(text)),
            Event::Alias(_) => self.push_value(Node::Scalar(line), None),
            Event::SequenceStart(..) => self.stack.push((Node::Seq(line, Vec::new()), None)),
            Event::MappingStart(..) => {
                self.stack.push((Node::Map(line, Vec::new()), None));
                self.pending_key.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    if matches!(node, Node::Map(..)) {
                        self.pending_key.pop();
                    }
                    self.push_value(node, None);
                }
            }
            _ => {}
        }
    }
}

/// Field names may be written camelCase or snake_case; compare them loosely.
fn same_field(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> impl Iterator<Item = char> + '_ {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
    }
    norm(a).eq(norm(b))
}

/// Returns the 1-based line of the deepest node along `path` that exists in `source`.
pub fn line_of(source: &str, path: &[Segment]) -> Option<usize> {
    let mut builder = Builder::default();
    Parser::new_from_str(source)
        .load(&mut builder, false)
        .ok()?;
    let mut node = builder.root.as_ref()?;
    for seg in path {
        let next = match (seg, node) {
            (Segment::Field(name), Node::Map(_, entries)) => entries
                .iter()
                .find(|(k, _)| same_field(k, name))
                .map(|(_, n)| n),
            (Segment::Index(i), Node::Seq(_, items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    Some(node.line())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_lines() {
        let src =
            "version: a\nservices:\n  - name: x\n    ports:\n      - port: 1\n      - port: 2\n";
        let p = |s: &[Segment]| line_of(src, s);
        assert_eq!(p(&[Segment::Field("version".into())]), Some(1));
        let port2 = [
            Segment::Field("services".into()),
            Segment::Index(0),
            Segment::Field("ports".into()),
            Segment::Index(1),
            Segment::Field("port".into()),
        ];
        assert_eq!(p(&port2), Some(6));
        // A missing leaf falls back to its parent's line.
        let missing = [
            Segment::Field("services".into()),
            Segment::Index(0),
            Segment::Field("target_port".into()),
        ];
        assert_eq!(p(&missing), Some(3));
    }

    #[test]
    fn json_and_snake_case() {
        let src = "{\n \"services\": [\n  {\"name\": \"a\",\n   \"connect_timeout\": \"x\"}]}";
        let path = [
            Segment::Field("services".into()),
            Segment::Index(0),
            Segment::Field("connectTimeout".into()),
        ];
        assert_eq!(line_of(src, &path), Some(4));
    }
}
