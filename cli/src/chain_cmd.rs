//! `shoal chain list|accept-loss`: the chain table, and the one decision an operator may
//! have to make about it.
//!
//! A chain whose every serving member failed waits until a member that holds every
//! acknowledged change returns; `shoal status` names the member it waits for. If that
//! member is gone for good, `accept-loss` resumes the chain from the best member still up,
//! and says which changes that gives up.

use shoal_proto::registry as pb;

use crate::{RegistryAddress, format};

#[derive(clap::Args)]
pub struct ChainCommand {
    #[command(subcommand)]
    action: ChainAction,
}

#[derive(clap::Subcommand)]
enum ChainAction {
    /// List the chains: members (head first; * = serving), missing members, and what a
    /// chain without a serving member waits for.
    List {
        #[command(flatten)]
        registry: RegistryAddress,
        #[arg(long)]
        json: bool,
    },
    /// Resume a waiting chain from the best member still up, giving up the changes only
    /// its missing members hold. Logged by the registry.
    AcceptLoss {
        chain_id: u64,
        /// Confirms that the changes named in the reply may be lost.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        registry: RegistryAddress,
    },
}

pub fn chain_json(chain: &pb::Chain) -> serde_json::Value {
    serde_json::json!({
        "id": chain.id,
        "version": chain.version,
        "replicas": chain.replicas,
        "targets": chain.targets.iter().map(|t| serde_json::json!({
            "data_service_id": t.data_service_id, "serving": t.serving,
        })).collect::<Vec<_>>(),
        "missing": chain.missing,
        "waiting_for": chain.waiting_for,
        "suspect": chain.suspect,
        "loss_epoch": chain.loss_epoch,
    })
}

/// One line about a chain that serves nobody, saying what it waits for.
pub fn waiting_line(chain: &pb::Chain) -> Option<String> {
    if chain.targets.iter().any(|t| t.serving) || chain.targets.is_empty() && chain.missing.is_empty() {
        return None;
    }
    Some(if chain.waiting_for.is_empty() {
        format!(
            "chain {} serves nobody and no member with every acknowledged change is left; \
             `shoal chain accept-loss {}` resumes it from the best member up",
            chain.id, chain.id
        )
    } else {
        format!(
            "chain {} waits for data service {} (the members with every acknowledged change); \
             start it, or give up its changes with `shoal chain accept-loss {}`",
            chain.id,
            ids(&chain.waiting_for),
            chain.id
        )
    })
}

fn ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" or ")
}

impl ChainCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            ChainAction::List { registry, json } => {
                let table = registry.client()?.get_chain_table(pb::Empty {}).await?;
                if json {
                    let chains: Vec<_> = table.chains.iter().map(chain_json).collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "version": table.version, "chains": chains,
                        }))?
                    );
                    return Ok(());
                }
                let mut out = format::table(&["chain", "version", "copies", "members", "missing", "loss epoch"]);
                for chain in &table.chains {
                    let members = chain
                        .targets
                        .iter()
                        .map(|t| format!("{}{}", t.data_service_id, if t.serving { "*" } else { "" }))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let missing = chain.missing.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
                    out.add_row(vec![
                        chain.id.to_string(),
                        chain.version.to_string(),
                        chain.replicas.to_string(),
                        members,
                        missing,
                        chain.loss_epoch.to_string(),
                    ]);
                }
                println!("{out}");
                for line in table.chains.iter().filter_map(waiting_line) {
                    println!("{line}");
                }
                Ok(())
            }
            ChainAction::AcceptLoss {
                chain_id,
                yes,
                registry,
            } => {
                anyhow::ensure!(
                    yes,
                    "accept-loss gives up every change that only chain {chain_id}'s missing members hold; \
                     run it again with --yes to do so (`shoal status` shows what the chain waits for)"
                );
                let reply = registry
                    .client()?
                    .accept_chain_loss(pb::AcceptChainLossRequest { chain_id })
                    .await?;
                let served = match reply.promoted_served_at_version {
                    0 => "it never held a complete copy: every chunk of the chain may be lost".to_string(),
                    version => format!(
                        "changes acknowledged after chain version {version} up to version {}, held only by data service {}, are lost",
                        reply.newest_served_version,
                        ids(&reply.newest_holders)
                    ),
                };
                println!(
                    "chain {chain_id} resumed from data service {}; {served}",
                    reply.promoted_data_service_id
                );
                Ok(())
            }
        }
    }
}
