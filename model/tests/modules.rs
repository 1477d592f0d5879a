//! The modules on their own: random models built from a config, KV-cache decoding equal to full
//! recompute, and `BitLinear::from_linear`.

use bitnet_backend::ScaleConvention;
use bitnet_model::{
    BitLinear, BitNetConfig, CacheType, FfnActivation, Llama3RopeScaling, TernaryLinearSpec,
};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

fn devices() -> Vec<Device> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![Device::flex(), ndarray]
}

fn config(activation: FfnActivation, sub_norms: bool, tied: bool) -> BitNetConfig {
    BitNetConfig::new(
        97,
        48,
        80,
        2,
        6,
        2,
        TernaryLinearSpec::new(ScaleConvention::Multiply),
    )
    .with_activation(activation)
    .with_sub_norms(sub_norms)
    .with_tie_word_embeddings(tied)
    .with_rope_theta(500000.0)
    .with_rope_scaling(Some(Llama3RopeScaling::new(8.0, 1.0, 4.0, 64)))
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

#[test]
fn incremental_decoding_equals_full_recompute() {
    let ids: Vec<i64> = vec![3, 17, 42, 5, 96, 0, 11, 64, 23];
    for device in devices() {
        for (activation, sub_norms, tied) in [
            (FfnActivation::Relu2, true, true),
            (FfnActivation::Silu, false, false),
        ] {
            let model = config(activation, sub_norms, tied).init(&device).unwrap();
            let all =
                Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
            let full = values(model.forward_full(all).unwrap());
            let mut cache = model.new_cache(1, 16).unwrap();
            let mut incremental = Vec::new();
            // A prefill of 4 tokens, then one token at a time.
            let prefill =
                Tensor::<2, Int>::from_data(TensorData::new(ids[..4].to_vec(), [1, 4]), &device);
            incremental.extend(values(model.forward(prefill, &mut cache).unwrap()));
            for &id in &ids[4..] {
                let one = Tensor::<2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
                incremental.extend(values(model.forward(one, &mut cache).unwrap()));
            }
            assert_eq!(cache.len(), ids.len());
            let absmax = full.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in incremental.iter().zip(&full).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * absmax.max(1.0),
                    "logit {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn logits_of_some_positions_are_those_rows_of_the_full_logits() {
    let ids: Vec<i64> = vec![3, 17, 42, 5, 96, 0, 11, 64, 23, 7, 1, 50];
    let len = ids.len();
    for device in devices() {
        let model = config(FfnActivation::Relu2, true, true)
            .init(&device)
            .unwrap();
        let tokens =
            || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, len]), &device);
        let full = values(model.forward_full(tokens()).unwrap());
        let vocab = full.len() / len;
        // Nine rows, three, and the last alone (a packed model's 16-bit head copy takes up to
        // eight rows, the f32 matmul more).
        for positions in [2..11, 5..8, len - 1..len] {
            let mut cache = model.new_cache(1, len).unwrap();
            let some = model
                .forward_positions(tokens(), &mut cache, positions.clone())
                .unwrap();
            assert_eq!(some.dims(), [1, positions.len(), vocab]);
            assert_eq!(cache.len(), len, "every position enters the cache");
            let expected = &full[positions.start * vocab..positions.end * vocab];
            let absmax = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in values(some).iter().zip(expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * absmax.max(1.0),
                    "logit {i}: {a} vs {b}"
                );
            }
        }
        for positions in [3..3, 4..len + 1] {
            let mut cache = model.new_cache(1, len).unwrap();
            let err = model
                .forward_positions(tokens(), &mut cache, positions)
                .unwrap_err();
            assert!(err.to_string().contains("positions"), "{err}");
            assert_eq!(cache.len(), 0, "a bad range is refused before any work");
        }
    }
}

#[test]
fn decode_bytes_count_what_a_step_reads() {
    let device = Device::flex();
    let model = config(FfnActivation::Relu2, true, true)
        .init(&device)
        .unwrap();
    // Every projection's k (48 or 80) packs into one 32-byte block per row: q and o have 48
    // rows, k and v 2 heads of 8, gate and up 80, down 48.
    let codes = (48 + 16 + 16 + 48 + 80 + 80 + 48) * 32;
    // Input and post-attention norms, the attention sub-norm (6 heads of 8), the FFN sub-norm.
    let norms = 4 * (48 + 48 + 48 + 80);
    // Keys and values of 2 heads of 8 in f32, for the 4 positions a step after 3 attends.
    let kv = 2 * 2 * 8 * 4 * 4;
    let rest = 4 * 48 + 4 * 48; // the final norm and one embedding row
    let f32_head = 4 * 97 * 48;
    assert_eq!(
        model.decode_bytes(3),
        (2 * (codes + norms + kv) + rest + f32_head) as u64
    );
    let model = model.with_int8_head().unwrap();
    assert_eq!(
        model.decode_bytes(3),
        (2 * (codes + norms + kv) + rest + 97 * 48 + 4 * 97) as u64
    );
}

