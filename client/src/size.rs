//! Sizes as people write them: "10G", "512MiB", "4Mi", "4096". One parser for every
//! command-line flag, mount option and CSI parameter that takes a size.

/// Parses a size in binary units (K, M, G, T = powers of 1024; "Ki", "Mi"… as Kubernetes
/// writes them, too), because that is what quotas and buffers are counted in.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    // Kubernetes quantities ("4Mi", "10Gi") end in "i" without the "B".
    let spelled = if trimmed.ends_with('i') && trimmed.len() > 1 {
        format!("{trimmed}B")
    } else {
        trimmed.to_string()
    };
    parse_size::Config::new()
        .with_binary()
        .parse_size(&spelled)
        .map_err(|e| format!("invalid size {text:?}: {e} (examples: 10G, 512MiB, 4Mi, 4096)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4Mi"), Ok(4 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
    }
}
