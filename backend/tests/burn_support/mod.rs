//! What the Burn-op tests share: the devices every op runs on and the golden manifest's way
//! of comparing float outputs.

use burn::tensor::{Device, TensorData, Tolerance};

/// Flex and (deprecated, still supported) NdArray.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![("flex", Device::flex()), ("ndarray", ndarray)]
}

/// `rel` relative per element, with an absolute floor of `rel * max|want|` so outputs that
/// cancel to near zero are judged against the size of the layer, as the golden manifest does.
pub fn relative_to_max(want: &TensorData, rel: f32) -> Tolerance<f32> {
    let max = want.iter::<f32>().fold(0.0f32, |a, v| a.max(v.abs()));
    Tolerance::rel_abs(rel, rel * max)
}
