//! Dynamic batching: one worker thread, off the async runtime, takes the images waiting in
//! a bounded queue (up to `max_batch`, waiting at most `max_wait` for more after the
//! first) and runs them through the model in one `predict_batch`, so concurrent requests
//! share forward passes.

use super::metrics::Metrics;
use crate::predict::{ImagePrediction, Predictor};
use image::RgbImage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the worker answers for one image.
pub type Reply = std::result::Result<ImagePrediction, String>;

struct Job {
    image: RgbImage,
    reply: oneshot::Sender<Reply>,
}

/// Why an image was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `capacity` images already.
    Full,
    /// The worker has stopped (only during shutdown).
    Stopped,
}

/// The sending side of the queue. The worker stops once [`Batcher::close`] is called (or
/// the `Batcher` dropped) and the queue is empty.
pub struct Batcher {
    sender: Mutex<Option<SyncSender<Job>>>,
    metrics: Arc<Metrics>,
    running: Arc<AtomicBool>,
}

/// Starts the worker thread.
pub fn spawn(
    predictor: Arc<Predictor>,
    capacity: usize,
    max_batch: usize,
    max_wait: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Batcher, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = sync_channel(capacity.max(1));
    let running = Arc::new(AtomicBool::new(true));
    let worker = {
        let metrics = metrics.clone();
        let running = running.clone();
        std::thread::Builder::new()
            .name("gfer-model".into())
            .spawn(move || {
                work(&predictor, &receiver, max_batch.max(1), max_wait, &metrics);
                running.store(false, Ordering::SeqCst);
            })?
    };
    Ok((
        Batcher {
            sender: Mutex::new(Some(sender)),
            metrics,
            running,
        },
        worker,
    ))
}

impl Batcher {
    /// Queues an image without waiting; the answer arrives on the returned receiver.
    pub fn submit(&self, image: RgbImage) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.lock().map_err(|_| SubmitError::Stopped)?;
        let Some(sender) = sender.as_ref() else {
            return Err(SubmitError::Stopped);
        };
        // Counted before sending so the worker's decrement can never run first.
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match sender.try_send(Job { image, reply }) {
            Ok(()) => Ok(answer),
            Err(err) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                Err(match err {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Takes no more images; the worker finishes those queued and stops.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }

    /// Whether the worker thread is still taking work.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

fn work(
    predictor: &Predictor,
    queue: &Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
    metrics: &Metrics,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.queue_depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        // Clients that gave up (timed out, disconnected) need no answer.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (images, replies): (Vec<RgbImage>, Vec<oneshot::Sender<Reply>>) =
            jobs.into_iter().map(|job| (job.image, job.reply)).unzip();
        metrics.record_batch(images.len());
        // A panic inside the model must cost this batch its answers, not the server its
        // only worker.
        let predicted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            predictor.predict_batch(&images)
        }));
        match predicted {
            Ok(Ok(predictions)) => {
                for (reply, prediction) in replies.into_iter().zip(predictions) {
                    metrics.record_prediction(prediction.faces.len(), prediction.too_small);
                    let _ = reply.send(Ok(prediction));
                }
            }
            Ok(Err(err)) => {
                tracing::error!("prediction failed for a batch of {}: {err}", images.len());
                for reply in replies {
                    let _ = reply.send(Err(err.to_string()));
                }
            }
            Err(_) => {
                tracing::error!("the model panicked on a batch of {}", images.len());
                for reply in replies {
                    let _ = reply.send(Err("the model failed on this batch".into()));
                }
            }
        }
    }
}
