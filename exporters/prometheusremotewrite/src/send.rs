//! Sending one request: HTTP POST with the remote-write headers, and retries as the
//! Collector's exporter makes them — 5xx, 429 and failures to connect or answer in time are
//! retried with exponential backoff and jitter (a `Retry-After` the endpoint gives is waited
//! instead), any other answer is final.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use hyper::{Method, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use oxeye_api::BoxError;
use oxeye_sending::retry::{backoff, jitter, retry_after};
use oxeye_sending::tls::client_config;

use crate::config::{RemoteWriteConfig, Retry};

/// Why a request was given up: the reason its points are counted under, and what to log.
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// What one attempt came to.
enum Attempt {
    Done,
    /// May pass: try again (after the delay the endpoint asked for, if any).
    Again(String, Option<Duration>),
    Final(Failure),
}

/// The HTTP client and what every request carries.
pub struct Sender {
    client: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    headers: HeaderMap,
    timeout: Duration,
    retry: Retry,
}

fn tls(c: &RemoteWriteConfig) -> Result<rustls::ClientConfig, BoxError> {
    client_config(&c.tls.settings(), c.endpoint.starts_with("https://"))
}

impl Sender {
    /// A client for the endpoint (no connection until the first request).
    pub fn new(c: &RemoteWriteConfig) -> Result<Sender, BoxError> {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls(c)?)
            .https_or_http()
            .enable_http1()
            .build();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(
            HeaderName::from_static("x-prometheus-remote-write-version"),
            HeaderValue::from_static("0.1.0"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("oxeye/", env!("CARGO_PKG_VERSION"))),
        );
        // A configured header replaces the default of its name (names are case-insensitive).
        for (k, v) in &c.headers {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        Ok(Sender {
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
            url: c.endpoint.parse()?,
            headers,
            timeout: c.timeout,
            retry: c.retry_on_failure.clone(),
        })
    }

    /// Sends `body` until it is taken, refused for good, or retries run out.
    pub async fn send(&self, body: Bytes) -> Result<(), Failure> {
        self.send_until(body, false, &|| false).await.map(|_| ())
    }

