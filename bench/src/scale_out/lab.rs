//! A virtual network of hosts on one machine: each host is a network namespace joined to
//! one bridge by a veth pair, and each host's link is capped to the same bandwidth in both
//! directions (tc tbf on both ends of its veth). The machine itself sits on the bridge too
//! (the harness reaches the registry and reads no bulk data), and traffic never leaves it.
//!
//! Invariant: every namespace, link and process is recorded in [`crate::cleanup`] before it
//! is made, and names carry this process's id, so a run killed with SIGKILL is swept by
//! the next one ([`sweep_leftovers`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use shoal_testkit::Process;

use crate::cleanup;

/// How long a process on a host gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Every lab name starts with this, then this process's id.
const PREFIX: &str = "shb";
/// The lab's subnet (a /24); the machine takes .254 on the bridge.
const SUBNET: [u8; 3] = [10, 213, 0];
const MACHINE_HOST_BYTE: u8 = 254;
/// Hosts per lab: the /24 minus the machine's address, with room to spare.
pub const MAX_HOSTS: usize = 200;

pub struct Lab {
    prefix: String,
    bridge: String,
    /// The cap of every host's link; `None`: uncapped.
    link_bytes_per_second: Option<u64>,
    hosts: usize,
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The machine's end of the host's veth pair: down, the host is cut off.
    pub link: String,
}

impl Host {
    pub fn address(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (apt-get install iproute2 util-linux)"))?;
    anyhow::ensure!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The process id in a lab name (`shb<pid>…`), if it is one.
fn owner(name: &str) -> Option<u32> {
    let digits: String = name
        .strip_prefix(PREFIX)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Removes namespaces and bridges left by lab runs whose process is gone (killed with
/// SIGKILL, so their cleanup never ran).
pub fn sweep_leftovers() {
    let listed = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).to_string())
            .unwrap_or_default()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if owner(name).is_some_and(|pid| !process_alive(pid)) {
            eprintln!("removing namespace {name} left by an earlier run");
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
    for line in listed(&["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        if owner(name).is_some_and(|pid| !process_alive(pid)) {
            eprintln!("removing bridge {name} left by an earlier run");
            let _ = run("ip", &["link", "delete", name]);
        }
    }
}

impl Lab {
    /// Creates the bridge; hosts are added with [`Lab::add_host`]. Every host's link is
    /// capped at `link_bytes_per_second` each way (`None`: not capped).
    pub fn create(link_bytes_per_second: Option<u64>) -> anyhow::Result<Lab> {
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "the lab needs root (network namespaces, tc, FUSE mounts)"
        );
        assert!(link_bytes_per_second != Some(0), "a link cap is positive");
        sweep_leftovers();
        let subnet = format!("{}.{}.{}.", SUBNET[0], SUBNET[1], SUBNET[2]);
        let addresses = Command::new("ip").args(["-o", "addr"]).output()?;
        anyhow::ensure!(
            !String::from_utf8_lossy(&addresses.stdout).contains(&format!(" {subnet}")),
            "{subnet}0/24 is already in use on this machine (another scale-out run?)"
        );
        let prefix = format!("{PREFIX}{}", std::process::id());
        let bridge = format!("{prefix}br");
        cleanup::link(&bridge);
        // Bridged frames skip the host's firewall hooks: the lab has no rules to apply, and
        // br_netfilter would charge every packet for nothing.
        run(
            "ip",
            &[
                "link",
                "add",
                &bridge,
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
                "nf_call_ip6tables",
                "0",
                "nf_call_arptables",
                "0",
            ],
        )?;
        let machine = format!("{subnet}{MACHINE_HOST_BYTE}/24");
        run("ip", &["addr", "add", &machine, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(Lab {
            prefix,
            bridge,
            link_bytes_per_second,
            hosts: 0,
        })
    }

    /// A new host named `name`: its namespace, its capped link to the bridge, an address.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        anyhow::ensure!(self.hosts < MAX_HOSTS, "a lab holds at most {MAX_HOSTS} hosts");
        self.hosts += 1;
        let index = self.hosts;
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index as u8);
        let namespace = format!("{}-{name}", self.prefix);
        // Interface names are at most 15 bytes: number the machine's ends.
        let outer = format!("{}h{index}", self.prefix);
        anyhow::ensure!(outer.len() <= 15, "interface name {outer} is too long");
        cleanup::namespace(&namespace);
        run("ip", &["netns", "add", &namespace])?;
        cleanup::link(&outer);
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ],
        )?;
        run("ip", &["link", "set", &outer, "master", &self.bridge, "up"])?;
        let address = format!("{ip}/24");
        run("ip", &["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
        run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        // The cap: the host's sends leave through eth0, its receives through the outer end.
        if let Some(link_bytes_per_second) = self.link_bytes_per_second {
            let (rate, burst) = tbf_parameters(link_bytes_per_second);
            let tbf = ["root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms"];
            let mut inner_args = vec!["-n", &namespace, "qdisc", "add", "dev", "eth0"];
            inner_args.extend(tbf);
            run("tc", &inner_args)?;
            let mut outer_args = vec!["qdisc", "add", "dev", &outer];
            outer_args.extend(tbf);
            run("tc", &outer_args)?;
        }
        Ok(Host {
            name: name.to_string(),
            namespace,
            ip,
            link: outer,
        })
    }

    /// Cuts `host` off the network (a partition of it from every other host), or with
    /// `connected`, joins it again.
    /// (The host's link is taken off the bridge and put back; it stays up throughout.)
    pub fn connect(&self, host: &Host, connected: bool) -> anyhow::Result<()> {
        if connected {
            run("ip", &["link", "set", &host.link, "master", &self.bridge])
        } else {
            run("ip", &["link", "set", &host.link, "nomaster"])
        }
    }
}

/// tbf's rate in bits per second and its bucket in bytes: 20 ms of traffic, at least
/// 128 KiB so a 64 KiB GSO packet always fits.
fn tbf_parameters(link_bytes_per_second: u64) -> (String, String) {
    let rate = format!("{}bit", link_bytes_per_second * 8);
    let burst_bytes = (link_bytes_per_second / 50).max(128 << 10);
    (rate, format!("{burst_bytes}b"))
}

/// The last `lines` lines of every `*.log` file in `dir`, for an error report.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!("---- {}\n{}\n", path.display(), tail.join("\n")));
        }
    }
    out
}

