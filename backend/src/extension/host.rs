//! Flex and NdArray: both read their tensors in place and run the same host code.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22 but Burn users still run it.

use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::backend::ndarray::NdArrayTensor;
use burn::backend::{Flex, NdArray, TensorMetadata};
use burn::tensor::{DType, Shape, TensorData};
use half::f16;

use super::TernaryOps;
use crate::attention::{self, AttentionShape};
use crate::base3::{Base3, I2sBase3View};
use crate::decode_copy::{CopyView, DecodeCopy, copy_linear_group_quantized};
use crate::error::Result;
use crate::glu::FfnActivation;
use crate::i2s::{I2sView, PackedFormat, TernaryLayout};
use crate::kernels::{
    Isa, quantize_for_group, ternary_linear_group_quantized, ternary_linear_quantized,
};
use crate::kv::CacheValue;
use crate::lut::{LutView, lut_linear_quantized};
use crate::lut3::{I2sLut3View, Lut3};
use crate::quant::{ActivationSource, NormWeight, QuantizedActivations};
use crate::rows::{Axes, Rows};
use crate::{kv, norm, rope};

/// `N` ternary layers applied to the rows `source` gives (`x_shape` with `k` last): validated
/// by [`super::TernaryWeight`] and the public wrappers beforehand, so a failure here is a broken
/// invariant, not bad user input. Layers of one format are quantized for once; a mix of formats
/// (each may pad rows differently) once per layer.
fn group_on_host<const N: usize>(
    source: ActivationSource<'_>,
    x_shape: &Shape,
    codes: [&[u8]; N],
    layouts: &[TernaryLayout; N],
) -> [TensorData; N] {
    const CHECKED: &str = "ternary_linear checked the packed lengths and the input shape";
    let m = source.len() / layouts[0].k;
    let isa = Isa::selected().expect("ternary_linear checked BITNET_ISA before dispatch");
    let quantize = |layouts: &[TernaryLayout]| quantize_for_group(layouts, &source, m);
    let formats = |format| layouts.iter().all(|l| l.format == format);
    let outputs = if formats(PackedFormat::I2s) {
        let views = views(&codes, layouts, I2sView::new).expect(CHECKED);
        quantize(layouts).and_then(|xq| ternary_linear_group_quantized(isa, &views, &xq))
    } else if formats(PackedFormat::I2sBase3) {
        quantize(layouts).and_then(|xq| copy_group::<Base3>(isa, &codes, layouts, &xq))
    } else if formats(PackedFormat::I2sLut3) {
        quantize(layouts).and_then(|xq| copy_group::<Lut3>(isa, &codes, layouts, &xq))
    } else {
        codes
            .iter()
            .zip(layouts)
            .map(|(codes, layout)| {
                let xq = quantize(std::slice::from_ref(layout))?;
                match layout.format {
                    PackedFormat::I2s => I2sView::new(*layout, codes)
                        .and_then(|w| ternary_linear_quantized(isa, w, &xq)),
                    PackedFormat::I2sBase3 => {
                        copy_group::<Base3>(isa, &[codes], std::slice::from_ref(layout), &xq)
                            .map(|mut ys| ys.swap_remove(0))
                    }
                    PackedFormat::I2sLut3 => {
                        copy_group::<Lut3>(isa, &[codes], std::slice::from_ref(layout), &xq)
                            .map(|mut ys| ys.swap_remove(0))
                    }
                    PackedFormat::Lut => {
                        LutView::new(*layout, codes).and_then(|w| lut_linear_quantized(isa, w, &xq))
                    }
                }
            })
            .collect::<Result<Vec<_>>>()
    };
    let mut outputs = outputs.expect(CHECKED).into_iter();
    std::array::from_fn(|i| {
        let mut shape = x_shape.clone();
        let last = shape.len() - 1;
        shape[last] = layouts[i].n;
        TensorData::new(outputs.next().expect("one output per layer"), shape)
    })
}

/// Layers in one I2_S + decode-copy format applied to the activations `xq`.
fn copy_group<C: DecodeCopy>(
    isa: Isa,
    codes: &[&[u8]],
    layouts: &[TernaryLayout],
    xq: &QuantizedActivations,
) -> Result<Vec<Vec<f32>>> {
    let views = views(codes, layouts, CopyView::<C>::new)?;
    copy_linear_group_quantized(isa, &views, xq)
}

