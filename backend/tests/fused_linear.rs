//! The float steps fused into a ternary layer's quantization (the RMSNorm before a group of
//! layers; the gated activation and sub-norm before a down projection) give the bits of the
//! separate ops, in every packed format, on Flex, NdArray and Autodiff, gradients included.

mod common;

use bitnet_backend::{
    FfnActivation, I2sBase3Weights, I2sLut3Weights, I2sWeights, LutWeights, ScaleConvention,
    TernaryWeight, gated_activation, gated_rms_norm_ternary_linear, rms_norm,
    rms_norm_ternary_linear_group, ternary_linear, ternary_linear_group,
};
use burn::tensor::{Device, Tensor, TensorData};
use common::Rng;

fn devices() -> Vec<(String, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    let plain = [("flex", Device::flex()), ("ndarray", ndarray)];
    plain
        .into_iter()
        .flat_map(|(name, device)| {
            let autodiff = device.clone().autodiff();
            [
                (name.to_string(), device),
                (format!("{name}+autodiff"), autodiff),
            ]
        })
        .collect()
}

/// The layers `ns` rows each, uploaded in `format`: "i2s", "base3", "lut3", "lut" or "mixed" (the
/// last layer in the LUT format, the others I2_S).
fn layers(seed: u64, ns: &[usize], k: usize, format: &str, device: &Device) -> Vec<TernaryWeight> {
    let mut rng = Rng::new(seed);
    let last = ns.len() - 1;
    ns.iter()
        .enumerate()
        .map(|(i, &n)| {
            let w = rng.ternaries(n * k);
            let w = I2sWeights::from_ternary(&w, n, k, 0.5 + i as f32, ScaleConvention::Divide)
                .unwrap();
            match format {
                "base3" => TernaryWeight::from_i2s_base3(&I2sBase3Weights::from_i2s(&w), device),
                "lut3" => TernaryWeight::from_i2s_lut3(&I2sLut3Weights::from_i2s(&w), device),
                "lut" => TernaryWeight::from_lut(&LutWeights::from_i2s(w.view()), device),
                "mixed" if i == last => {
                    TernaryWeight::from_lut(&LutWeights::from_i2s(w.view()), device)
                }
                _ => TernaryWeight::from_i2s(&w, device),
            }
        })
        .collect()
}

