//! The `/metrics` endpoint every Coop binary serves for Prometheus: plain
//! HTTP/1.1 on its own listener, rendering the text exposition format on
//! each scrape.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection is held longer than this, whatever the client does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed accept (out of file descriptors, say), wait this long
/// rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `render()` at `/metrics` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(
                                b"coop serves /metrics only\n",
                            )))
                    };
                    Ok::<_, Infallible>(response.expect("static response parts are valid"))
                }
            });
            // A client that sends half a request, or never reads, is cut off
            // instead of holding a task and a socket forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that sends half its headers is disconnected after the
    /// header timeout rather than held forever.
    #[tokio::test]
    async fn half_sent_headers_are_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(|| "ok\n".to_string())));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(5),
            slow.read_to_end(&mut buf),
        )
        .await;
        assert!(
            read.is_ok(),
            "the connection was still open after the header timeout"
        );
        // A well-behaved scrape still works.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        ok.read_to_string(&mut body).await.unwrap();
        assert!(body.ends_with("ok\n"), "{body}");
        server.abort();
    }
}
