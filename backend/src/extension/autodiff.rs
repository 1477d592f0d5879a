//! Autodiff: the ternary layer gets a backward pass of its own (the weights are frozen, so only
//! the input has a gradient); the float ops are built from Burn's tracked ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{DType, Shape, Slice, TensorData};

use super::TernaryOps;
use crate::glu::FfnActivation;
use crate::i2s::TernaryLayout;

/// Backward of the ternary linear layer: the weights are frozen, so only the input gets a
/// gradient, `dx = dy · W` with `W` dequantized.
#[derive(Debug)]
struct TernaryLinearBackward;

impl<B: Backend + TernaryOps> Backward<B, 1> for TernaryLinearBackward {
    type State = (IntTensor<B>, TernaryLayout, Shape);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (packed, layout, x_shape) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let weights = B::ternary_dequantize(packed, layout);
            let tokens = x_shape.num_elements() / layout.k;
            let grad = B::float_reshape(grad, Shape::new([tokens, layout.n]));
            B::float_reshape(B::float_matmul(grad, weights), x_shape)
        });
    }
}

impl<B: Backend + TernaryOps, C: CheckpointStrategy> TernaryOps for Autodiff<B, C> {
    fn ternary_linear(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self> {
        let x_shape = x.shape();
        let node = x.node();
        let out = B::ternary_linear(x.into_primitive(), packed.clone(), layout);
        match TernaryLinearBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((packed, layout, x_shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    /// One tracked op per layer, so each gets its own backward.
    fn ternary_linear_pair(
        x: FloatTensor<Self>,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        [a, b]: [TernaryLayout; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (
            Self::ternary_linear(x.clone(), first, a),
            Self::ternary_linear(x, second, b),
        )
    }

    /// One tracked op per layer, so each gets its own backward.
    fn ternary_linear_triple(
        x: FloatTensor<Self>,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        third: IntTensor<Self>,
        [a, b, c]: [TernaryLayout; 3],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        (
            Self::ternary_linear(x.clone(), first, a),
            Self::ternary_linear(x.clone(), second, b),
            Self::ternary_linear(x, third, c),
        )
    }

    /// Burn's own tracked ops, so the gradient reaches both `gate` and `up`.
    /// The norm then the layer, each tracked (a fused op would need a backward of its own).
    fn rms_norm_ternary_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self> {
        Self::ternary_linear(Self::rms_norm(x, weight, epsilon), packed, layout)
    }

    /// The norm then the layers, each tracked.
    fn rms_norm_ternary_linear_pair(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        layouts: [TernaryLayout; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        Self::ternary_linear_pair(Self::rms_norm(x, weight, epsilon), first, second, layouts)
    }

    /// The norm then the layers, each tracked.
    fn rms_norm_ternary_linear_triple(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        third: IntTensor<Self>,
        layouts: [TernaryLayout; 3],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = Self::rms_norm(x, weight, epsilon);
        Self::ternary_linear_triple(x, first, second, third, layouts)
    }

    /// The activation, the norm and the layer, each tracked.
    fn gated_rms_norm_ternary_linear(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: FfnActivation,
        weight: FloatTensor<Self>,
        epsilon: f64,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self> {
        let h = Self::rms_norm(
            Self::gated_activation(gate, up, activation),
            weight,
            epsilon,
        );
        Self::ternary_linear(h, packed, layout)
    }

    fn gated_activation(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: FfnActivation,
    ) -> FloatTensor<Self> {
        let activated = match activation {
            FfnActivation::Silu => Self::float_mul(gate.clone(), Self::sigmoid(gate)),
            FfnActivation::Relu2 => {
                let relu = Self::relu(gate);
                Self::float_mul(relu.clone(), relu)
            }
        };
        Self::float_mul(activated, up)
    }

    /// Burn's own tracked ops, so the gradient reaches both `x` and `weight`.
    fn rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let last = shape.num_dims() - 1;
        let mean_square = Self::float_mean_dim(Self::float_mul(x.clone(), x.clone()), last);
        let rms = Self::float_sqrt(Self::float_add_scalar(mean_square, epsilon.into()));
        let mut weight_shape = vec![1; shape.num_dims()];
        weight_shape[last] = shape[last];
        let weight = Self::float_reshape(weight, Shape::from(weight_shape));
        Self::float_mul(weight, Self::float_mul(x, Self::float_recip(rms)))
    }

    /// Burn's own tracked ops, so the gradient reaches `x` (and `cos`, `sin`).
    fn rotary_embedding(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let rank = shape.num_dims();
        let (len, dim) = (shape[rank - 2], shape[rank - 1]);
        let half_of = |range: std::ops::Range<usize>| {
            let mut slices: Vec<Slice> = shape.iter().map(|&d| Slice::from(0..d)).collect();
            slices[rank - 1] = Slice::from(range);
            Self::float_slice(x.clone(), &slices)
        };
        let (first, second) = (half_of(0..dim / 2), half_of(dim / 2..dim));
        let rotated = Self::float_cat(vec![Self::float_neg(second), first], rank - 1);
        let mut table_shape = vec![1; rank];
        table_shape[rank - 2..].copy_from_slice(&[len, dim]);
        let table = |t| Self::float_reshape(t, Shape::from(table_shape.clone()));
        Self::float_add(
            Self::float_mul(x, table(cos)),
            Self::float_mul(rotated, table(sin)),
        )
    }

    /// Burn's own tracked ops (two matmuls, a mask and a softmax), so the gradient reaches the
    /// queries, keys and values.
    fn cached_attention(
        queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        start: usize,
        len: usize,
    ) -> FloatTensor<Self> {
        let shape = queries.shape();
        let (rows, dim, seen) = (shape[2], shape[3], start + len);
        // An f16 cache is computed with in f32, as on the other backends.
        let filled = |t: FloatTensor<Self>| {
            let mut slices: Vec<Slice> = t.shape().iter().map(|&d| Slice::from(0..d)).collect();
            slices[2] = Slice::from(0..seen);
            Self::float_slice(in_dtype(t, DType::F32), &slices)
        };
        let keys = Self::float_swap_dims(filled(keys), 2, 3);
        let scale = (dim as f64).powf(-0.5);
        let scores = Self::float_mul_scalar(Self::float_matmul(queries, keys), scale.into());
        let future: Vec<bool> = (0..rows)
            .flat_map(|j| (0..seen).map(move |p| p > start + j % len))
            .collect();
        let future = B::bool_from_data(
            TensorData::new(future, [1, 1, rows, seen]),
            &scores.device(),
        );
        let future = B::bool_expand(future, scores.shape());
        let scores = Self::float_mask_fill(scores, future, f32::NEG_INFINITY.into());
        let out = Self::float_matmul(Self::softmax(scores, 3), filled(values));
        // `[batch, kv_heads, rows, dim]` -> position-major `[batch, len, heads, dim]`.
        let heads = shape[1] * rows / len;
        let by_head = Self::float_reshape(out, Shape::from([shape[0], heads, len, dim]));
        Self::float_swap_dims(by_head, 1, 2)
    }

    /// Burn's tracked slice assignment, so the gradient reaches `cache` and `new`.
    fn cache_write(
        cache: FloatTensor<Self>,
        new: FloatTensor<Self>,
        start: usize,
    ) -> FloatTensor<Self> {
        let shape = new.shape();
        let mut slices: Vec<Slice> = shape.iter().map(|&d| Slice::from(0..d)).collect();
        slices[2] = Slice::from(start..start + shape[2]);
        let new = in_dtype(new, cache.dtype());
        Self::float_slice_assign(cache, &slices, new)
    }

    /// The tracked rotation, then the tracked write.
    fn cache_write_rotated(
        cache: FloatTensor<Self>,
        new: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        start: usize,
    ) -> FloatTensor<Self> {
        Self::cache_write(cache, Self::rotary_embedding(new, cos, sin), start)
    }

    fn ternary_dequantize(packed: IntTensor<Self>, layout: TernaryLayout) -> FloatTensor<Self> {
        Self::from_inner(B::ternary_dequantize(packed, layout))
    }
}

/// `t` cast to `dtype` (a tracked cast), unless it already is.
fn in_dtype<B: Backend>(t: FloatTensor<Autodiff<B>>, dtype: DType) -> FloatTensor<Autodiff<B>> {
    if t.dtype() == dtype {
        t
    } else {
        Autodiff::<B>::float_cast(t, dtype.into())
    }
}
