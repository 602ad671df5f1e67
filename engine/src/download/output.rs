//! Output checks, made before a job sends anything: the output can be created (not a
//! directory or a special file, in a directory that exists), no two outputs collide with each
//! other's partial files, and each output's directory is held open for the job.
//!
//! Not here: creating the partial file (`partial.rs`) or the rename (`settle.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::backend::nofollow::Dir;
use crate::error::GetError;

/// Checks that `output` can be created: not a directory or another file that is not a regular
/// one (the rename at the end would replace `/dev/null` with a regular file), in a directory
/// that exists (each directory checked once: `dirs_ok`). The file itself (`output.incomplete`
/// first) is created when its download starts.
pub(crate) fn check_output(output: &Path, dirs_ok: &mut HashSet<PathBuf>) -> Result<(), GetError> {
    if let Ok(m) = std::fs::metadata(output) {
        let path = output.to_path_buf();
        if m.is_dir() {
            return Err(GetError::OutputIsDirectory { path });
        }
        if let Some(what) = special_file(m.file_type()) {
            return Err(GetError::OutputNotRegularFile { path, what });
        }
    }
    let dir = parent_dir(output);
    if dirs_ok.contains(dir) {
        return Ok(());
    }
    let checked = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(GetError::OutputDirMissing {
            dir: dir.to_path_buf(),
        }),
        Ok(m) if !m.is_dir() => Err(GetError::OutputDirNotDirectory {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(GetError::OutputDirNotDirectory {
            dir: dir.to_path_buf(),
        }),
        _ => Ok(()),
    };
    if checked.is_ok() {
        dirs_ok.insert(dir.to_path_buf());
    }
    checked
}

/// The directory `dir` of an output, held open for the job. With a `root` (a repo's folder that
/// `dir` lies in), no symlink beneath the root is followed on the way.
pub(crate) fn open_output_dir(dir: &Path, root: Option<&Path>) -> Result<Dir, GetError> {
    let not_writable = |source| GetError::OutputNotWritable {
        path: dir.to_path_buf(),
        source,
    };
    match root.and_then(|r| Some((r, dir.strip_prefix(r).ok()?))) {
        Some((root, rel)) => Dir::open(root)
            .and_then(|r| r.beneath(rel, false))
            .map_err(not_writable),
        None => Dir::open(dir).map_err(not_writable),
    }
}

/// Refuses a job in which one output is another's partial file (`X` and `X.incomplete`), or is
/// named like ferry's temporary files: one would overwrite the other's bytes, and the final
/// name could receive the wrong file.
pub(crate) fn check_collisions(outputs: &HashMap<PathBuf, &'static str>) -> Result<(), GetError> {
    let mut sorted: Vec<(&PathBuf, &&str)> = outputs.iter().collect();
    sorted.sort();
    for (path, suffix) in sorted {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.contains(".ferry-tmp-") {
            return Err(GetError::OutputCollision {
                path: path.clone(),
                detail: "the name has the form of ferry's temporary files (*.ferry-tmp-*); \
                         refused"
                    .into(),
            });
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(suffix);
        let partial = PathBuf::from(partial);
        if outputs.contains_key(&partial) {
            return Err(GetError::OutputCollision {
                path: partial,
                detail: format!(
                    "it is also the partial file of {} in the same job: one would overwrite \
                     the other's bytes; refused",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// What a file that is neither regular nor a directory is, in words; `None` for those two.
pub(crate) fn special_file(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    [
        (t.is_char_device(), "a character device"),
        (t.is_block_device(), "a block device"),
        (t.is_fifo(), "a FIFO"),
        (t.is_socket(), "a socket"),
    ]
    .into_iter()
    .find_map(|(is, what)| is.then_some(what))
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
