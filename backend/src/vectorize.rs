//! Float loops (activation quantization, norms, rotary embedding, gated activation, finishing
//! kernel sums) compiled for the selected instruction set.
//!
//! The crate is built for baseline x86-64, where the compiler vectorizes these loops four floats
//! wide with SSE2 (and rounds with scalar conversions); the same source compiled with AVX2 or
//! AVX-512 enabled runs eight or sixteen wide. Each loop is a [`FloatLoop`] whose `run` is
//! `#[inline(always)]`, so it is compiled into the `#[target_feature]` function of the chosen path
//! rather than called from it. The arithmetic is the same IR on every path (no fused
//! multiply-adds are formed and no reductions reordered), so every path gives the same bits.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::kernels::Isa;

/// A loop over floats whose body is compiled into the caller's instruction set.
pub(crate) trait FloatLoop {
    /// What the loop returns.
    type Output;
    /// Runs the loop; implementations are `#[inline(always)]` so the path's features apply.
    fn run(self) -> Self::Output;
}

/// Runs `body` compiled for the selected path ([`Isa::selected`]; scalar when `BITNET_ISA` is
/// invalid, which the ternary ops report).
pub(crate) fn vectorized<L: FloatLoop>(body: L) -> L::Output {
    vectorized_on(Isa::selected().unwrap_or(Isa::Scalar), body)
}

/// Runs `body` compiled for `isa`, which must be supported (scalar otherwise).
pub(crate) fn vectorized_on<L: FloatLoop>(isa: Isa, body: L) -> L::Output {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked just before that the CPU has the path's features.
        Isa::Avx512Vnni if isa.is_supported() => unsafe {
            crate::kernels::avx512::float_loop(body)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if isa.is_supported() => unsafe { crate::kernels::avx2::float_loop(body) },
        _ => body.run(),
    }
}

/// `len` floats computed by `fill(chunk_index, chunk)` over consecutive chunks of `chunk`
/// values (the last one shorter), on the rayon pool when there is more than one chunk and on
/// the calling thread otherwise (a `chunk` of zero counts as one). Each task zeroes its own
/// chunk just before `fill` overwrites it, so the zeroing is shared by the pool: with
/// `vec![0.0; len]` the calling thread zeroed megabytes per op while the rest of the pool
/// waited (memset was 1.8% of a 2-thread 700M prefill's samples, all on that thread).
pub(crate) fn filled_in_chunks(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let run = |(index, values): (usize, &mut [MaybeUninit<f32>])| {
        values.iter_mut().for_each(|v| {
            v.write(0.0);
        });
        // SAFETY: every value of `values` was written just above.
        fill(index, unsafe { values.assume_init_mut() });
    };
    let mut y = Vec::with_capacity(len);
    let spare = &mut y.spare_capacity_mut()[..len];
    if len <= chunk {
        run((0, spare));
    } else {
        spare.par_chunks_mut(chunk).enumerate().for_each(run);
    }
    // SAFETY: the chunks cover the first `len` values, each written by `run`.
    unsafe { y.set_len(len) };
    y
}

/// `sum(a * b)` over slices of one length in sixteen independent lanes, which the compiler
/// keeps in vector registers (one running sum is a chain it must keep in order).
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "a dot product of slices of one length");
    let mut lanes = [0f32; LANES];
    let ((blocks_a, rest_a), (blocks_b, rest_b)) = (a.as_chunks::<LANES>(), b.as_chunks::<LANES>());
    for (x, y) in blocks_a.iter().zip(blocks_b) {
        // Fixed-size arrays indexed with constant bounds: the lanes stay in one register
        // (over zipped iterators they were split across three of different widths).
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    if !rest_a.is_empty() {
        // The tail zero-padded to a whole block: a loop over a variable number of lanes made
        // the compiler keep them on the stack, a round trip per call. The padding adds +0.0,
        // which leaves every lane as it was (a lane that starts at +0.0 is never -0.0).
        let (mut x, mut y) = ([0f32; LANES], [0f32; LANES]);
        x[..rest_a.len()].copy_from_slice(rest_a);
        y[..rest_b.len()].copy_from_slice(rest_b);
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    reduce_lanes(lanes)
}

/// `sum(x)` in sixteen independent lanes.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (blocks, rest) = x.as_chunks::<LANES>();
    for block in blocks {
        for i in 0..LANES {
            lanes[i] += block[i];
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        *lane += v;
    }
    reduce_lanes(lanes)
}

/// `max(x)` (`-inf` for none) in sixteen lanes; see [`lane_max_by`].
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    lane_max_by(x, f32::NEG_INFINITY, |v| v)
}

/// `max(floor, f(v) for v in x)`, NaNs passed over as `f32::max` does, in sixteen lanes: one
/// running maximum is a chain kept in order, and the maximum of a set does not depend on the
/// order. Each lane keeps its value by a comparison, one vector instruction where `f32::max`'s
/// NaN rule adds a compare and a blend.
#[inline(always)]
pub(crate) fn lane_max_by(x: &[f32], floor: f32, f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [floor; LANES];
    let (blocks, rest) = x.as_chunks::<LANES>();
    for block in blocks {
        for i in 0..LANES {
            let v = f(block[i]);
            lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        }
    }
    let rest = rest.iter().map(|&v| f(v));
    lanes.into_iter().chain(rest).fold(floor, f32::max)
}

/// Lanes of the sums above: one 512-bit register.
const LANES: usize = 16;

/// The sum of the lanes as a tree of halvings, a few vector shuffles and adds rather than a
/// chain of sixteen dependent additions.
#[inline(always)]
fn reduce_lanes(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_in_chunks_gives_each_chunk_its_index_and_covers_every_value() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (len, chunk) in [(0, 4), (3, 4), (4, 4), (10, 4), (1000, 7), (5, 0)] {
            let y = pool.install(|| {
                filled_in_chunks(len, chunk, |index, values| {
                    for (i, v) in values.iter_mut().enumerate() {
                        *v += (index * chunk.max(1) + i) as f32;
                    }
                })
            });
            let want: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(y, want, "{len} values in chunks of {chunk}");
        }
    }

    #[test]
    fn lane_max_is_the_maximum_and_passes_over_nans() {
        assert_eq!(lane_max(&[]), f32::NEG_INFINITY);
        let x: Vec<f32> = (0..41).map(|i| ((i * 37) % 23) as f32 - 11.5).collect();
        for len in 1..=x.len() {
            let want = x[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&x[..len]), want, "{len} values");
        }
        let mut with_nans = x.clone();
        with_nans[3] = f32::NAN;
        with_nans[40] = f32::NAN;
        assert_eq!(lane_max(&with_nans), 10.5);
    }
}
