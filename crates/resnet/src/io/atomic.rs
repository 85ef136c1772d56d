//! Atomic file writes: write a temporary file beside the target, flush it to
//! disk, then rename it over the target. A crash or Ctrl-C leaves either the
//! old file or the new one, never a torn one.
//!
//! A group of files that belong together (a checkpoint's weights, momentum
//! and sidecar) is written as one with a redo journal: every file is first
//! written complete under a temporary name, then the journal naming the
//! renames is written atomically (the commit point), then the renames are
//! made and the journal removed. After a crash, [`recover_group`] finishes
//! the renames of a committed group; an uncommitted one leaves the previous
//! group intact and only temporaries behind, which [`remove_temporaries`]
//! deletes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically with a function that fills the file.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes `files` (full paths in one folder, and their bytes) as one group
/// whose journal is `journal` (in the same folder): after any crash, either
/// the previous files or all the new ones are found (see [`recover_group`]).
pub fn write_group(journal: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut renames = Vec::new();
    let result = (|| {
        for (path, bytes) in files {
            let tmp = temp_path(path);
            renames.push((tmp.clone(), path.clone()));
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
            f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))?;
        }
        let names: Vec<[String; 2]> = renames.iter().map(|(t, p)| [file_name(t), file_name(p)]).collect();
        let text = serde_json::to_vec(&names).map_err(|e| Error::Invalid(e.to_string()))?;
        write(journal, &text)
    })();
    if let Err(e) = result {
        renames.iter().for_each(|(tmp, _)| drop(std::fs::remove_file(tmp)));
        return Err(e);
    }
    recover_group(journal)
}

/// Finishes a group whose journal was written (see [`write_group`]): makes
/// the renames whose temporaries remain, then removes the journal. Nothing
/// to do when there is no journal.
pub fn recover_group(journal: &Path) -> Result<()> {
    let text = match std::fs::read(journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(journal, e)),
    };
    let names: Vec<[String; 2]> =
        serde_json::from_slice(&text).map_err(|e| Error::format(journal, format!("corrupt journal: {e}")))?;
    let dir = journal.parent().unwrap_or(Path::new("."));
    for [tmp, name] in &names {
        if tmp.contains('/') || name.contains('/') {
            return Err(Error::format(journal, "a journal names files in its own folder only"));
        }
        let tmp = dir.join(tmp);
        if tmp.exists() {
            std::fs::rename(&tmp, dir.join(name)).map_err(|e| Error::io(&tmp, e))?;
        }
    }
    sync_dir(dir)?;
    std::fs::remove_file(journal).map_err(|e| Error::io(journal, e))?;
    sync_dir(dir)
}

/// Deletes the temporaries that killed writes left in `dir` (files named
/// `.<name>.tmp<pid>`); call it after [`recover_group`], which needs those of
/// a committed group.
pub fn remove_temporaries(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        let is_temp = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_temp && std::fs::remove_file(dir.join(&*name)).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Makes the renames durable; a folder cannot be opened for syncing everywhere, which is harmless.
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("resnet-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(super::write(&dir.join("missing/x.bin"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A group is all or nothing: a journal left by a crash after the commit
    /// point is rolled forward, temporaries of an uncommitted group are removed.
    #[test]
    fn groups_recover_after_a_crash_at_any_point() {
        let dir = std::env::temp_dir().join(format!("resnet-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, journal) = (dir.join("a"), dir.join("b"), dir.join(".g.commit"));
        super::write_group(&journal, &[(a.clone(), b"a1".to_vec()), (b.clone(), b"b1".to_vec())]).unwrap();
        assert_eq!((std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()), (b"a1".to_vec(), b"b1".to_vec()));
        assert!(!journal.exists());
        // Crash after the commit point, with one of two renames made.
        std::fs::write(dir.join(".a.tmp1"), b"a2").unwrap();
        std::fs::write(&b, b"b2").unwrap();
        std::fs::write(&journal, br#"[[".a.tmp1","a"],[".b.tmp1","b"]]"#).unwrap();
        super::recover_group(&journal).unwrap();
        assert_eq!((std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()), (b"a2".to_vec(), b"b2".to_vec()));
        // Crash before it: the old files stay, the temporaries go.
        std::fs::write(dir.join(".a.tmp77"), b"a3").unwrap();
        super::recover_group(&journal).unwrap();
        assert_eq!(super::remove_temporaries(&dir).unwrap(), 1);
        assert_eq!(std::fs::read(&a).unwrap(), b"a2");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // A write that fails before the commit point (here: a file that cannot
        // be created, as a full disk fails one) leaves the previous group and no
        // temporary.
        let files = [(a.clone(), b"a4".to_vec()), (dir.join("missing/c"), b"c".to_vec())];
        assert!(super::write_group(&journal, &files).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"a2");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