fn tensor<const D: usize>(values: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

#[test]
fn a_normed_group_gives_the_bits_of_the_norm_then_the_group() {
    // k = 1300 pads to whole blocks and to base-3 groups with I2_S blocks left over; 1 token is
    // decode, 37 a prefill split over the pool.
    let k = 1300;
    let mut rng = Rng::new(41);
    let weight: Vec<f32> = rng.floats(k).iter().map(|w| 1.0 + w).collect();
    for tokens in [1, 37] {
        let x = rng.floats(tokens * k);
        for ns in [vec![19], vec![8, 5], vec![16, 4, 4], vec![3, 1, 7, 12]] {
            for format in ["i2s", "base3", "lut3", "lut", "mixed"] {
                for (name, device) in devices() {
                    let weights = layers(ns.len() as u64, &ns, k, format, &device);
                    let weights: Vec<_> = weights.iter().collect();
                    let (x, norm) = (
                        tensor(&x, [1, tokens, k], &device),
                        tensor(&weight, [k], &device),
                    );
                    let fused =
                        rms_norm_ternary_linear_group(x.clone(), norm.clone(), 1e-6, &weights);
                    let normed = rms_norm(x, norm, 1e-6).unwrap();
                    let separate = ternary_linear_group(normed, &weights).unwrap();
                    for (got, want) in fused.unwrap().into_iter().zip(separate) {
                        got.into_data().assert_eq(&want.into_data(), true);
                    }
                    println!("{name} {format} {ns:?} x{tokens}: same bits");
                }
            }
        }
    }
}

#[test]
fn a_gated_down_projection_gives_the_bits_of_the_separate_ops() {
    let (n, k) = (23, 700);
    let mut rng = Rng::new(43);
    let weight: Vec<f32> = rng.floats(k).iter().map(|w| 1.0 + w).collect();
    for tokens in [1, 20] {
        let (gate, up) = (rng.floats(tokens * k), rng.floats(tokens * k));
        for activation in [FfnActivation::Silu, FfnActivation::Relu2] {
            for format in ["i2s", "base3", "lut3", "lut"] {
                for (name, device) in devices() {
                    let w = layers(7, &[n], k, format, &device).remove(0);
                    let shape = [tokens, k];
                    let (g, u) = (tensor(&gate, shape, &device), tensor(&up, shape, &device));
                    let norm = tensor(&weight, [k], &device);
                    let fused = gated_rms_norm_ternary_linear(
                        g.clone(),
                        u.clone(),
                        activation,
                        norm.clone(),
                        1e-5,
                        &w,
                    )
                    .unwrap();
                    let h = gated_activation(g, u, activation).unwrap();
                    let want = ternary_linear(rms_norm(h, norm, 1e-5).unwrap(), &w).unwrap();
                    fused.into_data().assert_eq(&want.into_data(), true);
                    println!("{name} {format} {activation:?} x{tokens}: same bits");
                }
            }
        }
    }
}

#[test]
fn gradients_reach_the_input_and_the_norm_weight_as_through_the_separate_ops() {
    let (ns, k) = ([7, 5, 3], 130);
    let mut rng = Rng::new(47);
    let (x, weight, up) = (rng.floats(2 * 3 * k), rng.floats(k), rng.floats(2 * 3 * k));
    for (name, device) in devices().into_iter().filter(|(_, d)| d.is_autodiff()) {
        let weights = layers(5, &ns, k, "i2s", &device);
        let weights: Vec<_> = weights.iter().collect();
        let inputs = || {
            (
                tensor(&x, [2, 3, k], &device).require_grad(),
                tensor(&weight, [k], &device).require_grad(),
                tensor(&up, [2, 3, k], &device).require_grad(),
            )
        };
        // Every layer of the normed group, and the gated down projection of the same input as
        // gate, summed.
        let down = layers(6, &[9], k, "i2s", &device).remove(0);
        let (x_got, w_got, u_got) = inputs();
        let group =
            rms_norm_ternary_linear_group(x_got.clone(), w_got.clone(), 1e-5, &weights).unwrap();
        let gated = gated_rms_norm_ternary_linear(
            x_got.clone(),
            u_got.clone(),
            FfnActivation::Silu,
            w_got.clone(),
            1e-5,
            &down,
        )
        .unwrap();
        let total = group.into_iter().fold(gated.sum(), |t, y| t + y.sum());
        let grads = total.backward();
        let (x_want, w_want, u_want) = inputs();
        let normed = rms_norm(x_want.clone(), w_want.clone(), 1e-5).unwrap();
        let group = ternary_linear_group(normed, &weights).unwrap();
        let h = gated_activation(x_want.clone(), u_want.clone(), FfnActivation::Silu).unwrap();
        let gated = ternary_linear(rms_norm(h, w_want.clone(), 1e-5).unwrap(), &down).unwrap();
        let total = group.into_iter().fold(gated.sum(), |t, y| t + y.sum());
        let want = total.backward();
        let data = |t: Option<Tensor<3>>| t.expect("gradient").into_data();
        for (got, want) in [
            (data(x_got.grad(&grads)), data(x_want.grad(&want))),
            (data(u_got.grad(&grads)), data(u_want.grad(&want))),
        ] {
            got.assert_eq(&want, true);
        }
        let got = w_got.grad(&grads).expect("gradient").into_data();
        got.assert_eq(&w_want.grad(&want).expect("gradient").into_data(), true);
        println!("{name}: gradients agree");
    }
}

#[test]
fn wrong_shapes_are_errors_naming_them() {
    let device = Device::flex();
    let k = 10;
    let w = layers(1, &[4], k, "i2s", &device).remove(0);
    let x = Tensor::<2>::zeros([3, k], &device);
    let err = rms_norm_ternary_linear_group(x.clone(), Tensor::ones([k + 1], &device), 1e-5, &[&w])
        .unwrap_err();
    assert!(err.to_string().contains("width 11"), "{err}");
    let err = rms_norm_ternary_linear_group(x.clone(), Tensor::ones([k], &device), 1e-5, &[])
        .unwrap_err();
    assert!(err.to_string().contains("at least one layer"), "{err}");
    let wide = Tensor::<2>::zeros([3, k + 2], &device);
    let norm = || Tensor::ones([k], &device);
    let err = rms_norm_ternary_linear_group(wide.clone(), norm(), 1e-5, &[&w]).unwrap_err();
    assert!(err.to_string().contains("k=10"), "{err}");
    let relu2 = FfnActivation::Relu2;
    let err = gated_rms_norm_ternary_linear(x.clone(), wide.clone(), relu2, norm(), 1e-5, &w)
        .unwrap_err();
    assert!(err.to_string().contains("one shape"), "{err}");
    let err =
        gated_rms_norm_ternary_linear(wide.clone(), wide, relu2, norm(), 1e-5, &w).unwrap_err();
    assert!(err.to_string().contains("k=10"), "{err}");
    let err =
        gated_rms_norm_ternary_linear(x.clone(), x, relu2, Tensor::ones([3], &device), 1e-5, &w)
            .unwrap_err();
    assert!(err.to_string().contains("width 3"), "{err}");
}
