//! Running library work from Python: with the GIL released, so other Python threads run
//! meanwhile, and with Ctrl-C handled as the CLI handles it.
//!
//! Python runs its signal handlers only on the main thread, and only while it holds the
//! GIL; Rust work that has released the GIL never sees a Ctrl-C. So the work runs on a
//! helper thread while the calling thread, detached, wakes every [`POLL`] to reattach and
//! ask Python for pending signals (`check_signals`). On a KeyboardInterrupt it raises the
//! library's stop flag, as the CLI's Ctrl-C handler does: the work finishes its current
//! step (training saves its checkpoint) and returns; the caller then raises
//! `KeyboardInterrupt`.

use crate::errors::bad_input;
use candle_core::Device;
use gfer::device::DeviceChoice;
use indicatif::ProgressBar;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the waiting thread checks for Ctrl-C.
const POLL: Duration = Duration::from_millis(100);

/// What became of work run by [`run`].
pub struct Ran<T> {
    pub output: T,
    /// Ctrl-C was pressed while it ran (and the stop flag raised).
    pub interrupted: bool,
}

/// Runs `work` with the GIL released, on a helper thread, while this thread checks for
/// Ctrl-C every [`POLL`]. On the first Ctrl-C, `stop` is raised and `notice` is written to
/// `sys.stderr` (above the progress bar, if any); further ones are swallowed until the work
/// has ended. A panic in `work` is resumed here (PyO3 raises it as a `PanicException`).
pub fn run<T: Send>(
    py: Python<'_>,
    stop: &AtomicBool,
    progress: &ProgressBar,
    notice: &str,
    work: impl FnOnce() -> T + Send,
) -> Ran<T> {
    let done = AtomicBool::new(false);
    let mut interrupted = false;
    let joined = std::thread::scope(|scope| {
        let waiter = std::thread::current();
        let done = &done;
        let handle = scope.spawn(move || {
            // Set the flag even when `work` panics, so the waiting loop ends.
            struct Finished<'a>(&'a AtomicBool, std::thread::Thread);
            impl Drop for Finished<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                    self.1.unpark();
                }
            }
            let _finished = Finished(done, waiter);
            work()
        });
        while !done.load(Ordering::SeqCst) {
            py.detach(|| std::thread::park_timeout(POLL));
            if done.load(Ordering::SeqCst) {
                break;
            }
            if py.check_signals().is_err() && !interrupted {
                interrupted = true;
                stop.store(true, Ordering::SeqCst);
                progress.suspend(|| write_stderr(py, notice));
            }
        }
        py.detach(|| handle.join())
    });
    match joined {
        Ok(output) => Ran {
            output,
            interrupted,
        },
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Writes a line to Python's `sys.stderr` (a notebook shows it under the cell), or to the
/// process's stderr if that fails.
pub fn write_stderr(py: Python<'_>, line: &str) {
    let written = py
        .import("sys")
        .and_then(|sys| sys.getattr("stderr"))
        .and_then(|stderr| {
            stderr.call_method1("write", (format!("{line}\n"),))?;
            stderr.call_method0("flush")
        });
    if written.is_err() {
        eprintln!("{line}");
    }
}

/// A progress bar on stderr with rate and time left, as the CLI draws it: hidden when
/// stderr is not a terminal (a notebook, a log file), and when `show` is false.
pub fn progress_bar(show: bool, len: u64, unit: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left) {{msg}}"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`, chosen as `--device` chooses (`gfer::device`).
pub fn device(name: &str) -> PyResult<Device> {
    let in_device = |e: gfer::Error| bad_input(format!("device={}: {e}", py_str(name)));
    let choice: DeviceChoice = name.parse().map_err(in_device)?;
    gfer::device::select(choice).map_err(in_device)
}

/// A string as Python's `repr` writes it: `'text'`.
pub fn py_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}
