//! How replicas, workers and clients reach each other: TCP, unless a
//! simulation has installed its own transport for the whole process.
//!
//! Every channel is made by [`lazy_channel`] and every server takes a
//! [`Listener`], so the simulation (`tests/sim`) runs the real code over a
//! simulated network by installing a dialer once and handing the servers
//! listeners of its own; TLS, HTTP/2, deadlines and keepalives are the
//! same in both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::{Channel, Endpoint};

/// A byte stream to or from a peer.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One connection, whatever carries it. Servers see it as a TCP
/// connection (tonic finds client certificates through `TcpConnectInfo`
/// alone), with its addresses where it has them.
pub struct Conn(Box<dyn Stream>, TcpConnectInfo);

impl Conn {
    pub fn new(stream: impl Stream) -> Self {
        Self(
            Box::new(stream),
            TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        )
    }

    fn tcp(stream: tokio::net::TcpStream) -> Self {
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        Self(Box::new(stream), info)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.1.clone()
    }
}

/// The future a dialer returns.
pub type Dialing = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

/// Opens a connection to `host:port`.
pub type Dialer = Arc<dyn Fn(String) -> Dialing + Send + Sync>;

static DIALER: OnceLock<Dialer> = OnceLock::new();

/// Installs the transport every later channel in this process dials
/// through; the first call wins (a simulation installs one, nothing else
/// does). Returns whether this one was installed.
pub fn set_dialer(dialer: Dialer) -> bool {
    DIALER.set(dialer).is_ok()
}

/// How long HTTP/2 remembers a stream this side reset (a call it gave up
/// on), so that the peer's late frames for it are dropped quietly. h2's
/// default is one second of wall-clock time; remembering by count alone
/// (h2 keeps at most 50) bounds memory the same way, drops a late answer
/// however late it comes, and keeps the wall clock out of what the
/// simulation replays.
const RESET_STREAM_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

/// A channel that connects on first use, over TCP or the installed dialer.
pub fn lazy_channel(endpoint: Endpoint) -> Channel {
    let endpoint = endpoint.http2_reset_stream_duration(RESET_STREAM_MEMORY);
    let Some(dialer) = DIALER.get().cloned() else {
        return endpoint.connect_lazy();
    };
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| {
        let dialer = dialer.clone();
        async move {
            let target = uri
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| io::Error::other(format!("no host in {uri}")))?;
            dialer(target).await.map(hyper_util::rt::TokioIo::new)
        }
    }))
}

/// Connections arriving at a server.
pub type Incoming = Pin<Box<dyn futures::Stream<Item = io::Result<Conn>> + Send>>;

/// Where a server takes its connections from.
pub enum Listener {
    Tcp(TcpListener),
    /// Connections from elsewhere (a simulated network), at `addr`.
    Other {
        addr: String,
        incoming: Incoming,
    },
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<String> {
        match self {
            Listener::Tcp(l) => Ok(l.local_addr()?.to_string()),
            Listener::Other { addr, .. } => Ok(addr.clone()),
        }
    }

    /// The connections, as a server takes them. Accepted TCP sockets get
    /// TCP_NODELAY: tonic's `serve_with_incoming` does not apply the
    /// builder's, and Nagle with delayed ACKs adds 40-200 ms stalls to
    /// small request/response exchanges.
    pub fn incoming(self) -> Incoming {
        match self {
            Listener::Tcp(l) => Box::pin(futures::stream::unfold(l, |l| async move {
                let conn = l.accept().await.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Conn::tcp(s)
                });
                Some((conn, l))
            })),
            Listener::Other { incoming, .. } => incoming,
        }
    }
}
