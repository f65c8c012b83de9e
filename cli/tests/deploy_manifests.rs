//! `deploy/`'s Kubernetes manifests agree with the code and with the Kubernetes API:
//!
//! - every manifest validates against the API schemas offline (`kubernetes-validate
//!   --strict`, installed by `scripts/dev test`);
//! - every `shoal` container's arguments are accepted by the binary (run with `--help`
//!   appended: clap rejects unknown flags, malformed values and conflicts before it prints
//!   help), with `$(VAR)` expanded from the container's environment as kubelet does;
//! - the driver name, socket paths, kubelet directory, health ports, registry addresses and
//!   StorageClass parameters are the same everywhere they appear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// The manifest files Kubernetes is given (the kustomization is not one).
fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["deploy/kubernetes", "deploy/examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("deploy directory") {
            let path = entry.expect("entry").path();
            let yaml = path.extension().is_some_and(|e| e == "yaml");
            if yaml && path.file_name().is_some_and(|n| n != "kustomization.yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    fn load() -> Manifests {
        let mut objects = Vec::new();
        for file in manifest_files() {
            let text = std::fs::read_to_string(&file).expect("manifest");
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if !value.is_null() {
                    objects.push(value);
                }
            }
        }
        Manifests { objects }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"].as_str() == Some(kind))
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }
}

use serde::Deserialize;

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().map(text).collect())
        .unwrap_or_default()
}

/// A flag's value in an argument list (`--flag=value`).
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The host path a container path lies on, through the container's hostPath mounts.
fn host_path(workload: &Value, container: &Value, path: &str) -> Option<String> {
    let volumes = workload["spec"]["template"]["spec"]["volumes"].as_sequence()?;
    container["volumeMounts"].as_sequence()?.iter().find_map(|mount| {
        let mount_path = mount["mountPath"].as_str()?;
        let rest = Path::new(path).strip_prefix(mount_path).ok()?;
        let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
        let host = volume["hostPath"]["path"].as_str()?;
        let joined = match rest.as_os_str().is_empty() {
            true => PathBuf::from(host),
            false => Path::new(host).join(rest),
        };
        Some(joined.to_string_lossy().into_owned())
    })
}

/// The volume mounted at `mount_path`, with its propagation.
fn mount_propagation(container: &Value, mount_path: &str) -> Option<String> {
    container["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(mount_path))
        .and_then(|m| m["mountPropagation"].as_str().map(str::to_string))
}

/// A container's environment as kubelet would give it: its `env` (downward-API fields get
/// a sample value of the right shape) and the ConfigMaps of `envFrom`.
fn environment(manifests: &Manifests, container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().expect("configMapRef");
        let map = manifests.named("ConfigMap", name);
        for (key, value) in map["data"].as_mapping().expect("data") {
            env.insert(text(key), text(value));
        }
    }
    for variable in container["env"].as_sequence().into_iter().flatten() {
        let name = text(&variable["name"]);
        let value = match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "shoal-x-0".to_string(),
            Some("spec.nodeName") => "node-a".to_string(),
            Some("metadata.labels['apps.kubernetes.io/pod-index']") => "0".to_string(),
            Some(other) => panic!("no sample value for the field {other}"),
            None => text(&variable["value"]),
        };
        env.insert(name, value);
    }
    env
}

/// `$(VAR)` replaced from `env`, as kubelet expands container arguments.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    env.iter().fold(arg.to_string(), |arg, (key, value)| {
        arg.replace(&format!("$({key})"), value)
    })
}

fn shoal_containers(manifests: &Manifests) -> Vec<(&Value, &Value)> {
    let workloads = ["Deployment", "StatefulSet", "DaemonSet"];
    manifests
        .objects
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| workloads.contains(&k)))
        .flat_map(|workload| {
            workload["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter(|c| c["image"].as_str().is_some_and(|i| i.starts_with("shoal:")))
                .map(move |c| (workload, c))
        })
        .collect()
}

#[test]
fn every_manifest_validates_against_the_kubernetes_api() {
    let validator = std::env::var_os("SHOAL_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubernetes-validate"));
    let output = Command::new(&validator)
        .arg("--strict")
        .args(manifest_files())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}); `scripts/dev test` installs it, or `pip install kubernetes-validate`",
                validator.display()
            )
        });
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubernetes-validate --strict failed:\n{report}"
    );
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        Manifests::load().objects.len(),
        "every object was checked:\n{report}"
    );
}

