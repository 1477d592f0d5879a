//! Every path against the scalar one and the formula in f64, for f32 and f16 caches.

use half::f16;

use super::*;
use crate::kernels::Isa;
use crate::test_support::random;
use crate::vectorize::vectorized_on;

/// Every row of every query head, computed on the path of `isa`.
fn attend_on<E: CacheValue>(
    isa: Isa,
    q: &[f32],
    keys: &[E],
    values: &[E],
    shape: AttentionShape,
) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    let all = AttendRows {
        attention: Attention::new(q, keys, values, shape, isa),
        first: 0,
        out: &mut shape.output_rows(&mut out),
    };
    vectorized_on(isa, all);
    out
}

/// Every path gives the same bits, and every row of every head matches the formula in f64;
/// an f16 cache gives the bits of an f32 cache holding its values.
fn check(rows: usize, dim: usize, len: usize) {
    let (batch, kv_heads, capacity, start) = (2, 3, 80, 63);
    let shape = AttentionShape {
        batch,
        kv_heads,
        rows,
        dim,
        capacity,
        start,
        len,
    };
    let heads = batch * kv_heads;
    let value = |i: usize| ((i * 7919) % 211) as f32 / 50.0 - 2.1;
    let q: Vec<f32> = (0..heads * rows * dim).map(value).collect();
    let keys: Vec<f32> = (0..heads * capacity * dim).map(|i| value(i + 5)).collect();
    let values: Vec<f32> = (0..keys.len()).map(|i| value(i + 9)).collect();
    let want = attend_on(Isa::Scalar, &q, &keys, &values, shape);
    let halves = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
    let (keys16, values16) = (halves(&keys), halves(&values));
    let widened = |x: &[f16]| x.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
    let want16 = attend_on(
        Isa::Scalar,
        &q,
        &widened(&keys16),
        &widened(&values16),
        shape,
    );
    assert_ne!(
        want16, want,
        "the f16 values must differ for the check to mean anything"
    );
    for isa in Isa::supported() {
        let what = format!("{isa}, rows {rows}, dim {dim}");
        assert_eq!(attend_on(isa, &q, &keys, &values, shape), want, "{what}");
        let got16 = attend_on(isa, &q, &keys16, &values16, shape);
        assert_eq!(got16, want16, "{what}, f16 cache");
    }
    assert_eq!(cached_attention(&q, &keys, &values, shape), want);
    assert_eq!(cached_attention(&q, &keys16, &values16, shape), want16);
    // Position-major: query row `row` of key/value head `head % kv_heads` (of sequence
    // `head / kv_heads`) is query head `head % kv_heads * group + row / len` at `row % len`.
    let group = rows / len;
    let at_out = |head: usize, row: usize| {
        let (b, kv) = (head / kv_heads, head % kv_heads);
        ((b * len + row % len) * kv_heads * group + kv * group + row / len) * dim
    };
    for (head, row) in (0..heads).flat_map(|h| (0..rows).map(move |r| (h, r))) {
        let seen = start + row % len + 1;
        let query = &q[(head * rows + row) * dim..][..dim];
        let at = |table: &[f32], p: usize, c: usize| table[(head * capacity + p) * dim + c] as f64;
        let scores: Vec<f64> = (0..seen)
            .map(|p| {
                let dot: f64 = (0..dim).map(|c| query[c] as f64 * at(&keys, p, c)).sum();
                dot / (dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for c in 0..dim {
            let exact: f64 = (0..seen)
                .map(|p| weights[p] / total * at(&values, p, c))
                .sum();
            let got = want[at_out(head, row) + c] as f64;
            assert!(
                (got - exact).abs() < 1e-5,
                "rows {rows}, dim {dim}, head {head}, row {row}, {c}: {got} vs {exact}"
            );
        }
    }
}

#[test]
fn dot_product_scores_on_every_path() {
    // One row per query head in decode; a grouped decode of two heads.
    check(1, 100, 1);
    // Head widths a decode pass of 96 covers exactly, or with a pass of 32 after it.
    check(1, 96, 1);
    check(1, 128, 1);
    // Wider than one AVX-512 pass of the weighted sum (128 columns).
    check(1, 144, 1);
    check(2, 37, 1);
    check(1, 8, 1);
    // Grouped rows at four positions each: 64 to 67 keys, a group of sixteen and a few left.
    check(4, 100, 4);
    check(4, 16, 4);
    // A last block of twelve: the AVX2 path's second register of it partly masked.
    check(4, 44, 4);
}

#[test]
fn column_scores_on_every_path() {
    // Rows of several heads and positions, head widths around the passes of 64 and 16.
    check(12, 37, 4);
    check(17, 96, 17);
    check(8, 128, 2);
    check(12, 8, 4);
    // The AVX-512 blocks: the 3B head (the weighted sum's last register masked), two passes
    // of the weighted sum (144 columns), and 80 positions (a pass of 64 scores and one of 16).
    check(8, 100, 8);
    check(8, 144, 4);
    check(16, 64, 16);
}

#[test]
fn keys_transpose_alike_on_every_path() {
    for (dim, keys) in [
        (16, 16),
        (96, 16),
        (128, 16),
        (96, 5),
        (37, 16),
        (100, 16),
        (8, 16),
    ] {
        let values = random(keys * dim, dim as u64, 4.0);
        let stride = 80;
        let mut want = vec![0f32; dim * stride];
        for (t, key) in values.chunks_exact(dim).enumerate() {
            for (c, &v) in key.iter().enumerate() {
                want[c * stride + t] = v;
            }
        }
        for isa in Isa::supported() {
            let mut kt = vec![0f32; dim * stride];
            dispatch::transpose_keys(isa, &values, dim, &mut kt, stride);
            assert_eq!(kt, want, "{isa}, {keys} keys of {dim}");
        }
    }
}
