//! The `numgen` binary: parses the command line, sets up logging, and hands over to
//! [`numgen::app::run`] with a shutdown future for SIGTERM and SIGINT.

use std::process::ExitCode;

use clap::Parser;
use numgen::clock::{Clock, SystemClock};
use numgen::config::{Cli, Command, Config, LogFormat, Settings};

/// Colour (ANSI escape codes) only for a person at a terminal: a log written to a file or
/// a pipe stays plain text, and `NO_COLOR` turns colour off anywhere.
fn log_in_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same in its v2 and v3; libmimalloc-sys names
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the OS at once instead of after mimalloc's delay (10 ms, but
/// only when the freeing thread allocates again): after a burst of connections (SPEC 7,
/// scripts/bench-abuse.sh) RSS otherwise stayed near its peak on an idle server, and at
/// random after traffic resumed. `MIMALLOC_PURGE_DELAY` still overrides it.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's option values (a plain store); valid at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_in_colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers, run until killed.
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the server until SIGTERM or SIGINT.
fn serve(config: Config) -> ExitCode {
    init_logging(config.log_format);
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(numgen::http::memory::on_park)
        .build()
        .map_err(|e| (format!("cannot start the runtime: {e}"), false))
        .and_then(|runtime| {
            // The server runs as a task on the workers, not in `block_on` on the main
            // thread: the accept loop allocates every connection's state, and only the
            // workers collect freed memory when they park (`http::memory`); memory that
            // the main thread allocated and the workers freed stayed with it.
            let server = runtime.spawn(async move {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| (format!("listen: cannot bind {}: {e}", config.listen), false))?;
                numgen::app::run(config, listener, shutdown_signal())
                    .await
                    .map_err(|e| (e.to_string(), e.is_setting()))
            });
            runtime
                .block_on(server)
                .map_err(|e| (format!("the server task failed: {e}"), false))?
        });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, setting)) => {
            tracing::error!("{e}");
            eprintln!("numgen: {e}");
            // A bad setting exits 2 whether the config check or the connection found it.
            ExitCode::from(if setting { 2 } else { 1 })
        }
    }
}

/// `numgen health`: exit 0 when the server at `listen` answers GET /health.
fn health(config: Config) -> ExitCode {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let probe = async {
        let timeout = std::time::Duration::from_secs(2);
        numgen::cluster::skew::probe(&addr.to_string(), &SystemClock, 1, timeout).await
    };
    let ok = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(probe).is_some())
        .unwrap_or(false);
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("numgen: no healthy server at {addr}");
        ExitCode::FAILURE
    }
}

/// `numgen decode ID`: the ID's fields as JSON, in the configured layout.
fn decode(config: Config, id: &str) -> ExitCode {
    match numgen::id::describe_text(&config.layout, id) {
        Some(d) => {
            let v = numgen::http::ops::decoded_json(&d);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("numgen: '{id}' is not an ID (a decimal integer below 2^63)");
            ExitCode::from(2)
        }
    }
}

/// Loads the config from every source, or exits 2 with a message naming the bad key.
fn with_config(settings: Settings, then: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match settings.load(SystemClock.now_ms()) {
        Ok(config) => then(config),
        Err(e) => {
            eprintln!("numgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    match Cli::parse().command {
        Command::Serve(settings) => with_config(*settings, serve),
        Command::Health { settings } => with_config(*settings, health),
        Command::Decode { id, settings } => with_config(*settings, |c| decode(c, &id)),
    }
}
