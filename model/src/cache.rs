//! Key/value cache, preallocated to the context size so decoding never reallocates.

use std::fmt;
use std::str::FromStr;

use bitnet_backend::cache_write;
use burn::tensor::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::profile::ForwardProfile;

/// What a KV cache stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheType {
    /// f32 keys and values: exact, what the reference computes with.
    #[default]
    F32,
    /// f16 keys (after rotation) and values, rounded once as they are written and widened to
    /// f32 as attention reads them: half the memory, and half of what each decode step reads
    /// from the cache, a quarter of a 3B step's bytes at a depth of 512. llama.cpp's default
    /// cache type; not lossless (the values are rounded).
    F16,
}

impl CacheType {
    /// The tensors' dtype.
    pub fn dtype(self) -> DType {
        match self {
            CacheType::F32 => DType::F32,
            CacheType::F16 => DType::F16,
        }
    }

    /// Bytes per cached value.
    pub fn value_bytes(self) -> usize {
        self.dtype().size()
    }

    /// Checks that `device` has tensors of this type.
    pub fn check(self, device: &Device) -> Result<()> {
        if device.supports_dtype(self.dtype()) {
            return Ok(());
        }
        Err(ModelError::Unsupported(format!(
            "an {self} KV cache needs {self} tensors, which this device does not have (NdArray has no \
             16-bit floats: use Flex)"
        )))
    }
}

impl FromStr for CacheType {
    type Err = ModelError;

    /// `f32` or `f16` (the names llama.cpp's `--cache-type-k` takes for them).
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(CacheType::F32),
            "f16" => Ok(CacheType::F16),
            other => Err(ModelError::Unsupported(format!(
                "cache type `{other}`: expected f32 or f16"
            ))),
        }
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
        })
    }
}

/// Keys and values of one layer: `[batch, kv_heads, context, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Tensor<4>,
    values: Tensor<4>,
    /// The layer's time per phase, while the model's cache is profiled.
    pub(crate) profile: Option<ForwardProfile>,
}

impl LayerCache {
    /// Writes `keys` (rotated by the RoPE tables `cos`, `sin` on their way in) and `values`
    /// of `len` new positions at `start`, in place (the handles returned last time are gone by
    /// the next step), and returns the whole buffers, positions `0..start + len` filled
    /// (attention reads them in place; a slice would be copied to be made contiguous).
    ///
    /// # Shapes
    /// - `keys`, `values`: `[batch, kv_heads, len, head_dim]` (views with swapped axes are read
    ///   where they lie)
    /// - `cos`, `sin`: `[len, head_dim]`
    /// - outputs: `[batch, kv_heads, context, head_dim]`
    pub fn append(
        &mut self,
        keys: Tensor<4>,
        values: Tensor<4>,
        (cos, sin): (&Tensor<2>, &Tensor<2>),
        start: usize,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        cache_write(&mut self.keys, keys, start, Some((cos, sin)))?;
        cache_write(&mut self.values, values, start, None)?;
        Ok((self.keys.clone(), self.values.clone()))
    }
}

/// The cache of a whole model: one [`LayerCache`] per decoder layer and the number of positions
/// already processed.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    context: usize,
    /// Time outside the layers (the LM head), while profiled.
    pub(crate) profile: Option<ForwardProfile>,
}

impl KvCache {
    /// An empty cache for `context` positions, storing `cache_type` values.
    ///
    /// # Errors
    /// If `device` has no tensors of that type (NdArray has no f16).
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        context: usize,
        cache_type: CacheType,
        device: &Device,
    ) -> Result<Self> {
        cache_type.check(device)?;
        let shape = [batch, kv_heads, context, head_dim];
        let options = (device, cache_type.dtype());
        // A buffer each (clones would share one, and the first write of each layer would copy
        // it whole).
        let layer = || LayerCache {
            keys: Tensor::zeros(shape, options),
            values: Tensor::zeros(shape, options),
            profile: None,
        };
        Ok(Self {
            layers: (0..layers).map(|_| layer()).collect(),
            len: 0,
            context,
            profile: None,
        })
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity in positions.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Forgets every cached position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Checks that `new` more positions fit.
    pub fn check_room(&self, new: usize) -> Result<()> {
        if self.len + new > self.context {
            return Err(ModelError::ContextOverflow {
                cached: self.len,
                new,
                context: self.context,
            });
        }
        Ok(())
    }

    /// The cache of layer `index` (for running decoder layers one at a time).
    pub fn layer_mut(&mut self, index: usize) -> &mut LayerCache {
        &mut self.layers[index]
    }

    /// Times every later forward on this cache by phase, from zero (see [`ForwardProfile`]);
    /// until then forwards read no clock.
    pub fn start_profile(&mut self) {
        for profile in self.profiles_mut() {
            *profile = Some(ForwardProfile::default());
        }
    }

    /// The time per phase since [`KvCache::start_profile`], summed over layers, and stops
    /// timing; `None` if it was not started.
    pub fn stop_profile(&mut self) -> Option<ForwardProfile> {
        self.profiles_mut()
            .map(Option::take)
            .reduce(|sum, layer| {
                let (mut sum, layer) = (sum?, layer?);
                sum += layer;
                Some(sum)
            })
            .flatten()
    }

    fn profiles_mut(&mut self) -> impl Iterator<Item = &mut Option<ForwardProfile>> {
        std::iter::once(&mut self.profile).chain(self.layers.iter_mut().map(|l| &mut l.profile))
    }

    /// Records that `new` positions were written to every layer.
    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }
}
