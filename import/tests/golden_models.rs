//! Every model under ../shared/golden, loaded from its HF directory on Flex and NdArray, against
//! HF transformers' own outputs: greedy tokens through the KV cache, logits at every position,
//! per-layer hidden states, and the debug layer's int8 inputs and int32 accumulators.

#[path = "../../backend/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use bitnet_backend::Isa;
use bitnet_backend::QuantizedActivations;
use bitnet_backend::kernels::ternary_matmul_i32;
use bitnet_import::load_hf_model;
use bitnet_model::{
    BitLinear, BitNetModel, CacheType, KvCache, ModelError, token_nll, token_nll_with_cache,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Golden, golden_dir};

struct Case {
    name: String,
    model_dir: PathBuf,
    golden: Golden,
    debug_layer: usize,
    sequences: Vec<Sequence>,
}

struct Sequence {
    id: String,
    input_ids: Vec<i64>,
    greedy: Vec<i64>,
}

fn cases() -> Option<Vec<Case>> {
    let dir = golden_dir()?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect()
    };
    Some(
        manifest["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().unwrap().into(),
                model_dir: dir.join(c["model_dir"].as_str().unwrap()),
                golden: Golden::open(dir.join(c["golden_file"].as_str().unwrap())),
                debug_layer: c["debug_layer"].as_u64().unwrap() as usize,
                sequences: c["sequences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| Sequence {
                        id: s["id"].as_str().unwrap().into(),
                        input_ids: ids(&s["input_ids"]),
                        greedy: ids(&s["greedy_next16"]),
                    })
                    .collect(),
            })
            .collect(),
    )
}

fn devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![("flex", Device::flex()), ("ndarray", ndarray)]
}

fn load(dir: &Path, device: &Device) -> BitNetModel {
    load_hf_model(dir, device).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn tokens(ids: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Max and mean absolute difference.
fn diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let d: Vec<f32> = got.iter().zip(want).map(|(g, w)| (g - w).abs()).collect();
    (max_abs(&d), d.iter().sum::<f32>() / d.len() as f32)
}

/// The manifest's tiers: strict `max|d| <= 1e-4 * max(1, absmax)` where no int8 rounding flips;
/// hard `max|d| <= 0.1 * absmax` and `mean|d| <= 0.01 * absmax` everywhere. Returns the tier met.
fn tier(what: &str, got: &[f32], want: &[f32]) -> &'static str {
    let absmax = max_abs(want);
    let (max, mean) = diff(got, want);
    if max <= 1e-4 * absmax.max(1.0) {
        return "strict";
    }
    assert!(
        max <= 0.1 * absmax && mean <= 0.01 * absmax,
        "{what}: max|d|={max}, mean|d|={mean} exceed the hard limit (absmax {absmax})"
    );
    "hard"
}

fn argmax(row: &[f32]) -> i64 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as i64
}

