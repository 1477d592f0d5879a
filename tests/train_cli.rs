//! The `train` example end to end on a tiny model: training, export, resuming, bad flags.

mod support;

use std::path::Path;

use support::run_example;

fn run(name: &str, args: &[&str]) -> (bool, String) {
    let out = run_example(name, args, "");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log)
}

fn tiny_run<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "4",
        "--batch",
        "2",
        "--seq",
        "16",
        "--hidden",
        "32",
        "--ffn",
        "48",
        "--layers",
        "1",
        "--heads",
        "2",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--warmup",
        "2",
    ]
}

fn packed_loss(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("training.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["packed_validation_loss"].as_f64().unwrap()
}

#[test]
fn a_tiny_model_trains_exports_runs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(
        &data,
        "To be, or not to be, that is the question.\n".repeat(60),
    )
    .unwrap();
    let out = dir.path().join("model");
    let (data, out_str) = (data.to_str().unwrap(), out.to_str().unwrap());

    let (ok, log) = run("train", &tiny_run(data, out_str));
    assert!(ok, "{log}");
    assert!(log.contains("step 4: train loss"), "{log}");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "checkpoint/model.bpk",
    ] {
        assert!(out.join(file).is_file(), "{file} missing: {log}");
    }
    let first = packed_loss(&out);

    let generated = run_example(
        "infer",
        &["-m", out_str, "-p", "To be", "-n", "8", "--temp", "0"],
        "",
    );
    let log = String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "{log}");
    assert!(log.contains("generated: 8 tokens"), "{log}");

    // Resuming a finished run restores the checkpoint: the same packed model comes out.
    let (ok, log) = run("train", &["--data", data, "--out", out_str, "--resume"]);
    assert!(ok && log.contains("resuming at step 4"), "{log}");
    assert_eq!(packed_loss(&out), first);
}

#[test]
fn bad_training_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let out = out.to_str().unwrap();
    let (ok, log) = run("train", &["--data", "/no/such/text.txt", "--out", out]);
    assert!(!ok && log.contains("/no/such/text.txt"), "{log}");

    let data = dir.path().join("short.txt");
    std::fs::write(&data, "too short").unwrap();
    let data = data.to_str().unwrap();
    let (ok, log) = run("train", &["--data", data, "--out", out]);
    assert!(!ok && log.contains("too short"), "{log}");
    let (ok, log) = run("train", &["--data", data, "--out", out, "--resume"]);
    assert!(!ok && log.contains("no checkpoint to resume from"), "{log}");
    let (ok, log) = run("train", &["--data", data, "--hidden", "30", "--heads", "4"]);
    assert!(!ok && log.contains("--heads"), "{log}");
    let (ok, log) = run("train", &["--data", data, "--lr", "0"]);
    assert!(!ok && log.contains("--lr"), "{log}");
    assert!(!Path::new(out).exists(), "nothing is written on failure");
}