#[test]
fn from_linear_ternarizes_by_absmean() {
    let device = Device::flex();
    let linear = LinearConfig::new(130, 7).with_bias(false).init(&device);
    let bit = BitLinear::from_linear(&linear).unwrap();
    let w = linear.weight.val(); // [k, n]
    let s = 1.0 / w.clone().abs().mean().into_scalar::<f32>().max(1e-5);
    let ternary = (w * s).round().clamp(-1.0, 1.0) / s; // dequantized, [k, n]
    let x: Tensor<2> = Tensor::random([3, 130], Distribution::Uniform(-2.0, 2.0), &device);
    // Quantize-dequantize the input per token as the layer does, then a float matmul.
    let amax = x.clone().abs().max_dim(1).clamp_min(1e-5);
    let scale = amax.recip() * 127.0;
    let xq = (x.clone() * scale.clone()).round().clamp(-128.0, 127.0) / scale;
    let want = xq.matmul(ternary).into_data();
    let got = bit.forward(x).unwrap().into_data();
    got.assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::absolute(1e-4));

    let with_bias = LinearConfig::new(4, 4).init(&device);
    assert!(BitLinear::from_linear(&with_bias).is_err());
}

#[test]
fn invalid_configs_are_errors() {
    let device = Device::flex();
    let mut bad = config(FfnActivation::Silu, false, false);
    bad.num_key_value_heads = 4;
    assert!(
        bad.init(&device)
            .unwrap_err()
            .to_string()
            .contains("num_key_value_heads")
    );
    let mut bad = config(FfnActivation::Silu, false, false);
    bad.hidden_size = 0;
    assert!(bad.init(&device).is_err());
}

#[test]
fn an_f16_cache_is_an_option_of_backends_with_f16_tensors_and_halves_its_bytes() {
    let config = config(FfnActivation::Silu, false, false);
    #[allow(deprecated)]
    let ndarray = config.init(&Device::ndarray()).unwrap();
    let err = ndarray.with_cache_type(CacheType::F16).unwrap_err();
    assert!(
        err.to_string().contains("NdArray has no 16-bit floats"),
        "{err}"
    );
    let parsed = ["f32", "f16"].map(|name| name.parse::<CacheType>().unwrap());
    assert_eq!(parsed, [CacheType::F32, CacheType::F16]);
    let err = "bf16".parse::<CacheType>().unwrap_err().to_string();
    assert!(
        err.contains("`bf16`") && err.contains("f32 or f16"),
        "{err}"
    );

    let device = Device::flex();
    let exact = config.init(&device).unwrap();
    let cache_bytes =
        |model: &bitnet_model::BitNetModel| model.decode_bytes(100) - model.decode_bytes(0);
    let (full, exact_bytes) = (exact.clone(), cache_bytes(&exact));
    let half = exact.with_cache_type(CacheType::F16).unwrap();
    assert_eq!(cache_bytes(&half) * 2, exact_bytes);
    // Decoding through the rounded cache stays close to the exact one (and is not identical,
    // so the cache really holds f16 values).
    let ids: Vec<i64> = vec![3, 17, 42, 5, 96, 0, 11, 64, 23];
    let decode = |model: &bitnet_model::BitNetModel| {
        let mut cache = model.new_cache(1, ids.len()).unwrap();
        ids.iter()
            .flat_map(|&id| {
                let one = Tensor::<2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
                values(model.forward(one, &mut cache).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let (want, got) = (decode(&full), decode(&half));
    let absmax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        max > 0.0 && max <= 1e-2 * absmax,
        "max|d| {max} of {absmax}"
    );
}

#[test]
fn a_profiled_cache_times_every_phase_and_changes_no_logit() {
    let device = Device::flex();
    let model = config(FfnActivation::Relu2, true, true)
        .init(&device)
        .unwrap();
    let tokens = |ids: Vec<i64>| {
        let len = ids.len();
        Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device)
    };
    let run = |cache: &mut bitnet_model::KvCache| {
        let mut logits = values(model.forward(tokens(vec![3, 17, 42, 5]), cache).unwrap());
        for id in [96, 0] {
            let last = model.forward_last(tokens(vec![id]), cache).unwrap();
            logits.extend(last.into_data().try_to_vec::<f32>().unwrap());
        }
        logits
    };
    let mut plain = model.new_cache(1, 8).unwrap();
    let mut profiled = model.new_cache(1, 8).unwrap();
    profiled.start_profile();
    let start = std::time::Instant::now();
    let logits = run(&mut profiled);
    let wall = start.elapsed();
    assert_eq!(logits, run(&mut plain));

    let profile = profiled.stop_profile().expect("profiling was started");
    for (phase, time) in profile.phases() {
        assert!(!time.is_zero(), "{phase} was not timed: {profile:?}");
    }
    assert!(profile.total() <= wall, "{profile:?} in {wall:?}");
    assert_eq!(plain.stop_profile(), None);
    // Stopped: later forwards are not timed.
    profiled.clear();
    run(&mut profiled);
    assert_eq!(profiled.stop_profile(), None);
}