#[test]
fn the_kustomization_names_every_manifest() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    let kustomization: Value = serde_yaml::from_str(&text).unwrap();
    let mut listed = strings(&kustomization["resources"]);
    listed.sort();
    let mut present: Vec<String> = manifest_files()
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("kubernetes")))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

#[test]
fn every_shoal_container_runs_with_arguments_the_binary_accepts() {
    let manifests = Manifests::load();
    let containers = shoal_containers(&manifests);
    assert!(containers.len() >= 5, "registry, data, controller, node plugin, agent");
    for (workload, container) in containers {
        let env = environment(&manifests, container);
        let args: Vec<String> = strings(&container["args"]).iter().map(|a| expand(a, &env)).collect();
        assert!(
            args.iter().all(|a| !a.contains("$(")),
            "an unexpanded variable: {args:?}"
        );
        let output = Command::new(binary())
            .args(&args)
            .arg("--help")
            .env_clear()
            .envs(&env)
            .output()
            .expect("run shoal");
        assert!(
            output.status.success(),
            "{} / {}: `shoal {}` is refused:\n{}",
            workload["metadata"]["name"].as_str().unwrap_or("?"),
            container["name"].as_str().unwrap_or("?"),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn names_sockets_and_directories_agree() {
    let manifests = Manifests::load();
    let driver = shoal_csi::DRIVER_NAME;
    let csi_driver = manifests.named("CSIDriver", driver);
    assert_eq!(csi_driver["spec"]["attachRequired"], Value::Bool(false));
    assert_eq!(
        csi_driver["spec"]["fsGroupPolicy"].as_str(),
        Some("None"),
        "no recursive chown of RWX volumes"
    );
    let class = manifests.of_kind("StorageClass").next().expect("a StorageClass");
    assert_eq!(class["provisioner"].as_str(), Some(driver));
    assert_eq!(class["allowVolumeExpansion"], Value::Bool(true));
    let parameters: std::collections::HashMap<String, String> = class["parameters"]
        .as_mapping()
        .expect("parameters")
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    shoal_csi::params::VolumeParams::parse(&parameters).expect("the StorageClass parameters are accepted");
    let claim = manifests
        .of_kind("PersistentVolumeClaim")
        .next()
        .expect("the example's claim");
    assert_eq!(claim["spec"]["storageClassName"], class["metadata"]["name"]);
    assert_eq!(strings(&claim["spec"]["accessModes"]), ["ReadWriteMany"]);
    let web = manifests.named("Deployment", "web");
    assert!(
        web["spec"]["replicas"].as_u64().unwrap() > 1,
        "several replicas share the claim"
    );

    node_sockets_agree(&manifests, driver);
    controller_sockets_agree(&manifests);
    registry_addresses_agree(&manifests);
}

fn socket_path(endpoint: &str) -> String {
    shoal_client::unix::endpoint_path(endpoint)
        .to_string_lossy()
        .into_owned()
}

fn health_port_matches(workload: &Value, probe_sidecar: &Value, plugin: &Value) {
    let port = flag(&strings(&probe_sidecar["args"]), "health-port").expect("--health-port");
    let named = plugin["livenessProbe"]["httpGet"]["port"]
        .as_str()
        .expect("a named probe port");
    let declared = plugin["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(named))
        .map(|p| text(&p["containerPort"]));
    assert_eq!(
        declared,
        Some(port),
        "{:?}: the liveness probe asks the probe sidecar's port",
        workload["metadata"]["name"]
    );
}

fn node_sockets_agree(manifests: &Manifests, driver: &str) {
    let node = manifests.named("DaemonSet", "shoal-csi-node");
    let plugin = container(node, "shoal-csi-node");
    let args = strings(&plugin["args"]);
    let socket = socket_path(&flag(&args, "endpoint").expect("--endpoint"));
    let registrar = container(node, "node-driver-registrar");
    let registrar_args = strings(&registrar["args"]);
    assert_eq!(flag(&registrar_args, "csi-address").as_deref(), Some(socket.as_str()));
    let registered = flag(&registrar_args, "kubelet-registration-path").expect("registration path");
    assert_eq!(registered, format!("/var/lib/kubelet/plugins/{driver}/csi.sock"));
    assert_eq!(
        host_path(node, plugin, &socket),
        Some(registered),
        "kubelet finds the plugin's socket"
    );
    let probe = container(node, "liveness-probe");
    assert_eq!(
        flag(&strings(&probe["args"]), "csi-address").as_deref(),
        Some(socket.as_str())
    );
    health_port_matches(node, probe, plugin);

    let kubelet_dir = flag(&args, "kubelet-dir").expect("--kubelet-dir");
    assert_eq!(
        host_path(node, plugin, &kubelet_dir).as_deref(),
        Some("/var/lib/kubelet")
    );
    assert_eq!(
        mount_propagation(plugin, &kubelet_dir).as_deref(),
        Some("Bidirectional")
    );

    let agent_set = manifests.named("DaemonSet", "shoal-agent");
    let agent = container(agent_set, "shoal-agent");
    let agent_args = strings(&agent["args"]);
    let agent_socket = flag(&agent_args, "socket").expect("--socket");
    let asked = flag(&args, "agent-socket").expect("--agent-socket");
    assert_eq!(
        host_path(node, plugin, &asked),
        host_path(agent_set, agent, &agent_socket),
        "the plugin asks the agent's socket"
    );
    assert!(
        host_path(agent_set, agent, &agent_socket).is_some(),
        "the agent's socket is on the host"
    );
    assert_eq!(
        host_path(agent_set, agent, &kubelet_dir).as_deref(),
        Some("/var/lib/kubelet")
    );
    assert_eq!(
        mount_propagation(agent, &kubelet_dir).as_deref(),
        Some("Bidirectional"),
        "the agent's mounts reach kubelet"
    );
    assert_eq!(host_path(agent_set, agent, "/dev/fuse").as_deref(), Some("/dev/fuse"));
    assert_eq!(
        agent_set["spec"]["updateStrategy"]["type"].as_str(),
        Some("OnDelete"),
        "an update must not restart the agent under running pods"
    );
}

fn controller_sockets_agree(manifests: &Manifests) {
    let controller = manifests.named("Deployment", "shoal-csi-controller");
    let plugin = container(controller, "shoal-csi-controller");
    let socket = socket_path(&flag(&strings(&plugin["args"]), "endpoint").expect("--endpoint"));
    for sidecar in ["csi-provisioner", "csi-resizer", "liveness-probe"] {
        let args = strings(&container(controller, sidecar)["args"]);
        assert_eq!(
            flag(&args, "csi-address").as_deref(),
            Some(socket.as_str()),
            "{sidecar}"
        );
    }
    health_port_matches(controller, container(controller, "liveness-probe"), plugin);
}

/// The ConfigMap's registry addresses are the registry StatefulSet's pods, and its --peer list.
fn registry_addresses_agree(manifests: &Manifests) {
    let config = manifests.named("ConfigMap", "shoal-config");
    let addresses: Vec<String> = text(&config["data"]["SHOAL_REGISTRY"])
        .split(',')
        .map(str::to_string)
        .collect();
    let registry = manifests.named("StatefulSet", "shoal-registry");
    let namespace = text(&registry["metadata"]["namespace"]);
    let service = text(&registry["spec"]["serviceName"]);
    let replicas = registry["spec"]["replicas"].as_u64().unwrap();
    let args = strings(&container(registry, "registry")["args"]);
    let port = flag(&args, "listen")
        .and_then(|l| l.rsplit(':').next().map(str::to_string))
        .unwrap();
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("shoal-registry-{i}.{service}.{namespace}.svc:{port}"))
        .collect();
    assert_eq!(addresses, expected);
    let peers: Vec<String> = args
        .iter()
        .filter(|a| a.contains('=') && !a.starts_with("--"))
        .cloned()
        .collect();
    let expected_peers: Vec<String> = expected
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    assert_eq!(
        peers, expected_peers,
        "peer ids are ordinal + 1, as --pod-index makes them"
    );
    let advertise = flag(&args, "advertise").unwrap();
    assert_eq!(advertise, format!("$(POD_NAME).{service}.{namespace}.svc:{port}"));
    let headless = manifests.named("Service", &service);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
}
