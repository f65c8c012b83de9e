//! Key layout of the state machine's key spaces.
//!
//! Invariant: every namespace key starts with the volume id (big-endian), so one volume's
//! metadata is one contiguous key range. That is what lets a later version move a volume
//! into its own Raft group (multi-Raft) by copying a range, and delete a volume with one
//! range deletion.

/// Key space of the state machine's own bookkeeping (last applied log id, membership).
pub const SPACE_META: &str = "meta";
/// Key space of cluster-wide records: volumes, data services, chains, counters.
pub const SPACE_CLUSTER: &str = "cluster";
/// Key space of every volume's namespace.
pub const SPACE_NAMESPACE: &str = "namespace";
/// Key space of recent client requests and their results (retry deduplication).
pub const SPACE_SESSIONS: &str = "sessions";
/// All state-machine key spaces, in snapshot order. Invariant: only appended to, because a
/// snapshot names spaces by their index here.
pub const STATE_SPACES: &[&str] = &[SPACE_META, SPACE_CLUSTER, SPACE_NAMESPACE, SPACE_SESSIONS];

pub const META_LAST_APPLIED: &[u8] = b"last_applied";
pub const META_LAST_MEMBERSHIP: &[u8] = b"last_membership";

const CLUSTER_COUNTERS: u8 = 0x00;
const CLUSTER_VOLUME: u8 = 0x01;
const CLUSTER_VOLUME_NAME: u8 = 0x02;
const CLUSTER_DATA_SERVICE: u8 = 0x03;
const CLUSTER_DATA_SERVICE_UUID: u8 = 0x04;
const CLUSTER_CHAIN: u8 = 0x05;
const CLUSTER_CHAIN_SET: u8 = 0x06;
const CLUSTER_DELETED_VOLUME: u8 = 0x07;

const NS_USAGE: u8 = 0x00;
const NS_INODE: u8 = 0x01;
const NS_DENTRY: u8 = 0x02;
const NS_ORDER: u8 = 0x03;
const NS_XATTR: u8 = 0x04;
const NS_GARBAGE: u8 = 0x05;
const NS_ORPHAN: u8 = 0x06;

