//! Layout check: no module of a workspace crate depends on itself through
//! other modules (STYLE.md, "dependencies in one direction ... and a check
//! that keeps it so").
//!
//! A cycle between modules means neither side can be read, tested or moved
//! on its own; they tend to grow unnoticed because the compiler accepts them.
//! This test parses each crate's sources with `syn` (no compilation, no
//! rustc internals), builds a graph with one node per source file and an edge
//! wherever a file names a path into another module, and fails on every
//! strongly connected component of two or more modules, naming the file and
//! line of one reference per edge so that the reader sees where to cut.
//!
//! What counts as a reference (and what does not) is decided in
//! [`References`]; the unit tests at the bottom pin those decisions on small
//! synthetic crates, so the check itself is known to be able to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::visit::{self, Visit};

/// A module path relative to its crate root: `[]` is the root, `["stages",
/// "disk"]` is `stages::disk`.
type ModPath = Vec<String>;

/// One module backed by a file of its own.
struct Module {
    path: ModPath,
    file: PathBuf,
    ast: syn::File,
}

/// The module graph of one crate root (a library, or one binary).
struct Graph {
    modules: Vec<Module>,
    /// `(from, to)` → line of the first reference in `from`'s file. A
    /// `BTreeMap` so that reports come out in the same order on every run.
    edges: BTreeMap<(usize, usize), usize>,
}

fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// Whether an attribute list makes the item exist only in test builds:
/// `#[cfg(test)]` or `#[cfg(all(test, ..))]`. `any(test, ..)` and
/// `not(test)` also exist in normal builds, so they do not count.
fn test_only(attrs: &[syn::Attribute]) -> bool {
    fn predicate_test_only(meta: &syn::Meta) -> bool {
        match meta {
            syn::Meta::Path(p) => p.is_ident("test"),
            syn::Meta::List(list) if list.path.is_ident("all") => list
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                )
                .map(|args| args.iter().any(predicate_test_only))
                .unwrap_or(false),
            _ => false,
        }
    }
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .map(|m| predicate_test_only(&m))
                .unwrap_or(false)
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Reads a source file; the real check reads the disk, the unit tests a map.
type Reader<'a> = &'a dyn Fn(&Path) -> Option<String>;

