//! Key/value cache, preallocated to the context size so decoding never reallocates.

use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Keys and values of one layer: `[batch, kv_heads, context, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerCache {
    // Taken out while being written so `slice_assign` owns the only handle and can write in
    // place instead of copying the whole buffer.
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
}

impl LayerCache {
    /// Writes `keys` and `values` of `len` new positions at `start` and returns the whole
    /// buffers, positions `0..start + len` filled (attention reads them in place; a slice
    /// would be copied to be made contiguous).
    ///
    /// # Shapes
    /// - `keys`, `values`: `[batch, kv_heads, len, head_dim]`
    /// - outputs: `[batch, kv_heads, context, head_dim]`
    pub fn append(
        &mut self,
        keys: Tensor<4>,
        values: Tensor<4>,
        start: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let [batch, heads, len, dim] = keys.dims();
        let target = [0..batch, 0..heads, start..start + len, 0..dim];
        let write = |slot: &mut Option<Tensor<4>>, new: Tensor<4>| {
            let buffer = slot.take().expect("a layer cache always holds its buffers");
            let buffer = buffer.slice_assign(target.clone(), new);
            *slot = Some(buffer.clone());
            buffer
        };
        (write(&mut self.keys, keys), write(&mut self.values, values))
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
        let layer = LayerCache {
            keys: Some(Tensor::zeros(shape, device)),
            values: Some(Tensor::zeros(shape, device)),
        };
        Self {
            layers: vec![layer; layers],
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
