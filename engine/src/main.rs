//! The `cordon` binary: a thin shell over [`cordon::cli`].

use clap::Parser;

/// mimalloc rather than glibc malloc: under load the engine allocates many small, short-lived
/// values (JSON trees, SQL arguments), and glibc spent about a fifth of serve's CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's settings ([`cordon::alloc`]), before the first allocation.
#[ctor::ctor(unsafe)]
fn tune_allocator() {
    cordon::alloc::tune();
}

fn main() -> std::process::ExitCode {
    let cli = cordon::cli::Cli::parse();
    // The service logs what it does (info); one-shot commands show progress instead (warn).
    let (default_level, json) = match &cli.command {
        cordon::cli::Command::Serve(args) => {
            let from_file = cordon::config::Config::load(cli.config.as_deref())
                .ok()
                .and_then(|c| c.log_format);
            let format = args.log_format.or(from_file);
            ("info", format == Some(cordon::config::LogFormat::Json))
        }
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(cordon::cli::main(cli))
}
