//! The fused float ops of the Burn extension on Flex, NdArray and Autodiff: the gated
//! activation, RMSNorm, RoPE, KV cache writes and cached attention, each close to Burn's own
//! ops, gradients included.

mod burn_support;
mod common;

use bitnet_backend::{
    FfnActivation, cache_write, cached_attention, gated_activation, rms_norm, rotary_embedding,
};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Gradients, Tensor, TensorData};
use burn_support::{devices, relative_to_max};
use common::Rng;

/// The gradients of `sum(got * dy)` and of `sum(want * dy)`: an op and its reference, each
/// built on its own copies of the inputs, back-propagated from the same random `dy`.
fn backward_both<const D: usize>(
    got: Tensor<D>,
    want: Tensor<D>,
    dy: Tensor<D>,
) -> (Gradients, Gradients) {
    (
        (got * dy.clone()).sum().backward(),
        (want * dy).sum().backward(),
    )
}

/// The gradient of the input `got` (in `grads.0`) is within `rel` of that of its reference
/// copy `want` (in `grads.1`), as [`relative_to_max`] measures.
fn assert_gradients_close<const D: usize>(
    grads: &(Gradients, Gradients),
    got: &Tensor<D>,
    want: &Tensor<D>,
    rel: f32,
) {
    let got = got.grad(&grads.0).expect("gradient").into_data();
    let want = want.grad(&grads.1).expect("gradient").into_data();
    got.assert_approx_eq::<f32>(&want, relative_to_max(&want, rel));
}

/// Burn's own ops for `act(gate) * up`: what the gated activation must equal.
fn burn_gated(gate: Tensor<2>, up: Tensor<2>, activation: FfnActivation) -> Tensor<2> {
    match activation {
        FfnActivation::Silu => burn::tensor::activation::silu(gate) * up,
        FfnActivation::Relu2 => burn::tensor::activation::relu(gate).square() * up,
    }
}

#[test]
fn gated_activation_overwrites_only_a_gate_nothing_else_holds() {
    // A gate tensor owned by the call is overwritten in place; one the caller still holds (a
    // clone shares the buffer) must keep its values, and both give the same bits.
    let shape = [2, 20_000];
    let mut rng = Rng::new(19);
    let (gate, up) = (rng.floats(40_000), rng.floats(40_000));
    for (name, device) in devices() {
        let tensor =
            |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), &device);
        let owned = gated_activation(tensor(&gate), tensor(&up), FfnActivation::Silu).unwrap();
        let held = tensor(&gate);
        let shared = gated_activation(held.clone(), tensor(&up), FfnActivation::Silu).unwrap();
        owned.into_data().assert_eq(&shared.into_data(), true);
        held.into_data()
            .assert_eq(&TensorData::new(gate.clone(), shape), true);
        println!("{name}: in place and copied agree; the held gate is intact");
    }
}

#[test]
fn gated_activation_is_close_to_burns_ops_with_their_gradients() {
    let shape = [3, 5000];
    let mut rng = Rng::new(17);
    let (gate, up) = (rng.floats(15_000), rng.floats(15_000));
    let tensor = |v: &[f32], device: &Device| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device)
    };
    for activation in [FfnActivation::Silu, FfnActivation::Relu2] {
        for (name, device) in devices() {
            let plain = gated_activation(tensor(&gate, &device), tensor(&up, &device), activation);
            let want = burn_gated(tensor(&gate, &device), tensor(&up, &device), activation);
            let want = want.into_data();
            plain
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&want, relative_to_max(&want, 1e-6));
            let device = device.autodiff();
            let inputs = || {
                let g = tensor(&gate, &device).require_grad();
                (g, tensor(&up, &device).require_grad())
            };
            let (g, u) = inputs();
            let grads = gated_activation(g.clone(), u.clone(), activation)
                .unwrap()
                .sum()
                .backward();
            let (g_want, u_want) = inputs();
            let want = burn_gated(g_want.clone(), u_want.clone(), activation)
                .sum()
                .backward();
            for (got, want) in [
                (g.grad(&grads), g_want.grad(&want)),
                (u.grad(&grads), u_want.grad(&want)),
            ] {
                let want = want.expect("gradient").into_data();
                got.expect("gradient")
                    .into_data()
                    .assert_approx_eq::<f32>(&want, relative_to_max(&want, 1e-6));
            }
            println!("{name} {activation:?}: values and gradients agree");
        }
    }
    let device = Device::flex();
    let err = gated_activation(
        Tensor::<2>::zeros([2, 3], &device),
        Tensor::<2>::zeros([3, 2], &device),
        FfnActivation::Silu,
    );
    assert!(err.unwrap_err().to_string().contains("one shape"));
}

