//! `gfer serve`: the [`Predictor`] behind HTTP.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/predict` | the faces in an image sent as the raw body or as a multipart form field (named `image`, or any field with a file name) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while the model worker takes work, 503 before and during shutdown |
//! | `GET /metrics` | Prometheus text: requests by route and status, latency histogram, batch sizes, queue depth, open connections, images and faces |
//!
//! Inference runs in one worker thread off the async runtime that batches concurrent
//! requests into one forward pass ([`batcher`]). Every limit is in [`ServeConfig`]:
//!
//! | limit | answer when exceeded |
//! |---|---|
//! | body size `max_body_bytes` (declared or actual) | 413 |
//! | pixels `max_pixels`, read from the image header before decoding | 422 |
//! | `request_timeout` while the headers arrive | connection closed |
//! | `request_timeout` while the body arrives | 408 |
//! | `request_timeout` while waiting for the model | 503 + `Retry-After` |
//! | `queue_capacity` images waiting for the model | 503 + `Retry-After` |
//! | `max_connections` open connections | further connections wait to be accepted |
//!
//! Idle keep-alive connections are closed after `request_timeout` too.
//!
//! Other bad requests: empty body 400, unreadable multipart form 400, no image field 400,
//! not an image 415, corrupt image 400, unknown route 404, wrong method 405. Every error
//! is JSON: `{"error": "what was wrong", "code": "machine_readable_code"}`.
//!
//! Memory is bounded by the limits: at most `queue_capacity + max_batch + decoders`
//! decoded images of at most `max_pixels` x 3 bytes each, plus `max_connections` bodies of
//! at most `max_body_bytes`.
//!
//! In the layers: above the prediction pipeline, below the command line only.

pub mod batcher;
pub mod metrics;

use crate::error::{Error, Result};
use crate::image::DecodeLimits;
use crate::predict::output::FaceJson;
use crate::predict::{ImagePrediction, Predictor};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batcher::{Batcher, SubmitError};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::Metrics;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Everything `gfer serve` can be told; each limit's answer is in the module docs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest image, in pixels (width x height), checked before decoding.
    pub max_pixels: u64,
    /// Longest a predict request may take, from its arrival to its answer.
    pub request_timeout: Duration,
    /// Images that may wait for the model at once.
    pub queue_capacity: usize,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Most images in one batch of the model worker.
    pub max_batch: usize,
    /// How long the worker waits for more images after the first of a batch.
    pub max_batch_wait: Duration,
    /// Images decoded at once (decoding is CPU work; more than the cores only queues).
    pub decoders: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16 * 1024 * 1024,
            max_pixels: 4096 * 4096,
            request_timeout: Duration::from_secs(30),
            queue_capacity: 32,
            max_connections: 256,
            max_batch: 16,
            max_batch_wait: Duration::from_millis(10),
            decoders: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    config: ServeConfig,
    class_names: Vec<String>,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    decoders: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// Cleared when shutdown begins, so load balancers stop sending work.
    accepting: AtomicBool,
}

impl AppState {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn open_connections(&self) -> usize {
        self.config.max_connections - self.connections.available_permits()
    }
}

/// A bound server, not yet serving: its address is known (bind port 0 in tests).
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    worker: std::thread::JoinHandle<()>,
}

/// Binds `config.addr` and starts the model worker.
pub async fn bind(predictor: Predictor, config: ServeConfig) -> Result<Server> {
    if config.max_connections == 0 || config.decoders == 0 || config.queue_capacity == 0 {
        return Err(Error::config(
            "max connections, decoders and queue capacity must each be at least 1",
        ));
    }
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|err| Error::io(format!("listen on {}", config.addr), err))?;
    let metrics = Arc::new(Metrics::default());
    let class_names = predictor.class_names().to_vec();
    let (batcher, worker) = batcher::spawn(
        Arc::new(predictor),
        config.queue_capacity,
        config.max_batch,
        config.max_batch_wait,
        metrics.clone(),
    )
    .map_err(|err| Error::io("start the model worker thread", err))?;
    let state = Arc::new(AppState {
        decoders: Arc::new(Semaphore::new(config.decoders)),
        connections: Arc::new(Semaphore::new(config.max_connections)),
        config,
        class_names,
        batcher,
        metrics,
        accepting: AtomicBool::new(true),
    });
    Ok(Server {
        listener,
        state,
        worker,
    })
}

impl Server {
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|err| Error::io("listening socket", err))
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes the requests in
    /// flight and the model worker's queue, and returns.
    ///
    /// Connections are served by hyper directly (not `axum::serve`) for two limits axum
    /// does not offer: at most `max_connections` open at once (the rest wait in the
    /// kernel's backlog), and the request timeout applied to reading each request's
    /// headers too, so slow or silent clients cannot hold connections forever.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = self.local_addr()?;
        let app = router(self.state.clone());
        // HTTP/1.1 only: its header timer starts as soon as a connection opens, where the
        // HTTP/2-sniffing auto builder would wait for a silent client's first bytes forever.
        let mut connections = hyper::server::conn::http1::Builder::new();
        connections
            .timer(TokioTimer::new())
            .header_read_timeout(self.state.config.request_timeout);
        let in_flight = hyper_util::server::graceful::GracefulShutdown::new();
        tracing::info!("serving on http://{addr}");
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = self.state.connections.clone().acquire_owned() => permit,
                () = &mut shutdown => break,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { break };
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, do not spin.
                        tracing::warn!("accepting a connection failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let connection = connections.serve_connection(TokioIo::new(stream), service);
            let connection = in_flight.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!("connection ended: {err}");
                }
                drop(permit);
            });
        }
        self.state.accepting.store(false, Ordering::SeqCst);
        tracing::info!("shutting down: finishing requests in flight");
        drop(self.listener);
        in_flight.shutdown().await;
        // Every request has been answered: the worker finishes what is queued and stops.
        self.state.batcher.close();
        let worker = self.worker;
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        Ok(())
    }
}

