//! The Burn extension's ternary linear ops on Flex, NdArray and Autodiff: equal to a float
//! matmul with the dequantized weights, with the input gradient `dy · W`; layers grouped on one
//! input give each layer its own bits and gradient; wrong shapes are errors. (The fused float
//! ops are in `burn_float_ops.rs`.)

mod burn_support;
mod common;

use bitnet_backend::{
    I2sWeights, LutWeights, ScaleConvention, TernaryLinearExt, TernaryWeight, ternary_linear,
    ternary_linear_group,
};
use burn::tensor::{Device, Tensor, TensorData};
use burn_support::{devices, relative_to_max};
use common::Rng;

fn setup(seed: u64, n: usize, k: usize, convention: ScaleConvention) -> (I2sWeights, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w = rng.ternaries(n * k);
    let weights = I2sWeights::from_ternary(&w, n, k, 0.8, convention).unwrap();
    (weights, rng.floats(2 * 3 * k))
}

/// The same product in float: quantize-dequantize x per token, then matmul with the float weights.
fn float_reference(x: &[f32], k: usize, weights: &I2sWeights, device: &Device) -> Tensor<2> {
    let m = x.len() / k;
    let xq = bitnet_backend::QuantizedActivations::new(x, m, k, k, weights.layout().activation);
    let x_dq: Vec<f32> = (0..m)
        .flat_map(|t| xq.row(t).iter().map(move |&q| (t, q)))
        .map(|(t, q)| q as f32 / xq.scales[t])
        .collect();
    let x_dq = Tensor::<2>::from_data(TensorData::new(x_dq, [m, k]), device);
    let w = Tensor::<2>::from_data(
        TensorData::new(weights.view().dequantize(), [weights.layout().n, k]),
        device,
    );
    x_dq.matmul(w.transpose())
}

#[test]
fn burn_op_equals_float_matmul_with_dequantized_weights() {
    let (n, k) = (19, 300);
    for convention in [ScaleConvention::Multiply, ScaleConvention::Divide] {
        let (weights, x) = setup(5, n, k, convention);
        for (name, device) in devices() {
            let w = TernaryWeight::from_i2s(&weights, &device);
            let input = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, k]), &device);
            let y = input.ternary_linear(&w).unwrap();
            assert_eq!(y.dims(), [2, 3, n], "{name}");
            let want = float_reference(&x, k, &weights, &device).reshape([2, 3, n]);
            let want = want.into_data();
            y.into_data()
                .assert_approx_eq::<f32>(&want, relative_to_max(&want, 1e-5));
            // Dequantized weights through the op equal the host dequantization.
            let host = Tensor::<2>::from_data(
                TensorData::new(weights.view().dequantize(), [n, k]),
                &device,
            );
            w.dequantize()
                .into_data()
                .assert_eq(&host.into_data(), true);
        }
    }
}

#[test]
fn autodiff_gradient_is_dy_times_dequantized_weights() {
    let (n, k) = (7, 130);
    let (weights, x) = setup(11, n, k, ScaleConvention::Multiply);
    for (name, device) in devices() {
        let device = device.autodiff();
        let w = TernaryWeight::from_i2s(&weights, &device);
        let input =
            Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, k]), &device).require_grad();
        let y = ternary_linear(input.clone(), &w).unwrap();
        let dy = Tensor::<3>::from_data(
            TensorData::new(Rng::new(4).floats(2 * 3 * n), [2, 3, n]),
            &device,
        );
        let grads = (y * dy.clone()).sum().backward();
        let grad = input.grad(&grads).expect("input has a gradient");
        let w_float = Tensor::<2>::from_data(
            TensorData::new(weights.view().dequantize(), [n, k]),
            &device.clone(),
        );
        let want = dy.reshape([6, n]).matmul(w_float).reshape([2, 3, k]);
        assert_eq!(grad.dims(), [2, 3, k], "{name}");
        let want = want.inner().into_data();
        grad.into_data()
            .assert_approx_eq::<f32>(&want, relative_to_max(&want, 1e-5));
    }
}

/// Layers of one input, `n` rows each, with a different scale per layer.
fn group_weights(seed: u64, ns: &[usize], k: usize) -> Vec<I2sWeights> {
    let mut rng = Rng::new(seed);
    ns.iter()
        .enumerate()
        .map(|(i, &n)| {
            let w = rng.ternaries(n * k);
            I2sWeights::from_ternary(&w, n, k, 0.5 + i as f32, ScaleConvention::Divide).unwrap()
        })
        .collect()
}

