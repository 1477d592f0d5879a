//! AVX2 path: `vpmaddubsw` multiplies the unsigned 2-bit codes by the signed int8 activations.
//!
//! `maddubs` adds two products per i16 lane; with codes <= 2 and q in -128..=127 a lane lies in
//! -512..=508, so 64 of them sum to -32768..=32512, which i16 holds: i16 sums are widened to i32
//! (`vpmaddwd` by ones) every 64 lanes-worth of products, never later.

use std::arch::x86_64::*;

use super::prefetch_distance;
use super::unpacking::{DecodingKernel, flush_runs, unpacked_blocks};
use crate::i2s::{BLOCK, BLOCK_BYTES};
use crate::vectorize::FloatLoop;

pub(super) struct Avx2;

/// Blocks of 128 weights summed in i16 before widening. The decode row kernel reads half its
/// codes four times over (at most 8), so its second sum gains up to 2 x 2 x 8 x 128 = 4096 per
/// block: eight blocks reach -32768 (every code 2, every q -128), which i16 still holds, and
/// +32512 at most (q <= 127).
const GEMV_BLOCKS_PER_FLUSH: usize = 8;
/// 32-byte chunks summed in i16 before widening on unpacked codes (one maddubs each): the most
/// that cannot overflow (module docs), so the 700M layout's 48 chunks per row flush once.
const CHUNKS_PER_FLUSH: usize = 64;

impl DecodingKernel for Avx2 {
    unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]) {
        // SAFETY: the caller guarantees AVX2; each row is `row_bytes`, q is `4 * row_bytes`.
        unsafe { gemv(codes, row_bytes, q, out) }
    }

    unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
        // SAFETY: the caller guarantees AVX2 and `dst.len() == 4 * row.len()`.
        unsafe { decode_row(row, dst) }
    }

    unsafe fn dot_tile<const R: usize, const T: usize>(
        codes: [&[u8]; R],
        qs: [&[i8]; T],
    ) -> [[i32; T]; R] {
        // SAFETY: the caller guarantees AVX2 and equal lengths that are multiples of 128.
        unsafe { dot_tile(codes, qs) }
    }
}

/// The prefill kernel's inner loop with its data in L1: `steps` times, two code vectors against
/// four activation vectors, each product pair `vpmaddubsw` + `vpaddw` into one of eight i16
/// accumulators (32 products per pair; lanes wrap on long runs). Both arrays pass through
/// `black_box`, the activations every step, so no multiply can be hoisted out of the loop or
/// shared between chains; the compiler loads all six vectors every step from the same lines,
/// as the kernel loads a chunk's. Returns the sum of the lanes.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn maddubs_chains(steps: usize, codes: i8, x: i8) -> i32 {
    // Hidden too, or the compiler, seeing two equal vectors, multiplies once for both.
    let codes = std::hint::black_box([_mm256_set1_epi8(codes); 2]);
    let activations = [_mm256_set1_epi8(x); 4];
    let mut acc = [[_mm256_setzero_si256(); 4]; 2];
    for _ in 0..steps {
        let activations = std::hint::black_box(&activations);
        for (t, &x) in activations.iter().enumerate() {
            for (acc, &codes) in acc.iter_mut().zip(&codes) {
                acc[t] = _mm256_add_epi16(acc[t], _mm256_maddubs_epi16(codes, x));
            }
        }
    }
    let ones = _mm256_set1_epi16(1);
    let total = acc
        .iter()
        .flatten()
        .fold(_mm256_setzero_si256(), |total, &acc| {
            _mm256_add_epi32(total, _mm256_madd_epi16(acc, ones))
        });
    hsum_i32(total)
}

/// Runs a float loop compiled with AVX2 (see [`crate::vectorize`]).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn float_loop<L: FloatLoop>(body: L) -> L::Output {
    body.run()
}

/// Splits 32 packed bytes into the four groups of 32 codes they hold, in column order.
#[inline]
#[target_feature(enable = "avx2")]
fn unpack(packed: __m256i) -> [__m256i; 4] {
    let mask = _mm256_set1_epi8(3);
    // 16-bit shifts pull bits of the neighbouring byte into the top of each byte; the mask drops them.
    [
        _mm256_and_si256(_mm256_srli_epi16::<6>(packed), mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask),
        _mm256_and_si256(_mm256_srli_epi16::<2>(packed), mask),
        _mm256_and_si256(packed, mask),
    ]
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Loads 32 bytes starting at `ptr`.
///
/// # Safety
/// `ptr` points to at least 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load<T>(ptr: *const T) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(ptr.cast()) }
}

