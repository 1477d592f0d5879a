//! Grouped-query self-attention with RoPE, an optional sub-norm before `o_proj` and the KV cache.

use bitnet_backend::cached_attention;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::bitlinear::BitLinear;
use crate::cache::LayerCache;
use crate::error::Result;
use crate::norm::RmsNorm;
use crate::profile::Laps;
use crate::rope::RotaryEmbedding;

/// Self-attention of one decoder layer.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection, `hidden -> heads * head_dim`.
    pub q_proj: BitLinear,
    /// Key projection, `hidden -> kv_heads * head_dim`.
    pub k_proj: BitLinear,
    /// Value projection, `hidden -> kv_heads * head_dim`.
    pub v_proj: BitLinear,
    /// Output projection, `heads * head_dim -> hidden`.
    pub o_proj: BitLinear,
    /// RMSNorm before `o_proj` (2B4T `attn_sub_norm`, 1bitLLM `inner_attn_ln`).
    pub sub_norm: Option<RmsNorm>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` query heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl Attention {
    /// Packs trainable projections (see [`BitLinear::pack`]).
    pub fn pack(self) -> Result<Self> {
        Ok(Self {
            q_proj: self.q_proj.pack()?,
            k_proj: self.k_proj.pack()?,
            v_proj: self.v_proj.pack()?,
            o_proj: self.o_proj.pack()?,
            ..self
        })
    }

    /// Attends `len` new positions starting at `start` to themselves and to everything cached.
    ///
    /// # Shapes
    /// - `x`: `[batch, len, hidden]`
    /// - `cos`, `sin`: `[len, head_dim]`
    /// - output: `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<2>, &Tensor<2>),
        cache: &mut LayerCache,
        start: usize,
    ) -> Result<Tensor<3>> {
        self.attend(None, x, rope, cache, start)
    }

    /// [`Attention::forward`] of `norm(x)` (the decoder layer's input norm), normalized inside
    /// the quantization of the query, key and value projections when they are packed
    /// ([`BitLinear::forward_group_normed`]).
    pub fn forward_normed(
        &self,
        norm: &RmsNorm,
        x: Tensor<3>,
        rope: (&Tensor<2>, &Tensor<2>),
        cache: &mut LayerCache,
        start: usize,
    ) -> Result<Tensor<3>> {
        self.attend(Some(norm), x, rope, cache, start)
    }

    fn attend(
        &self,
        norm: Option<&RmsNorm>,
        x: Tensor<3>,
        (cos, sin): (&Tensor<2>, &Tensor<2>),
        cache: &mut LayerCache,
        start: usize,
    ) -> Result<Tensor<3>> {
        let mut laps = Laps::start(&cache.profile);
        let [batch, len, _] = x.dims();
        let (heads, kv_heads, dim) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<3>, h: usize| y.reshape([batch, len, h, dim]).swap_dims(1, 2);
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let [q, k, v] = BitLinear::forward_group_normed(norm, projections, x)?;
        laps.lap(&mut cache.profile, |p| &mut p.attention_projections);
        let (q, k, v) = (split(q, heads), split(k, kv_heads), split(v, kv_heads));
        let q = RotaryEmbedding::apply(q, cos, sin)?;
        // The keys are rotated on their way into the cache.
        let (keys, values) = cache.append(k, v, (cos, sin), start)?;
        laps.lap(&mut cache.profile, |p| &mut p.rope_and_cache);

        // Query heads sharing a key/value head are stacked along the position axis, so one
        // pass over the keys and values serves the whole group without copying them per head.
        let group = heads / kv_heads;
        let q = q.reshape([batch, kv_heads, group * len, dim]);
        let out = cached_attention(q, keys, values, start, len)?.reshape([batch, len, heads * dim]);
        laps.lap(&mut cache.profile, |p| &mut p.attention);
        let [y] = BitLinear::forward_group_normed(self.sub_norm.as_ref(), [&self.o_proj], out)?;
        laps.lap(&mut cache.profile, |p| &mut p.attention_projections);
        Ok(y)
    }
}
