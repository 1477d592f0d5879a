//! The Burn backend extension: a ternary linear layer as a Burn op on Flex, NdArray and Autodiff.
//!
//! Packed weights (I2_S, or the LUT kernel's format) live on the device as a `U8` int tensor
//! `[rows, k_padded / 4]` (so Burn records keep them) next to a [`TernaryLayout`]. Flex and NdArray read both tensors in place and build
//! the output from the kernel's `Vec`; Autodiff adds the input gradient `dy · W`.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22 but Burn users still run it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ndarray::NdArrayTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, NdArray, TensorMetadata, backend_extension,
};
use burn::tensor::{DType, Device, Int, Shape, Slice, Tensor, TensorData};

use crate::error::{Result, TernaryError};
use crate::glu::FfnActivation;
use crate::i2s::{I2sView, I2sWeights, PackedFormat, TernaryLayout};
use crate::kernels::{Isa, ternary_linear_group as host_linear_group};
use crate::lut::{LutView, LutWeights, lut_linear};
use crate::norm;
use crate::rope;
use crate::select::KernelChoice;

/// Ternary ops a backend provides.
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait TernaryOps: Backend {
    /// Quantizes each row of `x` to int8 and multiplies it by the packed ternary weights.
    ///
    /// # Shapes
    /// - `x`: `[..., k]` (f32)
    /// - `packed`: `[n, k_padded / 4]` (u8, I2_S codes)
    /// - output: `[..., n]`
    fn ternary_linear(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self>;

    /// [`TernaryOps::ternary_linear`] for two layers that read the same input (gate and up):
    /// `x` is quantized once and one parallel call runs the rows of both (I2_S weights; other
    /// formats run one by one). Burn's extension ops take no `Vec` of tensors, hence a pair and
    /// a triple.
    ///
    /// # Shapes
    /// - `x`: `[..., k]` (f32)
    /// - `first`, `second`: `[n_i, k_padded / 4]` (u8)
    /// - outputs: `[..., n_i]`
    fn ternary_linear_pair(
        x: FloatTensor<Self>,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        layouts: [TernaryLayout; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// [`TernaryOps::ternary_linear_pair`] for three layers (query, key and value).
    fn ternary_linear_triple(
        x: FloatTensor<Self>,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        third: IntTensor<Self>,
        layouts: [TernaryLayout; 3],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The gated activation of a feed-forward block, `act(gate) * up` element-wise, on the
    /// rayon pool (see [`FfnActivation::apply`]).
    ///
    /// # Shapes
    /// - `gate`, `up`: one shape (f32)
    /// - output: that shape
    fn gated_activation(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: FfnActivation,
    ) -> FloatTensor<Self>;

    /// RMSNorm over the last dimension, `weight * (x / sqrt(mean(x^2) + epsilon))`, one pass
    /// per row on the rayon pool (see [`crate::norm::rms_norm`]).
    ///
    /// # Shapes
    /// - `x`: `[..., d]` (f32), `weight`: `[d]`
    /// - output: `[..., d]`
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, epsilon: f64)
    -> FloatTensor<Self>;

    /// Rotary position embedding, `x * cos + rotate_half(x) * sin`, one pass per row on the
    /// rayon pool (see [`crate::rope::rotate_half`]).
    ///
    /// # Shapes
    /// - `x`: `[..., len, dim]` (f32), `cos`, `sin`: `[len, dim]`
    /// - output: `[..., len, dim]`
    fn rotary_embedding(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The dequantized weights.
    ///
    /// # Shapes
    /// - `packed`: `[n, k_padded / 4]` (u8)
    /// - output: `[n, k]` (f32)
    fn ternary_dequantize(packed: IntTensor<Self>, layout: TernaryLayout) -> FloatTensor<Self>;
}

/// The host computation shared by every CPU backend: validated by [`TernaryWeight`] and
/// [`ternary_linear_group`] beforehand, so a failure here is a broken invariant, not bad user
/// input.
fn group_on_host<const N: usize>(
    x: &[f32],
    x_shape: &Shape,
    codes: [&[u8]; N],
    layouts: &[TernaryLayout; N],
) -> [TensorData; N] {
    const CHECKED: &str = "ternary_linear checked the packed lengths and the input shape";
    let m = x.len() / layouts[0].k;
    let isa = Isa::selected().expect("ternary_linear checked BITNET_ISA before dispatch");
    let outputs = if layouts.iter().all(|l| l.format == PackedFormat::I2s) {
        let views = codes
            .iter()
            .zip(layouts)
            .map(|(codes, layout)| I2sView::new(*layout, codes))
            .collect::<Result<Vec<_>>>()
            .expect(CHECKED);
        host_linear_group(isa, &views, x, m).expect(CHECKED)
    } else {
        codes
            .iter()
            .zip(layouts)
            .map(|(codes, layout)| match layout.format {
                PackedFormat::I2s => I2sView::new(*layout, codes)
                    .and_then(|w| host_linear_group(isa, &[w], x, m))
                    .map(|mut ys| ys.swap_remove(0)),
                PackedFormat::Lut => {
                    LutView::new(*layout, codes).and_then(|w| lut_linear(isa, w, x, m))
                }
            })
            .collect::<Result<Vec<_>>>()
            .expect(CHECKED)
    };
    let mut outputs = outputs.into_iter();
    std::array::from_fn(|i| {
        let mut shape = x_shape.clone();
        let last = shape.len() - 1;
        shape[last] = layouts[i].n;
        TensorData::new(outputs.next().expect("one output per layer"), shape)
    })
}

fn dequantize_on_host(codes: &[u8], layout: TernaryLayout) -> TensorData {
    let values = match layout.format {
        PackedFormat::I2s => I2sView::new(layout, codes).map(|w| w.dequantize()),
        PackedFormat::Lut => LutView::new(layout, codes).map(|w| w.dequantize()),
    }
    .expect("TernaryWeight validated the packed length");
    TensorData::new(values, [layout.n, layout.k])
}

fn flex_slice<E: burn::tensor::Element + bytemuck::Pod>(
    t: &FlexTensor,
) -> std::borrow::Cow<'_, [E]> {
    match t.as_slice::<E>() {
        Some(s) => s.into(),
        None => t
            .to_contiguous()
            .as_slice::<E>()
            .expect("contiguous tensor of the checked dtype")
            .to_vec()
            .into(),
    }
}

/// The host computation for `N` layers on Flex tensors.
fn flex_group<const N: usize>(
    x: &FlexTensor,
    packed: [&FlexTensor; N],
    layouts: &[TernaryLayout; N],
) -> [FlexTensor; N] {
    let codes = packed.map(flex_slice::<u8>);
    let codes = std::array::from_fn(|i| codes[i].as_ref());
    group_on_host(&flex_slice::<f32>(x), &x.shape(), codes, layouts).map(FlexTensor::from_data)
}

impl TernaryOps for Flex {
    fn ternary_linear(x: FlexTensor, packed: FlexTensor, layout: TernaryLayout) -> FlexTensor {
        let [y] = flex_group(&x, [&packed], &[layout]);
        y
    }

    fn ternary_linear_pair(
        x: FlexTensor,
        first: FlexTensor,
        second: FlexTensor,
        layouts: [TernaryLayout; 2],
    ) -> (FlexTensor, FlexTensor) {
        let [a, b] = flex_group(&x, [&first, &second], &layouts);
        (a, b)
    }

    fn ternary_linear_triple(
        x: FlexTensor,
        first: FlexTensor,
        second: FlexTensor,
        third: FlexTensor,
        layouts: [TernaryLayout; 3],
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let [a, b, c] = flex_group(&x, [&first, &second, &third], &layouts);
        (a, b, c)
    }

    fn gated_activation(gate: FlexTensor, up: FlexTensor, activation: FfnActivation) -> FlexTensor {
        let y = activation.apply(&flex_slice::<f32>(&gate), &flex_slice::<f32>(&up));
        FlexTensor::from_data(TensorData::new(y, gate.shape()))
    }

    fn rms_norm(x: FlexTensor, weight: FlexTensor, epsilon: f64) -> FlexTensor {
        let y = norm::rms_norm(&flex_slice::<f32>(&x), &flex_slice::<f32>(&weight), epsilon);
        FlexTensor::from_data(TensorData::new(y, x.shape()))
    }

    fn rotary_embedding(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let shape = x.shape();
        let dim = shape[shape.num_dims() - 1];
        let (cos, sin) = (flex_slice::<f32>(&cos), flex_slice::<f32>(&sin));
        let y = rope::rotate_half(&flex_slice::<f32>(&x), &cos, &sin, dim);
        FlexTensor::from_data(TensorData::new(y, shape))
    }

    fn ternary_dequantize(packed: FlexTensor, layout: TernaryLayout) -> FlexTensor {
        FlexTensor::from_data(dequantize_on_host(&flex_slice::<u8>(&packed), layout))
    }
}

fn ndarray_f32(t: &NdArrayTensor) -> std::borrow::Cow<'_, [f32]> {
    match t {
        NdArrayTensor::F32(s) => match s.view().to_slice() {
            Some(slice) => slice.into(),
            None => s.view().iter().copied().collect::<Vec<_>>().into(),
        },
        other => panic!(
            "ternary_linear expects f32 activations, got {:?}",
            other.dtype()
        ),
    }
}

fn ndarray_u8(t: &NdArrayTensor) -> std::borrow::Cow<'_, [u8]> {
    match t {
        NdArrayTensor::U8(s) => match s.view().to_slice() {
            Some(slice) => slice.into(),
            None => s.view().iter().copied().collect::<Vec<_>>().into(),
        },
        other => panic!("packed ternary weights must be u8, got {:?}", other.dtype()),
    }
}

/// The host computation for `N` layers on NdArray tensors.
fn ndarray_group<const N: usize>(
    x: &NdArrayTensor,
    packed: [&NdArrayTensor; N],
    layouts: &[TernaryLayout; N],
) -> [NdArrayTensor; N] {
    let codes = packed.map(ndarray_u8);
    let codes = std::array::from_fn(|i| codes[i].as_ref());
    group_on_host(&ndarray_f32(x), &x.shape(), codes, layouts).map(NdArrayTensor::from_data)
}

impl TernaryOps for NdArray {
    fn ternary_linear(
        x: NdArrayTensor,
        packed: NdArrayTensor,
        layout: TernaryLayout,
    ) -> NdArrayTensor {
        let [y] = ndarray_group(&x, [&packed], &[layout]);
        y
    }

    fn ternary_linear_pair(
        x: NdArrayTensor,
        first: NdArrayTensor,
        second: NdArrayTensor,
        layouts: [TernaryLayout; 2],
    ) -> (NdArrayTensor, NdArrayTensor) {
        let [a, b] = ndarray_group(&x, [&first, &second], &layouts);
        (a, b)
    }

    fn ternary_linear_triple(
        x: NdArrayTensor,
        first: NdArrayTensor,
        second: NdArrayTensor,
        third: NdArrayTensor,
        layouts: [TernaryLayout; 3],
    ) -> (NdArrayTensor, NdArrayTensor, NdArrayTensor) {
        let [a, b, c] = ndarray_group(&x, [&first, &second, &third], &layouts);
        (a, b, c)
    }

    fn gated_activation(
        gate: NdArrayTensor,
        up: NdArrayTensor,
        activation: FfnActivation,
    ) -> NdArrayTensor {
        let y = activation.apply(&ndarray_f32(&gate), &ndarray_f32(&up));
        NdArrayTensor::from_data(TensorData::new(y, gate.shape()))
    }

    fn rms_norm(x: NdArrayTensor, weight: NdArrayTensor, epsilon: f64) -> NdArrayTensor {
        let y = norm::rms_norm(&ndarray_f32(&x), &ndarray_f32(&weight), epsilon);
        NdArrayTensor::from_data(TensorData::new(y, x.shape()))
    }

    fn rotary_embedding(x: NdArrayTensor, cos: NdArrayTensor, sin: NdArrayTensor) -> NdArrayTensor {
        let shape = x.shape();
        let dim = shape[shape.num_dims() - 1];
        let (cos, sin) = (ndarray_f32(&cos), ndarray_f32(&sin));
        let y = rope::rotate_half(&ndarray_f32(&x), &cos, &sin, dim);
        NdArrayTensor::from_data(TensorData::new(y, shape))
    }

    fn ternary_dequantize(packed: NdArrayTensor, layout: TernaryLayout) -> NdArrayTensor {
        NdArrayTensor::from_data(dequantize_on_host(&ndarray_u8(&packed), layout))
    }
}

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

    fn ternary_dequantize(packed: IntTensor<Self>, layout: TernaryLayout) -> FloatTensor<Self> {
        Self::from_inner(B::ternary_dequantize(packed, layout))
    }
}

