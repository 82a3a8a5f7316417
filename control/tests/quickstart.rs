//! The shipped quickstart mesh (`examples/quickstart/`) is clean for `halyard-control check`.

use std::path::Path;
use std::process::Command;

#[test]
fn quickstart_checks_clean() {
    let dir = Path::new("../examples/quickstart");
    let out = Command::new(env!("CARGO_BIN_EXE_halyard-control"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("run halyard-control check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("8 resources, no problems"), "{stdout}");
}
