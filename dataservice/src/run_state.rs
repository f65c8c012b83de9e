//! Whether this data service may have lost writes it had not synced yet.
//!
//! Why it matters: a write acknowledged without sync lives in the kernel's page cache and
//! the engine's unsynced log until the next fsync. A crash of the process loses none of it
//! (the kernel still has it); a crash of the machine (power loss, kernel panic) may. A data
//! service that comes back after the latter may lack acknowledged changes its chain
//! partners still hold, so it must not go on as if it had them: it tells the registry,
//! which makes it rejoin its chains as a suspect (filled from a partner if one kept them).
//!
//! How it knows: each disk records the kernel's boot id and whether the service stopped
//! cleanly. A start that finds an unclean stop under another boot id followed a machine
//! crash. (A test simulates one by writing another boot id into the file.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const RUN_STATE_FILE: &str = "shoal-run-state.json";
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The kernel boot during which the service last ran.
    pub boot_id: String,
    /// It stopped cleanly, everything synced.
    pub clean: bool,
}

fn current_boot_id() -> String {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn read(disk: &Path) -> anyhow::Result<Option<RunState>> {
    crate::json_file::read(disk, RUN_STATE_FILE)
}

fn write(disk: &Path, state: &RunState) -> anyhow::Result<()> {
    crate::json_file::write(disk, RUN_STATE_FILE, state)
}

/// Marks the service running on `disks`. Returns true if it may have lost unsynced writes
/// since it last ran (an unclean stop in an earlier boot).
pub fn begin(disks: &[PathBuf]) -> anyhow::Result<bool> {
    let boot_id = current_boot_id();
    let mut after_power_loss = false;
    for disk in disks {
        if let Some(last) = read(disk)? {
            after_power_loss |= !last.clean && last.boot_id != boot_id;
        }
    }
    let running = RunState { boot_id, clean: false };
    for disk in disks {
        write(disk, &running)?;
    }
    Ok(after_power_loss)
}

/// Marks a clean stop: call only once everything written is synced.
pub fn end_cleanly(disks: &[PathBuf]) -> anyhow::Result<()> {
    let stopped = RunState {
        boot_id: current_boot_id(),
        clean: true,
    };
    for disk in disks {
        write(disk, &stopped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unclean_stop_in_another_boot_counts_as_a_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let disks = vec![dir.path().to_path_buf()];
        assert!(!begin(&disks).unwrap(), "a new disk lost nothing");
        assert!(!begin(&disks).unwrap(), "a process crash loses nothing the kernel had");
        end_cleanly(&disks).unwrap();
        let mut state = read(dir.path()).unwrap().unwrap();
        state.boot_id = "another boot".into();
        write(dir.path(), &state).unwrap();
        assert!(!begin(&disks).unwrap(), "a clean stop before a reboot lost nothing");
        let mut state = read(dir.path()).unwrap().unwrap();
        assert!(!state.clean);
        state.boot_id = "another boot".into();
        write(dir.path(), &state).unwrap();
        assert!(begin(&disks).unwrap(), "an unclean stop, then a reboot");
    }
}
