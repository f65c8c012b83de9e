//! Real Shoal processes for tests and benchmarks: started on loopback with ports chosen at
//! run time, in temporary directories, and stopped by PID when their owner is dropped, even
//! when a test fails half-way.

pub mod csi;
mod data;
mod dump;
mod fault;
mod mount;
mod private_files;
mod process;
mod registry;
mod wait;

pub use data::{DataServiceProcess, ShoalCluster};
pub use dump::dump_volume;
pub use fault::{KillAt, newest_engine_log};
pub use mount::{FuseMount, MountSpec, MountedCluster, is_fuse_mounted};
pub use private_files::PrivateFiles;
pub use process::Process;
pub use registry::{RegistryCluster, RegistryNode};
pub use wait::wait_for;

use std::net::TcpListener;
use std::path::PathBuf;

/// A port on 127.0.0.1 that was free a moment ago. The caller hands it to a child process
/// at once; the window in which another process could take it is tiny.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The `shoal` binary to run: `$SHOAL_BIN`, else the one next to the running executable
/// (cargo puts test and bench binaries one directory below it).
pub fn shoal_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("shoal");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "cannot find the shoal binary near {}; build it (cargo build --release -p shoal-cli) or set SHOAL_BIN",
        exe.display()
    )
}

/// Deterministic bytes for position `offset..offset + length` of a stream named by `seed`
/// (splitmix64 of each 8-byte word's position and the seed): every seed's bytes differ from
/// every other's at every position, so a test can tell whose bytes a file holds.
pub fn pattern(seed: u64, offset: u64, length: u64) -> Vec<u8> {
    assert!(
        offset.is_multiple_of(8) && length.is_multiple_of(8),
        "patterns are made of whole words"
    );
    let mut out = Vec::with_capacity(length as usize);
    for word in offset / 8..(offset + length) / 8 {
        let mut z = word ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}
