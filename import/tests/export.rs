//! Exporting models as HF checkpoints in the 2B4T packed layout, and the byte-level tokenizer.

#[path = "../../backend/tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;

use bitnet_backend::ScaleConvention;
use bitnet_import::{
    Family, ImportError, load_hf_model, load_tokenizer, read_config, save_byte_level_tokenizer,
    save_hf_model,
};
use bitnet_model::{BitNetConfig, BitNetModel, FfnActivation, TernaryLinearSpec};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::golden_dir;
use safetensors::Dtype;
use support::read_tensors;

fn logits(model: &BitNetModel, ids: &[i64]) -> Vec<f32> {
    let device = model.embed_tokens.weight.val().device();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
    let out = model.forward_full(tokens).unwrap();
    out.into_data().convert::<f32>().try_to_vec().unwrap()
}

fn reload(dir: &Path) -> BitNetModel {
    load_hf_model(dir, &Device::flex()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn a_golden_checkpoint_exports_to_the_same_packed_bytes_and_logits() {
    let Some(golden) = golden_dir() else { return };
    let src = golden.join("models/bitnet2b4t_pub");
    let model = reload(&src);
    let out = tempfile::tempdir().unwrap();
    save_hf_model(&model, out.path(), 1, 2).unwrap();

    let (_, family) = read_config(out.path()).unwrap();
    assert_eq!(family, Family::BitNet2b4t);
    let original = read_tensors(&src);
    let exported = read_tensors(out.path());
    for (name, (dtype, shape, bytes)) in &original {
        let (out_dtype, out_shape, out_bytes) = &exported[name];
        assert_eq!(shape, out_shape, "{name}");
        if *dtype == Dtype::U8 {
            assert!(bytes == out_bytes, "{name}: packed codes differ");
        } else {
            assert_eq!(*out_dtype, Dtype::F32, "{name}: floats are exported as f32");
        }
    }
    assert_eq!(original.len(), exported.len());
    let ids = [111, 154, 73, 304, 214, 9];
    assert_eq!(logits(&model, &ids), logits(&reload(out.path()), &ids));
}

fn small_config(convention: ScaleConvention) -> BitNetConfig {
    BitNetConfig::new(257, 96, 200, 2, 4, 2, TernaryLinearSpec::new(convention))
        .with_activation(FfnActivation::Relu2)
        .with_sub_norms(true)
        .with_tie_word_embeddings(true)
        .with_max_position_embeddings(32)
}

#[test]
fn a_trained_model_round_trips_through_its_export() {
    let config = small_config(ScaleConvention::Multiply);
    let device = Device::flex();
    let model = config.init_trainable(&device).unwrap().pack().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_hf_model(&model, out.path(), 256, 256).unwrap();
    let reloaded = reload(out.path());
    assert_eq!(reloaded.config, config);
    let ids = [72, 101, 108, 108, 111, 256];
    assert_eq!(logits(&model, &ids), logits(&reloaded, &ids));
}

#[test]
fn layouts_other_than_2b4t_and_unpacked_models_are_refused() {
    let device = Device::flex();
    let out = tempfile::tempdir().unwrap();
    let divide = small_config(ScaleConvention::Divide).init(&device).unwrap();
    let err = save_hf_model(&divide, out.path(), 0, 0).unwrap_err();
    assert!(
        matches!(&err, ImportError::Unsupported(m) if m.contains("divide scale convention")),
        "{err}"
    );
    let trainable = small_config(ScaleConvention::Multiply)
        .init_trainable(&device)
        .unwrap();
    let err = save_hf_model(&trainable, out.path(), 0, 0).unwrap_err();
    assert!(err.to_string().contains("pack it first"), "{err}");
    assert!(!out.path().join("model.safetensors").exists());
}

#[test]
fn the_byte_level_tokenizer_maps_each_byte_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    save_byte_level_tokenizer(dir.path()).unwrap();
    let tokenizer = load_tokenizer(dir.path()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 257);
    let text = "ROMEO:\n  Hark, wörld\t\u{1F600}!";
    let ids = tokenizer.encode(text, true).unwrap();
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    assert_eq!(ids, bytes, "no BOS, one token per byte");
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    assert!(tokenizer.is_end_of_generation(256));

    // A streamed multi-byte character appears only once all its bytes have arrived.
    let mut stream = tokenizer.stream();
    let pieces: Vec<Option<String>> = "ö!"
        .bytes()
        .map(|b| stream.push(u32::from(b)).unwrap())
        .collect();
    assert_eq!(pieces, [None, Some("ö".into()), Some("!".into())]);
}