/// Packed ternary weights on a Burn device, validated once so every call can trust them.
#[derive(Debug, Clone)]
pub struct TernaryWeight {
    packed: Tensor<2, Int>,
    layout: TernaryLayout,
}

impl TernaryWeight {
    /// Uploads host-packed weights to `device` as a `U8` tensor.
    pub fn from_i2s(weights: &I2sWeights, device: &Device) -> Self {
        Self::upload(weights.layout(), weights.codes(), device)
    }

    /// Uploads weights in the LUT kernel's format.
    pub fn from_lut(weights: &LutWeights, device: &Device) -> Self {
        Self::upload(weights.layout(), weights.bytes(), device)
    }

    /// Uploads I2_S weights in the format `BITNET_KERNEL` picks for them (`auto`: the faster
    /// kernel family on this shape, measured once per shape).
    pub fn from_i2s_selected(weights: &I2sWeights, device: &Device) -> Result<Self> {
        Ok(match KernelChoice::selected()?.format_for(weights)? {
            PackedFormat::I2s => Self::from_i2s(weights, device),
            PackedFormat::Lut => Self::from_lut(&LutWeights::from_i2s(weights.view()), device),
        })
    }

    fn upload(layout: TernaryLayout, bytes: &[u8], device: &Device) -> Self {
        let data = TensorData::new(bytes.to_vec(), [layout.packed_rows(), layout.row_bytes()]);
        Self {
            packed: Tensor::from_data(data, (device, DType::U8)),
            layout,
        }
    }

