//! The ggml tensor types a ternary GGUF file holds, their byte sizes and how they decode.
//!
//! Float and block-quantized types decode to f32; the ternary types (bitnet.cpp's I2_S, llama.cpp's
//! TQ1_0 / TQ2_0) decode to exact ternary values and a per-tensor scale, so the backend can pack
//! them into I2_S without a float round trip.

use bitnet_backend::{I2sWeights, ScaleConvention};
use half::{bf16, f16};

/// Weights per block of the 256-element "k-quant" family (Q6_K, TQ1_0, TQ2_0).
const QK_K: usize = 256;
/// Weights per I2_S block (bytes are the flattened 128-weight blocks of the whole tensor).
const I2S_BLOCK: usize = 128;
/// bitnet.cpp appends 32 bytes to an I2_S tensor: the f32 scale, then padding.
const I2S_TAIL: usize = 32;

/// A ggml tensor type this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6K,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's lossless 2-bit ternary type.
    I2S,
}

impl GgmlType {
    /// The type of a ggml type code, or an error naming the code.
    pub fn from_code(code: u32) -> Result<Self, String> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::F16,
            8 => Self::Q8_0,
            14 => Self::Q6K,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            36 => Self::I2S,
            other => {
                return Err(format!(
                    "unsupported ggml tensor type {other} ({}); supported: F32, F16, BF16, Q8_0, \
                     Q6_K, TQ1_0, TQ2_0, I2_S",
                    known_name(other)
                ));
            }
        })
    }

    /// The ggml type code.
    pub fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Q6K => 14,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::I2S => 36,
        }
    }

    /// Elements per block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q6K => (QK_K, 210),
            Self::TQ1_0 => (QK_K, 54),
            Self::TQ2_0 => (QK_K, 66),
            Self::I2S => (4, 1),
        }
    }

    /// Bytes of a tensor of `elements` values whose rows hold `row` values, or an error when the
    /// rows do not split into whole blocks or the size overflows.
    pub fn byte_len(self, elements: u64, row: u64) -> Result<u64, String> {
        let (block, bytes) = self.block();
        let block = block as u64;
        // I2_S blocks run across rows (bitnet.cpp flattens the tensor), the others are per row.
        let splits = match self {
            Self::I2S => elements.is_multiple_of(block),
            _ => row.is_multiple_of(block),
        };
        if !splits {
            return Err(format!(
                "{self:?} needs rows of a multiple of {block} values, got {row}"
            ));
        }
        let tail = if self == Self::I2S {
            I2S_TAIL as u64
        } else {
            0
        };
        (elements / block)
            .checked_mul(bytes as u64)
            .and_then(|b| b.checked_add(tail))
            .ok_or_else(|| format!("{elements} {self:?} values overflow the size"))
    }

    /// Whether the type stores ternary weights (decoded with [`decode_ternary`]).
    pub fn is_ternary(self) -> bool {
        matches!(self, Self::I2S | Self::TQ1_0 | Self::TQ2_0)
    }
}

/// Names of ggml types we do not read, so the error says what the file holds.
fn known_name(code: u32) -> &'static str {
    match code {
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        15 => "Q8_K",
        16..=23 | 29 => "an IQ type",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        37 => "I8_S",
        _ => "unknown",
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Decodes `elements` values of a float or block-quantized type; `bytes` must hold exactly
/// [`GgmlType::byte_len`] bytes (the caller checked it).
pub fn decode_float(ty: GgmlType, bytes: &[u8], elements: usize) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(elements);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q6K => bytes.chunks_exact(210).for_each(|b| q6k_block(b, &mut out)),
        GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2S => {
            let (values, scales) = ternary_blocks(ty, bytes, elements)?;
            let per_scale = elements / scales.len().max(1);
            out.extend(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| t as f32 * scales[i / per_scale]),
            );
        }
    }
    Ok(out)
}

/// One Q6_K super-block: 128 low nibbles, 64 bytes of high bits, 16 int8 sub-scales, f16 scale.
fn q6k_block(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (j, &q) in q.iter().enumerate() {
                let scale = sc[is + 2 * j] as i8 as f32;
                y[l + 32 * j] = d * scale * (q as i32 - 32) as f32;
            }
        }
        out.extend_from_slice(&y);
    }
}