fn with_tag(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    key.push(tag);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

pub fn cluster_counters() -> Vec<u8> {
    vec![CLUSTER_COUNTERS]
}
pub fn volume(volume_id: u64) -> Vec<u8> {
    with_tag(CLUSTER_VOLUME, &[&volume_id.to_be_bytes()])
}
pub fn volume_prefix() -> Vec<u8> {
    vec![CLUSTER_VOLUME]
}
pub fn volume_name(name: &str) -> Vec<u8> {
    with_tag(CLUSTER_VOLUME_NAME, &[name.as_bytes()])
}
pub fn data_service(id: u64) -> Vec<u8> {
    with_tag(CLUSTER_DATA_SERVICE, &[&id.to_be_bytes()])
}
pub fn data_service_prefix() -> Vec<u8> {
    vec![CLUSTER_DATA_SERVICE]
}
pub fn data_service_uuid(uuid: &str) -> Vec<u8> {
    with_tag(CLUSTER_DATA_SERVICE_UUID, &[uuid.as_bytes()])
}
pub fn chain(chain_id: u64) -> Vec<u8> {
    with_tag(CLUSTER_CHAIN, &[&chain_id.to_be_bytes()])
}
pub fn chain_prefix() -> Vec<u8> {
    vec![CLUSTER_CHAIN]
}
/// The chains files of volumes with `replicas` copies are striped over.
pub fn chain_set(replicas: u32) -> Vec<u8> {
    with_tag(CLUSTER_CHAIN_SET, &[&replicas.to_be_bytes()])
}
pub fn deleted_volume_prefix() -> Vec<u8> {
    vec![CLUSTER_DELETED_VOLUME]
}
/// A deleted volume whose chunks the data services still have to drop.
pub fn deleted_volume(volume_id: u64) -> Vec<u8> {
    with_tag(CLUSTER_DELETED_VOLUME, &[&volume_id.to_be_bytes()])
}

const SESSION_RESULT: u8 = 0x00;
const SESSION_EXPIRY: u8 = 0x01;
const SESSION_EXPIRED_THROUGH: u8 = 0x02;

/// The remembered result of request `(client_id, sequence)`.
pub fn session_result(client_id: u64, sequence: u64) -> Vec<u8> {
    with_tag(SESSION_RESULT, &[&client_id.to_be_bytes(), &sequence.to_be_bytes()])
}
/// Expiry index: remembered results in the order they were recorded.
pub fn session_expiry(recorded_ns: i64, client_id: u64, sequence: u64) -> Vec<u8> {
    // Offset so that negative times (clock before 1970) still sort first.
    let ordered = (recorded_ns as u64) ^ (1 << 63);
    with_tag(
        SESSION_EXPIRY,
        &[
            &ordered.to_be_bytes(),
            &client_id.to_be_bytes(),
            &sequence.to_be_bytes(),
        ],
    )
}
pub fn session_expiry_prefix() -> Vec<u8> {
    vec![SESSION_EXPIRY]
}
/// The last expiry key removed: everything up to it is gone, so the next cleanup starts
/// there instead of stepping over the deletion markers of all earlier ones.
pub fn session_expired_through() -> Vec<u8> {
    vec![SESSION_EXPIRED_THROUGH]
}
/// Decodes (recorded_ns, client_id, sequence) from an expiry key.
pub fn parse_session_expiry(key: &[u8]) -> (i64, u64, u64) {
    assert_eq!(key.len(), 25, "malformed session expiry key");
    let ordered = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
    let client_id = u64::from_be_bytes(key[9..17].try_into().expect("8 bytes"));
    let sequence = u64::from_be_bytes(key[17..25].try_into().expect("8 bytes"));
    ((ordered ^ (1 << 63)) as i64, client_id, sequence)
}

/// First key of a volume's namespace range; `volume_range_end` is one past its last.
pub fn volume_range_start(volume_id: u64) -> Vec<u8> {
    volume_id.to_be_bytes().to_vec()
}
pub fn volume_range_end(volume_id: u64) -> Vec<u8> {
    assert!(volume_id < u64::MAX, "volume id space exhausted");
    (volume_id + 1).to_be_bytes().to_vec()
}

fn ns_key(volume_id: u64, tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + parts.iter().map(|p| p.len()).sum::<usize>());
    key.extend_from_slice(&volume_id.to_be_bytes());
    key.push(tag);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

pub fn usage(volume_id: u64) -> Vec<u8> {
    ns_key(volume_id, NS_USAGE, &[])
}
pub fn inode(volume_id: u64, ino: u64) -> Vec<u8> {
    ns_key(volume_id, NS_INODE, &[&ino.to_be_bytes()])
}
pub fn dentry(volume_id: u64, parent: u64, name: &[u8]) -> Vec<u8> {
    ns_key(volume_id, NS_DENTRY, &[&parent.to_be_bytes(), name])
}
/// Directory entries in creation order: readdir walks these, and the cookie is the suffix.
pub fn order(volume_id: u64, parent: u64, cookie: u64) -> Vec<u8> {
    ns_key(volume_id, NS_ORDER, &[&parent.to_be_bytes(), &cookie.to_be_bytes()])
}
pub fn order_prefix(volume_id: u64, parent: u64) -> Vec<u8> {
    ns_key(volume_id, NS_ORDER, &[&parent.to_be_bytes()])
}
pub fn order_cookie(key: &[u8]) -> u64 {
    assert_eq!(key.len(), 8 + 1 + 8 + 8, "malformed order key");
    u64::from_be_bytes(key[17..25].try_into().expect("8 bytes"))
}
pub fn xattr(volume_id: u64, ino: u64, name: &[u8]) -> Vec<u8> {
    ns_key(volume_id, NS_XATTR, &[&ino.to_be_bytes(), name])
}
pub fn xattr_prefix(volume_id: u64, ino: u64) -> Vec<u8> {
    ns_key(volume_id, NS_XATTR, &[&ino.to_be_bytes()])
}
/// The name part of an xattr key built with `xattr_prefix`.
pub fn xattr_name(prefix_len: usize, key: &[u8]) -> &[u8] {
    &key[prefix_len..]
}
/// A file whose last name is gone while a mount still has it open.
pub fn orphan(volume_id: u64, ino: u64) -> Vec<u8> {
    ns_key(volume_id, NS_ORPHAN, &[&ino.to_be_bytes()])
}
pub fn orphan_prefix(volume_id: u64) -> Vec<u8> {
    ns_key(volume_id, NS_ORPHAN, &[])
}
pub fn garbage_prefix(volume_id: u64) -> Vec<u8> {
    ns_key(volume_id, NS_GARBAGE, &[])
}
pub fn garbage(volume_id: u64, ino: u64) -> Vec<u8> {
    ns_key(volume_id, NS_GARBAGE, &[&ino.to_be_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_keys_stay_inside_their_volume_range() {
        let volume_id = 7;
        let (start, end) = (volume_range_start(volume_id), volume_range_end(volume_id));
        for key in [
            usage(volume_id),
            inode(volume_id, u64::MAX),
            dentry(volume_id, u64::MAX, &[0xff; 255]),
            order(volume_id, 1, u64::MAX),
            xattr(volume_id, 3, b"user.x"),
            garbage(volume_id, 9),
        ] {
            assert!(key >= start && key < end, "{key:?} escapes volume {volume_id}");
        }
    }

    #[test]
    fn session_expiry_keys_sort_by_time_and_round_trip() {
        assert!(session_expiry(-5, 9, 9) < session_expiry(3, 1, 1));
        assert!(session_expiry(3, 1, 1) < session_expiry(4, 0, 0));
        assert_eq!(parse_session_expiry(&session_expiry(-7, 2, 3)), (-7, 2, 3));
    }

    #[test]
    fn order_keys_sort_by_cookie() {
        assert!(order(1, 5, 2) < order(1, 5, 10));
        assert_eq!(order_cookie(&order(1, 5, 77)), 77);
    }
}
