//! The documentation's links: every relative link in README.md, the long
//! forms beside it and docs/*.md names a file that exists, and a heading of
//! it where the link names one.

use std::path::{Path, PathBuf};

fn pages() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages: Vec<PathBuf> = ["README.md", "RELIABILITY.md", "BENCHMARKS.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/ beside Cargo.toml");
    pages.extend(
        docs.map(|entry| entry.expect("docs/ is readable").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    pages
}

/// The page's text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// Targets of the page's inline links `[text](target)`.
fn links(text: &str) -> Vec<String> {
    prose(text)
        .iter()
        .flat_map(|line| line.split("](").skip(1))
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// The anchors GitHub gives the page's headings: lower case, punctuation
/// dropped, spaces as hyphens.
fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .iter()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_documentation_names_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page readable");
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("in a folder").join(file)
            };
            let found = if !linked.exists() {
                false
            } else if anchor.is_empty() {
                true
            } else {
                let text = std::fs::read_to_string(&linked).unwrap_or_default();
                anchors(&text).iter().any(|a| a == anchor)
            };
            if !found {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
