//! AVX-512 VNNI path: `vpdpbusd` multiplies 64 unsigned codes by 64 signed activations and adds
//! the products straight into i32 lanes, so no intermediate widening is needed.
//!
//! It works on the packed rows directly. For one token (and for rows or layouts the prefill
//! kernel does not take), each 32-byte block is broadcast to both halves of a register and
//! masked differently per half, which yields the codes of weights 0..64 (bits 7:6, then 5:4)
//! and 64..128 (bits 3:2, then 1:0) in exactly the order of the activations in memory; a tile
//! of rows x tokens shares every unpacked block and every activation load, and each sum is one
//! register's lanes added up.
//!
//! Prefill with sums stored by token uses row lanes instead ([`lanes`]): a register holds
//! sixteen rows' sums for one token, so no horizontal additions and one vector store per token.
//! Both kernels run `vpdpbusd` at about one per cycle on long rows; at K = 1536 the tile
//! kernel's reductions and scalar stores cost it 7% (`gemm128` bench: 197 -> 210 G products/s
//! on one core).
//!
//! Where the sums go is a [`SumSink`]: stored as they are, or, for a prefill band, turned into
//! the layer's outputs as they leave the registers ([`finished_band`]). Storing a band's sums
//! (megabytes per layer) and finishing them in a second pass was 2.8% of a 700M prefill; done
//! in the kernel, the `gemm128` bench of the 700M shapes gained 6% on average (-2% to +11% per
//! shape and run) and a 700M prefill 3.4% at one thread and 4.8% at two (alternating runs of
//! one binary, 2026-12-04).

mod lanes;
mod sink;

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

pub(crate) use lanes::transpose_dwords;
use lanes::{LANE_ROWS, lane_tiles};
use sink::{FinishedSums, RawSums, SumSink};

use super::{ROOFLINE_CHAINS, SumLayout, TernaryKernel, prefetch_distance};
use crate::i2s::{BLOCK, BLOCK_BYTES, TernaryLayout};
use crate::quant::QuantizedActivations;
use crate::vectorize::FloatLoop;

pub(super) struct Avx512Vnni;

/// Rows per tile: with one token, four independent accumulator chains hide `vpdpbusd`'s latency.
const ROWS: usize = 4;
/// Tokens per tile when there are several: 4 x 4 accumulators fit the register file with the
/// 8 unpacked code vectors.
const TOKENS: usize = 4;

impl TernaryKernel for Avx512Vnni {
    unsafe fn raw_dots(
        codes: &[u8],
        rb: usize,
        q: &[i8],
        m: usize,
        layout: SumLayout,
        out: &mut [i32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { tiles(codes, rb, q, m, &mut RawSums { layout, out }) }
    }
}

/// The float outputs `y` (`[tokens, n]`, `n` the layer's rows) of a prefill band, tokens
/// `t0..` of `x` whose activations are `q`: each register of sums is finished as it leaves the
/// kernel (as [`super::finish_tokens`] would finish it) instead of being stored and read back.
///
/// # Safety
/// The CPU supports AVX-512 VNNI; `codes` holds `n` rows of `rb` bytes and `q` the band's
/// tokens of `4 * rb` activations each, as [`TernaryKernel::raw_dots`] with `m = tokens`.
pub(super) unsafe fn finished_band(
    codes: &[u8],
    rb: usize,
    q: &[i8],
    (layout, x, t0): (&TernaryLayout, &QuantizedActivations, usize),
    y: &mut [MaybeUninit<f32>],
) {
    let mut sink = FinishedSums::new(layout, x, t0, y);
    let tokens = q.len() / (4 * rb);
    // SAFETY: forwarded from the caller.
    unsafe { tiles(codes, rb, q, tokens, &mut sink) }
}

/// [`TernaryKernel::raw_dots`] tile by tile, compiled with the kernel's features so that each
/// tile's routine is inlined into this loop rather than called (the call passed its row and
/// token slices and returned its sums through memory, once per tile).
///
/// # Safety
/// As [`TernaryKernel::raw_dots`], with `sink` taking every row and token.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn tiles<S: SumSink>(codes: &[u8], rb: usize, q: &[i8], m: usize, sink: &mut S) {
    {
        let n = codes.len() / rb;
        // Several tokens stored by token: whole groups of sixteen rows go to the row-lane kernel.
        let lane_rows = if m > 1 && sink.rows_contiguous() {
            n / LANE_ROWS * LANE_ROWS
        } else {
            0
        };
        if lane_rows > 0 {
            // SAFETY: forwarded from the caller; the sink takes each token's rows contiguously.
            unsafe { lane_tiles(&codes[..lane_rows * rb], rb, q, m, sink) };
        }
        let mut t = 0;
        // Token tiles outside, rows inside: the task's packed rows (a quarter of the bytes of the
        // activations they meet) are what streams through the cache, once per token tile.
        while t < m {
            let tokens = if m - t >= TOKENS { TOKENS } else { 1 };
            let mut r = lane_rows;
            while r < n {
                let rows = if n - r >= ROWS { ROWS } else { 1 };
                let tile = Tile { codes, rb, q, r, t };
                // SAFETY: the caller guarantees AVX-512 VNNI and the lengths `tile` relies on.
                unsafe {
                    match (rows, tokens) {
                        (ROWS, TOKENS) => tile.run::<ROWS, TOKENS>(sink),
                        (ROWS, _) => tile.run::<ROWS, 1>(sink),
                        (_, TOKENS) => tile.run::<1, TOKENS>(sink),
                        _ => tile.run::<1, 1>(sink),
                    }
                }
                r += rows;
            }
            t += tokens;
        }
    }
}

