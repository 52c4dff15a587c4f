//! The worker's outgoing datagram queue, Sans-IO: it groups what the engine
//! produced into send calls and remembers what the socket has not taken yet.
//!
//! A fan-out sends one datagram per viewer, each to another address, so GSO
//! (one destination per call) cannot batch it; `sendmmsg(2)` can. The queue
//! keeps two shapes of message, in the engine's order:
//! - a GSO run: equal-size datagrams to one destination (a keyframe burst to
//!   one viewer), sent by itself with a segment size;
//! - a single datagram; consecutive singles form one `sendmmsg` batch.
//!
//! The driver asks [`SendQueue::poll_batch`], performs it, and reports back:
//! [`SendQueue::handle_sent`] (how many messages the socket took — a
//! nonblocking `sendmmsg` may take fewer than offered) or
//! [`SendQueue::handle_refused`] (the first message failed: it is dropped and
//! counted, the rest stays). On `EAGAIN` it reports nothing and waits for the
//! socket to be writable: nothing is lost and nothing spins. While the socket
//! is blocked, pushes beyond `max_bytes` are dropped and counted.

use std::net::SocketAddr;

/// At most this many messages per `sendmmsg` call (the kernel caps a call at
/// `UIO_MAXIOV`, 1024; a smaller batch keeps the stack of headers small and
/// still divides the syscall cost by tens).
pub const MAX_BATCH: usize = 64;

/// One message: `len` bytes of the queue's buffer from `start`, to `destination`.
/// When `len > segment` it is a GSO run of `segment`-byte datagrams (only the
/// last may be shorter); otherwise one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub destination: SocketAddr,
    pub start: usize,
    pub len: usize,
    pub segment: usize,
}

impl Message {
    /// How many datagrams this message puts on the wire.
    pub fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment.max(1)).max(1)
    }

    pub fn is_gso(&self) -> bool {
        self.len > self.segment
    }
}

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch<'a> {
    /// One `sendmmsg` of single datagrams (each its own destination).
    Many {
        messages: &'a [Message],
        bytes: &'a [u8],
    },
    /// One GSO send: `contents` in `segment`-byte datagrams to `destination`.
    Gso {
        destination: SocketAddr,
        segment: usize,
        contents: &'a [u8],
    },
}

/// Datagrams the queue gave up on, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub datagrams: usize,
    pub destination: SocketAddr,
}

/// Outgoing datagrams not yet taken by the socket, in order.
#[derive(Debug)]
pub struct SendQueue {
    bytes: Vec<u8>,
    messages: Vec<Message>,
    /// First message not yet sent.
    head: usize,
    /// Bytes of `bytes` before `messages[head]`, already sent.
    sent_bytes: usize,
    max_segments: usize,
    max_bytes: usize,
}

impl SendQueue {
    /// `max_segments`: the socket's GSO limit (1 disables GSO runs).
    /// `max_bytes`: unsent bytes kept while the socket is blocked.
    pub fn new(max_segments: usize, max_bytes: usize) -> SendQueue {
        SendQueue {
            bytes: Vec::with_capacity(64 * 1024),
            messages: Vec::with_capacity(MAX_BATCH),
            head: 0,
            sent_bytes: 0,
            max_segments: max_segments.max(1),
            max_bytes,
        }
    }

    /// Follows the socket's GSO limit (quinn-udp lowers it to 1 when the
    /// device refuses segmentation offload).
    pub fn set_max_segments(&mut self, max_segments: usize) {
        self.max_segments = max_segments.max(1);
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.messages.len()
    }

    /// Messages (send units) still queued: at [`MAX_BATCH`] a full batch is ready.
    pub fn pending_messages(&self) -> usize {
        self.messages.len() - self.head
    }

    /// Datagrams still queued.
    pub fn pending_datagrams(&self) -> usize {
        self.messages[self.head..].iter().map(Message::datagrams).sum()
    }

