//! Which Debian mirror the rootfs comes from.
//!
//! Order: the spec's `debian.mirror`/`debian.security_mirror`; else the host's
//! apt sources (deb822 `*.sources` and one-line `sources.list`), so a build
//! uses whatever mirror or proxy the machine is set up with; else mmdebstrap's
//! own default. The resolved list always has the suite, `<suite>-updates` and
//! `<suite>-security`.

use anyhow::{bail, Result};
use std::path::Path;

/// The apt sources a rootfs is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub mirror: String,
    pub security_mirror: String,
}

impl Sources {
    /// One-line apt source entries for `suite`.
    pub fn lines(&self, suite: &str, components: &[String]) -> Vec<String> {
        let comps = components.join(" ");
        vec![
            format!("deb {} {suite} {comps}", self.mirror),
            format!("deb {} {suite}-updates {comps}", self.mirror),
            format!("deb {} {suite}-security {comps}", self.security_mirror),
        ]
    }
}

/// A `deb` entry found in an apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    uri: String,
    suite: String,
}

/// Resolves the mirrors: spec values win, then the host's apt configuration.
pub fn resolve(spec_mirror: Option<&str>, spec_security: Option<&str>, apt_root: &Path) -> Result<Sources> {
    let entries = host_entries(apt_root);
    let host_main = entries.iter().find(|e| !e.suite.ends_with("-security")).map(|e| e.uri.clone());
    let host_sec = entries.iter().find(|e| e.suite.ends_with("-security")).map(|e| e.uri.clone());
    let mirror = match (spec_mirror, host_main) {
        (Some(m), _) => m.trim_end_matches('/').to_owned(),
        (None, Some(m)) => m.trim_end_matches('/').to_owned(),
        (None, None) => bail!(
            "no Debian mirror: the host's apt sources under {} name none; set `debian.mirror` (and `debian.security_mirror`) in the spec",
            apt_root.display()
        ),
    };
    let security_mirror = match (spec_security, host_sec) {
        (Some(m), _) => m.to_owned(),
        (None, Some(m)) => m,
        // The conventional layout: `<mirror>-security` beside `<mirror>`.
        (None, None) => format!("{mirror}-security"),
    };
    Ok(Sources { mirror: mirror.trim_end_matches('/').to_owned(), security_mirror: security_mirror.trim_end_matches('/').to_owned() })
}

fn host_entries(apt_root: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    if let Ok(text) = std::fs::read_to_string(apt_root.join("sources.list")) {
        entries.extend(parse_one_line(&text));
    }
    let mut files: Vec<_> = std::fs::read_dir(apt_root.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    // Only Debian archives: a third-party repo (nodesource, cloud SDKs) carries no Debian suites.
    entries.retain(|e| is_debian_suite(&e.suite));
    entries
}

fn is_debian_suite(suite: &str) -> bool {
    let base = suite.split('-').next().unwrap_or(suite);
    ["buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable", "oldstable"].contains(&base)
}

fn parse_one_line(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let mut words = line.split_whitespace();
            if words.next()? != "deb" {
                return None;
            }
            let mut uri = words.next()?;
            if uri.starts_with('[') {
                // Options: skip to the word that closes them.
                while !uri.ends_with(']') {
                    uri = words.next()?;
                }
                uri = words.next()?;
            }
            Some(Entry { uri: uri.to_owned(), suite: words.next()?.to_owned() })
        })
        .collect()
}

fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb"));
        if !enabled || !is_deb {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else { continue };
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push(Entry { uri: uri.to_owned(), suite: suite.to_owned() });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const DEB822: &str = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn host_deb822_sources_are_used() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sources.list.d")).unwrap();
        fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        fs::write(dir.path().join("sources.list.d/other.list"), "deb https://repo.example/node nodistro main\n").unwrap();
        let s = resolve(None, None, dir.path()).unwrap();
        assert_eq!(s, Sources { mirror: "http://mirror.example/debian".into(), security_mirror: "http://mirror.example/debian-security".into() });
        assert_eq!(
            s.lines("trixie", &["main".into()]),
            vec![
                "deb http://mirror.example/debian trixie main",
                "deb http://mirror.example/debian trixie-updates main",
                "deb http://mirror.example/debian-security trixie-security main",
            ]
        );
    }

    #[test]
    fn one_line_sources_with_options() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sources.list"), "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n").unwrap();
        let s = resolve(None, None, dir.path()).unwrap();
        assert_eq!(s.mirror, "http://m.example/debian");
        assert_eq!(s.security_mirror, "http://m.example/debian-security");
    }

    #[test]
    fn spec_overrides_and_missing_mirror_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(Some("http://a/debian"), Some("http://b/sec"), dir.path()).unwrap();
        assert_eq!(s.security_mirror, "http://b/sec");
        let err = resolve(None, None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("set `debian.mirror`"), "{err}");
    }
}