/// [`DecodingKernel::gemv`]: eight rows' sums reduced across lanes together, the rest one by
/// one.
///
/// # Safety
/// The CPU supports AVX2; `codes` holds rows of `row_bytes` = `q.len() / 4` bytes, a multiple
/// of 32, and `out` one sum per row.
#[target_feature(enable = "avx2")]
unsafe fn gemv(codes: &[u8], row_bytes: usize, q: &[i8], out: &mut [i32]) {
    let ahead = prefetch_distance(row_bytes);
    let whole = out.len() / 8 * 8;
    let (eights, rest) = out.split_at_mut(whole);
    for (rows, out) in codes
        .chunks_exact(8 * row_bytes)
        .zip(eights.chunks_exact_mut(8))
    {
        let mut lanes = [_mm256_setzero_si256(); 8];
        for (r, lanes) in lanes.iter_mut().enumerate() {
            // SAFETY: forwarded from the caller; row `r` of the eight is `row_bytes`.
            *lanes = unsafe { row_lanes(&rows[r * row_bytes..][..row_bytes], q, ahead) };
        }
        // SAFETY: `out` is eight i32s.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), sum_eight(lanes)) };
    }
    for (row, out) in codes[whole * row_bytes..].chunks_exact(row_bytes).zip(rest) {
        // SAFETY: forwarded from the caller.
        *out = hsum_i32(unsafe { row_lanes(row, q, ahead) });
    }
}

/// Sums `code * q` over one packed row against one token, in eight i32 lanes to be added,
/// prefetching the bytes `ahead` of each block read.
///
/// One row at a time, a single stream through memory: against two rows interleaved (two
/// streams one row apart, sharing the activation loads) a Zen 3 core streamed the 3B layers
/// (rows of 800 and 2160 bytes) 14-47% faster (median 27%), the 700M layers and cache-resident
/// rows at the same speed (*Nineteenth session* in `benches/README.md`).
///
/// # Safety
/// `row` is `q.len() / 4` bytes and `q.len()` is a multiple of 128.
#[target_feature(enable = "avx2")]
unsafe fn row_lanes(row: &[u8], q: &[i8], ahead: usize) -> __m256i {
    let blocks = q.len() / BLOCK;
    debug_assert_eq!(row.len(), blocks * BLOCK_BYTES);
    let ones = _mm256_set1_epi16(1);
    let (low, high) = (_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x0c));
    // Sums of the groups read in place (codes) and of those read four times over (bits 2-3).
    let (mut plain32, mut quad32) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for run in flush_runs(blocks, GEMV_BLOCKS_PER_FLUSH) {
        let (mut plain16, mut quad16) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for b in run {
            if b % 2 == 0 {
                // A hint only (no fault past the end): rows are short streams, as in the
                // AVX-512 decode kernel.
                _mm_prefetch::<_MM_HINT_T1>(
                    row.as_ptr().wrapping_add(b * BLOCK_BYTES + ahead).cast(),
                );
            }
            // SAFETY: b < blocks, so the 128 activations and 32 packed bytes of block b exist.
            let (x, packed) = unsafe {
                let x: [__m256i; 4] =
                    std::array::from_fn(|g| load(q.as_ptr().add(b * BLOCK + g * BLOCK_BYTES)));
                (x, load(row.as_ptr().add(b * BLOCK_BYTES)))
            };
            // One shift instead of three: bits 0-1 of each byte (or of each byte shifted by
            // four) are a code, bits 2-3 four times a code, summed apart and divided at the end.
            let shifted = _mm256_srli_epi16::<4>(packed);
            let plain = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(shifted, low), x[1]),
                _mm256_maddubs_epi16(_mm256_and_si256(packed, low), x[3]),
            );
            let quad = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(shifted, high), x[0]),
                _mm256_maddubs_epi16(_mm256_and_si256(packed, high), x[2]),
            );
            plain16 = _mm256_add_epi16(plain16, plain);
            quad16 = _mm256_add_epi16(quad16, quad);
        }
        plain32 = _mm256_add_epi32(plain32, _mm256_madd_epi16(plain16, ones));
        quad32 = _mm256_add_epi32(quad32, _mm256_madd_epi16(quad16, ones));
    }
    // Every lane of the second sum is a multiple of four, so the shift is exact.
    _mm256_add_epi32(plain32, _mm256_srai_epi32::<2>(quad32))
}

