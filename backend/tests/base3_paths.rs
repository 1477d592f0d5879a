//! I2_S + base-3 weights: the base-3 copy holds the same weights, decode from it (on every path
//! this CPU has) gives the I2_S kernels' bits, bad bytes are refused, and the Burn op runs it.

mod common;

use bitnet_backend::base3::{i2s_base3_linear_group, i2s_base3_linear_group_quantized};
use bitnet_backend::kernels::{ternary_linear_group, ternary_linear_quantized};
use bitnet_backend::{
    I2sBase3Weights, I2sWeights, Isa, KernelChoice, PackedFormat, QuantizedActivations,
    ScaleConvention, TernaryError,
};
use common::Rng;

/// Around whole groups of 640 weights (none, one, several, with and without leftover blocks),
/// and the model layouts' 1536, 3200, 4096 and 8640.
const KS: [usize; 12] = [
    1, 127, 128, 639, 640, 641, 1000, 1536, 3200, 4096, 4099, 8640,
];

fn weights(seed: u64, n: usize, k: usize) -> I2sWeights {
    let w = Rng::new(seed).ternaries(n * k);
    I2sWeights::from_ternary(&w, n, k, 0.37, ScaleConvention::Multiply).unwrap()
}

fn one_token(seed: u64, w: &I2sWeights) -> QuantizedActivations {
    let layout = w.layout();
    let x = Rng::new(seed).floats(layout.k);
    QuantizedActivations::new(&x, 1, layout.k, layout.k_padded(), layout.activation)
}

#[test]
fn the_base3_copy_holds_every_weight_of_the_i2s_one() {
    for (seed, &k) in KS.iter().enumerate() {
        let i2s = weights(seed as u64, 9, k);
        let both = I2sBase3Weights::from_i2s(&i2s);
        let view = both.view();
        assert_eq!(view.layout.format, PackedFormat::I2sBase3);
        assert_eq!(view.i2s().codes, i2s.codes(), "k={k}");
        for r in 0..9 {
            for c in 0..k {
                assert_eq!(
                    view.base3().value(r, c),
                    i2s.view().value(r, c),
                    "k={k} r={r} c={c}"
                );
            }
        }
        assert_eq!(both.to_i2s().unwrap(), i2s);
    }
    // At 1.6 bits per weight where k is whole groups, plus 2 bits for leftover blocks.
    let layout = weights(0, 1, 3200)
        .layout()
        .with_format(PackedFormat::I2sBase3);
    assert_eq!(layout.decode_row_bytes(), 640);
    assert_eq!(layout.row_bytes(), 800 + 640);
    let layout = weights(0, 1, 8640)
        .layout()
        .with_format(PackedFormat::I2sBase3);
    assert_eq!(layout.decode_row_bytes(), 13 * 128 + 3 * 32);
}

#[test]
fn every_trit_pattern_has_a_byte_that_yields_it() {
    // A row of 243 groups' first bytes covering every pattern of five weights.
    let k = 243 * 640;
    let mut w = vec![0i8; k];
    for v in 0..243 {
        let mut rest = v;
        for j in (0..5).rev() {
            w[v * 640 + j * 128] = (rest % 3) as i8 - 1;
            rest /= 3;
        }
    }
    let i2s = I2sWeights::from_ternary(&w, 1, k, 1.0, ScaleConvention::Multiply).unwrap();
    let both = I2sBase3Weights::from_i2s(&i2s);
    for v in 0..243 {
        let base3 = both.view().base3();
        let got: Vec<i8> = (0..5).map(|j| base3.value(0, v * 640 + j * 128)).collect();
        let want: Vec<i8> = (0..5).map(|j| w[v * 640 + j * 128]).collect();
        assert_eq!(got, want, "pattern {v}");
    }
}

#[test]
fn decode_from_base3_gives_the_i2s_bits_on_every_path() {
    let mut seed = 1;
    for &k in &KS {
        // Tiles of 8, 4 and single rows.
        for n in [1, 3, 4, 5, 12, 17, 64] {
            let i2s = weights(seed, n, k);
            let both = I2sBase3Weights::from_i2s(&i2s);
            let xq = one_token(seed + 100, &i2s);
            let want = ternary_linear_quantized(Isa::Scalar, i2s.view(), &xq).unwrap();
            for isa in Isa::supported() {
                let got = i2s_base3_linear_group_quantized(isa, &[both.view()], &xq).unwrap();
                assert_eq!(got[0], want, "k={k} n={n} {isa}");
            }
            seed += 1;
        }
    }
}

