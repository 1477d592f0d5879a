//! The ternary linear layer as a Burn module.

use bitnet_backend::quant::AMAX_FLOOR;
use bitnet_backend::{
    ActivationScale, I2sWeights, ScaleConvention, TernaryError, TernaryLayout, TernaryWeight,
    rms_norm_ternary_linear_group, ternary_linear_group,
};
use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::config::TernaryLinearSpec;
use crate::error::ModelError;
use crate::norm::RmsNorm;

/// Configuration of [`BitLinear`].
#[derive(Config, Debug)]
pub struct BitLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Scale convention, activation rounding and optional pre-norm.
    pub spec: TernaryLinearSpec,
}

impl BitLinearConfig {
    /// A layer whose weights are uniform `U(-1/sqrt(k), 1/sqrt(k))` latent values ternarized by
    /// absmean (the same draw as Burn's `Linear`, then the BitNet b1.58 rule).
    pub fn init(&self, device: &Device) -> crate::error::Result<BitLinear> {
        let latent = self.init_latent(device).into_data();
        let latent = host_values(latent)?;
        let weights = ternarize(&latent, self.d_output, self.d_input, self.spec.convention)?;
        BitLinear::from_i2s(weights, &self.spec, self.init_norm(device), device)
    }

    /// A trainable layer: the same uniform draw kept as latent float weights, ternarized in
    /// every forward pass with the straight-through estimator (see [`BitLinear::forward`]).
    pub fn init_trainable(&self, device: &Device) -> crate::error::Result<BitLinear> {
        let layout = TernaryLayout::new(self.d_output, self.d_input, 1.0, self.spec.convention)?
            .with_activation_scale(self.spec.activation_scale);
        Ok(BitLinear {
            weights: TernaryParam::Latent(Param::from_tensor(self.init_latent(device))),
            norm: self.init_norm(device),
            layout,
        })
    }

    fn init_latent(&self, device: &Device) -> Tensor<2> {
        let bound = 1.0 / (self.d_input as f64).sqrt();
        Tensor::random(
            [self.d_output, self.d_input],
            Distribution::Uniform(-bound, bound),
            device,
        )
    }

    fn init_norm(&self, device: &Device) -> Option<RmsNorm> {
        self.spec.rms_norm_eps.map(|epsilon| {
            crate::norm::RmsNormConfig::new(self.d_input)
                .with_epsilon(epsilon)
                .init(device)
        })
    }
}

/// Ternarizes latent weights `[n, k]` by absmean into I2_S with the given scale convention.
///
/// [`I2sWeights::from_latent`] stores `s = 1 / mean|W|` for the divide convention; the multiply
/// convention (2B4T's `weight_scale`) stores `mean|W|` itself.
pub fn ternarize(
    latent: &[f32],
    n: usize,
    k: usize,
    convention: ScaleConvention,
) -> crate::error::Result<I2sWeights> {
    let weights = I2sWeights::from_latent(latent, n, k)?;
    Ok(match convention {
        ScaleConvention::Divide => weights,
        ScaleConvention::Multiply => {
            let (layout, codes) = weights.into_parts();
            let layout = TernaryLayout::new(n, k, 1.0 / layout.scale, ScaleConvention::Multiply)?;
            I2sWeights::from_codes(layout, codes)?
        }
    })
}

/// Packed layers applied to `x`, normalized by `norm` inside their quantization when it is
/// set.
fn packed_group<const D: usize>(
    norm: Option<&RmsNorm>,
    weights: &[TernaryWeight],
    x: Tensor<D>,
) -> crate::error::Result<Vec<Tensor<D>>> {
    let weights: Vec<&TernaryWeight> = weights.iter().collect();
    Ok(match norm {
        Some(norm) => rms_norm_ternary_linear_group(x, norm.weight.val(), norm.epsilon, &weights)?,
        None => ternary_linear_group(x, &weights)?,
    })
}

fn host_values(data: burn::tensor::TensorData) -> crate::error::Result<Vec<f32>> {
    data.convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Unsupported(format!("reading weights back: {e:?}")))
}

/// Where a [`BitLinear`] keeps its weights.
#[derive(Module, Debug)]
pub enum TernaryParam {
    /// I2_S codes `[d_output, ceil(d_input / 128) * 32]` (u8) for the ternary kernels.
    Packed(Param<Tensor<2, Int>>),
    /// Latent float weights `[d_output, d_input]` for quantization-aware training.
    Latent(Param<Tensor<2>>),
}

