//! `ciab lock`: pins every image of a spec to a manifest digest and every
//! artifact to a sha256, writing them into the spec file that declares the
//! entry (comments and layout kept), so builds are reproducible and offline
//! after the fetch.

use crate::fetch::{FetchOptions, Fetcher};
use crate::spec::{Origin, Spec};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One value `ciab lock` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub origin: Origin,
    /// `registry.images`, `artifacts` or `guest_images`.
    pub array: &'static str,
    /// `digest` or `sha256`.
    pub key: &'static str,
    pub value: String,
    /// What the pin is for, in messages.
    pub what: String,
}

/// Resolves what is unpinned (everything with `update`) and writes the pins.
/// Returns the pins that changed a file.
pub fn lock(spec_path: &Path, cache_root: &Path, opts: &FetchOptions, update: bool) -> Result<Vec<Pin>> {
    let spec = Spec::load(spec_path)?;
    let fetcher = Fetcher::new(cache_root, opts)?;
    let mut pins = Vec::new();
    for image in &spec.images {
        // A digest written into `ref` itself is the user's pin: never moved.
        let in_ref = crate::oci::reference::ImageRef::parse(&image.reference).map(|r| r.digest.is_some()).unwrap_or(false);
        if in_ref || (image.digest.is_some() && !update) {
            continue;
        }
        let digest = fetcher.resolve_image(image)?;
        if image.digest.as_deref() != Some(digest.to_string().as_str()) {
            pins.push(Pin { origin: image.origin.clone(), array: "registry.images", key: "digest", value: digest.to_string(), what: image.reference.clone() });
        }
    }
    // Artifacts and downloaded guest images are files pinned by sha256:
    // (the file, which array of the spec holds it, what it is called).
    let files = spec.artifacts.iter().map(|a| (a.clone(), "artifacts", a.dest.clone()));
    let guests = spec.guest_images.iter().filter_map(|g| Some((g.download_artifact()?, "guest_images", g.name.clone())));
    let to_pin: Vec<_> = files.chain(guests).filter(|(a, ..)| a.sha256.is_none() || update).collect();
    // Without a pin the fetch stores the file under whatever it hashes to.
    let unpinned: Vec<_> = to_pin.iter().map(|(a, ..)| crate::spec::ArtifactSpec { sha256: None, ..a.clone() }).collect();
    for ((a, array, what), (digest, _)) in to_pin.iter().zip(fetcher.artifacts(&unpinned)?) {
        if a.sha256.as_deref() != Some(digest.hex()) {
            pins.push(Pin { origin: a.origin.clone(), array, key: "sha256", value: digest.hex().to_owned(), what: what.clone() });
        }
    }
    let mut by_file: BTreeMap<PathBuf, Vec<&Pin>> = BTreeMap::new();
    for p in &pins {
        by_file.entry(p.origin.file.clone()).or_default().push(p);
    }
    for (file, file_pins) in by_file {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let edited = apply(&text, &file_pins).with_context(|| format!("editing {}", file.display()))?;
        ciab_core::atomic::write_atomic(&file, edited.as_bytes())?;
    }
    Ok(pins)
}

/// `text` with each pin written into its entry.
pub fn apply(text: &str, pins: &[&Pin]) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    for pin in pins {
        let mut item = doc.as_item_mut();
        for part in pin.array.split('.') {
            item = item.get_mut(part).with_context(|| format!("no [{}] in the file", pin.array))?;
        }
        let i = pin.origin.index;
        let missing = || format!("{}[{i}] ({}) is gone from the file", pin.array, pin.what);
        if let Some(tables) = item.as_array_of_tables_mut() {
            let table = tables.get_mut(i).with_context(missing)?;
            table[pin.key] = toml_edit::value(pin.value.clone());
        } else if let Some(array) = item.as_array_mut() {
            let inline = array.get_mut(i).and_then(|v| v.as_inline_table_mut()).with_context(missing)?;
            inline.insert(pin.key, pin.value.clone().into());
        } else {
            bail!("{} is neither an array of tables nor an array", pin.array);
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(array: &'static str, index: usize, key: &'static str, value: &str) -> Pin {
        Pin { origin: Origin { file: "x.toml".into(), index }, array, key, value: value.into(), what: "x".into() }
    }

    #[test]
    fn writes_pins_and_keeps_comments() {
        let text = "# top comment\n[[registry.images]]\nref = \"registry.k8s.io/pause:3.10\"  # the pause image\n\n[[registry.images]]\nref = \"docker.io/library/busybox:1\"\ndigest = \"sha256:old\"\n\n[[artifacts]]\nurl = \"https://example.invalid/f\"\ndest = \"kaas/f\"\n";
        let a = pin("registry.images", 0, "digest", "sha256:aaa");
        let b = pin("registry.images", 1, "digest", "sha256:bbb");
        let c = pin("artifacts", 0, "sha256", "ccc");
        let out = apply(text, &[&a, &b, &c]).unwrap();
        assert!(out.contains("# top comment") && out.contains("# the pause image"), "{out}");
        let doc: toml::Value = toml::from_str(&out).unwrap();
        let images = doc["registry"]["images"].as_array().unwrap();
        assert_eq!(images[0]["digest"].as_str(), Some("sha256:aaa"));
        assert_eq!(images[1]["digest"].as_str(), Some("sha256:bbb"));
        assert_eq!(doc["artifacts"][0]["sha256"].as_str(), Some("ccc"));
    }

    #[test]
    fn inline_arrays_and_missing_entries() {
        let text = "[registry]\nimages = [ { ref = \"quay.io/a/b:1\" } ]\n";
        let out = apply(text, &[&pin("registry.images", 0, "digest", "sha256:x")]).unwrap();
        assert!(out.contains("digest = \"sha256:x\""), "{out}");
        let err = apply(text, &[&pin("registry.images", 3, "digest", "sha256:x")]).unwrap_err().to_string();
        assert!(err.contains("registry.images[3] (x) is gone"), "{err}");
    }
}
