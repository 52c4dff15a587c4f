//! The load tester's own receive drops: a datagram the kernel discards
//! because the receiving socket's queue is full is counted in the socket's
//! `drops` column of `/proc/net/udp`, which the report shows beside the
//! loss (loss the tester caused, not the server).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use loadtest::peer::Shared;
use loadtest::shard::{Shard, socket_inode, udp_drops};

#[test]
fn a_full_receive_queue_is_counted_as_drops_of_that_socket() {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // The smallest queue the kernel allows (it doubles and floors the value).
    socket2::SockRef::from(&rx)
        .set_recv_buffer_size(1)
        .expect("rcvbuf");
    let inode = socket_inode(&rx).expect("socket inode from /proc/self/fd");
    assert_eq!(udp_drops(&[inode]), Some(0), "a fresh socket has dropped nothing");

    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sent = 400u64;
    let payload = [7u8; 1000];
    for _ in 0..sent {
        tx.send_to(&payload, rx.local_addr().expect("addr"))
            .expect("send");
    }
    // Nothing was read while they came: what is not queued was dropped.
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut queued = 0u64;
    let mut buf = [0u8; 2048];
    while rx.recv(&mut buf).is_ok() {
        queued += 1;
    }
    let drops = udp_drops(&[inode]).expect("the socket is listed");
    assert!(drops > 0, "no drops counted with a full queue ({queued} queued)");
    assert_eq!(queued + drops, sent, "queued {queued} + dropped {drops}");
    // Another socket's drops are not this one's.
    let other = socket_inode(&tx).expect("inode");
    assert_eq!(udp_drops(&[other]), Some(0));
    assert_eq!(udp_drops(&[inode, other]), Some(drops));
}

#[test]
fn a_shard_reports_its_socket_drops() {
    let shard = Shard::spawn(0, Arc::new(Shared::new(0))).expect("spawn shard");
    assert!(shard.inode.is_some());
    assert_eq!(shard.socket_drops(), Some(0));
    shard.stop();
    // A socket that is gone is not listed.
    assert_eq!(udp_drops(&[u64::MAX]), None);
}
