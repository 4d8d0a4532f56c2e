//! The module graph of every crate of the workspace has no cycle: a module that imports
//! another is never imported back by it, directly or around a loop. (Cargo already refuses
//! cycles between crates.) Imports are read from the sources: `crate::name` paths and
//! `use crate::{…}` lists, an item re-exported by the crate root counting as its defining
//! module. The crate root itself, which declares the modules and re-exports their items, is
//! not a node.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const CRATES: [&str; 9] = [
    "shared",
    "store",
    "api",
    "worker",
    "hub",
    "migration",
    "migrate",
    "bench",
    "testkit",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for the crate root's own files).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
}

/// `source` without its comments (doc links are not imports); a `//` inside a string cuts
/// the line short, which can only hide a reference, never invent one.
fn without_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names a file takes from `crate::`: the first segment of each `crate::a::b` path and
/// every name listed in a `crate::{…}` group (nested groups included).
fn crate_references(source: &str) -> BTreeSet<String> {
    let source = without_comments(source);
    let source = source.as_str();
    let mut names = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(index, _)| index);
            names.extend(identifiers(&group[..end]).map(str::to_owned));
        } else if let Some(first) = identifiers(rest).next() {
            names.insert(first.to_owned());
        }
    }
    names
}

/// `pub` items a source defines, by name.
fn public_items(source: &str) -> BTreeSet<String> {
    let mut items = BTreeSet::new();
    for line in source.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix("pub ") else {
            continue;
        };
        let mut words = identifiers(rest);
        let kind = words.next().unwrap_or_default();
        if matches!(
            kind,
            "struct" | "enum" | "fn" | "const" | "static" | "type" | "trait" | "async"
        ) {
            let name = if kind == "async" {
                words.nth(1)
            } else {
                words.next()
            };
            items.extend(name.map(str::to_owned));
        }
    }
    items
}

/// A cycle in `graph`, as the modules around it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The import graph between the top-level modules of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: Vec<(Option<String>, String)> = files
        .iter()
        .map(|file| (top_module(src, file), fs::read_to_string(file).unwrap()))
        .collect();
    let modules: BTreeSet<String> = sources.iter().filter_map(|(m, _)| m.clone()).collect();
    // which module defines each public item, for paths through the root's re-exports
    let mut defined_in: BTreeMap<String, String> = BTreeMap::new();
    for (module, source) in &sources {
        if let Some(module) = module {
            for item in public_items(source) {
                defined_in.entry(item).or_insert_with(|| module.clone());
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in &sources {
        let Some(module) = module else { continue };
        let edges = graph.entry(module.clone()).or_default();
        for name in crate_references(source) {
            let target = if modules.contains(&name) {
                Some(name)
            } else {
                defined_in.get(&name).cloned()
            };
            if let Some(target) = target.filter(|target| target != module) {
                edges.insert(target);
            }
        }
    }
    graph
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = workspace();
    for name in CRATES {
        let graph = module_graph(&root.join(name).join("src"));
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "crate {name}: modules import each other: {}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_check_finds_a_cycle_through_a_re_export() {
    let directory = std::env::temp_dir().join(format!("ih_modules_{}", std::process::id()));
    let src = directory.join("src");
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use a::Thing;\n").unwrap();
    fs::write(
        src.join("a.rs"),
        "use crate::b::helper;\npub struct Thing;\n",
    )
    .unwrap();
    fs::write(src.join("b.rs"), "mod inner;\npub fn helper() {}\n").unwrap();
    fs::write(src.join("b/inner.rs"), "use crate::{Thing};\n").unwrap();
    let cycle = find_cycle(&module_graph(&src));
    fs::remove_dir_all(&directory).unwrap();
    assert_eq!(
        cycle,
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
}
