//! The short form of the fault-injection run (`shoal-bench faults`), in CI: a few dozen
//! faults of every kind against a cluster in network namespaces, and nothing acknowledged
//! may be lost. The long form (1,000+ faults) is a bench command; see bench/README.md.

use std::process::Command;

#[test]
fn nothing_acknowledged_is_lost_under_random_faults() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the fault-injection run needs root (network namespaces, FUSE mounts)");
    }
    let shoal = std::path::PathBuf::from(env!("CARGO_BIN_EXE_shoal-bench")).with_file_name("shoal");
    assert!(shoal.is_file(), "build the shoal binary first: {}", shoal.display());
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-bench"))
        .args(["faults", "--faults", "30", "--no-report"])
        .env("SHOAL_BIN", &shoal)
        .output()
        .expect("shoal-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout
        .lines()
        .find_map(|line| line.strip_prefix("FAULTS-SUMMARY "))
        .unwrap_or_else(|| panic!("no summary printed ({}):\n{stdout}\n{stderr}", output.status));
    let summary: serde_json::Value = serde_json::from_str(summary).expect("the summary is JSON");
    println!("{summary:#}");
    assert!(output.status.success(), "the run failed:\n{stdout}\n{stderr}");
    assert!(summary["faults"].as_u64().unwrap() >= 30, "{summary}");
    assert!(
        summary["writes_acknowledged"].as_u64().unwrap() > 0,
        "the writers made progress: {summary}"
    );
    assert!(summary["bytes_checked"].as_u64().unwrap() > 0, "{summary}");
    for zero in ["lost_bytes", "wrong_bytes", "stray_bytes"] {
        assert_eq!(summary[zero].as_u64(), Some(0), "{zero}: {summary}");
    }
    assert_eq!(
        summary["replicas_differing"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    assert_eq!(
        summary["unexpected_errors"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
}
