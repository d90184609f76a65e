//! `scim-bridge bench`: placeholder filled in below.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Users to load
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
}
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
