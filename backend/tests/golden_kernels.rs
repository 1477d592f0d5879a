//! Every case of ../shared/golden/kernels: quantization, packing, accumulators and outputs are
//! bit-exact on every instruction set this CPU has.

mod common;

use bitnet_backend::kernels::{ternary_linear_quantized, ternary_matmul_i32};
use bitnet_backend::{ActivationScale, I2sWeights, Isa, QuantizedActivations, ScaleConvention};
use common::{Golden, golden_dir};

struct Case {
    id: String,
    m: usize,
    k: usize,
    n: usize,
}

fn cases() -> Option<(Golden, Vec<Case>)> {
    let dir = golden_dir()?.join("kernels");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("kernel_manifest.json")).expect("kernel manifest"),
    )
    .expect("manifest is JSON");
    let cases = manifest["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            id: c["id"].as_str().unwrap().to_string(),
            m: c["m"].as_u64().unwrap() as usize,
            k: c["k"].as_u64().unwrap() as usize,
            n: c["n"].as_u64().unwrap() as usize,
        })
        .collect();
    Some((Golden::open(dir.join("kernel_vectors.safetensors")), cases))
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn activation_quantization_is_bit_exact() {
    let Some((g, cases)) = cases() else { return };
    for c in &cases {
        let x = g.f32(&format!("{}.x", c.id));
        let xq = QuantizedActivations::new(
            &x,
            c.m,
            c.k,
            c.k.div_ceil(128) * 128,
            ActivationScale::Reciprocal,
        );
        let want_q = g.i8(&format!("{}.x_q", c.id));
        for t in 0..c.m {
            assert_eq!(
                &xq.row(t)[..c.k],
                &want_q[t * c.k..(t + 1) * c.k],
                "{} x_q row {t}",
                c.id
            );
            assert!(xq.row(t)[c.k..].iter().all(|&v| v == 0), "{} padding", c.id);
            let sum: i32 = want_q[t * c.k..(t + 1) * c.k]
                .iter()
                .map(|&v| v as i32)
                .sum();
            assert_eq!(xq.sums[t], sum, "{} sum row {t}", c.id);
        }
        assert_bits_eq(
            &format!("{} x_scale", c.id),
            &xq.scales,
            &g.f32(&format!("{}.x_scale", c.id)),
        );
    }
}

/// bitnet.cpp's rule (f64 division rounded once) is a different function from HF's reciprocal
/// product: the golden rows show both that they differ and that each is computed exactly.
#[test]
fn bitnet_cpp_activation_scale_is_the_rounded_quotient() {
    let Some((g, cases)) = cases() else { return };
    let mut differing_rows = 0;
    for c in &cases {
        let x = g.f32(&format!("{}.x", c.id));
        let hf = g.f32(&format!("{}.x_scale", c.id));
        let xq = QuantizedActivations::new(
            &x,
            c.m,
            c.k,
            c.k.div_ceil(128) * 128,
            ActivationScale::Quotient,
        );
        for (t, row) in x.chunks_exact(c.k).enumerate() {
            let amax = row.iter().fold(1e-5f32, |a, v| a.max(v.abs()));
            let want = (127.0f64 / amax as f64) as f32;
            assert_eq!(xq.scales[t].to_bits(), want.to_bits(), "{} row {t}", c.id);
            differing_rows += usize::from(want != hf[t]);
        }
    }
    assert!(
        differing_rows > 0,
        "the golden rows no longer tell the two rules apart"
    );
}

