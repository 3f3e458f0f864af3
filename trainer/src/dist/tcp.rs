//! Ranks as processes, on one host or several, joined over TCP: every rank connects to rank 0's
//! rendezvous address, rank 0 sums the buffers in rank order and sends the sum back (a star). It
//! is the collective of CPU ranks (tests, `oxtune local` dry runs of a distributed job) and, on
//! GPUs, the rendezvous that hands NCCL its id: one mechanism that works on one host and across
//! hosts, needs nothing but the port every SageMaker host may open to the others.
//!
//! A rank that fails sends its reason before it goes; a connection that drops counts as its rank
//! failing. Rank 0 passes either on to every rank, so no rank waits for a peer that is gone.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Collective, DistError};

const HELLO: u8 = 1;
const READY: u8 = 2;
const DATA: u8 = 3;
const ABORT: u8 = 4;
const BLOB: u8 = 5;

/// One framed message: a tag and its bytes.
struct Frame {
    tag: u8,
    body: Vec<u8>,
}

fn write_frame(s: &mut TcpStream, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(body)?;
    s.flush()
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Frame { tag: head[0], body })
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn abort_body(rank: usize, reason: &str) -> Vec<u8> {
    let mut b = (rank as u32).to_le_bytes().to_vec();
    b.extend(reason.as_bytes());
    b
}

fn parse_abort(body: &[u8]) -> DistError {
    let rank = body.get(..4).map(|r| u32::from_le_bytes(r.try_into().expect("4 bytes")) as usize).unwrap_or(0);
    DistError::PeerFailed { rank, reason: String::from_utf8_lossy(body.get(4..).unwrap_or(&[])).into_owned() }
}

/// What rank 0 hears from one peer: a frame, or the failure its lost connection means.
enum Heard {
    Frame(Frame),
    Lost(DistError),
}

struct Peer {
    rank: usize,
    stream: TcpStream,
}

/// Rank 0's side of the readers: what they heard, and frames kept per rank until asked for.
type Inbox = (Receiver<(usize, Heard)>, Vec<VecDeque<Frame>>);

enum Role {
    Root { peers: Arc<Mutex<Vec<Peer>>>, inbox: Mutex<Inbox> },
    Member { stream: Mutex<TcpStream>, root: String },
}

/// One rank of a TCP group (see the module docs).
pub struct TcpGroup {
    rank: usize,
    world: usize,
    role: Role,
}

impl TcpGroup {
    /// Joins the group of `world` ranks whose rank 0 listens on `addr` (`host:port`): rank 0 binds
    /// the port on every interface and waits for the others; the others resolve and connect,
    /// retrying both until `timeout` (hosts come up, and get their names, at different times).
    /// Returns once every rank has joined.
    pub fn join(rank: usize, world: usize, addr: &str, timeout: Duration) -> Result<TcpGroup, DistError> {
        let deadline = Instant::now() + timeout;
        let role = if rank == 0 { root(world, addr, deadline)? } else { member(rank, world, addr, deadline)? };
        Ok(TcpGroup { rank, world, role })
    }

