//! The `dummy` example: a bitnet.cpp benchmark layout written in our format and as a GGUF of
//! the same weights, which load to the same logits.

mod support;

use support::run_example;

#[test]
fn dummy_converted_and_gguf_files_hold_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let converted = tmp.path().join("d.bitnet");
    let gguf = tmp.path().join("d.gguf");
    let (c, g) = (converted.to_str().unwrap(), gguf.to_str().unwrap());
    let run = run_example(
        "dummy",
        &["--size", "125M", "--out", c, "--gguf", g, "--seed", "7"],
        "",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let logits = |model: &str| {
        let run = run_example("logits", &["-m", model, "--tokens", "1,500,31999"], "");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        String::from_utf8(run.stdout).unwrap()
    };
    assert_eq!(logits(c), logits(g));

    // llama.cpp-family engines refuse a GGUF without a tokenizer: the file carries a
    // placeholder vocabulary of the model's size, which our reader takes too.
    let file = bitnet_import::GgufFile::open(&gguf).unwrap();
    let tokenizer = bitnet_import::gguf_tokenizer(file.header()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 32002);
    assert_eq!(tokenizer.special().bos, Some(1));
    let pieces = [2, 3 + b'A' as u32, 259, 32001].map(|id| tokenizer.token_text(id).unwrap());
    assert_eq!(pieces, ["</s>", "<0x41>", "\u{2581}t0", "\u{2581}t31742"]);

    let run = run_example("dummy", &["--size", "5B", "--out", c], "");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--size 5B") && stderr.contains("700M"),
        "{stderr}"
    );
}
