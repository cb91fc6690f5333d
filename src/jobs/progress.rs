//! Progress of the phases of a run on stderr: a bar (tiles read, run through the model,
//! stitched) or a spinner (COG assembly, polygonizing, writing) per phase, each named.
//!
//! Shown only when asked: on a terminal unless `--quiet` ([`Progress::Terminal`]), or always
//! with `--progress` ([`Progress::Always`]). Where stderr is not a terminal (a pipe, a log
//! file) `--progress` writes plain lines instead of redrawn bars: one when a phase starts,
//! one every ten seconds while it runs, one when it ends, so logs hold no control codes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// Never (`--quiet`, child processes, tests).
    #[default]
    Off,
    /// Bars on a terminal, nothing otherwise (the default of commands).
    Terminal,
    /// Bars on a terminal, plain lines otherwise (`--progress`).
    Always,
}

impl Progress {
    /// From the command line's `--quiet` and `--progress`.
    pub fn from_flags(quiet: bool, forced: bool) -> Progress {
        match (quiet, forced) {
            (true, _) => Progress::Off,
            (false, true) => Progress::Always,
            (false, false) => Progress::Terminal,
        }
    }

    /// How it draws here.
    fn draw(self) -> Draw {
        let tty = std::io::stderr().is_terminal();
        match (self, tty) {
            (Progress::Off, _) | (Progress::Terminal, false) => Draw::Hidden,
            (_, true) => Draw::Bars,
            (Progress::Always, false) => Draw::Lines,
        }
    }

    /// Whether anything is shown.
    pub fn shown(self) -> bool {
        self.draw() != Draw::Hidden
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Draw {
    Hidden,
    Bars,
    Lines,
}

/// Where bars go: one line per bar on stderr, several at once (the phases of a sweep, the
/// scenes of a batch).
fn bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

/// Seconds between the lines of a running phase in line mode.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// One phase on screen; cleared when dropped (a failed run leaves no bar behind).
#[derive(Debug)]
pub struct Phase {
    bar: indicatif::ProgressBar,
    lines: Option<Lines>,
}

#[derive(Debug)]
struct Lines {
    what: String,
    unit: &'static str,
    len: Option<u64>,
    pos: AtomicU64,
    start: Instant,
    next: Mutex<Instant>,
    done: std::sync::atomic::AtomicBool,
}

impl Lines {
    fn line(&self, text: &str) {
        // One write per line, so lines of phases running at once do not interleave.
        let _ = writeln!(std::io::stderr().lock(), "{}: {text}", self.what);
    }

    fn count(&self) -> String {
        let pos = self.pos.load(Ordering::Relaxed);
        match self.len {
            Some(len) => format!("{pos}/{len} {}", self.unit),
            None => format!("{pos} {}", self.unit),
        }
    }
}

impl Phase {
    /// A phase that shows nothing.
    pub fn hidden() -> Phase {
        Phase {
            bar: indicatif::ProgressBar::hidden(),
            lines: None,
        }
    }

    /// A bar of `len` `unit`s ("tiles") named `what`.
    pub fn bar(progress: Progress, what: &str, len: usize, unit: &'static str) -> Phase {
        Phase::new(progress, what, Some(len as u64), unit)
    }

    /// A spinner named `what`, for a phase whose length is not known.
    pub fn spinner(progress: Progress, what: &str) -> Phase {
        Phase::new(progress, what, None, "")
    }

    fn new(progress: Progress, what: &str, len: Option<u64>, unit: &'static str) -> Phase {
        match progress.draw() {
            Draw::Hidden => Phase::hidden(),
            Draw::Bars => {
                let (bar, template) = match len {
                    Some(n) => (
                        indicatif::ProgressBar::new(n),
                        format!("{{msg:<22}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}}"),
                    ),
                    None => (
                        indicatif::ProgressBar::new_spinner(),
                        "{msg:<22} {spinner} {elapsed}".to_string(),
                    ),
                };
                let bar = bars().add(bar);
                let style = if len.is_some() {
                    indicatif::ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> ")
                } else {
                    indicatif::ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
                };
                bar.set_style(style);
                bar.set_message(what.to_string());
                if len.is_none() {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                Phase { bar, lines: None }
            }
            Draw::Lines => {
                let lines = Lines {
                    what: what.to_string(),
                    unit,
                    len,
                    pos: AtomicU64::new(0),
                    start: Instant::now(),
                    next: Mutex::new(Instant::now() + LINE_EVERY),
                    done: std::sync::atomic::AtomicBool::new(false),
                };
                lines.line(&match len {
                    Some(n) => format!("started, {n} {unit}"),
                    None => "started".to_string(),
                });
                Phase {
                    bar: indicatif::ProgressBar::hidden(),
                    lines: Some(lines),
                }
            }
        }
    }

    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(l) = &self.lines {
            l.pos.fetch_add(n, Ordering::Relaxed);
            let now = Instant::now();
            if let Ok(mut next) = l.next.try_lock() {
                if now >= *next {
                    *next = now + LINE_EVERY;
                    l.line(&l.count());
                }
            }
        }
    }

    /// The phase is done: the bar goes, line mode says how long it took (once).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(l) = self
            .lines
            .as_ref()
            .filter(|l| !l.done.swap(true, Ordering::Relaxed))
        {
            let secs = l.start.elapsed().as_secs_f64();
            if l.len.is_some() {
                l.line(&format!("done, {} in {secs:.1} s", l.count()));
            } else {
                l.line(&format!("done in {secs:.1} s"));
            }
        }
    }

    /// The underlying bar (the batch's scenes bar sets its message).
    pub fn bar_handle(&self) -> &indicatif::ProgressBar {
        &self.bar
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Run `f` as the phase `what` (a spinner): shown while it runs, finished when it succeeds.
///
/// # Errors
/// Whatever `f` returns.
pub fn phase<T, E>(
    progress: Progress,
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let p = Phase::spinner(progress, what);
    let out = f()?;
    p.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_mode() {
        assert_eq!(Progress::from_flags(true, true), Progress::Off);
        assert_eq!(Progress::from_flags(false, true), Progress::Always);
        assert_eq!(Progress::from_flags(false, false), Progress::Terminal);
        assert!(!Progress::Off.shown());
    }
}
