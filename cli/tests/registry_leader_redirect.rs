//! Leader handling on three real registry processes: a follower names the leader, the
//! client library seeded with a follower alone follows it and remembers it, and a request
//! id sent twice (a retry after a lost reply) gets the first result, even from a new
//! leader after the old one was killed, instead of EEXIST or a second application.

use std::path::PathBuf;
use std::time::Duration;

use shoal_client::proto::admin_client::AdminClient;
use shoal_client::proto::namespace_client::NamespaceClient;
use shoal_client::proto::{self as pb};
use shoal_client::{Errno, FsError, RegistryClient};
use shoal_proto::leader::leader_hint;
use shoal_testkit::{RegistryCluster, wait_for};
use tonic::transport::Channel;

/// The registry's request-id metadata key (`<client hex>-<sequence>`).
const REQUEST_ID_METADATA_KEY: &str = "shoal-request-id";
/// Bound on one raw gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

async fn channel(address: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

fn with_request_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(RPC_TIMEOUT);
    request
        .metadata_mut()
        .insert(REQUEST_ID_METADATA_KEY, request_id.parse().expect("ASCII request id"));
    request
}

fn mkdir_request(volume_id: u64, name: &str) -> pb::MkdirRequest {
    pb::MkdirRequest {
        volume_id,
        parent: 1,
        name: name.as_bytes().to_vec().into(),
        mode: 0o755,
        ..Default::default()
    }
}

/// A mkdir sent straight to `address` with `request_id`: its inode, or its errno.
async fn raw_mkdir(address: &str, volume_id: u64, name: &str, request_id: &str) -> anyhow::Result<Result<u64, Errno>> {
    let mut namespace = NamespaceClient::new(channel(address).await?);
    match namespace
        .mkdir(with_request_id(mkdir_request(volume_id, name), request_id))
        .await
    {
        Ok(reply) => Ok(Ok(reply.into_inner().attr.map(|a| a.ino).unwrap_or(0))),
        Err(status) => match FsError::from_status(&status) {
            Some(error) => Ok(Err(error.errno)),
            None => anyhow::bail!("mkdir {name:?} at {address}: {status}"),
        },
    }
}