/// Unpacks a packed row into one code per byte.
///
/// # Safety
/// `dst.len() == 4 * row.len()` and `row.len()` is a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn decode_row(row: &[u8], dst: &mut [u8]) {
    for (packed, dst) in unpacked_blocks(row, dst) {
        // SAFETY: `packed` is 32 bytes and `dst` 128 bytes, so each store of group g fits.
        unsafe {
            for (g, codes) in unpack(load(packed.as_ptr())).into_iter().enumerate() {
                _mm256_storeu_si256(dst.as_mut_ptr().add(g * BLOCK_BYTES).cast(), codes);
            }
        }
    }
}

/// `out[r][t] = sum_c codes[r][c] * qs[t][c]` over unpacked codes.
///
/// # Safety
/// All slices have the same length, a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn dot_tile<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    qs: [&[i8]; T],
) -> [[i32; T]; R] {
    let chunks = qs[0].len() / 32;
    debug_assert!(codes.iter().all(|c| c.len() == chunks * 32));
    debug_assert!(qs.iter().all(|q| q.len() == chunks * 32));
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [[_mm256_setzero_si256(); T]; R];
    for run in flush_runs(chunks, CHUNKS_PER_FLUSH) {
        let mut acc16 = [[_mm256_setzero_si256(); T]; R];
        for ch in run {
            // A plain loop rather than `from_fn`: a closure would not inherit this function's
            // target features, and each load became a call.
            let mut w = [_mm256_setzero_si256(); R];
            for (w, codes) in w.iter_mut().zip(codes) {
                // SAFETY: ch < chunks, so 32 bytes at ch * 32 exist in every slice.
                *w = unsafe { load(codes.as_ptr().add(ch * 32)) };
            }
            for t in 0..T {
                // SAFETY: as above.
                let x = unsafe { load(qs[t].as_ptr().add(ch * 32)) };
                for r in 0..R {
                    acc16[r][t] = _mm256_add_epi16(acc16[r][t], _mm256_maddubs_epi16(w[r], x));
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                acc32[r][t] = _mm256_add_epi32(acc32[r][t], _mm256_madd_epi16(acc16[r][t], ones));
            }
        }
    }
    let mut sums = [[0; T]; R];
    if R * T == 8 {
        // The full tile: eight accumulators summed together in one tree.
        let mut flat = [_mm256_setzero_si256(); 8];
        for (flat, acc) in flat.iter_mut().zip(acc32.iter().flatten()) {
            *flat = *acc;
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum_eight(flat)) };
        for (r, sums) in sums.iter_mut().enumerate() {
            sums.copy_from_slice(&lanes[r * T..(r + 1) * T]);
        }
        return sums;
    }
    // Plain loops rather than `map`, for the same reason as the loads above.
    for (sums, acc) in sums.iter_mut().zip(acc32) {
        for (sum, acc) in sums.iter_mut().zip(acc) {
            *sum = hsum_i32(acc);
        }
    }
    sums
}

/// `[hsum(v[0]), .., hsum(v[7])]` as one tree: horizontal additions leave each 128-bit lane
/// with four partial sums, and the two lanes are regrouped and added. A fifth of the
/// instructions of eight separate reductions, which with their calls were a twentieth of a
/// prefill. Integer additions in any order give the same sums.
#[inline]
#[target_feature(enable = "avx2")]
fn sum_eight(v: [__m256i; 8]) -> __m256i {
    // Per 128-bit lane, hadd(a, b) = [a0 + a1, a2 + a3, b0 + b1, b2 + b3].
    let pairs = [
        _mm256_hadd_epi32(v[0], v[1]),
        _mm256_hadd_epi32(v[2], v[3]),
        _mm256_hadd_epi32(v[4], v[5]),
        _mm256_hadd_epi32(v[6], v[7]),
    ];
    // Lane i of each 128-bit half: v[i]'s sum over that half (`first`), v[4 + i]'s (`second`).
    let first = _mm256_hadd_epi32(pairs[0], pairs[1]);
    let second = _mm256_hadd_epi32(pairs[2], pairs[3]);
    // Low halves together, high halves together, added: lane i is v[i]'s whole sum.
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(first, second),
        _mm256_permute2x128_si256::<0x31>(first, second),
    )
}