    /// Wraps a `U8` tensor of packed weights `[packed_rows, k_padded / 4]` in the layout's format
    /// (a loaded module parameter).
    pub fn new(packed: Tensor<2, Int>, layout: TernaryLayout) -> Result<Self> {
        let expected = [layout.packed_rows(), layout.row_bytes()];
        if packed.dims() != expected {
            return Err(TernaryError::Shape(format!(
                "packed ternary weights are {:?}, expected {expected:?} for n={}, k={}",
                packed.dims(),
                layout.n,
                layout.k
            )));
        }
        if packed.dtype() != DType::U8 {
            return Err(TernaryError::Shape(format!(
                "packed ternary weights must be u8, got {:?}",
                packed.dtype()
            )));
        }
        Ok(Self { packed, layout })
    }

    /// The shape and scale.
    pub fn layout(&self) -> TernaryLayout {
        self.layout
    }

    /// The packed bytes.
    pub fn packed(&self) -> &Tensor<2, Int> {
        &self.packed
    }

    /// The weights read back to the host in I2_S, whatever their format on the device.
    pub fn to_i2s(&self) -> Result<I2sWeights> {
        let bytes = self
            .packed
            .clone()
            .into_data()
            .convert::<u8>()
            .into_vec::<u8>()
            .map_err(|e| TernaryError::Shape(format!("reading packed weights back: {e:?}")))?;
        match self.layout.format {
            PackedFormat::I2s => I2sWeights::from_codes(self.layout, bytes),
            PackedFormat::Lut => LutWeights::from_bytes(self.layout, bytes)?.to_i2s(),
        }
    }