/// One trit of a TQ1_0 byte: the byte holds base-3 digits scaled to fill 0..=255.
fn tq1_trit(byte: u8, position: usize) -> i8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = byte.wrapping_mul(POW3[position]);
    ((q as u16 * 3) >> 8) as i8 - 1
}

/// Ternary values and the scales of their blocks (one per tensor for I2_S).
fn ternary_blocks(
    ty: GgmlType,
    bytes: &[u8],
    elements: usize,
) -> Result<(Vec<i8>, Vec<f32>), String> {
    let mut values = Vec::with_capacity(elements);
    let mut scales = Vec::new();
    match ty {
        GgmlType::I2S => {
            let body = elements / 4;
            for block in bytes[..body].chunks_exact(I2S_BLOCK / 4) {
                for shift in [6, 4, 2, 0] {
                    for &b in block {
                        let code = (b >> shift) & 3;
                        if code == 3 {
                            return Err(format!(
                                "I2_S code 3 at weight {} (codes are 0, 1, 2)",
                                values.len()
                            ));
                        }
                        values.push(code as i8 - 1);
                    }
                }
            }
            scales.push(f32::from_le_bytes(
                bytes[body..body + 4].try_into().expect("4-byte scale"),
            ));
        }
        GgmlType::TQ2_0 => {
            for block in bytes.chunks_exact(66) {
                for half in block[..64].chunks_exact(32) {
                    for shift in [0, 2, 4, 6] {
                        for &b in half {
                            let code = (b >> shift) & 3;
                            if code == 3 {
                                return Err(format!(
                                    "TQ2_0 code 3 at weight {} (codes are 0, 1, 2)",
                                    values.len()
                                ));
                            }
                            values.push(code as i8 - 1);
                        }
                    }
                }
                scales.push(f16_at(block, 64));
            }
        }
        GgmlType::TQ1_0 => {
            for block in bytes.chunks_exact(54) {
                let (qs, qh) = (&block[..48], &block[48..52]);
                for (chunk, width) in [(&qs[..32], 32), (&qs[32..], 16)] {
                    for n in 0..5 {
                        values.extend(chunk[..width].iter().map(|&b| tq1_trit(b, n)));
                    }
                }
                for n in 0..4 {
                    values.extend(qh.iter().map(|&b| tq1_trit(b, n)));
                }
                scales.push(f16_at(block, 52));
            }
        }
        other => return Err(format!("{other:?} is not a ternary type")),
    }
    Ok((values, scales))
}

/// Decodes a ternary tensor `[n, k]` into packed I2_S weights with bitnet.cpp's convention
/// (`y = acc / x_scale * scale`).
///
/// TQ1_0 / TQ2_0 carry one f16 scale per 256 weights; a BitNet model has one scale per tensor,
/// so every block that holds a non-zero weight must carry the same scale.
pub fn decode_ternary(
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
    k: usize,
) -> Result<I2sWeights, String> {
    if ty == GgmlType::I2S && k.is_multiple_of(I2S_BLOCK) {
        // Rows are whole blocks: bitnet.cpp's bytes are already our I2_S rows.
        return I2sWeights::from_bitnet_bytes(bytes, n, k).map_err(|e| e.to_string());
    }
    let (values, scales) = ternary_blocks(ty, bytes, n * k)?;
    let per_scale = (n * k) / scales.len().max(1);
    let mut scale = None;
    for (i, &s) in scales.iter().enumerate() {
        let block = &values[i * per_scale..(i + 1) * per_scale];
        if block.iter().all(|&t| t == 0) {
            continue;
        }
        match scale {
            None => scale = Some(s),
            Some(first) if first == s => {}
            Some(first) => {
                return Err(format!(
                    "block {i} has scale {s}, block 0 has {first}: per-block scales are not a \
                     per-tensor ternary model"
                ));
            }
        }
    }
    // An all-zero tensor has no meaningful scale; any valid one computes the same zeros.
    let scale = scale.unwrap_or(1.0);
    I2sWeights::from_ternary(&values, n, k, scale, ScaleConvention::Multiply)
        .map_err(|e| e.to_string())
}

