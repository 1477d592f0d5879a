//! The `infer` example end to end: generation, conversation mode and one-line failures.

mod support;

use support::{golden_model, run_example};

/// The golden model has no tokenizer of its own; bitnet.cpp's GGUF of it carries one of the
/// right size.
fn tokenizer() -> Option<String> {
    let model = golden_model()?;
    let gguf = model.join("../../../parity/bitnet2b4t_pub/bitnet2b4t_pub.i2_s.gguf");
    gguf.is_file().then(|| gguf.to_str().unwrap().to_string())
}

fn infer(args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = run_example("infer", args, stdin);
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn greedy_generation_is_deterministic_and_reports_statistics() {
    let (Some(model), Some(tok)) = (golden_model(), tokenizer()) else {
        return;
    };
    let args = [
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        &tok,
        "-p",
        "hello",
        "-n",
        "12",
        "--temp",
        "0",
    ];
    let (ok, first, log) = infer(&args, "");
    assert!(ok, "{log}");
    assert!(first.starts_with("hello"), "{first}");
    assert!(log.contains("generated:") && log.contains("tok/s"), "{log}");
    let (_, second, _) = infer(&args, "");
    assert_eq!(first, second);
    // The same seed samples the same text.
    let seeded = [
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        &tok,
        "-p",
        "hello",
        "-n",
        "12",
        "--seed",
        "5",
    ];
    assert_eq!(infer(&seeded, "").1, infer(&seeded, "").1);
}

#[test]
fn conversation_mode_answers_each_turn() {
    let (Some(model), Some(tok)) = (golden_model(), tokenizer()) else {
        return;
    };
    let args = [
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        &tok,
        "-cnv",
        "-p",
        "Be brief.",
        "-n",
        "4",
        "--temp",
        "0",
    ];
    let (ok, _, log) = infer(&args, "hi\nhow are you\n");
    assert!(ok, "{log}");
    assert_eq!(log.matches("generated:").count(), 2, "{log}");
}

#[test]
fn with_no_arguments_infer_runs_the_bundled_demo_model() {
    let args = ["-n", "64", "--temp", "0"];
    let (ok, first, log) = infer(&args, "");
    assert!(ok, "{log}");
    assert!(
        first.starts_with("ROMEO:"),
        "the demo prompt comes first: {first}"
    );
    assert!(log.contains("generated: 64 tokens"), "{log}");
    let text = &first["ROMEO:".len()..];
    assert!(
        text.chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\t'),
        "printable text: {text:?}"
    );
    assert!(
        text.chars().filter(|c| c.is_alphabetic()).count() > 16,
        "{text:?}"
    );
    assert_eq!(first, infer(&args, "").1, "greedy output is deterministic");
    // With an f16 KV cache too (the same prompt, 64 tokens of text).
    let (ok, half, log) = infer(&[&args[..], &["--cache-type", "f16"]].concat(), "");
    assert!(ok && half.starts_with("ROMEO:"), "{log}");
    assert!(log.contains("generated: 64 tokens"), "{log}");
}

#[test]
fn a_reader_that_goes_away_ends_generation_quietly() {
    // `infer | head -c 10`: streaming stops at the first write nobody reads, without a panic.
    let (status, log) = support::run_example_unread("infer", &["-n", "64", "--temp", "0"]);
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("panicked") && !log.contains("error"), "{log}");
    assert!(
        !log.contains("generated: 64 tokens"),
        "it stopped early: {log}"
    );
}

#[test]
fn a_context_past_the_training_context_runs_with_a_warning() {
    let (ok, _, log) = infer(&["-n", "2", "--temp", "0"], "");
    assert!(ok && !log.contains("warning:"), "{log}");
    // The demo model was trained on 128 positions; llama.cpp also warns and runs.
    let (ok, _, log) = infer(&["-n", "2", "--temp", "0", "-c", "200"], "");
    assert!(ok && log.contains("generated: 2 tokens"), "{log}");
    assert!(
        log.contains("warning: --ctx-size needs 200 positions")
            && log.contains("training context of 128"),
        "{log}"
    );
}

#[test]
fn bad_inputs_exit_non_zero_with_one_line() {
    let (ok, _, log) = infer(&["-m", "/nonexistent/model"], "");
    assert!(!ok && log.contains("/nonexistent/model"), "{log}");
    let (ok, _, log) = infer(&["--top-k", "many"], "");
    assert!(!ok && log.contains("--top-k"), "{log}");
    let (Some(model), Some(tok)) = (golden_model(), tokenizer()) else {
        return;
    };
    let model = model.to_str().unwrap();
    let (ok, out, log) = infer(
        &[
            "-m",
            model,
            "--tokenizer",
            &tok,
            "-p",
            "hello world hello world",
            "-c",
            "4",
        ],
        "",
    );
    assert!(!ok && log.contains("context holds 4"), "{log}");
    assert!(out.is_empty(), "nothing is printed before the error: {out}");
    let (ok, _, log) = infer(
        &["-m", model, "--tokenizer", &tok, "-p", "x", "--temp", "-1"],
        "",
    );
    assert!(!ok && log.contains("temperature"), "{log}");
    let (ok, _, log) = infer(&["-m", model, "-p", "x"], "");
    assert!(!ok && log.contains("tokenizer.json"), "{log}");
    let (ok, _, log) = infer(
        &[
            "-m",
            model,
            "--tokenizer",
            &tok,
            "-cnv",
            "--chat-template",
            "/no/such.jinja",
        ],
        "",
    );
    assert!(!ok && log.contains("--chat-template"), "{log}");
}
