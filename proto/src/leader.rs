//! How a registry follower points a caller at the leader.
//!
//! A follower answers UNAVAILABLE with the leader's id and address in metadata; the client
//! library retries there and remembers it. The same convention serves every registry call.

/// Metadata key: the leader's Raft node id.
pub const LEADER_ID_METADATA_KEY: &str = "shoal-leader-id";
/// Metadata key: the leader's gRPC address (host:port).
pub const LEADER_ADDRESS_METADATA_KEY: &str = "shoal-leader-address";

/// Metadata key: `local` asks the node reached to answer a read from its own state, without
/// confirming leadership (possibly stale; for monitoring and diagnostics).
pub const CONSISTENCY_METADATA_KEY: &str = "shoal-consistency";
pub const CONSISTENCY_LOCAL: &str = "local";

/// The leader a follower named, if it knew one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub node_id: u64,
    pub address: String,
}

/// A status telling the caller to go to `hint` (or to retry later if no leader is known).
pub fn not_leader_status(node_id: u64, hint: Option<&LeaderHint>) -> tonic::Status {
    let message = match hint {
        Some(hint) => format!(
            "registry node {node_id} is not the leader; the leader is node {} at {}",
            hint.node_id, hint.address
        ),
        None => format!("registry node {node_id} is not the leader and no leader is elected yet; retry"),
    };
    let mut status = tonic::Status::unavailable(message);
    if let Some(hint) = hint {
        let metadata = status.metadata_mut();
        if let Ok(value) = hint.node_id.to_string().parse() {
            metadata.insert(LEADER_ID_METADATA_KEY, value);
        }
        if let Ok(value) = hint.address.parse() {
            metadata.insert(LEADER_ADDRESS_METADATA_KEY, value);
        }
    }
    status
}

/// The leader hint in a status, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<LeaderHint> {
    let metadata = status.metadata();
    let node_id = metadata.get(LEADER_ID_METADATA_KEY)?.to_str().ok()?.parse().ok()?;
    let address = metadata.get(LEADER_ADDRESS_METADATA_KEY)?.to_str().ok()?.to_string();
    Some(LeaderHint { node_id, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_round_trips() {
        let hint = LeaderHint {
            node_id: 3,
            address: "127.0.0.1:7001".into(),
        };
        let status = not_leader_status(1, Some(&hint));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&status), Some(hint));
        assert_eq!(leader_hint(&not_leader_status(1, None)), None);
    }
}
