//! Reading a directory: files (recursively, `*.yaml`/`*.yml`, sorted), documents (split at
//! `---`, each with its line offset in the file), and typed resources.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{Cx, Diagnostic, FieldPath, Origin, ResourceId, Severity, Source};
use super::meta::{Meta, ObjectMeta, DEFAULT_NAMESPACE};
use super::values::null_as_default;
use super::{resource_id, validate, Doc, Kind, Model};

/// Istio and Kubernetes kinds that Halyard knows of but does not read.
const UNSUPPORTED_KINDS: &[&str] = &[
    "Gateway",
    "Sidecar",
    "EnvoyFilter",
    "WorkloadGroup",
    "ProxyConfig",
    "Telemetry",
    "WasmPlugin",
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
];

/// Deepest directory nesting followed (guards against symlink loops).
const MAX_DEPTH: usize = 32;

/// Loads every `*.yaml`/`*.yml` file under `dir` (recursively, in sorted order, skipping
/// names that start with `.`), returning what parsed and every problem found, sorted by file
/// and line. File names in diagnostics are `dir` joined with the file's relative path.
pub fn load_dir(dir: &Path) -> (Model, Vec<Diagnostic>) {
    let mut model = Model::default();
    let mut diags = Vec::new();
    let mut files = Vec::new();
    collect(dir, PathBuf::new(), 0, &mut files, &mut diags);
    files.sort();
    for rel in files {
        let path = dir.join(&rel);
        match std::fs::read(&path) {
            Err(e) => diags.push(file_error(&path, format!("cannot read the file: {e}"))),
            Ok(bytes) => match String::from_utf8(bytes) {
                Err(_) => diags.push(file_error(&path, "the file is not UTF-8 text".into())),
                Ok(text) => load_text(&mut model, &mut diags, &path, &text),
            },
        }
    }
    validate::cross_check(&model, &mut diags);
    diags.sort_by(|a, b| a.origin.cmp(&b.origin));
    (model, diags)
}

fn file_error(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        origin: Origin::File {
            file: path.to_path_buf(),
            line: 1,
        },
        resource: None,
        path: String::new(),
        message,
        severity: Severity::Error,
    }
}

/// Adds the YAML files below `dir/rel` to `out` (as paths relative to `dir`).
fn collect(
    dir: &Path,
    rel: PathBuf,
    depth: usize,
    out: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) {
    let here = dir.join(&rel);
    let entries = match std::fs::read_dir(&here) {
        Ok(e) => e,
        Err(e) => {
            diags.push(file_error(&here, format!("cannot read the directory: {e}")));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let child = rel.join(&name);
        let full = dir.join(&child);
        let Ok(meta) = std::fs::metadata(&full) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                collect(dir, child, depth + 1, out, diags);
            }
        } else if full.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(child);
        }
    }
}

/// Splits multi-document YAML at `---` lines (and after `...` lines). Each part keeps its
/// `---` line and comes with the number of file lines before it.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0; // byte offset of the current document
    let mut start_line = 0; // lines before it
    let mut pos = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "..." || bare.starts_with("... ");
        if is_start && pos > start {
            docs.push((start_line, &text[start..pos]));
            start = pos;
            start_line = n;
        }
        pos += line.len();
        if is_end {
            docs.push((start_line, &text[start..pos - line.len()]));
            start = pos;
            start_line = n + 1;
        }
    }
    if pos > start {
        docs.push((start_line, &text[start..pos]));
    }
    docs
}

/// Loads every document of one file.
pub(crate) fn load_text(model: &mut Model, diags: &mut Vec<Diagnostic>, file: &Path, text: &str) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (offset, doc) in split_documents(text) {
        load_document(model, diags, file, offset, doc);
    }
}

/// Removes serde_yaml's ` at line L column C` (positions are reported separately, and are
/// relative to the document).
fn strip_positions(msg: &str) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r" at line \d+ column \d+").expect("valid regex"))
        .replace_all(msg, "")
        .into_owned()
}