/// Every layer's view in one format, for one parallel call over all of them.
fn views<'a, V>(
    codes: &[&'a [u8]],
    layouts: &[TernaryLayout],
    view: impl Fn(TernaryLayout, &'a [u8]) -> Result<V>,
) -> Result<Vec<V>> {
    codes
        .iter()
        .zip(layouts)
        .map(|(c, l)| view(*l, c))
        .collect()
}

fn dequantize_on_host(codes: &[u8], layout: TernaryLayout) -> TensorData {
    let values = match layout.format {
        PackedFormat::I2s => I2sView::new(layout, codes).map(|w| w.dequantize()),
        PackedFormat::Lut => LutView::new(layout, codes).map(|w| w.dequantize()),
        PackedFormat::I2sBase3 => I2sBase3View::new(layout, codes).map(|w| w.i2s().dequantize()),
        PackedFormat::I2sLut3 => I2sLut3View::new(layout, codes).map(|w| w.i2s().dequantize()),
    }
    .expect("TernaryWeight validated the packed length");
    TensorData::new(values, [layout.n, layout.k])
}

/// The dimensions of a [`TernaryOps::cached_attention`] call (checked by its public wrapper).
fn attention_shape(queries: &Shape, keys: &Shape, start: usize, len: usize) -> AttentionShape {
    AttentionShape {
        batch: queries[0],
        kv_heads: queries[1],
        rows: queries[2],
        dim: queries[3],
        capacity: keys[2],
        start,
        len,
    }
}

/// A CPU backend's tensor as the host code reads and writes it.
trait HostTensor: TensorMetadata + Sized {
    /// The values as f32, in place when the tensor is contiguous.
    fn f32s(&self) -> Cow<'_, [f32]>;
    /// The values as u8 (packed weights), in place when the tensor is contiguous.
    fn u8s(&self) -> Cow<'_, [u8]>;
    /// The f32 values to overwrite in place, if the tensor is contiguous and nothing else
    /// holds its buffer.
    fn f32s_mut(&mut self) -> Option<&mut [f32]> {
        None
    }
    /// The values of an f16 tensor (a 16-bit KV cache), in place when the tensor is
    /// contiguous; `None` for other dtypes and on backends without f16 tensors (NdArray).
    fn f16s(&self) -> Option<Cow<'_, [f16]>> {
        None
    }
    /// The f16 values to overwrite in place, as [`HostTensor::f32s_mut`].
    fn f16s_mut(&mut self) -> Option<&mut [f16]> {
        None
    }
    /// The f32 values as rows along the last axis, in row-major order of the other axes;
    /// in place where the backend can say where each row lies, else copied.
    fn f32_rows(&self) -> Rows<'_> {
        contiguous_rows(self)
    }
    /// A tensor holding `data`.
    fn from_host(data: TensorData) -> Self;
}

impl HostTensor for FlexTensor {
    fn f32s(&self) -> Cow<'_, [f32]> {
        flex_slice(self)
    }

    fn u8s(&self) -> Cow<'_, [u8]> {
        flex_slice(self)
    }

    fn f32s_mut(&mut self) -> Option<&mut [f32]> {
        flex_slice_mut(self, DType::F32)
    }

    fn f16s(&self) -> Option<Cow<'_, [f16]>> {
        (self.dtype() == DType::F16).then(|| flex_slice(self))
    }

    fn f16s_mut(&mut self) -> Option<&mut [f16]> {
        flex_slice_mut(self, DType::F16)
    }

    /// A view with swapped axes (whose rows stay contiguous) is read in place: copying it
    /// first cost two passes over each layer's queries and keys in prefill.
    fn f32_rows(&self) -> Rows<'_> {
        flex_rows(self).unwrap_or_else(|| contiguous_rows(self))
    }

    fn from_host(data: TensorData) -> Self {
        FlexTensor::from_data(data)
    }
}

fn flex_slice<E: burn::tensor::Element + bytemuck::Pod>(t: &FlexTensor) -> Cow<'_, [E]> {
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

