//! The ternary linear layer as a Burn module.

use bitnet_backend::{I2sWeights, ScaleConvention, TernaryLayout, TernaryWeight, ternary_linear};
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
        let bound = 1.0 / (self.d_input as f64).sqrt();
        let latent: Tensor<2> = Tensor::random(
            [self.d_output, self.d_input],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let latent = latent
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Config(format!("{e:?}")))?;
        let weights = I2sWeights::from_latent(&latent, self.d_output, self.d_input)?;
        // `from_latent` divides by `s = 1 / mean|W|`; the multiply convention stores `1 / s`.
        let weights = match self.spec.convention {
            ScaleConvention::Divide => weights,
            ScaleConvention::Multiply => {
                let (layout, codes) = weights.into_parts();
                let layout = TernaryLayout::new(
                    layout.n,
                    layout.k,
                    1.0 / layout.scale,
                    ScaleConvention::Multiply,
                )?;
                I2sWeights::from_codes(layout, codes)?
            }
        };
        let norm = self.spec.rms_norm_eps.map(|epsilon| {
            crate::norm::RmsNormConfig::new(self.d_input)
                .with_epsilon(epsilon)
                .init(device)
        });
        BitLinear::from_i2s(&weights, &self.spec, norm, device)
    }
}

/// A linear layer with ternary weights and per-token int8 activations.
///
/// The packed I2_S codes are a `U8` parameter (so Burn records keep them); the shape, scale and
/// scale convention are in `layout`.
#[derive(Module, Debug)]
pub struct BitLinear {
    /// I2_S codes, `[d_output, ceil(d_input / 128) * 32]`.
    pub packed: Param<Tensor<2, Int>>,
    /// RMSNorm applied to the input before quantization (HF `use_rms_norm`).
    pub norm: Option<RmsNorm>,
    /// Shape, scale and conventions of the packed weights.
    #[module(skip)]
    pub layout: TernaryLayout,
}

impl BitLinear {
    /// Uploads packed weights, applying `spec`'s activation rule.
    ///
    /// Fails if the weights' scale convention disagrees with `spec` or the pre-norm has the
    /// wrong width.
    pub fn from_i2s(
        weights: &I2sWeights,
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
        let uploaded = TernaryWeight::from_i2s(weights, device);
        Ok(Self {
            packed: Param::initialized(ParamId::new(), uploaded.packed().clone()),
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
        let values = weight
            .transpose()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Unsupported(format!("Linear weights: {e:?}")))?;
        let weights = I2sWeights::from_latent(&values, n, k)?;
        let spec = TernaryLinearSpec::new(ScaleConvention::Divide);
        Self::from_i2s(&weights, &spec, None, &device)
    }

    /// The packed weights as the backend op takes them.
    pub fn weight(&self) -> crate::error::Result<TernaryWeight> {
        Ok(TernaryWeight::new(self.packed.val(), self.layout)?)
    }

    /// Applies the optional pre-norm, quantizes each token to int8 and multiplies by the ternary
    /// weights.
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> crate::error::Result<Tensor<D>> {
        let x = match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        Ok(ternary_linear(x, &self.weight()?)?)
    }
}
