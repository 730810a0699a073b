//! Prometheus metrics (`bindtrace watch --metrics-addr ADDR`, off by default): failures by port,
//! cause, errno and container, events seen and lost, log lines that could not be written, and the
//! backend in use, served at `/metrics` (OpenMetrics text format, `prometheus-client`; HTTP by
//! `hyper`).
//!
//! Label sets are capped (`MAX_SERIES`): past the cap, a failure on a new port/container is
//! counted under `port="other"`/`container="other"`, so a port scan cannot blow up a fleet's
//! Prometheus.

use std::{
    collections::HashSet,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{event::Event, pipeline::Writer};

/// Distinct failure label sets kept before folding into `other`.
pub const MAX_SERIES: usize = 500;

/// `9090` or `:9090` → 127.0.0.1:9090 (never beyond loopback unless a host is given);
/// `0.0.0.0:9090`, `[::1]:9090` as written.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        if port == 0 {
            return Err("metrics port 0 is not a port to scrape".into());
        }
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not PORT, :PORT or HOST:PORT (e.g. 127.0.0.1:9090)"))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    port: String,
    cause: String,
    errno: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

/// The metric handles the pipeline updates.
pub struct Metrics {
    failures: Family<FailureLabels, Counter>,
    events: Counter,
    lost: Counter,
    untracked: Counter,
    log_unwritten: Counter,
    log_unwritten_src: Option<Arc<AtomicU64>>,
    series: HashSet<FailureLabels>,
}

impl Metrics {
    /// Creates the metrics and the registry that serves them.
    pub fn new(backend: &str, unwritten_src: Option<Arc<AtomicU64>>) -> (Self, Arc<Registry>) {
        let mut registry = Registry::with_prefix("bindtrace");
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failures",
            "Failed bind()/listen()/connect() calls by port, cause, errno and container",
            failures.clone(),
        );
        let events = Counter::default();
        registry.register(
            "events",
            "Events reported (failures, and successes with --all)",
            events.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "events_lost",
            "Events the kernel dropped because the ring buffer was full",
            lost.clone(),
        );
        let untracked = Counter::default();
        registry.register(
            "calls_untracked",
            "Calls the kernel programs could not track (no room in their table of calls in \
             flight): failures among them are not reported",
            untracked.clone(),
        );
        let log_unwritten = Counter::default();
        registry.register(
            "log_lines_unwritten",
            "Events that could not be written to --log-file (e.g. disk full)",
            log_unwritten.clone(),
        );
        let info = Family::<BackendLabels, Gauge>::default();
        registry.register("backend", "The kernel hooks in use (value 1)", info.clone());
        info.get_or_create(&BackendLabels {
            backend: backend.to_string(),
        })
        .set(1);
        (
            Self {
                failures,
                events,
                lost,
                untracked,
                log_unwritten,
                log_unwritten_src: unwritten_src,
                series: HashSet::new(),
            },
            Arc::new(registry),
        )
    }

    fn labels(&mut self, ev: &Event) -> FailureLabels {
        let cause = ev
            .diagnosis
            .as_ref()
            .map_or("unknown", |d| d.cause.as_str())
            .to_string();
        let mut l = FailureLabels {
            port: ev.port.to_string(),
            cause,
            errno: ev.error.clone(),
            container: ev
                .container
                .container_id
                .as_deref()
                .map_or_else(String::new, |c| c[..c.len().min(12)].to_string()),
        };
        if !self.series.contains(&l) {
            if self.series.len() >= MAX_SERIES {
                l.port = "other".into();
                l.container = "other".into();
            } else {
                self.series.insert(l.clone());
            }
        }
        l
    }
}

impl Writer for Metrics {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        self.events.inc();
        if ev.is_failure() {
            let l = self.labels(ev);
            self.failures.get_or_create(&l).inc();
        }
        if let Some(src) = &self.log_unwritten_src {
            let (now, shown) = (src.load(Ordering::Relaxed), self.log_unwritten.get());
            if now > shown {
                self.log_unwritten.inc_by(now - shown);
            }
        }
        Ok(())
    }

    fn lost(&mut self, _time: &str, lost: u64, _total: u64) -> std::io::Result<()> {
        self.lost.inc_by(lost);
        Ok(())
    }

    fn untracked(&mut self, new: u64) -> std::io::Result<()> {
        self.untracked.inc_by(new);
        Ok(())
    }
}

fn handle(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    // HEAD as GET (hyper leaves the body out): what uptime checks send.
    let response =
        if matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path() == "/metrics" {
            let mut body = String::new();
            match encode(&mut body, registry) {
                Ok(()) => Response::builder()
                    .header(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body))),
                Err(_) => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::from_static(b"encoding failed\n"))),
            }
        } else {
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(
                    b"bindtrace serves /metrics only\n",
                )))
        };
    response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Binds the metrics address (at start, so a bad address fails before anything is attached).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))
}

/// Serves `/metrics` on `listener` until the process ends.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    std::future::ready(Ok::<_, Infallible>(handle(&req, &registry)))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::event;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9090"), Ok("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(parse_addr(":9090"), Ok("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            parse_addr("0.0.0.0:9090"),
            Ok("0.0.0.0:9090".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:9090"), Ok("[::1]:9090".parse().unwrap()));
        assert!(parse_addr("0").is_err());
        assert!(parse_addr("localhost:x").is_err());
        assert!(parse_addr("99999").is_err());
    }

    #[test]
    fn counts_and_caps_series() {
        let (mut m, registry) = Metrics::new("tracepoint", None);
        let mut ev = event();
        for port in 0..(MAX_SERIES as u16 + 50) {
            ev.port = 10_000 + port;
            m.event(&ev).unwrap();
        }
        m.lost("t", 7, 7).unwrap();
        m.untracked(2).unwrap();
        m.untracked(1).unwrap();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("bindtrace_events_total 550"), "{text}");
        assert!(text.contains("bindtrace_events_lost_total 7"));
        assert!(text.contains("bindtrace_calls_untracked_total 3"), "{text}");
        assert!(text.contains(r#"bindtrace_backend{backend="tracepoint"} 1"#));
        assert!(text.contains(
            r#"bindtrace_failures_total{port="other",cause="unknown",errno="EADDRINUSE",container="other"} 50"#
        ), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("bindtrace_failures_total"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "capped, plus the `other` series");
    }
}
