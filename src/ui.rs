//! The binary's [`Reporter`]: indicatif bars on a terminal, plain lines in a CI log.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::Reporter;

/// Shows progress on stderr.
pub struct Terminal {
    bars: bool,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    step: String,
    started: Instant,
    last_decile: u64,
}

impl Terminal {
    /// Bars only when stderr is a terminal and `allow_bars`.
    pub fn new(allow_bars: bool) -> Terminal {
        Terminal {
            bars: allow_bars && std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                bar: None,
                step: String::new(),
                started: Instant::now(),
                last_decile: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line on stderr, above the progress bar when there is one.
    fn line(&self, text: &str) {
        match &self.state().bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }
}

impl Reporter for Terminal {
    fn step(&self, name: &str) {
        let mut s = self.state();
        s.step = name.to_string();
        s.started = Instant::now();
        s.last_decile = 0;
        if self.bars {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(name.to_string());
            s.bar = Some(bar);
        } else {
            eprintln!("{name}...");
        }
    }

    fn progress(&self, done: u64, total: u64) {
        let mut s = self.state();
        if let Some(bar) = &s.bar {
            bar.set_length(total);
            bar.set_position(done);
        } else if let Some(decile) = (done * 10).checked_div(total) {
            if decile > s.last_decile && decile < 10 {
                s.last_decile = decile;
                eprintln!("  {}: {}% ({done}/{total})", s.step, decile * 10);
            }
        }
    }

    fn step_done(&self) {
        let mut s = self.state();
        let took = s.started.elapsed().as_secs_f64();
        match s.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                eprintln!("{} ({took:.1}s)", s.step);
            }
            None => eprintln!("  {} done ({took:.1}s)", s.step),
        }
    }

    fn warn(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }

    fn note(&self, message: &str) {
        self.line(&format!("  {message}"));
    }
}
