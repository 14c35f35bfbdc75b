//! The light-node lab's echo responder (`chaos-lab-node echo`): ONE process that enters
//! every node's namespace, opens a UDP and a TCP socket on the echo port there (dual
//! stack: [::] takes IPv4 too), comes back, and serves them all on one thread (tokio's
//! current-thread runtime): UDP datagrams are sent back as they came, TCP bytes echoed.
//! One process for all nodes rather than one per node: ~11 MB for 1023 nodes against
//! ~123 KB per process (docs/many-namespaces.md).

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use chaos_datapath::netns::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The receive buffer of each UDP socket: a probe round sends a node up to one datagram
/// from every other node at once.
const UDP_RECEIVE_BUFFER: i32 = 2 << 20;

#[derive(Debug, Clone)]
pub struct EchoArgs {
    pub netns_list: PathBuf,
    pub port: u16,
    pub ready: Option<PathBuf>,
}

pub(crate) fn force_receive_buffer(fd: i32, bytes: i32) {
    // SAFETY: setsockopt reads the int we pass; SO_RCVBUFFORCE needs CAP_NET_ADMIN (root),
    // without which the kernel's default stays (not an error: fewer datagrams fit).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
}

fn open_in(path: &Path, port: u16) -> Result<(UdpSocket, TcpListener)> {
    let ns = Netns::open(path).with_context(|| format!("opening {}", path.display()))?;
    ns.run(|| -> io::Result<(UdpSocket, TcpListener)> {
        let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let udp = UdpSocket::bind(any)?;
        force_receive_buffer(udp.as_raw_fd(), UDP_RECEIVE_BUFFER);
        udp.set_nonblocking(true)?;
        let tcp = TcpListener::bind(any)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })?
    .with_context(|| format!("opening the echo port {port} in {}", path.display()))
}

/// Runs the responder until SIGTERM or SIGINT.
pub fn serve(args: &EchoArgs) -> Result<()> {
    let list = std::fs::read_to_string(&args.netns_list)
        .with_context(|| format!("reading --netns-list {}", args.netns_list.display()))?;
    let paths: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    super::raise_fd_limit(paths.len() as u64 * 2 + 1024)?;
    let mut sockets = Vec::with_capacity(paths.len());
    for path in &paths {
        sockets.push(open_in(Path::new(path), args.port)?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let count = sockets.len();
        for (udp, tcp) in sockets {
            let udp = tokio::net::UdpSocket::from_std(udp)?;
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 2048];
                loop {
                    if let Ok((n, peer)) = udp.recv_from(&mut buffer).await {
                        let _ = udp.send_to(&buffer[..n], peer).await;
                    }
                }
            });
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else { continue };
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buffer).await {
                            if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
        if let Some(ready) = &args.ready {
            std::fs::write(ready, format!("{count}\n")).with_context(|| format!("writing {}", ready.display()))?;
        }
        println!("echo: serving UDP and TCP port {} in {count} namespaces", args.port);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })
}
