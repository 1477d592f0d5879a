//! Rotary position embedding in the "rotate half" form of Llama and HF, one pass per row.
//!
//! Burn's version is five ops (two narrows, a negation, a concatenation, the products and a
//! sum), each allocating a tensor on one thread, for the queries and the keys of every layer.

use crate::kernels::prefetch;
use crate::rows::Rows;
use crate::vectorize::{FloatLoop, filled_in_chunks, vectorized};

/// How many rows ahead of the one rotated the next rows are prefetched.
const ROWS_AHEAD: usize = 4;
/// Values per rayon task; a tensor of at most this many runs on the calling thread (decode).
const TASK_VALUES: usize = 16_384;

/// `x * cos + rotate_half(x) * sin` for rows of `x` whose positions cycle through the rows of
/// `cos` and `sin` (`[len, dim]`): row `r` of `x` is at position `r % len`, as in a
/// `[batch, heads, len, dim]` tensor. `rotate_half(x) = [-x[half..], x[..half]]`; the products
/// and the sum are in the order of Burn's ops for the same formula, so the bits are theirs.
/// The rows are read where they lie (a `[batch, len, heads, dim]` projection viewed with its
/// axes swapped is not copied first); the output is contiguous.
///
/// # Panics
/// If `dim` (the rows' width) is odd or zero, or the lengths do not fit together: callers
/// check shapes first.
pub fn rotate_half(x: &Rows<'_>, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let dim = x.width();
    assert!(dim > 0 && dim.is_multiple_of(2), "dim must be even");
    assert!(cos.len() == sin.len() && !cos.is_empty() && cos.len().is_multiple_of(dim));
    let len = cos.len() / dim;
    assert!(
        x.count().is_multiple_of(len),
        "x must hold whole groups of positions"
    );
    let rows = TASK_VALUES.div_ceil(dim);
    filled_in_chunks(x.count() * dim, rows * dim, |task, y| {
        vectorized(RotateRows {
            y,
            x,
            cos,
            sin,
            first_row: task * rows,
        })
    })
}

/// Rotates rows `first_row..` of `x` into `y`, one row of `y` each; row `r` is at position
/// `r % len`.
pub(crate) struct RotateRows<'a> {
    pub(crate) y: &'a mut [f32],
    pub(crate) x: &'a Rows<'a>,
    pub(crate) cos: &'a [f32],
    pub(crate) sin: &'a [f32],
    pub(crate) first_row: usize,
}

impl FloatLoop for RotateRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let dim = self.x.width();
        let (half, len) = (dim / 2, self.cos.len() / dim);
        let rows = self
            .y
            .chunks_exact_mut(dim)
            .zip(self.x.from_row(self.first_row));
        // Rows of a swapped view are kilobytes apart, a stride the hardware prefetcher does not
        // follow: each row waited for its loads (a fortieth of a 700M prefill).
        let mut ahead = self.x.from_row(self.first_row + ROWS_AHEAD);
        for (i, (y, x)) in rows.enumerate() {
            if let Some(row) = ahead.next() {
                prefetch(row);
            }
            let position = (self.first_row + i) % len;
            let c = &self.cos[position * dim..][..dim];
            let s = &self.sin[position * dim..][..dim];
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            // Whole lanes of sixteen go through fixed-size arrays: as one loop over `half`
            // values the compiler checked at run time that the output overlaps none of the
            // five inputs and, at a head width of 96, ran a third of the values in its scalar
            // remainder (this loop: 1.4% of a 700M prefill's samples, 1.0% in lanes).
            let whole = half / LANES * LANES;
            for i in (0..whole).step_by(LANES) {
                let lanes = |v: &[f32]| -> [f32; LANES] { v[i..i + LANES].try_into().unwrap() };
                let (a, b) = rotate_pair(
                    [&lanes(x1), &lanes(x2)],
                    [&lanes(c1), &lanes(c2)],
                    [&lanes(s1), &lanes(s2)],
                );
                y1[i..i + LANES].copy_from_slice(&a);
                y2[i..i + LANES].copy_from_slice(&b);
            }
            for i in whole..half {
                (y1[i], y2[i]) = rotate_one(x1[i], x2[i], (c1[i], c2[i]), (s1[i], s2[i]));
            }
        }
    }
}

