//! What the examples share: the `--device` choice.

use burn::tensor::Device;
use clap::ValueEnum;

/// The Burn backend to run on.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    Flex,
    Ndarray,
}

impl Backend {
    /// The device of this backend (NdArray is deprecated in Burn but still supported here).
    pub fn device(self) -> Device {
        #[allow(deprecated)]
        match self {
            Backend::Flex => Device::flex(),
            Backend::Ndarray => Device::ndarray(),
        }
    }
}
