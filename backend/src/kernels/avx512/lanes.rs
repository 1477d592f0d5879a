//! The row-lane prefill kernel: sixteen rows' packed blocks transposed in registers so that
//! lane `i` holds row `i`'s codes for four consecutive weights, and `vpdpbusd` against one
//! token's four activations broadcast to every lane adds a step of sixteen row sums at once. A
//! register of sums is then sixteen finished sums: no horizontal additions, and one vector put
//! per token ([`SumSink::put_lanes`]). Also the register transposes it is built from.

use std::arch::x86_64::*;
use std::cell::Cell;

use super::load64;
use super::sink::SumSink;
use crate::i2s::{BLOCK, BLOCK_BYTES};

/// Rows per register in the row-lane kernel: one i32 lane per row.
pub(super) const LANE_ROWS: usize = 16;

/// Sums of every row in `codes` (a multiple of [`LANE_ROWS`]) for all `m` tokens, put into
/// `sink` sixteen rows of one token at a time. Rows outside, token tiles inside: a
/// group of sixteen rows stays in L1 (or L2) while every tile of up to sixteen tokens uses it,
/// so the weights stream from memory once however many tokens there are; the tokens'
/// activations, interleaved once, come from L2 for each group.
///
/// # Safety
/// As [`super::super::TernaryKernel::raw_dots`], with a sink whose rows are contiguous.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn lane_tiles<S: SumSink>(
    codes: &[u8],
    rb: usize,
    q: &[i8],
    m: usize,
    sink: &mut S,
) {
    thread_local! {
        static INTERLEAVED: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    }
    let mut steps = INTERLEAVED.take();
    steps.clear();
    for (t, tokens) in token_tiles(m) {
        interleave(&q[t * 4 * rb..(t + tokens) * 4 * rb], tokens, &mut steps);
    }
    let tiles = token_tiles(m).count();
    for (group, rows) in codes.chunks_exact(LANE_ROWS * rb).enumerate() {
        // The next group's rows, requested into L2 a share per tile while this group runs: its
        // sixteen rows are read a block of each at a time, sixteen streams the hardware
        // prefetcher only partly follows, so the first tile waited on memory.
        let next = codes
            .get((group + 1) * LANE_ROWS * rb..)
            .unwrap_or_default();
        let share = (LANE_ROWS * rb).div_ceil(tiles * 64) * 64;
        let mut next = next[..next.len().min(LANE_ROWS * rb)].chunks(share);
        for (t, tokens) in token_tiles(m) {
            for line in next.next().unwrap_or_default().chunks(64) {
                _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
            }
            let tile = LaneTile {
                rows,
                rb,
                steps: &steps[t * rb..(t + tokens) * rb],
                first: (group * LANE_ROWS, t),
            };
            // SAFETY: the caller guarantees AVX-512 VNNI and whole rows and tokens; the slices
            // start at this tile's rows and tokens.
            unsafe {
                match tokens {
                    16 => tile.run::<16>(sink),
                    8 => tile.run::<8>(sink),
                    4 => tile.run::<4>(sink),
                    _ => tile.run::<1>(sink),
                }
            }
        }
    }
    INTERLEAVED.set(steps);
}

/// `(first token, tokens)` of each tile of `m` tokens: sixteen at a time, then 8, 4 and ones.
fn token_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut t = 0;
    std::iter::from_fn(move || {
        let tokens = match m.checked_sub(t)? {
            0 => return None,
            16.. => 16,
            8.. => 8,
            4.. => 4,
            _ => 1,
        };
        t += tokens;
        Some((t - tokens, tokens))
    })
}

/// The activations of `tokens` tokens (`q`, one after another) regrouped by step of four
/// columns and appended to `steps`: its new part's `[s * tokens + t]` holds token `t`'s columns
/// `4s..4s + 4`. The tokens' dwords for one step then share a cache line; read in place,
/// sixteen tokens whose rows are a multiple of 4 KiB apart fall in one L1 set and evict each
/// other (K = 4096 ran at half speed).
fn interleave(q: &[i8], tokens: usize, steps: &mut Vec<i32>) {
    let start = steps.len();
    steps.resize(start + q.len() / 4, 0);
    let steps = &mut steps[start..];
    let row = q.len() / tokens;
    if tokens == 16 && row.is_multiple_of(64) {
        // SAFETY: lane_tiles, the only caller, runs on CPUs with AVX-512; sixteen tokens of
        // `row` bytes fill `q`, and `steps` holds their `q.len() / 4` dwords.
        unsafe { transpose_tokens(q, row, steps) };
        return;
    }
    for (t, token) in q.chunks_exact(row).enumerate() {
        for (s, x) in token.chunks_exact(4).enumerate() {
            steps[s * tokens + t] =
                i32::from_ne_bytes([x[0] as u8, x[1] as u8, x[2] as u8, x[3] as u8]);
        }
    }
}

