//! Gathering a batch: how long a worker holds it open for more deliveries, and when an idle worker parks.

use std::{
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use tokio::sync::{Mutex, mpsc, watch};

use crate::domain::tenant::Workers;

#[derive(Debug, PartialEq)]
pub(super) enum Next<T> {
    Batch(Vec<T>),
    /// The pool size changed while waiting for work: check whether to retire.
    Resized,
    /// The consumer stopped and the channel is drained.
    Closed,
    /// Nothing arrived for [`Linger::park_after`]: the worker's task ends, and the pool starts one again
    /// when deliveries come.
    Idle,
}

/// How long a worker holds a batch open for more deliveries.
#[derive(Debug, Clone, Copy)]
pub(super) struct Linger {
    /// Waited after each look at the channel that found it empty.
    pub(super) wait: Duration,
    /// Longest a batch stays open, from its first delivery.
    pub(super) max_wait: Duration,
    /// How long a worker waits for a first delivery before its task ends (an idle tenant holds no worker
    /// tasks).
    pub(super) park_after: Duration,
}

/// When an item came into the channel: a batch closes at most `max_wait` after its oldest item came, so a
/// delivery that already waited for a free worker is not held for a whole window more.
pub(super) trait Arrived {
    fn arrived(&self) -> tokio::time::Instant;
}

/// Counts the workers waiting for a first delivery, from when the wait begins until it ends.
struct Waiting<'a>(&'a AtomicU16);