    /// Sends `body` from the queue on disk: a retryable failure is retried until it passes
    /// (the request waits on disk, not in memory) or `stop` says another instance took the
    /// queue over: `Ok(false)`, not sent.
    pub async fn send_persistent(
        &self,
        body: Bytes,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, Failure> {
        self.send_until(body, true, stop).await
    }

    async fn send_until(
        &self,
        body: Bytes,
        persistent: bool,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, Failure> {
        let started = Instant::now();
        let mut interval = self.retry.initial_interval;
        loop {
            let (why, asked) = match self.attempt(body.clone()).await {
                Attempt::Done => return Ok(true),
                Attempt::Final(f) => return Err(f),
                Attempt::Again(why, asked) => (why, asked),
            };
            if stop() {
                return Ok(false);
            }
            if !self.retry.enabled {
                return Err(Failure {
                    reason: "send_failed",
                    message: format!("{why} (retry_on_failure is off)"),
                });
            }
            let wait = asked.unwrap_or_else(|| jitter(interval, self.retry.randomization_factor));
            // max_elapsed_time 0: no limit (the Collector's meaning); the shutdown deadline
            // still bounds it.
            let limit = self.retry.max_elapsed_time;
            if !persistent && !limit.is_zero() && started.elapsed().saturating_add(wait) > limit {
                return Err(Failure {
                    reason: "retries_exhausted",
                    message: format!(
                        "{why}; gave up after {:.1} s (retry_on_failure.max_elapsed_time {:?})",
                        started.elapsed().as_secs_f64(),
                        self.retry.max_elapsed_time
                    ),
                });
            }
            tracing::debug!("prometheusremotewrite: {why}; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            interval = backoff(interval, self.retry.multiplier, self.retry.max_interval);
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let mut request = hyper::Request::builder()
            .method(Method::POST)
            .uri(self.url.clone());
        if let Some(h) = request.headers_mut() {
            h.clone_from(&self.headers);
        }
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Final(Failure {
                    reason: "send_failed",
                    message: e.to_string(),
                })
            }
        };
        let answer = async {
            let response = self.client.request(request).await?;
            let (parts, mut body) = response.into_parts();
            // The status is the answer; of a refusal's reason, the first 512 bytes are kept
            // (an endpoint may send any amount, or stall).
            let mut text = Vec::new();
            if !parts.status.is_success() {
                while text.len() < 512 {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                text.extend_from_slice(data);
                            }
                        }
                        _ => break,
                    }
                }
            }
            Ok::<_, BoxError>((parts, text))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => return Attempt::Again(format!("no answer within {:?}", self.timeout), None),
            Ok(Err(e)) => return Attempt::Again(format!("cannot send to {}: {e}", self.url), None),
            Ok(Ok(answer)) => answer,
        };
        let status = parts.status;
        if status.is_success() {
            return Attempt::Done;
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(512)])
            .trim()
            .to_string();
        let why = format!("{} answered {status}: {text}", self.url);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            // Never sooner than the first interval, whatever the endpoint asks (0, a past date).
            let asked = parts
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now()))
                .map(|d| d.max(self.retry.initial_interval));
            Attempt::Again(why, asked)
        } else {
            Attempt::Final(Failure {
                reason: "rejected",
                message: why,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An endpoint answering each request with the next of `answers` (status line and headers),
    /// on a connection of its own; returns its URL and the times requests arrived.
    async fn scripted(
        answers: &'static [&'static str],
    ) -> (String, Arc<std::sync::Mutex<Vec<(Instant, String)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/api/v1/write",
            listener.local_addr().expect("addr")
        );
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                log.lock().expect("log").push((Instant::now(), head));
                let reply =
                    format!("{answer}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn sender(url: String) -> Sender {
        sender_with(url, "")
    }

    fn sender_with(url: String, more: &str) -> Sender {
        let config: RemoteWriteConfig = serde_yaml::from_str(&format!(
            "endpoint: {url}\nretry_on_failure: {{max_elapsed_time: 5s}}\n{more}"
        ))
        .expect("config");
        Sender::new(&config).expect("sender")
    }

    #[tokio::test]
    async fn configured_headers_replace_defaults_and_a_zero_retry_after_still_waits() {
        let (url, seen) = scripted(&[
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0",
            "HTTP/1.1 204 No Content",
        ])
        .await;
        sender_with(url, "headers: {User-Agent: probe/1, X-Scope-OrgID: team-a}")
            .send(Bytes::from_static(b"x"))
            .await
            .map_err(|f| f.message)
            .expect("delivered");
        let seen = seen.lock().expect("log").clone();
        let (first, second) = (&seen[0], &seen[1]);
        assert!(
            second.0 - first.0 >= Duration::from_millis(50),
            "initial_interval at least"
        );
        let head = &first.1;
        assert_eq!(head.matches("user-agent:").count(), 1, "{head}");
        for line in [
            "user-agent: probe/1",
            "x-scope-orgid: team-a",
            "content-encoding: snappy",
            "content-type: application/x-protobuf",
            "x-prometheus-remote-write-version: 0.1.0",
        ] {
            assert!(head.contains(line), "{line} not in {head}");
        }
    }

    #[tokio::test]
    async fn retries_5xx_and_429_waiting_as_asked_and_stops_at_other_answers() {
        let (url, seen) = scripted(&[
            "HTTP/1.1 503 Service Unavailable",
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1",
            "HTTP/1.1 204 No Content",
        ])
        .await;
        sender(url)
            .send(Bytes::from_static(b"x"))
            .await
            .map_err(|f| f.message)
            .expect("delivered");
        let times: Vec<Instant> = seen.lock().expect("log").iter().map(|(t, _)| *t).collect();
        assert_eq!(times.len(), 3);
        assert!(
            times[2] - times[1] >= Duration::from_secs(1),
            "Retry-After waited"
        );

        let (url, seen) = scripted(&["HTTP/1.1 400 Bad Request", "HTTP/1.1 204 No Content"]).await;
        let failure = sender(url)
            .send(Bytes::from_static(b"x"))
            .await
            .expect_err("refused");
        assert_eq!(failure.reason, "rejected");
        assert!(
            failure.message.contains("400") && failure.message.contains("nope"),
            "{}",
            failure.message
        );
        assert_eq!(seen.lock().expect("log").len(), 1, "a 400 is not retried");
    }
}