/// The values of `t` to overwrite in place, if they are contiguous values of `dtype` (that of
/// `E`) and nothing else holds its buffer.
fn flex_slice_mut<E: burn::tensor::Element + bytemuck::Pod>(
    t: &mut FlexTensor,
    dtype: DType,
) -> Option<&mut [E]> {
    let (start, end) = t.layout().contiguous_offsets()?;
    if t.dtype() != dtype {
        return None;
    }
    Some(&mut t.try_storage_mut::<E>()?[start..end])
}

/// The rows of `t` copied one after another (in place if it is contiguous).
fn contiguous_rows<T: HostTensor>(t: &T) -> Rows<'_> {
    let shape = t.shape();
    let width = shape
        .num_dims()
        .checked_sub(1)
        .map_or(1, |last| shape[last]);
    Rows::contiguous(t.f32s(), width)
}

/// The rows of an f32 Flex tensor where they lie, if its last axis is contiguous and no stride
/// is negative (a flip).
fn flex_rows(t: &FlexTensor) -> Option<Rows<'_>> {
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    let (&1, outer) = strides.split_last()? else {
        return None;
    };
    if t.dtype() != DType::F32 {
        return None;
    }
    let outer = outer
        .iter()
        .map(|&s| s.try_into().ok())
        .collect::<Option<Axes>>()?;
    let extents = Axes::from_slice(&shape[..outer.len()]);
    let width = shape[outer.len()];
    Rows::strided(
        t.storage::<f32>(),
        layout.start_offset(),
        extents,
        outer,
        width,
    )
}

impl HostTensor for NdArrayTensor {
    fn f32s(&self) -> Cow<'_, [f32]> {
        match self {
            NdArrayTensor::F32(s) => match s.view().to_slice() {
                Some(slice) => slice.into(),
                None => s.view().iter().copied().collect::<Vec<_>>().into(),
            },
            other => panic!("ternary ops expect f32 values, got {:?}", other.dtype()),
        }
    }

    fn u8s(&self) -> Cow<'_, [u8]> {
        match self {
            NdArrayTensor::U8(s) => match s.view().to_slice() {
                Some(slice) => slice.into(),
                None => s.view().iter().copied().collect::<Vec<_>>().into(),
            },
            other => panic!("packed ternary weights must be u8, got {:?}", other.dtype()),
        }
    }

    fn f32s_mut(&mut self) -> Option<&mut [f32]> {
        let NdArrayTensor::F32(storage) = self else {
            return None;
        };
        if !storage.is_unique() {
            return None;
        }
        storage.ensure_owned().as_slice_mut()
    }

    fn from_host(data: TensorData) -> Self {
        NdArrayTensor::from_data(data)
    }
}

/// `N` ternary layers applied on the host to the rows `source` gives (`x_shape`'s, `k` last).
fn linear<T: HostTensor, const N: usize>(
    source: ActivationSource<'_>,
    x_shape: &Shape,
    packed: [&T; N],
    layouts: &[TernaryLayout; N],
) -> [T; N] {
    let codes = packed.map(T::u8s);
    let codes = std::array::from_fn(|i| codes[i].as_ref());
    group_on_host(source, x_shape, codes, layouts).map(T::from_host)
}

/// [`linear`] of `x`'s rows as they are.
fn plain_linear<T: HostTensor, const N: usize>(
    x: &T,
    packed: [&T; N],
    layouts: &[TernaryLayout; N],
) -> [T; N] {
    linear(
        ActivationSource::Plain(&x.f32s()),
        &x.shape(),
        packed,
        layouts,
    )
}

/// [`linear`] of `x`'s rows RMS-normalized with `weight` as they are quantized.
fn normed_linear<T: HostTensor, const N: usize>(
    x: &T,
    weight: &T,
    epsilon: f64,
    packed: [&T; N],
    layouts: &[TernaryLayout; N],
) -> [T; N] {
    let (values, weight) = (x.f32s(), weight.f32s());
    let norm = NormWeight {
        weight: &weight,
        epsilon,
    };
    let source = ActivationSource::Normed { x: &values, norm };
    linear(source, &x.shape(), packed, layouts)
}

