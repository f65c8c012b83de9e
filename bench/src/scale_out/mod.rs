//! `shoal-bench scale-out`: the mission's claim, measured. A virtual cluster on one machine
//! (every data service and every client its own host, every host's link capped at the
//! same bandwidth B) runs fio on every client's FUSE mount at once, for 1, 2 and 4 data
//! services, twice: clients talking to the data services directly (Shoal), and clients
//! reaching every byte through one gateway host (the single entry point of NFS-style
//! designs). Then the user-generated-content workload on both. Tables go to
//! `bench/RESULTS.md`, charts to `bench/plots/`.

mod cluster;
pub(crate) mod lab;
mod load;
mod ugc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_testkit::shoal_binary;

use crate::{cleanup, plot, report};
use cluster::{Placement, VirtualCluster};
use load::{Aggregate, Sizes, Workload};

#[derive(clap::Args)]
pub struct ScaleOutArgs {
    /// Bandwidth of every host's link (each direction), MiB/s.
    #[arg(long, default_value_t = 50)]
    link_mib_per_second: u64,
    /// Data-service counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    data_services: Vec<usize>,
    /// Client (web) hosts, each with its own mount.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// MiB each client writes sequentially (and another client reads back).
    #[arg(long, default_value_t = 512)]
    file_mib: u64,
    /// Seconds of 4 KiB random reads.
    #[arg(long, default_value_t = 15)]
    random_seconds: u64,
    /// Seconds of the user-generated-content workload (0 skips it).
    #[arg(long, default_value_t = 30)]
    ugc_seconds: u64,
    /// Where the tables go (a marked section is replaced).
    #[arg(long, default_value_os_t = report::default_results_file())]
    results: PathBuf,
    /// Where the PNG charts go.
    #[arg(long, default_value_os_t = report::default_results_file().with_file_name("plots"))]
    plots: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Every client talks to every data service.
    Direct,
    /// Every client's data goes through one gateway host.
    SingleEntryPoint,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Direct => "Shoal (direct)",
            Mode::SingleEntryPoint => "single entry point",
        }
    }
}

struct Measured {
    mode: Mode,
    data_services: usize,
    workload: Workload,
    aggregate: Aggregate,
}

