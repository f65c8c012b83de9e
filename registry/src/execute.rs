//! Applying one replicated proposal: the single entry point the state machine calls.

use shoal_engine::{KvRead, WriteBatch};

use crate::command::{Command, CommandResult, Proposal};
use crate::namespace::NsError;
use crate::txn::{StorageFault, Txn};
use crate::{cluster, namespace, sessions};

/// Runs `proposal` against `base` and returns the changes to write with the result.
///
/// A command that fails with a file-system error changes nothing but the retry record;
/// a storage fault is returned as such, and the caller must stop applying (the node cannot
/// continue without diverging from its peers).
pub fn execute(base: &dyn KvRead, proposal: &Proposal) -> Result<(WriteBatch, CommandResult), StorageFault> {
    let now_ns = proposal.now_ns;
    if let Some(request_id) = proposal.request_id {
        let txn = Txn::new(base);
        if let Some(result) = sessions::remembered(&txn, request_id)? {
            return Ok((WriteBatch::new(), result));
        }
    }
    let mut txn = Txn::new(base);
    let outcome = match &proposal.command {
        Command::Namespace { volume_id, op } => namespace::apply(&mut txn, *volume_id, now_ns, op),
        other => cluster::apply(&mut txn, now_ns, other),
    };
    let (mut txn, result) = match outcome {
        Ok(outcome) => (txn, Ok(outcome)),
        Err(NsError::Fs(error)) => (Txn::new(base), Err(error)),
        Err(NsError::Storage(fault)) => return Err(fault),
    };
    if let Some(request_id) = proposal.request_id {
        sessions::expire(&mut txn, now_ns)?;
        sessions::remember(&mut txn, request_id, now_ns, &result);
    }
    Ok((txn.into_batch(), result))
}
