//! Rows of a tensor read where they lie: a transposed view (Burn's lazy `swap_dims`) need
//! not be copied to be read row by row.

use std::borrow::Cow;

use smallvec::{SmallVec, smallvec};

/// Per-axis numbers of a [`Rows`], held inline up to four axes: a decode step makes and walks
/// row views hundreds of times, and on the heap each took an allocation or three.
pub type Axes = SmallVec<[usize; 4]>;

/// Rows of `width` contiguous values in a buffer, numbered in row-major order of `extents`:
/// row `(i_0, .., i_n)` starts at `start + sum(i_j * strides[j])`.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    data: Cow<'a, [f32]>,
    start: usize,
    extents: Axes,
    strides: Axes,
    width: usize,
}

impl<'a> Rows<'a> {
    /// Rows of `width` values stored one after another (a trailing partial row is ignored).
    pub fn contiguous(data: impl Into<Cow<'a, [f32]>>, width: usize) -> Self {
        let data = data.into();
        let count = data.len().checked_div(width).unwrap_or(0);
        Self {
            data,
            start: 0,
            extents: smallvec![count],
            strides: smallvec![width],
            width,
        }
    }

    /// Rows laid out by `extents` and `strides` from `start`; `None` unless the two have one
    /// entry per axis and every row lies inside `data`.
    pub fn strided(
        data: impl Into<Cow<'a, [f32]>>,
        start: usize,
        extents: impl Into<Axes>,
        strides: impl Into<Axes>,
        width: usize,
    ) -> Option<Self> {
        let (data, extents, strides) = (data.into(), extents.into(), strides.into());
        if extents.len() != strides.len() {
            return None;
        }
        if !extents.contains(&0) {
            let last = extents
                .iter()
                .zip(&strides)
                .try_fold(start, |end, (&e, &s)| {
                    (e - 1).checked_mul(s).and_then(|o| end.checked_add(o))
                })?;
            if last.checked_add(width)? > data.len() {
                return None;
            }
        }
        Some(Self {
            data,
            start,
            extents,
            strides,
            width,
        })
    }

    /// How many rows there are.
    pub fn count(&self) -> usize {
        self.extents.iter().product()
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The rows from row `first` on (in row-major order of the extents), each found from the
    /// last by adding a stride (no division per row).
    pub fn from_row(&self, first: usize) -> RowIter<'_> {
        let (mut index, mut offset, mut rest) =
            (smallvec![0; self.extents.len()], self.start, first);
        for ((i, &extent), &stride) in index.iter_mut().zip(&self.extents).zip(&self.strides).rev()
        {
            *i = rest % extent.max(1);
            offset += *i * stride;
            rest /= extent.max(1);
        }
        RowIter {
            rows: self,
            index,
            offset,
            left: self.count().saturating_sub(first),
        }
    }
}

/// The rows of a [`Rows`] from one on; see [`Rows::from_row`].
#[derive(Debug)]
pub struct RowIter<'r> {
    rows: &'r Rows<'r>,
    index: Axes,
    offset: usize,
    left: usize,
}

impl<'r> Iterator for RowIter<'r> {
    type Item = &'r [f32];

    #[inline]
    fn next(&mut self) -> Option<&'r [f32]> {
        self.left = self.left.checked_sub(1)?;
        let rows = self.rows;
        let row = &rows.data[self.offset..self.offset + rows.width];
        // Odometer step: the last axis moves; an axis that wraps carries into the one before.
        for ((i, &extent), &stride) in self
            .index
            .iter_mut()
            .zip(&rows.extents)
            .zip(&rows.strides)
            .rev()
        {
            *i += 1;
            self.offset += stride;
            if *i < extent {
                break;
            }
            *i = 0;
            self.offset -= extent * stride;
        }
        Some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transposed_view_reads_the_rows_of_the_transpose() {
        // [2, 3, 4] stored; the view swaps the first two axes: [3, 2, 4].
        let data: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let rows = Rows::strided(&data[..], 0, vec![3, 2], vec![4, 12], 4).unwrap();
        assert_eq!(rows.count(), 6);
        let order = [0, 3, 1, 4, 2, 5];
        for first in 0..=6 {
            let read: Vec<f32> = rows.from_row(first).flatten().copied().collect();
            let want: Vec<f32> = order[first..]
                .iter()
                .flat_map(|&r| data[r * 4..r * 4 + 4].to_vec())
                .collect();
            assert_eq!(read, want, "from row {first}");
        }
    }

    #[test]
    fn rows_outside_the_buffer_are_refused() {
        let data = [0f32; 24];
        assert!(Rows::strided(&data[..], 1, vec![3, 2], vec![4, 12], 4).is_none());
        assert!(Rows::strided(&data[..], 0, vec![3], vec![4, 12], 4).is_none());
        assert!(Rows::strided(&data[..], 0, vec![0, 2], vec![4, 12], 4).is_some());
        assert_eq!(Rows::contiguous(&data[..], 5).count(), 4);
        assert_eq!(Rows::contiguous(&data[..], 0).count(), 0);
    }
}