/// A linear layer with ternary weights and per-token int8 activations.
///
/// For inference the weights are packed I2_S codes, a `U8` parameter (so Burn records keep them)
/// whose shape, scale and scale convention are in `layout`. For quantization-aware training they
/// are latent floats, and [`BitLinear::pack`] turns the trained layer into the packed one.
#[derive(Module, Debug)]
pub struct BitLinear {
    /// Packed codes or latent weights.
    pub weights: TernaryParam,
    /// RMSNorm applied to the input before quantization (HF `use_rms_norm`).
    pub norm: Option<RmsNorm>,
    /// Shape and conventions of the weights; the scale is the packed weights' (latent weights
    /// derive theirs in every forward pass).
    #[module(skip)]
    pub layout: TernaryLayout,
}

impl BitLinear {
    /// Uploads packed weights, applying `spec`'s activation rule.
    ///
    /// Fails if the weights' scale convention disagrees with `spec` or the pre-norm has the
    /// wrong width.
    pub fn from_i2s(
        weights: I2sWeights,
        spec: &TernaryLinearSpec,
        norm: Option<RmsNorm>,
        device: &Device,
    ) -> crate::error::Result<Self> {
        let layout = weights.layout();
        if layout.convention != spec.convention {
            return Err(ModelError::Config(format!(
                "weights use the {:?} scale convention, the layer expects {:?}",
                layout.convention, spec.convention
            )));
        }
        if let Some(norm) = &norm {
            let [width] = norm.weight.dims();
            if width != layout.k {
                return Err(ModelError::Config(format!(
                    "pre-norm width {width} does not match the {} input features",
                    layout.k
                )));
            }
        }
        let uploaded = TernaryWeight::from_i2s_selected(weights, device)?;
        let layout = uploaded.layout();
        Ok(Self {
            weights: TernaryParam::Packed(Param::initialized(
                ParamId::new(),
                uploaded.packed().clone(),
            )),
            norm,
            layout: layout.with_activation_scale(spec.activation_scale),
        })
    }

    /// Ternarizes a float Burn layer by absmean (the path for a model trained with BitNet's
    /// quantization-aware recipe and saved as plain `Linear` layers).
    ///
    /// Burn's `Linear` stores `[d_input, d_output]`; the layer computes `acc / (s * x_scale)` with
    /// `s = 1 / mean|W|`. A bias has no place in a BitNet layer and is rejected.
    pub fn from_linear(linear: &Linear) -> crate::error::Result<Self> {
        if linear.bias.is_some() {
            return Err(ModelError::Unsupported(
                "BitLinear has no bias; the Linear layer has one".into(),
            ));
        }
        let weight = linear.weight.val();
        let device = weight.device();
        let [k, n] = weight.dims();
        let values = host_values(weight.transpose().into_data())?;
        let weights = I2sWeights::from_latent(&values, n, k)?;
        let spec = TernaryLinearSpec::new(ScaleConvention::Divide);
        Self::from_i2s(weights, &spec, None, &device)
    }

    /// Bytes a decode step reads from the weights: the packed codes it reads (or the latent
    /// f32 weights) and the pre-norm's weight.
    pub fn weight_bytes(&self) -> usize {
        let weights = match &self.weights {
            TernaryParam::Packed(_) => self.layout.n * self.layout.decode_row_bytes(),
            TernaryParam::Latent(_) => self.layout.n * self.layout.k * 4,
        };
        weights + self.norm.as_ref().map_or(0, RmsNorm::weight_bytes)
    }

    /// Whether the layer holds latent (trainable) weights rather than packed codes.
    pub fn is_trainable(&self) -> bool {
        matches!(self.weights, TernaryParam::Latent(_))
    }

    /// The packed weights as the backend op takes them; a trainable layer has none until
    /// [`BitLinear::pack`].
    pub fn weight(&self) -> crate::error::Result<TernaryWeight> {
        match &self.weights {
            TernaryParam::Packed(packed) => Ok(TernaryWeight::new(packed.val(), self.layout)?),
            TernaryParam::Latent(_) => Err(ModelError::Unsupported(
                "a trainable layer has latent weights, not packed ones: pack it first".into(),
            )),
        }
    }

    /// The packed weights read back to the host in I2_S (what an exporter writes), whichever
    /// kernel format the layer runs.
    pub fn to_i2s(&self) -> crate::error::Result<I2sWeights> {
        Ok(self.weight()?.to_i2s()?)
    }

    /// Turns a trainable layer into the packed inference layer its forward pass emulates (a
    /// packed layer is returned unchanged). Call it on a model taken out of autodiff
    /// (`Module::valid`) so the codes land on a plain device.
    pub fn pack(self) -> crate::error::Result<Self> {
        let TernaryParam::Latent(latent) = &self.weights else {
            return Ok(self);
        };
        let latent = latent.val();
        let device = latent.device();
        let values = host_values(latent.into_data())?;
        let (n, k) = (self.layout.n, self.layout.k);
        let weights = ternarize(&values, n, k, self.layout.convention)?;
        let mut spec = TernaryLinearSpec::new(self.layout.convention)
            .with_activation_scale(self.layout.activation);
        spec.rms_norm_eps = self.norm.as_ref().map(|norm| norm.epsilon);
        Self::from_i2s(weights, &spec, self.norm, &device)
    }

