//! `halyard-control check DIR`: loads and validates a directory of mesh configuration, the
//! counterpart of `istioctl analyze`.
//!
//! Every problem is printed on stdout as `file:line: Kind/namespace/name: field.path: message`
//! (one per line, sorted by file and line); a summary goes to stderr. Exit status: 0 when there
//! are no errors (warnings alone do not fail), 1 when there are errors, 2 when DIR cannot be
//! read at all.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::model::{DirectorySource, ModelSource, Severity};

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Directory of YAML manifests (`*.yaml`, `*.yml`, searched recursively).
    pub dir: PathBuf,
}

/// Runs `check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    if !args.dir.is_dir() {
        eprintln!(
            "halyard-control check: {} is not a directory",
            args.dir.display()
        );
        return ExitCode::from(2);
    }
    report(&DirectorySource::new(&args.dir))
}

/// Loads `input` and prints its diagnostics and a summary; fails when there are errors.
fn report(input: &dyn ModelSource) -> ExitCode {
    let (model, diags) = input.load();
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    let mut stdout = std::io::stdout().lock();
    for d in &diags {
        let _ = writeln!(stdout, "{d}");
    }
    let resources = plural(model.len(), "resource", "resources");
    if diags.is_empty() {
        let _ = writeln!(stdout, "{resources}, no problems");
        return ExitCode::SUCCESS;
    }
    let _ = stdout.flush();
    eprintln!(
        "halyard-control check: {resources}: {}, {}",
        plural(errors, "error", "errors"),
        plural(warnings, "warning", "warnings")
    );
    if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
