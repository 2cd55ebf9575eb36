//! The module graph runs with the pipeline: `src/lib.rs` declares the
//! modules bottom-up, and a module may use only those declared before it.
//! Every `crate::<module>` path in `src/**/*.rs` (in `use` lines and inline)
//! is checked, so an upward import, and with it any cycle, fails here by name.
//! In-file unit tests (`#[cfg(test)] mod tests`) may use any module: the
//! token's tests talk to the demo's HubSpot simulator.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in the order `lib.rs` declares them.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    lib.lines()
        .filter_map(|line| {
            let declared = line.trim().strip_prefix("pub mod ")?;
            Some(declared.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn production_code(text: &str) -> String {
    let code = text
        .find("\nmod tests {")
        .map_or(text, |tests| &text[..tests]);
    code.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules that `crate::` paths in `code` name: `crate::a::x`
/// names `a`; `crate::{a::x, b}` names `a` and `b`.
fn named_modules(code: &str) -> Vec<String> {
    let mut named = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        let Some(group) = rest.strip_prefix('{') else {
            named.push(ident_at(rest).to_owned());
            continue;
        };
        // The first name of each item at the group's own depth.
        let (mut depth, mut item_start) = (0, true);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                    named.push(ident_at(&group[i..]).to_owned());
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    named
}

/// The top-level module a file under `src/` belongs to; `None` for the
/// crate root and the binary.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

#[test]
fn no_module_uses_one_declared_after_it_in_lib_rs() {
    let layers = layers();
    assert!(layers.len() > 10, "lib.rs declares the modules: {layers:?}");
    let rank = |module: &str| layers.iter().position(|m| m == module);
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let own = rank(&module).unwrap_or_else(|| panic!("{module} is not declared in lib.rs"));
        let code = production_code(&std::fs::read_to_string(file).expect("readable"));
        for used in named_modules(&code) {
            if used == module {
                continue;
            }
            let used_rank =
                rank(&used).unwrap_or_else(|| panic!("{}: crate::{used}?", file.display()));
            if used_rank > own {
                upward.push(format!(
                    "{} ({module}) uses crate::{used}, declared after it",
                    file.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_import_scanner_finds_grouped_nested_and_inline_paths() {
    let code =
        "use crate::{\n    a::{X, y::Z},\n    b,\n};\nfn f() { crate::c::now(); $crate::d::e }";
    assert_eq!(named_modules(code), ["a", "b", "c"]);
    assert_eq!(
        production_code(
            "use crate::a; // crate::b\n/// [`crate::c`]\n#[cfg(test)]\nmod tests { use crate::d; }"
        ),
        "use crate::a; \n\n#[cfg(test)]"
    );
}
