//! Plumbing shared by the tests that run FileCache in real child processes
//! (`file_processes`, `file_exclusion`).
//!
//! Children are the test binary run again (`<child test> --exact
//! --nocapture --test-threads=1`) with `LAYERCACHE_CHILD` naming the child
//! test. Every `child_*` test returns at once unless it is the one named, so
//! it passes trivially in a normal run. Children report on stdout, one
//! flushed line per event, each starting with `#lc ` (libtest may print on
//! the same line before the first one, so the parent looks for the marker
//! anywhere in a line).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod layout;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use layercache::{Cache, FileCache};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Plumbing: children, their reports, a reproducible random number generator.
// ---------------------------------------------------------------------------

/// Names the child test a child process is to run.
pub const CHILD: &str = "LAYERCACHE_CHILD";
/// Starts every line a child reports.
pub const MARK: &str = "#lc ";
/// How long any child may take before the parent gives up on it.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(40);

/// Whether this process is a child asked to run the child test `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

/// A parameter the parent passed to this child.
pub fn arg(name: &str) -> String {
    std::env::var(format!("LAYERCACHE_ARG_{name}"))
        .unwrap_or_else(|_| panic!("LAYERCACHE_ARG_{name} is not set"))
}

pub fn arg_u64(name: &str) -> u64 {
    arg(name)
        .parse()
        .unwrap_or_else(|e| panic!("LAYERCACHE_ARG_{name}: {e}"))
}

/// Reports one line to the parent, flushed at once (one `write`, so a kill
/// never leaves half a line in practice; the parent ignores half lines).
pub fn report(line: impl Display) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{MARK}{line}\n").as_bytes())
        .expect("report to the parent");
    out.flush().expect("flush the report");
}

/// Blocks until `path` exists (the parent's starting signal).
pub fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + CHILD_DEADLINE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A command running the child test `test` of this binary with `args`
/// (each passed as `LAYERCACHE_ARG_<name>`).
pub fn child_command(test: &str, args: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    configure(&mut command, test, args);
    command
}

pub fn configure(command: &mut Command, test: &str, args: &[(&str, String)]) {
    command.env(CHILD, test);
    for (name, value) in args {
        command.env(format!("LAYERCACHE_ARG_{name}"), value);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

pub enum Line {
    Whole(String),
    /// The child's output ended in the middle of this line.
    Partial(String),
}

/// A running child, its stdout read line by line by a thread.
pub struct Running {
    name: String,
    child: Child,
    lines: mpsc::Receiver<Line>,
    reports: Vec<String>,
    stdout: Vec<String>,
    partial: bool,
    stderr: Option<thread::JoinHandle<String>>,
    reaped: Option<ExitStatus>,
}

/// What a child did, once it has exited.
pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
    /// The lines it reported, marker removed, in order.
    pub reports: Vec<String>,
    /// Whether its output ended in the middle of a line.
    pub partial: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn assert_success(&self) {
        assert!(self.status.success(), "{}", self.diagnostics());
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "child {} exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name, self.status, self.stdout, self.stderr
        )
    }

    /// The reports starting with `word `, without it.
    pub fn reports_of<'a>(&'a self, word: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.reports
            .iter()
            .filter_map(move |line| line.strip_prefix(word)?.strip_prefix(' '))
    }
}

