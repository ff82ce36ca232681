//! containerd's `imports`: the drop-in files a config pulls in. containerd 2.3's stock config
//! imports `/etc/containerd/conf.d/*.toml`; where a config imports a directory like that,
//! `husk install` writes its handler to a drop-in of its own there, [`DROP_IN`], and leaves the
//! main config as its owner wrote it.
//!
//! containerd expands each import with Go's `filepath.Glob`, relative paths against the main
//! config's directory. husk matches the patterns whose wildcards are all in the file name
//! (`*`, `?`), which is how drop-in directories are written; a pattern with wildcards in a
//! directory is not used for the drop-in.

use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;

/// The drop-in's file name.
pub const DROP_IN: &str = "husk.toml";

/// The import patterns of `text` (a config at `config_path`), made absolute.
fn patterns(text: &str, config_path: &Path) -> Vec<PathBuf> {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return Vec::new();
    };
    let base = config_path.parent().unwrap_or(Path::new("/"));
    doc.get("imports")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .map(|p| base.join(p))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one character).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The drop-in file `husk install` writes for the config `text` at `config_path`: [`DROP_IN`]
/// in the directory of the first import pattern that matches that name (an import of exactly
/// that file counts too). `None` when the config imports no such directory.
pub fn drop_in(text: &str, config_path: &Path) -> Option<PathBuf> {
    patterns(text, config_path).into_iter().find_map(|p| {
        let dir = p.parent()?;
        let file = p.file_name()?.to_str()?;
        if has_wildcard(&dir.to_string_lossy()) || file.contains('[') {
            return None;
        }
        glob_match(file.as_bytes(), DROP_IN.as_bytes()).then(|| dir.join(DROP_IN))
    })
}

/// What `husk install` writes into a new drop-in for a main config of `version`.
pub fn new_drop_in(version: i64) -> String {
    format!(
        "# husk's containerd runtime handler, written by `husk install` \
         (`husk uninstall` removes this file).\nversion = {version}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "/etc/containerd/config.toml";

    #[test]
    fn the_stock_2_3_config_imports_conf_d() {
        let stock = include_str!("../../tests/fixtures/containerd-2.3-default-v4.toml");
        assert_eq!(
            drop_in(stock, Path::new(MAIN)),
            Some(PathBuf::from("/etc/containerd/conf.d/husk.toml"))
        );
    }

    #[test]
    fn patterns_match_by_file_name_relative_ones_against_the_config() {
        for (imports, want) in [
            (
                r#"["conf.d/*.toml"]"#,
                Some("/etc/containerd/conf.d/husk.toml"),
            ),
            (r#"["/x/*.conf", "/y/h?sk.toml"]"#, Some("/y/husk.toml")),
            (r#"["/y/husk.toml"]"#, Some("/y/husk.toml")),
            (r#"["/y/*"]"#, Some("/y/husk.toml")),
            (r#"["/y/other.toml"]"#, None),
            (r#"["/y/*.conf"]"#, None),
            (r#"["/y/*/x.toml", "/z/*/*.toml"]"#, None),
            (r#"[]"#, None),
        ] {
            let text = format!("version = 3\nimports = {imports}\n");
            assert_eq!(
                drop_in(&text, Path::new(MAIN)),
                want.map(PathBuf::from),
                "imports = {imports}"
            );
        }
        assert_eq!(drop_in("version = 2\n", Path::new(MAIN)), None);
        assert_eq!(drop_in("not toml [", Path::new(MAIN)), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*.toml", b"husk.toml"));
        assert!(glob_match(b"*", b"husk.toml"));
        assert!(glob_match(b"h*k.t?ml", b"husk.toml"));
        assert!(!glob_match(b"*.toml", b"husk.tom"));
        assert!(!glob_match(b"?", b""));
    }
}
