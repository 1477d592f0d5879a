//! The `convert` example end to end: the demo model to our converted format and to GGUF, then
//! `logits` and `infer` on each, and clear failures that leave existing files alone.

mod support;

use std::path::Path;

use support::run_example;

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tiny-shakespeare")
        .display()
        .to_string()
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn failure(output: &std::process::Output) -> String {
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn converted_and_gguf_files_run_like_the_hf_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let converted = tmp.path().join("demo.bitnet");
    let gguf = tmp.path().join("demo.gguf");
    let c = converted.to_str().unwrap();
    let g = gguf.to_str().unwrap();
    ok(&run_example(
        "convert",
        &["--input", &demo(), "--output", c],
        "",
    ));
    ok(&run_example(
        "convert",
        &["--input", &demo(), "--output", g, "--format", "gguf"],
        "",
    ));
    let text = ["--text", "ROMEO: What light"];
    let logits = |model: &str| {
        ok(&run_example(
            "logits",
            &[&["-m", model][..], &text].concat(),
            "",
        ))
    };
    let reference = logits(&demo());
    // The converted file holds the very codes and floats: identical output.
    assert_eq!(logits(c), reference);
    // GGUF stores the same weights; bitnet.cpp's activation rounding may move a last digit.
    assert_eq!(logits(g).lines().count(), reference.lines().count());
    for model in [c, g] {
        let story = ok(&run_example(
            "infer",
            &["-m", model, "-p", "ROMEO:", "-n", "8", "--temp", "0"],
            "",
        ));
        assert!(story.starts_with("ROMEO:"), "{story}");
    }
    // A converted file converts onward (its tokenizer travels with it).
    let again = tmp.path().join("again.gguf");
    ok(&run_example(
        "convert",
        &["-i", c, "-o", again.to_str().unwrap(), "--format", "gguf"],
        "",
    ));
}

#[test]
fn convert_fails_clearly_and_keeps_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("keep.bitnet");
    std::fs::write(&existing, b"precious").unwrap();
    let e = existing.to_str().unwrap();

    let stderr = failure(&run_example(
        "convert",
        &["-i", "/nonexistent/model", "-o", e],
        "",
    ));
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    let stderr = failure(&run_example(
        "convert",
        &["-i", &demo(), "-o", e, "--format", "onnx"],
        "",
    ));
    assert!(stderr.contains("onnx"), "{stderr}");
    let stderr = failure(&run_example(
        "convert",
        &["-i", &demo(), "-o", tmp.path().to_str().unwrap()],
        "",
    ));
    assert!(stderr.contains("is a directory"), "{stderr}");
    // An output directory that does not exist: named as a write, its cause said once.
    let missing = tmp.path().join("no-such-dir").join("out.bitnet");
    let stderr = failure(&run_example(
        "convert",
        &["-i", &demo(), "-o", missing.to_str().unwrap()],
        "",
    ));
    assert!(
        stderr.contains("cannot write") && stderr.contains("no-such-dir"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    // A corrupt input: the GGUF magic and nothing else.
    let corrupt = tmp.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00").unwrap();
    let stderr = failure(&run_example(
        "convert",
        &["-i", corrupt.to_str().unwrap(), "-o", e],
        "",
    ));
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    assert!(!tmp.path().join("keep.bitnet.partial").exists());
}