pub async fn run(args: ScaleOutArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients >= 2,
        "--clients must be at least 2 (uploads are read by other hosts)"
    );
    anyhow::ensure!(
        !args.data_services.is_empty() && args.data_services.iter().all(|&n| (1..=16).contains(&n)),
        "--data-services takes counts from 1 to 16"
    );
    anyhow::ensure!(
        args.link_mib_per_second > 0 && args.file_mib > 0,
        "sizes must be positive"
    );
    let binary = shoal_binary()?;
    cleanup::on_interrupt();
    let _guard = cleanup::Guard;
    let scratch = PathBuf::from(format!("/tmp/shoal-scale-out-{}", std::process::id()));
    cleanup::directory(scratch.clone());
    std::fs::create_dir_all(&scratch)?;

    continuous_writeback()?;
    let link_bytes_per_second = args.link_mib_per_second << 20;
    let max_data_services = *args.data_services.iter().max().expect("checked non-empty");
    let mut lab = lab::Lab::create(Some(link_bytes_per_second))?;
    let registry_host = lab.add_host("registry")?;
    let gateway_host = lab.add_host("gateway")?;
    let data_hosts = (1..=max_data_services)
        .map(|index| lab.add_host(&format!("data{index}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client_hosts = (1..=args.clients)
        .map(|index| lab.add_host(&format!("web{index}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sizes = Sizes {
        file_bytes: args.file_mib << 20,
        random_runtime: Duration::from_secs(args.random_seconds),
        random_jobs_per_client: 4,
    };

    let modes = [Mode::Direct, Mode::SingleEntryPoint];
    let ugc_runs = if args.ugc_seconds > 0 { modes.len() } else { 0 };
    let steps = args.data_services.len() * modes.len() * Workload::ALL.len() + ugc_runs;
    let progress = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    say(
        &progress,
        format!(
            "scale-out: {} client hosts, links capped at {} MiB/s, data services {:?}",
            args.clients, args.link_mib_per_second, args.data_services
        ),
    );
    let mut measured = Vec::new();
    let mut ugc_results = Vec::new();
    // Interleaved (direct, gateway, direct, …) so a noisy moment does not land on one mode.
    for &count in &args.data_services {
        for mode in modes {
            let placement = Placement {
                registry: &registry_host,
                data: &data_hosts[..count],
                gateway: (mode == Mode::SingleEntryPoint).then_some(&gateway_host),
                clients: &client_hosts,
            };
            progress.set_message(format!("{}, {count} data services: starting", mode.title()));
            let root = scratch.join(format!("{mode:?}-{count}"));
            let cluster = VirtualCluster::start(&binary, &root, &placement, "bench").await?;
            let mounts: Vec<PathBuf> = cluster.mounts.iter().map(|mount| mount.dir.clone()).collect();
            let outcome = (|| {
                for workload in Workload::ALL {
                    progress.set_message(format!("{}, {count} data services: {}", mode.title(), workload.title()));
                    let aggregate = load::run(workload, &mounts, &sizes, &scratch)?;
                    say(
                        &progress,
                        format!(
                            "{:<20} {count} data services  {:<26} {:>7.1} MiB/s {:>9.0} IOPS  CPU {:>3.0}% busy",
                            mode.title(),
                            workload.title(),
                            aggregate.mib_per_second,
                            aggregate.iops,
                            aggregate.cpu_busy_percent
                        ),
                    );
                    measured.push(Measured {
                        mode,
                        data_services: count,
                        workload,
                        aggregate,
                    });
                    progress.inc(1);
                }
                if args.ugc_seconds > 0 && count == max_data_services {
                    progress.set_message(format!("{}: user-generated content", mode.title()));
                    let result = ugc::run(&mounts, Duration::from_secs(args.ugc_seconds))?;
                    say(
                        &progress,
                        format!(
                            "{:<20} uploads {:.1}/s ({:.1} MiB/s), reads {:.1}/s, read p50 {:.0} ms p99 {:.0} ms",
                            mode.title(),
                            result.uploads_per_second,
                            result.upload_mib_per_second,
                            result.reads_per_second,
                            result.read_p50_ms,
                            result.read_p99_ms
                        ),
                    );
                    ugc_results.push((mode, result));
                    progress.inc(1);
                }
                Ok::<(), anyhow::Error>(())
            })();
            if let Err(error) = outcome {
                let logs = cluster.logs();
                cluster.stop();
                return Err(error.context(logs));
            }
            cluster.stop();
        }
    }
    progress.finish_with_message("done");

    let markdown = tables(&args, &measured, &ugc_results);
    println!("\n{markdown}");
    std::fs::create_dir_all(&args.plots)?;
    for workload in Workload::ALL {
        charts(&args, &measured, workload)?;
    }
    report::replace_section(&args.results, "scale-out", &markdown)?;
    eprintln!(
        "tables written to {}, charts to {}",
        args.results.display(),
        args.plots.display()
    );
    Ok(())
}

/// Dirty page cache the kernel lets build up before it starts writing back, during the run.
const DIRTY_BACKGROUND_BYTES: u64 = 64 << 20;

/// Makes the kernel write dirty pages back as they come (restored at the end of the run).
///
/// Why: by default (10% of RAM) the data services' whole 2 GiB stays dirty until the
/// final fsync, and then four "hosts" flush it through this machine's one disk at once, a
/// cost that real hosts with their own disks never share. Writing back continuously, as a
/// busy server does, keeps the measurement about the links.
fn continuous_writeback() -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<u64> {
        let path = format!("/proc/sys/vm/{name}");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?)
    };
    let (bytes, ratio) = (read("dirty_background_bytes")?, read("dirty_background_ratio")?);
    // Setting one of the pair clears the other, so the one in use is what is restored.
    let restore = if bytes > 0 {
        format!("vm.dirty_background_bytes={bytes}")
    } else {
        format!("vm.dirty_background_ratio={ratio}")
    };
    cleanup::undo_command("sysctl", vec!["-q".into(), "-w".into(), restore]);
    std::fs::write(
        "/proc/sys/vm/dirty_background_bytes",
        DIRTY_BACKGROUND_BYTES.to_string(),
    )
    .context("setting vm.dirty_background_bytes")
}

/// A line above the progress bar, or on stderr when there is no bar (not a terminal).
fn say(progress: &ProgressBar, line: String) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}

fn figure(measured: &[Measured], mode: Mode, count: usize, workload: Workload) -> Option<Aggregate> {
    measured
        .iter()
        .find(|m| m.mode == mode && m.data_services == count && m.workload == workload)
        .map(|m| m.aggregate)
}

/// The figure a chart and a table show for `workload`: MiB/s, or IOPS for random reads.
fn value(workload: Workload, aggregate: Aggregate) -> f64 {
    match workload {
        Workload::RandomRead4k => aggregate.iops,
        _ => aggregate.mib_per_second,
    }
}

/// The best any design can do: each data service's link (and each client's) carries B.
fn ideal_mib_per_second(args: &ScaleOutArgs, count: usize) -> f64 {
    (count.min(args.clients) as u64 * args.link_mib_per_second) as f64
}

fn tables(args: &ScaleOutArgs, measured: &[Measured], ugc_results: &[(Mode, ugc::UgcResult)]) -> String {
    let b = args.link_mib_per_second;
    let mut out = format!(
        "### Scale-out: {} client hosts, every host link capped at B = {b} MiB/s, 1 copy\n\n\
         `bench/scale-out` (= `shoal-bench scale-out --link-mib-per-second {b} --file-mib {}`). Aggregate over all \
         client hosts = bytes (or requests) moved / wall-clock time of the whole phase. Charts: \
         `bench/plots/scale-out-*.png`.\n\n",
        args.clients, args.file_mib
    );
    out.push_str(
        "| data services | seq write MiB/s: Shoal | single entry point | ideal N×B | seq read MiB/s: Shoal | single entry point | ideal N×B | 4 KiB rand read IOPS: Shoal | single entry point |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cell = |mode, count, workload| {
        figure(measured, mode, count, workload).map_or("–".to_string(), |a| format!("{:.0}", value(workload, a)))
    };
    for &count in &args.data_services {
        let ideal = ideal_mib_per_second(args, count);
        out.push_str(&format!(
            "| {count} | {} | {} | {ideal:.0} | {} | {} | {ideal:.0} | {} | {} |\n",
            cell(Mode::Direct, count, Workload::SequentialWrite),
            cell(Mode::SingleEntryPoint, count, Workload::SequentialWrite),
            cell(Mode::Direct, count, Workload::SequentialRead),
            cell(Mode::SingleEntryPoint, count, Workload::SequentialRead),
            cell(Mode::Direct, count, Workload::RandomRead4k),
            cell(Mode::SingleEntryPoint, count, Workload::RandomRead4k),
        ));
    }
    let (low, high) = (
        *args.data_services.iter().min().expect("non-empty"),
        *args.data_services.iter().max().expect("non-empty"),
    );
    out.push('\n');
    for workload in Workload::ALL {
        let scale = |mode| {
            let first = figure(measured, mode, low, workload).map(|a| value(workload, a))?;
            let last = figure(measured, mode, high, workload).map(|a| value(workload, a))?;
            Some(last / first)
        };
        let most_single = args
            .data_services
            .iter()
            .filter_map(|&count| figure(measured, Mode::SingleEntryPoint, count, workload))
            .map(|a| a.mib_per_second)
            .fold(0.0f64, f64::max);
        if let (Some(direct), Some(single)) = (scale(Mode::Direct), scale(Mode::SingleEntryPoint)) {
            out.push_str(&format!(
                "- {}: {high} data services / {low} = **{direct:.2}x** for Shoal ({:.0}% of linear), \
                 {single:.2}x for the single entry point (at most {most_single:.1} MiB/s, B = {b})\n",
                workload.title(),
                100.0 * direct / (high as f64 / low as f64),
            ));
        }
    }
    if !ugc_results.is_empty() {
        out.push_str(&format!(
            "\n#### User-generated content: {} web hosts upload files of 64 KiB–4 MiB (log-uniform) into one volume \
             while the others read each upload back ({} s, {} data services; every read checked by CRC32)\n\n\
             | design | uploads/s | upload MiB/s | upload p50 / p99 ms | reads/s | read MiB/s | read p50 / p99 ms |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            args.clients,
            args.ugc_seconds,
            args.data_services.iter().max().expect("non-empty"),
        ));
        for (mode, r) in ugc_results {
            out.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} | {:.1} | {:.0} / {:.0} |\n",
                mode.title(),
                r.uploads_per_second,
                r.upload_mib_per_second,
                r.upload_p50_ms,
                r.upload_p99_ms,
                r.reads_per_second,
                r.read_mib_per_second,
                r.read_p50_ms,
                r.read_p99_ms
            ));
        }
    }
    out
}

fn charts(args: &ScaleOutArgs, measured: &[Measured], workload: Workload) -> anyhow::Result<()> {
    let series_of = |mode: Mode| plot::Series {
        label: mode.title().to_string(),
        points: args
            .data_services
            .iter()
            .filter_map(|&count| figure(measured, mode, count, workload).map(|a| (count as f64, value(workload, a))))
            .collect(),
        reference: false,
    };
    let mut series = vec![series_of(Mode::Direct), series_of(Mode::SingleEntryPoint)];
    let y_label = if workload == Workload::RandomRead4k {
        "aggregate IOPS"
    } else {
        series.push(plot::Series {
            label: format!("ideal: N x B (B = {} MiB/s)", args.link_mib_per_second),
            points: args
                .data_services
                .iter()
                .map(|&count| (count as f64, ideal_mib_per_second(args, count)))
                .collect(),
            reference: true,
        });
        "aggregate MiB/s"
    };
    let path = args.plots.join(format!("scale-out-{}.png", workload.short()));
    plot::line_chart(
        &path,
        &format!("{}, {} client hosts", workload.title(), args.clients),
        "data services",
        y_label,
        &series,
    )
    .context("drawing the scale-out charts")
}
