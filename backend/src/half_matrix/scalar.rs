//! Portable reference: the summation order of the SIMD path, one lane at a time.

use super::{ACCUMULATORS, Half, LANES, reduce_lanes};

/// `sum_c row[c] * x[c]`: columns in groups of `LANES` go round-robin to `ACCUMULATORS`
/// lane sets with fused multiply-adds; the sets are added pairwise, the lanes reduced by
/// [`reduce_lanes`], and the columns after the last whole group are added one by one.
pub(super) fn dot<H: Half>(row: &[H], x: &[f32]) -> f32 {
    let mut acc = [[0f32; LANES]; ACCUMULATORS];
    let groups = row.len() / LANES;
    for g in 0..groups {
        let acc = &mut acc[g % ACCUMULATORS];
        for (l, acc) in acc.iter_mut().enumerate() {
            let c = g * LANES + l;
            *acc = row[c].widen().mul_add(x[c], *acc);
        }
    }
    let lanes = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    let mut sum = reduce_lanes(lanes);
    for c in groups * LANES..row.len() {
        sum = row[c].widen().mul_add(x[c], sum);
    }
    sum
}
