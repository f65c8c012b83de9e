//! `shoal-bench`: benchmarks that start real Shoal processes and print figures for
//! `bench/RESULTS.md`. Benchmarks measure; they never assert timing.

mod cleanup;
mod data;
mod faults;
mod fio;
mod fuse;
mod meta;
mod peers;
mod plot;
mod report;
mod scale_out;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shoal-bench", about = "Shoal benchmarks (see bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Registry metadata operations per second (create, stat, rename, unlink).
    Meta(meta::MetaArgs),
    /// Data path through the client library beside local disk: sequential 1 MiB write and
    /// read, 4 KiB random read, at replication 1 and 3.
    Data(data::DataArgs),
    /// The yardstick fio job set on Shoal FUSE mounts (1 and 3 copies) beside the FUSE
    /// ceiling (nullfs.c), a FUSE passthrough (bindfs) and the local disk.
    Fuse(fuse::FuseArgs),
    /// The mission's claim: aggregate fio throughput of 4 client hosts for 1, 2, 4 data
    /// services, each host in its own network namespace with a capped link, against a single
    /// entry point; plus the user-generated-content workload. Needs root.
    ScaleOut(scale_out::ScaleOutArgs),
    /// The yardstick fio job set on Shoal and on MooseFS, GlusterFS and JuiceFS (started by
    /// `bench/peers/*.sh`) in one run, with Shoal's ratio to the best peer per job.
    Peers(peers::PeersArgs),
    /// Jepsen-style fault injection: SIGKILLs, pauses and restarts of data services,
    /// registry nodes and mounts, and network partitions, while writers keep a model of
    /// every acknowledged byte; then every byte is read back. Needs root.
    Faults(faults::FaultArgs),
    /// One writer process of `faults` (started by it).
    #[command(hide = true)]
    FaultsWriter(faults::WriterArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::FaultsWriter(args) = cli.command {
        // Plain threads: a writer must never start another process (see faults::writers).
        return faults::run_writer(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Meta(args) => meta::run(args).await,
            Command::Data(args) => data::run(args).await,
            Command::Fuse(args) => fuse::run(args).await,
            Command::ScaleOut(args) => scale_out::run(args).await,
            Command::Peers(args) => peers::run(args).await,
            Command::Faults(args) => faults::run(args).await,
            Command::FaultsWriter(_) => unreachable!("run before the runtime starts"),
        }
    })
}
