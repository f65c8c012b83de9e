//! `shoal gateway` and `-o gateway=`: a mount whose data traffic all goes through one relay
//! host. The bytes it writes arrive intact (read back without the gateway); the gateway
//! refuses to relay to anything but the cluster's data services; and with the gateway gone
//! the mount fails with EIO rather than quietly going around it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{MountSpec, MountedCluster, Process, free_port, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Sends `request` to the gateway and returns its reply's status line.
fn ask(gateway: &str, request: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(gateway)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") && reply.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_string())
}

fn pattern(size_bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..size_bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_through_the_gateway_moves_every_byte_through_it() {
    let gateway = format!("127.0.0.1:{}", free_port().expect("free port"));
    let gateway_option = format!("gateway={gateway}");
    let spec = MountSpec {
        volume: "via-gateway",
        data_services: 2,
        replicas: 2,
        options: &[&gateway_option, "retry_timeout=3"],
        ..Default::default()
    };
    let setup = MountedCluster::start(&binary(), spec).await.expect("cluster and mount");
    let registry = setup.cluster.registry.registry_arg();
    let log = setup.cluster.registry.root().join("gateway.log");
    let mut relay = Process::spawn(
        "gateway",
        &binary(),
        &[
            "gateway".into(),
            format!("--listen={gateway}"),
            format!("--registry={registry}"),
        ],
        &log,
    )
    .expect("start the gateway");
    let result = async {
        wait_for("the gateway to listen", Duration::from_secs(20), || {
            let up = TcpStream::connect(&gateway).is_ok();
            async move { up.then_some(()) }
        })
        .await?;

        // 24 MiB through the mount, read back without the gateway by the CLI.
        let data = pattern(24 << 20, 7);
        std::fs::write(setup.mount.path("big"), &data)?;
        let output = Command::new(binary())
            .args(["cat", "shoal://via-gateway/big", &format!("--registry={registry}")])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "shoal cat: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        anyhow::ensure!(output.stdout == data, "the file read without the gateway differs");
        let addresses: Vec<String> = setup
            .cluster
            .data
            .iter()
            .map(|service| service.address.clone())
            .collect();
        let relayed = relay.log();
        for address in &addresses {
            anyhow::ensure!(
                relayed.contains(&format!("tunnel opened to {address}")),
                "no tunnel to {address} in the gateway's log:\n{relayed}"
            );
        }

        // Not an open proxy: only the cluster's data services, only CONNECT.
        let refused = ask(
            &gateway,
            &format!("CONNECT {} HTTP/1.1\r\n\r\n", setup.cluster.registry.addresses()[0]),
        )?;
        anyhow::ensure!(
            refused.starts_with("HTTP/1.1 403"),
            "CONNECT to the registry: {refused:?}"
        );
        let refused = ask(&gateway, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")?;
        anyhow::ensure!(
            refused.starts_with("HTTP/1.1 403"),
            "CONNECT to a closed port: {refused:?}"
        );
        let refused = ask(&gateway, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        anyhow::ensure!(refused.starts_with("HTTP/1.1 405"), "GET: {refused:?}");
        let accepted = ask(&gateway, &format!("CONNECT {} HTTP/1.1\r\n\r\n", addresses[0]))?;
        anyhow::ensure!(
            accepted.starts_with("HTTP/1.1 200"),
            "CONNECT to a data service: {accepted:?}"
        );

        // Without the gateway the mount cannot move data: writes fail (EIO) within the
        // retry deadline instead of bypassing it.
        relay.kill();
        // (fsync reports it: close errors are lost by Rust's File.)
        let written = std::fs::File::create(setup.mount.path("after"))
            .and_then(|mut file| file.write_all(&pattern(4 << 20, 8)).and_then(|()| file.sync_all()));
        let error = written
            .err()
            .ok_or_else(|| anyhow::anyhow!("a write succeeded with the gateway down"))?;
        anyhow::ensure!(error.raw_os_error() == Some(libc::EIO), "expected EIO, got {error}");
        Ok(())
    }
    .await;
    let relayed = relay.log();
    relay.kill();
    setup.finish(result.map_err(|error| error.context(format!("---- gateway log\n{relayed}"))));
}
