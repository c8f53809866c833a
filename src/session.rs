//! The registry of this node's WebSocket sessions and who watches whom.
//!
//! Each session has exactly one writer task that owns its socket sink; all
//! other code reaches a session through its [`SessionHandle`], which holds
//! the bounded queue into that writer. Sends never wait: a full queue is
//! a decision (close the session with 4008), never a stall of the sender,
//! so the bus dispatcher and other sessions cannot be slowed by one slow
//! client. Map guards are cloned out of and dropped before anything else
//! happens (no guard is ever held across an `.await`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::{Message, Utf8Bytes};
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::close;

/// Why and how a session is being closed; set once, by whoever decides first.
#[derive(Debug, Clone)]
pub struct CloseReason {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

/// Shared between a session's tasks and everyone who may close it.
#[derive(Debug, Default)]
pub struct CloseSignal {
    pub token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl CloseSignal {
    /// Requests a close with `code`; the first request wins.
    pub fn close(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        let _ = self.reason.set(CloseReason {
            code,
            reason: reason.into(),
        });
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<&CloseReason> {
        self.reason.get()
    }
}

/// A cheap clonable reference to one session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Internal key; never on the wire.
    pub key: u64,
    /// The `session_id` of the `connected` frame.
    pub session_id: Arc<str>,
    pub user_id: Arc<str>,
    /// Wall clock at open (µs): under `multi_device = replace`, another
    /// node's replace notice closes only sessions opened before the
    /// newcomer, even if the notice arrives late.
    pub opened_at_us: u64,
    queue: Arc<Queue>,
    max_queued_frames: usize,
    max_queued_bytes: usize,
    pub signal: Arc<CloseSignal>,
    /// The token family and the stream cursors, behind one lock.
    state: Arc<parking_lot::Mutex<HandleState>>,
}

/// What a session's handle carries beside its queue.
#[derive(Debug, Default)]
struct HandleState {
    /// The refresh-token family of the session's access token: revoking
    /// the family closes the session. Changes with an in-band refresh.
    family: Option<Arc<str>>,
    /// Where the session stands in each stream it follows (its own user's,
    /// and each rider it watches). A handful per session at most.
    cursors: Vec<Cursor>,
}

/// A session's position in one rider's stream (protocol v1.1): the last
/// offset delivered under an epoch, and, while a recovery is being
/// prepared, the live events that arrived meanwhile.
#[derive(Debug)]
struct Cursor {
    stream: Arc<str>,
    epoch: Option<Arc<str>>,
    last: u64,
    /// `Some` during a recovery: live events held until the missed ones
    /// are queued, so none comes first and none twice.
    held: Option<Vec<(u64, Arc<str>, Utf8Bytes)>>,
}

impl Cursor {
    /// Whether an event at `offset` under `epoch` is new to the session;
    /// moves the cursor when it is.
    fn advance(&mut self, offset: u64, epoch: &Arc<str>) -> bool {
        if self.epoch.as_deref() != Some(&**epoch) {
            self.epoch = Some(epoch.clone());
            self.last = 0;
        }
        if offset <= self.last {
            return false;
        }
        self.last = offset;
        true
    }
}

/// A session's outbound text frames, in order. A deque under a lock rather
/// than tokio's bounded mpsc: the mpsc allocates a 32-slot block (~1.5 KiB)
/// when it is made, which every idle session would carry, while an empty
/// deque holds no allocation. Bounds (frames, bytes) are the sender's to
/// enforce; `ready` wakes the writer.
#[derive(Debug, Default)]
struct Queue {
    frames: parking_lot::Mutex<Frames>,
    ready: Notify,
    /// Bytes of text in the queue, against `max_queued_bytes`; the writer
    /// takes off what it has written ([`Outbox::written`]).
    bytes: AtomicUsize,
}

#[derive(Debug, Default)]
struct Frames {
    items: VecDeque<Utf8Bytes>,
    /// The writer is gone: sends fail with [`SendError::Closed`].
    closed: bool,
}

/// A deque that grew for a burst gives its memory back once drained past
/// this capacity, so a session that was busy once is not large forever.
const KEEP_CAPACITY: usize = 16;

/// The writer's end of a session's queue: the frames, and the byte count
/// it gives back as it writes them.
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

impl Outbox {
    /// The next frame, waiting for one.
    pub(crate) async fn recv(&mut self) -> Message {
        loop {
            if let Some(msg) = self.try_recv() {
                return msg;
            }
            // A frame queued between the look and here leaves a permit:
            // `notified` then returns at once.
            self.queue.ready.notified().await;
        }
    }

