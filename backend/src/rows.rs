//! Rows of a tensor read where they lie: a transposed view (Burn's lazy `swap_dims`) need
//! not be copied to be read row by row.

use std::borrow::Cow;

/// Rows of `width` contiguous values in a buffer, numbered in row-major order of `extents`:
/// row `(i_0, .., i_n)` starts at `start + sum(i_j * strides[j])`.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    data: Cow<'a, [f32]>,
    start: usize,
    extents: Vec<usize>,
    strides: Vec<usize>,
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
            extents: vec![count],
            strides: vec![width],
            width,
        }
    }

    /// Rows laid out by `extents` and `strides` from `start`; `None` unless the two have one
    /// entry per axis and every row lies inside `data`.
    pub fn strided(
        data: impl Into<Cow<'a, [f32]>>,
        start: usize,
        extents: Vec<usize>,
        strides: Vec<usize>,
        width: usize,
    ) -> Option<Self> {
        let data = data.into();
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

    /// Row `r` (in row-major order of the extents).
    ///
    /// # Panics
    /// If `r >= self.count()`.
    #[inline]
    pub fn row(&self, r: usize) -> &[f32] {
        assert!(r < self.count(), "row {r} of {}", self.count());
        let (mut offset, mut rest) = (self.start, r);
        for (&extent, &stride) in self.extents.iter().zip(&self.strides).rev() {
            offset += rest % extent * stride;
            rest /= extent;
        }
        &self.data[offset..offset + self.width]
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
        let read: Vec<f32> = (0..6).flat_map(|r| rows.row(r).to_vec()).collect();
        let want: Vec<f32> = [0, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|&r| data[r * 4..r * 4 + 4].to_vec())
            .collect();
        assert_eq!(read, want);
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
