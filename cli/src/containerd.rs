//! containerd's `config.toml`: registering, finding and removing the `husk` runtime handler.
//!
//! Edits go through `toml_edit`, so comments, ordering and every other table survive. The
//! handler lives at
//! - `version = 2` (containerd 1.6 / 1.7): `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk`
//! - `version = 3` (containerd 2.0–2.2) and `version = 4` (2.3's default, the same CRI plugin
//!   layout): `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.husk`
//!
//! Where the config imports a drop-in directory (containerd 2.3's stock config imports
//! `/etc/containerd/conf.d/*.toml`), the handler goes into a drop-in of husk's own there
//! ([`imports`]).
//!
//! A config without `version` is containerd's version 1 format, which husk refuses to edit:
//! `containerd config migrate` converts it. An existing `husk` table with other contents is a
//! conflict, reported and left alone unless the caller forces the replacement.

pub mod imports;

use toml_edit::{value, Array, DocumentMut, Item, Table};

/// The handler name (`RuntimeClass.handler`, the `runtimes.<name>` key).
pub const HANDLER: &str = "husk";
/// The runtime type containerd resolves to `containerd-shim-husk-v2` on its PATH.
pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";
/// Pod annotations passed to the shim (VM size: `io.husk.vcpus`, `io.husk.memory`).
pub const POD_ANNOTATIONS: &str = "io.husk.*";
/// What `husk install` writes when containerd has no config file yet.
pub const MINIMAL_V2: &str =
    "# containerd config written by `husk install` (none existed).\nversion = 2\n";

/// A containerd config husk cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    /// Not TOML.
    #[error("not valid TOML: {0}")]
    Parse(String),
    /// Version 1 format (no `version` key).
    #[error(
        "this is a version 1 containerd config (no `version` key), which husk does not edit: \
         convert it with `containerd config migrate > new.toml` (containerd 1.7+/2.x) or add \
         `version = 2` and move its [plugins.cri] settings to [plugins.\"io.containerd.grpc.v1.cri\"]"
    )]
    Version1,
    /// A version this code does not know.
    #[error("unsupported containerd config version {0} (husk knows versions 2, 3 and 4)")]
    UnknownVersion(String),
    /// A key on the handler's path is not a table.
    #[error("`{0}` is not a table, so the husk handler cannot be added below it")]
    NotATable(String),
    /// A different `husk` handler is already registered.
    #[error(
        "a different `husk` runtime handler is already registered at [{path}]:\n{existing}\
         (husk install would write:\n{wanted}); edit it by hand or pass --force to replace it"
    )]
    Conflict {
        /// The table's dotted path.
        path: String,
        /// What is there.
        existing: String,
        /// What install would write.
        wanted: String,
    },
}

/// containerd's config format versions husk edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// containerd 1.6 / 1.7.
    V2,
    /// containerd 2.0–2.2 (2.3 reads it too).
    V3,
    /// containerd 2.3's default; its CRI runtime handlers sit where version 3 has them.
    V4,
}

impl Version {
    /// The CRI plugin that holds runtime handlers.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Version::V2 => "io.containerd.grpc.v1.cri",
            Version::V3 | Version::V4 => "io.containerd.cri.v1.runtime",
        }
    }

    /// The key path of the `husk` handler table.
    pub fn handler_path(self) -> [&'static str; 5] {
        [
            "plugins",
            self.cri_plugin(),
            "containerd",
            "runtimes",
            HANDLER,
        ]
    }

    /// The table header, as a user would write it.
    pub fn header(self) -> String {
        format!(
            "plugins.\"{}\".containerd.runtimes.{HANDLER}",
            self.cri_plugin()
        )
    }

    /// The number in the file.
    pub fn number(self) -> i64 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
            Version::V4 => 4,
        }
    }
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The handler table was added.
    Added,
    /// The same handler was already there; the text is unchanged.
    AlreadyPresent,
    /// A different handler was replaced (`force`).
    Replaced,
}

/// A handler found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The config version.
    pub version: Version,
    /// Its `runtime_type`, if a string.
    pub runtime_type: Option<String>,
    /// `options.ConfigPath`, if set.
    pub config_path: Option<String>,
}

fn parse(text: &str) -> Result<(DocumentMut, Version), ContainerdConfigError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ContainerdConfigError::Parse(e.to_string()))?;
    let version = match doc.get("version") {
        None => return Err(ContainerdConfigError::Version1),
        Some(item) => match item.as_integer() {
            Some(2) => Version::V2,
            Some(3) => Version::V3,
            Some(4) => Version::V4,
            Some(1) => return Err(ContainerdConfigError::Version1),
            _ => {
                return Err(ContainerdConfigError::UnknownVersion(
                    item.to_string().trim().to_string(),
                ))
            }
        },
    };
    Ok((doc, version))
}

