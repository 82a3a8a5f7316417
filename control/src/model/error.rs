//! Diagnostics: what is wrong, where (an [`Origin`]: `file:line`, or a Kubernetes object), in
//! which resource and at which field.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use halyard_xds::{line_of, Segment};

/// How bad a problem is. `check` fails on errors; warnings are printed but do not fail it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration cannot be used as written.
    Error,
    /// Probably a mistake, but the rest of the mesh is unaffected (e.g. a DestinationRule for
    /// a host that no ServiceEntry defines: Istio ignores it too).
    Warning,
}

/// The resource a diagnostic is about: `Kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    /// `kind` as written (`VirtualService`), or `?` when the document has none.
    pub kind: String,
    /// The namespace (`default` when not given).
    pub namespace: String,
    /// `metadata.name`, or `?` when missing.
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Where an object, or a field of it, came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A line of a file: displays as `file:line`.
    File {
        /// The file, relative to the directory given to `load_dir` (joined to it).
        file: PathBuf,
        /// 1-based line (of the field, of the document, or of a syntax error).
        line: usize,
    },
    /// An object read from the Kubernetes API: displays as
    /// `kind/namespace/name@resourceVersion`. Its fields have no lines of their own.
    Kubernetes {
        /// `kind` (`VirtualService`).
        kind: String,
        /// `metadata.namespace`.
        namespace: String,
        /// `metadata.name`.
        name: String,
        /// `metadata.resourceVersion` as the API server served it.
        resource_version: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line } => write!(f, "{}:{line}", file.display()),
            Origin::Kubernetes {
                kind,
                namespace,
                name,
                resource_version,
            } => write!(f, "{kind}/{namespace}/{name}@{resource_version}"),
        }
    }
}

/// One problem found in the input.
///
/// Displays as `origin: Kind/namespace/name: field.path: message` (the origin is `file:line`
/// for a directory); a part that does not apply (a YAML syntax error has no resource, a
/// document-level problem has no field) is `-`, and warnings' messages start with `warning: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where: the offending field's line (or the document's, or the syntax error's).
    pub origin: Origin,
    /// The resource, when the document got far enough to name one.
    pub resource: Option<ResourceId>,
    /// The field path (`spec.http[0].route[1].weight`), empty when the whole document is meant.
    pub path: String,
    /// What is wrong; unsupported features start with `unsupported: `.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        match &self.resource {
            Some(r) => write!(f, "{r}: ")?,
            None => f.write_str("-: ")?,
        }
        if self.path.is_empty() {
            f.write_str("-: ")?;
        } else {
            write!(f, "{}: ", self.path)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A field of an object (`spec`, `http`).
    Field(String),
    /// A key of a map (a label, a header name, a port of `portLevelMtls`).
    Key(String),
    /// An element of a list.
    Index(usize),
}

