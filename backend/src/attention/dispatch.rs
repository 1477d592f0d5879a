//! The loops of attention that have an AVX-512 kernel ([`super::avx512`]), behind one
//! dispatch point: a decode row's scores and weighted sum, read from the cache as it is
//! stored, and the keys of a head transposed into columns for prefill rows. Every path gives
//! the portable loops' bits.

use super::{PASS, TAIL_PASS, weighted_sum};
use crate::kernels::Isa;
use crate::kv::CacheValue;
use crate::vectorize::lane_dot;

/// Positions of an f16 cache the portable loops widen at a time: their keys or values (heads
/// are at most 128 wide) stay in L1 (a whole head widened into L2 and read back cost more than
/// the halved reads saved).
const WIDEN_POSITIONS: usize = 32;

/// `scores[p] = (queries · key p) * scale` for the keys one after another in `keys`, each
/// summed as [`lane_dot`] sums: on the AVX-512 path sixteen keys at a time straight from the
/// cache (f16 widened as loaded); the keys left, and every key on the other paths, one at a
/// time, an f16 cache's widened a few positions at a time into `chunk`.
#[inline(always)]
pub(super) fn row_scores<E: CacheValue>(
    isa: Isa,
    queries: &[f32],
    keys: &[E],
    scale: f32,
    scores: &mut [f32],
    chunk: &mut Vec<f32>,
) {
    let dim = queries.len();
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.is_supported() {
        use super::avx512::dot_scores;
        // SAFETY: the CPU was just checked to support AVX-512.
        done = unsafe {
            match (E::as_f32(keys), E::as_halves(keys)) {
                (Some(keys), _) => dot_scores(queries, keys, scale, scores),
                (_, Some(halves)) => dot_scores(queries, halves, scale, scores),
                _ => 0,
            }
        };
    }
    let _ = isa;
    let (keys, scores) = (&keys[done * dim..], &mut scores[done..]);
    match E::as_f32(keys) {
        Some(keys) => dot_scores(queries, keys, scale, scores),
        None => {
            chunk.resize(WIDEN_POSITIONS * dim, 0.0);
            let chunks = scores
                .chunks_mut(WIDEN_POSITIONS)
                .zip(keys.chunks(WIDEN_POSITIONS * dim));
            for (scores, keys) in chunks {
                let wide = &mut chunk[..keys.len()];
                E::widen(keys, wide);
                dot_scores(queries, wide, scale, scores);
            }
        }
    }
}

/// One [`lane_dot`] per key (a plain loop: an iterator adapter's closure would be a call
/// compiled without the path's features).
#[inline(always)]
fn dot_scores(queries: &[f32], keys: &[f32], scale: f32, scores: &mut [f32]) {
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(queries.len())) {
        *score = lane_dot(queries, key) * scale;
    }
}

/// `out[0][c] = sum_p probabilities[p] * values[p][c]` for one query row, each sum in order of
/// `p` ([`weighted_sum`]'s bits): on the AVX-512 path in one pass per 128 columns straight from
/// the cache, else [`weighted_sum`], over an f16 cache's values widened a few positions at a
/// time into `chunk`, the sums carried from one to the next in `carried`.
#[inline(always)]
pub(super) fn row_weighted_sum<E: CacheValue>(
    isa: Isa,
    probabilities: &[f32],
    values: &[E],
    out: &mut [&mut [f32]],
    chunk: &mut Vec<f32>,
    carried: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.is_supported() {
        use super::avx512::weighted_row;
        // SAFETY: the CPU was just checked to support AVX-512.
        unsafe {
            match (E::as_f32(values), E::as_halves(values)) {
                (Some(values), _) => return weighted_row(probabilities, values, out[0]),
                (_, Some(halves)) => return weighted_row(probabilities, halves, out[0]),
                _ => {}
            }
        }
    }
    let _ = isa;
    if let Some(values) = E::as_f32(values) {
        return weighted_sum::<1>(&[probabilities], values, out, None);
    }
    // Each column's sum still runs over the positions in order, so the bits are those of one
    // pass.
    let dim = out[0].len();
    chunk.resize(WIDEN_POSITIONS * dim, 0.0);
    let chunks = probabilities
        .chunks(WIDEN_POSITIONS)
        .zip(values.chunks(WIDEN_POSITIONS * dim));
    for (i, (probabilities, values)) in chunks.enumerate() {
        let wide = &mut chunk[..values.len()];
        E::widen(values, wide);
        carried.clear();
        carried.extend_from_slice(out[0]);
        let base = (i > 0).then_some([&carried[..]]);
        weighted_sum::<1>(&[probabilities], wide, out, base);
    }
}

/// `kt[c * stride + p] = keys[p * dim + c]`: the keys of one head as columns, zero-padded to
/// a `stride` that is a multiple of [`PASS`].
#[inline(always)]
pub(super) fn transpose(isa: Isa, keys: &[f32], dim: usize, kt: &mut Vec<f32>) {
    let stride = (keys.len() / dim).next_multiple_of(PASS);
    kt.clear();
    kt.resize(stride * dim, 0.0);
    for (block, keys) in keys.chunks(TAIL_PASS * dim).enumerate() {
        transpose_keys(isa, keys, dim, &mut kt[block * TAIL_PASS..], stride);
    }
}

/// Up to sixteen keys of `dim` floats as columns, `kt[c * stride + t] = keys[t * dim + c]`:
/// for a full block on the AVX-512 path, whole groups of sixteen columns in registers, the
/// rest one value at a time (the values are only moved, so every path gives the same bits).
pub(super) fn transpose_keys(isa: Isa, keys: &[f32], dim: usize, kt: &mut [f32], stride: usize) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.is_supported() && keys.len() == 16 * dim {
        // SAFETY: the CPU was just checked to support AVX-512.
        done = unsafe { super::avx512::transpose_keys(keys, dim, kt, stride) };
    }
    let _ = isa;
    // Column by column: each gets one run of contiguous stores.
    for c in done..dim {
        let column = &mut kt[c * stride..];
        for (k, key) in column.iter_mut().zip(keys.chunks_exact(dim)) {
            *k = key[c];
        }
    }
}
