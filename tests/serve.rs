//! The HTTP server: answers, every limit's status code, concurrency, graceful shutdown.
//! A colour classifier stands in for a trained model; the `Gated` one holds forward
//! passes until the test lets them go, so queue and timeout behaviour is deterministic.

use crate::common;
use crate::predict_support;

use gfer::backbone::Precision;
use gfer::predict::{FaceClassifier, PredictOptions, Predictor};
use gfer::serve::{self, ServeConfig};
use predict_support::{corrupt_jpeg, encode, png_bomb, solid, BreaksOnBlue, Gated, MeanColour};
use reqwest::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    finished: tokio::task::JoinHandle<gfer::Result<()>>,
    state: Arc<serve::AppState>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.finished)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

fn config() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 256 * 1024,
        max_pixels: 1_000_000,
        request_timeout: Duration::from_secs(10),
        ..ServeConfig::default()
    }
}

async fn start_with(classifier: Arc<dyn FaceClassifier>, config: ServeConfig) -> Running {
    let options = PredictOptions {
        detect: false,
        ..Default::default()
    };
    let predictor = Predictor::new(classifier, options).unwrap();
    let server = serve::bind(predictor, config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let state = server.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let finished = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        finished,
        state,
    }
}

async fn start() -> Running {
    start_with(Arc::new(MeanColour), config()).await
}