    /// Rank 0's `bytes` on every rank (the others pass `None`): how the NCCL id travels.
    pub fn share(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, DistError> {
        match &self.role {
            Role::Root { peers, .. } => {
                let bytes = bytes.unwrap_or_default().to_vec();
                send_all(peers, None, BLOB, &bytes)?;
                Ok(bytes)
            }
            Role::Member { stream, root } => {
                let mut s = stream.lock().unwrap_or_else(|p| p.into_inner());
                match read_frame(&mut s).map_err(|e| lost_root(root, &e))? {
                    Frame { tag: BLOB, body } => Ok(body),
                    Frame { tag: ABORT, body } => Err(parse_abort(&body)),
                    f => Err(protocol(f.tag)),
                }
            }
        }
    }
}

fn lost(rank: usize, e: &std::io::Error) -> DistError {
    DistError::PeerFailed { rank, reason: lost_reason(e) }
}

fn lost_reason(e: &std::io::Error) -> String {
    format!("its connection was lost ({e}); see that rank's log for why")
}

fn lost_root(root: &str, e: &std::io::Error) -> DistError {
    DistError::PeerFailed {
        rank: 0,
        reason: format!("the connection to rank 0 at {root} was lost ({e}); see rank 0's log for why"),
    }
}

fn protocol(tag: u8) -> DistError {
    DistError::Protocol(format!("unexpected message {tag} between ranks: are all ranks the same train version?"))
}

fn root(world: usize, addr: &str, deadline: Instant) -> Result<Role, DistError> {
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or(addr);
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().map_err(|_| bad_addr(addr))?))
        .map_err(|e| DistError::Rendezvous(format!("rank 0 cannot listen on port {port}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| DistError::Rendezvous(e.to_string()))?;
    let mut peers: Vec<Peer> = Vec::new();
    while peers.len() + 1 < world {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false).map_err(|e| DistError::Rendezvous(e.to_string()))?;
                stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let hello = read_frame(&mut stream).map_err(|e| DistError::Rendezvous(format!("{from}: {e}")))?;
                let (rank, their_world) = match hello {
                    Frame { tag: HELLO, body } if body.len() == 8 => (
                        u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize,
                        u32::from_le_bytes(body[4..].try_into().expect("4 bytes")) as usize,
                    ),
                    _ => return Err(DistError::Rendezvous(format!("{from} is not a train rank"))),
                };
                if their_world != world || rank == 0 || rank >= world || peers.iter().any(|p| p.rank == rank) {
                    return Err(DistError::Rendezvous(format!(
                        "{from} joined as rank {rank} of {their_world}; rank 0 expects ranks 1..{world} of {world} once each: do all hosts run the same job with the same GPUs per host?"
                    )));
                }
                stream.set_read_timeout(None).ok();
                stream.set_nodelay(true).ok();
                peers.push(Peer { rank, stream });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let mut missing: Vec<usize> = (1..world).filter(|r| !peers.iter().any(|p| p.rank == *r)).collect();
                    missing.truncate(16);
                    return Err(DistError::Rendezvous(format!(
                        "ranks {missing:?} did not reach rank 0 on port {port} in time: check that every host runs the job and that the hosts may connect to each other"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(DistError::Rendezvous(format!("accepting on port {port}: {e}"))),
        }
    }
    peers.sort_by_key(|p| p.rank);
    let mut readers = Vec::new();
    for p in peers.iter_mut() {
        write_frame(&mut p.stream, READY, &[]).map_err(|e| lost(p.rank, &e))?;
        readers.push((p.rank, p.stream.try_clone().map_err(|e| lost(p.rank, &e))?));
    }
    let peers = Arc::new(Mutex::new(peers));
    let (tx, rx) = channel();
    for (rank, mut reader) in readers {
        let (tx, peers) = (tx.clone(), peers.clone());
        // One reader per peer: rank 0 hears an abort or a lost connection from any rank at once,
        // and passes it on to every other rank straight away (a rank waiting in a collective
        // fails now, not when rank 0 next reduces).
        std::thread::spawn(move || loop {
            let (heard, last) = match read_frame(&mut reader) {
                Ok(f) if f.tag == ABORT => {
                    let _ = send_all(&peers, Some(rank), ABORT, &f.body);
                    (Heard::Frame(f), false)
                }
                Ok(f) => (Heard::Frame(f), false),
                Err(e) => {
                    let (why, body) = (lost(rank, &e), abort_body(rank, &lost_reason(&e)));
                    let _ = send_all(&peers, Some(rank), ABORT, &body);
                    (Heard::Lost(why), true)
                }
            };
            if tx.send((rank, heard)).is_err() || last {
                return;
            }
        });
    }
    Ok(Role::Root { peers, inbox: Mutex::new((rx, (0..world).map(|_| VecDeque::new()).collect())) })
}

/// Rank 0: one frame to every rank (but `except`), under the lock that keeps frames whole; the
/// first rank it cannot reach is the error.
fn send_all(peers: &Mutex<Vec<Peer>>, except: Option<usize>, tag: u8, body: &[u8]) -> Result<(), DistError> {
    let mut first = Ok(());
    for p in peers.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().filter(|p| Some(p.rank) != except) {
        if let Err(e) = write_frame(&mut p.stream, tag, body) {
            first = first.and(Err(lost(p.rank, &e)));
        }
    }
    first
}

fn bad_addr(addr: &str) -> DistError {
    DistError::Rendezvous(format!("`{addr}` is not host:port"))
}

fn member(rank: usize, world: usize, addr: &str, deadline: Instant) -> Result<Role, DistError> {
    let mut last;
    let mut wait = Duration::from_millis(50);
    let mut stream = loop {
        // Name resolution is retried too: SageMaker hosts may not know each other's names yet.
        let attempt = addr.to_socket_addrs().map_err(|e| e.to_string()).and_then(|mut it| {
            it.next().ok_or_else(|| "no address".to_string()).and_then(|a| {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                TcpStream::connect_timeout(&a, left.min(Duration::from_secs(5))).map_err(|e| e.to_string())
            })
        });
        match attempt {
            Ok(s) => break s,
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(DistError::Rendezvous(format!(
                "rank {rank} cannot reach rank 0 at {addr}: {last}; check that the first host runs the job and that the hosts may connect to each other"
            )));
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(2));
    };
    stream.set_nodelay(true).ok();
    let mut hello = (rank as u32).to_le_bytes().to_vec();
    hello.extend((world as u32).to_le_bytes());
    write_frame(&mut stream, HELLO, &hello).map_err(|e| lost_root(addr, &e))?;
    match read_frame(&mut stream).map_err(|e| lost_root(addr, &e))? {
        Frame { tag: READY, .. } => {}
        Frame { tag: ABORT, body } => return Err(parse_abort(&body)),
        f => return Err(protocol(f.tag)),
    }
    Ok(Role::Member { stream: Mutex::new(stream), root: addr.to_string() })
}

impl TcpGroup {
    /// A failure some rank reported while this one was outside a collective, without blocking:
    /// how a rank that waits on its GPU for NCCL learns that it waits for a rank that is gone.
    pub fn heard_failure(&self) -> Option<DistError> {
        match &self.role {
            Role::Root { inbox, .. } => {
                // The readers have passed it on already; rank 0 only has to notice it.
                let mut guard = inbox.try_lock().ok()?;
                let (rx, queues) = &mut *guard;
                while let Ok((from, heard)) = rx.try_recv() {
                    match heard {
                        Heard::Frame(Frame { tag: ABORT, body }) => return Some(parse_abort(&body)),
                        Heard::Frame(f) => queues[from].push_back(f),
                        Heard::Lost(why) => return Some(why),
                    }
                }
                None
            }
            Role::Member { stream, root } => {
                let mut s = stream.try_lock().ok()?;
                s.set_nonblocking(true).ok()?;
                let peeked = s.peek(&mut [0u8; 1]);
                let _ = s.set_nonblocking(false);
                match peeked {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(e) => Some(lost_root(root, &e)),
                    Ok(0) => Some(lost_root(root, &std::io::ErrorKind::UnexpectedEof.into())),
                    // Outside a collective only an abort comes from rank 0.
                    Ok(_) => Some(match read_frame(&mut s) {
                        Ok(Frame { tag: ABORT, body }) => parse_abort(&body),
                        Ok(f) => protocol(f.tag),
                        Err(e) => lost_root(root, &e),
                    }),
                }
            }
        }
    }

    /// Rank 0: the next frame from `rank`, or the failure of any rank (which is then passed on).
    fn next_from(&self, rank: usize) -> Result<Frame, DistError> {
        let Role::Root { inbox, .. } = &self.role else { unreachable!("rank 0 only") };
        let mut guard = inbox.lock().unwrap_or_else(|p| p.into_inner());
        let (rx, queues) = &mut *guard;
        loop {
            if let Some(f) = queues[rank].pop_front() {
                return Ok(f);
            }
            let (from, heard) =
                rx.recv().map_err(|_| DistError::PeerFailed { rank, reason: "its connection was lost".into() })?;
            match heard {
                Heard::Frame(Frame { tag: ABORT, body }) => return Err(parse_abort(&body)),
                Heard::Frame(f) => queues[from].push_back(f),
                Heard::Lost(why) => return Err(why),
            }
        }
    }

    /// Rank 0: every rank hears that `rank` failed (a rank it cannot reach has gone already).
    fn abort_all(&self, rank: usize, reason: &str) {
        if let Role::Root { peers, .. } = &self.role {
            let _ = send_all(peers, None, ABORT, &abort_body(rank, reason));
        }
    }

    fn root_reduce(&self, buf: &mut [f32]) -> Result<(), DistError> {
        let mut sum = buf.to_vec();
        for rank in 1..self.world {
            let f = self.next_from(rank)?;
            if f.tag != DATA {
                return Err(protocol(f.tag));
            }
            if f.body.len() != buf.len() * 4 {
                return Err(DistError::Mismatch { rank, got: f.body.len() / 4, want: buf.len() });
            }
            for (s, c) in sum.iter_mut().zip(f.body.chunks_exact(4)) {
                *s += f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        let Role::Root { peers, .. } = &self.role else { unreachable!("rank 0 only") };
        send_all(peers, None, DATA, &f32s_to_bytes(&sum))?;
        buf.copy_from_slice(&sum);
        Ok(())
    }
}

impl Drop for TcpGroup {
    /// Rank 0's readers hold their own handles on the connections: close them, so the other
    /// ranks see rank 0 gone when its group is, not only when its process exits.
    fn drop(&mut self) {
        if let Role::Root { peers, .. } = &self.role {
            for p in peers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = p.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        match &self.role {
            Role::Root { .. } => self.root_reduce(buf).inspect_err(|e| {
                // Whoever failed, the others hear it from rank 0 instead of waiting for a sum.
                let (rank, reason) = match e {
                    DistError::PeerFailed { rank, reason } => (*rank, reason.clone()),
                    other => (0, other.to_string()),
                };
                self.abort_all(rank, &reason);
            }),
            Role::Member { stream, root } => {
                let mut s = stream.lock().unwrap_or_else(|p| p.into_inner());
                write_frame(&mut s, DATA, &f32s_to_bytes(buf)).map_err(|e| lost_root(root, &e))?;
                match read_frame(&mut s).map_err(|e| lost_root(root, &e))? {
                    Frame { tag: DATA, body } if body.len() == buf.len() * 4 => {
                        for (b, c) in buf.iter_mut().zip(body.chunks_exact(4)) {
                            *b = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                        }
                        Ok(())
                    }
                    Frame { tag: DATA, body } => {
                        Err(DistError::Mismatch { rank: 0, got: body.len() / 4, want: buf.len() })
                    }
                    Frame { tag: ABORT, body } => Err(parse_abort(&body)),
                    f => Err(protocol(f.tag)),
                }
            }
        }
    }

    fn abort(&self, reason: &str) {
        match &self.role {
            Role::Root { .. } => self.abort_all(0, reason),
            Role::Member { stream, .. } => {
                // A member may be blocked in a reduce on another thread: never wait for its lock.
                if let Ok(mut s) = stream.try_lock() {
                    let _ = write_frame(&mut s, ABORT, &abort_body(self.rank, reason));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn group(world: usize) -> Vec<TcpGroup> {
        let addr = format!("127.0.0.1:{}", free_port());
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let addr = addr.clone();
                std::thread::spawn(move || TcpGroup::join(r, world, &addr, Duration::from_secs(20)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_in_rank_order_and_shares_rank_0s_bytes() {
        let g = group(3);
        let out: Vec<(Vec<f32>, Vec<u8>)> = std::thread::scope(|s| {
            let hs: Vec<_> = g
                .iter()
                .map(|m| {
                    s.spawn(move || {
                        let id = m.share((m.rank() == 0).then_some(&b"nccl-id"[..])).unwrap();
                        let mut all = Vec::new();
                        for round in 0..3 {
                            let mut buf = vec![m.rank() as f32 + round as f32, 1e8, 1.0];
                            m.all_reduce_sum(&mut buf).unwrap();
                            all.extend(buf);
                        }
                        (all, id)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(out[0].0[..3], [3.0, 3e8, 3.0]);
        assert_eq!(out[0].0[6..9], [9.0, 3e8, 3.0]);
        assert!(out.iter().all(|o| o.0 == out[0].0 && o.1 == b"nccl-id"));
    }

    #[test]
    fn a_failed_or_vanished_rank_releases_the_others() {
        let mut g = group(3);
        let gone = g.pop().unwrap();
        let (r0, r1) = (&g[0], &g[1]);
        std::thread::scope(|s| {
            let h1 = s.spawn(|| r1.all_reduce_sum(&mut [1.0]));
            let h0 = s.spawn(|| r0.all_reduce_sum(&mut [1.0]));
            gone.abort("out of memory");
            let e0 = h0.join().unwrap().unwrap_err().to_string();
            let e1 = h1.join().unwrap().unwrap_err().to_string();
            assert!(e0.contains("rank 2 failed: out of memory"), "{e0}");
            assert!(e1.contains("rank 2 failed: out of memory"), "{e1}");
        });
        let mut g = group(2);
        drop(g.pop());
        let e = g[0].all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
        assert!(e.contains("rank 1 failed") && e.contains("connection was lost"), "{e}");
    }

    #[test]
    fn rank_0_passes_a_failure_on_while_it_is_busy() {
        let mut g = group(3);
        let failing = g.pop().unwrap();
        let waiting = g.pop().unwrap();
        // Rank 0 (g[0]) is computing, not reducing: rank 1 still hears of rank 2 at once.
        std::thread::scope(|s| {
            let h = s.spawn(|| waiting.all_reduce_sum(&mut [1.0]));
            std::thread::sleep(Duration::from_millis(50));
            failing.abort("out of memory");
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("rank 2 failed: out of memory"), "{e}");
        });
        drop(g);
    }

    #[test]
    fn a_failure_is_heard_without_blocking() {
        let mut g = group(3);
        let failing = g.pop().unwrap();
        assert!(g.iter().all(|m| m.heard_failure().is_none()));
        failing.abort("out of memory");
        for m in &g {
            let deadline = Instant::now() + Duration::from_secs(10);
            let e = loop {
                match m.heard_failure() {
                    Some(e) => break e.to_string(),
                    None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                    None => panic!("rank {} never heard of rank 2", m.rank()),
                }
            };
            assert!(e.contains("rank 2 failed: out of memory"), "rank {}: {e}", m.rank());
        }
        // A rank whose rank 0 is gone hears that too.
        let mut g = group(2);
        let member = g.pop().unwrap();
        drop(g);
        let deadline = Instant::now() + Duration::from_secs(10);
        while member.heard_failure().is_none() {
            assert!(Instant::now() < deadline, "rank 1 never noticed that rank 0 left");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_named() {
        let addr = format!("127.0.0.1:{}", free_port());
        let e = TcpGroup::join(0, 3, &addr, Duration::from_millis(300)).err().unwrap().to_string();
        assert!(e.contains("ranks [1, 2] did not reach rank 0"), "{e}");
        let e = TcpGroup::join(1, 2, &addr, Duration::from_millis(300)).err().unwrap().to_string();
        assert!(e.contains("rank 1 cannot reach rank 0"), "{e}");
    }
}
