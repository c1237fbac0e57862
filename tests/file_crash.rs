//! A writer process dies at every step of a seal, a segment drop, a
//! cleaning step and a compaction (aborted at a crash point, feature
//! `testing`), and at random moments (SIGKILL): the cache then opens, with
//! every write that returned and no damage, and takes writes again.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use layercache::{Cache, FileCache};
use tempfile::TempDir;

use support::{CHILD_DEADLINE, Rng, Running, arg, arg_u64, child_command, is_child, report};

fn value_of(key: &str, n: u64) -> Vec<u8> {
    let mut v = format!("{key}:{n}:").into_bytes();
    v.resize(20 + (n as usize * 37) % 380, b'.');
    v
}

fn open(path: &Path, budget: u64) -> FileCache {
    let builder = FileCache::builder(path)
        .segment_size(8192)
        .compact_when(0.5, 0);
    if budget > 0 {
        builder.max_bytes(budget).open().expect("open")
    } else {
        builder.open().expect("open")
    }
}

/// Writes until it dies: before each write `try <set|del> <key> <n>`, after
/// it `ack`; every `COMPACT`th write (0: never) a compaction, reported as
/// `compacted` once it returned. Reports `done` if it lives to the end.
#[test]
fn child_crash_writer() {
    if !is_child("child_crash_writer") {
        return;
    }
    let cache = open(Path::new(&arg("PATH")), arg_u64("BUDGET"));
    let compact_every = arg_u64("COMPACT");
    let mut rng = Rng::new(arg_u64("SEED"));
    for n in 0..4000u64 {
        let key = format!("key{}", rng.next() % 150);
        if rng.next().is_multiple_of(8) {
            report(format!("try del {key} {n}"));
            cache.remove(&key).expect("remove");
        } else {
            report(format!("try set {key} {n}"));
            cache.set(key.clone(), value_of(&key, n)).expect("set");
        }
        report("ack");
        if compact_every > 0 && (n + 1).is_multiple_of(compact_every) {
            cache.compact().expect("compact");
            report("compacted");
        }
    }
    report("done");
}

/// What the cache must hold after the writer died: the acknowledged state,
/// and the one write in flight, which may or may not have happened.
struct Expected {
    acked: BTreeMap<String, Vec<u8>>,
    in_flight: Option<(String, Option<Vec<u8>>)>,
}

fn expected(reports: &[String]) -> Expected {
    let mut acked = BTreeMap::new();
    let mut pending: Option<(String, Option<Vec<u8>>)> = None;
    for line in reports {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["try", what, key, n] => {
                let n: u64 = n.parse().unwrap();
                let value = (what == "set").then(|| value_of(key, n));
                pending = Some((key.to_string(), value));
            }
            ["ack"] => {
                let (key, value) = pending.take().expect("an ack follows a try");
                match value {
                    Some(value) => acked.insert(key, value),
                    None => acked.remove(&key),
                };
            }
            _ => {}
        }
    }
    Expected {
        acked,
        in_flight: pending,
    }
}

/// Opens the cache the writer left and checks it: every acknowledged write
/// is there (with a budget, an entry may be evicted, never wrong), the
/// write in flight either happened or did not, nothing is damaged; then it
/// takes a write, and opens again with it.
fn check_after_crash(path: &Path, reports: &[String], budget: u64, context: &str) {
    let expected = expected(reports);
    let cache = open(path, budget);
    let mut keys: Vec<String> = expected.acked.keys().cloned().collect();
    keys.extend(expected.in_flight.iter().map(|(k, _)| k.clone()));
    keys.sort();
    keys.dedup();
    for key in &keys {
        let got = cache.get(key).expect("get");
        let acked = expected.acked.get(key);
        let in_flight = expected
            .in_flight
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref());
        let fine = got.as_ref() == acked
            || in_flight.is_some_and(|v| got.as_ref() == v)
            || (budget > 0 && got.is_none());
        assert!(
            fine,
            "{context}: {key} reads {:?}, acknowledged {:?}, in flight {:?}",
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
            acked.map(|v| String::from_utf8_lossy(v).into_owned()),
            in_flight
        );
    }
    for key in cache.keys().expect("keys") {
        assert!(
            keys.contains(&key),
            "{context}: {key} is there but was never written"
        );
    }
    let report = cache.verify().expect("verify");
    assert!(report.damage.is_empty(), "{context}: {report:?}");
    cache
        .set("after".to_string(), b"the crash".to_vec())
        .expect("a write after the crash");
    drop(cache);
    let again = open(path, budget);
    assert_eq!(
        again.get(&"after".to_string()).expect("get"),
        Some(b"the crash".to_vec()),
        "{context}"
    );
}

fn run_writer(
    path: &Path,
    seed: u64,
    compact: u64,
    budget: u64,
    crash_at: Option<&str>,
) -> Running {
    let mut command = child_command(
        "child_crash_writer",
        &[
            ("PATH", path.display().to_string()),
            ("SEED", seed.to_string()),
            ("COMPACT", compact.to_string()),
            ("BUDGET", budget.to_string()),
        ],
    );
    if let Some(point) = crash_at {
        command.env("LAYERCACHE_CRASH_AT", point);
    }
    Running::spawn(format!("writer {crash_at:?}"), command)
}

/// Every crash point, each reached for the third time (so that segments,
/// hints and the cleaning cursor are all in play): the writer dies there,
/// and the cache it leaves loses no acknowledged write.
#[test]
fn a_writer_that_dies_at_any_step_loses_no_acknowledged_write() {
    let points = [
        ("seal:next-written", 0),
        ("seal:linked", 0),
        ("seal:flagged", 0),
        ("seal:renamed", 0),
        ("drop:based", 0),
        ("clean:copied", 0),
        ("compact:written", 50),
        ("compact:flagged", 50),
        ("compact:installed", 50),
    ];
    for (point, compact) in points {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("crash.lc");
        let mut writer = run_writer(&path, 11, compact, 0, Some(&format!("{point}:3")));
        let finished = writer.finish();
        assert_eq!(
            finished.status.signal(),
            Some(libc::SIGABRT),
            "the writer did not die at {point}: {}",
            finished.diagnostics()
        );
        assert!(!finished.reports.iter().any(|r| r == "done"));
        check_after_crash(&path, &finished.reports, 0, point);
    }
}

/// SIGKILL at random moments, with and without compactions and a budget.
#[test]
fn a_writer_killed_at_random_loses_no_acknowledged_write() {
    let mut rng = Rng::new(0xDEAD);
    for round in 0..8u64 {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("killed.lc");
        let compact = if round % 3 == 0 { 40 } else { 0 };
        let budget = if round % 4 == 3 { 64 * 1024 } else { 0 };
        let mut writer = run_writer(&path, round, compact, budget, None);
        let acks = 100 + rng.next() % 1500;
        writer.wait_until("acks", CHILD_DEADLINE, |reports| {
            reports.iter().filter(|r| *r == "ack").count() as u64 >= acks
        });
        writer.kill();
        let finished = writer.finish();
        let context = format!("round {round}, killed after {acks} acks");
        check_after_crash(&path, &finished.reports, budget, &context);
    }
}
