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
//! Prefill with sums stored by token uses row lanes instead ([`lane_tiles`]): sixteen rows'
//! blocks are transposed in registers so that lane `i` holds row `i`'s codes for four
//! consecutive weights, and `vpdpbusd` against the token's four activations broadcast to every
//! lane adds one step of sixteen row sums at once. A register of sums is then sixteen finished
//! sums: no horizontal additions and one vector store per token. Both kernels run `vpdpbusd`
//! at about one per cycle on long rows; at K = 1536 the tile kernel's reductions and scalar
//! stores cost it 7% (`gemm128` bench: 197 -> 210 G products/s on one core).

use std::arch::x86_64::*;
use std::cell::Cell;

use super::{ROOFLINE_CHAINS, SumLayout, TernaryKernel, prefetch_distance, store};
use crate::i2s::{BLOCK, BLOCK_BYTES};
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
        unsafe { tiles(codes, rb, q, m, layout, out) }
    }
}

/// [`TernaryKernel::raw_dots`] tile by tile, compiled with the kernel's features so that each
/// tile's routine is inlined into this loop rather than called (the call passed its row and
/// token slices and returned its sums through memory, once per tile).
///
/// # Safety
/// As [`TernaryKernel::raw_dots`].
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn tiles(codes: &[u8], rb: usize, q: &[i8], m: usize, layout: SumLayout, out: &mut [i32]) {
    {
        let n = codes.len() / rb;
        // Several tokens stored by token: whole groups of sixteen rows go to the row-lane kernel.
        let lane_rows = if m > 1 && layout.row_stride == 1 {
            n / LANE_ROWS * LANE_ROWS
        } else {
            0
        };
        if lane_rows > 0 {
            // SAFETY: forwarded from the caller; the layout stores each token's rows contiguously.
            unsafe { lane_tiles(&codes[..lane_rows * rb], rb, q, m, layout.token_stride, out) };
        }
        let mut t = 0;
        // Token tiles outside, rows inside: the task's packed rows (a quarter of the bytes of the
        // activations they meet) are what streams through the cache, once per token tile.
        while t < m {
            let tokens = if m - t >= TOKENS { TOKENS } else { 1 };
            let mut r = lane_rows;
            while r < n {
                let rows = if n - r >= ROWS { ROWS } else { 1 };
                let tile = Tile {
                    codes,
                    rb,
                    q,
                    layout,
                    r,
                    t,
                };
                // SAFETY: the caller guarantees AVX-512 VNNI and the lengths `tile` relies on.
                unsafe {
                    match (rows, tokens) {
                        (ROWS, TOKENS) => tile.run::<ROWS, TOKENS>(out),
                        (ROWS, _) => tile.run::<ROWS, 1>(out),
                        (_, TOKENS) => tile.run::<1, TOKENS>(out),
                        _ => tile.run::<1, 1>(out),
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
    layout: SumLayout,
    r: usize,
    t: usize,
}

impl Tile<'_> {
    /// Computes rows `r..r + R` against tokens `t..t + T` and stores them where the layout says.
    ///
    /// # Safety
    /// The CPU supports AVX-512 VNNI; `codes` holds whole rows of `rb` bytes, `q` holds whole
    /// tokens of `4 * rb` activations, and the tile lies inside both.
    #[inline]
    unsafe fn run<const R: usize, const T: usize>(&self, out: &mut [i32]) {
        let (rb, kp) = (self.rb, 4 * self.rb);
        let rows = std::array::from_fn(|i| &self.codes[(self.r + i) * rb..(self.r + i + 1) * rb]);
        let tokens = std::array::from_fn(|j| &self.q[(self.t + j) * kp..(self.t + j + 1) * kp]);
        // The following tiles' rows follow these in memory: prefetch a few tiles ahead.
        // SAFETY: forwarded from the caller; every slice is one whole row or token.
        let sums = unsafe { packed_tile::<R, T>(rows, tokens, prefetch_distance(R * rb)) };
        store(&sums, (self.r, self.t), self.layout, out);
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

/// Rows per register in the row-lane kernel: one i32 lane per row.
const LANE_ROWS: usize = 16;

/// Sums of every row in `codes` (a multiple of [`LANE_ROWS`]) for all `m` tokens, token `t`'s
/// sums stored at `out[t * token_stride..]` in row order. Rows outside, token tiles inside: a
/// group of sixteen rows stays in L1 (or L2) while every tile of up to sixteen tokens uses it,
/// so the weights stream from memory once however many tokens there are; the tokens'
/// activations, interleaved once, come from L2 for each group.
///
/// # Safety
/// As [`TernaryKernel::raw_dots`], with the sums stored by token (`row_stride == 1`).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn lane_tiles(
    codes: &[u8],
    rb: usize,
    q: &[i8],
    m: usize,
    token_stride: usize,
    out: &mut [i32],
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
                out: &mut out[t * token_stride + group * LANE_ROWS..],
                token_stride,
            };
            // SAFETY: the caller guarantees AVX-512 VNNI and whole rows and tokens; the slices
            // start at this tile's rows and tokens.
            unsafe {
                match tokens {
                    16 => tile.run::<16>(),
                    8 => tile.run::<8>(),
                    4 => tile.run::<4>(),
                    _ => tile.run::<1>(),
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

/// Sixteen rows against `T` tokens' interleaved activations, sums stored from `out[0]` by token.
struct LaneTile<'a> {
    rows: &'a [u8],
    rb: usize,
    steps: &'a [i32],
    out: &'a mut [i32],
    token_stride: usize,
}

impl LaneTile<'_> {
    /// # Safety
    /// The CPU supports AVX-512 VNNI; `rows` is sixteen rows of `rb` bytes, `steps` holds `T`
    /// tokens of `4 * rb` activations interleaved ([`interleave`]) and `out` reaches token
    /// `T - 1`'s sixteen sums.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const T: usize>(self) {
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
        for (t, acc) in acc.into_iter().enumerate() {
            let sums = &mut self.out[t * self.token_stride..][..LANE_ROWS];
            // SAFETY: `sums` is sixteen writable i32; storeu has no alignment requirement.
            unsafe { _mm512_storeu_si512(sums.as_mut_ptr().cast(), acc) };
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