/// Where one tile of rows x tokens starts.
struct Tile<'a> {
    codes: &'a [u8],
    rb: usize,
    q: &'a [i8],
    r: usize,
    t: usize,
}

impl Tile<'_> {
    /// Computes rows `r..r + R` against tokens `t..t + T` and puts them into `sink`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 VNNI; `codes` holds whole rows of `rb` bytes, `q` holds whole
    /// tokens of `4 * rb` activations, and the tile lies inside both.
    #[inline]
    unsafe fn run<const R: usize, const T: usize>(&self, sink: &mut impl SumSink) {
        let (rb, kp) = (self.rb, 4 * self.rb);
        let rows = std::array::from_fn(|i| &self.codes[(self.r + i) * rb..(self.r + i + 1) * rb]);
        let tokens = std::array::from_fn(|j| &self.q[(self.t + j) * kp..(self.t + j + 1) * kp]);
        // The following tiles' rows follow these in memory: prefetch a few tiles ahead.
        // SAFETY: forwarded from the caller; every slice is one whole row or token.
        let sums = unsafe { packed_tile::<R, T>(rows, tokens, prefetch_distance(R * rb)) };
        for (r, sums) in sums.iter().enumerate() {
            for (t, &sum) in sums.iter().enumerate() {
                sink.put(self.r + r, self.t + t, sum);
            }
        }
    }
}

/// [`ROOFLINE_CHAINS`] independent chains of `steps` register-only `vpdpbusd` each (64 products
/// per instruction): the roofline the kernels are measured against, since nothing but the
/// instruction's own throughput limits it. Returns the sum of the lanes, so it is not elided.
///
/// # Safety
/// The CPU supports AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn vpdpbusd_chains(steps: usize, codes: i8, x: i8) -> i32 {
    let (codes, x) = (_mm512_set1_epi8(codes), _mm512_set1_epi8(x));
    let mut acc = [_mm512_setzero_si512(); ROOFLINE_CHAINS];
    for _ in 0..steps {
        for acc in &mut acc {
            *acc = _mm512_dpbusd_epi32(*acc, codes, x);
        }
    }
    let mut total = _mm512_setzero_si512();
    for acc in acc {
        total = _mm512_add_epi32(total, acc);
    }
    _mm512_reduce_add_epi32(total)
}

/// Runs a float loop compiled with AVX-512 (see [`crate::vectorize`]).
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
pub(crate) fn float_loop<L: FloatLoop>(body: L) -> L::Output {
    body.run()
}

/// Loads 64 bytes starting at `ptr`.
///
/// # Safety
/// `ptr` points to at least 64 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn load64<T>(ptr: *const T) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(ptr.cast()) }
}

/// The 128 codes of the packed block at `ptr` as two vectors in column order: weights 0..64
/// (bits 7:6 in the low half, 5:4 in the high half) and weights 64..128 (bits 3:2, then 1:0).
/// Codes in the low half come out multiplied by 4 (they keep their place at bits 3:2), which
/// [`unscale`] divides out of the sums exactly; this spares a variable shift per vector.
///
/// # Safety
/// `ptr` points to at least 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn unpack_block(ptr: *const u8) -> [__m512i; 2] {
    // SAFETY: the caller guarantees 32 readable bytes.
    let packed = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(ptr.cast()) });
    let per_half = |low: u8, high: u8| {
        _mm512_inserti64x4::<1>(_mm512_set1_epi8(low as i8), _mm256_set1_epi8(high as i8))
    };
    // Bits 7:6 | 5:4 moved down by four land at 3:2 | 1:0; within each byte, so the 16-bit
    // shift moves nothing across bytes once the other bits are masked off.
    let group01 = _mm512_srli_epi16::<4>(_mm512_and_si512(packed, per_half(0xc0, 0x30)));
    let group23 = _mm512_and_si512(packed, per_half(0x0c, 0x03));
    [group01, group23]
}

/// Sums the i32 lanes of a tile accumulator, dividing the low half's lanes by the 4 that
/// [`unpack_block`] left on their codes (exact: every product there is a multiple of 4).
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn unscale(acc: __m512i) -> i32 {
    let shifts = _mm512_inserti64x4::<1>(_mm512_set1_epi32(2), _mm256_setzero_si256());
    _mm512_reduce_add_epi32(_mm512_srav_epi32(acc, shifts))
}

