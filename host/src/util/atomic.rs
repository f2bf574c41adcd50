//! Atomic file writes: write a temporary file in the same folder, then rename it over the
//! target. A reader (or a resumed run) sees the old file or the new one, never a torn one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O failure with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

impl FileError {
    pub fn new(path: &Path, message: impl ToString) -> Self {
        FileError { path: path.to_path_buf(), message: message.to_string() }
    }
}

/// Write `path` through a temporary file in the same folder: `write` fills it, then it is
/// synced and renamed over `path` (and the rename made durable where the platform allows).
/// On failure the temporary file is removed. `io` turns an I/O failure into the caller's error.
pub fn write_with<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| io(&tmp, e))?);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = File::open(&dir) {
        // Make the rename itself durable; not every platform can sync a directory.
        let _ = d.sync_all();
    }
    result
}

/// Write `bytes` to `path` atomically, creating parent folders.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_with(path, |out| out.write_all(bytes).map_err(|e| FileError::new(path, e)), FileError::new)
}
