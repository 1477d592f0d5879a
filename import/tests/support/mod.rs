//! Editing copies of golden checkpoints for the importer tests, and running a loaded model.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::path::Path;

use bitnet_model::BitNetModel;
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A writable copy of the model directory.
pub fn copy(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

pub type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

pub fn read_tensors(dir: &Path) -> Tensors {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| (name, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

pub fn write_tensors_to(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

pub fn write_tensors(dir: &Path, tensors: &Tensors) {
    write_tensors_to(&dir.join("model.safetensors"), tensors);
}

/// The logits of every position of `ids` from an empty cache, `[len * vocab]`.
pub fn logits(model: &BitNetModel, ids: &[i64], device: &Device) -> Vec<f32> {
    let mut cache = model.new_cache(1, ids.len()).unwrap();
    let input: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device);
    let out = model.forward(input, &mut cache).unwrap();
    out.into_data().convert::<f32>().try_to_vec().unwrap()
}