/// `new` written into `cache` (f32, or f16 on Flex) at positions `start..` (see
/// [`kv::write_positions`]).
fn write_cache<T: HostTensor>(
    cache: T,
    new: &T,
    start: usize,
    tables: Option<(&[f32], &[f32])>,
) -> T {
    let rows = new.f32_rows();
    if cache.dtype() == DType::F16 {
        let copy = |c: &T| c.f16s().expect("an f16 tensor").into_owned();
        write_buffer(cache, T::f16s_mut, copy, &rows, start, tables)
    } else {
        let copy = |c: &T| c.f32s().into_owned();
        write_buffer(cache, T::f32s_mut, copy, &rows, start, tables)
    }
}

/// [`write_cache`] into values of type `E`: in place when the backend lets the cache's buffer
/// be overwritten (`in_place`), else into a `copy`.
fn write_buffer<T: HostTensor, E: CacheValue + burn::tensor::Element>(
    mut cache: T,
    in_place: impl FnOnce(&mut T) -> Option<&mut [E]>,
    copy: impl FnOnce(&T) -> Vec<E>,
    rows: &Rows<'_>,
    start: usize,
    tables: Option<(&[f32], &[f32])>,
) -> T {
    let shape = cache.shape();
    if let Some(buffer) = in_place(&mut cache) {
        kv::write_positions(buffer, shape[2], rows, start, tables);
        return cache;
    }
    let mut buffer = copy(&cache);
    kv::write_positions(&mut buffer, shape[2], rows, start, tables);
    T::from_host(TensorData::new(buffer, shape))
}

/// `impl TernaryOps` for a backend whose tensors are [`HostTensor`]s: every op reads its inputs
/// in place and runs the host code, the same for Flex and NdArray.
macro_rules! host_ternary_ops {
    ($backend:ty, $tensor:ty) => {
        impl TernaryOps for $backend {
            fn ternary_linear(x: $tensor, packed: $tensor, layout: TernaryLayout) -> $tensor {
                let [y] = plain_linear(&x, [&packed], &[layout]);
                y
            }

            fn ternary_linear_pair(
                x: $tensor,
                first: $tensor,
                second: $tensor,
                layouts: [TernaryLayout; 2],
            ) -> ($tensor, $tensor) {
                let [a, b] = plain_linear(&x, [&first, &second], &layouts);
                (a, b)
            }

            fn ternary_linear_triple(
                x: $tensor,
                first: $tensor,
                second: $tensor,
                third: $tensor,
                layouts: [TernaryLayout; 3],
            ) -> ($tensor, $tensor, $tensor) {
                let packed = [&first, &second, &third];
                let [a, b, c] = plain_linear(&x, packed, &layouts);
                (a, b, c)
            }

            fn rms_norm_ternary_linear(
                x: $tensor,
                weight: $tensor,
                epsilon: f64,
                packed: $tensor,
                layout: TernaryLayout,
            ) -> $tensor {
                let [y] = normed_linear(&x, &weight, epsilon, [&packed], &[layout]);
                y
            }

            fn rms_norm_ternary_linear_pair(
                x: $tensor,
                weight: $tensor,
                epsilon: f64,
                first: $tensor,
                second: $tensor,
                layouts: [TernaryLayout; 2],
            ) -> ($tensor, $tensor) {
                let [a, b] = normed_linear(&x, &weight, epsilon, [&first, &second], &layouts);
                (a, b)
            }

            fn rms_norm_ternary_linear_triple(
                x: $tensor,
                weight: $tensor,
                epsilon: f64,
                first: $tensor,
                second: $tensor,
                third: $tensor,
                layouts: [TernaryLayout; 3],
            ) -> ($tensor, $tensor, $tensor) {
                let packed = [&first, &second, &third];
                let [a, b, c] = normed_linear(&x, &weight, epsilon, packed, &layouts);
                (a, b, c)
            }

            fn gated_rms_norm_ternary_linear(
                gate: $tensor,
                up: $tensor,
                activation: FfnActivation,
                weight: $tensor,
                epsilon: f64,
                packed: $tensor,
                layout: TernaryLayout,
            ) -> $tensor {
                let (values, up, weight) = (gate.f32s(), up.f32s(), weight.f32s());
                let source = ActivationSource::Gated {
                    gate: &values,
                    up: &up,
                    activation,
                    norm: Some(NormWeight {
                        weight: &weight,
                        epsilon,
                    }),
                };
                let [y] = linear(source, &gate.shape(), [&packed], &[layout]);
                y
            }

            fn gated_activation(
                mut gate: $tensor,
                up: $tensor,
                activation: FfnActivation,
            ) -> $tensor {
                if let Some(values) = gate.f32s_mut() {
                    activation.apply_in_place(values, &up.f32s());
                    return gate;
                }
                let y = activation.apply(&gate.f32s(), &up.f32s());
                <$tensor>::from_host(TensorData::new(y, gate.shape()))
            }

            fn rms_norm(x: $tensor, weight: $tensor, epsilon: f64) -> $tensor {
                let y = norm::rms_norm(&x.f32s(), &weight.f32s(), epsilon);
                <$tensor>::from_host(TensorData::new(y, x.shape()))
            }

            fn rotary_embedding(x: $tensor, cos: $tensor, sin: $tensor) -> $tensor {
                let y = rope::rotate_half(&x.f32_rows(), &cos.f32s(), &sin.f32s());
                <$tensor>::from_host(TensorData::new(y, x.shape()))
            }

            fn cached_attention(
                queries: $tensor,
                keys: $tensor,
                values: $tensor,
                start: usize,
                len: usize,
            ) -> $tensor {
                let q = queries.f32s();
                let shape = attention_shape(&queries.shape(), &keys.shape(), start, len);
                let y = match (keys.f16s(), values.f16s()) {
                    (Some(k), Some(v)) => attention::cached_attention(&q, &k, &v, shape),
                    _ => attention::cached_attention(&q, &keys.f32s(), &values.f32s(), shape),
                };
                <$tensor>::from_host(TensorData::new(y, shape.output_shape()))
            }

            fn cache_write(cache: $tensor, new: $tensor, start: usize) -> $tensor {
                write_cache(cache, &new, start, None)
            }

            fn cache_write_rotated(
                cache: $tensor,
                new: $tensor,
                cos: $tensor,
                sin: $tensor,
                start: usize,
            ) -> $tensor {
                let (cos, sin) = (cos.f32s(), sin.f32s());
                write_cache(cache, &new, start, Some((&cos, &sin)))
            }

            fn ternary_dequantize(packed: $tensor, layout: TernaryLayout) -> $tensor {
                <$tensor>::from_host(dequantize_on_host(&packed.u8s(), layout))
            }
        }
    };
}