    /// The dequantized float weights.
    ///
    /// # Shapes
    /// - output: `[n, k]`
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as TernaryOps>::ternary_dequantize(
            self.packed.clone().into_dispatch(),
            self.layout,
        ))
    }
}

/// Applies a ternary linear layer: per-token int8 quantization of `x`, the exact int8 x ternary
/// product, and the scale convention of the weights.
///
/// # Shapes
/// - `x`: `[..., k]`
/// - output: `[..., n]`
pub fn ternary_linear<const D: usize>(x: Tensor<D>, weight: &TernaryWeight) -> Result<Tensor<D>> {
    let mut outputs = ternary_linear_group(x, &[weight])?;
    Ok(outputs.swap_remove(0))
}

/// Applies several ternary layers to one input (query, key and value; gate and up): the same
/// outputs as [`ternary_linear`] per layer, with `x` quantized once and the rows of all layers
/// in one parallel call. The layers must share `k` and the activation rule.
///
/// # Shapes
/// - `x`: `[..., k]`
/// - output `i`: `[..., n_i]` for `weights[i]`
pub fn ternary_linear_group<const D: usize>(
    x: Tensor<D>,
    weights: &[&TernaryWeight],
) -> Result<Vec<Tensor<D>>> {
    let dims = x.dims();
    let Some(first) = weights.first().map(|w| w.layout) else {
        return Err(TernaryError::Shape(
            "a group of ternary layers needs at least one layer".into(),
        ));
    };
    for layout in weights.iter().map(|w| w.layout) {
        if D == 0 || dims[D - 1] != layout.k {
            return Err(TernaryError::Shape(format!(
                "input shape {dims:?} does not end in k={} of the ternary weights",
                layout.k
            )));
        }
        if layout.activation != first.activation {
            return Err(TernaryError::Shape(format!(
                "layers applied to one input must share the activation rule: {:?} and {:?}",
                first.activation, layout.activation
            )));
        }
    }
    Isa::selected()?;
    let dtype = x.dtype();
    let x = as_f32(x);
    let packed = |w: &TernaryWeight| w.packed.clone().into_dispatch();
    let mut outputs = Vec::with_capacity(weights.len());
    // Triples, then a pair or a single layer for the rest.
    for group in weights.chunks(3) {
        let x = x.clone().into_dispatch();
        match *group {
            [a, b, c] => {
                let (ya, yb, yc) = <Dispatch as TernaryOps>::ternary_linear_triple(
                    x,
                    packed(a),
                    packed(b),
                    packed(c),
                    [a.layout, b.layout, c.layout],
                );
                outputs.extend([ya, yb, yc]);
            }
            [a, b] => {
                let (ya, yb) = <Dispatch as TernaryOps>::ternary_linear_pair(
                    x,
                    packed(a),
                    packed(b),
                    [a.layout, b.layout],
                );
                outputs.extend([ya, yb]);
            }
            _ => {
                outputs.extend(group.iter().map(|w| {
                    <Dispatch as TernaryOps>::ternary_linear(x.clone(), packed(w), w.layout)
                }))
            }
        }
    }
    Ok(outputs
        .into_iter()
        .map(|y| restore(Tensor::<D>::from_dispatch(y), dtype))
        .collect())
}