/// An unlink sent straight to `address` with `request_id`: Ok, or its errno.
async fn raw_unlink(address: &str, volume_id: u64, name: &str, request_id: &str) -> anyhow::Result<Result<(), Errno>> {
    let mut namespace = NamespaceClient::new(channel(address).await?);
    let request = pb::UnlinkRequest {
        volume_id,
        parent: 1,
        name: name.as_bytes().to_vec().into(),
        ..Default::default()
    };
    match namespace.unlink(with_request_id(request, request_id)).await {
        Ok(_) => Ok(Ok(())),
        Err(status) => match FsError::from_status(&status) {
            Some(error) => Ok(Err(error.errno)),
            None => anyhow::bail!("unlink {name:?} at {address}: {status}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_and_retries_are_answered_once() {
    let mut cluster = RegistryCluster::start(&binary(), 3, &[]).await.expect("cluster starts");
    let result = scenario(&mut cluster).await;
    cluster.finish(result);
}

async fn scenario(cluster: &mut RegistryCluster) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let leader_address = cluster.node(leader).address.clone();
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("three nodes");
    let follower_address = cluster.node(follower).address.clone();
    // A follower learns the leader from its first heartbeat.
    let follower_node = cluster.node(follower);
    wait_for("the follower to know the leader", Duration::from_secs(10), || async {
        let status = follower_node.local_status().await?;
        (status.leader_id == Some(leader)).then_some(())
    })
    .await?;

    // A follower refuses a write and names the leader.
    let mut admin = AdminClient::new(channel(&follower_address).await?);
    let mut request = tonic::Request::new(pb::CreateVolumeRequest {
        name: "refused".into(),
        replicas: 1,
        ..Default::default()
    });
    request.set_timeout(RPC_TIMEOUT);
    let status = admin
        .create_volume(request)
        .await
        .expect_err("a follower accepted a write");
    let hint = leader_hint(&status).ok_or_else(|| anyhow::anyhow!("no leader hint in {status:?}"))?;
    anyhow::ensure!(
        hint.node_id == leader && hint.address == leader_address,
        "follower {follower} named {hint:?}, the leader is {leader} at {leader_address}"
    );

    // The client library, knowing only the follower, follows the hint and keeps the leader.
    let client = RegistryClient::new([follower_address.clone()])?.with_deadline(Duration::from_secs(30));
    anyhow::ensure!(client.known_leader().is_none(), "a new client knows a leader");
    let volume = client
        .create_volume(pb::CreateVolumeRequest {
            name: "redirect".into(),
            replicas: 1,
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(
        client.known_leader().as_deref() == Some(leader_address.as_str()),
        "after a write through follower {follower}, the client knows {:?}, not the leader {leader_address}",
        client.known_leader()
    );
    client.mkdir(mkdir_request(volume.id, "through-follower")).await?;
    let clone = client.clone();
    anyhow::ensure!(
        clone.known_leader().as_deref() == Some(leader_address.as_str()),
        "clones share the remembered leader"
    );
    println!("client seeded with follower {follower} ({follower_address}) learned leader {leader} ({leader_address})");

    // The same request id twice: the second send is answered from the first result.
    let client_hex = format!("{:x}", 0x5ea5_1de5_u64);
    let first = raw_mkdir(&leader_address, volume.id, "once", &format!("{client_hex}-1")).await?;
    let ino = first.map_err(|errno| anyhow::anyhow!("first mkdir failed with {errno:?}"))?;
    let retried = raw_mkdir(&leader_address, volume.id, "once", &format!("{client_hex}-1")).await?;
    anyhow::ensure!(
        retried == Ok(ino),
        "a retried mkdir answered {retried:?}, the first answer was inode {ino}"
    );
    // A new request id is a new request: now the name exists.
    let fresh = raw_mkdir(&leader_address, volume.id, "once", &format!("{client_hex}-2")).await?;
    anyhow::ensure!(
        fresh == Err(Errno::EEXIST),
        "a new mkdir of an existing name: {fresh:?}"
    );

    // A failed request is remembered too: its retry fails the same way even after the
    // name appeared, and does not remove it.
    let missing = raw_unlink(&leader_address, volume.id, "later", &format!("{client_hex}-3")).await?;
    anyhow::ensure!(missing == Err(Errno::ENOENT), "unlink of a missing name: {missing:?}");
    client.mkdir(mkdir_request(volume.id, "later")).await?;
    let retried = raw_unlink(&leader_address, volume.id, "later", &format!("{client_hex}-3")).await?;
    anyhow::ensure!(retried == Err(Errno::ENOENT), "retried unlink answered {retried:?}");

    // The remembered results are replicated state: a new leader answers the retry the same.
    cluster.kill_node(leader);
    let (new_leader, election) = cluster
        .wait_for_new_leader(Some(leader), Duration::from_secs(10))
        .await?;
    let new_address = cluster.node(new_leader).address.clone();
    let retried = raw_mkdir(&new_address, volume.id, "once", &format!("{client_hex}-1")).await?;
    anyhow::ensure!(
        retried == Ok(ino),
        "new leader {new_leader} answered the retried mkdir with {retried:?}, the first answer was inode {ino}"
    );
    println!(
        "leader {leader} killed; node {new_leader} led after {} ms and answered the retry with inode {ino}",
        election.as_millis()
    );

    // The client that remembered the dead leader finds the new one.
    let names = client
        .read_dir(pb::ReadDirRequest {
            volume_id: volume.id,
            ino: 1,
            after_cookie: 0,
            max_entries: 100,
            with_attrs: false,
        })
        .await?;
    let mut names: Vec<String> = names
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    names.sort();
    anyhow::ensure!(names == ["later", "once", "through-follower"], "root holds {names:?}");
    anyhow::ensure!(
        client.known_leader().as_deref() == Some(new_address.as_str()),
        "after the leader died the client knows {:?}, not the new leader {new_address}",
        client.known_leader()
    );
    Ok(())
}