    /// Queues one datagram. It joins the last unsent message when that is a
    /// run of equal-size datagrams to the same destination (GSO); else it
    /// starts a message. `Err` when the queue is full: the datagram is dropped.
    pub fn push(&mut self, destination: SocketAddr, contents: &[u8]) -> Result<(), Dropped> {
        if contents.is_empty() {
            return Ok(());
        }
        if self.bytes.len() - self.sent_bytes + contents.len() > self.max_bytes {
            return Err(Dropped {
                datagrams: 1,
                destination,
            });
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(contents);
        if let Some(last) = self.messages[self.head..].last_mut() {
            // Every datagram in a run so far is full-size (a shorter one ends
            // the run by starting a new message), so equal size means it joins.
            let joins = last.destination == destination
                && last.segment == contents.len()
                && last.datagrams() < self.max_segments;
            if joins {
                last.len += contents.len();
                return Ok(());
            }
        }
        self.messages.push(Message {
            destination,
            start,
            len: contents.len(),
            segment: contents.len(),
        });
        Ok(())
    }

    /// The next send call to make, `None` when everything went.
    pub fn poll_batch(&self) -> Option<Batch<'_>> {
        let first = self.messages.get(self.head)?;
        if first.is_gso() {
            return Some(Batch::Gso {
                destination: first.destination,
                segment: first.segment,
                contents: &self.bytes[first.start..first.start + first.len],
            });
        }
        let run = self.messages[self.head..]
            .iter()
            .take(MAX_BATCH)
            .take_while(|m| !m.is_gso())
            .count();
        Some(Batch::Many {
            messages: &self.messages[self.head..self.head + run],
            bytes: &self.bytes,
        })
    }

    /// The socket took the first `messages` of the last batch.
    pub fn handle_sent(&mut self, messages: usize) {
        let end = (self.head + messages).min(self.messages.len());
        for m in &self.messages[self.head..end] {
            self.sent_bytes = m.start + m.len;
        }
        self.head = end;
        self.reset_if_empty();
    }

    /// The socket refused the first message of the last batch (an error other
    /// than "would block"): it is dropped; the rest stays queued.
    pub fn handle_refused(&mut self) -> Option<Dropped> {
        let m = *self.messages.get(self.head)?;
        self.handle_sent(1);
        Some(Dropped {
            datagrams: m.datagrams(),
            destination: m.destination,
        })
    }

    /// Drops everything still queued (the worker is stopping).
    pub fn clear(&mut self) -> usize {
        let n = self.pending_datagrams();
        self.head = self.messages.len();
        self.reset_if_empty();
        n
    }

