//! `oxtune`: the launcher CLI. Everything lives in the `launcher` library.

use clap::Parser;

fn main() {
    // Logs of the AWS SDK and ours go to stderr, off unless OXTUNE_LOG / RUST_LOG asks for them.
    // The SDK never logs request bodies at these levels, so secrets in Environment stay out.
    let filter =
        std::env::var("OXTUNE_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn,aws=error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = launcher::cli::Cli::parse();
    let code = match launcher::cli::run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.code
        }
    };
    std::process::exit(code);
}