host_ternary_ops!(Flex, FlexTensor);
host_ternary_ops!(NdArray, NdArrayTensor);

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(values: Vec<f32>, shape: [usize; 3]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    #[test]
    fn only_a_contiguous_flex_tensor_nothing_else_holds_is_overwritten_in_place() {
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut owned = flex(values.clone(), [2, 3, 4]);
        assert_eq!(owned.f32s_mut().map(|v| v.to_vec()), Some(values.clone()));
        let held = flex(values.clone(), [2, 3, 4]);
        let mut shared = held.clone();
        assert!(shared.f32s_mut().is_none(), "a clone shares the buffer");
        let mut swapped = flex(values, [2, 3, 4]).transpose(0, 1);
        assert!(
            swapped.f32s_mut().is_none(),
            "a transposed view is not contiguous"
        );
    }

    #[test]
    fn a_swapped_flex_view_is_read_in_place_and_a_flipped_one_is_not() {
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let stored = flex(values.clone(), [2, 3, 4]);
        let swapped = stored.transpose(0, 1);
        let rows = swapped.f32_rows();
        let read: Vec<f32> = rows.from_row(0).flatten().copied().collect();
        let want: Vec<f32> = [0, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|&r| values[r * 4..r * 4 + 4].to_vec())
            .collect();
        assert_eq!(read, want);
        // Row 1 of the view is stored row 3: read from the tensor's own buffer, not a copy.
        let row = rows.from_row(1).next().unwrap();
        assert_eq!(row.as_ptr(), swapped.storage::<f32>()[12..].as_ptr());
        let flipped = stored.clone().with_layout(stored.layout().flip(&[1]));
        assert!(
            flex_rows(&flipped).is_none(),
            "a negative stride is copied first"
        );
    }
}