#[test]
fn accumulators_and_outputs_are_exact_on_every_path() {
    let Some((g, cases)) = cases() else { return };
    for c in &cases {
        let x = g.f32(&format!("{}.x", c.id));
        let w = g.i8(&format!("{}.w_ternary", c.id));
        let acc = g.i32(&format!("{}.acc", c.id));
        let mul = g.f32(&format!("{}.weight_scale_mul", c.id))[0];
        let div = g.f32(&format!("{}.weight_scale_div", c.id))[0];
        let w_mul = I2sWeights::from_ternary(&w, c.n, c.k, mul, ScaleConvention::Multiply).unwrap();
        let w_div = I2sWeights::from_ternary(&w, c.n, c.k, div, ScaleConvention::Divide).unwrap();
        let xq = QuantizedActivations::new(
            &x,
            c.m,
            c.k,
            w_mul.layout().k_padded(),
            ActivationScale::Reciprocal,
        );
        for isa in Isa::supported() {
            let what = format!("{} on {isa}", c.id);
            assert_eq!(
                ternary_matmul_i32(isa, w_mul.view(), &xq).unwrap(),
                acc,
                "{what}: acc"
            );
            let y = ternary_linear_quantized(isa, w_mul.view(), &xq).unwrap();
            assert_bits_eq(
                &format!("{what}: y_autobitlinear_intpath"),
                &y,
                &g.f32(&format!("{}.y_autobitlinear_intpath", c.id)),
            );
            let y = ternary_linear_quantized(isa, w_div.view(), &xq).unwrap();
            assert_bits_eq(
                &format!("{what}: y_bitlinear"),
                &y,
                &g.f32(&format!("{}.y_bitlinear", c.id)),
            );
            let y_float = g.f32(&format!("{}.y_autobitlinear", c.id));
            let y = ternary_linear_quantized(isa, w_mul.view(), &xq).unwrap();
            assert_close(&what, &y, &y_float, 1e-5);
        }
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}[{i}]: {g} vs {w} (tolerance {rel} x {scale})"
        );
    }
}

#[test]
fn hf_packed_weights_repack_exactly() {
    let Some((g, cases)) = cases() else { return };
    let mut packed_cases = 0;
    for c in &cases {
        let name = format!("{}.w_packed", c.id);
        if !g.has(&name) {
            continue;
        }
        packed_cases += 1;
        let w = g.i8(&format!("{}.w_ternary", c.id));
        let mul = g.f32(&format!("{}.weight_scale_mul", c.id))[0];
        let from_hf =
            I2sWeights::from_hf_packed(&g.u8(&name), c.n, c.k, mul, ScaleConvention::Multiply)
                .unwrap();
        assert_eq!(from_hf.view().ternary_values(), w, "{}", c.id);
        let direct =
            I2sWeights::from_ternary(&w, c.n, c.k, mul, ScaleConvention::Multiply).unwrap();
        assert_eq!(from_hf, direct, "{}", c.id);
    }
    assert!(packed_cases > 0, "the golden set has packed cases");
}

#[test]
fn latent_weights_ternarize_by_absmean() {
    let Some((g, cases)) = cases() else { return };
    for c in &cases {
        let latent = g.f32(&format!("{}.w_latent_f16", c.id));
        let w = I2sWeights::from_latent(&latent, c.n, c.k).unwrap();
        let want_s = g.f32(&format!("{}.w_latent_s", c.id))[0];
        let s = w.layout().scale;
        assert!(
            (s - want_s).abs() <= 1e-6 * want_s,
            "{}: s {s} vs {want_s}",
            c.id
        );
        assert_eq!(
            w.view().ternary_values(),
            g.i8(&format!("{}.w_latent_ternary", c.id)),
            "{}",
            c.id
        );
        let x = g.f32(&format!("{}.x", c.id));
        let xq = QuantizedActivations::new(
            &x,
            c.m,
            c.k,
            w.layout().k_padded(),
            ActivationScale::Reciprocal,
        );
        for isa in Isa::supported() {
            let acc = ternary_matmul_i32(isa, w.view(), &xq).unwrap();
            assert_eq!(
                acc,
                g.i32(&format!("{}.acc_latent", c.id)),
                "{} on {isa}",
                c.id
            );
            let y = ternary_linear_quantized(isa, w.view(), &xq).unwrap();
            assert_close(
                &format!("{} y_1bitllm on {isa}", c.id),
                &y,
                &g.f32(&format!("{}.y_1bitllm", c.id)),
                1e-5,
            );
        }
    }
}
