//! A served connection, plaintext or TLS, that can move to another runtime: an upgraded peer
//! stream is taken from the HTTP loop that accepted it to the Raft thread (`raft/upgrade.rs`),
//! and its socket must then wake that thread's reactor, not the loop's.

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<MovableTcp>>),
}

impl Conn {
    /// The same connection registered with the runtime this is called on, Nagle off (every
    /// frame of a peer stream is a small write its peer waits for).
    pub fn onto_current_runtime(self) -> io::Result<Conn> {
        match self {
            Conn::Plain(tcp) => {
                let tcp = TcpStream::from_std(tcp.into_std()?)?;
                tcp.set_nodelay(true)?;
                Ok(Conn::Plain(tcp))
            }
            Conn::Tls(mut tls) => {
                // The TLS session stays as it is; only the socket under it moves.
                tls.get_mut().0.rebind()?;
                tls.get_ref().0.tcp().set_nodelay(true)?;
                Ok(Conn::Tls(tls))
            }
        }
    }
}

impl Conn {
    /// Its reading and writing halves, each usable from its own task: a plaintext stream's
    /// own halves (no lock between them), a TLS session's behind a lock (one state for both).
    pub fn split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (ConnRead::Plain(read), ConnWrite::Plain(write))
            }
            Conn::Tls(tls) => {
                let (read, write) = tokio::io::split(*tls);
                (ConnRead::Tls(read), ConnWrite::Tls(write))
            }
        }
    }
}

type TlsOverTcp = tokio_rustls::server::TlsStream<MovableTcp>;

pub enum ConnRead {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsOverTcp>),
}

pub enum ConnWrite {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsOverTcp>),
}

impl AsyncRead for ConnRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnRead::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ConnRead::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWrite::Plain(write) => Pin::new(write).poll_write(cx, buf),
            ConnWrite::Tls(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWrite::Plain(write) => Pin::new(write).poll_write_vectored(cx, bufs),
            ConnWrite::Tls(write) => Pin::new(write).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ConnWrite::Plain(write) => write.is_write_vectored(),
            ConnWrite::Tls(write) => write.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Plain(write) => Pin::new(write).poll_flush(cx),
            ConnWrite::Tls(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Plain(write) => Pin::new(write).poll_shutdown(cx),
            ConnWrite::Tls(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

/// A TCP stream that can be re-registered with another runtime while a TLS session holds it.
pub struct MovableTcp(Option<TcpStream>);

impl MovableTcp {
    pub fn new(tcp: TcpStream) -> Self {
        Self(Some(tcp))
    }

    fn tcp(&self) -> &TcpStream {
        self.0
            .as_ref()
            .expect("a stream is always present between calls")
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        self.0
            .as_mut()
            .expect("a stream is always present between calls")
    }

    fn rebind(&mut self) -> io::Result<()> {
        let tcp = self.0.take().expect("a stream is present");
        self.0 = Some(TcpStream::from_std(tcp.into_std()?)?);
        Ok(())
    }
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_shutdown(cx)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp) => tcp.is_write_vectored(),
            Conn::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