    /// The next frame, if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        let mut frames = self.queue.frames.lock();
        let text = frames.items.pop_front()?;
        if frames.items.is_empty() && frames.items.capacity() > KEEP_CAPACITY {
            frames.items.shrink_to(KEEP_CAPACITY);
        }
        Some(Message::Text(text))
    }

    /// `msg` left the queue for the socket.
    pub(crate) fn written(&self, msg: &Message) {
        if let Message::Text(text) = msg {
            self.queue.bytes.fetch_sub(text.len(), Ordering::AcqRel);
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut frames = self.queue.frames.lock();
        frames.closed = true;
        frames.items = VecDeque::new();
    }
}

/// A send that did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue was full: the session is being closed with 4008.
    Full,
    /// The session is already gone.
    Closed,
}

impl SessionHandle {
    /// The refresh-token family of the session's current access token.
    pub fn family(&self) -> Option<Arc<str>> {
        self.state.lock().family.clone()
    }

    /// After an in-band refresh: the new token's family.
    pub fn set_family(&self, family: Option<Arc<str>>) {
        self.state.lock().family = family;
    }

    /// Queues a `peer_event` of `stream` at `offset`/`epoch` unless the
    /// session has had it already; while a recovery of that stream is
    /// being prepared, holds it instead. Returns whether it was queued.
    pub fn deliver_event(
        &self,
        stream: &str,
        position: Option<(u64, &Arc<str>)>,
        text: Utf8Bytes,
        metrics: &Metrics,
    ) -> bool {
        let Some((offset, epoch)) = position else {
            return self.send_text(text, metrics).is_ok();
        };
        let mut state = self.state.lock();
        let cursor = cursor_of(&mut state.cursors, stream);
        if let Some(held) = &mut cursor.held {
            held.push((offset, epoch.clone(), text));
            return false;
        }
        cursor.advance(offset, epoch) && self.send_text(text, metrics).is_ok()
    }

    /// The session no longer follows `stream` (unwatch).
    pub fn forget_stream(&self, stream: &str) {
        self.state.lock().cursors.retain(|c| &*c.stream != stream);
    }

    /// Starts a recovery of `stream`: live events are held from now on.
    pub fn hold_stream(&self, stream: &str) {
        let mut state = self.state.lock();
        cursor_of(&mut state.cursors, stream).held = Some(Vec::new());
    }

    /// Ends a recovery: the session stands at `last` under `epoch` (the
    /// client's position when the missed events follow, the stream's
    /// current one otherwise); `missed` are queued in order, then the held
    /// live events that are still new. When the client gave no position
    /// (`told` false) and the session already follows this epoch, its
    /// cursor stays where it is, so an event already on its way is not
    /// dropped. With `epoch` `None` (the recovery failed) the held events
    /// are simply released. Returns how many frames were queued.
    pub fn release_stream(
        &self,
        stream: &str,
        epoch: Option<&Arc<str>>,
        last: u64,
        told: bool,
        missed: Vec<(u64, Utf8Bytes)>,
        metrics: &Metrics,
    ) -> usize {
        let mut state = self.state.lock();
        let cursor = cursor_of(&mut state.cursors, stream);
        let held = cursor.held.take().unwrap_or_default();
        if let Some(epoch) = epoch {
            let following = cursor.epoch.as_deref() == Some(&**epoch);
            if told || !following {
                cursor.epoch = Some(epoch.clone());
                cursor.last = last;
            }
        }
        let mut queued = 0;
        for (offset, text) in missed {
            if let Some(epoch) = epoch
                && cursor.advance(offset, epoch)
                && self.send_text(text, metrics).is_ok()
            {
                queued += 1;
            }
        }
        for (offset, epoch, text) in held {
            if cursor.advance(offset, &epoch) && self.send_text(text, metrics).is_ok() {
                queued += 1;
            }
        }
        queued
    }

