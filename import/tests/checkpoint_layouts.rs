//! The same checkpoint stored differently loads to the same model: sharded with an index, and
//! with its bf16 tensors widened to f32.

#[path = "../../backend/tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;

use bitnet_import::{ImportError, load_hf_model};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::golden_dir;
use half::bf16;
use safetensors::Dtype;
use support::{Tensors, copy, read_tensors, write_tensors, write_tensors_to};

const TOKENS: [i64; 5] = [111, 154, 73, 304, 214];

fn logits(dir: &Path) -> Vec<f32> {
    let device = Device::flex();
    let model = load_hf_model(dir, &device).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(TOKENS.to_vec(), [1, 5]), &device);
    let out = model.forward_full(tokens).unwrap();
    out.into_data().convert::<f32>().try_to_vec().unwrap()
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let Some(golden) = golden_dir() else { return };
    let src = golden.join("models/bitnet2b4t_pub");
    let dir = copy(&src);
    let tensors = read_tensors(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (first, second): (Tensors, Tensors) = tensors
        .into_iter()
        .partition(|(name, _)| name.contains("layers.0") || name.contains("embed"));
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("a.safetensors", &first), ("b.safetensors", &second)] {
        write_tensors_to(&dir.path().join(file), part);
        for name in part.keys() {
            weight_map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    assert_eq!(logits(dir.path()), logits(&src));

    // A shard the index names but the directory lacks.
    std::fs::remove_file(dir.path().join("b.safetensors")).unwrap();
    let err = load_hf_model(dir.path(), &Device::flex()).unwrap_err();
    assert!(matches!(err, ImportError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("b.safetensors"), "{err}");
}

#[test]
fn f32_tensors_load_like_bf16() {
    let Some(golden) = golden_dir() else { return };
    let src = golden.join("models/bitnet2b4t_pub");
    let dir = copy(&src);
    let mut tensors = read_tensors(dir.path());
    for (dtype, _, data) in tensors.values_mut() {
        if *dtype == Dtype::BF16 {
            *data = data
                .chunks_exact(2)
                .flat_map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
                .collect();
            *dtype = Dtype::F32;
        }
    }
    write_tensors(dir.path(), &tensors);
    assert_eq!(logits(dir.path()), logits(&src));
}
