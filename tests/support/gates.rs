//! Test layers shared by the hostile reviews' tests: a probe that calls a
//! hook around every write of the layer it wraps, and gates that park a
//! thread inside a hook until the test releases it, so that orders between
//! threads are forced without sleeps. Included with `#[path]` by
//! tests/review10_hostile.rs and tests/review10b_hostile.rs.

#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use layercache::{Cache, Clock, Entry, Error, Watcher};

/// Where a [`Probe`] calls its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    BeforeSet,
    AfterSet,
    BeforeRemove,
}

pub type Hook = Arc<dyn Fn(At, &str, Option<u32>) + Send + Sync>;

/// Wraps a `Cache<String, u32>` and calls a hook before and after writes;
/// `fail_removes` makes `remove` fail (a backend that is down).
pub struct Probe<C> {
    pub inner: C,
    pub hook: RwLock<Option<Hook>>,
    pub fail_removes: AtomicBool,
}

impl<C> Probe<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            hook: RwLock::new(None),
            fail_removes: AtomicBool::new(false),
        }
    }

    pub fn hook(&self, hook: impl Fn(At, &str, Option<u32>) + Send + Sync + 'static) {
        *self.hook.write().unwrap() = Some(Arc::new(hook));
    }

    pub fn unhook(&self) {
        *self.hook.write().unwrap() = None;
    }

    pub fn fire(&self, at: At, key: &str, value: Option<u32>) {
        let hook = self.hook.read().unwrap().clone();
        if let Some(hook) = hook {
            hook(at, key, value);
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Probe<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Probe({:?})", self.inner)
    }
}

impl<C: Cache<String, u32>> Cache<String, u32> for Probe<C> {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<u32>>> {
        self.inner.get_entry(key)
    }
    fn set_entry(&self, key: String, entry: Entry<u32>) -> layercache::Result<()> {
        let value = entry.value;
        self.fire(At::BeforeSet, &key, Some(value));
        let fired = key.clone();
        self.inner.set_entry(key, entry)?;
        self.fire(At::AfterSet, &fired, Some(value));
        Ok(())
    }
    fn remove(&self, key: &String) -> layercache::Result<Option<u32>> {
        self.fire(At::BeforeRemove, key, None);
        if self.fail_removes.load(Ordering::SeqCst) {
            return Err(Error::Unsupported {
                cache: "Probe",
                what: "remove right now (the backend is down)",
            });
        }
        self.inner.remove(key)
    }
    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
    fn clear(&self) -> layercache::Result<()> {
        self.inner.clear()
    }
    fn clear_matching(&self, matches: &dyn Fn(&String) -> bool) -> layercache::Result<usize> {
        self.inner.clear_matching(matches)
    }
    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }
    fn watch(&self, watcher: Arc<dyn Watcher<String>>) -> bool {
        self.inner.watch(watcher)
    }
}

/// The layer side of a gate: `pause` tells the test where the thread is
/// and parks it until the test releases it.
pub struct Gate {
    pub to_test: Mutex<Sender<&'static str>>,
    pub from_test: Mutex<Receiver<()>>,
}

/// The test side of a gate.
pub struct Ctl {
    pub from_gate: Receiver<&'static str>,
    pub to_gate: Sender<()>,
}

pub fn gate() -> (Arc<Gate>, Ctl) {
    let (to_test, from_gate) = mpsc::channel();
    let (to_gate, from_test) = mpsc::channel();
    (
        Arc::new(Gate {
            to_test: Mutex::new(to_test),
            from_test: Mutex::new(from_test),
        }),
        Ctl { from_gate, to_gate },
    )
}

impl Gate {
    pub fn pause(&self, at: &'static str) {
        self.to_test.lock().unwrap().send(at).unwrap();
        self.from_test.lock().unwrap().recv().unwrap();
    }
}

impl Ctl {
    /// Waits until the gated thread has reached `at` (the timeout only
    /// turns a hang into a failure).
    pub fn reached(&self, at: &str) {
        let got = self
            .from_gate
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("never reached {at}: {e}"));
        assert_eq!(got, at);
    }

    pub fn release(&self) {
        self.to_gate.send(()).unwrap();
    }
}

pub fn k(text: &str) -> String {
    text.to_string()
}

/// Once-only flag for a hook.
pub fn once() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(true))
}

/// Runs `f` on another thread and fails if it does not finish within
/// `limit`: how a deadlock shows up as a failure rather than a hang.
pub fn finishes_within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: did not finish within {limit:?} (deadlock?)"))
}
