//! The `logits` example end to end: argmax lines, the safetensors output, and clear failures.

mod support;

use support::{golden_model, run_example};

fn logits(args: &[&str]) -> std::process::Output {
    run_example("logits", args, "")
}

#[test]
fn logits_prints_argmax_and_writes_safetensors() {
    let Some(model) = golden_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let run = logits(&[
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "111,154,73",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape(), &[3, 320]);
}

#[test]
fn logits_fails_clearly_on_bad_input() {
    let Some(model) = golden_model() else { return };
    let run = logits(&["--model", model.to_str().unwrap(), "--tokens", "1,320"]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("outside the vocabulary"), "{stderr}");

    let run = logits(&["--model", "/nonexistent", "--tokens", "1"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("/nonexistent"));
}
