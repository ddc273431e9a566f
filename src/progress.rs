//! Progress on stderr: indicatif bars (one per running node, plus totals) when stderr is a
//! terminal, one plain line per finished node otherwise. stdout stays free for `--json`.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    verbosity: Verbosity,
    bars: Option<MultiProgress>,
    total: Option<ProgressBar>,
    color: bool,
    /// Whether a warning was shown (shared by the copies with a totals bar).
    warned: Arc<AtomicBool>,
    /// Warnings already shown: a project loaded twice (a build that waited for the lock, or
    /// made the cache) warns once.
    shown: Arc<Mutex<HashSet<String>>>,
}

impl Progress {
    pub fn new(verbosity: Verbosity) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let bars = (tty && verbosity != Verbosity::Quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            inner: Arc::new(Inner {
                verbosity,
                bars,
                total: None,
                color,
                warned: Arc::default(),
                shown: Arc::default(),
            }),
        }
    }

    /// Starts the totals bar for `total` nodes (terminal only).
    pub fn with_total(self, total: u64) -> Progress {
        let Some(mp) = &self.inner.bars else {
            return self;
        };
        let bar = mp.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix("building");
        let inner = Inner {
            verbosity: self.inner.verbosity,
            bars: Some(mp.clone()),
            total: Some(bar),
            color: self.inner.color,
            warned: self.inner.warned.clone(),
            shown: self.inner.shown.clone(),
        };
        Progress {
            inner: Arc::new(inner),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.inner.verbosity
    }

    /// A spinner for a node while it generates (terminal only).
    pub fn start(&self, id: &str) -> NodeBar {
        let bar = self.inner.bars.as_ref().map(|mp| {
            let b = mp.insert_from_back(1, ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("  {spinner} {prefix} {elapsed:>4} {msg}")
                    .expect("valid template"),
            );
            b.set_prefix(id.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        NodeBar { bar }
    }

    /// One finished node: a line (plain mode) or a bar tick (terminal).
    pub fn finished(&self, line: &str, counts: bool) {
        if let Some(t) = &self.inner.total {
            if counts {
                t.inc(1);
            }
            if self.inner.verbosity == Verbosity::Verbose {
                t.println(format!("  {line}"));
            }
        } else if self.inner.verbosity != Verbosity::Quiet && !line.is_empty() {
            say(&format!("  {line}"));
        }
    }

    /// Sets the totals bar's message; `msg` is only called when a bar is drawn.
    pub fn set_message(&self, msg: impl FnOnce() -> String) {
        if let Some(t) = &self.inner.total {
            t.set_message(msg());
        }
    }

    /// A line that must be seen even with bars on screen.
    pub fn println(&self, line: &str) {
        match &self.inner.bars {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => say(line),
        }
    }

    pub fn warn(&self, msg: &str) {
        self.inner.warned.store(true, Ordering::Relaxed);
        let first = self
            .inner
            .shown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg.to_string());
        if !first {
            return;
        }
        let prefix = if self.inner.color {
            "\x1b[33mwarning\x1b[0m"
        } else {
            "warning"
        };
        self.println(&format!("ttv: {prefix}: {msg}"));
    }

    /// Whether any warning was shown so far.
    pub fn warned(&self) -> bool {
        self.inner.warned.load(Ordering::Relaxed)
    }

    pub fn info(&self, msg: &str) {
        if self.inner.verbosity != Verbosity::Quiet {
            self.println(&format!("ttv: {msg}"));
        }
    }

    pub fn finish(&self) {
        if let Some(t) = &self.inner.total {
            t.finish_and_clear();
        }
    }
}

/// Seconds as people say them: "40s", "3m".
pub fn human_duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0}s")
    } else {
        format!("{:.0}m", secs / 60.0)
    }
}

/// A line on stderr. A closed stderr (a pager that quit) is not an error: the line is dropped.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The `--json` object (or any text) on stdout. A reader that quit early (`| head`, a pager)
/// ends the output quietly, as cargo and ripgrep do, instead of a panic.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

pub struct NodeBar {
    bar: Option<ProgressBar>,
}

impl NodeBar {
    pub fn status_fn(&self) -> Arc<dyn Fn(String) + Send + Sync> {
        let bar = self.bar.clone();
        Arc::new(move |msg| {
            if let Some(b) = &bar {
                b.set_message(msg);
            }
        })
    }
}

impl Drop for NodeBar {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
