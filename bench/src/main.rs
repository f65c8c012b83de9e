//! `shoal-bench`: benchmarks that start real Shoal processes and print figures for
//! `bench/RESULTS.md`. Benchmarks measure; they never assert timing.

mod data;
mod fio;
mod fuse;
mod meta;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Meta(args) => meta::run(args).await,
            Command::Data(args) => data::run(args).await,
            Command::Fuse(args) => fuse::run(args).await,
        }
    })
}