/// Prefill, then one token at a time through the KV cache.
fn greedy(model: &BitNetModel, prompt: &[i64], steps: usize, device: &Device) -> Vec<i64> {
    let mut cache = model.new_cache(1, prompt.len() + steps).unwrap();
    let vocab = model.config.vocab_size;
    let mut logits = model.forward(tokens(prompt, device), &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..steps {
        let [_, len, _] = logits.dims();
        let last = values(logits.slice([0..1, len - 1..len, 0..vocab]));
        let next = argmax(&last);
        out.push(next);
        logits = model.forward(tokens(&[next], device), &mut cache).unwrap();
    }
    out
}

#[test]
fn greedy_tokens_through_the_kv_cache_equal_the_reference() {
    let Some(cases) = cases() else { return };
    for case in &cases {
        for (device_name, device) in devices() {
            let model = load(&case.model_dir, &device);
            for seq in &case.sequences {
                let got = greedy(&model, &seq.input_ids, seq.greedy.len(), &device);
                assert_eq!(got, seq.greedy, "{} {} on {device_name}", case.name, seq.id);
            }
        }
    }
}

#[test]
fn logits_and_hidden_states_match_the_reference() {
    let Some(cases) = cases() else { return };
    for case in &cases {
        for (device_name, device) in devices() {
            let model = load(&case.model_dir, &device);
            for seq in &case.sequences {
                let what = format!("{} {} on {device_name}", case.name, seq.id);
                let g = |name: &str| case.golden.f32(&format!("{}.{name}", seq.id));
                let mut cache = model.new_cache(1, seq.input_ids.len()).unwrap();
                let (logits, hidden) = model
                    .forward_with_hidden(tokens(&seq.input_ids, &device), &mut cache)
                    .unwrap();
                let logits_tier = tier(&format!("{what} logits"), &values(logits), &g("logits"));
                tier(&format!("{what} embed"), &values(hidden.embed), &g("embed"));
                let mut hidden_tiers = Vec::new();
                for (l, h) in hidden.layers.into_iter().enumerate() {
                    let name = format!("hidden.{l}");
                    hidden_tiers.push(tier(&format!("{what} {name}"), &values(h), &g(&name)));
                }
                tier(
                    &format!("{what} final_norm"),
                    &values(hidden.final_norm),
                    &g("final_norm"),
                );
                eprintln!("{what}: logits {logits_tier}, hidden {hidden_tiers:?}");
            }
        }
    }
}

/// The opt-in int8 LM head, fed one position at a time (decode-sized calls, which use it), keeps
/// every position's logits within the manifest's hard limit.
#[test]
fn int8_head_logits_stay_within_the_hard_limit() {
    decode_within_the_hard_limit("int8 head", |model| {
        let model = model.with_int8_head().unwrap();
        assert!(model.int8_head.is_some() && model.half_head.is_none());
        model
    });
}

/// Generation with the opt-in int8 LM head (the prompt's last position and every decode step go
/// through it) picks the reference's greedy tokens, as the manifest requires of any variant.
#[test]
fn int8_head_keeps_the_reference_greedy_tokens() {
    let Some(cases) = cases() else { return };
    let device = Device::flex();
    for case in &cases {
        let model = load(&case.model_dir, &device).with_int8_head().unwrap();
        for seq in &case.sequences {
            let got = greedy(&model, &seq.input_ids, seq.greedy.len(), &device);
            assert_eq!(
                got, seq.greedy,
                "{} {} with the int8 head",
                case.name, seq.id
            );
        }
    }
}

/// The opt-in f16 KV cache, fed one position at a time (each step reads every earlier
/// position's rounded keys and values), keeps every position's logits within the hard limit.
#[test]
fn f16_cache_logits_stay_within_the_hard_limit() {
    decode_within_the_hard_limit("f16 cache", |model| {
        model.with_cache_type(CacheType::F16).unwrap()
    });
}

/// Every golden sequence decoded one position at a time by each case's model as `variant`
/// makes it, its logits checked against the reference's (the hard limit must hold; the tier
/// reached is printed).
fn decode_within_the_hard_limit(what: &str, variant: impl Fn(BitNetModel) -> BitNetModel) {
    let Some(cases) = cases() else { return };
    let device = Device::flex();
    for case in &cases {
        let model = variant(load(&case.model_dir, &device));
        for seq in &case.sequences {
            let mut cache = model.new_cache(1, seq.input_ids.len()).unwrap();
            let mut got = Vec::new();
            for &id in &seq.input_ids {
                got.extend(values(
                    model.forward(tokens(&[id], &device), &mut cache).unwrap(),
                ));
            }
            let want = case.golden.f32(&format!("{}.logits", seq.id));
            let what = format!("{} {} {what}", case.name, seq.id);
            let (max, mean) = diff(&got, &want);
            let absmax = max_abs(&want);
            tier(&what, &got, &want);
            eprintln!(
                "{what}: max|d| {:.4} mean|d| {:.5} of absmax",
                max / absmax,
                mean / absmax
            );
        }
    }
}

/// Each decoder layer fed the reference's own input reproduces the reference's output.
#[test]
fn each_layer_teacher_forced_matches_the_reference() {
    let Some(cases) = cases() else { return };
    for case in &cases {
        let device = Device::flex();
        let model = load(&case.model_dir, &device);
        let hidden = model.config.hidden_size;
        for seq in &case.sequences {
            let len = seq.input_ids.len();
            let (cos, sin) = model.rope.cos_sin(0, len, &device);
            for (l, layer) in model.layers.iter().enumerate() {
                let input = match l {
                    0 => "embed".to_string(),
                    _ => format!("hidden.{}", l - 1),
                };
                let x = case.golden.f32(&format!("{}.{input}", seq.id));
                let x = Tensor::<3>::from_data(TensorData::new(x, [1, len, hidden]), &device);
                let mut cache = KvCache::new(
                    1,
                    1,
                    model.config.num_key_value_heads,
                    model.config.head_dim(),
                    len,
                    CacheType::F32,
                    &device,
                )
                .unwrap();
                let y = layer
                    .forward(x, (&cos, &sin), cache.layer_mut(0), 0)
                    .unwrap();
                let want = case.golden.f32(&format!("{}.hidden.{l}", seq.id));
                let (max, _) = diff(&values(y), &want);
                let scale = max_abs(&want);
                assert!(
                    max <= 0.05 * scale,
                    "{} {} layer {l}: max|d|={max} (max|h|={scale})",
                    case.name,
                    seq.id
                );
            }
        }
    }
}

fn projection<'a>(model: &'a BitNetModel, layer: usize, name: &str) -> &'a BitLinear {
    let l = &model.layers[layer];
    match name {
        "self_attn.q_proj" => &l.self_attn.q_proj,
        "self_attn.k_proj" => &l.self_attn.k_proj,
        "self_attn.v_proj" => &l.self_attn.v_proj,
        "self_attn.o_proj" => &l.self_attn.o_proj,
        "mlp.gate_proj" => &l.mlp.gate_proj,
        "mlp.up_proj" => &l.mlp.up_proj,
        "mlp.down_proj" => &l.mlp.down_proj,
        other => panic!("unknown projection {other}"),
    }
}

