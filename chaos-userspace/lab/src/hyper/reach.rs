//! Reachability between light nodes: from a UDP socket opened inside each source node's
//! namespace, one datagram to every asked destination's echo port, replies collected within
//! a bounded time, one retry round for the missing; and a TCP connect + echo for a subset.
//! Nodes are 1-based indexes (`n1` is 1).

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use chaos_datapath::netns::Netns;
use serde::Serialize;

use super::LightNode;

const MAGIC: u32 = 0xc4a0_7e57;
/// A probe socket may get a reply from every other node at once (docs/many-namespaces.md:
/// 1023 replies need 8 MB).
const PROBE_RECEIVE_BUFFER: i32 = 8 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a round waits for replies after its last datagram.
    pub timeout: Duration,
    /// Rounds after the first, for the pairs still unanswered.
    pub retries: u32,
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { timeout: Duration::from_millis(300), retries: 1, ipv6: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub protocol: &'static str,
    pub asked: usize,
    pub answered: Vec<(u32, u32)>,
    pub unanswered: Vec<(u32, u32)>,
    pub rounds: u32,
    pub seconds: f64,
}

/// Every ordered pair, in rounds of one offset so that each destination gets one datagram
/// per round.
pub fn all_pairs(nodes: u32) -> Vec<(u32, u32)> {
    (1..nodes).flat_map(|offset| (1..=nodes).map(move |i| (i, (i - 1 + offset) % nodes + 1))).collect()
}

/// xorshift64: deterministic samples without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `per_node` distinct offsets drawn with `seed`: every node sends to `per_node` others and
/// is asked by `per_node` others.
pub fn sample_pairs(nodes: u32, per_node: u32, seed: u64) -> Vec<(u32, u32)> {
    if nodes < 2 {
        return Vec::new();
    }
    let mut rng = Rng(seed | 1);
    let mut offsets: Vec<u32> = (1..nodes).collect();
    let take = (per_node as usize).min(offsets.len());
    for i in 0..take {
        let j = i + rng.below((offsets.len() - i) as u64) as usize;
        offsets.swap(i, j);
    }
    offsets[..take].iter().flat_map(|&offset| (1..=nodes).map(move |i| (i, (i - 1 + offset) % nodes + 1))).collect()
}

/// For every ordered pair of groups (a group with itself too), `per_pair` pairs with the
/// source in the first and the destination in the second (fewer when the groups are small).
pub fn group_pairs(groups: &[Vec<u32>], per_pair: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng(seed | 1);
    let mut pairs = Vec::new();
    for a in groups {
        for b in groups {
            let mut chosen = std::collections::BTreeSet::new();
            for _ in 0..per_pair * 4 {
                if chosen.len() >= per_pair as usize || a.is_empty() || b.is_empty() {
                    break;
                }
                let s = a[rng.below(a.len() as u64) as usize];
                let d = b[rng.below(b.len() as u64) as usize];
                if s != d {
                    chosen.insert((s, d));
                }
            }
            pairs.extend(chosen);
        }
    }
    pairs
}

fn address(node: &LightNode, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(node.ipv6)
    } else {
        IpAddr::V4(node.ipv4)
    }
}

fn check_pairs(nodes: &[LightNode], pairs: &[(u32, u32)]) -> Result<()> {
    let n = nodes.len() as u32;
    if let Some((s, d)) = pairs.iter().find(|(s, d)| *s == 0 || *d == 0 || *s > n || *d > n) {
        bail!("pair ({s}, {d}) names a node outside 1..{n}");
    }
    Ok(())
}

