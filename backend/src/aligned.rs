//! Byte buffers that start on a cache line.
//!
//! The prefill kernels load 32 (AVX2) or 64 (AVX-512) bytes at a time from the activations and
//! from unpacked codes. A `Vec<i8>` of that size starts 16 bytes into a cache line (the
//! allocator's alignment), so every other 32-byte load, and every 64-byte one, spans two lines
//! and costs two: on the Zen 3 VM the AVX2 prefill kernel ran about 6% slower from such buffers
//! (`benches/README.md`, twenty-fifth session).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

/// One cache line of storage.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialised buffer of `len` one-byte values (`i8` or `u8`) whose first value starts a
/// cache line; it derefs to a slice.
#[derive(Clone)]
pub struct AlignedBytes<T> {
    lines: Vec<Line>,
    len: usize,
    values: PhantomData<T>,
}

impl<T: Pod> AlignedBytes<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        assert_eq!(size_of::<T>(), 1, "AlignedBytes holds one-byte values");
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
            values: PhantomData,
        }
    }

    /// Makes the buffer `len` long, keeping the values it had and zeroing new ones.
    pub fn resize(&mut self, len: usize) {
        let lines = self.lines.len().max(len.div_ceil(64));
        self.lines.resize(lines, Line([0; 64]));
        let old = std::mem::replace(&mut self.len, len);
        if len > old {
            self[old..].fill(T::zeroed());
        }
    }
}

impl<T: Pod> Default for AlignedBytes<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Pod> Deref for AlignedBytes<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for AlignedBytes<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for AlignedBytes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Pod + PartialEq> PartialEq for AlignedBytes<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_values_across_resizes() {
        let mut buffer = AlignedBytes::<i8>::zeroed(100);
        assert_eq!(buffer.as_ptr() as usize % 64, 0);
        assert!(buffer.iter().all(|&v| v == 0));
        buffer
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as i8);
        buffer.resize(30);
        assert_eq!(buffer.len(), 30);
        buffer.resize(300);
        assert_eq!(buffer.as_ptr() as usize % 64, 0);
        assert_eq!(buffer[29], 29);
        // Values beyond the shorter length were zeroed when the buffer grew back.
        assert!(buffer[30..].iter().all(|&v| v == 0));
        assert_eq!(AlignedBytes::<u8>::default().len(), 0);
    }
}
