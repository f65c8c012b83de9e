//! [`RegistryClient`]: leader following, bounded retries and request ids for the registry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::errno::FsError;
use shoal_proto::leader::leader_hint;
use shoal_proto::registry::admin_client::AdminClient;
use shoal_proto::registry::namespace_client::NamespaceClient;
use shoal_proto::registry::{self as pb};
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// Metadata key carrying a mutating request's identity; must match the registry's.
const REQUEST_ID_METADATA_KEY: &str = "shoal-request-id";
/// Most distinct registry addresses one client keeps channels to.
const MAX_KNOWN_ADDRESSES: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a registry leader waits for a new member to catch up; a little more than the
/// registry's own limit, so the registry's clear error arrives before the client gives up.
pub const MEMBER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(70);

/// A client of the registry cluster. Cheap to clone; clones share connections and the
/// remembered leader.
#[derive(Clone)]
pub struct RegistryClient {
    shared: Arc<Shared>,
    policy: RetryPolicy,
    local_reads: bool,
}

struct Shared {
    seeds: Vec<String>,
    routing: Mutex<Routing>,
    client_id: u64,
    sequence: AtomicU64,
}

#[derive(Default)]
struct Routing {
    leader: Option<String>,
    next_seed: usize,
    channels: HashMap<String, Channel>,
}

/// What one attempt of a call gets: where to send it and how to dress the request.
pub struct Attempt {
    pub channel: Channel,
    request_id: Option<String>,
    timeout: Duration,
    local_read: bool,
}

impl Attempt {
    /// Wraps `message` with the attempt's timeout and, for mutating calls, the request id.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(Ok(value)) = self.request_id.as_ref().map(|id| id.parse()) {
            request.metadata_mut().insert(REQUEST_ID_METADATA_KEY, value);
        }
        if self.local_read {
            request.metadata_mut().insert(
                shoal_proto::leader::CONSISTENCY_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(shoal_proto::leader::CONSISTENCY_LOCAL),
            );
        }
        request
    }

    pub fn namespace(&self) -> NamespaceClient<Channel> {
        NamespaceClient::new(self.channel.clone()).max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone()).max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
    }
}

impl RegistryClient {
    /// A client of the registry nodes at `addresses` ("host:port"). Any one reachable node
    /// is enough; the client finds the leader itself.
    pub fn new(addresses: impl IntoIterator<Item = impl Into<String>>) -> Result<RegistryClient, ClientError> {
        let seeds: Vec<String> = addresses.into_iter().map(Into::into).collect();
        if seeds.is_empty() {
            return Err(ClientError::Config(
                "no registry address given: pass --registry HOST:PORT or set SHOAL_REGISTRY".into(),
            ));
        }
        for seed in &seeds {
            endpoint(seed)?;
        }
        Ok(RegistryClient {
            shared: Arc::new(Shared {
                seeds,
                routing: Mutex::new(Routing::default()),
                client_id: rand::random(),
                sequence: AtomicU64::new(1),
            }),
            policy: RetryPolicy::default(),
            local_reads: false,
        })
    }

    /// The same client, but reads are answered by whichever node is reached, from its own
    /// state and without a leadership check: possibly stale. Give it one address to inspect
    /// that node (monitoring, diagnostics, tests).
    pub fn with_local_reads(mut self) -> RegistryClient {
        self.local_reads = true;
        self
    }

    /// The same client with another retry deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> RegistryClient {
        self.policy.deadline = deadline;
        self
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> RegistryClient {
        self.policy = policy;
        self
    }

    /// The address of the leader, as last learned.
    pub fn known_leader(&self) -> Option<String> {
        self.shared
            .routing
            .lock()
            .expect("routing lock poisoned")
            .leader
            .clone()
    }

