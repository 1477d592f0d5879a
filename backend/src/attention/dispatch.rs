//! The loops of attention that have kernels for an instruction set, behind one dispatch
//! point: a decode row's scores and weighted sum, read from the cache as it is stored
//! ([`super::avx512`], [`super::avx2`]), and the keys of a head transposed into columns for
//! prefill rows (AVX-512). Every path gives the portable loops' bits.

use super::{PASS, TAIL_PASS, weighted_sum};
#[cfg(target_arch = "x86_64")]
use super::{avx2::Avx2, avx512::Avx512};
use crate::kernels::Isa;
use crate::kv::CacheValue;
use crate::vectorize::lane_dot;

/// Positions of an f16 cache the portable loops widen at a time: their keys or values (heads
/// are at most 128 wide) stay in L1 (a whole head widened into L2 and read back cost more than
/// the halved reads saved).
const WIDEN_POSITIONS: usize = 32;

#[cfg(target_arch = "x86_64")]
/// How a cache buffer's values load into f32 lanes: f32 as they are, f16 (as bits) widened
/// by `vcvtph2ps` on the way, so a 16-bit cache is read once, at half the bytes.
pub(super) trait Stored: Copy {
    /// Whether the values are f16 bits.
    const HALF: bool;
}

#[cfg(target_arch = "x86_64")]
impl Stored for f32 {
    const HALF: bool = false;
}

#[cfg(target_arch = "x86_64")]
impl Stored for u16 {
    const HALF: bool = true;
}

#[cfg(target_arch = "x86_64")]
/// A decode row's loops on one instruction set, reading the cache as it is stored, with the
/// portable loops' bits on its values as f32.
pub(super) trait RowLoops {
    /// `scores[p] = (queries · key p) * scale` for the leading keys of `keys` (one after
    /// another, `queries.len()` values each) up to some whole group, each summed as
    /// [`lane_dot`] sums; returns how many it wrote (none for a head it does not take).
    ///
    /// # Safety
    /// The CPU supports the path.
    unsafe fn dot_scores<S: Stored>(
        queries: &[f32],
        keys: &[S],
        scale: f32,
        scores: &mut [f32],
    ) -> usize;

    /// `out[c] = sum_p probabilities[p] * values[p][c]`, each sum from +0.0 in order of `p` as
    /// [`weighted_sum`] adds it, `values` holding `probabilities.len()` rows of `out.len()`;
    /// returns false, writing nothing, for a head it does not take.
    ///
    /// # Safety
    /// The CPU supports the path.
    unsafe fn weighted_row<S: Stored>(probabilities: &[f32], values: &[S], out: &mut [f32])
    -> bool;
}

/// [`RowLoops::dot_scores`] of `L` on the cache's values as stored (0 for a type it cannot read).
///
/// # Safety
/// The CPU supports `L`'s path.
#[cfg(target_arch = "x86_64")]
unsafe fn stored_scores<L: RowLoops, E: CacheValue>(
    queries: &[f32],
    keys: &[E],
    scale: f32,
    scores: &mut [f32],
) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (E::as_f32(keys), E::as_halves(keys)) {
            (Some(keys), _) => L::dot_scores(queries, keys, scale, scores),
            (_, Some(halves)) => L::dot_scores(queries, halves, scale, scores),
            _ => 0,
        }
    }
}

/// [`RowLoops::weighted_row`] of `L` on the cache's values as stored (false for a type it
/// cannot read).
///
/// # Safety
/// The CPU supports `L`'s path.
#[cfg(target_arch = "x86_64")]
unsafe fn stored_weighted_row<L: RowLoops, E: CacheValue>(
    probabilities: &[f32],
    values: &[E],
    out: &mut [f32],
) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (E::as_f32(values), E::as_halves(values)) {
            (Some(values), _) => L::weighted_row(probabilities, values, out),
            (_, Some(halves)) => L::weighted_row(probabilities, halves, out),
            _ => false,
        }
    }
}