/// The version of a config text.
pub fn version(text: &str) -> Result<Version, ContainerdConfigError> {
    parse(text).map(|(_, v)| v)
}

/// The handler table husk writes, for `config_path` (`/etc/husk/config.toml`).
fn wanted_table(config_path: &str) -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix(
        "\n# husk's runtime handler, added by `husk install` (`husk uninstall` removes it).\n",
    );
    t.insert("runtime_type", value(RUNTIME_TYPE));
    let mut ann = Array::new();
    ann.push(POD_ANNOTATIONS);
    t.insert("pod_annotations", value(ann));
    t.insert("privileged_without_host_devices", value(true));
    let mut options = Table::new();
    options.insert("ConfigPath", value(config_path));
    t.insert("options", Item::Table(options));
    t
}

/// A table's meaning, independent of layout and comments (for comparing handlers).
fn meaning(table: &dyn toml_edit::TableLike) -> toml::Value {
    let mut doc = DocumentMut::new();
    for (k, v) in table.iter() {
        doc.insert(k, v.clone());
    }
    toml::from_str(&doc.to_string()).unwrap_or(toml::Value::String(doc.to_string()))
}

fn render(table: &dyn toml_edit::TableLike) -> String {
    let mut doc = DocumentMut::new();
    for (k, v) in table.iter() {
        doc.insert(k, v.clone());
    }
    let mut s = doc.to_string();
    s = s
        .lines()
        .map(|l| format!("    {}\n", l.trim()))
        .filter(|l| l.trim() != "")
        .collect();
    s
}

fn handler(doc: &DocumentMut, version: Version) -> Option<&dyn toml_edit::TableLike> {
    let mut item: &Item = doc.as_item();
    for key in version.handler_path() {
        item = item.as_table_like()?.get(key)?;
    }
    item.as_table_like()
}

/// Finds the `husk` handler, if the config registers one.
pub fn find(text: &str) -> Result<Option<Found>, ContainerdConfigError> {
    let (doc, version) = parse(text)?;
    Ok(handler(&doc, version).map(|t| Found {
        version,
        runtime_type: t
            .get("runtime_type")
            .and_then(Item::as_str)
            .map(String::from),
        config_path: t
            .get("options")
            .and_then(Item::as_table_like)
            .and_then(|o| o.get("ConfigPath"))
            .and_then(Item::as_str)
            .map(String::from),
    }))
}

/// Registers the handler. Returns the new text (unchanged unless something was added or
/// replaced), the config version and what happened.
pub fn register(
    text: &str,
    config_path: &str,
    force: bool,
) -> Result<(String, Version, Registered), ContainerdConfigError> {
    let (mut doc, version) = parse(text)?;
    let wanted = wanted_table(config_path);
    let outcome = match handler(&doc, version) {
        Some(existing) if meaning(existing) == meaning(&wanted) => {
            return Ok((text.to_string(), version, Registered::AlreadyPresent))
        }
        Some(existing) if !force => {
            return Err(ContainerdConfigError::Conflict {
                path: version.header(),
                existing: render(existing),
                wanted: render(&wanted),
            })
        }
        Some(_) => Registered::Replaced,
        None => Registered::Added,
    };
    let path = version.handler_path();
    let (parents, last) = path.split_at(path.len() - 1);
    let mut table: &mut Table = doc.as_table_mut();
    let mut walked = Vec::new();
    for key in parents {
        walked.push(*key);
        let entry = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = entry
            .as_table_mut()
            .ok_or_else(|| ContainerdConfigError::NotATable(walked.join(".")))?;
    }
    // Placed last in the file (its options table follows it), so the original text stays a
    // prefix of the result and the addition reads as one block.
    let mut wanted = wanted;
    wanted.set_position(usize::MAX / 2);
    table.insert(last[0], Item::Table(wanted));
    Ok((doc.to_string(), version, outcome))
}

/// Removes the handler. Returns the new text and whether a handler was there.
pub fn unregister(text: &str) -> Result<(String, bool), ContainerdConfigError> {
    let (mut doc, version) = parse(text)?;
    let path = version.handler_path();
    let (parents, last) = path.split_at(path.len() - 1);
    let mut item: &mut Item = doc.as_item_mut();
    for key in parents {
        match item.as_table_like_mut().and_then(|t| t.get_mut(key)) {
            Some(next) => item = next,
            None => return Ok((text.to_string(), false)),
        }
    }
    let removed = item
        .as_table_like_mut()
        .and_then(|t| t.remove(last[0]))
        .is_some();
    if !removed {
        return Ok((text.to_string(), false));
    }
    Ok((doc.to_string(), true))
}

#[cfg(test)]
mod tests;
