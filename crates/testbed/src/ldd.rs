//! The shared libraries of a dynamically linked binary, as `ldd` lists them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors listing libraries.
#[derive(Debug, thiserror::Error)]
pub enum LddError {
    /// ldd could not run.
    #[error("cannot run ldd on {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A library is missing on the host.
    #[error("{path} needs {lib}, which ldd did not find")]
    NotFound {
        /// The binary.
        path: PathBuf,
        /// The library name.
        lib: String,
    },
}

/// Parses `ldd` output into the absolute paths of the libraries and the loader.
/// Returns `Err(name)` for a library that is "not found".
pub fn parse(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The libraries (and loader) `binary` needs; empty for a static binary.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, LddError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| LddError::Spawn {
            path: binary.to_path_buf(),
            source,
        })?;
    // ldd exits non-zero for static binaries ("not a dynamic executable"): no libraries.
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).map_err(|lib| LddError::NotFound {
        path: binary.to_path_buf(),
        lib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        let libs = parse(out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(parse("\tlibq.so.3 => not found\n"), Err("libq.so.3".into()));
        assert_eq!(
            parse("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn real_binary_has_libc_and_loader() {
        let libs = libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}