fn png(colour: [u8; 3]) -> Vec<u8> {
    encode(&solid(colour, 48, 40), image::ImageFormat::Png)
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = client.post(url).body(body).send().await.unwrap();
    let status = response.status();
    let json = response.json::<Value>().await.unwrap();
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicts_raw_and_multipart_images() {
    let server = start().await;
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &server.url("/v1/predict"), png([240, 10, 10])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["width"], 48);
    assert_eq!(body["height"], 40);
    let faces = body["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0]["label"], "red");
    assert_eq!(
        faces[0]["box"],
        serde_json::json!({"x": 0, "y": 0, "width": 48, "height": 40})
    );
    assert!(faces[0]["probabilities"]["red"].as_f64().unwrap() > 0.9);

    // Arithmetic-coded, which libjpeg decodes and the `image` crate's header reader refuses.
    let arithmetic = std::fs::read(common::fixture("images/arithmetic_100x100.jpg")).unwrap();
    let (status, body) = post(&client, &server.url("/v1/predict"), arithmetic).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(100), Some(100))
    );

    for field_name in ["image", "upload"] {
        let part = reqwest::multipart::Part::bytes(encode(
            &solid([10, 10, 240], 30, 30),
            image::ImageFormat::Jpeg,
        ))
        .file_name("face.jpg");
        let form = reqwest::multipart::Form::new()
            .text("note", "fields before the image are skipped")
            .part(field_name, part);
        let response = client
            .post(server.url("/v1/predict"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["faces"][0]["label"], "blue", "{body}");
    }

    let form = reqwest::multipart::Form::new().text("note", "no image here");
    let response = client
        .post(server.url("/v1/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "no_image_field");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_json_4xx_that_says_what_was_wrong() {
    let server = start().await;
    let client = reqwest::Client::new();
    let url = server.url("/v1/predict");
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "empty body",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            "text",
            b"hello, not an image".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
        ),
        (
            "corrupt jpeg",
            corrupt_jpeg(),
            StatusCode::BAD_REQUEST,
            "corrupt_image",
        ),
        (
            "bomb header",
            png_bomb(40_000, 40_000),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
        ),
        (
            "just over the pixel limit",
            png_bomb(1001, 1000),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
        ),
        (
            "pixels missing",
            png_bomb(100, 100),
            StatusCode::BAD_REQUEST,
            "corrupt_image",
        ),
        (
            "zero-sized",
            png_bomb(0, 10),
            StatusCode::BAD_REQUEST,
            "corrupt_image",
        ),
        (
            "too large body",
            vec![0u8; 300 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let (got, json) = post(&client, &url, body).await;
        assert_eq!(got, status, "{what}: {json}");
        assert_eq!(json["code"], code, "{what}: {json}");
        assert!(json["error"].as_str().unwrap().len() > 10, "{what}: {json}");
    }
    let bomb = post(&client, &url, png_bomb(40_000, 40_000)).await.1;
    assert!(
        bomb["error"].as_str().unwrap().contains("40000x40000"),
        "{bomb}"
    );

    let response = client.get(server.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "not_found");
    let response = client.get(url.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );

    let (status, _) = post(&client, &url, png([10, 240, 10])).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still serving after every bad request"
    );
    server.shutdown().await;
}

/// Sends raw HTTP/1.1 and returns the status code of the answer (None if the
/// connection closed without one).
async fn raw_status(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_and_streamed_bodies_are_refused_with_413() {
    let server = start().await;
    // A declared length over the limit is refused before any of the body is read.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw_status(&mut stream).await, Some(413));

    // A chunked body with no declared length is cut off at the limit.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..5 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    assert_eq!(raw_status(&mut stream).await, Some(413));

    // And so is a multipart form over the limit.
    let part = reqwest::multipart::Part::bytes(vec![7u8; 300 * 1024]).file_name("big.jpg");
    let form = reqwest::multipart::Form::new().part("image", part);
    let response = reqwest::Client::new()
        .post(server.url("/v1/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let server = start_with(
        Arc::new(MeanColour),
        ServeConfig {
            request_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nonly a little",
        )
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), raw_status(&mut stream)).await;
    assert_eq!(status.unwrap(), Some(408));
    server.shutdown().await;
}

/// Slow, silent or idle clients cannot hold connections: each is closed once the
/// request timeout passes without complete headers, which frees its place under the
/// connection limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed_after_the_timeout() {
    let server = start_with(
        Arc::new(MeanColour),
        ServeConfig {
            request_timeout: Duration::from_millis(300),
            max_connections: 3,
            ..config()
        },
    )
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw_status(&mut idle).await, Some(200));
    for stream in [&mut slow, &mut silent, &mut idle] {
        // Whatever is still unread (the idle one's response body) comes first, then EOF.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buffer = [0u8; 256];
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server closes the connection");
    }
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        post(
            &reqwest::Client::new(),
            &server.url("/v1/predict"),
            png([250, 0, 0]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    server.shutdown().await;
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_a_slow_model_times_out() {
    let (gated, gate) = Gated::new();
    let server = start_with(
        Arc::new(gated),
        ServeConfig {
            queue_capacity: 1,
            max_batch: 1,
            max_batch_wait: Duration::ZERO,
            request_timeout: Duration::from_secs(3),
            ..config()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let url = server.url("/v1/predict");
    // The first image occupies the worker, the second fills the queue of one.
    let first = tokio::spawn(post_owned(client.clone(), url.clone(), png([250, 0, 0])));
    wait_until("the worker holds the first image", || gate.entered() == 1).await;
    let second = tokio::spawn(post_owned(client.clone(), url.clone(), png([0, 250, 0])));
    let state = server.state.clone();
    wait_until("the second image waits in the queue", || {
        state.metrics().render(0).contains("gfer_queue_depth 1\n")
    })
    .await;

    let response = client
        .post(&url)
        .body(png([0, 0, 250]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "queue_full"
    );

    // Nothing moves while the model is held: the queued request runs out of time.
    let (status, body) = second.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "timeout");

    gate.open();
    let (status, body) = first.await.unwrap();
    // The first request also waited past its 3 s; either answer is a correct one for it,
    // but it must be an answer, and later requests go through again.
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{body}"
    );
    // The worker may still be finishing the held batch; once it has, requests go through.
    let mut answer = post(&client, &url, png([0, 0, 250])).await;
    for _ in 0..50 {
        if answer.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = post(&client, &url, png([0, 0, 250])).await;
    }
    let (status, body) = answer;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["faces"][0]["label"], "blue");
    server.shutdown().await;
}

/// An image that makes the model fail (or panic) gets a 500 of its own; the images
/// batched with it are still answered, and the worker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_image_costs_only_its_own_answer() {
    for panics in [false, true] {
        let server = start_with(
            Arc::new(BreaksOnBlue { panics }),
            ServeConfig {
                max_batch_wait: Duration::from_millis(300),
                ..config()
            },
        )
        .await;
        let client = reqwest::Client::new();
        let url = server.url("/v1/predict");
        let red = tokio::spawn(post_owned(client.clone(), url.clone(), png([250, 0, 0])));
        let blue = tokio::spawn(post_owned(client.clone(), url.clone(), png([0, 0, 250])));
        let (status, body) = red.await.unwrap();
        assert_eq!(status, StatusCode::OK, "panics: {panics}: {body}");
        assert_eq!(body["faces"][0]["label"], "red");
        let (status, body) = blue.await.unwrap();
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "panics: {panics}: {body}"
        );
        assert_eq!(body["code"], "prediction_failed");
        let metrics = server.state.metrics().render(0);
        assert!(
            metrics.contains("gfer_batch_images_count 1\n"),
            "one batch of two: {metrics}"
        );
        let (status, _) = post(&client, &url, png([0, 250, 0])).await;
        assert_eq!(status, StatusCode::OK, "the worker survived");
        server.shutdown().await;
    }
}

async fn post_owned(client: reqwest::Client, url: String, body: Vec<u8>) -> (StatusCode, Value) {
    post(&client, &url, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_until_one_closes() {
    let server = start_with(
        Arc::new(MeanColour),
        ServeConfig {
            max_connections: 2,
            ..config()
        },
    )
    .await;
    let idle_a = TcpStream::connect(server.addr).await.unwrap();
    let idle_b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let waiting = tokio::spawn(post_owned(
        client,
        server.url("/v1/predict"),
        png([250, 0, 0]),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection is not served while two are open"
    );
    drop(idle_a);
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["faces"][0]["label"], "red");
    drop(idle_b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = start().await;
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    post(&client, &server.url("/v1/predict"), png([250, 0, 0])).await;
    post(&client, &server.url("/v1/predict"), Vec::new()).await;
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        "gfer_http_requests_total{route=\"/v1/predict\",status=\"200\"} 1\n",
        "gfer_http_requests_total{route=\"/v1/predict\",status=\"400\"} 1\n",
        "gfer_http_requests_total{route=\"/healthz\",status=\"200\"} 1\n",
        "gfer_predict_request_duration_seconds_count 2\n",
        "gfer_faces_total 1\n",
        "gfer_images_total 1\n",
        "gfer_queue_depth 0\n",
        "gfer_batch_images_count 1\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let (gated, gate) = Gated::new();
    let server = start_with(Arc::new(gated), config()).await;
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(post_owned(
        client.clone(),
        server.url("/v1/predict"),
        png([0, 250, 0]),
    ));
    wait_until("the model holds the request", || gate.entered() == 1).await;
    let addr = server.addr;
    let state = server.state.clone();
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the request in flight"
    );
    gate.open();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["faces"][0]["label"], "green");
    stopping.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    drop(state);
}

/// 200 requests at once, good and bad mixed: every good one gets the right answer, every
/// bad one its 4xx, and the server is healthy afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_mixed_requests() {
    let server = start_with(
        Arc::new(MeanColour),
        ServeConfig {
            queue_capacity: 256,
            request_timeout: Duration::from_secs(60),
            ..config()
        },
    )
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let colours = [
        ("red", [230u8, 30, 30]),
        ("green", [30, 230, 30]),
        ("blue", [30, 30, 230]),
    ];
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let client = client.clone();
        let url = server.url("/v1/predict");
        let (label, colour) = colours[i % 3];
        let (body, expected): (Vec<u8>, Result<&str, u16>) = match i % 8 {
            0..=3 => (
                encode(
                    &solid(colour, 20 + i as u32 % 50, 24),
                    if i % 2 == 0 {
                        image::ImageFormat::Png
                    } else {
                        image::ImageFormat::Jpeg
                    },
                ),
                Ok(label),
            ),
            4 => (corrupt_jpeg(), Err(400)),
            5 => (Vec::new(), Err(400)),
            6 => (png_bomb(60_000, 60_000), Err(422)),
            _ => (br#"{"not": "an image"}"#.to_vec(), Err(415)),
        };
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).body(body).send().await.unwrap();
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap();
            (i, expected, status, json)
        }));
    }
    let mut good = 0;
    for task in tasks {
        let (i, expected, status, json) = task.await.unwrap();
        match expected {
            Ok(label) => {
                assert_eq!(status, 200, "request {i}: {json}");
                assert_eq!(json["faces"][0]["label"], label, "request {i}: {json}");
                good += 1;
            }
            Err(code) => {
                assert_eq!(status, code, "request {i}: {json}");
                assert!(json["error"].is_string());
            }
        }
    }
    assert_eq!(good, 100);
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gfer_images_total 100\n"), "{metrics}");
    assert!(metrics.contains("gfer_queue_depth 0\n"));
    server.shutdown().await;
}

