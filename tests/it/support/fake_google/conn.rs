//! The fake's sockets: a TCP listener whose connections a handler can cut without an answer, as
//! a dying front end or a network drop does ([`Fault::DropAfterBody`]), and which tells each
//! request the port it came in on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::*;

pub(super) struct Listener(pub(super) TcpListener);

/// One accepted connection, as a handler sees it (`ConnectInfo<Conn>`).
#[derive(Debug, Clone)]
pub(super) struct Conn {
    /// The local port: the fake's main port or its other one.
    pub(super) port: u16,
    cut: Arc<AtomicBool>,
}

impl Conn {
    /// Closes the connection instead of writing the answer: the client sees the connection end
    /// with no response.
    pub(super) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub(super) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// A TCP stream that fails every write once its connection is cut, so hyper drops it unanswered.
pub(super) struct Stream {
    inner: TcpStream,
    cut: Arc<AtomicBool>,
}

impl Stream {
    fn check(&self) -> io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "cut by the fake",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = Conn;

    async fn accept(&mut self) -> (Stream, Conn) {
        loop {
            // Accept errors (too many open files, a reset before accept) are transient here.
            let Ok((inner, _)) = self.0.accept().await else {
                continue;
            };
            let port = inner.local_addr().map(|a| a.port()).unwrap_or_default();
            let cut = Arc::new(AtomicBool::new(false));
            let conn = Conn {
                port,
                cut: cut.clone(),
            };
            return (Stream { inner, cut }, conn);
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        Ok(Conn {
            port: self.0.local_addr()?.port(),
            cut: Arc::default(),
        })
    }
}

impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Conn {
        stream.remote_addr().clone()
    }
}
