//! A media thread with nothing to do sleeps (no polling loop), and a
//! command wakes it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loadtest::peer::Shared;
use loadtest::shard::{Command, Shard};

#[test]
fn an_idle_shard_does_not_wake_until_a_command_arrives() {
    let shard = Shard::spawn(0, Arc::new(Shared::new(0))).expect("spawn shard");
    // No peers, no traffic: no deadline, so the thread must stay in its wait.
    // A polling loop (1 ms tick or a non-blocking recv) wakes hundreds of
    // times here even on a loaded machine.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shard.wakeups(), 0, "an idle shard woke up");
    // A command wakes it through its eventfd.
    let local = "127.10.1.1:9".parse().expect("address");
    shard.handle().send(Command::Leave(local)).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard.wakeups() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let woken = shard.wakeups();
    assert!(woken >= 1, "a command did not wake the shard");
    // And it sleeps again.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        shard.wakeups() <= woken + 1,
        "the shard kept waking after the command"
    );
    // Stop is a command too: it answers long before stop's own 10 s timeout.
    let t = Instant::now();
    let r = shard.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop waited {:?}",
        t.elapsed()
    );
    assert!(r.viewers.is_empty() && r.publishers.is_empty());
}
