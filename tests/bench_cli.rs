//! The `bench` example on the bundled demo model: the JSON scripts read, and bad flags.

mod support;

use support::{run_example, run_example_unread, run_example_with_env};

#[test]
fn bench_reports_prefill_and_decode_per_thread_count() {
    let args = ["-p", "16", "-n", "4", "-t", "1,2", "-r", "2", "--json"];
    let out = run_example("bench", &args, "");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let tests: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["test"].as_str().unwrap().to_string(),
                r["threads"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [("pp16", 1), ("tg4", 1), ("pp16", 2), ("tg4", 2)];
    assert_eq!(tests, want.map(|(t, n)| (t.to_string(), n)));
    for row in rows {
        assert!(row["mean_tps"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["sd_tps"].as_f64().unwrap() >= 0.0, "{row}");
        assert_eq!(row["reps"], 2);
        assert!(row["model_bytes"].as_u64().unwrap() > 1_000_000, "{row}");
        assert_ne!(row["head"], "int8", "{row}");
        // Decode rows carry the bytes a step reads (at least the packed weights) and the
        // bandwidth that is at the measured rate; prefill rows do not.
        let decode = row["test"].as_str().unwrap().starts_with("tg");
        let bytes = row["read_bytes_per_token"].as_u64();
        assert_eq!(bytes.is_some(), decode, "{row}");
        if let Some(bytes) = bytes {
            let gbps = bytes as f64 * row["mean_tps"].as_f64().unwrap() / 1e9;
            assert!(bytes > 100_000, "{row}");
            assert!(
                (row["read_gbps"].as_f64().unwrap() - gbps).abs() < 1e-9,
                "{row}"
            );
        }
    }

    let args = [
        "-p",
        "8",
        "-n",
        "2",
        "-t",
        "1",
        "-r",
        "1",
        "--int8-head",
        "--mem-read",
    ];
    let table = run_example("bench", &args, "");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("| model |")
            && text.contains("pp8")
            && text.contains("| int8 |")
            && text.contains("read GB/s")
            && text.contains("| 1 | mem-read | - |"),
        "{text}"
    );
}

#[test]
fn bench_at_a_depth_names_the_rows_and_reads_the_longer_cache() {
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = run_example("bench", args, "");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let flat = rows(&["-p", "0", "-n", "2", "-t", "1", "-r", "1", "--json"]);
    let deep = rows(&[
        "-d", "100", "-p", "4", "-n", "2", "-t", "1", "-r", "1", "--json",
    ]);
    let names: Vec<&str> = deep.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(names, ["pp4 @ d100", "tg2 @ d100"]);
    assert!(
        deep.iter()
            .all(|r| r["n_depth"] == 100 && r["mean_tps"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(flat[0]["n_depth"], 0);
    // Each step at depth 100 attends 100 more positions' keys and values, half the bytes in an
    // f16 cache.
    let bytes = |r: &serde_json::Value| r["read_bytes_per_token"].as_u64().unwrap();
    assert!(bytes(&deep[1]) > bytes(&flat[0]), "{deep:?} {flat:?}");
    let f16 = |depth: &str| {
        let args = [
            "-d", depth, "-p", "0", "-n", "2", "-t", "1", "-r", "1", "--json",
        ];
        rows(&[&args[..], &["--cache-type", "f16"]].concat()).remove(0)
    };
    let (flat16, deep16) = (f16("0"), f16("100"));
    assert_eq!(
        (&flat16["cache_type"], &deep[1]["cache_type"]),
        (&"f16".into(), &"f32".into())
    );
    assert_eq!(
        bytes(&deep16) - bytes(&flat16),
        (bytes(&deep[1]) - bytes(&flat[0])) / 2,
        "{deep16} {flat16}"
    );
}

#[test]
fn profile_splits_each_rows_time_per_token_into_phases() {
    let args = ["-p", "8", "-n", "3", "-t", "1,2", "-r", "2"];
    let out = run_example("bench", &[&args[..], &["--profile", "--json"]].concat(), "");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let phases = [
        "attention_projections",
        "rope_and_cache",
        "attention",
        "feed_forward",
        "head",
        "other",
    ];
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let times: Vec<f64> = phases
            .iter()
            .map(|phase| row[format!("{phase}_ms")].as_f64().expect(phase))
            .collect();
        assert!(times[..5].iter().all(|&ms| ms > 0.0), "{row}");
        // The phases and the rest are the runs' whole time: ms per token at their mean rate
        // (the harmonic mean of the runs' rates, which `mean_tps` is not).
        let ms_per_token = times.iter().sum::<f64>();
        let mean_tps = row["mean_tps"].as_f64().unwrap();
        let sd_tps = row["sd_tps"].as_f64().unwrap();
        let (slowest, fastest) = (1e3 / (mean_tps - sd_tps), 1e3 / (mean_tps + sd_tps));
        assert!(
            (fastest * 0.999..=slowest * 1.001).contains(&ms_per_token),
            "{ms_per_token} ms/token against {mean_tps} ± {sd_tps} t/s: {row}"
        );
    }
    // Without the flag, no phase keys; with it, a second markdown table.
    let plain = run_example("bench", &[&args[..], &["--json"]].concat(), "");
    let plain: Vec<serde_json::Value> = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(plain.iter().all(|row| row.get("head_ms").is_none()));
    let table = run_example("bench", &[&args[..], &["--profile"]].concat(), "");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("| threads | test | ms/token | attention_projections |")
            && text.contains("| 2 | tg3 |"),
        "{text}"
    );
}

#[test]
fn jsonl_and_csv_print_the_rows_json_does() {
    let run = |format: &str| {
        let args = ["-p", "4", "-n", "2", "-t", "1", "-r", "1", "-o", format];
        let out = run_example("bench", &args, "");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        String::from_utf8(out.stdout).unwrap()
    };
    let lines: Vec<serde_json::Value> = run("jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let array: Vec<serde_json::Value> = serde_json::from_str(&run("json")).unwrap();
    let keys = |rows: &[serde_json::Value]| -> Vec<(String, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r["test"].as_str().unwrap().into(),
                    r["threads"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(keys(&lines), [("pp4".into(), 1), ("tg2".into(), 1)]);
    assert_eq!(keys(&lines), keys(&array));
    assert!(run("md").starts_with("| model |"));

    // CSV: the same rows and keys; a prefill row's decode-only cells are empty.
    let csv = run("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(Into::into).collect();
    let mut want: Vec<&String> = array
        .iter()
        .flat_map(|r| r.as_object().unwrap().keys())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(header.iter().collect::<Vec<_>>(), want, "{csv}");
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let cell = |row: usize, key: &str| {
        let column = header.iter().position(|h| h == key).unwrap();
        records[row][column].to_string()
    };
    assert_eq!(records.len(), 2, "{csv}");
    assert_eq!(
        (cell(0, "test"), cell(1, "test")),
        ("pp4".into(), "tg2".into())
    );
    assert_eq!(cell(0, "threads"), "1");
    assert!(cell(1, "mean_tps").parse::<f64>().unwrap() > 0.0, "{csv}");
    assert_eq!(cell(0, "read_bytes_per_token"), "", "{csv}");
    assert!(
        cell(1, "read_bytes_per_token").parse::<u64>().unwrap() > 100_000,
        "{csv}"
    );
}

#[test]
fn lists_of_lengths_and_depths_run_every_combination_in_llama_bench_order() {
    let args = [
        "-p", "4,8", "-n", "0,2", "-d", "0,10", "-t", "1", "-r", "1", "--json",
    ];
    let out = run_example("bench", &args, "");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["test"].as_str().unwrap(), r["n_depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("pp4", 0),
            ("pp8", 0),
            ("tg2", 0),
            ("pp4 @ d10", 10),
            ("pp8 @ d10", 10),
            ("tg2 @ d10", 10)
        ]
    );
}

#[test]
fn rows_name_the_instruction_set_and_the_cpu() {
    let row = |env: &[(&str, &str)]| -> serde_json::Value {
        let args = ["-p", "4", "-n", "0", "-t", "1", "-r", "1", "--json"];
        let out = run_example_with_env("bench", &args, "", env);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .remove(0)
    };
    let best = row(&[]);
    assert!(
        ["scalar", "avx2", "avx512", "neon"].contains(&best["isa"].as_str().unwrap()),
        "{best}"
    );
    assert_eq!(row(&[("BITNET_ISA", "scalar")])["isa"], "scalar");
    if cfg!(target_os = "linux") {
        assert!(!best["cpu_info"].as_str().unwrap().is_empty(), "{best}");
    }
    // x86 Linux numbers every CPU's family and model; a VM may name them all alike.
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        assert!(best["cpu_family"].as_u64().is_some(), "{best}");
        assert!(best["cpu_model"].as_u64().is_some(), "{best}");
    }
}

#[test]
fn bad_bench_flags_are_one_line_errors() {
    for (args, needle) in [
        (vec!["-t", "0"], "--threads"),
        (vec!["-r", "0"], "--repetitions"),
        (vec!["-p", "0", "-n", "0"], "nothing to run"),
        (vec!["-p", "0,0", "-n", "0"], "nothing to run"),
        (vec!["-p", "4,x"], "invalid value 'x'"),
        (vec!["-o", "sql"], "invalid value 'sql'"),
        (vec!["-o", "jsonl", "--json"], "cannot be used with"),
        // The longest of a list is what must fit.
        (vec!["-p", "4,200", "-n", "0"], "pp200 needs 200 positions"),
        (vec!["-m", "/no/model"], "/no/model"),
        // The demo model's context is 128 positions.
        (vec!["-d", "125", "-p", "4"], "max_position_embeddings"),
        (vec!["-p", "0", "-n", "129"], "tg129 needs 129 positions"),
        (vec!["--cache-type", "bf16"], "expected f32 or f16"),
        (
            vec!["--device", "ndarray", "--cache-type", "f16"],
            "NdArray has no 16-bit floats",
        ),
    ] {
        let out = run_example("bench", &args, "");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && log.contains(needle),
            "{args:?}: {log}"
        );
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_run_quietly() {
    // `bench ... | head -1`: the table, JSON or CSV cannot be written, and that is no error.
    for output in ["md", "jsonl", "csv"] {
        let args = ["-p", "4", "-n", "2", "-t", "1", "-r", "1", "-o", output];
        let (status, log) = run_example_unread("bench", &args);
        assert!(status.success(), "-o {output}: {status}: {log}");
        assert!(!log.contains("panicked") && !log.contains("error"), "{log}");
    }
}
