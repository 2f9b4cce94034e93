//! A future that, dropped before it is done, finishes in a task of its own.
//!
//! A statement dropped half way keeps its database connection busy until the statement ends, which a lock can
//! make last as long as it is held. Whatever counts connections (a tenant's write turns, its page-read slots)
//! must go on counting it until then: so the work and its permit finish together, detached, when the caller
//! gives up (a timeout, an aborted worker, a request dropped when its client went). Awaited to the end, it
//! runs in the caller's task.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

pub struct DetachOnDrop<F: Future + Send + 'static>(Option<Pin<Box<F>>>)
where
    F::Output: Send + 'static;

impl<F: Future + Send + 'static> DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    pub fn new(work: F) -> Self {
        Self(Some(Box::pin(work)))
    }
}

impl<F: Future + Send + 'static> Future for DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let work = self.0.as_mut().expect("not polled after completion");
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // Work that panicked cannot go on. Outside a runtime there is nothing left to finish it for (a runtime
        // shutting down drops what is spawned on it).
        if std::thread::panicking() {
            return;
        }
        if let (Some(work), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(work);
        }
    }
}
