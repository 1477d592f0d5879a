//! Decode (one token): every layer's rows split across the pool in one call, from whichever
//! packed rows decode reads ([`DecodeRows`]: I2_S, or the copy of [`crate::base3`] or
//! [`crate::lut3`]).

use std::cell::Cell;

use rayon::prelude::*;

use super::{Isa, SumLayout, dots, rows_per_task};
use crate::i2s::{I2sView, TernaryLayout};
use crate::quant::QuantizedActivations;

/// Packed rows a decode task sums for one token: I2_S rows, or the decode copy of
/// [`crate::base3`] or [`crate::lut3`] weights.
pub(crate) trait DecodeRows: Copy + Send + Sync {
    /// Rows a task's first row is a multiple of (the copy's tile height).
    const ROW_ALIGN: usize = 1;
    /// Shape, scale and conventions.
    fn layout(&self) -> TernaryLayout;
    /// `out[i] = sum_c code(r0 + i, c) * q[c]` for one padded token `q`, on `isa` (supported).
    fn row_sums(&self, isa: Isa, r0: usize, q: &[i8], out: &mut [i32]);
}

impl DecodeRows for I2sView<'_> {
    fn layout(&self) -> TernaryLayout {
        self.layout
    }

    fn row_sums(&self, isa: Isa, r0: usize, q: &[i8], out: &mut [i32]) {
        let rb = self.layout.row_bytes();
        let codes = &self.codes[r0 * rb..(r0 + out.len()) * rb];
        dots(isa, codes, rb, q, 1, SumLayout::by_row(1), out);
    }
}

/// Decode (one token): the rows of every layer split across the pool in one call, each task
/// turning its sums into outputs at once. One token's outputs are in row order, so a task's
/// rows are a slice of them, and nothing is left for the calling thread to finish afterwards.
pub(crate) fn gemv_group<W: DecodeRows>(
    isa: Isa,
    ws: &[W],
    x: &QuantizedActivations,
) -> Vec<Vec<f32>> {
    thread_local! {
        static ROW_SUMS: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    }
    let rows_per_task =
        rows_per_task(ws.iter().map(|w| w.layout().n).sum()).next_multiple_of(W::ROW_ALIGN);
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.layout().n]).collect();
    let mut tasks = Vec::new();
    for (w, y) in ws.iter().zip(&mut ys) {
        let chunks = y.chunks_mut(rows_per_task).enumerate();
        tasks.extend(chunks.map(|(i, y)| (*w, i * rows_per_task, y)));
    }
    let (x_scale, offset) = (x.scales[0], x.sums[0]);
    tasks.into_par_iter().for_each(|(w, r0, y)| {
        let layout = w.layout();
        let mut sums = ROW_SUMS.take();
        sums.resize(y.len(), 0);
        w.row_sums(isa, r0, &x.q, &mut sums);
        for (y, &sum) in y.iter_mut().zip(&sums) {
            *y = layout
                .convention
                .output(sum - offset, x_scale, layout.scale);
        }
        ROW_SUMS.set(sums);
    });
    ys
}