    /// Queues a text frame without waiting. A full queue — in frames or in
    /// bytes — closes the session with 4008 and counts it. A frame is taken
    /// while the queue is empty whatever its size, so one large reply never
    /// closes a session that keeps up.
    pub fn send_text(&self, text: Utf8Bytes, metrics: &Metrics) -> Result<(), SendError> {
        let len = text.len();
        let queue = &self.queue;
        let before = queue.bytes.fetch_add(len, Ordering::AcqRel);
        let over_bytes = before > 0 && before + len > self.max_queued_bytes;
        let sent = if over_bytes {
            Err(SendError::Full)
        } else {
            let mut frames = queue.frames.lock();
            if frames.closed {
                Err(SendError::Closed)
            } else if frames.items.len() >= self.max_queued_frames {
                Err(SendError::Full)
            } else {
                frames.items.push_back(text);
                Ok(())
            }
        };
        if sent.is_err() {
            queue.bytes.fetch_sub(len, Ordering::AcqRel);
        } else {
            queue.ready.notify_one();
        }
        match sent {
            Ok(()) => Ok(()),
            Err(SendError::Full) => {
                if self.signal.reason().is_none() {
                    metrics.queue_full.inc();
                    tracing::warn!(
                        event = "session_queue_full",
                        session_id = %self.session_id,
                        user_id = %self.user_id,
                        cause = "outbound queue full: the peer reads slower than it is sent to",
                        "closing with 4008"
                    );
                }
                self.signal.close(close::TOO_SLOW, "outbound queue full");
                Err(SendError::Full)
            }
            Err(SendError::Closed) => Err(SendError::Closed),
        }
    }
}

fn cursor_of<'a>(cursors: &'a mut Vec<Cursor>, stream: &str) -> &'a mut Cursor {
    match cursors.iter().position(|c| &*c.stream == stream) {
        Some(i) => &mut cursors[i],
        None => {
            cursors.push(Cursor {
                stream: stream.into(),
                epoch: None,
                last: 0,
                held: None,
            });
            cursors.last_mut().expect("just pushed")
        }
    }
}

/// What this node knows about one user who has sessions here.
#[derive(Debug, Default)]
struct UserEntry {
    sessions: Vec<u64>,
    /// Sequence of this user's events published by this node; a receiver
    /// sees it as `seq` and counts gaps per (origin node, user).
    seq: u64,
}

#[derive(Default)]
pub struct Sessions {
    next_key: AtomicU64,
    /// Every open session by internal key.
    by_key: DashMap<u64, SessionHandle>,
    /// The sessions of each user on this node.
    by_user: DashMap<Arc<str>, UserEntry>,
    /// Watched user → the local sessions watching them.
    watchers: DashMap<Arc<str>, Vec<u64>>,
}

impl Sessions {
    /// Creates a session and its queue of at most `queue_frames` frames and
    /// `queue_bytes` bytes; the [`Outbox`] goes to the writer task.
    pub fn open(
        &self,
        session_id: Arc<str>,
        user_id: Arc<str>,
        queue_frames: usize,
        queue_bytes: usize,
        family: Option<Arc<str>>,
    ) -> (SessionHandle, Outbox) {
        let queue = Arc::new(Queue::default());
        let handle = SessionHandle {
            key: self.next_key.fetch_add(1, Ordering::Relaxed) + 1,
            session_id,
            user_id: user_id.clone(),
            opened_at_us: crate::clock::unix_us(),
            queue: queue.clone(),
            max_queued_frames: queue_frames.max(1),
            max_queued_bytes: queue_bytes,
            signal: Arc::new(CloseSignal::default()),
            state: Arc::new(parking_lot::Mutex::new(HandleState {
                family,
                cursors: Vec::new(),
            })),
        };
        self.by_key.insert(handle.key, handle.clone());
        self.by_user
            .entry(user_id)
            .or_default()
            .sessions
            .push(handle.key);
        (handle, Outbox { queue })
    }