/// The debug layer's BitLinears fed the reference inputs: int8 inputs equal (the manifest allows
/// a rare +-1 flip), scales to 1e-6, int32 accumulators exact where the int8 rows agree, and the
/// float output to 1e-5 of its largest value.
#[test]
fn debug_layer_bitlinears_are_exact() {
    let Some(cases) = cases() else { return };
    for case in &cases {
        let device = Device::flex();
        let model = load(&case.model_dir, &device);
        let d = case.debug_layer;
        for seq in &case.sequences {
            for proj in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                let what = format!("{} {} layer{d}.{proj}", case.name, seq.id);
                let key = |field: &str| format!("{}.layer{d}.{proj}.{field}", seq.id);
                let linear = projection(&model, d, proj);
                let layout = linear.layout;
                let (m, k) = (seq.input_ids.len(), layout.k);
                // The BitLinear's own pre-norm, when it has one, must reproduce `x`.
                let x = case.golden.f32(&key("x"));
                if let Some(norm) = &linear.norm {
                    let pre = case.golden.f32(&key("x_pre_rms_norm"));
                    let normed = norm.forward(Tensor::<2>::from_data(
                        TensorData::new(pre, [m, k]),
                        &device,
                    ));
                    let normed = normed.expect("the pre-norm fits the layer's input");
                    let (max, _) = diff(&values(normed), &x);
                    assert!(max <= 1e-5 * max_abs(&x), "{what}: rms_norm max|d|={max}");
                }
                let xq = QuantizedActivations::new(&x, m, k, layout.k_padded(), layout.activation);
                let want_q = case.golden.i8(&key("x_q"));
                let want_scale = case.golden.f32(&key("x_scale"));
                let want_acc = case.golden.i32(&key("acc"));
                let weights = linear.to_i2s().unwrap();
                let acc = ternary_matmul_i32(Isa::best(), weights.view(), &xq).unwrap();
                let mut flips = 0;
                for t in 0..m {
                    let got_row = &xq.row(t)[..k];
                    let want_row = &want_q[t * k..(t + 1) * k];
                    let row_flips = got_row
                        .iter()
                        .zip(want_row)
                        .filter(|(a, b)| a != b)
                        .inspect(|(a, b)| {
                            assert!(
                                (**a as i32 - **b as i32).abs() <= 1,
                                "{what}: x_q off by more than 1"
                            )
                        })
                        .count();
                    flips += row_flips;
                    let rel = (xq.scales[t] - want_scale[t]).abs() / want_scale[t];
                    assert!(rel <= 1e-6, "{what}: x_scale row {t} rel {rel}");
                    if row_flips == 0 {
                        assert_eq!(
                            &acc[t * layout.n..(t + 1) * layout.n],
                            &want_acc[t * layout.n..(t + 1) * layout.n],
                            "{what}: acc row {t}"
                        );
                    }
                }
                assert!(
                    flips * 1000 <= m * k,
                    "{what}: {flips} int8 flips of {}",
                    m * k
                );
                // The module's input is before its own pre-norm.
                let input = match linear.norm {
                    Some(_) => case.golden.f32(&key("x_pre_rms_norm")),
                    None => x,
                };
                let y = linear
                    .forward(Tensor::<2>::from_data(
                        TensorData::new(input, [m, k]),
                        &device,
                    ))
                    .unwrap();
                let want_y = case.golden.f32(&key("y"));
                let (max, _) = diff(&values(y), &want_y);
                assert!(max <= 1e-5 * max_abs(&want_y), "{what}: y max|d|={max}");
            }
        }
    }
}

