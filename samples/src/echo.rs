//! `todo`'s TCP port: a line echo, so the demo has opaque TCP for the mesh to carry and
//! count (Istio's dashboards have TCP panels: `istio_tcp_sent_bytes_total`,
//! `istio_tcp_connections_opened_total`, …). The Service names the port `tcp-echo`, so the
//! sidecars treat it as TCP, not HTTP. `myapp` opens a connection per check, sends one line
//! and reads it back.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::myapp::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// Longest line echoed; a longer one ends the connection.
const MAX_LINE: usize = 4096;

/// Binds `addr`, logs `listening on`, echoes lines on every connection until `shutdown`.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    info!("{name} TCP echo listening on {}", listener.local_addr()?);
    run(listener, shutdown).await;
    Ok(())
}

/// Accepts on `listener` until `shutdown` completes; each connection is echoed line by line
/// until the client closes it or stays silent for the request timeout.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(async move {
            if let Err(e) = echo(stream).await {
                debug!("echo connection ended: {e}");
            }
        });
    }
}

async fn echo(stream: TcpStream) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(REQUEST_TIMEOUT, lines.read_line(&mut line))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        write.write_all(line.as_bytes()).await?;
    }
}

/// One check: connect to `addr` (`todo:8084`, or a sidecar's local port), send `message`
/// as a line, and read the line back. Bounded like every backend call of myapp.
pub async fn ping(addr: &str, message: &str) -> io::Result<String> {
    let timed_out = |what: &str| io::Error::new(io::ErrorKind::TimedOut, what.to_string());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("no connection within the connect timeout"))??;
    let exchange = async {
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{message}\n").as_bytes()).await?;
        let mut back = String::new();
        BufReader::new(read).read_line(&mut back).await?;
        write.shutdown().await?;
        Ok::<_, io::Error>(back)
    };
    let back = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| timed_out("no echo within the request timeout"))??;
    match back.strip_suffix('\n') {
        Some(line) if line == message => Ok(line.to_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echoed {back:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_a_line_per_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, async {
            let _ = stopped.await;
        }));
        assert_eq!(ping(&addr, "ping 1").await.unwrap(), "ping 1");
        assert_eq!(ping(&addr, "ping 2").await.unwrap(), "ping 2");
        let _ = stop.send(());
        server.await.unwrap();
        // Nobody listening: a prompt error, not a hang.
        assert!(ping(&addr, "x").await.is_err());
    }
}
