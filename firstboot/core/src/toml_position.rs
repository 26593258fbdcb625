//! Where things are in a TOML text, for errors that name file:line:column.
//!
//! The image spec (builder) and site.toml (first boot) both report a bad
//! value at its line and column, by dotted key (`network.dns[1]`). Both read
//! positions through `toml_edit`'s public span API (the parser `toml` itself
//! uses, so the spans agree with `toml::Spanned` and `toml::de::Error::span`)
//! rather than through `serde_spanned`'s private field names, which change
//! with toml's version.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

/// 1-based line and column (in characters) of byte offset `at` in `text`;
/// an offset past the end means the end.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    // An offset inside a multi-byte character counts as that character.
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Every key of a TOML text by dotted path (`image.name`, `network.dns[1]`,
/// `registry.images[0].reference`), with the 1-based line and column where
/// its value starts when the parser knows it. It does not know it for tables
/// made by dotted keys (`a.b = 1` makes table `a` with no place of its own).
#[derive(Debug, Clone, Default)]
pub struct TomlPositions {
    keys: BTreeMap<String, Option<(usize, usize)>>,
}

impl TomlPositions {
    /// Reads `text`. Invalid TOML yields no keys: whoever parses it for real
    /// reports that error, with `toml::de::Error::span` and [`line_col`].
    pub fn new(text: &str) -> TomlPositions {
        let mut keys = BTreeMap::new();
        if let Ok(doc) = ImDocument::parse(text) {
            for (key, item) in doc.as_table().iter() {
                walk_item(text, key.to_owned(), item, &mut keys);
            }
        }
        TomlPositions { keys }
    }

    /// Where the value at `key` starts, if the text has it and its place is known.
    pub fn value(&self, key: &str) -> Option<(usize, usize)> {
        self.keys.get(key).copied().flatten()
    }

    /// Whether the text has `key`, positioned or not.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }
}

fn record(text: &str, key: &str, span: Option<Range<usize>>, keys: &mut BTreeMap<String, Option<(usize, usize)>>) {
    keys.insert(key.to_owned(), span.map(|s| line_col(text, s.start)));
}

fn walk_item(text: &str, key: String, item: &Item, keys: &mut BTreeMap<String, Option<(usize, usize)>>) {
    record(text, &key, item.span(), keys);
    match item {
        Item::Table(table) => {
            for (k, child) in table.iter() {
                walk_item(text, format!("{key}.{k}"), child, keys);
            }
        }
        Item::ArrayOfTables(tables) => {
            for (i, table) in tables.iter().enumerate() {
                let at = format!("{key}[{i}]");
                record(text, &at, table.span(), keys);
                for (k, child) in table.iter() {
                    walk_item(text, format!("{at}.{k}"), child, keys);
                }
            }
        }
        Item::Value(value) => walk_value(text, &key, value, keys),
        Item::None => {}
    }
}

/// The insides of an inline value; the value itself is recorded by the caller.
fn walk_value(text: &str, key: &str, value: &Value, keys: &mut BTreeMap<String, Option<(usize, usize)>>) {
    match value {
        Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                let at = format!("{key}[{i}]");
                record(text, &at, v.span(), keys);
                walk_value(text, &at, v, keys);
            }
        }
        Value::InlineTable(table) => {
            for (k, v) in table.iter() {
                let at = format!("{key}.{k}");
                record(text, &at, v.span(), keys);
                walk_value(text, &at, v, keys);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let text = "a = 1\nb = \"é\" # x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // After the two-byte é: column 7, not 8.
        assert_eq!(line_col(text, text.find(" #").unwrap()), (2, 8));
        assert_eq!(line_col(text, 1000), (3, 1));
        // Inside the é: the é itself.
        assert_eq!(line_col(text, text.find('é').unwrap() + 1), (2, 6));
    }

    #[test]
    fn values_are_found_by_dotted_key_with_array_indices() {
        let text = "\
hostname = \"box\"
[network]
dns = [\"192.0.2.1\", \"192.0.2.2\"]
gateway = { v4 = \"192.0.2.254\" }
[[images]]
name = \"a\"
[[images]]
name = \"b\"
";
        let p = TomlPositions::new(text);
        assert_eq!(p.value("hostname"), Some((1, 12)));
        assert_eq!(p.value("network"), Some((2, 1)));
        assert_eq!(p.value("network.dns"), Some((3, 7)));
        assert_eq!(p.value("network.dns[1]"), Some((3, 21)));
        assert_eq!(p.value("network.gateway.v4"), Some((4, 18)));
        assert_eq!(p.value("images[1].name"), Some((8, 8)));
        assert_eq!(p.value("network.nope"), None);
        assert!(!p.contains("network.nope"));
    }

    #[test]
    fn dotted_key_tables_exist_without_a_place() {
        let p = TomlPositions::new("network.mode = \"dhcp\"\n");
        assert!(p.contains("network"));
        assert_eq!(p.value("network"), None);
        assert_eq!(p.value("network.mode"), Some((1, 16)));
    }

    #[test]
    fn invalid_toml_has_no_keys() {
        let p = TomlPositions::new("[network\nmode = 1\n");
        assert!(!p.contains("network"));
        assert!(!p.contains("mode"));
    }
}