/// HF caches RoPE's inverse frequencies in 1bitLLM checkpoints: ours must equal them.
#[test]
fn rope_frequencies_equal_the_checkpoint_buffer() {
    let Some(cases) = cases() else { return };
    for case in cases.iter().filter(|c| c.name.starts_with("bitnet_b158")) {
        let model = load(&case.model_dir, &Device::flex());
        let ckpt = Golden::open(case.model_dir.join("model.safetensors"));
        let want = ckpt.f32("model.layers.0.self_attn.rotary_emb.inv_freq");
        let got = model.rope.inv_freq();
        assert_eq!(got.len(), want.len(), "{}: inv_freq length", case.name);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= f32::EPSILON * w.abs(),
                "{}: inv_freq {g} vs {w}",
                case.name
            );
        }
    }
}

#[test]
fn perplexity_nll_equals_the_one_from_the_golden_logits() {
    let Some(cases) = cases() else { return };
    for case in &cases {
        let model = load(&case.model_dir, &Device::flex());
        // One cache reused across the sequences must score as a fresh one does.
        let longest = case.sequences.iter().map(|s| s.input_ids.len()).max();
        let mut reused = model.new_cache(1, longest.unwrap_or(1)).unwrap();
        // A one-token sequence has nothing to predict.
        for seq in case.sequences.iter().filter(|s| s.input_ids.len() > 1) {
            let ids: Vec<u32> = seq.input_ids.iter().map(|&t| t as u32).collect();
            let golden = case.golden.f32(&format!("{}.logits", seq.id));
            let vocab = golden.len() / ids.len();
            // -log softmax(golden logits of position j - 1)[token j], in f64.
            let want: Vec<f64> = (1..ids.len())
                .map(|j| {
                    let row = &golden[(j - 1) * vocab..j * vocab];
                    let max = row.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
                    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                    max + sum.ln() - row[ids[j] as usize] as f64
                })
                .collect();
            let got = token_nll(&model, &ids, 1).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let in_reused = token_nll_with_cache(&model, &mut reused, &ids, 1)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(in_reused, got, "{} {}: reused cache", case.name, seq.id);
            let mut short = model.new_cache(1, ids.len() - 1).unwrap();
            assert!(matches!(
                token_nll_with_cache(&model, &mut short, &ids, 1),
                Err(ModelError::ContextOverflow { .. })
            ));
            assert_eq!(got.len(), want.len());
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3,
                    "{} {} token {}: nll {g} vs golden {w}",
                    case.name,
                    seq.id,
                    j + 1
                );
            }
        }
    }
}