/// A process on a lab host (its network namespace; the machine's mounts and files),
/// recorded for the interrupt handler while it runs.
pub struct HostProcess {
    process: Process,
}

impl HostProcess {
    pub fn start(host: &Host, name: &str, binary: &Path, args: &[String], log: &Path) -> anyhow::Result<HostProcess> {
        // nsenter enters the namespace and execs the program: the pid is the program's.
        let mut full = vec![format!("--net=/run/netns/{}", host.namespace), "--".into()];
        full.push(binary.display().to_string());
        full.extend(args.iter().cloned());
        let process = Process::spawn(name, Path::new("nsenter"), &full, log)?;
        if let Some(pid) = process.pid() {
            cleanup::process(name, pid);
        }
        Ok(HostProcess { process })
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let pid = self.process.pid();
        self.process.terminate(STOP_GRACE);
        if let Some(pid) = pid {
            cleanup::forget_process(pid);
        }
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let pid = self.process.pid();
        self.process.kill();
        if let Some(pid) = pid {
            cleanup::forget_process(pid);
        }
    }

    /// SIGSTOP (`paused`) or SIGCONT.
    pub fn pause(&self, paused: bool) -> anyhow::Result<()> {
        let pid = self
            .process
            .pid()
            .ok_or_else(|| anyhow::anyhow!("process has exited"))?;
        let signal = if paused { Signal::SIGSTOP } else { Signal::SIGCONT };
        kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_read_from_lab_names_only() {
        assert_eq!(owner("shb1234-ds1"), Some(1234));
        assert_eq!(owner("shb77br"), Some(77));
        assert_eq!(owner("shbx-ds1"), None);
        assert_eq!(owner("docker0"), None);
    }
}
