//! `tether call`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// Machine address (host:port).
    pub address: String,
}

pub async fn run(_args: CallArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