/// `out[r][t] = sum_c code(rows[r], c) * qs[t][c]` straight from packed rows, prefetching the
/// bytes `ahead` of each block read.
///
/// `vpdpbusd` adds four products of at most 8 * 128 per i32 lane, two instructions per block,
/// so a lane cannot overflow before K reaches 2^25.
///
/// # Safety
/// The CPU supports AVX-512 VNNI; every row is `qs[t].len() / 4` bytes and every token's
/// length is a multiple of 128.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn packed_tile<const R: usize, const T: usize>(
    rows: [&[u8]; R],
    qs: [&[i8]; T],
    ahead: usize,
) -> [[i32; T]; R] {
    let blocks = qs[0].len() / BLOCK;
    debug_assert!(rows.iter().all(|r| r.len() == blocks * BLOCK_BYTES));
    debug_assert!(qs.iter().all(|q| q.len() == blocks * BLOCK));
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    for b in 0..blocks {
        // Decode only: with several tokens the rows are re-read from cache, and hints cost 10%.
        if T == 1 && b % 2 == 0 {
            for row in rows {
                // A hint only (no fault past the end). Rows are short streams (K/4 bytes) that
                // the hardware prefetcher has barely learnt before they end: without this,
                // decode reads DRAM at under half its bandwidth.
                _mm_prefetch::<_MM_HINT_T1>(
                    row.as_ptr().wrapping_add(b * BLOCK_BYTES + ahead).cast(),
                );
            }
        }
        let mut codes = [[_mm512_setzero_si512(); 2]; R];
        for (c, row) in codes.iter_mut().zip(rows) {
            // SAFETY: b < blocks, so 32 packed bytes of block b exist in every row.
            *c = unsafe { unpack_block(row.as_ptr().add(b * BLOCK_BYTES)) };
        }
        for (t, q) in qs.iter().enumerate() {
            for h in 0..2 {
                // SAFETY: b < blocks, so the 128 activations of block b exist in every token.
                let x = unsafe { load64(q.as_ptr().add(b * BLOCK + h * 64)) };
                for (acc, codes) in acc.iter_mut().zip(&codes) {
                    acc[t] = _mm512_dpbusd_epi32(acc[t], codes[h], x);
                }
            }
        }
    }
    // Plain loops rather than `map`: a closure would not inherit this function's target features
    // and every reduction would become a call.
    let mut sums = [[0; T]; R];
    if R * T == 16 {
        // A full prefill tile: sixteen accumulators summed together in one tree.
        let mut flat = [_mm512_setzero_si512(); 16];
        for (i, acc) in acc.iter().flatten().enumerate() {
            flat[i] = *acc;
        }
        let lanes = sum_sixteen(flat);
        for (r, sums) in sums.iter_mut().enumerate() {
            sums.copy_from_slice(&lanes[r * T..(r + 1) * T]);
        }
        return sums;
    }
    for (sums, acc) in sums.iter_mut().zip(acc) {
        for (sum, acc) in sums.iter_mut().zip(acc) {
            *sum = unscale(acc);
        }
    }
    sums
}

/// `[unscale(v[0]), .., unscale(v[15])]` as one tree of lane-wise additions: pairs of vectors
/// are interleaved and added until each 128-bit lane holds four finished partial sums, then
/// the 128-bit lanes are regrouped and added, which leaves sum `i` in lane `i`. A third of
/// the instructions of sixteen separate reductions, which cost a quarter of a prefill tile at
/// K = 1536. Integer additions in any order give the same sums.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn sum_sixteen(v: [__m512i; 16]) -> [i32; 16] {
    // Loops and a helper function, not closures: those would not inherit the target features.
    let shifts = _mm512_inserti64x4::<1>(_mm512_set1_epi32(2), _mm256_setzero_si256());
    let mut v = v;
    for acc in &mut v {
        *acc = _mm512_srav_epi32(*acc, shifts);
    }
    // Per 128-bit lane of pair i: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let mut pairs = [_mm512_setzero_si512(); 8];
    for (i, pair) in pairs.iter_mut().enumerate() {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        *pair = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    }
    // Per 128-bit lane of quad i: the partial sums of vectors 4i..4i + 4, in order.
    let mut quads = [_mm512_setzero_si512(); 4];
    for (i, quad) in quads.iter_mut().enumerate() {
        let (a, b) = (pairs[2 * i], pairs[2 * i + 1]);
        *quad = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    let halves = [
        fold_lanes(quads[0], quads[1]),
        fold_lanes(quads[2], quads[3]),
    ];
    let mut sums = [0i32; 16];
    // SAFETY: `sums` is 64 writable bytes; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(sums.as_mut_ptr().cast(), fold_lanes(halves[0], halves[1])) };
    sums
}

/// 128-bit lanes `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold_lanes(a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
    )
}

/// `dst[i]` = the f32 of the f16 with bits `src[i]` for the leading multiple of sixteen, one
/// `vcvtph2ps` per sixteen (an f16 KV cache's keys and values, widened as attention reads them).
/// Returns how many it converted.
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn widen_halves(src: &[u16], dst: &mut [f32]) -> usize {
    let done = src.len().min(dst.len()) / 16 * 16;
    for i in (0..done).step_by(16) {
        // SAFETY: `i + 16 <= done`, within both slices.
        unsafe {
            let halves = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(halves));
        }
    }
    done
}
