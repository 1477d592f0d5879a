//! The I2_S + decode-copy formats, base-3 (for AVX-512) and LUT3 (for AVX2): each copy holds the
//! same weights, decode from it (on every path this CPU has) gives the I2_S kernels' bits, bad
//! bytes are refused, and the Burn op runs them.

mod common;

use bitnet_backend::base3::{i2s_base3_linear_group, i2s_base3_linear_group_quantized};
use bitnet_backend::kernels::{ternary_linear_group, ternary_linear_quantized};
use bitnet_backend::lut3::{i2s_lut3_linear_group, i2s_lut3_linear_group_quantized};
use bitnet_backend::{
    I2sBase3View, I2sBase3Weights, I2sLut3View, I2sLut3Weights, I2sWeights, Isa, KernelChoice,
    PackedFormat, QuantizedActivations, ScaleConvention, TernaryError, TernaryLayout,
};
use common::Rng;

/// Around whole base-3 groups of 640 weights (none, one, several, with and without leftover
/// blocks) and LUT3 octets of 24, and the model layouts' 1536, 3200, 4096 and 8640.
const KS: [usize; 15] = [
    1, 23, 24, 25, 127, 128, 639, 640, 641, 1000, 1536, 3200, 4096, 4099, 8640,
];

type Outputs = Result<Vec<Vec<f32>>, TernaryError>;
/// Layers as their layouts and packed bytes.
type Layers<'a> = [(TernaryLayout, &'a [u8])];

/// One decode-copy format, as these tests drive it: through its layout and bytes.
struct Format {
    packed: PackedFormat,
    /// `BITNET_KERNEL`'s name for it.
    kernel: &'static str,
    from_i2s: fn(&I2sWeights) -> (TernaryLayout, Vec<u8>),
    from_bytes: fn(TernaryLayout, Vec<u8>) -> Result<Vec<u8>, TernaryError>,
    /// The I2_S weights of the I2_S part.
    i2s: fn(TernaryLayout, &[u8]) -> I2sWeights,
    /// Weight `(r, c)` as the copy stores it.
    value: fn(TernaryLayout, &[u8], usize, usize) -> i8,
    quantized: fn(Isa, &Layers, &QuantizedActivations) -> Outputs,
    floats: fn(Isa, &Layers, &[f32], usize) -> Outputs,
}

fn base3_views<'a>(ws: &Layers<'a>) -> Vec<I2sBase3View<'a>> {
    ws.iter()
        .map(|&(l, b)| I2sBase3View::new(l, b).unwrap())
        .collect()
}

fn lut3_views<'a>(ws: &Layers<'a>) -> Vec<I2sLut3View<'a>> {
    ws.iter()
        .map(|&(l, b)| I2sLut3View::new(l, b).unwrap())
        .collect()
}

