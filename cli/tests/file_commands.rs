//! `shoal cp`, `shoal ls` and `shoal cat`, the scripting commands that need no mount, run as
//! a user runs them against a registry and three data services: copies both ways read back
//! identical, an existing file is replaced whole, and bad paths get a clear error.

use std::path::{Path, PathBuf};
use std::process::Output;

use shoal_testkit::ShoalCluster;

const MIB: usize = 1 << 20;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Deterministic, incompressible bytes (xorshift64*).
fn content(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(length);
    out
}

fn shoal(registry: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(binary())
        .args(args)
        .arg(format!("--registry={registry}"))
        .output()?)
}

fn succeeds(registry: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = shoal(registry, args)?;
    anyhow::ensure!(
        output.status.success(),
        "shoal {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The command fails, and its error message contains `expected`.
fn fails_saying(registry: &str, args: &[&str], expected: &str) -> anyhow::Result<()> {
    let output = shoal(registry, args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(!output.status.success(), "shoal {args:?} should fail");
    anyhow::ensure!(
        stderr.contains(expected),
        "shoal {args:?}: error should mention {expected:?}, got {stderr}"
    );
    Ok(())
}

fn same_file(a: &Path, expected: &[u8]) -> anyhow::Result<()> {
    let bytes = std::fs::read(a)?;
    anyhow::ensure!(
        bytes.len() == expected.len(),
        "{} holds {} bytes",
        a.display(),
        bytes.len()
    );
    anyhow::ensure!(bytes == expected, "{} differs from what was copied", a.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_ls_and_cat_move_files_both_ways_and_refuse_bad_paths() {
    let mut cluster = ShoalCluster::start(&binary(), 1, 3, &[]).await.expect("cluster starts");
    let scratch = tempfile::tempdir().expect("temp dir");
    let result = async {
        let registry = cluster.registry.registry_arg();
        let registry = registry.as_str();
        succeeds(registry, &["volume", "create", "files", "--replicas=3"])?;
        let local = scratch.path();
        let big = content(1, 40 * MIB + 12_345);
        let small = content(2, 70_000);
        std::fs::write(local.join("big.bin"), &big)?;
        std::fs::write(local.join("odd name é.txt"), &small)?;

        // Up: by full path, and into a directory (the volume's root) by the source's name.
        let said = succeeds(
            registry,
            &[
                "cp",
                &local.join("big.bin").display().to_string(),
                "shoal://files/big.bin",
            ],
        )?;
        anyhow::ensure!(said.contains("copied"), "cp says {said:?}");
        succeeds(
            registry,
            &[
                "cp",
                &local.join("odd name é.txt").display().to_string(),
                "shoal://files/",
            ],
        )?;
        let listing = succeeds(registry, &["ls", "shoal://files/"])?;
        anyhow::ensure!(
            listing
                .lines()
                .any(|l| l.contains(&big.len().to_string()) && l.ends_with(" big.bin")),
            "ls shows no big.bin of {} bytes:\n{listing}",
            big.len()
        );
        anyhow::ensure!(
            listing.lines().any(|l| l.ends_with(" odd name é.txt")),
            "ls misses the odd name:\n{listing}"
        );

        // Down: into a directory, and to a named file; both identical to what went up.
        let back = local.join("back");
        std::fs::create_dir(&back)?;
        succeeds(registry, &["cp", "shoal://files/big.bin", &back.display().to_string()])?;
        same_file(&back.join("big.bin"), &big)?;
        let named = back.join("small-copy");
        succeeds(
            registry,
            &["cp", "shoal://files/odd name é.txt", &named.display().to_string()],
        )?;
        same_file(&named, &small)?;
        let cat = shoal(registry, &["cat", "shoal://files/odd name é.txt"])?;
        anyhow::ensure!(cat.status.success() && cat.stdout == small, "cat returned other bytes");

        // On a terminal, a large copy shows a progress bar (`script` gives it a pty).
        let command = format!(
            "{} cp shoal://files/big.bin {} --registry={registry}",
            binary().display(),
            back.join("with-progress").display()
        );
        let on_terminal = std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .output()?;
        let shown = String::from_utf8_lossy(&on_terminal.stdout);
        anyhow::ensure!(on_terminal.status.success(), "cp on a terminal failed: {shown}");
        anyhow::ensure!(
            shown.contains("shoal://files/big.bin ->") && shown.contains("MiB"),
            "no progress bar on a terminal: {shown:?}"
        );
        same_file(&back.join("with-progress"), &big)?;

        // Copying over an existing, larger file replaces it whole (no old tail left).
        succeeds(
            registry,
            &[
                "cp",
                &local.join("odd name é.txt").display().to_string(),
                "shoal://files/big.bin",
            ],
        )?;
        let replaced = back.join("replaced");
        succeeds(
            registry,
            &["cp", "shoal://files/big.bin", &replaced.display().to_string()],
        )?;
        same_file(&replaced, &small)?;

        // Bad input: each refused with a message that names the problem; nothing changes.
        let missing = local.join("missing").display().to_string();
        fails_saying(registry, &["cp", &missing, "shoal://files/x"], "missing")?;
        fails_saying(registry, &["cp", "shoal://files/nope", &missing], "shoal://files/nope")?;
        fails_saying(
            registry,
            &["cp", &local.join("big.bin").display().to_string(), "shoal://novolume/x"],
            "novolume",
        )?;
        fails_saying(registry, &["cp", "shoal://files/a", "shoal://files/b"], "not supported")?;
        fails_saying(registry, &["cp", &missing, &missing], "shoal://VOLUME/PATH")?;
        fails_saying(
            registry,
            &["cp", &local.display().to_string(), "shoal://files/dir"],
            "is a directory",
        )?;
        fails_saying(registry, &["ls", "shoal://files/nope"], "shoal://files/nope")?;
        let after = succeeds(registry, &["ls", "shoal://files/"])?;
        anyhow::ensure!(
            after.lines().count() == 2,
            "refused commands changed the volume:\n{after}"
        );
        anyhow::ensure!(!Path::new(&missing).exists(), "a refused download created {missing}");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        let logs = cluster.logs();
        cluster.stop_all();
        panic!("{error:#}\n{logs}");
    }
    cluster.stop_all();
}
