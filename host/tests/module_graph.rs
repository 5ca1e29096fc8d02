//! No import circle between the modules of the host and the core: a module that uses another
//! never is used by it, directly or through others. Each file is a module; an edge is a
//! `crate::…`, `super::…` or `use <child>::…` path (in `use` lines or inline) outside its
//! test module. Circles make a module impossible to understand, test or move alone (the
//! planner is moving into the core crate), so a new one fails here, naming the modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every `.rs` file under `root` as its module path, test files left out.
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(root, &path, out);
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut module: Module = rel.iter().map(|p| p.to_string_lossy().into()).collect();
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        if path.extension().is_some_and(|e| e == "rs") && module.last().is_none_or(|m| m != "tests")
        {
            out.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The source before its test module, comments removed.
fn production(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    let lines = text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""));
    lines.collect::<Vec<_>>().join("\n")
}

/// `crate::a::{b, c::d}` → `crate::a::b`, `crate::a::c::d` (one level of braces).
fn expand(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(open) = rest.find("::{") {
        let start = rest[..open]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let Some(close) = rest[open..].find('}').map(|i| open + i) else {
            break;
        };
        let prefix = &rest[start..open];
        out.push_str(&rest[..start]);
        for item in rest[open + 3..close].split(',') {
            out.push_str(&format!(" {prefix}::{} ", item.trim()));
        }
        rest = &rest[close + 1..];
    }
    out + rest
}

/// The path words starting at each `crate::`/`super::` and each `use <word>::`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let words = |s: &str| -> Vec<String> {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(s.len());
        s[..end]
            .split("::")
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut found = Vec::new();
    for (i, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            found.push(words(&code[i..]));
        }
    }
    for line in code.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix("use ") {
            found.push(words(rest));
        }
    }
    found
}

/// The module a path of `from` lands in: the longest known prefix.
fn resolve(from: &Module, path: &[String], known: &BTreeMap<Module, String>) -> Option<Module> {
    let mut base = from.clone();
    let mut words = path.iter().peekable();
    match words.peek().map(|w| w.as_str()) {
        Some("crate") => {
            base.clear();
            words.next();
        }
        Some("super") => {
            while words.peek().is_some_and(|w| *w == "super") {
                base.pop();
                words.next();
            }
        }
        _ => {}
    }
    let full: Module = base.into_iter().chain(words.cloned()).collect();
    (1..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| known.contains_key(m))
}

fn edges(known: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    known
        .iter()
        .map(|(module, text)| {
            let code = expand(&production(text));
            let to = paths(&code)
                .iter()
                .filter_map(|p| resolve(module, p, known))
                .filter(|t| !module.starts_with(t))
                .collect();
            (module.clone(), to)
        })
        .collect()
}

/// A path from `from` back to `to`, if any.
fn route(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    from: &Module,
    to: &Module,
    seen: &mut BTreeSet<Module>,
) -> Option<Vec<Module>> {
    if from == to {
        return Some(vec![to.clone()]);
    }
    if !seen.insert(from.clone()) {
        return None;
    }
    for next in graph.get(from).into_iter().flatten() {
        if let Some(mut rest) = route(graph, next, to, seen) {
            rest.insert(0, from.clone());
            return Some(rest);
        }
    }
    None
}

fn circles(src: &Path) -> Vec<String> {
    let mut known = BTreeMap::new();
    modules(src, src, &mut known);
    let graph = edges(&known);
    let mut found = Vec::new();
    for (module, targets) in &graph {
        for target in targets {
            if let Some(back) = route(&graph, target, module, &mut BTreeSet::new()) {
                let names: Vec<String> = std::iter::once(module)
                    .chain(&back)
                    .map(|m| m.join("::"))
                    .collect();
                found.push(names.join(" → "));
            }
        }
    }
    found
}

#[test]
fn no_module_of_the_host_or_the_core_imports_in_a_circle() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [host.join("src"), host.join("core/src")] {
        if src.exists() {
            let found = circles(&src);
            assert!(
                found.is_empty(),
                "import circles in {}:\n{}",
                src.display(),
                found.join("\n")
            );
        }
    }
}

#[test]
fn a_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    write("a.rs", "use super::b::B;\n");
    write(
        "b.rs",
        "pub fn f() { crate::c::g() }\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    );
    write("c.rs", "use crate::{a::A, b};\n");
    let found = circles(dir.path());
    assert!(found.contains(&"a → b → c → a".to_string()), "{found:?}");
    write("c.rs", "// use crate::a;\n");
    assert!(circles(dir.path()).is_empty());
}