#[test]
fn a_group_gives_each_layer_the_bits_it_gives_alone() {
    let k = 300;
    let x = Rng::new(8).floats(2 * 3 * k);
    // One to five layers: triples, a pair and a single one, and a LUT layer among I2_S ones.
    for ns in [vec![19], vec![8, 5], vec![16, 4, 4], vec![3, 1, 7, 12, 9]] {
        let weights = group_weights(ns.len() as u64, &ns, k);
        for (name, device) in devices() {
            let mut uploaded: Vec<_> = weights
                .iter()
                .map(|w| TernaryWeight::from_i2s(w, &device))
                .collect();
            if let Some(last) = uploaded.last_mut().filter(|_| ns.len() > 3) {
                *last = TernaryWeight::from_lut(&LutWeights::from_i2s(weights[4].view()), &device);
            }
            let input = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, k]), &device);
            let group = ternary_linear_group(input.clone(), &uploaded.iter().collect::<Vec<_>>());
            let group = group.unwrap();
            assert_eq!(group.len(), ns.len(), "{name}");
            for ((y, w), n) in group.into_iter().zip(&uploaded).zip(&ns) {
                assert_eq!(y.dims(), [2, 3, *n], "{name}");
                let alone = input.clone().ternary_linear(w).unwrap();
                y.into_data().assert_eq(&alone.into_data(), true);
            }
        }
    }
}

#[test]
fn a_group_on_autodiff_gives_each_layer_its_gradient() {
    let (ns, k) = ([7, 5, 3], 130);
    let weights = group_weights(21, &ns, k);
    let x = Rng::new(3).floats(2 * 3 * k);
    for (name, device) in devices() {
        let device = device.autodiff();
        let uploaded: Vec<_> = weights
            .iter()
            .map(|w| TernaryWeight::from_i2s(w, &device))
            .collect();
        let input = || {
            Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, k]), &device).require_grad()
        };
        // Sum every output: the input gradient adds up each layer's `dy · W`.
        let grouped = input();
        let outputs =
            ternary_linear_group(grouped.clone(), &uploaded.iter().collect::<Vec<_>>()).unwrap();
        let total = outputs.into_iter().map(|y| y.sum()).reduce(|a, b| a + b);
        let grads = total.unwrap().backward();
        let separate = input();
        let total = uploaded
            .iter()
            .map(|w| ternary_linear(separate.clone(), w).unwrap().sum())
            .reduce(|a, b| a + b);
        let want = total.unwrap().backward();
        let got = grouped.grad(&grads).expect("input has a gradient");
        let want = separate.grad(&want).expect("input has a gradient");
        got.into_data().assert_eq(&want.into_data(), true);
        println!("{name}: gradients agree");
    }
}

#[test]
fn a_group_rejects_mismatched_layers() {
    let device = Device::flex();
    let input = Tensor::<2>::zeros([3, 10], &device);
    let a = TernaryWeight::from_i2s(&setup(1, 4, 10, ScaleConvention::Divide).0, &device);
    let b = TernaryWeight::from_i2s(&setup(2, 4, 12, ScaleConvention::Divide).0, &device);
    let err = ternary_linear_group(input.clone(), &[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("k=12"), "{err}");
    let err = ternary_linear_group(input, &[]).unwrap_err();
    assert!(err.to_string().contains("at least one layer"), "{err}");
}

#[test]
fn wrong_shapes_are_errors() {
    let (weights, _) = setup(1, 4, 10, ScaleConvention::Multiply);
    let device = Device::flex();
    let w = TernaryWeight::from_i2s(&weights, &device);
    let bad = Tensor::<2>::zeros([3, 11], &device);
    let err = bad.ternary_linear(&w).unwrap_err();
    assert!(err.to_string().contains("k=10"), "{err}");
    let wrong_packed =
        Tensor::<2, burn::tensor::Int>::zeros([4, 3], (&device, burn::tensor::DType::U8));
    assert!(TernaryWeight::new(wrong_packed, weights.layout()).is_err());
    let wrong_dtype = Tensor::<2, burn::tensor::Int>::zeros([4, 32], &device);
    assert!(TernaryWeight::new(wrong_dtype, weights.layout()).is_err());
}