/// A path to a field inside one document, e.g. `spec.http[0].match[1].headers[end-user]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Step>);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of field `name` below this one.
    pub fn f(&self, name: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Step::Field(name.to_string()));
        Self(v)
    }

    /// The path of map key `key` below this one.
    pub fn k(&self, key: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Step::Key(key.to_string()));
        Self(v)
    }

    /// The path of list element `i` below this one.
    pub fn i(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Step::Index(i));
        Self(v)
    }

    /// The path as `halyard_xds::line_of` takes it.
    pub fn segments(&self) -> Vec<Segment> {
        self.0
            .iter()
            .map(|s| match s {
                Step::Field(n) | Step::Key(n) => Segment::Field(n.clone()),
                Step::Index(i) => Segment::Index(*i),
            })
            .collect()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, step) in self.0.iter().enumerate() {
            match step {
                Step::Field(name) if n == 0 => f.write_str(name)?,
                Step::Field(name) => write!(f, ".{name}")?,
                Step::Key(key) => write!(f, "[{key}]")?,
                Step::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Where a document came from — its [`Origin`] — and its text (so that later checks can
/// still find the line of any field).
#[derive(Debug, Clone)]
pub struct Source {
    /// Where the document is: for a file, the line of its first field (usually
    /// `apiVersion:`).
    pub origin: Origin,
    /// The document's text and its line offset in the file.
    pub(crate) text: Arc<DocText>,
}

/// The text of one YAML document and how many lines of the file precede it.
#[derive(Debug)]
pub(crate) struct DocText {
    pub(crate) text: String,
    pub(crate) offset: usize,
}

impl Source {
    /// A document of `file` whose text starts after `offset` lines of the file.
    pub(crate) fn new(file: PathBuf, text: String, offset: usize) -> Self {
        let rel = line_of(&text, &[]).unwrap_or(1);
        Self {
            origin: Origin::File {
                file,
                line: offset + rel,
            },
            text: Arc::new(DocText { text, offset }),
        }
    }

    /// Where line `rel` of the document is: that line of its file; a Kubernetes object is
    /// named whole.
    pub(crate) fn origin_at(&self, rel: usize) -> Origin {
        self.at_line(self.text.offset + rel)
    }

    /// Where the field at `path` is: its [`Source::line_of`] in the file; a Kubernetes object
    /// is named whole.
    pub fn origin_of(&self, path: &FieldPath) -> Origin {
        self.at_line(self.line_of(path))
    }

    fn at_line(&self, line: usize) -> Origin {
        match &self.origin {
            Origin::File { file, .. } => Origin::File {
                file: file.clone(),
                line,
            },
            other => other.clone(),
        }
    }

    /// The 1-based line in the file of `path`: the line of its key (`corsPolicy:` rather
    /// than the first line of the mapping below it). When the field is missing, the line of
    /// the deepest ancestor that exists.
    pub fn line_of(&self, path: &FieldPath) -> usize {
        self.text.offset + self.rel_line(&path.segments())
    }

    /// [`Source::line_of`] relative to the document.
    fn rel_line(&self, segs: &[Segment]) -> usize {
        let text = &self.text.text;
        let at = |segs: &[Segment]| line_of(text, segs).unwrap_or(1);
        // `line_of` gives the line of the node a path leads to (for a mapping or list that is
        // the line of its first entry) or of the deepest ancestor that exists. Look upwards
        // from there for the key of the deepest field that exists.
        let found = at(segs);
        let lines: Vec<&str> = text.lines().collect();
        for k in (1..=segs.len()).rev() {
            match &segs[k - 1] {
                Segment::Index(_) => return at(&segs[..k]),
                Segment::Field(name) => {
                    let parent = at(&segs[..k - 1]).min(found);
                    let hit = (parent..=found)
                        .rev()
                        .find(|&l| lines.get(l - 1).is_some_and(|t| has_key(t, name)));
                    if let Some(l) = hit {
                        return l;
                    }
                }
            }
        }
        found
    }
}

/// Whether YAML line `line` holds the mapping key `name` (block, flow or quoted).
fn has_key(line: &str, name: &str) -> bool {
    let line = line.split(" #").next().unwrap_or(line);
    line.match_indices(name).any(|(i, _)| {
        let before = line[..i].trim_end_matches(['"', '\'']);
        let after = line[i + name.len()..].trim_start_matches(['"', '\'']);
        let boundary = before
            .chars()
            .last()
            .is_none_or(|c| c == ' ' || c == '{' || c == ',');
        boundary && after.starts_with(':')
    })
}

/// Collects the diagnostics of one resource, finding each field's line.
pub(crate) struct Cx<'a> {
    pub(crate) source: &'a Source,
    pub(crate) resource: ResourceId,
    pub(crate) out: &'a mut Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(
        source: &'a Source,
        resource: ResourceId,
        out: &'a mut Vec<Diagnostic>,
    ) -> Self {
        Self {
            source,
            resource,
            out,
        }
    }

    fn push(&mut self, path: &FieldPath, message: String, severity: Severity) {
        self.out.push(Diagnostic {
            origin: self.source.origin_of(path),
            resource: Some(self.resource.clone()),
            path: path.to_string(),
            message,
            severity,
        });
    }

    /// An error at `path`.
    pub(crate) fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(path, message.into(), Severity::Error);
    }

    /// A warning at `path`.
    pub(crate) fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(path, message.into(), Severity::Warning);
    }

    /// A feature Halyard does not implement: an error saying `unsupported: {what}`.
    pub(crate) fn unsupported(&mut self, path: &FieldPath, what: impl fmt::Display) {
        self.push(path, format!("unsupported: {what}"), Severity::Error);
    }

    /// An error for a required field that is missing or empty.
    pub(crate) fn required(&mut self, path: &FieldPath) {
        self.push(path, "required field is missing".into(), Severity::Error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_jsonpath() {
        let p = FieldPath::root()
            .f("spec")
            .f("http")
            .i(0)
            .f("match")
            .i(1)
            .f("headers")
            .k("end-user");
        assert_eq!(p.to_string(), "spec.http[0].match[1].headers[end-user]");
        assert_eq!(FieldPath::root().to_string(), "");
    }

    #[test]
    fn diagnostic_format() {
        let mut d = Diagnostic {
            origin: Origin::File {
                file: PathBuf::from("dir/a.yaml"),
                line: 7,
            },
            resource: Some(ResourceId {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "reviews".into(),
            }),
            path: "spec.hosts".into(),
            message: "required field is missing".into(),
            severity: Severity::Error,
        };
        assert_eq!(
            d.to_string(),
            "dir/a.yaml:7: VirtualService/default/reviews: spec.hosts: required field is missing"
        );
        d.resource = None;
        d.path.clear();
        d.severity = Severity::Warning;
        assert_eq!(
            d.to_string(),
            "dir/a.yaml:7: -: -: warning: required field is missing"
        );
    }

    #[test]
    fn origins_display_as_file_line_or_kubernetes_object() {
        let file = Origin::File {
            file: PathBuf::from("mesh/bookinfo/reviews.yaml"),
            line: 31,
        };
        assert_eq!(file.to_string(), "mesh/bookinfo/reviews.yaml:31");
        let kube = Origin::Kubernetes {
            kind: "VirtualService".into(),
            namespace: "bookinfo".into(),
            name: "reviews".into(),
            resource_version: "48213".into(),
        };
        assert_eq!(kube.to_string(), "VirtualService/bookinfo/reviews@48213");
        let d = Diagnostic {
            origin: kube,
            resource: None,
            path: "spec.hosts".into(),
            message: "required field is missing".into(),
            severity: Severity::Error,
        };
        assert_eq!(
            d.to_string(),
            "VirtualService/bookinfo/reviews@48213: -: spec.hosts: required field is missing"
        );
        // Diagnostics sort by file, then line.
        let at = |file: &str, line| Origin::File {
            file: file.into(),
            line,
        };
        let mut origins = vec![at("b.yaml", 1), at("a.yaml", 10), at("a.yaml", 9)];
        origins.sort();
        assert_eq!(
            origins,
            [at("a.yaml", 9), at("a.yaml", 10), at("b.yaml", 1)]
        );
    }

    #[test]
    fn source_lines_include_the_offset() {
        let src = Source::new(
            PathBuf::from("f.yaml"),
            "---\n# c\napiVersion: v\nspec:\n  hosts:\n  - a\n".into(),
            10,
        );
        assert_eq!(
            src.origin,
            Origin::File {
                file: "f.yaml".into(),
                line: 13
            }
        );
        assert_eq!(
            src.origin_of(&FieldPath::root().f("spec")).to_string(),
            "f.yaml:14"
        );
        assert_eq!(
            src.line_of(&FieldPath::root().f("spec").f("hosts").i(0)),
            16
        );
        // A field whose value is a list or mapping: the line of its key.
        assert_eq!(src.line_of(&FieldPath::root().f("spec").f("hosts")), 15);
        // A missing field: the key line of the deepest ancestor that exists.
        assert_eq!(src.line_of(&FieldPath::root().f("spec").f("ports")), 14);
        assert_eq!(src.line_of(&FieldPath::root().f("nothing")), 13);
    }

    #[test]
    fn keys_in_lines() {
        assert!(has_key("  corsPolicy:", "corsPolicy"));
        assert!(has_key("  - destination:", "destination"));
        assert!(has_key("    - {number: 80, name: http}", "name"));
        assert!(has_key("  \"name\": x", "name"));
        assert!(!has_key("  hostname: x", "name"));
        assert!(!has_key("  name2: x", "name"));
        assert!(!has_key("  x-canary: x", "canary"));
        assert!(!has_key("  x: 1 # name:", "name"));
    }
}
