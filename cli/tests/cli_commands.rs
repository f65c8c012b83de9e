//! The `shoal` command as an operator uses it: status (table and JSON), volumes, and
//! growing and shrinking the registry at run time with `--join` and `registry remove`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{Process, RegistryCluster, free_port, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Runs `shoal ARGS` against the cluster; returns (success, stdout, stderr).
fn shoal(cluster: &RegistryCluster, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env("SHOAL_REGISTRY", cluster.registry_arg())
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
