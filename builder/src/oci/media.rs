//! Manifests and indexes as registries serve them: just the fields that
//! say which other manifests and blobs an image needs.

use super::digest::Digest;
use super::platform::Platform;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the fetcher asks registries for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A reference to content: what a manifest says about a blob or child manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
}

/// A manifest document, reduced to what it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A multi-platform index / manifest list.
    Index { children: Vec<Descriptor> },
    /// One image: its config and layers.
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    platform: Option<Platform>,
}

impl RawDescriptor {
    fn resolve(self) -> Result<Descriptor> {
        let digest = Digest::parse(&self.digest)?;
        let size = u64::try_from(self.size).with_context(|| format!("descriptor of {digest} has a negative size"))?;
        Ok(Descriptor { media_type: self.media_type.unwrap_or_default(), digest, size, platform: self.platform })
    }
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Document> {
        let raw: Raw = serde_json::from_slice(bytes).context("not a JSON image manifest")?;
        if raw.schema_version != Some(2) {
            bail!(
                "manifest schema version {:?} is not supported (Docker schema 1 images are deprecated; re-push the image with a current tool)",
                raw.schema_version
            );
        }
        match (raw.manifests, raw.config, raw.layers) {
            (Some(children), None, _) => Ok(Document::Index { children: children.into_iter().map(RawDescriptor::resolve).collect::<Result<_>>()? }),
            (None, Some(config), Some(layers)) => Ok(Document::Image {
                config: config.resolve()?,
                layers: layers.into_iter().map(RawDescriptor::resolve).collect::<Result<_>>()?,
            }),
            _ => bail!("manifest (mediaType {:?}) is neither an index nor an image manifest", raw.media_type.unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_index_and_image() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let Document::Index { children } = Document::parse(index.as_bytes()).unwrap() else { panic!("not an index") };
        assert_eq!(children.len(), 2);
        assert_eq!(children[0].platform.as_ref().unwrap().to_string(), "linux/arm64/v8");
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":5}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":7}}]}}"#,
            d('c'),
            d('e')
        );
        let Document::Image { config, layers } = Document::parse(image.as_bytes()).unwrap() else { panic!("not an image") };
        assert_eq!((config.size, layers[0].size), (5, 7));
    }

    #[test]
    fn refuses_schema1_and_junk() {
        let err = Document::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err().to_string();
        assert!(err.contains("schema version Some(1) is not supported"), "{err}");
        assert!(Document::parse(b"<html>").is_err());
        let bad = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":-1}},"layers":[]}}"#, d('a'));
        assert!(Document::parse(bad.as_bytes()).unwrap_err().to_string().contains("negative size"));
    }
}
