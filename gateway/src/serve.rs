//! The HTTP server: the router on hyper connections with the timeouts `axum::serve` leaves out.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never runs: a client that
//! opens a connection and sends nothing, or sends half a request line, holds it for ever. Here
//! every connection gets one [`HttpTimeouts::header`] bound on each wait for a request head:
//! the first bytes (before hyper can tell HTTP/1 from HTTP/2), each request's headers, and the
//! idle time between requests on a kept-alive HTTP/1 connection (hyper restarts the same timer
//! when it waits for the next request). HTTP/2 connections are pinged at that interval and
//! closed when a ping goes unanswered. Request bodies are bounded by
//! [`GatewayConfig::body_timeout`](crate::GatewayConfig) where they are read
//! (`extract::JsonBody`), so the answer is the JSON 408.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Longest wait for a request head: the first bytes of a connection, a request's headers,
    /// and an idle kept-alive connection's next request.
    pub header: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and lets the
/// connections in flight finish. Each request carries the peer's [`ConnectInfo`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: HttpTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2 (RFC 8441), as axum::serve allows them.
        .enable_connect_protocol()
        .keep_alive_interval(timeouts.header)
        .keep_alive_timeout(timeouts.header);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if !first_bytes(&stream, timeouts.header).await {
                tracing::debug!(%peer, "connection closed: no request within the header timeout");
                return;
            }
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut router = router.clone();
                async move {
                    let response = router.call(req.map(Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Waits until the connection has sent enough to tell HTTP/1 from HTTP/2 (one byte that does
/// not begin the HTTP/2 preface, or the whole preface), at most `limit`. False: nothing usable
/// arrived in time, or the peer closed.
async fn first_bytes(stream: &TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return false,
        };
        if n == 0 {
            return false;
        }
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        // A strict prefix of the HTTP/2 preface: peek returns at once while those bytes wait,
        // so look again shortly (a real client sends the whole preface in one segment).
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(10)))
            .await
            .is_err()
        {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_bytes_tells_a_request_from_silence_and_a_stalled_preface() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Duration::from_millis(300);
        for (sent, expected) in [
            (&b"GET / HTTP/1.1\r\n"[..], true),
            (H2_PREFACE, true),
            (&b""[..], false),
            (&H2_PREFACE[..5], false),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            assert_eq!(first_bytes(&server, limit).await, expected, "{sent:?}");
        }
    }
}
