//! The library's log (`tracing` events: images skipped and why, cache counts, the run
//! being trained) to Python's `logging`, under the logger `gfer` (`gfer.train.run`, ...):
//! warnings show on stderr by default, `logging.basicConfig(level=logging.INFO)` shows
//! what the CLI prints at its default level.

use pyo3::prelude::*;
use std::fmt::Write;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

struct PythonLogging;

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// `gfer::train::run` -> `gfer.train.run`; other crates' events go under `gfer`.
fn logger_name(target: &str) -> String {
    if target == "gfer" || target.starts_with("gfer::") {
        target.replace("::", ".")
    } else {
        format!("gfer.{}", target.replace("::", "."))
    }
}

impl<S: Subscriber> Layer<S> for PythonLogging {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            Level::DEBUG => 10,
            Level::TRACE => 5,
        };
        let mut message = Message::default();
        event.record(&mut message);
        let name = logger_name(event.metadata().target());
        // None while the interpreter is shutting down: the event is dropped.
        Python::try_attach(|py| {
            let logged = py
                .import("logging")
                .and_then(|logging| logging.call_method1("getLogger", (name,)))
                .and_then(|logger| logger.call_method1("log", (level, message.0)));
            if let Err(err) = logged {
                err.print(py);
            }
        });
    }
}

/// Sends the library's events at INFO and above to Python's `logging` (unless another
/// extension in the process already took the global `tracing` subscriber).
pub fn install() {
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::INFO)
        .with(PythonLogging);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