/// RMSNorm in Burn's ops: what the fused op must equal, values and gradients.
fn burn_rms_norm(x: Tensor<3>, weight: Tensor<1>, epsilon: f64) -> Tensor<3> {
    let inv_rms = (x.clone().square().mean_dim(2) + epsilon).sqrt().recip();
    weight.unsqueeze() * (x * inv_rms)
}

#[test]
fn rms_norm_is_close_to_burns_ops_with_their_gradients() {
    let (shape, d) = ([2, 300, 77], 77);
    let mut rng = Rng::new(23);
    let (x, weight) = (rng.floats(2 * 300 * d), rng.floats(d));
    for (name, device) in devices() {
        for device in [device.clone(), device.autodiff()] {
            let inputs = || {
                let x = Tensor::<3>::from_data(TensorData::new(x.clone(), shape), &device);
                let w = Tensor::<1>::from_data(TensorData::new(weight.clone(), [d]), &device);
                if device.is_autodiff() {
                    (x.require_grad(), w.require_grad())
                } else {
                    (x, w)
                }
            };
            let (x_got, w_got) = inputs();
            let got = rms_norm(x_got.clone(), w_got.clone(), 1e-5).unwrap();
            let (x_want, w_want) = inputs();
            let want = burn_rms_norm(x_want.clone(), w_want.clone(), 1e-5);
            let want_data = want.clone().into_data();
            let got_data = got.clone().into_data();
            got_data.assert_approx_eq::<f32>(&want_data, relative_to_max(&want_data, 1e-5));
            if !device.is_autodiff() {
                continue;
            }
            let dy =
                Tensor::<3>::from_data(TensorData::new(rng.floats(2 * 300 * d), shape), &device);
            let grads = backward_both(got, want, dy);
            assert_gradients_close(&grads, &x_got, &x_want, 1e-5);
            assert_gradients_close(&grads, &w_got, &w_want, 1e-5);
            println!("{name}: values and gradients agree");
        }
    }
    let device = Device::flex();
    let err = rms_norm(
        Tensor::<2>::zeros([2, 3], &device),
        Tensor::<1>::ones([4], &device),
        1e-5,
    );
    assert!(err.unwrap_err().to_string().contains("width 4"));
}

/// RoPE in Burn's ops (the model's former implementation).
fn burn_rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.unsqueeze::<4>() + rotated * sin.unsqueeze::<4>()
}

#[test]
fn rotary_embedding_reads_swapped_and_sliced_views_like_burns_ops() {
    // A projection's output `[batch, len, heads, dim]` viewed as `[batch, heads, len, dim]`
    // (as attention does), then a slice of its heads (a view that starts past the buffer's
    // start), and a flipped one (a negative stride, which is copied first).
    let (stored, len, dim) = ([2, 40, 6, 32], 40, 32);
    let mut rng = Rng::new(37);
    let x = rng.floats(stored.iter().product());
    let (cos, sin) = (rng.floats(len * dim), rng.floats(len * dim));
    for (name, device) in devices() {
        let table =
            |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [len, dim]), &device);
        let swapped =
            Tensor::<4>::from_data(TensorData::new(x.clone(), stored), &device).swap_dims(1, 2);
        let views = [
            swapped.clone(),
            swapped.clone().slice([0..2, 1..5, 0..40, 0..32]),
            swapped.flip([1]),
        ];
        for (i, view) in views.into_iter().enumerate() {
            let got = rotary_embedding(view.clone(), &table(&cos), &table(&sin)).unwrap();
            let want = burn_rope(view, table(&cos), table(&sin));
            got.into_data().assert_eq(&want.into_data(), true);
            println!("{name}: view {i} agrees");
        }
    }
}

