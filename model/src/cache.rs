//! Key/value cache, preallocated to the context size so decoding never reallocates.

use bitnet_backend::cache_write;
use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Keys and values of one layer: `[batch, kv_heads, context, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Tensor<4>,
    values: Tensor<4>,
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
}

impl KvCache {
    /// An empty cache for `context` positions.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        context: usize,
        device: &Device,
    ) -> Self {
        let shape = [batch, kv_heads, context, head_dim];
        // A buffer each (clones would share one, and the first write of each layer would copy
        // it whole).
        let layer = || LayerCache {
            keys: Tensor::zeros(shape, device),
            values: Tensor::zeros(shape, device),
        };
        Self {
            layers: (0..layers).map(|_| layer()).collect(),
            len: 0,
            context,
        }
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

    /// Records that `new` positions were written to every layer.
    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }
}
