//! Human-readable sizes and tables for command output.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

/// "1.5 GiB" style, binary units.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// A quota: "unlimited" for 0.
pub fn quota_bytes(value: u64) -> String {
    if value == 0 { "unlimited".into() } else { bytes(value) }
}

pub fn quota_count(value: u64) -> String {
    if value == 0 {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// Parses "10G", "512MiB", "1.5TB", "4096": binary units (K, M, G, T = powers of 1024),
/// because that is what storage quotas are counted in.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| format!("invalid size {text:?}: {e} (examples: 10G, 512MiB, 4096)"))
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert!(parse_size("ten").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
