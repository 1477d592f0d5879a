//! Shared support of the example tests: the golden model and running a built example.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The golden 2B4T checkpoint, if `../shared/golden` is present.
pub fn golden_model() -> Option<PathBuf> {
    let dir = std::env::var_os("BITNET_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"))
        .join("models/bitnet2b4t_pub");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: golden model not found at {}", dir.display());
        None
    }
}

/// Runs example `name` (built by `cargo test` or `cargo build --examples`).
pub fn run_example(name: &str, args: &[&str], stdin: &str) -> Output {
    run_example_with_env(name, args, stdin, &[])
}

/// [`run_example`] with extra environment variables.
pub fn run_example_with_env(
    name: &str,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> Output {
    use std::io::Write;
    let mut child = example(name)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the example");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs example `name` with nobody reading its stdout (the pipe's read end closed at once, as
/// `| head` closes it), and returns its status and stderr.
pub fn run_example_unread(name: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = example(name)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the example");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command running example `name`: `cargo test` builds examples beside the test binaries, in
/// `target/<profile>/examples`.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    Command::new(profile_dir.join("examples").join(name))
}