    fn pick(&self) -> Result<(String, Channel), ClientError> {
        let mut routing = self.shared.routing.lock().expect("routing lock poisoned");
        let address = match &routing.leader {
            Some(leader) => leader.clone(),
            None => {
                let seed = self.shared.seeds[routing.next_seed % self.shared.seeds.len()].clone();
                routing.next_seed = routing.next_seed.wrapping_add(1);
                seed
            }
        };
        if let Some(channel) = routing.channels.get(&address) {
            return Ok((address, channel.clone()));
        }
        if routing.channels.len() >= MAX_KNOWN_ADDRESSES {
            routing.channels.clear();
        }
        let channel = endpoint(&address)?.connect_lazy();
        routing.channels.insert(address.clone(), channel.clone());
        Ok((address, channel))
    }

    fn follow(&self, leader: Option<String>) {
        self.shared.routing.lock().expect("routing lock poisoned").leader = leader;
    }

    /// Runs one registry call with leader following and bounded retries.
    ///
    /// `mutating` calls get a request id that all their attempts share.
    pub async fn call<R, F, Fut>(&self, operation: &str, mutating: bool, mut attempt: F) -> Result<R, ClientError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let request_id = mutating.then(|| {
            let sequence = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
            format!("{:x}-{sequence}", self.shared.client_id)
        });
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut last_error;
        loop {
            attempts += 1;
            let (address, channel) = self.pick()?;
            let context = Attempt {
                channel,
                request_id: request_id.clone(),
                timeout: self.policy.attempt_timeout,
                local_read: self.local_reads && !mutating,
            };
            let outcome = tokio::time::timeout(self.policy.attempt_timeout, attempt(context)).await;
            let redirected = match outcome {
                Ok(Ok(response)) => {
                    self.follow(Some(address));
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    if let Some(error) = FsError::from_status(&status) {
                        self.follow(Some(address));
                        return Err(ClientError::Fs(error));
                    }
                    last_error = format!("{address}: {}", status.message());
                    if let Some(hint) = leader_hint(&status) {
                        self.follow(Some(hint.address));
                        true
                    } else if retryable(status.code()) {
                        self.follow(None);
                        false
                    } else {
                        return Err(ClientError::Rejected {
                            operation: operation.to_string(),
                            status,
                        });
                    }
                }
                Err(_) => {
                    last_error = format!("{address}: no answer within {:?}", self.policy.attempt_timeout);
                    self.follow(None);
                    false
                }
            };
            let waited = started.elapsed();
            if waited >= self.policy.deadline || attempts >= self.policy.max_attempts {
                return Err(ClientError::Unavailable {
                    operation: operation.to_string(),
                    attempts,
                    waited_ms: waited.as_millis() as u64,
                    last_error,
                    addresses: format!("the registry nodes at {}", self.shared.seeds.join(",")),
                });
            }
            if !redirected || attempts.is_multiple_of(4) {
                // A redirect is followed at once; a redirect loop (stale hints during an
                // election) still backs off every few attempts.
                tokio::time::sleep(self.policy.backoff(attempts)).await;
            }
            tracing::debug!(operation, attempts, %last_error, "retrying registry call");
        }
    }
}

fn retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::Internal | Code::Aborted
    )
}

fn endpoint(address: &str) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| ClientError::Config(format!("invalid registry address {address:?}: {e}")))?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

fn attr(reply: pb::AttrReply, operation: &str) -> Result<pb::Attr, ClientError> {
    reply.attr.ok_or_else(|| ClientError::Rejected {
        operation: operation.to_string(),
        status: tonic::Status::internal("reply without attributes"),
    })
}