    /// Removes a session and its watch subscriptions on `watched`; the
    /// caller then releases bus interest in those users.
    pub fn close(&self, handle: &SessionHandle, watched: &[Arc<str>]) {
        self.by_key.remove(&handle.key);
        self.by_user.remove_if_mut(&handle.user_id, |_, entry| {
            entry.sessions.retain(|k| *k != handle.key);
            entry.sessions.is_empty()
        });
        for user in watched {
            self.unwatch(user, handle.key);
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether any local session belongs to or watches `user`.
    pub fn has_interest(&self, user: &str) -> bool {
        self.by_user.contains_key(user) || self.watchers.contains_key(user)
    }

    /// The local sessions of `user`, except the one with key `except`.
    pub fn of_user(&self, user: &str, except: Option<u64>) -> Vec<SessionHandle> {
        let keys: Vec<u64> = match self.by_user.get(user) {
            Some(entry) => entry.sessions.clone(),
            None => return Vec::new(),
        };
        self.handles(keys.into_iter().filter(|k| Some(*k) != except))
    }

    /// The local sessions watching `user`.
    pub fn watchers_of(&self, user: &str) -> Vec<SessionHandle> {
        let keys: Vec<u64> = match self.watchers.get(user) {
            Some(list) => list.clone(),
            None => return Vec::new(),
        };
        self.handles(keys.into_iter())
    }

    fn handles(&self, keys: impl Iterator<Item = u64>) -> Vec<SessionHandle> {
        keys.filter_map(|k| self.by_key.get(&k).map(|h| h.value().clone()))
            .collect()
    }

    /// The next `seq` for an event of `user` published by this node.
    pub fn next_seq(&self, user: &str) -> u64 {
        match self.by_user.get_mut(user) {
            Some(mut entry) => {
                entry.seq += 1;
                entry.seq
            }
            // Cannot happen for events made by a local session; a fixed 0
            // tells receivers not to count it.
            None => 0,
        }
    }

    /// Registers `watcher` (a session key) as watching `user`. Returns true
    /// if this is the first local watcher of that user.
    pub fn watch(&self, user: Arc<str>, watcher: u64) -> bool {
        let mut list = self.watchers.entry(user).or_default();
        let first = list.is_empty();
        if !list.contains(&watcher) {
            list.push(watcher);
        }
        first
    }

    /// Removes a watcher; returns true if `user` has no local watcher left.
    pub fn unwatch(&self, user: &str, watcher: u64) -> bool {
        self.watchers
            .remove_if_mut(user, |_, list| {
                list.retain(|k| *k != watcher);
                list.is_empty()
            })
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(outbox: &mut Outbox) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(Message::Text(t)) = outbox.try_recv() {
            got.push(t.to_string());
        }
        got
    }

    #[test]
    fn cursors_drop_repeats_and_hold_live_events_during_a_recovery() {
        let sessions = Sessions::default();
        let (h, mut out) = sessions.open("s".into(), "u".into(), 100, 1 << 20, None);
        let m = Metrics::new();
        let e1: Arc<str> = "e1".into();
        let ev = |n: u64| Utf8Bytes::from(format!("ev{n}"));
        assert!(h.deliver_event("r", Some((1, &e1)), ev(1), &m));
        assert!(!h.deliver_event("r", Some((1, &e1)), ev(1), &m), "a repeat");
        assert!(h.deliver_event("r", Some((2, &e1)), ev(2), &m));
        // A recovery: live 5 and 6 arrive while it is prepared; 3–5 are
        // the missed events; 5 must come once, and all in order.
        h.hold_stream("r");
        assert!(!h.deliver_event("r", Some((5, &e1)), ev(5), &m));
        assert!(!h.deliver_event("r", Some((6, &e1)), ev(6), &m));
        let missed = (3..=5).map(|n| (n, ev(n))).collect();
        assert_eq!(h.release_stream("r", Some(&e1), 2, true, missed, &m), 4);
        assert_eq!(texts(&mut out), ["ev1", "ev2", "ev3", "ev4", "ev5", "ev6"]);
        // A re-watch without a position keeps the cursor: 7, on its way
        // while the stream said 8, still arrives.
        h.hold_stream("r");
        assert_eq!(
            h.release_stream("r", Some(&e1), 8, false, Vec::new(), &m),
            0
        );
        assert!(h.deliver_event("r", Some((7, &e1)), ev(7), &m));
        // A new epoch starts over.
        let e2: Arc<str> = "e2".into();
        assert!(h.deliver_event("r", Some((1, &e2)), ev(1), &m));
        h.forget_stream("r");
        assert!(h.state.lock().cursors.is_empty());
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_as_well_as_frames() {
        let sessions = Sessions::default();
        let metrics = Metrics::new();
        let (handle, mut outbox) = sessions.open("s".into(), "u".into(), 100, 1000, None);
        let frame = |n: usize| Utf8Bytes::from("x".repeat(n));
        // One frame is taken into an empty queue whatever its size.
        handle.send_text(frame(1500), &metrics).unwrap();
        let first = outbox.try_recv().unwrap();
        outbox.written(&first);
        handle.send_text(frame(600), &metrics).unwrap();
        handle.send_text(frame(400), &metrics).unwrap();
        assert_eq!(metrics.queue_full.get(), 0);
        // 1001 bytes would be over the budget: the session closes with 4008.
        assert_eq!(handle.send_text(frame(1), &metrics), Err(SendError::Full));
        assert_eq!(metrics.queue_full.get(), 1);
        assert_eq!(handle.signal.reason().unwrap().code, close::TOO_SLOW);
    }

    #[test]
    fn written_frames_free_their_bytes() {
        let sessions = Sessions::default();
        let metrics = Metrics::new();
        let (handle, mut outbox) = sessions.open("s".into(), "u".into(), 100, 1000, None);
        for _ in 0..10 {
            handle
                .send_text(Utf8Bytes::from("y".repeat(900)), &metrics)
                .unwrap();
            let msg = outbox.try_recv().unwrap();
            outbox.written(&msg);
        }
        assert!(handle.signal.reason().is_none());
    }
}