/// `gfer serve` itself with a real model bundle: it answers like the library predictor
/// and exits cleanly on SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_real_bundle_and_stops_on_sigterm() {
    use std::io::BufRead;
    let (bundle, weights) = predict_support::tiny_bundle();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gfer"))
        .args(["serve", "--no-detect", "--addr", "127.0.0.1:0", "--model"])
        .arg(bundle)
        .arg("--weights")
        .arg(weights)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "gfer serve exited early"
        );
        if let Some(at) = line.find("serving on http://") {
            let rest = &line[at + "serving on http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].to_string();
        }
    };
    let face = common::synthetic_face(3, 900, 40);
    let (status, body) = post(
        &reqwest::Client::new(),
        &format!("http://{addr}/v1/predict"),
        encode(&face, image::ImageFormat::Png),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let options = PredictOptions {
        detect: false,
        ..Default::default()
    };
    let predictor = Predictor::from_bundle(
        bundle,
        Some(weights),
        Precision::F32,
        &candle_core::Device::Cpu,
        options,
    )
    .unwrap();
    let expected = predictor.predict(&face).unwrap();
    assert_eq!(body["faces"][0]["label"], expected.faces[0].label.as_str());
    let served = body["faces"][0]["probabilities"]["happiness"]
        .as_f64()
        .unwrap();
    assert!((served - f64::from(expected.faces[0].probabilities[3])).abs() < 1e-6);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