    /// Applies the optional pre-norm, quantizes each token to int8 and multiplies by the ternary
    /// weights.
    ///
    /// A trainable layer computes the same quantities in float: weights ternarized by absmean,
    /// activations rounded per token by absmax, both through the straight-through estimator
    /// (`v + (q(v) - v).detach()`), so gradients reach the latent weights as if the rounding were
    /// the identity (the BitNet b1.58 recipe).
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> crate::error::Result<Tensor<D>> {
        match &self.weights {
            TernaryParam::Packed(_) => {
                let mut y = packed_group(self.norm.as_ref(), &[self.weight()?], x)?;
                Ok(y.swap_remove(0))
            }
            TernaryParam::Latent(latent) => {
                let x = match &self.norm {
                    Some(norm) => norm.forward(x)?,
                    None => x,
                };
                let x = straight_through(x.clone(), self.quantize_activations(x));
                let w = latent.val();
                let w = straight_through(w.clone(), ternarize_latent(w));
                Ok(x.matmul(w.transpose().unsqueeze()))
            }
        }
    }

    /// Several layers applied to one input, each output as [`BitLinear::forward`] gives it.
    /// Packed layers without a pre-norm share one quantization of `x` and one parallel kernel
    /// call (see [`ternary_linear_group`]): one wake-up of the thread pool per group in decode.
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`
    /// - output `i`: `[..., d_output]` of `layers[i]`
    pub fn forward_group<const N: usize, const D: usize>(
        layers: [&BitLinear; N],
        x: Tensor<D>,
    ) -> crate::error::Result<[Tensor<D>; N]> {
        Self::forward_group_normed(None, layers, x)
    }

    /// [`BitLinear::forward_group`] of `norm(x)` when `norm` is set (a decoder layer's input
    /// norm, or a sub-norm). For packed layers without a pre-norm of their own the norm runs
    /// inside their quantization, a row at a time, with the same bits (see
    /// [`rms_norm_ternary_linear_group`]).
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`
    /// - output `i`: `[..., d_output]` of `layers[i]`
    pub fn forward_group_normed<const N: usize, const D: usize>(
        norm: Option<&RmsNorm>,
        layers: [&BitLinear; N],
        x: Tensor<D>,
    ) -> crate::error::Result<[Tensor<D>; N]> {
        let outputs = if layers.iter().all(|l| l.fusable()) {
            let weights = layers
                .iter()
                .map(|layer| layer.weight())
                .collect::<crate::error::Result<Vec<_>>>()?;
            packed_group(norm, &weights, x)?
        } else {
            let x = match norm {
                Some(norm) => norm.forward(x)?,
                None => x,
            };
            layers
                .iter()
                .map(|layer| layer.forward(x.clone()))
                .collect::<crate::error::Result<Vec<_>>>()?
        };
        let count = outputs.len();
        outputs.try_into().map_err(|_| {
            TernaryError::Shape(format!("{count} outputs for a group of {N} layers")).into()
        })
    }

    /// Whether the float step before this layer can run inside its quantization: packed
    /// weights and no pre-norm of its own.
    pub(crate) fn fusable(&self) -> bool {
        self.norm.is_none() && !self.is_trainable()
    }

    /// Per-token absmax int8 rounding, dequantized: `round(x * s) / s` with the packed kernel's
    /// scale rule.
    fn quantize_activations<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let amax = x.clone().abs().max_dim(D - 1).clamp_min(AMAX_FLOOR);
        let scale = match self.layout.activation {
            ActivationScale::Reciprocal => amax.recip().mul_scalar(127.0),
            ActivationScale::Quotient => amax.ones_like().mul_scalar(127.0) / amax,
        };
        (x * scale.clone()).round().clamp(-128.0, 127.0) / scale
    }
}

/// Absmean ternarization, dequantized: `clamp(round(w / mean|w|), -1, 1) * mean|w|`.
fn ternarize_latent(w: Tensor<2>) -> Tensor<2> {
    let mean = w.clone().abs().mean().clamp_min(1e-5).unsqueeze::<2>();
    (w / mean.clone()).round().clamp(-1.0, 1.0) * mean
}

/// The value of `quantized` with the gradient of `value`.
fn straight_through<const D: usize>(value: Tensor<D>, quantized: Tensor<D>) -> Tensor<D> {
    value.clone() + (quantized - value).detach()
}
