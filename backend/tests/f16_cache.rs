//! A 16-bit KV cache through the Burn extension, on Flex and Autodiff<Flex> (NdArray has no f16
//! tensors): `cache_write` keeps it f16, rounding each new key (after rotation) and value once,
//! and `cached_attention` reads it as an f32 cache holding those rounded values would be read.

mod common;

use bitnet_backend::{cache_write, cached_attention};
use burn::tensor::{DType, Device, Tensor, TensorData, Tolerance};
use common::Rng;

#[test]
fn an_f16_cache_gives_the_bits_of_an_f32_cache_holding_its_rounded_values() {
    // Grouped heads continuing a cache (on the calling thread), then a prefill for the pool.
    for [batch, heads, group, len, start, capacity, dim] in
        [[2, 3, 2, 5, 7, 16, 20], [1, 4, 1, 40, 0, 48, 64]]
    {
        let mut rng = Rng::new(47);
        let cache_shape = [batch, heads, capacity, dim];
        let new_shape = [batch, len, heads, dim];
        let q_shape = [batch, heads, group * len, dim];
        let count = |shape: [usize; 4]| shape.iter().product();
        let (old_keys, old_values) = (
            rng.floats(count(cache_shape)),
            rng.floats(count(cache_shape)),
        );
        let (new_keys, new_values) = (rng.floats(count(new_shape)), rng.floats(count(new_shape)));
        let (cos, sin) = (rng.floats(len * dim), rng.floats(len * dim));
        let q = rng.floats(count(q_shape));
        for device in [Device::flex(), Device::flex().autodiff()] {
            let tensor = |values: &[f32], shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(values.to_vec(), shape), &device)
            };
            let table = |values: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(values.to_vec(), [len, dim]), &device)
            };
            let (cos, sin) = (table(&cos), table(&sin));
            // The projections' output `[batch, len, heads, dim]` viewed with swapped axes.
            let new = |values: &[f32]| tensor(values, new_shape).swap_dims(1, 2);
            let write = |dtype: DType| {
                let (mut keys, mut values) = (
                    tensor(&old_keys, cache_shape).cast(dtype),
                    tensor(&old_values, cache_shape).cast(dtype),
                );
                cache_write(&mut keys, new(&new_keys), start, Some((&cos, &sin))).unwrap();
                cache_write(&mut values, new(&new_values), start, None).unwrap();
                (keys, values)
            };
            let (keys16, values16) = write(DType::F16);
            let (keys32, values32) = write(DType::F32);
            assert_eq!((keys16.dtype(), values16.dtype()), (DType::F16, DType::F16));
            // Every value the f16 cache holds is the f32 cache's, rounded.
            let rounded = |t: &Tensor<4>| t.clone().cast(DType::F16).cast(DType::F32).into_data();
            let widened = |t: &Tensor<4>| t.clone().cast(DType::F32).into_data();
            widened(&keys16).assert_eq(&rounded(&keys32), true);
            widened(&values16).assert_eq(&rounded(&values32), true);

            let attend = |keys: Tensor<4>, values: Tensor<4>| {
                cached_attention(tensor(&q, q_shape), keys, values, start, len)
                    .unwrap()
                    .into_data()
            };
            let got = attend(keys16.clone(), values16.clone());
            let same_values = attend(keys16.cast(DType::F32), values16.cast(DType::F32));
            got.assert_eq(&same_values, true);
            // And within the rounding of the exact cache's result.
            let exact = attend(keys32, values32);
            let absmax = exact.iter::<f32>().fold(0f32, |m, x| m.max(x.abs()));
            got.assert_approx_eq::<f32>(&exact, Tolerance::absolute(4e-3 * absmax));
        }
    }
}
