//! Retry deduplication: the result of every client request is remembered for a while, so a
//! request retried after a lost acknowledgement gets the first result instead of running
//! twice (a retried `mkdir` must not answer EEXIST to the client that made the directory).
//!
//! Bounded: results expire after [`SESSION_TTL_NS`] of the proposers' clock, and every
//! applied request deletes at most [`EXPIRED_PER_APPLY`] expired ones, so the table stays
//! proportional to the request rate times the TTL and cleanup never stalls apply.

use serde::{Deserialize, Serialize};
use shoal_engine::ScanControl;

use crate::command::{CommandResult, RequestId};
use crate::keys::{self, SPACE_SESSIONS};
use crate::records::Record;
use crate::txn::{StorageFault, Txn};

/// How long a result is remembered. Longer than any client's retry window.
pub const SESSION_TTL_NS: i64 = 10 * 60 * 1_000_000_000;
/// Most expired results removed per applied request.
pub const EXPIRED_PER_APPLY: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    recorded_ns: i64,
    result: CommandResult,
}
impl Record for SessionRecord {
    const NAME: &'static str = "session";
}

/// The result recorded for `request_id`, if it was applied before.
pub fn remembered(txn: &Txn<'_>, request_id: RequestId) -> Result<Option<CommandResult>, StorageFault> {
    let key = keys::session_result(request_id.client_id, request_id.sequence);
    Ok(txn
        .get_record::<SessionRecord>(SPACE_SESSIONS, &key)?
        .map(|record| record.result))
}

pub fn remember(txn: &mut Txn<'_>, request_id: RequestId, now_ns: i64, result: &CommandResult) {
    let record = SessionRecord {
        recorded_ns: now_ns,
        result: result.clone(),
    };
    txn.put_record(
        SPACE_SESSIONS,
        keys::session_result(request_id.client_id, request_id.sequence),
        &record,
    );
    txn.put(
        SPACE_SESSIONS,
        keys::session_expiry(now_ns, request_id.client_id, request_id.sequence),
        Vec::new(),
    );
}

/// Forgets up to [`EXPIRED_PER_APPLY`] results recorded before `now_ns - SESSION_TTL_NS`.
pub fn expire(txn: &mut Txn<'_>, now_ns: i64) -> Result<(), StorageFault> {
    // Starting after the last removed key matters: RocksDB keeps a deletion marker for every
    // removed key until compaction, and a scan from the prefix would step over all of them
    // on every request.
    let start = txn
        .get(SPACE_SESSIONS, &keys::session_expired_through())?
        .unwrap_or_else(keys::session_expiry_prefix);
    let end = keys::session_expiry(now_ns.saturating_sub(SESSION_TTL_NS), 0, 0);
    if start >= end {
        return Ok(());
    }
    let mut expired = Vec::with_capacity(EXPIRED_PER_APPLY);
    let mut last_key = None;
    txn.scan_committed(SPACE_SESSIONS, &start, &end, &mut |key, _| {
        expired.push(keys::parse_session_expiry(key));
        last_key = Some(key.to_vec());
        if expired.len() >= EXPIRED_PER_APPLY {
            ScanControl::Stop
        } else {
            ScanControl::Continue
        }
    })?;
    for (recorded_ns, client_id, sequence) in expired {
        txn.delete(SPACE_SESSIONS, keys::session_expiry(recorded_ns, client_id, sequence));
        txn.delete(SPACE_SESSIONS, keys::session_result(client_id, sequence));
    }
    if let Some(last_key) = last_key {
        txn.put(SPACE_SESSIONS, keys::session_expired_through(), last_key);
    }
    Ok(())
}