/// [`interleave`] of a full tile, sixteen tokens of `row` bytes (a multiple of 64), as a
/// transpose of dwords in registers (a scalar store per dword was 1% of a 700M prefill).
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_tokens(q: &[i8], row: usize, steps: &mut [i32]) {
    assert!(q.len() == 16 * row && steps.len() == 4 * row && row.is_multiple_of(64));
    // SAFETY: sixteen rows of `row` bytes fill `q`; the last step ends at `steps.len()`.
    unsafe {
        transpose_dwords(
            q.as_ptr().cast(),
            row,
            row / 4,
            steps.as_mut_ptr().cast(),
            16,
        )
    };
}

/// Dwords `0..columns` (a multiple of 16) of sixteen rows `row` bytes apart from `src`,
/// transposed: dword `s` of row `t` to `dst[s * stride + t]`, sixteen of every row at a time.
///
/// # Safety
/// The CPU supports AVX-512F; `src` holds sixteen rows `row` bytes apart, each at least
/// `4 * columns` bytes, and `dst` holds `(columns - 1) * stride + 16` dwords.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_dwords(
    src: *const u8,
    row: usize,
    columns: usize,
    dst: *mut u32,
    stride: usize,
) {
    for s0 in (0..columns).step_by(16) {
        // SAFETY: dwords s0..s0 + 16 of row t lie inside it (s0 + 16 <= columns).
        let r: [__m512i; 16] =
            std::array::from_fn(|t| unsafe { load64(src.add(t * row + s0 * 4)) });
        // b[4i + e], lane L: dword 4L + e of rows 4i..4i + 4.
        let b = lane_transposes(r);
        // Dword 4L + e gathers lane L of b[e], b[4 + e], b[8 + e] and b[12 + e].
        for e in 0..4 {
            let low = _mm512_shuffle_i32x4::<0b01_00_01_00>(b[e], b[4 + e]);
            let high = _mm512_shuffle_i32x4::<0b11_10_11_10>(b[e], b[4 + e]);
            let low2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(b[8 + e], b[12 + e]);
            let high2 = _mm512_shuffle_i32x4::<0b11_10_11_10>(b[8 + e], b[12 + e]);
            let lanes = [
                _mm512_shuffle_i32x4::<0b10_00_10_00>(low, low2),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(low, low2),
                _mm512_shuffle_i32x4::<0b10_00_10_00>(high, high2),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(high, high2),
            ];
            for (lane, v) in lanes.into_iter().enumerate() {
                let step = s0 + 4 * lane + e;
                // SAFETY: step < columns, so its sixteen dwords end within `dst`.
                unsafe { _mm512_storeu_si512(dst.add(step * stride).cast(), v) };
            }
        }
    }
}

/// Sixteen rows against `T` tokens' interleaved activations; the first row and token are the
/// sink's `first`.
struct LaneTile<'a> {
    rows: &'a [u8],
    rb: usize,
    steps: &'a [i32],
    first: (usize, usize),
}