    fn reset_if_empty(&mut self) {
        if self.is_empty() {
            self.bytes.clear();
            self.messages.clear();
            self.head = 0;
            self.sent_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// (destination port, datagram count, segment) of each message the
    /// batches hold, one inner list per batch, sending everything.
    fn drain(q: &mut SendQueue) -> Vec<Vec<(u16, usize, usize)>> {
        let mut out = Vec::new();
        while let Some(batch) = q.poll_batch() {
            let (shape, n) = match batch {
                Batch::Many { messages, bytes } => {
                    for m in messages {
                        assert_eq!(bytes[m.start..m.start + m.len].len(), m.segment);
                    }
                    let shape: Vec<_> = messages
                        .iter()
                        .map(|m| (m.destination.port(), m.datagrams(), m.segment))
                        .collect();
                    let n = shape.len();
                    (shape, n)
                }
                Batch::Gso {
                    destination,
                    segment,
                    contents,
                } => (
                    vec![(destination.port(), contents.len().div_ceil(segment), segment)],
                    1,
                ),
            };
            out.push(shape);
            q.handle_sent(n);
        }
        out
    }

    #[test]
    fn fan_out_to_distinct_destinations_is_one_sendmmsg_batch() {
        let mut q = SendQueue::new(64, 1 << 20);
        for port in 1..=10 {
            q.push(addr(port), &[port as u8; 100]).unwrap();
        }
        let batches = drain(&mut q);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 10);
        assert!(batches[0].iter().all(|&(_, n, seg)| n == 1 && seg == 100));
        assert!(q.is_empty());
    }

    #[test]
    fn batches_are_capped_at_max_batch() {
        let mut q = SendQueue::new(64, 1 << 20);
        for port in 0..(MAX_BATCH as u16 * 2 + 5) {
            q.push(addr(1000 + port), &[1; 50]).unwrap();
        }
        let sizes: Vec<usize> = drain(&mut q).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH, 5]);
    }

    #[test]
    fn equal_size_run_to_one_destination_becomes_gso_and_keeps_order() {
        let mut q = SendQueue::new(64, 1 << 20);
        q.push(addr(1), &[0; 80]).unwrap();
        for _ in 0..5 {
            q.push(addr(2), &[2; 1200]).unwrap();
        }
        // A shorter tail is its own datagram (the run's segments must stay equal
        // for the next joiner), then another destination.
        q.push(addr(2), &[2; 300]).unwrap();
        q.push(addr(3), &[3; 80]).unwrap();
        let batches = drain(&mut q);
        assert_eq!(
            batches,
            vec![
                vec![(1, 1, 80)],
                vec![(2, 5, 1200)],
                vec![(2, 1, 300), (3, 1, 80)],
            ]
        );
    }

    #[test]
    fn gso_runs_stop_at_the_socket_segment_limit() {
        let mut q = SendQueue::new(3, 1 << 20);
        for _ in 0..7 {
            q.push(addr(9), &[9; 100]).unwrap();
        }
        let batches = drain(&mut q);
        assert_eq!(
            batches,
            vec![vec![(9, 3, 100)], vec![(9, 3, 100)], vec![(9, 1, 100)]]
        );
    }

    #[test]
    fn without_gso_every_datagram_is_a_single() {
        let mut q = SendQueue::new(1, 1 << 20);
        for _ in 0..4 {
            q.push(addr(9), &[9; 100]).unwrap();
        }
        assert_eq!(drain(&mut q), vec![vec![(9, 1, 100); 4]]);
    }

    #[test]
    fn partial_send_keeps_the_rest_in_order() {
        let mut q = SendQueue::new(64, 1 << 20);
        for port in 1..=6 {
            q.push(addr(port), &[port as u8; 10]).unwrap();
        }
        let Some(Batch::Many { messages, .. }) = q.poll_batch() else {
            panic!("expected a sendmmsg batch");
        };
        assert_eq!(messages.len(), 6);
        // The kernel took 4 of 6 and then would block: 5 and 6 wait.
        q.handle_sent(4);
        assert_eq!(q.pending_datagrams(), 2);
        // What the engine writes meanwhile goes behind them.
        q.push(addr(7), &[7; 10]).unwrap();
        let Some(Batch::Many { messages, bytes }) = q.poll_batch() else {
            panic!("expected a sendmmsg batch");
        };
        let rest: Vec<(u16, u8)> = messages
            .iter()
            .map(|m| (m.destination.port(), bytes[m.start]))
            .collect();
        assert_eq!(rest, vec![(5, 5), (6, 6), (7, 7)]);
        q.handle_sent(3);
        assert!(q.is_empty());
        assert_eq!(q.poll_batch(), None);
    }

    #[test]
    fn a_refused_message_is_dropped_and_counted_and_the_rest_goes() {
        let mut q = SendQueue::new(64, 1 << 20);
        q.push(addr(1), &[1; 10]).unwrap();
        for _ in 0..3 {
            q.push(addr(2), &[2; 10]).unwrap();
        }
        q.push(addr(3), &[3; 10]).unwrap();
        // The first message is refused (e.g. EMSGSIZE, unreachable).
        let dropped = q.handle_refused().unwrap();
        assert_eq!(dropped.datagrams, 1);
        assert_eq!(dropped.destination, addr(1));
        // Then the GSO run is refused as a whole: three datagrams counted.
        assert!(matches!(q.poll_batch(), Some(Batch::Gso { .. })));
        assert_eq!(q.handle_refused().unwrap().datagrams, 3);
        assert_eq!(drain(&mut q), vec![vec![(3, 1, 10)]]);
        assert_eq!(q.handle_refused(), None);
    }

    #[test]
    fn a_blocked_queue_drops_beyond_its_byte_limit() {
        let mut q = SendQueue::new(64, 250);
        for port in 1..=2 {
            q.push(addr(port), &[0; 100]).unwrap();
        }
        let err = q.push(addr(3), &[0; 100]).unwrap_err();
        assert_eq!(err.datagrams, 1);
        assert_eq!(err.destination, addr(3));
        // Once the socket took one, there is room again.
        q.handle_sent(1);
        q.push(addr(3), &[0; 100]).unwrap();
        assert_eq!(q.pending_datagrams(), 2);
        assert_eq!(q.clear(), 2);
        assert!(q.is_empty());
    }
}
