//! The layer order of ARCHITECTURE.md holds: every `use crate::…` (and
//! every `crate::…` path) of a module names only modules of lower layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Module name → layer, from the list between `<!-- layers -->` markers.
fn layers() -> HashMap<String, usize> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let block = text.split("<!-- layers -->").nth(1).unwrap().split("<!-- /layers -->").next().unwrap();
    let mut layers = HashMap::new();
    for (layer, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        for module in line.split('`').skip(1).step_by(2) {
            layers.insert(module.to_string(), layer);
        }
    }
    layers
}

/// Every `.rs` file under `src/`, with the top-level module it belongs to.
fn modules() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            let top = relative.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            // Outside the order: the crate root, the binaries, whole-crate tests.
            (!["lib", "main", "bin", "tests"].contains(&top.as_str())).then_some((top, path))
        })
        .collect()
}

/// The modules named by `crate::<name>` in a file, by line.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap();
        for (at, _) in code.match_indices("crate::") {
            let name: String =
                code[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
        }
        // `use crate::{a, b}`
        if let Some(rest) = code.split("crate::{").nth(1) {
            for name in rest.split(['}', ',']).map(|n| n.trim().split("::").next().unwrap_or("").trim()) {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    found.push((number + 1, name.to_string()));
                }
            }
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layer_order() {
    let layers = layers();
    let mut violations = Vec::new();
    for (module, path) in modules() {
        let Some(&own) = layers.get(&module) else {
            violations.push(format!("{}: module `{module}` is not in ARCHITECTURE.md's layer list", path.display()));
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, imported) in imports(&text) {
            if imported == module {
                continue;
            }
            match layers.get(&imported) {
                Some(&layer) if layer < own => {}
                Some(&layer) => violations.push(format!(
                    "{}:{line}: `{module}` (layer {}) imports `{imported}` (layer {})",
                    path.display(),
                    own + 1,
                    layer + 1
                )),
                None => violations.push(format!("{}:{line}: `{imported}` is not in the layer list", path.display())),
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layer order:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_imports_in_every_form() {
    let found = imports("use crate::shard::{Conn, Shard};\nuse crate::{app, broker::Broker};\n  let x = crate::clock::now(); // crate::config\n");
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["shard", "app", "broker", "clock"]);
}
