use std::process::ExitCode;

/// Request handling allocates many small, short-lived objects across threads; mimalloc
/// serves them faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    scim_bridge::cli::main().await
}