#[test]
fn a_group_and_several_tokens_give_the_i2s_bits() {
    // Three layers of one input (query, key, value), decode and a small prefill.
    let k = 1536;
    let i2s: Vec<I2sWeights> = [96, 32, 33]
        .iter()
        .map(|&n| weights(n as u64, n, k))
        .collect();
    let both: Vec<I2sBase3Weights> = i2s.iter().map(I2sBase3Weights::from_i2s).collect();
    let views: Vec<_> = both.iter().map(I2sBase3Weights::view).collect();
    let i2s_views: Vec<_> = i2s.iter().map(I2sWeights::view).collect();
    for m in [1, 3, 40] {
        let x = Rng::new(m as u64).floats(m * k);
        for isa in Isa::supported() {
            let want = ternary_linear_group(isa, &i2s_views, &x, m).unwrap();
            let got = i2s_base3_linear_group(isa, &views, &x, m).unwrap();
            assert_eq!(got, want, "m={m} {isa}");
        }
    }
    let err = i2s_base3_linear_group(Isa::Scalar, &views, &[0.0; 5], 1).unwrap_err();
    assert!(matches!(err, TernaryError::Shape(_)), "{err}");
}

#[test]
fn extreme_weights_and_activations_stay_exact() {
    // Every weight +1 (the largest stored byte) or -1, every activation +-127, long rows.
    for isa in Isa::supported() {
        for (value, x) in [(1i8, 1.0f32), (1, -1.0), (-1, 1.0), (-1, -1.0)] {
            let k = 16000;
            let i2s =
                I2sWeights::from_ternary(&vec![value; 4 * k], 4, k, 1.0, ScaleConvention::Multiply)
                    .unwrap();
            let both = I2sBase3Weights::from_i2s(&i2s);
            let layout = i2s.layout();
            let xq =
                QuantizedActivations::new(&vec![x; k], 1, k, layout.k_padded(), layout.activation);
            let want = ternary_linear_quantized(Isa::Scalar, i2s.view(), &xq).unwrap();
            let got = i2s_base3_linear_group_quantized(isa, &[both.view()], &xq).unwrap();
            assert_eq!(got[0], want, "{isa} w={value} x={x}");
            assert_eq!(want[0], value as f32 * x * 127.0 * k as f32 / xq.scales[0]);
        }
    }
}

#[test]
fn bad_bytes_are_refused_with_what_is_wrong() {
    let i2s = weights(5, 6, 1000);
    let both = I2sBase3Weights::from_i2s(&i2s);
    let layout = both.layout();
    let again = I2sBase3Weights::from_bytes(layout, both.bytes().to_vec()).unwrap();
    assert_eq!(again, both);
    let short = I2sBase3Weights::from_bytes(layout, both.bytes()[1..].to_vec()).unwrap_err();
    assert!(matches!(short, TernaryError::Length { .. }), "{short}");
    // A base-3 byte that says other weights than the I2_S copy.
    let mut other = both.bytes().to_vec();
    let last = other.len() - 200;
    other[last] = other[last].wrapping_add(1);
    let err = I2sBase3Weights::from_bytes(layout, other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("base-3 copy differs"), "{err}");
    // A code 3 in the I2_S copy.
    let mut three = both.bytes().to_vec();
    three[0] = 0xff;
    let err = I2sBase3Weights::from_bytes(layout, three).unwrap_err();
    assert!(matches!(err, TernaryError::InvalidTernary { .. }), "{err}");
    assert_eq!(
        KernelChoice::parse("base3").unwrap(),
        KernelChoice::Forced(PackedFormat::I2sBase3)
    );
}

/// Only with the Burn extension (the default feature).
#[cfg(feature = "burn")]
mod burn_op {
    use super::*;
    use bitnet_backend::{TernaryLinearExt, TernaryWeight, ternary_linear_group as burn_group};
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn the_burn_op_runs_base3_weights_like_i2s_ones() {
        let k = 700;
        let i2s: Vec<I2sWeights> = [20, 8].iter().map(|&n| weights(n as u64, n, k)).collect();
        #[allow(deprecated)]
        let ndarray = Device::ndarray();
        for (name, device) in [("flex", Device::flex()), ("ndarray", ndarray)] {
            let plain: Vec<_> = i2s
                .iter()
                .map(|w| TernaryWeight::from_i2s(w, &device))
                .collect();
            let both: Vec<_> = i2s
                .iter()
                .map(|w| TernaryWeight::from_i2s_base3(&I2sBase3Weights::from_i2s(w), &device))
                .collect();
            for shape in [[1, 1, k], [2, 3, k]] {
                let x = Rng::new(4).floats(shape.iter().product());
                let input = Tensor::<3>::from_data(TensorData::new(x, shape), &device);
                let want = burn_group(input.clone(), &plain.iter().collect::<Vec<_>>()).unwrap();
                let got = burn_group(input.clone(), &both.iter().collect::<Vec<_>>()).unwrap();
                for (got, want) in got.into_iter().zip(want) {
                    got.into_data().assert_eq(&want.into_data(), true);
                }
                let alone = input.clone().ternary_linear(&both[1]).unwrap();
                let want = input.ternary_linear(&plain[1]).unwrap();
                alone.into_data().assert_eq(&want.into_data(), true);
            }
            assert_eq!(both[0].to_i2s().unwrap(), i2s[0], "{name}");
            both[0]
                .dequantize()
                .into_data()
                .assert_eq(&plain[0].dequantize().into_data(), true);
        }
    }
}
