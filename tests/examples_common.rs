//! What the examples share (`examples/common`): where their work runs.

#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;

use common::RunArgs;

#[test]
fn install_runs_the_work_on_a_thread_of_a_pool_of_exactly_t_threads() {
    for threads in [1, 3] {
        let args = RunArgs {
            threads: Some(threads),
            ..RunArgs::default()
        };
        let (index, count) = args
            .install(|_| Ok((rayon::current_thread_index(), rayon::current_num_threads())))
            .unwrap();
        // On `main`, outside the pool, every parallel call would hand over and sleep.
        assert!(
            index.is_some(),
            "the work must run on one of the pool's threads"
        );
        assert_eq!(count, threads);
    }
    let zero = RunArgs {
        threads: Some(0),
        ..RunArgs::default()
    };
    let message = zero.install(|_| Ok(())).unwrap_err().to_string();
    assert!(message.contains("--threads"), "{message}");
}

#[test]
fn errors_print_on_one_line_without_a_cause_repeated() {
    let chained = anyhow::anyhow!("no such file").context("reading /x");
    assert_eq!(common::one_line(&chained), "reading /x: no such file");
    // safetensors' I/O error prints the io::Error and also returns it as its source.
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
    let e = anyhow::Error::new(safetensors::SafeTensorError::IoError(io)).context("writing /y");
    assert_eq!(
        format!("{e:#}"),
        "writing /y: I/O error: no such file: no such file"
    );
    assert_eq!(common::one_line(&e), "writing /y: I/O error: no such file");
}