/// The gated activation of a feed-forward block, `act(gate) * up`, on the rayon pool: Burn's
/// `silu(gate) * up` (or `relu(gate).square() * up`) within a few ulps (see [`FfnActivation`]).
///
/// # Shapes
/// - `gate`, `up`: one shape
/// - output: that shape
pub fn gated_activation<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
    activation: FfnActivation,
) -> Result<Tensor<D>> {
    if gate.dims() != up.dims() {
        return Err(TernaryError::Shape(format!(
            "gate {:?} and up {:?} must have one shape",
            gate.dims(),
            up.dims()
        )));
    }
    let dtype = gate.dtype();
    let y = Tensor::<D>::from_dispatch(<Dispatch as TernaryOps>::gated_activation(
        as_f32(gate).into_dispatch(),
        as_f32(up).into_dispatch(),
        activation,
    ));
    Ok(restore(y, dtype))
}

/// RMSNorm over the last dimension: `weight * (x / sqrt(mean(x^2) + epsilon))`, one pass per
/// row on the rayon pool.
///
/// # Shapes
/// - `x`: `[..., d]`, `weight`: `[d]`
/// - output: `[..., d]`
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<1>,
    epsilon: f64,
) -> Result<Tensor<D>> {
    let ([d], dims) = (weight.dims(), x.dims());
    if D == 0 || d == 0 || dims[D - 1] != d {
        return Err(TernaryError::Shape(format!(
            "RMSNorm weight of width {d} does not fit an input of shape {dims:?}"
        )));
    }
    let dtype = x.dtype();
    let y = Tensor::<D>::from_dispatch(<Dispatch as TernaryOps>::rms_norm(
        as_f32(x).into_dispatch(),
        as_f32(weight).into_dispatch(),
        epsilon,
    ));
    Ok(restore(y, dtype))
}

/// Rotary position embedding in the "rotate half" form of Llama and HF:
/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x[half..], x[..half]]`, one pass
/// per row on the rayon pool, with the bits of Burn's ops for the same formula.
///
/// # Shapes
/// - `x`: `[..., len, dim]`, `cos`, `sin`: `[len, dim]`
/// - output: `[..., len, dim]`
pub fn rotary_embedding<const D: usize>(
    x: Tensor<D>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
) -> Result<Tensor<D>> {
    let (dims, [len, dim]) = (x.dims(), cos.dims());
    if D < 2
        || dims[D - 2..] != [len, dim]
        || sin.dims() != [len, dim]
        || !dim.is_multiple_of(2)
        || dim == 0
    {
        return Err(TernaryError::Shape(format!(
            "rotary tables {:?} and {:?} (even width) do not fit an input of shape {dims:?}",
            cos.dims(),
            sin.dims()
        )));
    }
    let dtype = x.dtype();
    let y = Tensor::<D>::from_dispatch(<Dispatch as TernaryOps>::rotary_embedding(
        as_f32(x).into_dispatch(),
        as_f32(cos.clone()).into_dispatch(),
        as_f32(sin.clone()).into_dispatch(),
    ));
    Ok(restore(y, dtype))
}

/// The tensor in f32, which the host implementations read.
fn as_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    restore(t, DType::F32)
}

/// The tensor in `dtype` (unchanged if it already is).
fn restore<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Method form of [`ternary_linear`], so a call reads like Burn's own ops: `x.ternary_linear(&w)?`.
pub trait TernaryLinearExt<const D: usize> {
    /// See [`ternary_linear`].
    fn ternary_linear(self, weight: &TernaryWeight) -> Result<Tensor<D>>;
}

impl<const D: usize> TernaryLinearExt<D> for Tensor<D> {
    fn ternary_linear(self, weight: &TernaryWeight) -> Result<Tensor<D>> {
        ternary_linear(self, weight)
    }
}
