//! The `perplexity` example on the bundled demo model: JSON for scripts, both window rules,
//! and one-line failures.

mod support;

use support::run_example;

const TEXT: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, \
and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\nWho is already sick and \
pale with grief,\nThat thou her maid art far more fair than she.\n";

fn run(args: &[&str]) -> (bool, String, String) {
    let out = run_example("perplexity", args, "");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn perplexity_reports_json_for_both_window_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("romeo.txt");
    std::fs::write(&file, TEXT).unwrap();
    let file = file.to_str().unwrap();

    let (ok, out, log) = run(&["-f", file, "--ctx", "64", "--json"]);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let windows = json["windows"].as_array().unwrap();
    assert_eq!(windows.len(), TEXT.len() / 64, "whole chunks of 64 bytes");
    assert_eq!(
        json["scored"],
        32 * windows.len(),
        "the second half of each chunk"
    );
    let ppl = json["ppl"].as_f64().unwrap();
    assert!(
        ppl > 1.0 && ppl < 12.0,
        "the demo model knows Shakespeare: {ppl}"
    );
    assert!(json["ppl_se"].as_f64().unwrap() > 0.0);

    let (ok, out, log) = run(&["-f", file, "--ctx", "64", "--stride", "32", "--json"]);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["scored"],
        TEXT.len() - 1,
        "every byte after the first, once"
    );

    // `--chunks 1`: the first window alone, as the first entry of the full run.
    let (ok, out, log) = run(&["-f", file, "--ctx", "64", "--chunks", "1", "--json"]);
    assert!(ok, "{log}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["windows"].as_array().unwrap()[..], windows[..1]);
    assert_eq!(
        (&first["scored"], &first["chunks"]),
        (&32.into(), &1.into())
    );

    let (ok, out, log) = run(&["-f", file, "--ctx", "64"]);
    assert!(ok && out.starts_with("perplexity: "), "{out}{log}");
    assert!(!log.contains("warning:"), "{log}");

    // Past the demo model's 128 trained positions: scored, with llama.cpp's warning.
    let (ok, out, log) = run(&["-f", file, "--ctx", "150"]);
    assert!(ok && out.starts_with("perplexity: "), "{out}{log}");
    assert!(
        log.contains(
            "warning: --ctx needs 150 positions, past the model's training context of 128"
        ),
        "{log}"
    );
}

#[test]
fn bad_perplexity_inputs_are_one_line_errors() {
    let (ok, _, log) = run(&["-f", "/no/such/text.txt"]);
    assert!(!ok && log.contains("/no/such/text.txt"), "{log}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("short.txt");
    std::fs::write(&file, "To be").unwrap();
    let file = file.to_str().unwrap();
    let (ok, _, log) = run(&["-f", file, "--ctx", "64"]);
    assert!(!ok && log.contains("fewer than one window of 64"), "{log}");
    let (ok, _, log) = run(&["-f", file, "--ctx", "4", "--stride", "9"]);
    assert!(!ok && log.contains("stride"), "{log}");
    let (ok, _, log) = run(&["-f", file, "--ctx", "4", "--chunks", "0"]);
    assert!(!ok && log.contains("--chunks"), "{log}");
}
