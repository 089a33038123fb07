//! Output files that never overwrite anything: an exporter writes `<name>.partial`, created
//! only if no file (or symbolic link) has that name, and on completion gives it its final name
//! only if that name is free — else the next free one (`<base>.1<ext>`, `<base>.2<ext>`, …).
//! A crash leaves a `.partial` behind, never a truncated file under a final name, and an
//! existing file or a link planted where oxeye writes is left untouched.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Creates `path` for writing only if nothing has that name (`O_CREAT | O_EXCL`: an existing
/// symbolic link is not followed either).
pub fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Checks that files named `<prefix>…` can be created: their folder, or the nearest existing
/// folder above it (exporters create the missing ones), takes a new entry — a trial file,
/// created and removed at once. So a missing permission or a read-only mount is refused when the
/// exporter is built (and by `oxeye validate`), not at its first write.
pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    let mut dir = match Path::new(prefix).parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    if !dir.is_dir() {
        return Err(PrefixError::NotAFolder {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
        });
    }
    let trial = dir.join(format!(".oxeye-write-check.{}", std::process::id()));
    match create_new(&trial) {
        Ok(_) => {
            let _ = std::fs::remove_file(&trial);
            Ok(())
        }
        Err(source) => Err(PrefixError::NotWritable {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            source,
        }),
    }
}

/// Why files cannot be created under an output prefix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// The nearest existing path above the files is not a folder.
    #[error("{} is not a folder (files are named {prefix}…)", dir.display())]
    NotAFolder {
        /// That path.
        dir: PathBuf,
        /// The prefix checked.
        prefix: String,
    },
    /// The folder does not take a new entry (permissions, a read-only mount, ...).
    #[error("cannot create files in {} (files are named {prefix}…): {source}", dir.display())]
    NotWritable {
        /// The folder.
        dir: PathBuf,
        /// The prefix checked.
        prefix: String,
        /// Why creating a trial file failed.
        #[source]
        source: io::Error,
    },
}

/// `<base><ext>`, then `<base>.1<ext>`, `<base>.2<ext>`, …
pub fn candidates<'a>(base: &'a str, ext: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    (0u64..).map(move |n| match n {
        0 => PathBuf::from(format!("{base}{ext}")),
        n => PathBuf::from(format!("{base}.{n}{ext}")),
    })
}

/// Creates the `.partial` file of the first free final name among [`candidates`]: the file and
/// the final name it is meant for.
pub fn create_partial(base: &str, ext: &str) -> io::Result<(File, PathBuf, PathBuf)> {
    for done in candidates(base, ext).take(10_000) {
        if done.symlink_metadata().is_ok() {
            continue;
        }
        let partial = PathBuf::from(format!("{}.partial", done.display()));
        match create_new(&partial) {
            Ok(f) => return Ok((f, partial, done)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", partial.display()),
                ))
            }
        }
    }
    Err(io::Error::other(format!(
        "{base}{ext}: 10 000 names taken already"
    )))
}

/// Gives a complete `partial` its final name `done`, or — if something took that name since —
/// the next free one of `base`/`ext`; never replaces an existing file. Returns the name given.
pub fn publish(partial: &Path, done: &Path, base: &str, ext: &str) -> io::Result<PathBuf> {
    let names = std::iter::once(done.to_path_buf()).chain(candidates(base, ext).take(10_000));
    for name in names {
        // A hard link fails if the name exists; the partial is unlinked once it has the name.
        match std::fs::hard_link(partial, &name) {
            Ok(()) => {
                std::fs::remove_file(partial)?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("naming {} {}: {e}", partial.display(), name.display()),
                ))
            }
        }
    }
    Err(io::Error::other(format!(
        "{base}{ext}: 10 000 names taken already"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxeye-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn an_output_prefix_is_checked_where_files_will_be_made() {
        let d = dir("prefix");
        // A folder the exporter will create, under one that takes new entries.
        let nested = d.join("a/b/spans").display().to_string();
        assert!(check_prefix(&nested).is_ok());
        assert!(!d.join("a").exists(), "checking creates nothing");
        assert_eq!(
            std::fs::read_dir(&d).expect("read").count(),
            0,
            "no trial file left"
        );
        let file = d.join("plain");
        std::fs::write(&file, b"x").expect("write");
        let under_file = file.join("spans").display().to_string();
        let e = check_prefix(&under_file).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let e = check_prefix("/proc/oxeye-nope/spans")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot create files in /proc "), "{e}");
    }

    #[test]
    fn never_overwrites_a_file_or_follows_a_link() {
        let d = dir("clobber");
        let base = d.join("out-1").display().to_string();
        // A file already has the first name, and a link planted at the second points elsewhere.
        std::fs::write(format!("{base}.arrow"), b"precious").expect("write");
        let target = d.join("victim");
        std::fs::write(&target, b"victim").expect("write");
        std::os::unix::fs::symlink(&target, format!("{base}.1.arrow")).expect("symlink");

        let (mut f, partial, done) = create_partial(&base, ".arrow").expect("partial");
        assert_eq!(done, PathBuf::from(format!("{base}.2.arrow")));
        f.write_all(b"new").expect("write");
        drop(f);
        assert_eq!(
            publish(&partial, &done, &base, ".arrow").expect("publish"),
            done
        );
        assert_eq!(
            std::fs::read(format!("{base}.arrow")).expect("read"),
            b"precious"
        );
        assert_eq!(std::fs::read(&target).expect("read"), b"victim");
        assert_eq!(std::fs::read(&done).expect("read"), b"new");
        assert!(!partial.exists());

        // The final name taken while the file was written: the next free one.
        let (f, partial, done) = create_partial(&base, ".arrow").expect("partial");
        drop(f);
        std::fs::write(&done, b"raced").expect("write");
        let given = publish(&partial, &done, &base, ".arrow").expect("publish");
        assert_ne!(given, done);
        assert_eq!(std::fs::read(&done).expect("read"), b"raced");
        assert!(create_new(&done).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