const FORMATS: [Format; 2] = [
    Format {
        packed: PackedFormat::I2sBase3,
        kernel: "base3",
        from_i2s: |w| I2sBase3Weights::from_i2s(w).into_parts(),
        from_bytes: |l, b| I2sBase3Weights::from_bytes(l, b).map(|w| w.into_parts().1),
        i2s: |l, b| {
            I2sBase3Weights::from_bytes(l, b.to_vec())
                .unwrap()
                .to_i2s()
                .unwrap()
        },
        value: |l, b, r, c| I2sBase3View::new(l, b).unwrap().base3().value(r, c),
        quantized: |isa, ws, x| i2s_base3_linear_group_quantized(isa, &base3_views(ws), x),
        floats: |isa, ws, x, m| i2s_base3_linear_group(isa, &base3_views(ws), x, m),
    },
    Format {
        packed: PackedFormat::I2sLut3,
        kernel: "lut3",
        from_i2s: |w| I2sLut3Weights::from_i2s(w).into_parts(),
        from_bytes: |l, b| I2sLut3Weights::from_bytes(l, b).map(|w| w.into_parts().1),
        i2s: |l, b| {
            I2sLut3Weights::from_bytes(l, b.to_vec())
                .unwrap()
                .to_i2s()
                .unwrap()
        },
        value: |l, b, r, c| I2sLut3View::new(l, b).unwrap().lut3().value(r, c),
        quantized: |isa, ws, x| i2s_lut3_linear_group_quantized(isa, &lut3_views(ws), x),
        floats: |isa, ws, x, m| i2s_lut3_linear_group(isa, &lut3_views(ws), x, m),
    },
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
fn each_copy_holds_every_weight_of_the_i2s_one() {
    for format in &FORMATS {
        for (seed, &k) in KS.iter().enumerate() {
            // Within one tile of LUT3 rows, and across tiles with a padded last one.
            for n in [9, 45] {
                let i2s = weights(seed as u64, n, k);
                let (layout, bytes) = (format.from_i2s)(&i2s);
                assert_eq!(layout.format, format.packed);
                assert_eq!(layout.packed_len(), bytes.len());
                assert_eq!((format.i2s)(layout, &bytes), i2s, "k={k}");
                for r in 0..n {
                    for c in 0..k {
                        let want = i2s.view().value(r, c);
                        let got = (format.value)(layout, &bytes, r, c);
                        assert_eq!(got, want, "{} k={k} r={r} c={c}", format.kernel);
                    }
                }
            }
        }
    }
}

#[test]
fn the_copies_read_fewer_bytes_than_i2s() {
    // Base-3: 1.6 bits per weight where k is whole groups, plus 2 bits for leftover blocks.
    let layout = weights(0, 1, 3200)
        .layout()
        .with_format(PackedFormat::I2sBase3);
    assert_eq!(layout.decode_row_bytes(), 640);
    assert_eq!(layout.row_bytes(), 800 + 640);
    let layout = weights(0, 1, 8640)
        .layout()
        .with_format(PackedFormat::I2sBase3);
    assert_eq!(layout.decode_row_bytes(), 13 * 128 + 3 * 32);
    // LUT3: 5 bytes per 24 columns, the padded k rounded up to whole octets; rows in tiles of 32.
    let layout = weights(0, 40, 3200)
        .layout()
        .with_format(PackedFormat::I2sLut3);
    assert_eq!(layout.decode_row_bytes(), 134 * 5);
    assert_eq!(layout.row_bytes(), 800 + 670);
    assert_eq!(layout.packed_rows(), 64);
    let layout = weights(0, 1, 8640)
        .layout()
        .with_format(PackedFormat::I2sLut3);
    assert_eq!(layout.decode_row_bytes(), 8640 / 24 * 5);
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
fn every_lut3_pattern_of_three_weights_is_kept() {
    // A row of the 27 patterns, then all over again negated, in every position of an octet.
    let k = 2 * 27 * 3 + 5;
    let format = &FORMATS[1];
    let w: Vec<i8> = (0..k)
        .map(|c| {
            let p = (c / 3 % 27) as i32;
            let digit = [p / 9, p / 3 % 3, p % 3][c % 3] as i8 - 1;
            if c / 81 == 1 { -digit } else { digit }
        })
        .collect();
    let i2s = I2sWeights::from_ternary(&w, 1, k, 1.0, ScaleConvention::Multiply).unwrap();
    let (layout, bytes) = (format.from_i2s)(&i2s);
    let got: Vec<i8> = (0..k)
        .map(|c| (format.value)(layout, &bytes, 0, c))
        .collect();
    assert_eq!(got, w);
}

#[test]
fn decode_from_each_copy_gives_the_i2s_bits_on_every_path() {
    let mut seed = 1;
    for format in &FORMATS {
        for &k in &KS {
            // Base-3 tiles of 8, 4 and single rows; LUT3 tiles of 32, whole and padded.
            for n in [1, 3, 4, 5, 12, 17, 32, 33, 64] {
                let i2s = weights(seed, n, k);
                let (layout, bytes) = (format.from_i2s)(&i2s);
                let xq = one_token(seed + 100, &i2s);
                let want = ternary_linear_quantized(Isa::Scalar, i2s.view(), &xq).unwrap();
                for isa in Isa::supported() {
                    let got = (format.quantized)(isa, &[(layout, &bytes)], &xq).unwrap();
                    assert_eq!(got[0], want, "{} k={k} n={n} {isa}", format.kernel);
                }
                seed += 1;
            }
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
    let i2s_views: Vec<_> = i2s.iter().map(I2sWeights::view).collect();
    for format in &FORMATS {
        let both: Vec<_> = i2s.iter().map(format.from_i2s).collect();
        let views: Vec<_> = both.iter().map(|(l, b)| (*l, b.as_slice())).collect();
        for m in [1, 3, 40] {
            let x = Rng::new(m as u64).floats(m * k);
            for isa in Isa::supported() {
                let want = ternary_linear_group(isa, &i2s_views, &x, m).unwrap();
                let got = (format.floats)(isa, &views, &x, m).unwrap();
                assert_eq!(got, want, "{} m={m} {isa}", format.kernel);
            }
        }
        let err = (format.floats)(Isa::Scalar, &views, &[0.0; 5], 1).unwrap_err();
        assert!(matches!(err, TernaryError::Shape(_)), "{err}");
    }
}

#[test]
fn extreme_weights_and_activations_stay_exact() {
    // Every weight +1 (the largest stored byte) or -1, every activation +-127, long rows.
    for format in &FORMATS {
        for isa in Isa::supported() {
            for (value, x) in [(1i8, 1.0f32), (1, -1.0), (-1, 1.0), (-1, -1.0)] {
                let k = 16000;
                let all = vec![value; 4 * k];
                let i2s =
                    I2sWeights::from_ternary(&all, 4, k, 1.0, ScaleConvention::Multiply).unwrap();
                let (layout, bytes) = (format.from_i2s)(&i2s);
                let xq = QuantizedActivations::new(
                    &vec![x; k],
                    1,
                    k,
                    layout.k_padded(),
                    layout.activation,
                );
                let want = ternary_linear_quantized(Isa::Scalar, i2s.view(), &xq).unwrap();
                let got = (format.quantized)(isa, &[(layout, &bytes)], &xq).unwrap();
                assert_eq!(got[0], want, "{} {isa} w={value} x={x}", format.kernel);
                assert_eq!(want[0], value as f32 * x * 127.0 * k as f32 / xq.scales[0]);
            }
        }
    }
}

#[test]
fn bad_bytes_are_refused_with_what_is_wrong() {
    let i2s = weights(5, 6, 1000);
    for format in &FORMATS {
        let (layout, bytes) = (format.from_i2s)(&i2s);
        let again = (format.from_bytes)(layout, bytes.clone()).unwrap();
        assert_eq!(again, bytes);
        let short = (format.from_bytes)(layout, bytes[1..].to_vec()).unwrap_err();
        assert!(matches!(short, TernaryError::Length { .. }), "{short}");
        // A byte of the copy that says other weights than the I2_S part.
        let mut other = bytes.clone();
        let last = other.len() - 100;
        other[last] = other[last].wrapping_add(1);
        let err = (format.from_bytes)(layout, other).unwrap_err().to_string();
        assert!(err.contains("copy") && err.contains("differs"), "{err}");
        // A code 3 in the I2_S part.
        let mut three = bytes.clone();
        three[0] = 0xff;
        let err = (format.from_bytes)(layout, three).unwrap_err();
        assert!(matches!(err, TernaryError::InvalidTernary { .. }), "{err}");
        assert_eq!(
            KernelChoice::parse(format.kernel).unwrap(),
            KernelChoice::Forced(format.packed)
        );
    }
}

/// Only with the Burn extension (the default feature).
#[cfg(feature = "burn")]
mod burn_op {
    use super::*;
    use bitnet_backend::{TernaryLinearExt, TernaryWeight, ternary_linear_group as burn_group};
    use burn::tensor::{DType, Device, Int, Tensor, TensorData};

    #[test]
    fn the_burn_op_runs_each_copy_like_i2s_weights() {
        let k = 700;
        let i2s: Vec<I2sWeights> = [20, 8].iter().map(|&n| weights(n as u64, n, k)).collect();
        #[allow(deprecated)]
        let ndarray = Device::ndarray();
        for (name, device) in [("flex", Device::flex()), ("ndarray", ndarray)] {
            let plain: Vec<_> = i2s
                .iter()
                .map(|w| TernaryWeight::from_i2s(w, &device))
                .collect();
            for format in &FORMATS {
                let both: Vec<_> = i2s
                    .iter()
                    .map(|w| {
                        // As a loaded module parameter: a `[packed_rows, row_bytes]` U8 tensor.
                        let (layout, bytes) = (format.from_i2s)(w);
                        let shape = [layout.packed_rows(), layout.row_bytes()];
                        let data = TensorData::new(bytes, shape);
                        let packed = Tensor::<2, Int>::from_data(data, (&device, DType::U8));
                        TernaryWeight::new(packed, layout).unwrap()
                    })
                    .collect();
                for shape in [[1, 1, k], [2, 3, k]] {
                    let x = Rng::new(4).floats(shape.iter().product());
                    let input = Tensor::<3>::from_data(TensorData::new(x, shape), &device);
                    let want =
                        burn_group(input.clone(), &plain.iter().collect::<Vec<_>>()).unwrap();
                    let got = burn_group(input.clone(), &both.iter().collect::<Vec<_>>()).unwrap();
                    for (got, want) in got.into_iter().zip(want) {
                        got.into_data().assert_eq(&want.into_data(), true);
                    }
                    let alone = input.clone().ternary_linear(&both[1]).unwrap();
                    let want = input.ternary_linear(&plain[1]).unwrap();
                    alone.into_data().assert_eq(&want.into_data(), true);
                }
                assert_eq!(
                    both[0].to_i2s().unwrap(),
                    i2s[0],
                    "{name} {}",
                    format.kernel
                );
                both[0]
                    .dequantize()
                    .into_data()
                    .assert_eq(&plain[0].dequantize().into_data(), true);
            }
        }
    }
}
