//! The I2_S byte layout: bitnet.cpp round trip, constructors and malformed input.

mod common;

use bitnet_backend::i2s::{BITNET_TAIL_BYTES, BLOCK};
use bitnet_backend::{I2sWeights, ScaleConvention, TernaryError, TernaryLayout};
use common::Rng;

#[test]
fn layout_matches_bitnet_cpp_byte_for_byte() {
    // Row 0: weight p of the block = pattern chosen so each byte's four slots differ.
    let k = 2 * BLOCK;
    let mut w = vec![0i8; k];
    w[0] = 1; // byte 0, bits 7:6 -> code 2
    w[32] = -1; // byte 0, bits 5:4 -> code 0
    w[64] = 0; // byte 0, bits 3:2 -> code 1
    w[96] = 1; // byte 0, bits 1:0 -> code 2
    w[128 + 5] = -1; // second block, byte 5, bits 7:6 -> code 0
    let weights = I2sWeights::from_ternary(&w, 1, k, 0.5, ScaleConvention::Multiply).unwrap();
    let bytes = weights.to_bitnet_bytes().unwrap();
    assert_eq!(bytes.len(), k / 4 + BITNET_TAIL_BYTES);
    assert_eq!(bytes[0], 0b10_00_01_10);
    assert_eq!(bytes[1], 0b01_01_01_01);
    assert_eq!(bytes[32 + 5], 0b00_01_01_01);
    assert_eq!(&bytes[k / 4..k / 4 + 4], &0.5f32.to_le_bytes());
    assert!(bytes[k / 4 + 4..].iter().all(|&b| b == 0));
}

#[test]
fn bitnet_bytes_round_trip() {
    let mut rng = Rng::new(7);
    let (n, k) = (24, 384);
    let w = rng.ternaries(n * k);
    let weights = I2sWeights::from_ternary(&w, n, k, 0.125, ScaleConvention::Multiply).unwrap();
    let bytes = weights.to_bitnet_bytes().unwrap();
    let back = I2sWeights::from_bitnet_bytes(&bytes, n, k).unwrap();
    assert_eq!(back, weights);
    assert_eq!(back.to_bitnet_bytes().unwrap(), bytes);
    assert_eq!(back.view().ternary_values(), w);
}

#[test]
fn dequantize_follows_the_convention() {
    let w = [1i8, 0, -1, 1];
    let mul = I2sWeights::from_ternary(&w, 2, 2, 4.0, ScaleConvention::Multiply).unwrap();
    assert_eq!(mul.view().dequantize(), vec![4.0, 0.0, -4.0, 4.0]);
    let div = I2sWeights::from_ternary(&w, 2, 2, 4.0, ScaleConvention::Divide).unwrap();
    assert_eq!(div.view().dequantize(), vec![0.25, 0.0, -0.25, 0.25]);
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let ok = ScaleConvention::Multiply;
    // Wrong lengths.
    assert!(matches!(
        I2sWeights::from_ternary(&[1, 0], 1, 3, 1.0, ok),
        Err(TernaryError::Length {
            expected: 3,
            actual: 2,
            ..
        })
    ));
    assert!(matches!(
        I2sWeights::from_bitnet_bytes(&[0; 10], 1, 128),
        Err(TernaryError::Length { .. })
    ));
    assert!(matches!(
        I2sWeights::from_hf_packed(&[0; 3], 4, 2, 1.0, ok),
        Err(TernaryError::Length { .. })
    ));
    // Values outside {-1, 0, 1} and code 3.
    assert!(matches!(
        I2sWeights::from_ternary(&[2], 1, 1, 1.0, ok),
        Err(TernaryError::InvalidTernary { value: 2, .. })
    ));
    assert!(matches!(
        I2sWeights::from_hf_packed(&[3], 1, 1, 1.0, ok),
        Err(TernaryError::InvalidTernary { .. })
    ));
    let mut bytes = vec![0x55u8; 32 + BITNET_TAIL_BYTES];
    bytes[32..36].copy_from_slice(&1.0f32.to_le_bytes());
    assert!(I2sWeights::from_bitnet_bytes(&bytes, 1, 128).is_ok());
    bytes[7] = 0xFF;
    assert!(matches!(
        I2sWeights::from_bitnet_bytes(&bytes, 1, 128),
        Err(TernaryError::InvalidTernary { .. })
    ));
    // NaN, infinite, zero scales.
    for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0] {
        assert!(matches!(
            I2sWeights::from_ternary(&[1], 1, 1, bad, ok),
            Err(TernaryError::InvalidScale { .. })
        ));
        let mut bytes = vec![0x55u8; 32 + BITNET_TAIL_BYTES];
        bytes[32..36].copy_from_slice(&bad.to_le_bytes());
        assert!(matches!(
            I2sWeights::from_bitnet_bytes(&bytes, 1, 128),
            Err(TernaryError::InvalidScale { .. })
        ));
    }
    assert!(matches!(
        I2sWeights::from_latent(&[f32::NAN], 1, 1),
        Err(TernaryError::InvalidScale { .. })
    ));
    // Shapes bitnet.cpp cannot hold, zero and overflowing dimensions.
    assert!(matches!(
        I2sWeights::from_bitnet_bytes(&[0; 64], 1, 100),
        Err(TernaryError::Shape(_))
    ));
    let odd = I2sWeights::from_ternary(&[1; 100], 1, 100, 1.0, ok).unwrap();
    assert!(matches!(odd.to_bitnet_bytes(), Err(TernaryError::Shape(_))));
    assert!(matches!(
        TernaryLayout::new(0, 5, 1.0, ok),
        Err(TernaryError::Dimension(_))
    ));
    assert!(matches!(
        TernaryLayout::new(usize::MAX, 5, 1.0, ok),
        Err(TernaryError::Dimension(_))
    ));
    assert!(matches!(
        I2sWeights::from_bitnet_bytes(&[0; 64], usize::MAX, 128),
        Err(TernaryError::Dimension(_))
    ));
}

#[test]
fn hf_packing_handles_rows_not_divisible_by_four() {
    // n = 5: ceil(5/4) = 2 packed rows; plane i of packed row r holds weight row r + 2i.
    let (n, k) = (5, 3);
    let mut rng = Rng::new(3);
    let w = rng.ternaries(n * k);
    let planes = n.div_ceil(4);
    let mut packed = vec![0u8; planes * k];
    for r in 0..n {
        for c in 0..k {
            packed[(r % planes) * k + c] |= ((w[r * k + c] + 1) as u8) << (2 * (r / planes));
        }
    }
    let weights = I2sWeights::from_hf_packed(&packed, n, k, 1.0, ScaleConvention::Divide).unwrap();
    assert_eq!(weights.view().ternary_values(), w);
}
