//! `sha256:<hex>` content digests.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A sha256 content digest. Other algorithms are refused: every registry
/// ciab talks to serves sha256, and the storage layout is keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a digest: write sha256:<64 lowercase hex digits>")]
pub struct DigestError(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| DigestError(s.to_owned()))?;
        Self::from_hex(hex).ok_or_else(|| DigestError(s.to_owned()))
    }

    /// From bare lowercase hex (as in `blobs/sha256/<hex>` paths).
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| Digest { hex: hex.to_owned() })
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub fn from_hasher(h: Sha256) -> Digest {
        Digest { hex: hex::encode(h.finalize()) }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for progress lines.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_lowercase() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::parse(&d.to_string()), Ok(d.clone()));
        assert!(Digest::parse(&d.to_string().to_uppercase()).is_err());
        assert!(Digest::parse(&format!("sha512:{}", d.hex())).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        let err = Digest::parse("latest").unwrap_err().to_string();
        assert!(err.contains("\"latest\" is not a digest"), "{err}");
    }
}
