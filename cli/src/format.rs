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

pub use shoal_client::parse_size;

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