impl<'a> Waiting<'a> {
    fn begin(count: &'a AtomicU16) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes up to `max` deliveries: waits for the first, then, while the batch is not full, lets more arrive for
/// `linger.wait` and takes them, again as long as each wait brought more, until `linger.max_wait` after the
/// first one came into the channel (under load it may have waited there already). A lone
/// message waits `wait` (a zero `wait` takes what is there and goes); under load batches fill up, which is
/// what makes a write cheap per message. A resize
/// can interrupt only the wait for the lock or for the first delivery, never a batch being gathered, so no
/// delivery is ever dropped unsettled; so can `linger.park_after` without a delivery.
///
/// While it waits for the lock or a first delivery, the worker is counted in `waiting`: the pool starts
/// another worker for a delivery only when none is waiting.
pub(super) async fn next_batch<T: Arrived>(
    receiver: &Mutex<mpsc::Receiver<T>>,
    desired: &mut watch::Receiver<Workers>,
    max: usize,
    linger: Linger,
    waiting: &AtomicU16,
) -> Next<T> {
    let counted = Waiting::begin(waiting);
    let park = tokio::time::sleep(linger.park_after);
    tokio::pin!(park);
    // Biased: the lock and a delivery that are ready win over a resize or parking, so that a worker never
    // leaves with a delivery waiting for it.
    let mut receiver = tokio::select! {
        biased;
        receiver = receiver.lock() => receiver,
        _ = desired.changed() => return Next::Resized,
        () = &mut park => return Next::Idle,
    };
    let first = tokio::select! {
        biased;
        first = receiver.recv() => first,
        _ = desired.changed() => return Next::Resized,
        () = &mut park => return Next::Idle,
    };
    drop(counted);
    let Some(first) = first else { return Next::Closed };
    let closes = first.arrived() + linger.max_wait;
    let mut batch = Vec::with_capacity(max);
    batch.push(first);
    // Sleeping and then taking what arrived wakes this task once per wait instead of once per delivery.
    let mut full = take_ready(&mut receiver, &mut batch, max);
    while !full && !linger.wait.is_zero() {
        let before = batch.len();
        let now = tokio::time::Instant::now();
        if now >= closes {
            break;
        }
        tokio::time::sleep_until((now + linger.wait).min(closes)).await;
        full = take_ready(&mut receiver, &mut batch, max);
        if batch.len() == before {
            break;
        }
    }
    Next::Batch(batch)
}

/// Moves deliveries that are already in the channel into `batch`, up to `max`. True when the batch is full
/// or no more can come (the consumer stopped).
pub(super) fn take_ready<T>(receiver: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(delivery) => batch.push(delivery),
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use tokio::time::Instant;

    use super::*;

    /// A bare number comes into the channel as it is taken.
    impl Arrived for u32 {
        fn arrived(&self) -> Instant {
            Instant::now()
        }
    }

    impl Arrived for (u32, Instant) {
        fn arrived(&self) -> Instant {
            self.1
        }
    }

    const LINGER: Linger = Linger {
        wait: Duration::from_millis(5),
        max_wait: Duration::from_millis(25),
        park_after: Duration::from_secs(1),
    };

    fn pool_of(workers: u16) -> (watch::Sender<Workers>, watch::Receiver<Workers>) {
        watch::channel(Workers::new(NonZeroU16::new(workers).expect("non-zero")))
    }

    async fn gather(receiver: &Mutex<mpsc::Receiver<u32>>, max: usize) -> (Next<u32>, Duration) {
        let (_size, mut desired) = pool_of(1);
        let started = Instant::now();
        let next = next_batch(receiver, &mut desired, max, LINGER, &AtomicU16::new(0)).await;
        (next, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_waits_one_wait() {
        let (sender, receiver) = mpsc::channel(10);
        sender.send(1).await.expect("open");
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        assert_eq!(next, Next::Batch(vec![1]));
        assert_eq!(took, LINGER.wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_leaves_the_rest() {
        let (sender, receiver) = mpsc::channel(10);
        for n in 0..7 {
            sender.send(n).await.expect("open");
        }
        let receiver = Mutex::new(receiver);
        let (next, took) = gather(&receiver, 5).await;
        assert_eq!(next, Next::Batch(vec![0, 1, 2, 3, 4]));
        assert_eq!(took, Duration::ZERO);
        let (next, _) = gather(&receiver, 5).await;
        assert_eq!(next, Next::Batch(vec![5, 6]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_keeps_the_batch_open_until_max_wait() {
        let (sender, receiver) = mpsc::channel(100);
        sender.send(0).await.expect("open");
        let producer = tokio::spawn(async move {
            for n in 1..=40 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if sender.send(n).await.is_err() {
                    break;
                }
            }
        });
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        producer.abort();
        assert_eq!(took, LINGER.max_wait);
        let Next::Batch(batch) = next else { panic!("expected a batch, got {next:?}") };
        // One every 2 ms for 25 ms, in order and without gaps.
        assert_eq!(batch, (0..=12).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_that_waited_a_window_for_a_worker_goes_with_what_is_ready() {
        let (sender, receiver) = mpsc::channel(100);
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let came = |ago: u64| now - Duration::from_millis(ago);
        // Queued while every worker was busy: the oldest 30 ms ago, longer than the window.
        for (n, ago) in [(0, 30), (1, 12), (2, 1)] {
            sender.send((n, came(ago))).await.expect("open");
        }
        let producer = tokio::spawn(async move {
            for n in 3..40 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if sender.send((n, Instant::now())).await.is_err() {
                    break;
                }
            }
        });
        let (_size, mut desired) = pool_of(1);
        let next = next_batch(&Mutex::new(receiver), &mut desired, 100, LINGER, &AtomicU16::new(0)).await;
        producer.abort();
        assert_eq!(now.elapsed(), Duration::ZERO, "held no longer");
        assert_eq!(next, Next::Batch(vec![(0, came(30)), (1, came(12)), (2, came(1))]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_closes_after_a_wait_that_brought_nothing() {
        let (sender, receiver) = mpsc::channel(100);
        sender.send(0).await.expect("open");
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            sender.send(1).await.expect("open");
            // Then silence, with the channel still open.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let (next, took) = gather(&Mutex::new(receiver), 100).await;
        producer.abort();
        assert_eq!(next, Next::Batch(vec![0, 1]));
        assert_eq!(took, 2 * LINGER.wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_wait_takes_what_is_there_and_goes() {
        let (sender, receiver) = mpsc::channel(10);
        for n in 0..3 {
            sender.send(n).await.expect("open");
        }
        let (_size, mut desired) = pool_of(1);
        let started = Instant::now();
        let no_linger = Linger { wait: Duration::ZERO, max_wait: Duration::ZERO, ..LINGER };
        let next = next_batch(&Mutex::new(receiver), &mut desired, 100, no_linger, &AtomicU16::new(0)).await;
        assert_eq!(next, Next::Batch(vec![0, 1, 2]));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_during_the_wait_gets_its_batch_written() {
        let (sender, receiver) = mpsc::channel(10);
        sender.send(0).await.expect("open");
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            sender.send(1).await.expect("open");
            drop(sender);
        });
        let receiver = Mutex::new(receiver);
        let (next, took) = gather(&receiver, 100).await;
        stop.await.expect("sender task");
        // Taken at the end of the first wait, without waiting again for a consumer that is gone.
        assert_eq!(next, Next::Batch(vec![0, 1]));
        assert_eq!(took, LINGER.wait);
        assert_eq!(gather(&receiver, 100).await.0, Next::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_worker_and_a_resize_interrupts_the_wait_for_work() {
        let (sender, receiver) = mpsc::channel::<u32>(1);
        let receiver = Mutex::new(receiver);
        let (size, mut desired) = pool_of(2);
        let resize = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            size.send_replace(Workers::new(NonZeroU16::MIN));
        };
        let waiting = AtomicU16::new(0);
        let (next, ()) = tokio::join!(next_batch(&receiver, &mut desired, 10, LINGER, &waiting), resize);
        assert_eq!(next, Next::Resized);
        drop(sender);
        assert_eq!(next_batch(&receiver, &mut desired, 10, LINGER, &waiting).await, Next::Closed);
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_counts_as_waiting_until_its_first_delivery_and_parks_when_none_comes() {
        let (sender, receiver) = mpsc::channel(10);
        let receiver = Mutex::new(receiver);
        let (_size, mut desired) = pool_of(1);
        let waiting = AtomicU16::new(0);
        let observed = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let while_waiting = waiting.load(Ordering::SeqCst);
            sender.send(7).await.expect("open");
            while_waiting
        };
        let (next, while_waiting) = tokio::join!(next_batch(&receiver, &mut desired, 10, LINGER, &waiting), observed);
        assert_eq!((next, while_waiting), (Next::Batch(vec![7]), 1));
        assert_eq!(waiting.load(Ordering::SeqCst), 0, "gathering is not waiting");

        let started_idle = Instant::now();
        assert_eq!(next_batch(&receiver, &mut desired, 10, LINGER, &waiting).await, Next::Idle);
        assert_eq!(started_idle.elapsed(), LINGER.park_after);
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_that_comes_as_the_worker_would_park_is_taken() {
        // Both ready in the same instant, many times over: an unbiased choice would park about half the time.
        for round in 0..32 {
            let (sender, receiver) = mpsc::channel(10);
            let receiver = Mutex::new(receiver);
            let (_size, mut desired) = pool_of(1);
            let waiting = AtomicU16::new(0);
            let late = async {
                tokio::time::sleep(LINGER.park_after).await;
                sender.send(round).await.expect("open");
            };
            let (next, ()) = tokio::join!(next_batch(&receiver, &mut desired, 10, LINGER, &waiting), late);
            assert_eq!(next, Next::Batch(vec![round]), "round {round}");
        }
    }
}
