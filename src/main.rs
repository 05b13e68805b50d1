//! The `dualtrust` binary: see [`dualtrust::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use dualtrust::cli::{Cli, Command, run};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DUALTRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // One JSON object per line for log shippers; text for people.
    match std::env::var("DUALTRUST_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(true).init(),
        _ => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The launcher runs with a scrubbed environment and must not read
    // configuration or log: it only limits itself and execs.
    if let Command::SandboxProbe = &cli.command {
        let report: serde_json::Map<String, serde_json::Value> = dualtrust::sandbox::probe()
            .into_iter()
            .map(|(layer, offered)| {
                let value = match offered {
                    Ok(()) => "ok".to_string(),
                    Err(why) => why,
                };
                (layer.name().to_string(), value.into())
            })
            .collect();
        println!("{}", serde_json::Value::Object(report));
        return ExitCode::SUCCESS;
    }
    if let Command::SandboxExec { plan } = &cli.command {
        let outcome = serde_json::from_str::<dualtrust::sandbox::Plan>(plan)
            .map_err(|e| format!("bad plan: {e}"))
            .and_then(|plan| dualtrust::sandbox::run(&plan));
        return match outcome {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("sandbox-exec: {e}");
                ExitCode::from(126)
            }
        };
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
