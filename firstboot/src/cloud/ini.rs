//! The INI dialect of oslo.config (and of MariaDB's `.cnf` files): sections
//! in the order given, `key = value` lines in the order given. Configuration
//! is rendered whole from the plan and the site, never patched into the
//! package's sample file, so a rerun writes the same bytes and a test can
//! compare every line.

use std::fmt::Write as _;

/// One configuration file, built up section by section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    /// A comment block at the top, one `# ` line each.
    header: Vec<String>,
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Ini {
    /// An empty file whose first lines say who wrote it and why.
    pub fn new(header: &str) -> Ini {
        Ini { header: header.lines().map(str::to_owned).collect(), sections: Vec::new() }
    }

    /// Sets `key` in `section` (created at the end if new); a key set twice
    /// keeps its first position and its last value.
    pub fn set(&mut self, section: &str, key: &str, value: impl ToString) -> &mut Ini {
        let value = value.to_string();
        let idx = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let entries = &mut self.sections[idx].1;
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key.to_owned(), value)),
        }
        self
    }

    /// The value of `key` in `section`, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections.iter().find(|(s, _)| s == section)?.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "# {line}");
        }
        for (i, (section, entries)) in self.sections.iter().enumerate() {
            if i > 0 || !self.header.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "[{section}]");
            for (k, v) in entries {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sections_and_keys_in_order_with_last_value_winning() {
        let mut ini = Ini::new("Written by ciab.");
        ini.set("DEFAULT", "debug", false).set("database", "connection", "mysql+pymysql://k@localhost/k");
        ini.set("DEFAULT", "log_dir", "/var/log/k").set("DEFAULT", "debug", true);
        assert_eq!(
            ini.render(),
            "# Written by ciab.\n\n[DEFAULT]\ndebug = true\nlog_dir = /var/log/k\n\n[database]\nconnection = mysql+pymysql://k@localhost/k\n"
        );
        assert_eq!(ini.get("database", "connection"), Some("mysql+pymysql://k@localhost/k"));
        assert_eq!(ini.get("database", "nothing"), None);
    }
}
