//! Image references as clients write them (`registry.k8s.io/pause:3.10`,
//! `busybox`, `ghcr.io/x/y@sha256:…`), normalized the way containerd does.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io` for Docker Hub (never `index.docker.io`).
    pub registry: String,
    /// `library/busybox` for Docker Hub's official images.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an image reference ({reason}): write registry/repository:tag, e.g. registry.k8s.io/pause:3.10")]
pub struct RefError {
    input: String,
    reason: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, RefError> {
        let err = |reason: String| RefError { input: s.to_owned(), reason };
        if s.trim() != s || s.is_empty() {
            return Err(err("empty or surrounded by spaces".into()));
        }
        let parsed: oci_client::Reference = s.parse().map_err(|e: oci_client::ParseError| err(e.to_string()))?;
        // Distribution's grammar: lowercase path components.
        if !parsed.repository().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)) {
            return Err(err(format!("repository {:?} must be lowercase letters, digits and . _ - /", parsed.repository())));
        }
        let digest = parsed.digest().map(str::to_owned);
        if let Some(d) = &digest {
            super::digest::Digest::parse(d).map_err(|e| err(e.to_string()))?;
        }
        // oci-spec invents `latest` only when neither tag nor digest is given.
        let tag = parsed.tag().map(str::to_owned).filter(|t| !(digest.is_some() && t == "latest" && !s.contains(":latest")));
        Ok(ImageRef { registry: parsed.registry().to_owned(), repository: parsed.repository().to_owned(), tag, digest })
    }

    /// `registry/repository`: the repository's path in the offline registry,
    /// so that images of different upstreams never share a name.
    pub fn repo_path(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository[:tag]`, without the digest.
    pub fn name_and_tag(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repo_path()),
            None => self.repo_path(),
        }
    }

    /// This reference pinned to `digest` (tag kept for readability).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef { digest: Some(digest.to_owned()), ..self.clone() }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name_and_tag())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("registry.k8s.io/pause:3.10").unwrap();
        assert_eq!((r.repo_path().as_str(), r.tag.as_deref()), ("registry.k8s.io/pause", Some("3.10")));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(d.as_str())));
        assert_eq!(r.to_string(), format!("ghcr.io/x/y@{d}"));
        let r = ImageRef::parse("127.0.0.1:5000/test/busybox:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", " busybox", "UPPER/case", "docker.io/UPPER/case", "x@sha256:123", "a//b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