/// A resource as written; `spec` is typed by kind.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(deserialize = "T: Deserialize<'de> + Default")
)]
struct Resource<T> {
    #[allow(dead_code)]
    api_version: serde_yaml::Value,
    #[allow(dead_code)]
    kind: serde_yaml::Value,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    spec: T,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

/// What is known of a document before its typed parse.
struct Header {
    source: Source,
    id: ResourceId,
}

fn load_document(
    model: &mut Model,
    diags: &mut Vec<Diagnostic>,
    file: &Path,
    offset: usize,
    text: &str,
) {
    let value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map_or(1, |l| l.line());
            diags.push(Diagnostic {
                origin: Origin::File {
                    file: file.to_path_buf(),
                    line: offset + line,
                },
                resource: None,
                path: String::new(),
                message: format!("YAML syntax error: {}", strip_positions(&e.to_string())),
                severity: Severity::Error,
            });
            return;
        }
    };
    if value.is_null() {
        return; // only comments
    }
    let source = Source::new(file.to_path_buf(), text.to_string(), offset);
    let Some(map) = value.as_mapping() else {
        diags.push(Diagnostic {
            origin: source.origin.clone(),
            resource: None,
            path: String::new(),
            message: "a resource is a mapping with apiVersion, kind, metadata and spec".into(),
            severity: Severity::Error,
        });
        return;
    };
    let text_of = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let api_version = text_of(map.get("apiVersion"));
    let kind_name = text_of(map.get("kind"));
    let metadata = map.get("metadata");
    let name = text_of(metadata.and_then(|m| m.get("name")));
    let namespace = text_of(metadata.and_then(|m| m.get("namespace")));
    let id = ResourceId {
        kind: kind_name.clone().unwrap_or_else(|| "?".into()),
        namespace: namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: name.filter(|n| !n.is_empty()).unwrap_or_else(|| "?".into()),
    };
    let header = Header { source, id };
    let mut cx = Cx::new(&header.source, header.id.clone(), diags);
    let root = FieldPath::root();

    let Some(kind_name) = kind_name else {
        cx.error(
            &root.f("kind"),
            "required field is missing (or not a string)",
        );
        return;
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        if UNSUPPORTED_KINDS.contains(&kind_name.as_str()) {
            cx.unsupported(&root.f("kind"), format!("kind {kind_name}"));
        } else {
            cx.error(
                &root.f("kind"),
                format!(
                    "unknown kind `{kind_name}` (one of {})",
                    Kind::ALL.map(Kind::name).join(", ")
                ),
            );
        }
        return;
    };
    let api_ok = match api_version.as_deref() {
        None => {
            cx.error(
                &root.f("apiVersion"),
                "required field is missing (or not a string)",
            );
            false
        }
        Some(av) => match av.split_once('/') {
            Some((group, version))
                if group == kind.group() && kind.versions().contains(&version) =>
            {
                true
            }
            Some((group, _)) if group == kind.group() => {
                cx.error(
                    &root.f("apiVersion"),
                    format!(
                        "unknown apiVersion `{av}` for {kind_name} (use {}/{})",
                        kind.group(),
                        kind.versions().join(", ")
                    ),
                );
                false
            }
            _ => {
                cx.error(
                    &root.f("apiVersion"),
                    format!(
                        "unknown apiVersion `{av}` for {kind_name} (use {}/{})",
                        kind.group(),
                        kind.versions()[0]
                    ),
                );
                false
            }
        },
    };
    drop(cx);
    match kind {
        Kind::ServiceEntry => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::ServiceEntry, cx| s.check(cx),
            ) {
                model.service_entries.push(doc);
            }
        }
        Kind::WorkloadEntry => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::WorkloadEntry, cx| s.check(cx),
            ) {
                model.workload_entries.push(doc);
            }
        }
        Kind::VirtualService => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::VirtualService, cx| s.check(cx),
            ) {
                model.virtual_services.push(doc);
            }
        }
        Kind::DestinationRule => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::DestinationRule, cx| s.check(cx),
            ) {
                model.destination_rules.push(doc);
            }
        }
        Kind::PeerAuthentication => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::PeerAuthentication, cx| s.check(cx),
            ) {
                model.peer_authentications.push(doc);
            }
        }
        Kind::AuthorizationPolicy => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::AuthorizationPolicy, cx| s.check(cx),
            ) {
                model.authorization_policies.push(doc);
            }
        }
        Kind::RequestAuthentication => {
            if let Some(doc) = typed(
                diags,
                &header,
                kind,
                api_ok,
                |s: &super::RequestAuthentication, cx| s.check(cx),
            ) {
                model.request_authentications.push(doc);
            }
        }
        Kind::MeshConfig => {
            if let Some(doc) = typed(diags, &header, kind, api_ok, |s: &super::MeshConfig, cx| {
                s.check(cx)
            }) {
                match &model.mesh_doc {
                    Some((meta, first)) => {
                        let mut cx = Cx::new(&doc.source, resource_id(kind, &doc.meta), diags);
                        cx.error(
                            &FieldPath::root().f("kind"),
                            format!(
                                "a second MeshConfig (MeshConfig {} is at {}); there is one per mesh",
                                meta.name, first.origin
                            ),
                        );
                    }
                    None => {
                        model.mesh = doc.spec;
                        model.mesh_doc = Some((doc.meta, doc.source));
                    }
                }
            }
        }
    }
}

