//! The Burn backend extension: a ternary linear layer, and the float steps around it in a
//! BitNet block, as Burn ops on Flex, NdArray and Autodiff.
//!
//! Packed weights (I2_S, the LUT kernel's format, or I2_S with its base-3 copy) live on the
//! device as a `U8` int tensor `[packed_rows, row_bytes]` ([`TernaryLayout`]'s, so Burn records
//! keep them) next to the layout. Flex and
//! NdArray read tensors in place and build outputs from the host code's `Vec`s (`host.rs`);
//! Autodiff adds the input gradient `dy · W` of the ternary layer and builds the float steps
//! from Burn's own tracked ops (`autodiff.rs`).

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22 but Burn users still run it.

mod autodiff;
mod host;
mod linear;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
pub use linear::{
    gated_rms_norm_ternary_linear, rms_norm_ternary_linear_group, ternary_linear,
    ternary_linear_group,
};

use crate::base3::{I2sBase3View, I2sBase3Weights};
use crate::error::{Result, TernaryError};
use crate::glu::FfnActivation;
use crate::i2s::{I2sWeights, PackedFormat, TernaryLayout};
use crate::lut::LutWeights;
use crate::lut3::{I2sLut3View, I2sLut3Weights};
use crate::select::KernelChoice;

/// Ternary ops a backend provides.
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait TernaryOps: Backend {
    /// Quantizes each row of `x` to int8 and multiplies it by the packed ternary weights.
    ///
    /// # Shapes
    /// - `x`: `[..., k]` (f32)
    /// - `packed`: `[packed_rows, row_bytes]` of `layout` (u8, in its format)
    /// - output: `[..., n]`
    fn ternary_linear(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self>;

    /// [`TernaryOps::ternary_linear`] for two layers that read the same input (gate and up):
    /// `x` is quantized once and one parallel call runs the rows of both (I2_S weights, or I2_S
    /// + base-3 ones; other formats and mixes run one by one). Burn's extension ops take no `Vec` of tensors, hence a pair and
    /// a triple.
    ///
    /// # Shapes
    /// - `x`: `[..., k]` (f32)
    /// - `first`, `second`: `[packed_rows_i, row_bytes_i]` (u8)
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

    /// [`TernaryOps::ternary_linear`] of `x` RMS-normalized: the bits of
    /// [`TernaryOps::rms_norm`] then [`TernaryOps::ternary_linear`], each row normalized just
    /// before it is quantized, so the normalized tensor is never written out (see
    /// [`ActivationSource`](crate::quant::ActivationSource)).
    ///
    /// # Shapes
    /// - `x`: `[..., k]` (f32), `weight`: `[k]` (f32)
    /// - `packed`: `[packed_rows, row_bytes]` (u8)
    /// - output: `[..., n]`
    fn rms_norm_ternary_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self>;

    /// [`TernaryOps::rms_norm_ternary_linear`] for two layers (gate and up), as
    /// [`TernaryOps::ternary_linear_pair`].
    fn rms_norm_ternary_linear_pair(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        layouts: [TernaryLayout; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// [`TernaryOps::rms_norm_ternary_linear`] for three layers (query, key and value), as
    /// [`TernaryOps::ternary_linear_triple`].
    fn rms_norm_ternary_linear_triple(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
        first: IntTensor<Self>,
        second: IntTensor<Self>,
        third: IntTensor<Self>,
        layouts: [TernaryLayout; 3],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// A feed-forward block's down projection of `rms_norm(act(gate) * up)`: the bits of
    /// [`TernaryOps::gated_activation`], [`TernaryOps::rms_norm`] and
    /// [`TernaryOps::ternary_linear`], one row at a time (see [`ActivationSource::Gated`](crate::quant::ActivationSource::Gated)).
    ///
    /// # Shapes
    /// - `gate`, `up`: `[..., k]` (f32), `weight`: `[k]` (f32)
    /// - `packed`: `[packed_rows, row_bytes]` (u8)
    /// - output: `[..., n]`
    fn gated_rms_norm_ternary_linear(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: FfnActivation,
        weight: FloatTensor<Self>,
        epsilon: f64,
        packed: IntTensor<Self>,
        layout: TernaryLayout,
    ) -> FloatTensor<Self>;

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

    /// Causal attention of `len` new positions starting at `start` over a key/value cache,
    /// one pass per query row (see [`crate::attention::cached_attention`]).
    ///
    /// # Shapes
    /// - `queries`: `[batch, kv_heads, rows, dim]` (f32), query heads sharing a key/value head
    ///   stacked along `rows`; row `j` is at position `start + j % len`
    /// - `keys`, `values`: `[batch, kv_heads, capacity, dim]`, positions `0..start + len`
    ///   filled; both f32, or both f16 (a 16-bit cache, widened as it is read)
    /// - output: `[batch, len, heads, dim]`, `heads = kv_heads * rows / len`, position-major
    fn cached_attention(
        queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        start: usize,
        len: usize,
    ) -> FloatTensor<Self>;

    /// Writes `new` into a KV cache buffer at positions `start..start + len`, in place when
    /// nothing else holds the buffer (see [`crate::kv::write_positions`]).
    ///
    /// # Shapes
    /// - `cache`: `[batch, heads, capacity, dim]` (f32, or f16: the new values are rounded as
    ///   they are written), `new`: `[batch, heads, len, dim]` (f32)
    /// - output: `[batch, heads, capacity, dim]`
    fn cache_write(
        cache: FloatTensor<Self>,
        new: FloatTensor<Self>,
        start: usize,
    ) -> FloatTensor<Self>;

    /// [`TernaryOps::cache_write`] of `new` rotated as [`TernaryOps::rotary_embedding`] rotates
    /// it (`cos`, `sin`: `[len, dim]`): the keys of new positions, rotated on their way into the
    /// cache.
    fn cache_write_rotated(
        cache: FloatTensor<Self>,
        new: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        start: usize,
    ) -> FloatTensor<Self>;

    /// The dequantized weights.
    ///
    /// # Shapes
    /// - `packed`: `[packed_rows, row_bytes]` (u8)
    /// - output: `[n, k]` (f32)
    fn ternary_dequantize(packed: IntTensor<Self>, layout: TernaryLayout) -> FloatTensor<Self>;
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
        Self::upload(weights.layout(), weights.codes().to_vec(), device)
    }

    /// Uploads weights in the LUT kernel's format.
    pub fn from_lut(weights: &LutWeights, device: &Device) -> Self {
        Self::upload(weights.layout(), weights.bytes().to_vec(), device)
    }

    /// Uploads weights in the I2_S + base-3 format.
    pub fn from_i2s_base3(weights: &I2sBase3Weights, device: &Device) -> Self {
        Self::upload(weights.layout(), weights.bytes().to_vec(), device)
    }

    /// Uploads weights in the I2_S + LUT3 format.
    pub fn from_i2s_lut3(weights: &I2sLut3Weights, device: &Device) -> Self {
        Self::upload(weights.layout(), weights.bytes().to_vec(), device)
    }

    /// Uploads I2_S weights in the format `BITNET_KERNEL` picks for them (`auto`: the faster
    /// kernel family on this shape, measured once per shape). Takes the weights so that their
    /// bytes (or the other format's, built from them) become the tensor without a second copy
    /// of the model's codes.
    pub fn from_i2s_selected(weights: I2sWeights, device: &Device) -> Result<Self> {
        let (layout, bytes) = match KernelChoice::selected()?.format_for(&weights)? {
            PackedFormat::I2s => weights.into_parts(),
            PackedFormat::Lut => LutWeights::from_i2s(weights.view()).into_parts(),
            PackedFormat::I2sBase3 => I2sBase3Weights::from_i2s(&weights).into_parts(),
            PackedFormat::I2sLut3 => I2sLut3Weights::from_i2s(&weights).into_parts(),
        };
        Ok(Self::upload(layout, bytes, device))
    }

    fn upload(layout: TernaryLayout, bytes: Vec<u8>, device: &Device) -> Self {
        let data = TensorData::new(bytes, [layout.packed_rows(), layout.row_bytes()]);
        Self {
            packed: Tensor::from_data(data, (device, DType::U8)),
            layout,
        }
    }

    /// Wraps a `U8` tensor of packed weights `[packed_rows, row_bytes]` in the layout's format
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
            PackedFormat::I2sBase3 => {
                let i2s = I2sBase3View::new(self.layout, &bytes)?.i2s();
                I2sWeights::from_codes(i2s.layout, i2s.codes.to_vec())
            }
            PackedFormat::I2sLut3 => {
                let i2s = I2sLut3View::new(self.layout, &bytes)?.i2s();
                I2sWeights::from_codes(i2s.layout, i2s.codes.to_vec())
            }
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
    check_gate_and_up(&gate, &up)?;
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

/// Causal attention of `len` new positions starting at `start` over a key/value cache:
/// `softmax(q k^T / sqrt(dim))` over the positions each query may see, times the values. A
/// 16-bit cache (keys and values both f16, see [`cache_write`]) is read as it is stored and
/// widened to f32 for the computation; any other dtype is computed with in f32.
///
/// # Shapes
/// - `queries`: `[batch, kv_heads, rows, dim]`, query heads sharing a key/value head stacked
///   along `rows`; row `j` is at position `start + j % len`
/// - `keys`, `values`: `[batch, kv_heads, capacity, dim]`, positions `0..start + len` filled
/// - output: `[batch, len, heads, dim]` with `heads = kv_heads * rows / len`: query row `j` of
///   key/value head `h` comes out as head `h * rows / len + j / len` at position `j % len`,
///   the layout the output projection reads after a reshape (no transposing copy)
pub fn cached_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    start: usize,
    len: usize,
) -> Result<Tensor<4>> {
    let ([batch, heads, rows, dim], cache) = (queries.dims(), keys.dims());
    if cache != values.dims()
        || cache[..2] != [batch, heads]
        || cache[3] != dim
        || len == 0
        || !rows.is_multiple_of(len)
        || start + len > cache[2]
    {
        return Err(TernaryError::Shape(format!(
            "queries {:?} ({len} new positions from {start}) do not fit keys {cache:?} and values {:?}",
            queries.dims(),
            values.dims()
        )));
    }
    let dtype = queries.dtype();
    let keys = as_cache(keys);
    let values = restore(values, keys.dtype());
    let y = Tensor::<4>::from_dispatch(<Dispatch as TernaryOps>::cached_attention(
        as_f32(queries).into_dispatch(),
        keys.into_dispatch(),
        values.into_dispatch(),
        start,
        len,
    ));
    Ok(restore(y, dtype))
}

/// Writes the keys or values of `len` new positions into a KV cache buffer at positions
/// `start..start + len`, the keys rotated by RoPE when `rotation` (`cos`, `sin`) is given, as
/// [`rotary_embedding`] rotates them. The buffer is written in place when nothing else holds it
/// (on Flex and NdArray; Autodiff writes a tracked copy), and `new` is read where it lies, so the
/// projections' output viewed with swapped axes is not copied first. On an error (shapes that
/// do not fit) `cache` is left as it was.
///
/// # Shapes
/// - `cache`: `[batch, heads, capacity, dim]`
/// - `new`: `[batch, heads, len, dim]`, `cos`, `sin`: `[len, dim]`
pub fn cache_write(
    cache: &mut Tensor<4>,
    new: Tensor<4>,
    start: usize,
    rotation: Option<(&Tensor<2>, &Tensor<2>)>,
) -> Result<()> {
    let ([batch, heads, capacity, dim], shape) = (cache.dims(), new.dims());
    let len = shape[2];
    let tables_fit = rotation.is_none_or(|(cos, sin)| {
        cos.dims() == [len, dim] && sin.dims() == [len, dim] && dim.is_multiple_of(2)
    });
    if shape != [batch, heads, len, dim] || start + len > capacity || !tables_fit {
        return Err(TernaryError::Shape(format!(
            "new positions {shape:?} from {start} (rotation tables {:?}) do not fit a cache {:?}",
            rotation.map(|(cos, sin)| (cos.dims(), sin.dims())),
            cache.dims()
        )));
    }
    // Taken out (an empty tensor stands in) so the op holds the only handle to the buffer.
    let buffer = std::mem::replace(cache, Tensor::empty([0; 4], &cache.device()));
    let dtype = buffer.dtype();
    let (buffer, new) = (
        as_cache(buffer).into_dispatch(),
        as_f32(new).into_dispatch(),
    );
    let written = match rotation {
        Some((cos, sin)) => <Dispatch as TernaryOps>::cache_write_rotated(
            buffer,
            new,
            as_f32(cos.clone()).into_dispatch(),
            as_f32(sin.clone()).into_dispatch(),
            start,
        ),
        None => <Dispatch as TernaryOps>::cache_write(buffer, new, start),
    };
    *cache = restore(Tensor::<4>::from_dispatch(written), dtype);
    Ok(())
}

/// Checks that a feed-forward block's gate and up projections have one shape.
fn check_gate_and_up<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Result<()> {
    if gate.dims() != up.dims() {
        return Err(TernaryError::Shape(format!(
            "gate {:?} and up {:?} must have one shape",
            gate.dims(),
            up.dims()
        )));
    }
    Ok(())
}

/// The tensor in f32, which the host implementations read.
fn as_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    restore(t, DType::F32)
}

/// A KV cache buffer as the host implementations read it: f16 as it is, anything else in f32.
fn as_cache<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F16 {
        t
    } else {
        as_f32(t)
    }
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
