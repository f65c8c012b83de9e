//! Writing a benchmark's tables into `bench/RESULTS.md`, between markers that name the
//! benchmark, so a rerun replaces its own section and leaves the others alone.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `bench/RESULTS.md` of the checkout the command runs in (else of the one it was built
/// from): a binary built in another clone must not write there.
pub fn default_results_file() -> PathBuf {
    bench_dir().join("RESULTS.md")
}

/// `bench/` under the current directory if it is a Shoal checkout, else where this binary
/// was built from.
pub fn bench_dir() -> PathBuf {
    let here = Path::new("bench");
    if here.join("RESULTS.md").is_file() {
        return here.canonicalize().unwrap_or_else(|_| here.to_path_buf());
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `file` with
/// `body`; appends the marked section if the file has none yet.
pub fn replace_section(file: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin (written by shoal-bench; edits inside are lost) -->");
    let end = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let begin_prefix = format!("<!-- {name}:begin");
    let updated = match (text.find(&begin_prefix), text.find(&end)) {
        (Some(start), Some(stop)) if start < stop => {
            format!("{}{section}{}", &text[..start], &text[stop + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(file, updated).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_appended_once_and_then_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("RESULTS.md");
        std::fs::write(&file, "# Results\n\nbefore\n").unwrap();
        replace_section(&file, "demo", "first").unwrap();
        std::fs::write(&file, std::fs::read_to_string(&file).unwrap() + "\nafter\n").unwrap();
        replace_section(&file, "demo", "second").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# Results\n\nbefore\n"));
        assert!(text.contains("second") && !text.contains("first"));
        assert!(text.trim_end().ends_with("after"));
        assert_eq!(text.matches(":begin").count(), 1);
    }
}