/// Parses the document as kind `T`, checks it, and returns it when its apiVersion is right.
fn typed<T: DeserializeOwned + Default>(
    diags: &mut Vec<Diagnostic>,
    header: &Header,
    kind: Kind,
    api_ok: bool,
    check: impl FnOnce(&T, &mut Cx<'_>),
) -> Option<Doc<T>> {
    let source = &header.source;
    let res: Resource<T> = match serde_yaml::from_str(&source.text.text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.location().map_or(1, |l| l.line());
            let (path, message) = split_serde_message(&strip_positions(&e.to_string()));
            diags.push(Diagnostic {
                origin: source.origin_at(line),
                resource: Some(header.id.clone()),
                path,
                message,
                severity: Severity::Error,
            });
            return None;
        }
    };
    let meta: Meta = res.metadata.to_meta();
    let mut id = resource_id(kind, &meta);
    if meta.name.is_empty() {
        id.name = "?".into();
    }
    let mut cx = Cx::new(source, id, diags);
    res.metadata.check(&mut cx);
    check(&res.spec, &mut cx);
    api_ok.then(|| Doc {
        meta,
        spec: res.spec,
        source: source.clone(),
    })
}

/// Splits serde_yaml's `path: message` and moves an unknown or missing field's name into the
/// path (`spec.ports[0]: unknown field `nmae`` → `spec.ports[0].nmae`).
fn split_serde_message(msg: &str) -> (String, String) {
    let (mut path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.is_empty() && !p.contains(char::is_whitespace) => {
            (p.to_string(), m.to_string())
        }
        _ => (String::new(), msg.to_string()),
    };
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some(field) = rest.split('`').next() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(field);
            }
        }
    }
    (path, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_offsets() {
        let text = "# head\na: 1\n---\nb: 2\n--- # c\nc: 3\n...\n---\nd: 4\n";
        let docs = split_documents(text);
        let got: Vec<(usize, &str)> = docs;
        assert_eq!(
            got,
            vec![
                (0, "# head\na: 1\n"),
                (2, "---\nb: 2\n"),
                (4, "--- # c\nc: 3\n"),
                (7, "---\nd: 4\n"),
            ]
        );
    }

    #[test]
    fn dashes_inside_values_do_not_split() {
        let text = "a: |\n  ---\n  x\nb: '---'\n";
        assert_eq!(split_documents(text).len(), 1);
    }

    #[test]
    fn serde_messages() {
        assert_eq!(
            split_serde_message("spec.ports[0]: unknown field `nmae`, expected `number` or `name`"),
            (
                "spec.ports[0].nmae".to_string(),
                "unknown field `nmae`, expected `number` or `name`".to_string()
            )
        );
        assert_eq!(
            split_serde_message("invalid type: string \"a\", expected a sequence"),
            (
                String::new(),
                "invalid type: string \"a\", expected a sequence".to_string()
            )
        );
        assert_eq!(
            strip_positions("did not find expected ',' or ']' at line 5 column 1, while parsing a flow sequence at line 4 column 10"),
            "did not find expected ',' or ']', while parsing a flow sequence"
        );
    }

    fn load(text: &str) -> (Model, Vec<String>) {
        let mut model = Model::default();
        let mut diags = Vec::new();
        load_text(&mut model, &mut diags, Path::new("t.yaml"), text);
        (model, diags.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn errors_name_the_file_line_of_later_documents() {
        let text = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: 10.0.0.1}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: b\n  namespace: vm\nspec:\n  address: 10.0.0.2\n  weigth: 3\n";
        let (model, diags) = load(text);
        assert_eq!(model.workload_entries.len(), 1);
        assert_eq!(
            diags,
            vec!["t.yaml:13: WorkloadEntry/vm/b: spec.weigth: unknown field `weigth`, expected one of `address`, `ports`, `labels`, `network`, `locality`, `weight`, `serviceAccount`"]
        );
    }

    #[test]
    fn syntax_errors_do_not_stop_other_documents() {
        let text = "a: [1\n---\napiVersion: halyard.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: example.org}\n";
        let (model, diags) = load(text);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0].starts_with("t.yaml:2: -: -: YAML syntax error: "),
            "{diags:?}"
        );
        assert_eq!(model.mesh.trust_domain(), "example.org");
    }

    #[test]
    fn kinds_and_versions() {
        let (_, diags) = load("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n---\napiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n---\nkind: Foo\n");
        assert_eq!(
            diags,
            vec![
                "t.yaml:2: Gateway/default/g: kind: unsupported: kind Gateway",
                "t.yaml:5: VirtualService/default/v: apiVersion: unknown apiVersion `networking.istio.io/v2` for VirtualService (use networking.istio.io/v1, v1beta1, v1alpha3)",
                "t.yaml:10: Foo/default/?: kind: unknown kind `Foo` (one of ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RequestAuthentication, MeshConfig)",
            ]
        );
    }
}
