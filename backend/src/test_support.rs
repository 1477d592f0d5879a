//! Helpers the unit tests of several modules share.

use crate::kernels::Isa;

/// `len` deterministic values in `[-amplitude, amplitude)` (xorshift on `seed`).
pub(crate) fn random(len: usize, seed: u64, amplitude: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amplitude
        })
        .collect()
}

/// Asserts that `run` gives the bits of `want` on every path this CPU supports.
pub(crate) fn assert_every_path_gives(want: &[f32], what: &str, run: impl Fn(Isa) -> Vec<f32>) {
    for isa in Isa::supported() {
        let got = run(isa);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what} on {isa}");
    }
}
