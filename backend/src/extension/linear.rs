//! The public ternary linear ops: one layer or a group of layers on one input, plain or with
//! the float step before them (an RMSNorm, or a feed-forward block's gated activation and
//! norm) fused into their activation quantization.

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Tensor;

use super::{TernaryOps, TernaryWeight, as_f32, check_gate_and_up, restore};
use crate::error::{Result, TernaryError};
use crate::glu::FfnActivation;
use crate::i2s::TernaryLayout;
use crate::kernels::Isa;

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
    run_group(x, weights, None)
}

/// [`ternary_linear_group`] of `rms_norm(x, norm_weight, epsilon)` (see [`super::rms_norm`]):
/// the same bits, with each row normalized just before it is quantized rather than the
/// normalized tensor written out and read back (a decoder layer's input norm before its query,
/// key and value projections, or before gate and up).
///
/// # Shapes
/// - `x`: `[..., k]`, `norm_weight`: `[k]`
/// - output `i`: `[..., n_i]` for `weights[i]`
pub fn rms_norm_ternary_linear_group<const D: usize>(
    x: Tensor<D>,
    norm_weight: Tensor<1>,
    epsilon: f64,
    weights: &[&TernaryWeight],
) -> Result<Vec<Tensor<D>>> {
    run_group(x, weights, Some((norm_weight, epsilon)))
}

/// The down projection of a feed-forward block with a norm before it (2B4T's `ffn_sub_norm`):
/// `ternary_linear(rms_norm(act(gate) * up))` with the bits of [`super::gated_activation`],
/// [`super::rms_norm`] and [`ternary_linear`], one row at a time.
///
/// # Shapes
/// - `gate`, `up`: `[..., k]`, `norm_weight`: `[k]`
/// - output: `[..., n]`
pub fn gated_rms_norm_ternary_linear<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
    activation: FfnActivation,
    norm_weight: Tensor<1>,
    epsilon: f64,
    weight: &TernaryWeight,
) -> Result<Tensor<D>> {
    check_gate_and_up(&gate, &up)?;
    check_inputs(&gate.dims(), &[weight.layout])?;
    check_norm_width(&norm_weight, weight.layout.k)?;
    let dtype = gate.dtype();
    let y = <Dispatch as TernaryOps>::gated_rms_norm_ternary_linear(
        as_f32(gate).into_dispatch(),
        as_f32(up).into_dispatch(),
        activation,
        as_f32(norm_weight).into_dispatch(),
        epsilon,
        weight.packed.clone().into_dispatch(),
        weight.layout,
    );
    Ok(restore(Tensor::from_dispatch(y), dtype))
}

/// Layers applied to `x` (normalized first when `norm` is set): triples, then a pair or a single
/// layer for the rest, each one backend op.
fn run_group<const D: usize>(
    x: Tensor<D>,
    weights: &[&TernaryWeight],
    norm: Option<(Tensor<1>, f64)>,
) -> Result<Vec<Tensor<D>>> {
    let layouts: Vec<TernaryLayout> = weights.iter().map(|w| w.layout).collect();
    check_inputs(&x.dims(), &layouts)?;
    if let Some((weight, _)) = &norm {
        check_norm_width(weight, layouts[0].k)?;
    }
    let dtype = x.dtype();
    let x = as_f32(x);
    let norm = norm.map(|(weight, epsilon)| (as_f32(weight).into_dispatch(), epsilon));
    let packed = |w: &TernaryWeight| w.packed.clone().into_dispatch();
    let mut outputs: Vec<FloatTensor<Dispatch>> = Vec::with_capacity(weights.len());
    for group in weights.chunks(3) {
        let x = x.clone().into_dispatch();
        let norm = norm.clone();
        match (group, norm) {
            (&[a, b, c], None) => {
                let (ya, yb, yc) = <Dispatch as TernaryOps>::ternary_linear_triple(
                    x,
                    packed(a),
                    packed(b),
                    packed(c),
                    [a.layout, b.layout, c.layout],
                );
                outputs.extend([ya, yb, yc]);
            }
            (&[a, b, c], Some((weight, epsilon))) => {
                let (ya, yb, yc) = <Dispatch as TernaryOps>::rms_norm_ternary_linear_triple(
                    x,
                    weight,
                    epsilon,
                    packed(a),
                    packed(b),
                    packed(c),
                    [a.layout, b.layout, c.layout],
                );
                outputs.extend([ya, yb, yc]);
            }
            (&[a, b], None) => {
                let (ya, yb) = <Dispatch as TernaryOps>::ternary_linear_pair(
                    x,
                    packed(a),
                    packed(b),
                    [a.layout, b.layout],
                );
                outputs.extend([ya, yb]);
            }
            (&[a, b], Some((weight, epsilon))) => {
                let (ya, yb) = <Dispatch as TernaryOps>::rms_norm_ternary_linear_pair(
                    x,
                    weight,
                    epsilon,
                    packed(a),
                    packed(b),
                    [a.layout, b.layout],
                );
                outputs.extend([ya, yb]);
            }
            (&[a], None) => {
                outputs.push(<Dispatch as TernaryOps>::ternary_linear(
                    x,
                    packed(a),
                    a.layout,
                ));
            }
            (&[a], Some((weight, epsilon))) => {
                outputs.push(<Dispatch as TernaryOps>::rms_norm_ternary_linear(
                    x,
                    weight,
                    epsilon,
                    packed(a),
                    a.layout,
                ));
            }
            _ => unreachable!("chunks of at most three layers"),
        }
    }
    Ok(outputs
        .into_iter()
        .map(|y| restore(Tensor::<D>::from_dispatch(y), dtype))
        .collect())
}

/// Checks that an input of shape `dims` ends in every layer's `k`, that the layers share the
/// activation rule, and that `BITNET_ISA` names a usable path.
fn check_inputs(dims: &[usize], layouts: &[TernaryLayout]) -> Result<()> {
    let Some(first) = layouts.first() else {
        return Err(TernaryError::Shape(
            "a group of ternary layers needs at least one layer".into(),
        ));
    };
    for layout in layouts {
        if dims.last() != Some(&layout.k) {
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
    Ok(())
}

/// Checks that an RMSNorm weight is `k` wide.
fn check_norm_width(weight: &Tensor<1>, k: usize) -> Result<()> {
    let [width] = weight.dims();
    if width != k {
        return Err(TernaryError::Shape(format!(
            "RMSNorm weight of width {width} does not fit an input of {k} features"
        )));
    }
    Ok(())
}
