//! `os/arch[/variant]` platforms, for choosing entries of a multi-platform index.

use serde::Deserialize;
use std::fmt;

/// What an image spec carries when it names no platform.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    #[serde(rename = "architecture")]
    pub arch: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return None;
        }
        Some(Platform { os: parts[0].into(), arch: parts[1].into(), variant: parts.get(2).map(|v| v.to_string()) })
    }

    /// Whether an index entry for `entry` serves this platform. A platform
    /// without a variant takes any variant (`linux/arm64` matches `linux/arm64/v8`).
    pub fn matches(&self, entry: &Platform) -> bool {
        self.os == entry.os && self.arch == entry.arch && (self.variant.is_none() || self.variant == entry.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(amd.to_string(), "linux/amd64");
        let arm = Platform::parse("linux/arm64").unwrap();
        let arm_v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.matches(&arm_v8));
        assert!(!arm_v8.matches(&arm));
        assert!(!amd.matches(&arm));
        for bad in ["linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_none(), "{bad}");
        }
    }
}
