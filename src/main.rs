use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    scim_bridge::cli::main().await
}