impl Running {
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Running {
        let name = name.into();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let whole = buf.last() == Some(&b'\n');
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let line = if whole {
                            Line::Whole(text)
                        } else {
                            Line::Partial(text)
                        };
                        if tx.send(line).is_err() || !whole {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        Running {
            name,
            child,
            lines: rx,
            reports: Vec::new(),
            stdout: Vec::new(),
            partial: false,
            stderr: Some(stderr),
            reaped: None,
        }
    }

    fn take(&mut self, line: Line) -> Option<String> {
        match line {
            Line::Whole(text) => {
                let report = text
                    .find(MARK)
                    .map(|at| text[at + MARK.len()..].to_string());
                self.stdout.push(text);
                if let Some(report) = &report {
                    self.reports.push(report.clone());
                }
                report
            }
            Line::Partial(text) => {
                self.partial = true;
                self.stdout.push(format!("{text} <cut off>"));
                None
            }
        }
    }

    /// Waits until the child reports `wanted`; panics on a timeout or when
    /// the child's output ends first.
    pub fn wait_for_report(&mut self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if self.take(line).as_deref() == Some(wanted) {
                        return;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let finished = self.finish();
                    panic!(
                        "waiting for {wanted:?} from {}: {e:?}\n{}",
                        finished.name,
                        finished.diagnostics()
                    );
                }
            }
        }
    }

    /// Waits until `done` holds for the reports received so far (checked
    /// at each new one) and says whether it does: false after `timeout`.
    /// Panics when the child's output ends first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.reports) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.take(line);
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(e) => {
                    let _ = self.child.kill();
                    let finished = self.finish();
                    panic!(
                        "waiting for {what} from {}: {e:?}\n{}",
                        finished.name,
                        finished.diagnostics()
                    );
                }
            }
        }
        true
    }

    /// The reports that have arrived so far (takes whatever is waiting
    /// without blocking).
    pub fn reports_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.take(line);
        }
        &self.reports
    }

    /// How many reports starting with `prefix` have arrived so far (takes
    /// whatever is waiting without blocking).
    pub fn count_reports(&mut self, prefix: &str) -> usize {
        self.reports_so_far()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the child");
    }

    /// Waits for the child to exit (killing it after [`CHILD_DEADLINE`])
    /// and collects everything it wrote.
    pub fn finish(&mut self) -> Finished {
        let deadline = Instant::now() + CHILD_DEADLINE;
        let status = loop {
            if let Some(status) = self.reaped {
                break status;
            }
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                self.reaped = Some(status);
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait for the killed child");
                self.reaped = Some(status);
                eprintln!("child {} did not finish in time: killed", self.name);
                break status;
            }
            thread::sleep(Duration::from_millis(2));
        };
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    self.take(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("{}'s stdout never closed", self.name),
            }
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            name: self.name.clone(),
            status,
            reports: self.reports.clone(),
            partial: self.partial,
            stdout: self.stdout.join("\n"),
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A parent that panics must not leave children behind.
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// xorshift64: reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a, to report a value's identity in one short word.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every entry of `cache`, read through `keys` and `get`.
pub fn state_of(cache: &FileCache) -> BTreeMap<String, Vec<u8>> {
    cache
        .keys()
        .expect("keys")
        .into_iter()
        .map(|key| {
            let value = cache
                .get(&key)
                .expect("get")
                .unwrap_or_else(|| panic!("{key} is listed but has no value"));
            (key, value)
        })
        .collect()
}

pub fn assert_clean(cache: &FileCache, context: &str) {
    let report = cache.verify().expect("verify");
    assert!(report.damage.is_empty(), "{context}: damage {report:?}");
}

pub fn compact_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".compact");
    PathBuf::from(name)
}

/// Runs `work` in a forked child process (which reopens the cache file
/// through any handle it inherited) and waits for it to succeed.
pub fn in_forked_child(work: impl FnOnce()) {
    // SAFETY: the child runs only `work` and then `_exit`s, never returning
    // into the test harness; `work` only touches the cache and the heap
    // (glibc's malloc is safe to use after fork).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_ok();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed (wait status {status:#x})"
    );
}

// ---------------------------------------------------------------------------
// Helpers of the exclusion and hostile tests.
// ---------------------------------------------------------------------------

/// The value every writer here stores under `key`: derived from the key,
/// so the parent knows it from the acknowledgement alone.
pub fn value_of(key: &str) -> Vec<u8> {
    format!("{key}={:016x}", fnv(key.as_bytes())).into_bytes()
}
/// Says loudly that (part of) a test did not run: straight to stderr, which
/// the test harness does not capture, as one write.
pub fn skipped(what: &str, why: &str) {
    use std::io::Write as _;
    let message = format!("\n*** SKIPPED {what}: {why} ***\n");
    let _ = std::io::stderr().write_all(message.as_bytes());
}

/// Opens `path` with automatic compaction off: every compaction in these
/// tests is an explicit one, where the test wants it.
pub fn open_manual(path: &Path) -> FileCache {
    FileCache::builder(path)
        .compact_when(2.0, 0)
        .open()
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
/// Reports one line with plain `write(2)` calls on fd 1: nothing of std's
/// stdout (its lock, its buffer) is used in a forked worker.
pub fn raw_report(line: &str) {
    let text = format!("{MARK}{line}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes initialised bytes of a live buffer to fd 1.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}
/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    dir: TempDir,
}
impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says
    /// why not.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a tmpfs".to_string());
        }
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a handle still open after a panic): detach it lazily.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
/// Waits for `pid` until `by`; kills it (and says so) after that. Returns
/// a word for how it ended: `ok`, `exit <n>`, `signal <n>` or `hung`.
pub fn reap(pid: libc::pid_t, by: Instant) -> String {
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a live int.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid {
            break;
        }
        if reaped < 0 {
            return format!("waitpid {}", std::io::Error::last_os_error());
        }
        if Instant::now() > by {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return "hung".to_string();
        }
        thread::sleep(Duration::from_millis(1));
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => "ok".to_string(),
            code => format!("exit {code}"),
        }
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    }
}

/// CRC-32 (ISO-HDLC, as zlib), bit by bit: the checksum of the file
/// format, for tests that forge records and hints by hand.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Runs `work` on its own thread and panics if it does not finish within
/// `limit`: a hang fails the test instead of hanging the suite (the stuck
/// thread is leaked). A panic in `work` is raised again here.
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(RecvTimeoutError::Timeout) => panic!("HANG: {what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: worker vanished"),
    }
}
