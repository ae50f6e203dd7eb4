//! The `moodle-release` binary: parse the command line, set up logging, run, map the result to
//! an exit code (0 done, 1 failed, 2 usage or config, 3 refused for safety).

use clap::Parser;

fn main() {
    let cli = moodle_release::cli::Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOODLE_RELEASE_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let reporter = moodle_release::ui::Terminal::new(!cli.no_progress);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = moodle_release::run::run(cli, &reporter, &mut stdout) {
        eprintln!("error: {e}");
        // Transparent wrappers repeat their source's message: print each cause once.
        let mut said = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !said.contains(&text) {
                eprintln!("  caused by: {text}");
                said.push_str(&text);
            }
            source = s.source();
        }
        if let Some(h) = e.hint() {
            eprintln!("hint: {h}");
        }
        std::process::exit(e.exit_code());
    }
}
