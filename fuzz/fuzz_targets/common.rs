//! Shared by the fuzz targets: write the input where the loaders expect a file, then load it.

use std::path::Path;

use burn::tensor::Device;

/// Loads `path` as a model and as a tokenizer; errors are the expected outcome, panics and
/// crashes are what the fuzzer looks for.
pub fn load_everything(path: &Path) {
    let _ = bitnet_import::load_model(path, &Device::flex());
    let _ = bitnet_import::load_tokenizer(path);
}

/// A scratch directory in memory-backed storage when there is one.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("a scratch directory")
    } else {
        tempfile::tempdir().expect("a scratch directory")
    }
}

/// Writes `data` with its first bytes replaced by `magic` (so the format's own parser is
/// reached rather than the format detection) as `file_name`, and loads it.
pub fn load_with_magic(data: &[u8], magic: &[u8], file_name: &str) {
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(data.get(magic.len()..).unwrap_or_default());
    let dir = scratch();
    let path = dir.path().join(file_name);
    std::fs::write(&path, &bytes).expect("writing the input");
    load_everything(&path);
}