/// Reads a float tensor `[n, k]` whose values are ternary times one scale (a ternarized model
/// saved as F32/F16/BF16) into I2_S weights, or `None` if the values are not of that form.
pub fn ternary_from_floats(values: &[f32], n: usize, k: usize) -> Option<I2sWeights> {
    let scale = values.iter().map(|v| v.abs()).find(|&v| v != 0.0)?;
    let ternary = values
        .iter()
        .map(|&v| {
            if v == scale {
                Some(1)
            } else if v == -scale {
                Some(-1)
            } else if v == 0.0 {
                Some(0)
            } else {
                None
            }
        })
        .collect::<Option<Vec<i8>>>()?;
    I2sWeights::from_ternary(&ternary, n, k, scale, ScaleConvention::Multiply).ok()
}

/// Encodes ternary weights as bitnet.cpp's I2_S tensor bytes: the flattened 128-weight blocks
/// of the whole `[n, k]` tensor, then the f32 scale and padding. `n * k` must be a multiple of
/// 128 (bitnet.cpp itself also needs `k` to be).
pub fn encode_i2s(weights: &I2sWeights) -> Result<Vec<u8>, String> {
    let layout = weights.layout();
    let (n, k) = (layout.n, layout.k);
    if k.is_multiple_of(I2S_BLOCK) {
        return weights.to_bitnet_bytes().map_err(|e| e.to_string());
    }
    if !(n * k).is_multiple_of(I2S_BLOCK) {
        return Err(format!(
            "I2_S needs a multiple of {I2S_BLOCK} weights, [{n}, {k}] has {}",
            n * k
        ));
    }
    let view = weights.view();
    let flat = |i: usize| (view.value(i / k, i % k) + 1) as u8;
    let mut bytes = Vec::with_capacity(n * k / 4 + I2S_TAIL);
    for block in (0..n * k).step_by(I2S_BLOCK) {
        bytes.extend((0..I2S_BLOCK / 4).map(|p| {
            (0..4).fold(0u8, |b, j| {
                b | (flat(block + p + 32 * j) << (6 - 2 * j as u32))
            })
        }));
    }
    let scale = match layout.convention {
        ScaleConvention::Multiply => layout.scale,
        ScaleConvention::Divide => 1.0 / layout.scale,
    };
    bytes.extend_from_slice(&scale.to_le_bytes());
    bytes.resize(n * k / 4 + I2S_TAIL, 0);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tq1_trits_decode_every_base3_digit() {
        // llama.cpp packs five trits t0..t4 (digits 0..2) as ceil(sum(t_i 3^(4-i)) * 256 / 243).
        for digits in 0..243u32 {
            let trits: Vec<u32> = (0..5).rev().map(|i| (digits / 3u32.pow(i)) % 3).collect();
            let byte = ((digits * 256).div_ceil(243)) as u8;
            for (n, &t) in trits.iter().enumerate() {
                assert_eq!(
                    tq1_trit(byte, n),
                    t as i8 - 1,
                    "digits {digits} position {n}"
                );
            }
        }
    }

    /// A deterministic ternary sequence.
    fn trits(len: usize, seed: u64) -> Vec<i8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    /// llama.cpp's `quantize_row_tq2_0_ref` layout: byte `j + m` of a block holds weights
    /// `4j + m + 32n` (n = 0..4) in bits `2n`, for j in {0, 32}.
    fn encode_tq2(values: &[i8], d: f16) -> Vec<u8> {
        let mut out = Vec::new();
        for block in values.chunks_exact(QK_K) {
            for j in [0, 32] {
                for m in 0..32 {
                    out.push((0..4).fold(0u8, |q, n| {
                        q | (((block[4 * j + m + 32 * n] + 1) as u8) << (2 * n))
                    }));
                }
            }
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    /// Five (or four, then shifted) base-3 digits, most significant first, scaled to a byte.
    fn pack_trits(digits: impl Iterator<Item = i8>, shift: bool) -> u8 {
        let mut q = digits.fold(0u16, |q, t| q * 3 + (t + 1) as u16);
        if shift {
            q *= 3;
        }
        ((q * 256).div_ceil(243)) as u8
    }

    /// llama.cpp's `quantize_row_tq1_0_ref` layout.
    fn encode_tq1(values: &[i8], d: f16) -> Vec<u8> {
        let mut out = Vec::new();
        for block in values.chunks_exact(QK_K) {
            for m in 0..32 {
                out.push(pack_trits((0..5).map(|n| block[m + 32 * n]), false));
            }
            for m in 0..16 {
                out.push(pack_trits((0..5).map(|n| block[160 + m + 16 * n]), false));
            }
            for j in 0..4 {
                out.push(pack_trits((0..4).map(|m| block[240 + j + 4 * m]), true));
            }
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    #[test]
    fn tq1_and_tq2_decode_llama_cpp_layouts_exactly() {
        let (n, k) = (3, 512);
        let values = trits(n * k, 7);
        let d = f16::from_f32(0.25);
        for (ty, bytes) in [
            (GgmlType::TQ2_0, encode_tq2(&values, d)),
            (GgmlType::TQ1_0, encode_tq1(&values, d)),
        ] {
            assert_eq!(
                bytes.len() as u64,
                ty.byte_len((n * k) as u64, k as u64).unwrap()
            );
            let weights = decode_ternary(ty, &bytes, n, k).unwrap();
            let view = weights.view();
            for (i, &t) in values.iter().enumerate() {
                assert_eq!(view.value(i / k, i % k), t, "{ty:?} weight {i}");
            }
            assert_eq!(weights.layout().scale, 0.25);
            let floats = decode_float(ty, &bytes, n * k).unwrap();
            assert!(
                floats
                    .iter()
                    .zip(&values)
                    .all(|(f, &t)| *f == t as f32 * 0.25)
            );
        }
    }

    #[test]
    fn per_block_scales_that_differ_are_rejected() {
        let values = trits(512, 3);
        let mut bytes = encode_tq2(&values, f16::from_f32(0.5));
        let second_scale = 66 + 64;
        bytes[second_scale..second_scale + 2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let err = decode_ternary(GgmlType::TQ2_0, &bytes, 1, 512).unwrap_err();
        assert!(err.contains("per-block scales"), "{err}");
    }

    #[test]
    fn q8_0_and_q6_k_decode() {
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let values = decode_float(GgmlType::Q8_0, &q8, 32).unwrap();
        assert!(
            values
                .iter()
                .enumerate()
                .all(|(i, v)| *v == (i as f32 - 16.0) * 0.5)
        );

        // Q6_K: 6-bit q (0..63, minus 32) times an int8 scale per 16 values times d.
        let q: Vec<u8> = (0..256).map(|i| (i * 7 % 64) as u8).collect();
        let scales: Vec<i8> = (0..16).map(|i| i as i8 - 8).collect();
        let mut block = vec![0u8; 210];
        for half in 0..2 {
            for l in 0..32 {
                for j in 0..4 {
                    let v = q[128 * half + l + 32 * j];
                    let ql = 64 * half + l + 32 * (j % 2);
                    block[ql] |= (v & 0xF) << (4 * (j / 2));
                    block[128 + 32 * half + l] |= (v >> 4) << (2 * j);
                }
            }
        }
        for (i, s) in scales.iter().enumerate() {
            block[192 + i] = *s as u8;
        }
        block[208..].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        let values = decode_float(GgmlType::Q6K, &block, 256).unwrap();
        for (i, v) in values.iter().enumerate() {
            let want = 2.0 * scales[i / 16] as f32 * (q[i] as i32 - 32) as f32;
            assert_eq!(*v, want, "value {i}");
        }
    }

    #[test]
    fn byte_lengths_match_ggml() {
        assert_eq!(GgmlType::Q6K.byte_len(512, 256), Ok(420));
        assert_eq!(GgmlType::TQ2_0.byte_len(256, 256), Ok(66));
        assert_eq!(GgmlType::I2S.byte_len(256 * 128, 128), Ok(8192 + 32));
        assert!(GgmlType::Q8_0.byte_len(48, 48).is_err());
        assert!(GgmlType::F32.byte_len(u64::MAX, 1).is_err());
    }
}