/// UDP reachability of `pairs` (source, destination).
pub fn udp(nodes: &[LightNode], pairs: &[(u32, u32)], port: u16, options: Options) -> Result<Reach> {
    check_pairs(nodes, pairs)?;
    let start = Instant::now();
    // One socket per source node, opened inside its namespace.
    let mut socket_of: HashMap<u32, usize> = HashMap::new();
    let mut sockets: Vec<UdpSocket> = Vec::new();
    for &(s, _) in pairs {
        if socket_of.contains_key(&s) {
            continue;
        }
        let node = &nodes[s as usize - 1];
        let ns = Netns::open(&node.netns_path).with_context(|| format!("opening {}", node.netns_path.display()))?;
        let socket = ns.run(|| -> std::io::Result<UdpSocket> {
            let any: SocketAddr =
                if options.ipv6 { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
            let socket = UdpSocket::bind(any)?;
            super::echo::force_receive_buffer(socket.as_raw_fd(), PROBE_RECEIVE_BUFFER);
            socket.set_nonblocking(true)?;
            Ok(socket)
        })??;
        socket_of.insert(s, sockets.len());
        sockets.push(socket);
    }
    let mut answered = vec![false; pairs.len()];
    let mut left = pairs.len();
    let mut polls: Vec<libc::pollfd> =
        sockets.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buffer = [0u8; 64];
    let mut drain = |answered: &mut Vec<bool>, left: &mut usize, polls: &mut Vec<libc::pollfd>, wait_ms: i32| {
        // SAFETY: poll reads and writes the array we own, of the length we pass.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, wait_ms) };
        if ready <= 0 {
            return;
        }
        for (i, p) in polls.iter_mut().enumerate() {
            if p.revents == 0 {
                continue;
            }
            p.revents = 0;
            // Bounded: a socket holds at most the replies of the datagrams it sent.
            for _ in 0..100_000 {
                let Ok(n) = sockets[i].recv(&mut buffer) else { break };
                if n < 8 || u32::from_be_bytes(buffer[0..4].try_into().unwrap()) != MAGIC {
                    continue;
                }
                let index = u32::from_be_bytes(buffer[4..8].try_into().unwrap()) as usize;
                if index < answered.len() && !answered[index] {
                    answered[index] = true;
                    *left -= 1;
                }
            }
        }
    };
    let mut rounds = 0;
    for _ in 0..=options.retries {
        if left == 0 {
            break;
        }
        rounds += 1;
        for (index, &(s, d)) in pairs.iter().enumerate() {
            if answered[index] {
                continue;
            }
            let mut payload = [0u8; 8];
            payload[0..4].copy_from_slice(&MAGIC.to_be_bytes());
            payload[4..8].copy_from_slice(&(index as u32).to_be_bytes());
            let to = SocketAddr::new(address(&nodes[d as usize - 1], options.ipv6), port);
            let _ = sockets[socket_of[&s]].send_to(&payload, to);
            // Take replies in as they come, so no socket's buffer fills.
            if index % 512 == 511 {
                drain(&mut answered, &mut left, &mut polls, 0);
            }
        }
        let deadline = Instant::now() + options.timeout;
        while left > 0 {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else { break };
            drain(&mut answered, &mut left, &mut polls, remaining.as_millis().max(1) as i32);
        }
    }
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for (pair, ok) in pairs.iter().zip(&answered) {
        if *ok {
            yes.push(*pair);
        } else {
            no.push(*pair);
        }
    }
    Ok(Reach {
        protocol: "udp",
        asked: pairs.len(),
        answered: yes,
        unanswered: no,
        rounds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// TCP reachability of `pairs`: from the source's namespace a connection to the
/// destination's echo port (at most `timeout`), 8 bytes written and read back. One pair
/// after the other (meant for a subset).
pub fn tcp(nodes: &[LightNode], pairs: &[(u32, u32)], port: u16, timeout: Duration, ipv6: bool) -> Result<Reach> {
    check_pairs(nodes, pairs)?;
    let start = Instant::now();
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for &(s, d) in pairs {
        let node = &nodes[s as usize - 1];
        let to = SocketAddr::new(address(&nodes[d as usize - 1], ipv6), port);
        let ns = Netns::open(&node.netns_path).with_context(|| format!("opening {}", node.netns_path.display()))?;
        let ok = ns.run(|| -> bool {
            let Ok(mut stream) = std::net::TcpStream::connect_timeout(&to, timeout) else { return false };
            let _ = stream.set_read_timeout(Some(timeout));
            let message = *b"chaos-7!";
            let mut back = [0u8; 8];
            stream.write_all(&message).is_ok() && stream.read_exact(&mut back).is_ok() && back == message
        })?;
        if ok {
            yes.push((s, d));
        } else {
            no.push((s, d));
        }
    }
    Ok(Reach {
        protocol: "tcp",
        asked: pairs.len(),
        answered: yes,
        unanswered: no,
        rounds: 1,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_cover_what_they_say() {
        let all = all_pairs(5);
        assert_eq!(all.len(), 20);
        assert!(all.iter().all(|(s, d)| s != d));
        assert_eq!(all.iter().collect::<std::collections::BTreeSet<_>>().len(), 20);
        let sample = sample_pairs(1024, 8, 7);
        assert_eq!(sample.len(), 8 * 1024);
        assert!(sample.iter().all(|(s, d)| s != d && *d >= 1 && *d <= 1024));
        let groups = vec![(1..=10).collect::<Vec<u32>>(), (11..=20).collect()];
        let g = group_pairs(&groups, 3, 1);
        assert_eq!(g.len(), 12);
        assert!(g[6..9].iter().all(|(s, d)| *s > 10 && *d <= 10));
    }
}
