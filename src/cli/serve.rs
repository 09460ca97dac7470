//! `gfer serve`: the model behind HTTP (routes, limits and status codes: `gfer::serve`).

use super::predict::{load_predictor, FaceArgs, ModelArgs};
use clap::Args;
use gfer::serve::ServeConfig;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "\
Routes: POST /v1/predict (image as the raw body or a multipart field named \"image\"), \
GET /healthz, GET /readyz, GET /metrics (Prometheus).
Over a limit: body 413, pixels 422, queue full 503 + Retry-After, body not received in \
time 408, no prediction in time 503 + Retry-After; connections without complete headers \
within the request timeout (slow, silent or idle) are closed. SIGTERM or Ctrl-C stops accepting \
and finishes the requests in flight.

Example:
  gfer serve --model cafe.safetensors --weights clip.safetensors --addr 127.0.0.1:8080
  curl --data-binary @photo.jpg http://127.0.0.1:8080/v1/predict")]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub faces: FaceArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Largest image in pixels, read from its header before decoding (422 above).
    #[arg(long, default_value_t = ServeConfig::default().max_pixels, value_name = "PIXELS")]
    pub max_pixels: u64,
    /// Longest a prediction request may take, in seconds.
    #[arg(long, default_value_t = ServeConfig::default().request_timeout.as_secs_f64(), value_name = "SECONDS")]
    pub request_timeout: f64,
    /// Images that may wait for the model (503 + Retry-After beyond).
    #[arg(long, default_value_t = ServeConfig::default().queue_capacity, value_name = "IMAGES")]
    pub queue: usize,
    /// Client connections open at once (more wait to be accepted).
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    pub max_connections: usize,
    /// Most images the model worker runs together.
    #[arg(long, default_value_t = ServeConfig::default().max_batch, value_name = "IMAGES")]
    pub max_batch: usize,
    /// How long the worker waits for more images after the first of a batch, in ms.
    #[arg(long, default_value_t = ServeConfig::default().max_batch_wait.as_millis() as u64, value_name = "MS")]
    pub batch_wait_ms: u64,
    /// Images decoded at once.
    #[arg(long, default_value_t = ServeConfig::default().decoders)]
    pub decoders: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.request_timeout > 0.0 && args.request_timeout.is_finite()) {
        anyhow::bail!("--request-timeout must be a positive number of seconds");
    }
    let config = ServeConfig {
        addr: args.addr,
        max_body_bytes: args.max_body_bytes,
        max_pixels: args.max_pixels,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        queue_capacity: args.queue,
        max_connections: args.max_connections,
        max_batch: args.max_batch,
        max_batch_wait: Duration::from_millis(args.batch_wait_ms),
        decoders: args.decoders,
    };
    let predictor = load_predictor(&args.model, args.faces.options())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(gfer::serve::run(predictor, config))?;
    Ok(())
}