#[test]
fn rotary_embedding_equals_burns_ops_with_their_gradients() {
    let (shape, len, dim) = ([2, 6, 40, 32], 40, 32);
    let mut rng = Rng::new(31);
    let x = rng.floats(2 * 6 * len * dim);
    let (cos, sin) = (rng.floats(len * dim), rng.floats(len * dim));
    for (name, device) in devices() {
        for device in [device.clone(), device.autodiff()] {
            let table = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [len, dim]), &device)
            };
            let input = || {
                let x = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device);
                if device.is_autodiff() {
                    x.require_grad()
                } else {
                    x
                }
            };
            let x_got = input();
            let got = rotary_embedding(x_got.clone(), &table(&cos), &table(&sin)).unwrap();
            let x_want = input();
            let want = burn_rope(x_want.clone(), table(&cos), table(&sin));
            got.clone()
                .into_data()
                .assert_eq(&want.clone().into_data(), true);
            if device.is_autodiff() {
                let dy =
                    Tensor::<4>::from_data(TensorData::new(rng.floats(x.len()), shape), &device);
                let grads = backward_both(got, want, dy);
                assert_gradients_close(&grads, &x_got, &x_want, 1e-6);
                println!("{name}: values and gradients agree");
            }
        }
    }
    let device = Device::flex();
    let table = Tensor::<2>::zeros([4, 6], &device);
    let err = rotary_embedding(Tensor::<4>::zeros([1, 2, 5, 6], &device), &table, &table);
    assert!(err.unwrap_err().to_string().contains("[1, 2, 5, 6]"));
    let odd = Tensor::<2>::zeros([5, 3], &device);
    let err = rotary_embedding(Tensor::<4>::zeros([1, 2, 5, 3], &device), &odd, &odd);
    assert!(err.unwrap_err().to_string().contains("even"));
}

#[test]
fn cache_write_equals_burns_slice_assign_with_rotation_and_gradients() {
    // New positions as the projections give them (`[batch, len, heads, dim]` viewed with swapped
    // axes), written at `start` into a cache of 12, rotated (keys) or not (values).
    let (batch, heads, len, dim, capacity, start) = (2, 3, 5, 8, 12, 4);
    let mut rng = Rng::new(43);
    let (new, old) = (
        rng.floats(batch * len * heads * dim),
        rng.floats(batch * heads * capacity * dim),
    );
    let (cos, sin) = (rng.floats(len * dim), rng.floats(len * dim));
    let cache_shape = [batch, heads, capacity, dim];
    for (name, device) in devices() {
        for device in [device.clone(), device.autodiff()] {
            let tensor = |v: &[f32], shape: [usize; 4]| {
                let t = Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &device);
                if device.is_autodiff() {
                    t.require_grad()
                } else {
                    t
                }
            };
            let table = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [len, dim]), &device)
            };
            let (cos, sin) = (table(&cos), table(&sin));
            for rotate in [true, false] {
                let (new_got, new_want) = (
                    tensor(&new, [batch, len, heads, dim]),
                    tensor(&new, [batch, len, heads, dim]),
                );
                let (mut got, held) = (tensor(&old, cache_shape), tensor(&old, cache_shape));
                let held_copy = held.clone();
                let rotation = rotate.then_some((&cos, &sin));
                cache_write(&mut got, new_got.clone().swap_dims(1, 2), start, rotation).unwrap();
                let mut shared = held.clone();
                cache_write(
                    &mut shared,
                    new_got.clone().swap_dims(1, 2),
                    start,
                    rotation,
                )
                .unwrap();
                let mut value = new_want.clone().swap_dims(1, 2);
                if rotate {
                    value = burn_rope(value, cos.clone(), sin.clone());
                }
                let want =
                    held_copy.slice_assign([0..batch, 0..heads, start..start + len, 0..dim], value);
                got.clone()
                    .into_data()
                    .assert_eq(&want.clone().into_data(), true);
                shared
                    .into_data()
                    .assert_eq(&want.clone().into_data(), true);
                // A cache the caller still holds elsewhere keeps its values.
                held.into_data()
                    .assert_eq(&TensorData::new(old.clone(), cache_shape), true);
                if device.is_autodiff() {
                    let dy = Tensor::<4>::from_data(
                        TensorData::new(rng.floats(old.len()), cache_shape),
                        &device,
                    );
                    let grads = backward_both(got, want, dy);
                    assert_gradients_close(&grads, &new_got, &new_want, 1e-6);
                }
                println!("{name}: rotate {rotate} agrees");
            }
        }
    }
    // Shapes that do not fit are errors, and the cache is left as it was.
    let device = Device::flex();
    let mut cache = Tensor::<4>::ones([1, 2, 6, 4], &device);
    let table = Tensor::<2>::zeros([3, 4], &device);
    for (new, start, rotation) in [
        (Tensor::<4>::zeros([1, 2, 3, 4], &device), 4, None),
        (Tensor::<4>::zeros([1, 3, 3, 4], &device), 0, None),
        (
            Tensor::<4>::zeros([1, 2, 2, 4], &device),
            0,
            Some((&table, &table)),
        ),
    ] {
        let err = cache_write(&mut cache, new, start, rotation).unwrap_err();
        assert!(err.to_string().contains("[1, 2, 6, 4]"), "{err}");
        cache
            .clone()
            .into_data()
            .assert_eq(&Tensor::<4>::ones([1, 2, 6, 4], &device).into_data(), true);
    }
}

