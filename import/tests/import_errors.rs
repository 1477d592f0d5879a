//! Every bad input to the HF importer and the model is an error value that names the problem.

#[path = "../../backend/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use bitnet_import::{ImportError, load_hf_model};
use bitnet_model::ModelError;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::golden_dir;
use safetensors::Dtype;
use support::{copy, edit_config, read_tensors, write_tensors};

/// The 2B4T golden model (packed weights, tied head), or `None` when the golden folder is absent.
fn source() -> Option<PathBuf> {
    Some(golden_dir()?.join("models/bitnet2b4t_pub"))
}

/// Loads a copy of `src` whose tensors `edit` changed, expecting failure.
fn load_edited_tensors(src: &Path, edit: impl FnOnce(&mut support::Tensors)) -> ImportError {
    let dir = copy(src);
    let mut tensors = read_tensors(dir.path());
    edit(&mut tensors);
    write_tensors(dir.path(), &tensors);
    load_err(dir.path())
}

fn load_err(dir: &Path) -> ImportError {
    match load_hf_model(dir, &Device::flex()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_directory_config_and_weights_are_named() {
    let Some(src) = source() else { return };
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(
        matches!(
            err,
            ImportError::MissingFile {
                what: "model directory",
                ..
            }
        ),
        "{err}"
    );

    let dir = copy(&src);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = copy(&src);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn missing_and_extra_tensors_are_named() {
    let Some(src) = source() else { return };
    let err = load_edited_tensors(&src, |tensors| {
        tensors.remove("model.layers.1.mlp.up_proj.weight_scale");
    });
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight_scale"),
        "{err}"
    );

    let err = load_edited_tensors(&src, |tensors| {
        tensors.insert(
            "model.stray.weight".into(),
            (Dtype::F32, vec![1], vec![0; 4]),
        );
    });
    assert!(
        matches!(&err, ImportError::ExtraTensors(names) if names == &["model.stray.weight"]),
        "{err}"
    );
}

#[test]
fn wrong_shape_and_dtype_are_named() {
    let Some(src) = source() else { return };
    let err = load_edited_tensors(&src, |tensors| {
        let norm = tensors.get_mut("model.norm.weight").unwrap();
        norm.1 = vec![32];
        norm.2.truncate(64);
    });
    assert!(
        matches!(&err, ImportError::Shape { name, .. } if name == "model.norm.weight"),
        "{err}"
    );

    let err = load_edited_tensors(&src, |tensors| {
        let norm = tensors.get_mut("model.norm.weight").unwrap();
        norm.0 = Dtype::I16;
    });
    assert!(
        matches!(&err, ImportError::Dtype { name, .. } if name == "model.norm.weight"),
        "{err}"
    );

    // Shape disagreeing with the config: the config claims a wider model.
    let dir = copy(&src);
    edit_config(dir.path(), |c| c["intermediate_size"] = 200.into());
    let err = load_err(dir.path());
    assert!(matches!(err, ImportError::Shape { .. }), "{err}");
}

#[test]
fn truncated_and_corrupt_safetensors_are_rejected() {
    let Some(src) = source() else { return };
    let dir = copy(&src);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(dir.path());
        assert!(
            matches!(err, ImportError::Safetensors { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut corrupt = bytes.clone();
    corrupt[8..16].copy_from_slice(b"garbage!");
    std::fs::write(&path, &corrupt).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ImportError::Safetensors { .. }), "{err}");
}

#[test]
fn invalid_packed_codes_are_rejected() {
    let Some(src) = source() else { return };
    let err = load_edited_tensors(&src, |tensors| {
        tensors
            .get_mut("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .2[0] = 0xff;
    });
    assert!(
        matches!(&err, ImportError::Ternary { name, .. } if name.contains("q_proj")),
        "{err}"
    );
}

#[test]
fn unsupported_architectures_and_options_are_named() {
    let Some(src) = source() else { return };
    type ConfigEdit = fn(&mut serde_json::Value);
    let cases: [(&str, ConfigEdit); 5] = [
        ("MambaForCausalLM", |c| {
            c["architectures"] = serde_json::json!(["MambaForCausalLM"])
        }),
        ("gelu", |c| c["hidden_act"] = "gelu".into()),
        ("quant_method", |c| {
            c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
            c["quantization_config"]["quant_method"] = "gptq".into();
        }),
        ("yarn", |c| {
            c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
        }),
        ("num_key_value_heads", |c| {
            c["num_key_value_heads"] = 3.into()
        }),
    ];
    for (needle, edit) in cases {
        let dir = copy(&src);
        edit_config(dir.path(), edit);
        let err = load_err(dir.path());
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    let dir = copy(&src);
    std::fs::write(dir.path().join("config.json"), b"{ not json").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ImportError::Config { .. }), "{err}");
}

#[test]
fn tokens_outside_the_vocabulary_and_context_overflow_are_errors() {
    let Some(src) = source() else { return };
    let device = Device::flex();
    let model = load_hf_model(&src, &device).unwrap();
    let vocab = model.config.vocab_size as i64;
    let tokens = |ids: Vec<i64>| {
        let len = ids.len();
        Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device)
    };
    let err = model.forward_full(tokens(vec![1, vocab])).unwrap_err();
    assert_eq!(
        err,
        ModelError::TokenOutOfRange {
            token: vocab,
            position: 1,
            vocab: vocab as usize
        }
    );
    let err = model.forward_full(tokens(vec![-1])).unwrap_err();
    assert!(
        matches!(err, ModelError::TokenOutOfRange { token: -1, .. }),
        "{err}"
    );

    let mut cache = model.new_cache(1, 4).unwrap();
    model.forward(tokens(vec![1, 2, 3]), &mut cache).unwrap();
    let err = model.forward(tokens(vec![4, 5]), &mut cache).unwrap_err();
    assert_eq!(
        err,
        ModelError::ContextOverflow {
            cached: 3,
            new: 2,
            context: 4
        }
    );
    // The failed call left the cache usable.
    model.forward(tokens(vec![4]), &mut cache).unwrap();
}
