//! The chain table: small, versioned, and the only placement state the registry keeps.
//!
//! A file's layout names chains, never data services or chunks, so the registry's size and
//! write rate grow with files, not with data.

use shoal_engine::{KvRead, ScanControl};
use shoal_proto::errno::FsError;

use crate::keys::{self, SPACE_CLUSTER};
use crate::namespace::{NsError, NsResult};
use crate::records::{ChainRecord, ChainSet, Layout, Record, VolumeRecord};
use crate::txn::Txn;

/// Most chains the table holds.
pub const MAX_CHAINS: usize = 65_536;

/// The layout of a new regular file `ino` of `volume`: `stripe_width` consecutive chains of
/// the volume's replication factor, starting at a position that rotates with the inode
/// number so that files spread over all chains. Empty while no chains exist yet.
pub fn select_layout(txn: &Txn<'_>, volume: &VolumeRecord, ino: u64) -> NsResult<Layout> {
    let set: ChainSet = txn
        .get_record(SPACE_CLUSTER, &keys::chain_set(volume.replicas))?
        .unwrap_or_default();
    let available = set.chain_ids.len();
    let width = (volume.stripe_width as usize).min(available);
    let start = if available == 0 {
        0
    } else {
        (ino % available as u64) as usize
    };
    let chain_ids = (0..width).map(|i| set.chain_ids[(start + i) % available]).collect();
    Ok(Layout {
        chunk_size_bytes: volume.chunk_size_bytes,
        stripe_width: if width == 0 { volume.stripe_width } else { width as u32 },
        chain_ids,
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainTable {
    pub version: u64,
    pub chains: Vec<ChainRecord>,
}

pub fn chain_table(read: &dyn KvRead) -> Result<ChainTable, FsError> {
    let txn = Txn::new(read);
    let version = super::counters(&txn)
        .map_err(NsError::into_fs_error)?
        .chain_table_version;
    let prefix = keys::chain_prefix();
    let end = shoal_engine::prefix_end(&prefix).expect("non-empty prefix");
    let mut chains = Vec::new();
    let mut corrupt = None;
    read.scan(SPACE_CLUSTER, &prefix, Some(&end), &mut |_, value| {
        match ChainRecord::decode(value) {
            Ok(chain) => chains.push(chain),
            Err(error) => {
                corrupt = Some(error);
                return ScanControl::Stop;
            }
        }
        if chains.len() >= MAX_CHAINS {
            ScanControl::Stop
        } else {
            ScanControl::Continue
        }
    })
    .map_err(|e| NsError::from(e).into_fs_error())?;
    match corrupt {
        Some(error) => Err(NsError::from(error).into_fs_error()),
        None => Ok(ChainTable { version, chains }),
    }
}
