//! Errors of the ternary backend: every malformed input is reported, never a panic.

use thiserror::Error;

/// What can go wrong when building packed ternary weights or running a ternary kernel.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TernaryError {
    /// A buffer does not have the length its declared shape requires.
    #[error("{what}: expected {expected} bytes/elements for the declared shape, got {actual}")]
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A weight value outside {-1, 0, 1}, or a packed 2-bit code of 3.
    #[error("{what}: invalid ternary value {value} at index {index}")]
    InvalidTernary {
        what: &'static str,
        value: i32,
        index: usize,
    },
    /// A NaN, infinite, zero or negative scale.
    #[error("{what}: scale {value} is not a finite positive number")]
    InvalidScale { what: &'static str, value: f32 },
    /// Two shapes that must agree do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A dimension of zero, or a product that overflows `usize`.
    #[error("invalid dimension: {0}")]
    Dimension(String),
    /// `BITNET_ISA` or `BITNET_KERNEL` names something unknown or something this CPU lacks.
    #[error("{0}")]
    Dispatch(String),
}

pub type Result<T> = std::result::Result<T, TernaryError>;