/// Binds, serves until Ctrl-C or SIGTERM, and shuts down gracefully.
pub async fn run(predictor: Predictor, config: ServeConfig) -> Result<()> {
    bind(predictor, config)
        .await?
        .run_until(shutdown_signal())
        .await
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The routes, limits and metrics, for serving or for tests.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// A refusal: status, a code for programs and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: &self.message,
            code: self.code,
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Serialize)]
struct PredictBody<'a> {
    width: u32,
    height: u32,
    faces: Vec<FaceJson<'a>>,
    too_small: usize,
}

async fn predict(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match predict_inner(&state, request).await {
        Ok(prediction) => {
            let body = PredictBody {
                width: prediction.width,
                height: prediction.height,
                faces: prediction
                    .faces
                    .iter()
                    .map(|face| FaceJson::new(face, &state.class_names))
                    .collect(),
                too_small: prediction.too_small,
            };
            Json(body).into_response()
        }
        Err(err) => err.into_response(),
    }
}

async fn predict_inner(state: &AppState, request: Request) -> Result<ImagePrediction, ApiError> {
    let deadline = tokio::time::Instant::now() + state.config.request_timeout;
    let timeout = state.config.request_timeout;

    let bytes = tokio::time::timeout_at(deadline, read_image_bytes(state, request))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {timeout:?}"),
            )
        })??;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request has no image: send the image bytes as the body or as a multipart field named \"image\"",
        ));
    }

    let limits = DecodeLimits {
        max_pixels: state.config.max_pixels,
    };
    let permit = tokio::time::timeout_at(deadline, state.decoders.clone().acquire_owned())
        .await
        .map_err(|_| model_timeout(timeout))?
        .map_err(|_| shutting_down())?;
    let image = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        check_header(&bytes, &limits)?;
        crate::image::decode(&bytes, "request body", &limits).map_err(|err| {
            let reason = match err {
                Error::Image { reason, .. } => reason,
                other => other.to_string(),
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "corrupt_image",
                format!("the image could not be decoded: {reason}"),
            )
        })
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "decoding the image failed unexpectedly",
        )
    })??;

    let answer = state.batcher.submit(image).map_err(|err| match err {
        SubmitError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!(
                "the server is busy ({} images are waiting for the model); retry shortly",
                state.config.queue_capacity
            ),
        ),
        SubmitError::Stopped => shutting_down(),
    })?;
    let reply = tokio::time::timeout_at(deadline, answer)
        .await
        .map_err(|_| model_timeout(timeout))?
        .map_err(|_| shutting_down())?;
    reply.map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "prediction_failed",
            format!("prediction failed: {err}"),
        )
    })
}

fn model_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!("no prediction within the request timeout of {timeout:?}; the server is busy, retry shortly"),
    )
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down",
    )
}

/// The image bytes of a request: the raw body, or the `image` field (else the first field
/// with a file name) of a multipart form. Bodies over the limit are refused with 413, by
/// their declared length before anything is read.
async fn read_image_bytes(
    state: &AppState,
    request: Request,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    if !is_multipart {
        return axum::body::Bytes::from_request(request, &())
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unreadable_body",
                        format!(
                            "the request body could not be read: {}",
                            rejection.body_text()
                        ),
                    )
                }
            });
    }
    let multipart_error = |err: axum::extract::multipart::MultipartError| {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_multipart",
                format!("the multipart form could not be read: {}", err.body_text()),
            )
        }
    };
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_multipart",
                format!(
                    "the multipart form could not be read: {}",
                    rejection.body_text()
                ),
            )
        })?;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        if field.name() == Some("image") || field.file_name().is_some() {
            return field.bytes().await.map_err(multipart_error);
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "no_image_field",
        "the multipart form has no image: send it as a field named \"image\" (or any field with a file name)",
    ))
}

/// Refuses bytes that are no image (415), whose header does not parse (400) or that
/// would decode to more than the pixel limit (422), reading only the header.
fn check_header(bytes: &[u8], limits: &DecodeLimits) -> Result<(), ApiError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("the request body could not be read: {err}"),
            )
        })?;
    let Some(format) = reader.format() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            "the body is not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP, GIF)",
        ));
    };
    let corrupt = |reason: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "corrupt_image",
            format!("the {format:?} image header could not be read: {reason}"),
        )
    };
    // JPEGs decode through libjpeg, which reads frame types the `image` crate's header
    // reader refuses (arithmetic coding); their header is read the same way here.
    let (width, height) = if format == image::ImageFormat::Jpeg {
        crate::image::jpeg_dimensions(bytes)
            .ok_or_else(|| corrupt("no frame header before the image data".into()))?
    } else {
        reader
            .into_dimensions()
            .map_err(|err| corrupt(err.to_string()))?
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
            format!(
                "the image is {width}x{height} = {pixels} pixels, over the limit of {} pixels",
                limits.max_pixels
            ),
        ));
    }
    if pixels == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "corrupt_image",
            format!("the image is {width}x{height}: it has no pixels"),
        ));
    }
    Ok(())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.accepting.load(Ordering::SeqCst) && state.batcher.is_running() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the model worker is not taking work (shutting down)",
        )
        .into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.open_connections()),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}; the routes are POST /v1/predict, GET /healthz, GET /readyz, GET /metrics",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts every answer by route and status, and times predictions.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let response = next.run(request).await;
    let latency = (route == "/v1/predict").then(|| started.elapsed());
    state
        .metrics
        .record_request(&route, response.status().as_u16(), latency);
    response
}