/// `$call` with `$n`, one of the listed counts, as the constant `$c` it names (a const generic
/// argument must be a constant, so each count is an arm of its own); `$other` for any other.
#[cfg(target_arch = "x86_64")]
macro_rules! by_count {
    ($n:expr, [$($k:literal),*], |$c:ident| $call:expr, $other:expr) => {
        match $n {
            $($k => {
                const $c: usize = $k;
                $call
            })*
            _ => $other,
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use by_count;

/// `scores[p] = (queries · key p) * scale` for the keys one after another in `keys`, each
/// summed as [`lane_dot`] sums: on the AVX-512 and AVX2 paths sixteen or eight keys at a time
/// straight from the cache (f16 widened as loaded); the keys left, and every key on the scalar
/// path, one at a time, an f16 cache's widened a few positions at a time into `chunk`.
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
    #[cfg(target_arch = "x86_64")]
    let done = if isa.is_supported() {
        // SAFETY: the CPU was just checked to support the path.
        unsafe {
            match isa {
                Isa::Avx512Vnni => stored_scores::<Avx512, E>(queries, keys, scale, scores),
                Isa::Avx2 => stored_scores::<Avx2, E>(queries, keys, scale, scores),
                Isa::Scalar | Isa::Neon => 0,
            }
        }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
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
/// `p` ([`weighted_sum`]'s bits): on the AVX-512 and AVX2 paths in passes of 128 or 64 columns
/// straight from the cache, else [`weighted_sum`], over an f16 cache's values widened a few
/// positions at a time into `chunk`, the sums carried from one to the next in `carried`.
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
    if isa.is_supported() {
        // SAFETY: the CPU was just checked to support the path.
        let done = unsafe {
            match isa {
                Isa::Avx512Vnni => stored_weighted_row::<Avx512, E>(probabilities, values, out[0]),
                Isa::Avx2 => stored_weighted_row::<Avx2, E>(probabilities, values, out[0]),
                Isa::Scalar | Isa::Neon => false,
            }
        };
        if done {
            return;
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

/// `scores[r][p]` for `p < end` of a block of prefill rows against transposed keys, as
/// [`super::column_scores`] sums them: on the AVX-512 path in registers. Returns false,
/// writing nothing, on the other paths.
#[inline(always)]
pub(super) fn block_scores<const R: usize>(
    isa: Isa,
    queries: &[f32],
    kt: &[f32],
    end: usize,
    scale: f32,
    scores: &mut [Vec<f32>],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.is_supported() {
        // SAFETY: the CPU was just checked to support AVX-512.
        unsafe { super::avx512::block_scores::<R>(queries, kt, end, scale, scores) };
        return true;
    }
    let _ = (isa, queries, kt, end, scale, scores);
    false
}

/// `out[r]`, the weighted sum of a block of prefill rows, each over its own positions, as
/// [`weighted_sum`] adds it: on the AVX-512 path in registers. Returns false, writing nothing,
/// on the other paths.
#[inline(always)]
pub(super) fn block_weighted_sum<const R: usize>(
    isa: Isa,
    probabilities: [&[f32]; R],
    values: &[f32],
    out: &mut [&mut [f32]],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.is_supported() {
        // SAFETY: the CPU was just checked to support AVX-512.
        unsafe { super::avx512::block_weighted_sum::<R>(probabilities, values, out) };
        return true;
    }
    let _ = (isa, probabilities, values, out);
    false
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
    #[cfg(target_arch = "x86_64")]
    let done = if isa == Isa::Avx512Vnni && isa.is_supported() && keys.len() == 16 * dim {
        // SAFETY: the CPU was just checked to support AVX-512.
        unsafe { super::avx512::transpose_keys(keys, dim, kt, stride) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let _ = isa;
    // Column by column: each gets one run of contiguous stores.
    for c in done..dim {
        let column = &mut kt[c * stride..];
        for (k, key) in column.iter_mut().zip(keys.chunks_exact(dim)) {
            *k = key[c];
        }
    }
}