impl LaneTile<'_> {
    /// # Safety
    /// The CPU supports AVX-512 VNNI; `rows` is sixteen rows of `rb` bytes, `steps` holds `T`
    /// tokens of `4 * rb` activations interleaved ([`interleave`]), and `sink`'s rows are
    /// contiguous.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const T: usize>(self, sink: &mut impl SumSink) {
        let rb = self.rb;
        let blocks = rb / BLOCK_BYTES;
        assert!(self.rows.len() == LANE_ROWS * rb && self.steps.len() == T * rb);
        let mask = _mm512_set1_epi8(3);
        let mut acc = [_mm512_setzero_si512(); T];
        for b in 0..blocks {
            // SAFETY: b < blocks, so every one of the sixteen rows has block b.
            let dwords = unsafe { transpose_block(self.rows.as_ptr().add(b * BLOCK_BYTES), rb) };
            for (d, &packed) in dwords.iter().enumerate() {
                // Byte p of a block holds weights p, p + 32, p + 64 and p + 96: dword d's four
                // bytes give four consecutive weights at 4d + 32g, in bits 7:6 for g = 0.
                let groups = [
                    _mm512_and_si512(_mm512_srli_epi32::<6>(packed), mask),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(packed), mask),
                    _mm512_and_si512(_mm512_srli_epi32::<2>(packed), mask),
                    _mm512_and_si512(packed, mask),
                ];
                for (g, codes) in groups.into_iter().enumerate() {
                    let step = (b * BLOCK + 32 * g + 4 * d) / 4;
                    for (t, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: step < blocks * 32 = rb, so step * T + t < T * rb.
                        let x = unsafe { *self.steps.get_unchecked(step * T + t) };
                        *acc = _mm512_dpbusd_epi32(*acc, codes, _mm512_set1_epi32(x));
                    }
                }
            }
        }
        let (r0, t0) = self.first;
        for (t, acc) in acc.into_iter().enumerate() {
            // SAFETY: AVX-512 and rows contiguous, as the caller guarantees.
            unsafe { sink.put_lanes(r0, t0 + t, acc) };
        }
    }
}

/// 4 x 4 dword transposes inside each 128-bit lane of every four vectors: lane `L` of output
/// `4i + e` holds dword `e` of lane `L` of inputs `4i..4i + 4` (the first two steps of a
/// register transpose, shared by rows and tokens).
#[inline]
#[target_feature(enable = "avx512f")]
fn lane_transposes<const N: usize>(v: [__m512i; N]) -> [__m512i; N] {
    // Per lane of a[2i], a[2i + 1]: dwords 0, 1 (then 2, 3) of inputs 2i and 2i + 1 interleaved.
    let mut a = [_mm512_setzero_si512(); N];
    for i in 0..N / 2 {
        a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    let mut out = [_mm512_setzero_si512(); N];
    for i in 0..N / 4 {
        let (p, q) = (4 * i, 4 * i + 2);
        out[p] = _mm512_unpacklo_epi64(a[p], a[q]);
        out[p + 1] = _mm512_unpackhi_epi64(a[p], a[q]);
        out[p + 2] = _mm512_unpacklo_epi64(a[p + 1], a[q + 1]);
        out[p + 3] = _mm512_unpackhi_epi64(a[p + 1], a[q + 1]);
    }
    out
}

/// Block `b` of sixteen rows (at `ptr`, rows `rb` bytes apart) as eight vectors: vector `d`
/// holds dword `d` of row `i`'s 32 bytes in lane `i`.
///
/// # Safety
/// `ptr + i * rb` points to 32 readable bytes for every `i < 16`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn transpose_block(ptr: *const u8, rb: usize) -> [__m512i; 8] {
    // Rows j and j + 8 side by side; then an 8 x 8 dword transpose in both 256-bit halves.
    let z: [__m512i; 8] = std::array::from_fn(|j| {
        // SAFETY: rows j and j + 8 are below 16, so the caller guarantees both reads.
        let (low, high) = unsafe {
            (
                _mm256_loadu_si256(ptr.add(j * rb).cast()),
                _mm256_loadu_si256(ptr.add((j + 8) * rb).cast()),
            )
        };
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
    });
    // c[4h + e]: lanes 0 and 1 hold dwords e and 4 + e of rows 4h..4h + 4, lanes 2 and 3 the
    // same of rows 4h + 8..4h + 12. Interleaving the lanes of c[e] (rows 0..4, 8..12) and
    // c[4 + e] (rows 4..8, 12..16) puts rows 0..16 in order.
    let c = lane_transposes(z);
    let even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    let odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    let mut dwords = [_mm512_setzero_si512(); 8];
    for e in 0..4 {
        dwords[e] = _mm512_permutex2var_epi64(c[e], even, c[4 + e]);
        dwords[4 + e] = _mm512_permutex2var_epi64(c[e], odd, c[4 + e]);
    }
    dwords
}