/// Loads the modules of the crate whose root file is `root`, following
/// `mod x;` declarations the way rustc does (`x.rs` or `x/mod.rs` beside a
/// `mod.rs`/crate root, `a/x.rs` beside a non-root file `a.rs`). Following
/// declarations rather than globbing `src/` keeps a `main.rs` next to a
/// `lib.rs` (two crates) apart and leaves out files declared only under
/// `#[cfg(test)]`.
fn load(root: &Path, read: Reader) -> Result<Vec<Module>, String> {
    fn declared(items: &[syn::Item], dir: &Path, path: &ModPath, out: &mut Vec<(ModPath, PathBuf)>) {
        for item in items {
            let syn::Item::Mod(m) = item else { continue };
            if test_only(&m.attrs) {
                continue;
            }
            let mut child = path.clone();
            child.push(m.ident.to_string());
            match &m.content {
                // An inline module is part of its file's node, but `mod y;`
                // inside it lives in the directory named after it.
                Some((_, items)) => declared(items, &dir.join(m.ident.to_string()), &child, out),
                None => out.push((child, dir.join(m.ident.to_string()))),
            }
        }
    }

    let mut modules = Vec::new();
    let mut queue = vec![(ModPath::new(), root.to_path_buf())];
    while let Some((path, file)) = queue.pop() {
        let text = read(&file).ok_or_else(|| format!("cannot read {}", file.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let parent = file.parent().unwrap_or(Path::new(""));
        // Children of `mod.rs` and of a crate root live beside it; children
        // of `a.rs` live in `a/`.
        let dir = if path.is_empty() || stem == "mod" { parent.to_path_buf() } else { parent.join(stem) };
        let mut children = Vec::new();
        declared(&ast.items, &dir, &path, &mut children);
        for (child, base) in children {
            let flat = base.with_extension("rs");
            let nested = base.join("mod.rs");
            let found = if read(&flat).is_some() { flat } else if read(&nested).is_some() { nested } else {
                return Err(format!("{}: module {} has no file", file.display(), display(&child)));
            };
            queue.push((child, found));
        }
        modules.push(Module { path, file, ast });
    }
    modules.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(modules)
}

/// Collects the references of one file to other modules.
struct References<'g> {
    index: &'g BTreeMap<ModPath, usize>,
    me: usize,
    /// Module path of the scope being visited: the file's module, plus the
    /// names of any inline modules around the current item.
    scope: ModPath,
    /// Names brought into scope that denote modules (`use crate::plan;`,
    /// `use super::{disk, Context}`), so that `plan::Plan` counts as a
    /// reference to `plan`. Collected for the whole file before visiting: a
    /// name means one thing across a file in practice, and an import
    /// further down still counts.
    aliases: BTreeMap<String, ModPath>,
    found: Vec<(usize, usize)>,
}

impl References<'_> {
    /// The absolute module path a path names, before trimming it to an
    /// existing module; `None` for paths outside the crate (`std::..`,
    /// `::serde::..`, a local item).
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let (first, rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => ModPath::new(),
            "self" => self.scope.clone(),
            "super" => {
                let mut base = self.scope.clone();
                base.pop()?;
                base
            }
            // A module is never a value or a type, so a lone name (`plan`,
            // `plan.profile`) is a local, not the module of that name.
            _ if rest.is_empty() => return None,
            name => {
                if let Some(target) = self.aliases.get(name) {
                    target.clone()
                } else {
                    // A child module of the current scope is in scope by
                    // its bare name (`disk::run()` in `stages/mod.rs`).
                    let mut child = self.scope.clone();
                    child.push(name.to_owned());
                    if !self.index.contains_key(&child) {
                        return None;
                    }
                    child
                }
            }
        };
        let mut rest = rest.iter().peekable();
        // `super::super::x`: every leading `super` climbs one more level.
        if first == "super" {
            while rest.peek().is_some_and(|s| *s == "super") {
                rest.next();
                base.pop()?;
            }
        }
        base.extend(rest.cloned());
        Some(base)
    }

    /// The module a path refers into: the longest prefix of its absolute
    /// path that is a module (`crate::stages::disk::SECTOR` → `stages::disk`).
    fn target(&self, segments: &[String]) -> Option<usize> {
        let absolute = self.absolute(segments)?;
        (0..=absolute.len()).rev().find_map(|n| self.index.get(&absolute[..n]).copied())
    }

    fn reference(&mut self, segments: &[String], span: Span) {
        if let Some(to) = self.target(segments) {
            if to != self.me {
                self.found.push((to, span.start().line));
            }
        }
    }

    /// Walks a `use` tree; `prefix` is the path above `tree`.
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, on_leaf: &mut dyn FnMut(&mut Self, &[String], Option<&syn::Ident>, Span)) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, on_leaf);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                // `use a::{self}` names `a` itself (and imports it as `a`).
                if n.ident == "self" {
                    on_leaf(self, prefix, None, n.ident.span());
                } else {
                    let mut path = prefix.clone();
                    path.push(n.ident.to_string());
                    on_leaf(self, &path, Some(&n.ident), n.ident.span());
                }
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                if r.ident != "self" {
                    path.push(r.ident.to_string());
                }
                on_leaf(self, &path, Some(&r.rename), r.ident.span());
            }
            syn::UseTree::Glob(g) => on_leaf(self, prefix, None, g.star_token.spans[0]),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree, on_leaf);
                }
            }
        }
    }

    /// Finds paths inside macro arguments (`format!("{}", crate::x::f())`,
    /// `vec![super::Step]`), which `syn` leaves as raw tokens.
    fn macro_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let is_colons = |i: usize| {
            matches!((tokens.get(i), tokens.get(i + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.macro_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(start)
                    // Only the first segment of a path, and not `$crate`
                    // (a `macro_rules!` body: resolved where it expands).
                    if !(i >= 2 && is_colons(i - 2))
                        && !(i >= 1 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '$'))
                        && is_colons(i + 1) =>
                {
                    let mut segments = vec![start.to_string()];
                    let mut j = i + 1;
                    while is_colons(j) {
                        match tokens.get(j + 2) {
                            Some(TokenTree::Ident(next)) => segments.push(next.to_string()),
                            _ => break,
                        }
                        j += 3;
                    }
                    self.reference(&segments, start.span());
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for References<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        // Test code may reach anywhere (fixtures, helpers of other modules);
        // it is not part of the dependency structure being checked.
        if !test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // `mod x;` only declares: the parent owning a child is the tree's
        // shape, not a dependency. An inline module's body is visited with
        // its name in scope so that its `super::` climbs to the file.
        if let Some((_, items)) = &item.content {
            self.scope.push(item.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.scope.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree, &mut |me, path, _, span| me.reference(path, span));
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // `::serde::..` is an external crate by construction.
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first() {
                let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
                self.reference(&segments, first.ident.span());
            }
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.macro_tokens(mac.tokens.clone());
    }

    // `pub(in crate::a)` limits who may see an item; it uses nothing.
    fn visit_vis_restricted(&mut self, _: &'ast syn::VisRestricted) {}
}

/// Collects the module names a file imports (`use crate::plan;`, `use
/// super::{self as parent, disk}`), outside test code.
struct Imports<'r, 'g> {
    refs: &'r mut References<'g>,
}

impl<'ast> Visit<'ast> for Imports<'_, '_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if let Some((_, items)) = &item.content {
            self.refs.scope.push(item.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.refs.scope.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut found = Vec::new();
        self.refs.use_tree(&mut Vec::new(), &item.tree, &mut |me, path, alias, _| {
            // Only a path that names a module exactly makes its last name
            // (or its rename) a module alias; `use crate::plan::Plan` does not.
            let (Some(absolute), Some(name)) = (me.absolute(path), alias.map(|a| a.to_string()).or_else(|| path.last().cloned())) else {
                return;
            };
            if me.index.contains_key(&absolute) && name != "_" {
                found.push((name, absolute));
            }
        });
        self.refs.aliases.extend(found);
    }
}

impl Graph {
    fn build(modules: Vec<Module>) -> Graph {
        let index: BTreeMap<ModPath, usize> = modules.iter().enumerate().map(|(i, m)| (m.path.clone(), i)).collect();
        let mut edges = BTreeMap::new();
        for (me, module) in modules.iter().enumerate() {
            let mut refs = References { index: &index, me, scope: module.path.clone(), aliases: BTreeMap::new(), found: Vec::new() };
            Imports { refs: &mut refs }.visit_file(&module.ast);
            refs.visit_file(&module.ast);
            for (to, line) in refs.found {
                let first: &mut usize = edges.entry((me, to)).or_insert(line);
                *first = (*first).min(line);
            }
        }
        Graph { modules, edges }
    }

    /// Strongly connected components of two or more modules (Tarjan).
    fn cycles(&self) -> Vec<Vec<usize>> {
        struct Tarjan<'a> {
            succ: Vec<Vec<usize>>,
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            stack: Vec<usize>,
            on_stack: Vec<bool>,
            next: usize,
            out: &'a mut Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                self.index[v] = Some(self.next);
                self.low[v] = self.next;
                self.next += 1;
                self.stack.push(v);
                self.on_stack[v] = true;
                for w in self.succ[v].clone() {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                        Some(_) => {}
                    }
                }
                if Some(self.low[v]) == self.index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if component.len() >= 2 {
                        component.sort_unstable();
                        self.out.push(component);
                    }
                }
            }
        }
        let n = self.modules.len();
        let mut succ = vec![Vec::new(); n];
        for &(from, to) in self.edges.keys() {
            succ[from].push(to);
        }
        let mut out = Vec::new();
        let mut t = Tarjan { succ, index: vec![None; n], low: vec![0; n], stack: Vec::new(), on_stack: vec![false; n], next: 0, out: &mut out };
        for v in 0..n {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        out.sort();
        out
    }

    /// One paragraph per cycle: its modules, then every edge between them
    /// with the file and line of one reference.
    fn report(&self, relative_to: &Path) -> Vec<String> {
        self.cycles()
            .iter()
            .map(|component| {
                let members: BTreeSet<usize> = component.iter().copied().collect();
                let names: Vec<String> = component.iter().map(|&m| display(&self.modules[m].path)).collect();
                let mut text = format!("cycle of {} modules: {}\n", component.len(), names.join(", "));
                for (&(from, to), line) in &self.edges {
                    if members.contains(&from) && members.contains(&to) {
                        let file = &self.modules[from].file;
                        let file = file.strip_prefix(relative_to).unwrap_or(file);
                        text += &format!(
                            "    {} -> {}  ({}:{line})\n",
                            display(&self.modules[from].path),
                            display(&self.modules[to].path),
                            file.display()
                        );
                    }
                }
                text
            })
            .collect()
    }
}

/// The crate roots of the workspace, from `cargo metadata`, so that a crate
/// or binary added later is checked without editing this test: each
/// library and binary target is its own graph (a binary is a separate crate
/// that reaches the library only through its public name, never `crate::`).
fn crate_roots() -> (PathBuf, Vec<(String, PathBuf)>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let workspace = PathBuf::from(metadata["workspace_root"].as_str().expect("workspace_root"));
    let mut roots = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let src = Path::new(package["manifest_path"].as_str().expect("manifest_path")).with_file_name("src");
        for target in package["targets"].as_array().expect("targets") {
            let kinds: Vec<&str> = target["kind"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
            let root = PathBuf::from(target["src_path"].as_str().expect("src_path"));
            // Tests, benches, examples and build scripts are not under src/.
            if root.starts_with(&src) && kinds.iter().any(|k| matches!(*k, "lib" | "rlib" | "bin" | "proc-macro")) {
                roots.push((format!("{} ({})", package["name"].as_str().unwrap_or("?"), target["name"].as_str().unwrap_or("?")), root));
            }
        }
    }
    roots.sort();
    (workspace, roots)
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let (workspace, roots) = crate_roots();
    assert!(!roots.is_empty(), "cargo metadata listed no crate roots");
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut failures = Vec::new();
    for (name, root) in &roots {
        let modules = load(root, &read).unwrap_or_else(|e| panic!("{name}: {e}"));
        for cycle in Graph::build(modules).report(&workspace) {
            failures.push(format!("{name}: {cycle}"));
        }
    }
    assert!(
        failures.is_empty(),
        "module import cycles (a module reaches itself through the others; cut one edge per cycle):\n\n{}",
        failures.join("\n")
    );
}

/// Unit tests of the graph code on synthetic crates held in memory.
mod graph {
    use super::*;

    /// Builds a crate from `(path under src/, source)` pairs, with
    /// `lib.rs` as its root, and returns its cycles as module names.
    fn cycles(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        let files: BTreeMap<PathBuf, String> = files.iter().map(|(p, s)| (Path::new("src").join(p), s.to_string())).collect();
        let read = |p: &Path| files.get(p).cloned();
        let graph = Graph::build(load(Path::new("src/lib.rs"), &read).expect("synthetic crate"));
        graph.cycles().iter().map(|c| c.iter().map(|&m| display(&graph.modules[m].path)).collect()).collect()
    }

    fn edges(files: &[(&str, &str)]) -> Vec<(String, String, usize)> {
        let files: BTreeMap<PathBuf, String> = files.iter().map(|(p, s)| (Path::new("src").join(p), s.to_string())).collect();
        let read = |p: &Path| files.get(p).cloned();
        let graph = Graph::build(load(Path::new("src/lib.rs"), &read).expect("synthetic crate"));
        graph
            .edges
            .iter()
            .map(|(&(f, t), &line)| (display(&graph.modules[f].path), display(&graph.modules[t].path), line))
            .collect()
    }

    #[test]
    fn two_modules_using_each_other_are_a_cycle() {
        let found = cycles(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            ("b.rs", "pub struct B;\n\npub fn f() -> crate::a::A { crate::a::A }\n"),
        ]);
        assert_eq!(found, vec![vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn the_report_names_each_edge_with_file_and_line() {
        let files: BTreeMap<PathBuf, String> = [
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
            ("src/b.rs", "pub struct B;\n\npub fn f() -> crate::a::A { crate::a::A }\n"),
        ]
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
        let read = |p: &Path| files.get(p).cloned();
        let report = Graph::build(load(Path::new("src/lib.rs"), &read).expect("synthetic crate")).report(Path::new(""));
        assert_eq!(report, vec!["cycle of 2 modules: a, b\n    a -> b  (src/a.rs:1)\n    b -> a  (src/b.rs:3)\n".to_owned()]);
    }

    #[test]
    fn a_parent_declaring_a_child_that_uses_super_is_no_cycle() {
        let src = [
            ("lib.rs", "pub mod stages;\n"),
            ("stages/mod.rs", "pub mod disk;\npub struct Context;\n"),
            ("stages/disk.rs", "use super::Context;\npub fn run(_: &Context) {}\n"),
        ];
        assert_eq!(cycles(&src), Vec::<Vec<String>>::new());
        assert_eq!(edges(&src), vec![("stages::disk".to_owned(), "stages".to_owned(), 1)]);
    }

    #[test]
    fn a_parent_calling_its_child_that_uses_super_is_a_cycle() {
        // Calling into the child (by its bare name) is a use, not a
        // declaration; with the child's `super::Context` the two depend on
        // each other.
        let found = cycles(&[
            ("lib.rs", "pub mod stages;\n"),
            ("stages/mod.rs", "pub mod disk;\npub struct Context;\npub fn all(c: &Context) { disk::run(c) }\n"),
            ("stages/disk.rs", "use super::Context;\npub fn run(_: &Context) {}\n"),
        ]);
        assert_eq!(found, vec![vec!["stages".to_owned(), "stages::disk".to_owned()]]);
    }

    #[test]
    fn test_only_back_references_are_ignored() {
        let found = cycles(&[
            ("lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod fixtures;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            (
                "b.rs",
                "pub struct B;\n#[cfg(test)]\nfn helper() -> crate::a::A { crate::a::A }\n\
                 #[cfg(all(test, unix))]\nmod tests { use crate::a::A; }\n",
            ),
            // Declared only for tests: not part of the crate at all.
            ("fixtures.rs", "use crate::a::A;\n"),
        ]);
        assert_eq!(found, Vec::<Vec<String>>::new());
    }

    #[test]
    fn super_super_climbs_two_levels_and_resolves_to_the_longest_module_prefix() {
        let found = edges(&[
            ("lib.rs", "pub mod stages;\npub mod spec;\n"),
            ("spec.rs", "pub struct Spec;\n"),
            ("stages/mod.rs", "pub mod boot;\npub struct Context;\n"),
            ("stages/boot/mod.rs", "pub mod grub;\n"),
            (
                "stages/boot/grub.rs",
                "use super::super::Context;\n\
                 fn f(_: &super::super::super::spec::Spec) {}\n\
                 const N: usize = crate::stages::boot::grub::X + self::X;\nconst X: usize = 1;\n",
            ),
        ]);
        assert_eq!(
            found,
            vec![
                ("stages::boot::grub".to_owned(), "spec".to_owned(), 2),
                ("stages::boot::grub".to_owned(), "stages".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn groups_macros_and_module_aliases_are_references() {
        let found = edges(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
            ("a.rs", "use super::{b, c::C};\nfn f() { let _ = b::X; }\nfn g() { println!(\"{}\", crate::d::Y); }\n"),
            ("b.rs", "pub const X: u8 = 0;\n"),
            ("c.rs", "pub struct C;\n"),
            ("d.rs", "pub const Y: u8 = 0;\n"),
        ]);
        assert_eq!(
            found,
            vec![("a".to_owned(), "b".to_owned(), 1), ("a".to_owned(), "c".to_owned(), 1), ("a".to_owned(), "d".to_owned(), 3)]
        );
    }
}
