//! The `shoal` command as an operator uses it: status (table and JSON), volumes (quotas
//! changed one at a time), and growing and shrinking the registry at run time with `--join`,
//! `registry add` and `registry remove` (the leader included).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shoal_client::RegistryClient;
use shoal_client::proto::{self as pb};
use shoal_testkit::{Process, RegistryCluster, free_port, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Runs `shoal ARGS` against the cluster; returns (success, stdout, stderr).
fn shoal(cluster: &RegistryCluster, args: &[&str]) -> (bool, String, String) {
    shoal_at(&cluster.registry_arg(), args)
}

/// Runs `shoal ARGS` with `SHOAL_REGISTRY=registry`; returns (success, stdout, stderr).
fn shoal_at(registry: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env("SHOAL_REGISTRY", registry)
        .output()
        .expect("shoal runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(cluster: &RegistryCluster, args: &[&str]) -> String {
    let (success, stdout, stderr) = shoal(cluster, args);
    assert!(success, "shoal {args:?} failed:\n{stderr}");
    stdout
}

fn json(cluster: &RegistryCluster, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(cluster, args)).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_work_end_to_end() {
    let mut cluster = RegistryCluster::start(&binary(), 3, &[]).await.expect("cluster starts");

    // Volumes.
    let created = ok(
        &cluster,
        &[
            "volume",
            "create",
            "www",
            "--replicas",
            "3",
            "--quota",
            "10G",
            "--stripe-width",
            "2",
        ],
    );
    assert!(created.contains("created volume \"www\""), "{created}");
    ok(
        &cluster,
        &["volume", "create", "scratch", "--replicas", "1", "--chunk-size", "1M"],
    );
    let info = json(&cluster, &["volume", "info", "www", "--json"]);
    assert_eq!(info["quota_bytes"], 10u64 << 30);
    assert_eq!(info["replicas"], 3);
    assert_eq!(info["stripe_width"], 2);
    let listed = json(&cluster, &["volume", "list", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let table = ok(&cluster, &["volume", "list"]);
    assert!(table.contains("scratch") && table.contains("10.0 GiB"), "{table}");
    ok(
        &cluster,
        &["volume", "quota", "www", "--bytes", "20G", "--inodes", "1000"],
    );
    let info = json(&cluster, &["volume", "info", "www", "--json"]);
    assert_eq!(info["quota_bytes"], 20u64 << 30);
    assert_eq!(info["quota_inodes"], 1000);
    // One quota at a time: the other keeps its value.
    ok(&cluster, &["volume", "quota", "www", "--bytes", "30G"]);
    let info = json(&cluster, &["volume", "info", "www", "--json"]);
    assert_eq!(
        (&info["quota_bytes"], &info["quota_inodes"]),
        (&(30u64 << 30).into(), &1000.into())
    );
    ok(&cluster, &["volume", "quota", "www", "--inodes", "2000"]);
    let info = json(&cluster, &["volume", "info", "www", "--json"]);
    assert_eq!(
        (&info["quota_bytes"], &info["quota_inodes"]),
        (&(30u64 << 30).into(), &2000.into())
    );
    ok(&cluster, &["volume", "quota", "www", "--bytes", "0"]);
    let info = json(&cluster, &["volume", "info", "www", "--json"]);
    assert_eq!((&info["quota_bytes"], &info["quota_inodes"]), (&0.into(), &2000.into()));
    let (success, _, stderr) = shoal(&cluster, &["volume", "quota", "www"]);
    assert!(!success && stderr.contains("give --bytes"), "{stderr}");
    let (success, _, stderr) = shoal(&cluster, &["volume", "quota", "nope", "--bytes", "1G"]);
    assert!(!success && stderr.contains("ENOENT"), "{stderr}");
    ok(&cluster, &["volume", "quota", "www", "--bytes", "20G"]);
    ok(&cluster, &["volume", "delete", "scratch"]);
    let (success, _, stderr) = shoal(&cluster, &["volume", "delete", "scratch"]);
    assert!(
        !success && stderr.contains("ENOENT") && stderr.contains("\"scratch\" does not exist"),
        "{stderr}"
    );
    let (success, _, stderr) = shoal(&cluster, &["volume", "create", "no/slash"]);
    assert!(!success && stderr.contains("EINVAL"), "{stderr}");
    let (success, _, stderr) = shoal(&cluster, &["volume", "create", "x", "--quota", "lots"]);
    assert!(!success && stderr.contains("invalid size"), "{stderr}");

    // Status, as a table and as JSON naming the leader.
    let status = json(&cluster, &["status", "--json"]);
    let leader = status["leader_id"].as_u64().expect("leader_id in status --json");
    assert!((1..=3).contains(&leader));
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["volumes"][0]["name"], "www");
    let table = ok(&cluster, &["status"]);
    assert!(table.contains(&format!("leader: node {leader}")), "{table}");

    // A fourth node joins at run time, then leaves.
    let port = free_port().unwrap();
    let address = format!("127.0.0.1:{port}");
    let data = cluster.root().join("registry-4");
    let args: Vec<String> = vec![
        "registry".into(),
        "--id=4".into(),
        format!("--listen={address}"),
        format!("--data={}", data.display()),
        format!("--join={}", cluster.registry_arg()),
    ];
    let mut fourth = Process::spawn("registry-4", &binary(), &args, &cluster.root().join("registry-4.log")).unwrap();
    let joined = wait_for("node 4 to become a voter", Duration::from_secs(60), || async {
        let members = json(&cluster, &["registry", "members", "--json"]);
        let voter = members["members"]
            .as_array()?
            .iter()
            .any(|m| m["node_id"] == 4 && m["role"] == "voter" && m["address"] == address.as_str());
        voter.then_some(members)
    })
    .await;
    if let Err(error) = joined {
        panic!("{error}\n{}", fourth.log());
    }
    let removed = ok(&cluster, &["registry", "remove", "4"]);
    assert!(!removed.contains(&address), "{removed}");
    let members = json(&cluster, &["registry", "members", "--json"]);
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3));
    let (success, _, stderr) = shoal(&cluster, &["registry", "remove", "9"]);
    assert!(!success && stderr.contains("not a member"), "{stderr}");
    fourth.terminate(Duration::from_secs(5));

    // Starting a node on a data directory that belongs to another id is refused.
    let node1_dir = cluster.node(1).data_dir.clone();
    let output = Command::new(binary())
        .args([
            "registry",
            "--id=7",
            "--listen=127.0.0.1:0",
            &format!("--data={}", node1_dir.display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second process took node 1's directory");
    assert!(
        stderr.contains("in use by another registry process") || stderr.contains("belongs to registry node 1"),
        "{stderr}"
    );

    cluster.stop_all(Duration::from_secs(5));
}

/// A client of one node that reads its local state (to see what that node holds).
fn local_client(address: &str) -> RegistryClient {
    RegistryClient::new([address.to_string()])
        .expect("valid address")
        .with_deadline(Duration::from_secs(2))
        .with_local_reads()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_add_then_remove_the_leader() {
    let mut cluster = RegistryCluster::start(&binary(), 3, &[]).await.expect("cluster starts");
    let admin = cluster.client();
    ok(&cluster, &["volume", "create", "kept", "--replicas", "1"]);
    let volume = admin
        .get_volume(pb::VolumeName { name: "kept".into() })
        .await
        .expect("volume exists");
    admin
        .mkdir(pb::MkdirRequest {
            volume_id: volume.id,
            parent: 1,
            name: b"hello".to_vec().into(),
            mode: 0o755,
            ..Default::default()
        })
        .await
        .expect("mkdir");

    // A fourth node started empty (neither --init nor --join) waits to be added.
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let args: Vec<String> = vec![
        "registry".into(),
        "--id=4".into(),
        format!("--listen={address}"),
        format!("--data={}", cluster.root().join("registry-4").display()),
    ];
    let mut fourth = Process::spawn("registry-4", &binary(), &args, &cluster.root().join("registry-4.log")).unwrap();
    let fourth_local = local_client(&address);
    wait_for("node 4 to serve", Duration::from_secs(30), || async {
        fourth_local.status(pb::Empty {}).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fourth.log()));
    let (success, added, stderr) = shoal(&cluster, &["registry", "add", "4", &address]);
    assert!(success, "registry add failed: {stderr}\n{}", fourth.log());
    assert!(added.contains(&address), "{added}");
    let members = json(&cluster, &["registry", "members", "--json"]);
    let voter = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["node_id"] == 4 && m["role"] == "voter" && m["address"] == address.as_str());
    assert!(voter, "node 4 is not a voter: {members}");

    // Node 4 holds the data: it has applied what the leader has, and serves it itself.
    let target = admin.status(pb::Empty {}).await.expect("status").last_applied_index;
    let status = wait_for("node 4 to apply the leader's log", Duration::from_secs(30), || async {
        let status = fourth_local.status(pb::Empty {}).await.ok()?;
        (status.last_applied_index >= target).then_some(status)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fourth.log()));
    assert!(status.local_read && status.node_id == 4, "{status:?}");
    let served = fourth_local
        .lookup(volume.id, 1, b"hello")
        .await
        .expect("node 4 serves a lookup");
    assert_eq!(served.file_type, pb::FileType::Directory as i32);
    assert_eq!(
        fourth_local
            .get_volume(pb::VolumeName { name: "kept".into() })
            .await
            .expect("node 4 knows the volume")
            .id,
        volume.id
    );

    // Remove the leader itself; the others elect a new one and writes go on.
    let all = format!("{},{address}", cluster.registry_arg());
    let leader = json(&cluster, &["status", "--json"])["leader_id"]
        .as_u64()
        .expect("a leader");
    let leader_address = cluster.node(leader).address.clone();
    let (success, removed, stderr) = shoal_at(&all, &["registry", "remove", &leader.to_string()]);
    assert!(success, "removing the leader failed: {stderr}");
    assert!(!removed.contains(&leader_address), "{removed}");
    // A removed leader keeps leading until the change is committed, then hands over
    // (openraft's removed_leader_step_down, 150 ms by default).
    let survivors = RegistryClient::new(all.split(',')).expect("valid addresses");
    let new_leader = wait_for(
        "a leader other than the removed one",
        Duration::from_secs(10),
        || async {
            let leader_id = survivors.status(pb::Empty {}).await.ok()?.leader_id?;
            (leader_id != leader).then_some(leader_id)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    ok_at(&all, &["volume", "create", "after-removal", "--replicas", "1"]);
    let status: serde_json::Value = serde_json::from_str(&ok_at(&all, &["status", "--json"])).expect("JSON");
    let leader_now = status["leader_id"].as_u64().expect("a leader after the removal");
    assert!(leader_now != leader && leader_now == new_leader, "{status}");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["node_id"] != leader), "{status}");
    let mut names: Vec<&str> = status["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["after-removal", "kept"], "{status}");
    println!("node 4 added with `registry add`; leader {leader} removed; node {new_leader} leads and takes writes");

    fourth.terminate(Duration::from_secs(5));
    cluster.stop_all(Duration::from_secs(5));
}

fn ok_at(registry: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = shoal_at(registry, args);
    assert!(success, "shoal {args:?} failed:\n{stderr}");
    stdout
}
