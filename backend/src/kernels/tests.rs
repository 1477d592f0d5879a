//! The two ways sums are stored agree exactly on every path: by row (rows split across the pool,
//! a few tokens) and by token (the prefill bands, and the AVX-512 row-lane kernel); the
//! roofline loop runs what it claims.

use super::*;
use crate::i2s::{I2sWeights, ScaleConvention};
use crate::test_support::random;

#[test]
fn rows_split_across_tasks_give_the_sums_stored_by_token() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (seed, (m, n, k)) in [(2, 33, 300), (5, 100, 129), (17, 48, 1000), (31, 16, 4096)]
        .into_iter()
        .enumerate()
    {
        let seed = seed as u64;
        let ternary: Vec<i8> = random(n * k, seed, 1.5)
            .iter()
            .map(|v| v.round().clamp(-1.0, 1.0) as i8)
            .collect();
        let w = I2sWeights::from_ternary(&ternary, n, k, 0.5, ScaleConvention::Multiply).unwrap();
        let layout = w.layout();
        let x = random(m * k, seed + 100, 3.0);
        let xq = QuantizedActivations::new(&x, m, k, layout.k_padded(), layout.activation);
        let want = ternary_matmul_i32(Isa::Scalar, w.view(), &xq).unwrap();
        for isa in Isa::supported() {
            let mut by_row = Vec::new();
            pool.install(|| raw_dots(isa, &[w.view()], &xq, &mut by_row))
                .unwrap();
            let by_row: Vec<i32> = (0..m * n)
                .map(|i| by_row[(i % n) * m + i / n] - xq.sums[i / n])
                .collect();
            assert_eq!(by_row, want, "{isa}, by row, m={m} n={n} k={k}");
            let by_token = ternary_matmul_i32(isa, w.view(), &xq).unwrap();
            assert_eq!(by_token, want, "{isa}, by token, m={m} n={n} k={k}");
        }
    }
}

#[test]
fn the_roofline_loops_run_every_product() {
    // Every product is 1 x 2, so the lanes sum to twice the products; None only where the
    // path has no roofline or the CPU lacks it.
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
        match (
            multiply_roofline(isa, 3),
            roofline_of(isa).map(|r| r.products_per_step),
        ) {
            (Some(sum), Some(products)) => assert_eq!(sum as usize, 3 * products * 2, "{isa}"),
            (None, products) => assert!(products.is_none() || !isa.is_supported(), "{isa}"),
            (Some(_), None) => panic!("{isa}: a roofline without a product count"),
        }
    }
}

#[test]
fn halves_widen_as_half_widens_them_on_every_path() {
    // Every bit pattern, then a length that leaves a remainder after the sixteens.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for bits in [&all[..], &all[1000..1037]] {
        let want: Vec<u32> = bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32().to_bits())
            .collect();
        for isa in Isa::supported() {
            let mut wide = vec![0f32; bits.len()];
            widen_halves(isa, bits, &mut wide);
            let got: Vec<u32> = wide.iter().map(|w| w.to_bits()).collect();
            assert!(got == want, "{isa}, {} values", bits.len());
        }
    }
}