/// Generates a typed wrapper for one registry RPC.
macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident => $method:ident, $service:ident, $request:ty, $reply:ty, mutating = $mutating:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $request) -> Result<$reply, ClientError> {
            self.call(stringify!($method), $mutating, |attempt| {
                let message = attempt.request(request.clone());
                let mut client = attempt.$service();
                async move { client.$method(message).await }
            })
            .await
        }
    };
    ($(#[$doc:meta])* $name:ident, $($rest:tt)*) => {
        rpc!($(#[$doc])* $name => $name, $($rest)*);
    };
}

impl RegistryClient {
    rpc!(lookup_raw => lookup, namespace, pb::LookupRequest, pb::AttrReply, mutating = false);
    rpc!(get_attr_raw => get_attr, namespace, pb::GetAttrRequest, pb::AttrReply, mutating = false);
    rpc!(
        file_exists,
        namespace,
        pb::GetAttrRequest,
        pb::FileExistsReply,
        mutating = false
    );
    rpc!(set_attr_raw => set_attr, namespace, pb::SetAttrRequest, pb::AttrReply, mutating = true);
    rpc!(create_raw => create, namespace, pb::CreateRequest, pb::AttrReply, mutating = true);
    rpc!(mkdir_raw => mkdir, namespace, pb::MkdirRequest, pb::AttrReply, mutating = true);
    rpc!(symlink_raw => symlink, namespace, pb::SymlinkRequest, pb::AttrReply, mutating = true);
    rpc!(link_raw => link, namespace, pb::LinkRequest, pb::AttrReply, mutating = true);
    rpc!(
        /// Removes a name; the reply says how many links the inode has left.
        unlink, namespace, pb::UnlinkRequest, pb::UnlinkReply, mutating = true
    );
    rpc!(rmdir, namespace, pb::RmdirRequest, pb::Empty, mutating = true);
    rpc!(rename, namespace, pb::RenameRequest, pb::RenameReply, mutating = true);
    rpc!(
        readlink,
        namespace,
        pb::ReadlinkRequest,
        pb::ReadlinkReply,
        mutating = false
    );
    rpc!(
        read_dir,
        namespace,
        pb::ReadDirRequest,
        pb::ReadDirReply,
        mutating = false
    );
    rpc!(
        get_xattr,
        namespace,
        pb::GetXattrRequest,
        pb::XattrValue,
        mutating = false
    );
    rpc!(set_xattr, namespace, pb::SetXattrRequest, pb::Empty, mutating = true);
    rpc!(
        list_xattr,
        namespace,
        pb::ListXattrRequest,
        pb::ListXattrReply,
        mutating = false
    );
    rpc!(
        remove_xattr,
        namespace,
        pb::RemoveXattrRequest,
        pb::Empty,
        mutating = true
    );
    rpc!(stat_fs, namespace, pb::StatFsRequest, pb::StatFsReply, mutating = false);

    rpc!(
        create_volume,
        admin,
        pb::CreateVolumeRequest,
        pb::Volume,
        mutating = true
    );
    rpc!(get_volume, admin, pb::VolumeName, pb::Volume, mutating = false);
    rpc!(list_volumes, admin, pb::Empty, pb::ListVolumesReply, mutating = false);
    rpc!(delete_volume, admin, pb::VolumeName, pb::Empty, mutating = true);
    rpc!(
        set_volume_quota,
        admin,
        pb::SetVolumeQuotaRequest,
        pb::Volume,
        mutating = true
    );
    rpc!(
        register_data_service,
        admin,
        pb::RegisterDataServiceRequest,
        pb::RegisterDataServiceReply,
        mutating = true
    );
    rpc!(
        heartbeat,
        admin,
        pb::HeartbeatRequest,
        pb::HeartbeatReply,
        mutating = true
    );
    rpc!(
        list_data_services,
        admin,
        pb::Empty,
        pb::ListDataServicesReply,
        mutating = false
    );
    rpc!(
        set_data_service_state,
        admin,
        pb::SetDataServiceStateRequest,
        pb::DataService,
        mutating = true
    );
    rpc!(get_chain_table, admin, pb::Empty, pb::ChainTable, mutating = false);
    rpc!(
        chain_sync_done,
        admin,
        pb::ChainSyncDoneRequest,
        pb::ChainTable,
        mutating = true
    );
    rpc!(
        accept_chain_loss,
        admin,
        pb::AcceptChainLossRequest,
        pb::AcceptChainLossReply,
        mutating = true
    );
    rpc!(
        list_garbage,
        admin,
        pb::ListGarbageRequest,
        pb::GarbageList,
        mutating = false
    );
    rpc!(ack_garbage, admin, pb::AckGarbageRequest, pb::Empty, mutating = true);
    rpc!(
        renew_session,
        admin,
        pb::RenewSessionRequest,
        pb::Empty,
        mutating = false
    );
    rpc!(
        release_orphan,
        namespace,
        pb::ReleaseOrphanRequest,
        pb::Empty,
        mutating = true
    );
    rpc!(extend_file_raw => extend_file, namespace, pb::ExtendFileRequest, pb::AttrReply, mutating = true);
    rpc!(assign_layout_raw => assign_layout, namespace, pb::AssignLayoutRequest, pb::AttrReply, mutating = true);
    rpc!(members, admin, pb::Empty, pb::MembersReply, mutating = false);
    rpc!(remove_member_raw => remove_member, admin, pb::RemoveMemberRequest, pb::MembersReply, mutating = true);
    rpc!(status, admin, pb::Empty, pb::StatusReply, mutating = false);

    pub async fn lookup(&self, volume_id: u64, parent: u64, name: &[u8]) -> Result<pb::Attr, ClientError> {
        let request = pb::LookupRequest {
            volume_id,
            parent,
            name: name.to_vec().into(),
        };
        attr(self.lookup_raw(request).await?, "lookup")
    }

    pub async fn get_attr(&self, volume_id: u64, ino: u64) -> Result<pb::Attr, ClientError> {
        attr(
            self.get_attr_raw(pb::GetAttrRequest { volume_id, ino }).await?,
            "getattr",
        )
    }

    pub async fn set_attr(&self, request: pb::SetAttrRequest) -> Result<pb::Attr, ClientError> {
        attr(self.set_attr_raw(request).await?, "setattr")
    }

    pub async fn create(&self, request: pb::CreateRequest) -> Result<pb::Attr, ClientError> {
        attr(self.create_raw(request).await?, "create")
    }

    pub async fn mkdir(&self, request: pb::MkdirRequest) -> Result<pb::Attr, ClientError> {
        attr(self.mkdir_raw(request).await?, "mkdir")
    }

    pub async fn symlink(&self, request: pb::SymlinkRequest) -> Result<pb::Attr, ClientError> {
        attr(self.symlink_raw(request).await?, "symlink")
    }

    pub async fn link(&self, request: pb::LinkRequest) -> Result<pb::Attr, ClientError> {
        attr(self.link_raw(request).await?, "link")
    }

    /// Records that bytes up to `end_offset_bytes` of file `ino` were written.
    pub async fn extend_file(&self, volume_id: u64, ino: u64, end_offset_bytes: u64) -> Result<pb::Attr, ClientError> {
        let request = pb::ExtendFileRequest {
            volume_id,
            ino,
            end_offset_bytes,
        };
        attr(self.extend_file_raw(request).await?, "extend_file")
    }

    /// Places a file created before any chain existed; returns its attributes with layout.
    pub async fn assign_layout(&self, volume_id: u64, ino: u64) -> Result<pb::Attr, ClientError> {
        attr(
            self.assign_layout_raw(pb::AssignLayoutRequest { volume_id, ino })
                .await?,
            "assign_layout",
        )
    }

    /// Adds a registry node as a voter once it has caught up with the leader's log, which
    /// can take as long as sending it a snapshot: this call waits up to
    /// [`MEMBER_CATCH_UP_TIMEOUT`] per attempt.
    pub async fn add_member(&self, node_id: u64, address: &str) -> Result<pb::MembersReply, ClientError> {
        let request = pb::AddMemberRequest {
            node_id,
            address: address.to_string(),
        };
        let client = self.clone().with_policy(RetryPolicy {
            attempt_timeout: MEMBER_CATCH_UP_TIMEOUT,
            deadline: self.policy.deadline.max(MEMBER_CATCH_UP_TIMEOUT * 2),
            ..self.policy.clone()
        });
        client
            .call("add_member", true, |attempt| {
                let message = attempt.request(request.clone());
                let mut admin = attempt.admin();
                async move { admin.add_member(message).await }
            })
            .await
    }

    pub async fn remove_member(&self, node_id: u64) -> Result<pb::MembersReply, ClientError> {
        self.remove_member_raw(pb::RemoveMemberRequest { node_id }).await
    }
}