/// Values per fixed-size step of [`RotateRows`]: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// [`rotate_one`] on `LANES` pairs of values at once.
#[inline(always)]
fn rotate_pair(
    [x1, x2]: [&[f32; LANES]; 2],
    [c1, c2]: [&[f32; LANES]; 2],
    [s1, s2]: [&[f32; LANES]; 2],
) -> ([f32; LANES], [f32; LANES]) {
    let mut out = ([0.0; LANES], [0.0; LANES]);
    for i in 0..LANES {
        (out.0[i], out.1[i]) = rotate_one(x1[i], x2[i], (c1[i], c2[i]), (s1[i], s2[i]));
    }
    out
}

/// One value of each half rotated: `(x1 * c1 - x2 * s1, x2 * c2 + x1 * s2)`, in the order of
/// Burn's ops (`x * cos + rotate_half(x) * sin`).
#[inline(always)]
fn rotate_one(x1: f32, x2: f32, (c1, c2): (f32, f32), (s1, s2): (f32, f32)) -> (f32, f32) {
    (x1 * c1 + -x2 * s1, x2 * c2 + x1 * s2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::vectorize::vectorized_on;

    #[test]
    fn every_path_gives_the_same_bits() {
        let (dim, len) = (46, 3);
        let cos: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.1).cos()).collect();
        let sin: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.1).sin()).collect();
        let x: Vec<f32> = (0..7 * len * dim)
            .map(|i| (i % 29) as f32 * 0.3 - 4.0)
            .collect();
        let run = |isa| {
            // Rows 1.. of x: the first row's position is 1.
            let mut y = vec![0f32; x.len() - dim];
            let x = Rows::contiguous(&x[..], dim);
            let (cos, sin) = (&cos[..], &sin[..]);
            let rows = RotateRows {
                y: &mut y,
                x: &x,
                cos,
                sin,
                first_row: 1,
            };
            vectorized_on(isa, rows);
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let want = run(Isa::Scalar);
        for isa in Isa::supported() {
            assert_eq!(run(isa), want, "{isa}");
        }
    }

    #[test]
    fn rows_of_a_swapped_view_rotate_by_their_position_on_one_thread_and_on_the_pool() {
        // Stored `[batch, len, heads, dim]` (a projection's output), read as the view with
        // the middle axes swapped, `[batch, heads, len, dim]`.
        let (batch, len, heads, dim) = (3, 5, 150, 8);
        let cos: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.1).cos()).collect();
        let sin: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.1).sin()).collect();
        let stored: Vec<f32> = (0..batch * len * heads * dim)
            .map(|i| (i % 13) as f32 - 6.0)
            .collect();
        let strides = vec![len * heads * dim, dim, heads * dim];
        let view = Rows::strided(&stored[..], 0, vec![batch, heads, len], strides, dim).unwrap();
        let y = rotate_half(&view, &cos, &sin);
        assert!(y.len() > TASK_VALUES, "the test covers the parallel path");
        for (r, y) in y.chunks(dim).enumerate() {
            let (b, h, p) = (r / (heads * len), r / len % heads, r % len);
            let x = &stored[((b * len + p) * heads + h) * dim..][..dim];
            for i in 0..dim {
                let rotated = if i < dim / 2 {
                    -x[i + dim / 2]
                } else {
                    x[i - dim / 2]
                };
                let want = x[i] * cos[p * dim + i] + rotated * sin[p * dim + i];
                assert_eq!(y[i].to_bits(), want.to_bits(), "row {r}, {i}");
            }
        }
    }
}
