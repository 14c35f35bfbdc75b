//! Batched rtnetlink for the light-node lab: one long-lived socket per namespace, requests
//! queued and sent many per datagram, their acknowledgements read back in one pass
//! (docs/many-namespaces.md: one `ip` process per object costs ~50 ms in a namespace with
//! 1026 links; a batch costs the kernel's work only). Messages are netlink-packet-route's
//! types, as in chaos-datapath's netlink.rs (which opens a socket per request).

use std::io;

use anyhow::{bail, Result};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Requests per datagram: their acknowledgements (36 bytes each with NETLINK_CAP_ACK) fit the
/// receive buffer many times over.
const BATCH: usize = 256;
const RECEIVE_BUFFER: usize = 64 * 1024;

/// An rtnetlink socket of the namespace the calling thread was in when it was opened (it
/// stays that namespace's after the thread leaves).
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    /// Serialised requests not sent yet, with what each does (for the error message).
    queued: Vec<(u32, Vec<u8>, String)>,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Acknowledgements without the request echoed back, and the kernel's reason text.
        socket.set_cap_ack(true)?;
        socket.set_ext_ack(true)?;
        socket.set_rx_buf_sz(1 << 20)?;
        Ok(Rtnl { socket, sequence: 0, queued: Vec::new() })
    }

    /// Queues a request that wants an acknowledgement; `what` names it in an error.
    pub fn queue(&mut self, message: RouteNetlinkMessage, flags: u16, what: impl Into<String>) {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.queued.push((self.sequence, bytes, what.into()));
    }

    /// Sends what is queued, BATCH requests per datagram, and reads every acknowledgement:
    /// the first refusal fails it, naming the request.
    pub fn flush(&mut self) -> Result<()> {
        let queued = std::mem::take(&mut self.queued);
        let mut first_error: Option<String> = None;
        for chunk in queued.chunks(BATCH) {
            let datagram: Vec<u8> = chunk.iter().flat_map(|(_, bytes, _)| bytes.iter().copied()).collect();
            self.socket.send(&datagram, 0)?;
            let mut pending = chunk.len();
            let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
            while pending > 0 {
                buffer.clear();
                self.socket.recv(&mut buffer, 0)?;
                for message in messages(&buffer)? {
                    if let NetlinkPayload::Error(error) = message.payload {
                        pending = pending.saturating_sub(1);
                        if let Some(code) = error.code {
                            if first_error.is_none() {
                                let what = chunk
                                    .iter()
                                    .find(|(seq, _, _)| *seq == message.header.sequence_number)
                                    .map(|(_, _, what)| what.as_str())
                                    .unwrap_or("a request");
                                let errno = io::Error::from_raw_os_error(-code.get());
                                first_error = Some(format!("{what}: {errno}"));
                            }
                        }
                    }
                }
            }
            if let Some(e) = first_error {
                bail!("rtnetlink refused {e}");
            }
        }
        Ok(())
    }

    /// Every link of the namespace: (ifindex, name).
    pub fn links(&mut self) -> Result<Vec<(u32, String)>> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.sequence;
        let mut request =
            NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut links = Vec::new();
        let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
        // Bounded: a dump of 10,000 links comes in far fewer datagrams.
        for _ in 0..100_000 {
            buffer.clear();
            self.socket.recv(&mut buffer, 0)?;
            for message in messages(&buffer)? {
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(links),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io().into()),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        let name = link.attributes.iter().find_map(|a| match a {
                            LinkAttribute::IfName(n) => Some(n.clone()),
                            _ => None,
                        });
                        links.push((link.header.index, name.unwrap_or_default()));
                    }
                    _ => {}
                }
            }
        }
        bail!("the link dump did not end")
    }
}

/// The messages of one received datagram.
fn messages(buffer: &[u8]) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buffer.len() {
        let rest = &buffer[at..];
        let parsed = NetlinkBuffer::new_checked(&rest).map_err(|e| malformed(e.to_string()))?;
        let length = parsed.length() as usize;
        out.push(NetlinkMessage::<RouteNetlinkMessage>::parse(&parsed).map_err(|e| malformed(e.to_string()))?);
        at += length.next_multiple_of(4).max(16);
    }
    Ok(out)
}

fn malformed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected rtnetlink reply: {what}"))
}
