//! A file written under a temporary name and moved into place only when complete, so a failed
//! or interrupted write never destroys what was at the path before.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{ImportError, Result};

pub(crate) struct StagedFile {
    out: BufWriter<File>,
    temp: PathBuf,
    path: PathBuf,
}

impl StagedFile {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let temp = path.with_file_name(name);
        let file = File::create(&temp).map_err(|source| ImportError::Write {
            path: temp.clone(),
            source,
        })?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            temp,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|source| ImportError::Write {
                path: self.temp.clone(),
                source,
            })
    }

    /// Zero bytes up to the next multiple of `align`, given `written` bytes so far.
    pub(crate) fn pad(&mut self, written: u64, align: u64) -> Result<()> {
        let padding = written.div_ceil(align) * align - written;
        self.write(&vec![0u8; padding as usize])
    }

    /// Flushes, syncs and renames the file into place.
    pub(crate) fn finish(mut self) -> Result<()> {
        let io = |source| ImportError::Write {
            path: self.temp.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&self.temp, &self.path).map_err(|source| ImportError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // After a successful `finish` the temporary name no longer exists.
        let _ = std::fs::remove_file(&self.temp);
    }
}
