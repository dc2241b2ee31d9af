//! `fluidity-lambdas`: the control plane as Lambda functions or as a local HTTP service.
//!
//! - In Lambda (`AWS_LAMBDA_RUNTIME_API` set), with no arguments: runs the function named by
//!   the handler setting (`_HANDLER`: `wake`, `query`, `kill`, `sleep` or `ca`), so one
//!   `bootstrap` serves all five.
//! - `fluidity-lambdas serve --listen 127.0.0.1:9000 [--ca-dir DIR] [--activity-url URL]`:
//!   all five over plain HTTP.
//! - `fluidity-lambdas lambda FUNCTION`: one function under the Lambda runtime, explicitly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fluidity_lambdas::{ControlPlane, Function, LocalOverrides, Settings, event};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Fluidity's control plane: Wake, Query, Kill, Sleep and CA"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve all five functions over plain HTTP (POST /wake, /query, /kill, /sleep, /ca).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Sign with the CA in this directory (created if missing) instead of Secrets Manager.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Read the server's activity from this `/health` URL instead of CloudWatch.
        #[arg(long)]
        activity_url: Option<String>,
    },
    /// Run one function under the Lambda runtime.
    Lambda {
        /// wake, query, kill, sleep or ca (default: the handler setting, `_HANDLER`).
        function: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    fluidity_core::cli::init_logging("info");
    let cli = Cli::parse();
    let settings = Settings::from_env(|key| std::env::var(key).ok())?;
    match cli.command {
        Some(Command::Serve {
            listen,
            ca_dir,
            activity_url,
        }) => {
            let plane = ControlPlane::from_aws(
                &settings,
                LocalOverrides {
                    ca_dir,
                    activity_url,
                },
            )
            .await?;
            plane.load_ca().await.context("loading the CA")?;
            let listener = fluidity_core::transport::listen(listen)
                .with_context(|| format!("listening on {listen}"))?;
            fluidity_lambdas::serve::run(
                listener,
                Arc::new(plane),
                fluidity_core::shutdown::signal(),
            )
            .await?;
            Ok(())
        }
        Some(Command::Lambda { function }) => lambda(&settings, function).await,
        None if in_lambda => lambda(&settings, None).await,
        None => anyhow::bail!(
            "not in Lambda (AWS_LAMBDA_RUNTIME_API is unset): use `serve` or `lambda FUNCTION` (see --help)"
        ),
    }
}

async fn lambda(settings: &Settings, function: Option<String>) -> anyhow::Result<()> {
    let name = function
        .or_else(|| std::env::var("_HANDLER").ok())
        .context("no function given and no Lambda handler setting (_HANDLER)")?;
    let function: Function = name.parse()?;
    let plane = Arc::new(ControlPlane::from_aws(settings, LocalOverrides::default()).await?);
    if function == Function::Ca {
        // Fail the cold start, not every request, when the CA secret is unreadable.
        plane
            .load_ca()
            .await
            .context("loading the CA from Secrets Manager")?;
    }
    tracing::info!(?function, cluster = %settings.cluster, service = %settings.service, "Lambda function ready");
    lambda_runtime::run(service_fn(move |invocation: LambdaEvent<Value>| {
        let plane = plane.clone();
        async move {
            let answer = match event::parse(invocation.payload) {
                Ok(incoming) => {
                    let (status, body) = plane
                        .handle(function, incoming.body, incoming.source_ip)
                        .await;
                    event::respond(status, &body)
                }
                Err(reason) => event::respond(400, &json!({ "error": reason })),
            };
            Ok::<Value, lambda_runtime::Error>(answer)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
}
