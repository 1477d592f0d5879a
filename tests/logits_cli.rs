//! The `logits` example end to end: argmax lines, the safetensors output, and clear failures.

mod support;

use bitnet_backend::Isa;
use support::{golden_model, run_example, run_example_with_env};

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

/// Logits bytes of `tokens` under `BITNET_KERNEL=kernel`, `BITNET_ISA=isa`.
fn logits_with(model: &str, tokens: &str, kernel: &str, isa: &str) -> (Vec<u8>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let env = [
        ("BITNET_KERNEL", kernel),
        ("BITNET_ISA", isa),
        ("RUST_LOG", "debug"),
    ];
    let args = [
        "-m",
        model,
        "--tokens",
        tokens,
        "--out",
        out.to_str().unwrap(),
    ];
    let run = run_example_with_env("logits", &args, "", &env);
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{kernel}/{isa}: {log}");
    (std::fs::read(&out).unwrap(), log)
}

#[test]
fn every_kernel_family_on_every_instruction_set_gives_the_same_logits() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-shakespeare").to_string();
    let golden = golden_model().map(|p| p.to_str().unwrap().to_string());
    // One token takes the GEMV paths, nine the multi-token ones.
    let cases = [(demo.clone(), "82"), (demo, "82,79,77,69,79,58,10,73,32")]
        .into_iter()
        .chain(golden.map(|g| (g, "111,154,73,304,214,9,1,2")));
    for (model, tokens) in cases {
        let (reference, _) = logits_with(&model, tokens, "i2s", "scalar");
        for kernel in ["i2s", "lut", "base3", "lut3", "auto"] {
            for isa in Isa::supported() {
                let (bytes, log) = logits_with(&model, tokens, kernel, &isa.to_string());
                assert!(bytes == reference, "{kernel}/{isa} on {model} {tokens}");
                if kernel == "auto" {
                    assert!(log.contains("kernel for"), "auto logs its choices: {log}");
                }
            }
        }
    }
    let run = run_example_with_env(
        "logits",
        &["--tokens", "1"],
        "",
        &[("BITNET_KERNEL", "fast")],
    );
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && log.contains("BITNET_KERNEL"),
        "{log}"
    );
}

#[test]
fn text_is_tokenized_with_the_model_tokenizer() {
    let run = logits(&["--text", "ROMEO:"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        6,
        "one byte-level token per byte: {stdout}"
    );
    let run = logits(&["--text", "x", "--tokens", "1"]);
    assert!(
        !run.status.success(),
        "--text and --tokens exclude each other"
    );
}

#[test]
fn an_unwritable_out_file_is_one_line_naming_it_with_its_cause_once() {
    let run = logits(&["--tokens", "1", "--out", "/no/such/dir/logits.safetensors"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("/no/such/dir/logits.safetensors"), "{log}");
    assert_eq!(log.matches("os error 2").count(), 1, "{log}");
}
