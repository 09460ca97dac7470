use clap::Parser;
use gfer::ErrorKind;

mod cli;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    if let Err(err) = cli::run(cli) {
        eprintln!("error: {err:#}");
        // 130, as a shell reports a Ctrl-C, when the work was interrupted and can resume.
        let interrupted = err
            .downcast_ref::<gfer::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::Interrupted);
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}