/// Attention in Burn's ops (the model's former implementation), in the op's position-major
/// output layout `[batch, len, heads, dim]`.
fn burn_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, start: usize, len: usize) -> Tensor<4> {
    let ([batch, kv_heads, rows, dim], seen) = (q.dims(), start + len);
    let (k, v) = (k.narrow(2, 0, seen), v.narrow(2, 0, seen));
    let scores = q.matmul(k.swap_dims(2, 3)) * (dim as f64).powf(-0.5);
    let future = Tensor::<2, Bool>::tril_mask([len, seen], start as i64, &scores.device())
        .repeat_dim(0, rows / len)
        .unsqueeze::<4>();
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3)
        .matmul(v)
        .reshape([batch, kv_heads * rows / len, len, dim])
        .swap_dims(1, 2)
}

#[test]
fn cached_attention_is_close_to_burns_ops_with_their_gradients() {
    // [batch, kv_heads, group, len, start, capacity, dim]: grouped heads continuing a cache (on
    // the calling thread), then a prefill large enough for the pool.
    for [batch, heads, group, len, start, capacity, dim] in
        [[2, 3, 2, 5, 7, 16, 20], [1, 4, 1, 40, 0, 48, 64]]
    {
        let mut rng = Rng::new(41);
        let (q_shape, cache_shape) = (
            [batch, heads, group * len, dim],
            [batch, heads, capacity, dim],
        );
        let q = rng.floats(q_shape.iter().product());
        let (k, v) = (
            rng.floats(cache_shape.iter().product()),
            rng.floats(cache_shape.iter().product()),
        );
        for (name, device) in devices() {
            for device in [device.clone(), device.autodiff()] {
                let inputs = || {
                    let tensor = |values: &[f32], shape: [usize; 4]| {
                        let t = Tensor::<4>::from_data(
                            TensorData::new(values.to_vec(), shape),
                            &device,
                        );
                        if device.is_autodiff() {
                            t.require_grad()
                        } else {
                            t
                        }
                    };
                    (
                        tensor(&q, q_shape),
                        tensor(&k, cache_shape),
                        tensor(&v, cache_shape),
                    )
                };
                let (q_got, k_got, v_got) = inputs();
                let got = cached_attention(q_got.clone(), k_got.clone(), v_got.clone(), start, len)
                    .unwrap();
                let (q_want, k_want, v_want) = inputs();
                let want =
                    burn_attention(q_want.clone(), k_want.clone(), v_want.clone(), start, len);
                let want_data = want.clone().into_data();
                let got_data = got.clone().into_data();
                got_data.assert_approx_eq::<f32>(&want_data, relative_to_max(&want_data, 1e-5));
                if !device.is_autodiff() {
                    continue;
                }
                let out_shape = [batch, len, heads * group, dim];
                let dy = Tensor::<4>::from_data(
                    TensorData::new(rng.floats(q.len()), out_shape),
                    &device,
                );
                let grads = backward_both(got, want, dy);
                for (got, want) in [(q_got, q_want), (k_got, k_want), (v_got, v_want)] {
                    assert_gradients_close(&grads, &got, &want, 1e-5);
                }
                println!("{name}: values and gradients agree");
            }
        }
    }
    let device = Device::flex();
    let cache = Tensor::<4>::zeros([1, 2, 8, 4], &device);
    let attend = |q_shape: [usize; 4], start, len| {
        let q = Tensor::<4>::zeros(q_shape, &device);
        cached_attention(q, cache.clone(), cache.clone(), start, len)
    };
    assert!(attend([1, 2, 3, 4], 5, 3).is_ok());
    for (q_shape, start, len) in [
        ([1, 2, 3, 4], 6, 3),
        ([1, 3, 3, 4], 0, 3),
        ([1, 2, 3, 5], 0, 3),
        ([1, 2, 3, 4], 0, 2),
    ] {
        let err = attend(q_shape, start, len).unwrap_err().to_string();
        assert!(err.contains("[1, 2, 8, 4]"), "{err}");
    }
}
