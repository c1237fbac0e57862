//! FileCache shared by real processes: interleaved writers, one process
//! seeing another's writes, writers killed at random moments, compaction
//! under load, a full disk.
//!
//! The child-process plumbing is in `support` (shared with
//! `file_exclusion`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use layercache::file::Durability;
use layercache::{Cache, Error, FileCache};
use tempfile::TempDir;

use support::{
    CHILD_DEADLINE, Rng, Running, arg, arg_u64, assert_clean, child_command, compact_path,
    configure, fnv, is_child, open_manual, report, state_of, wait_for_file,
};

/// Prints the full state of the cache at `LAYERCACHE_ARG_PATH`: one
/// `entry <key>=<value>` line per entry in key order, then `verify <records>
/// <live> <damage>`.
#[test]
fn child_dump() {
    if !is_child("child_dump") {
        return;
    }
    let cache = FileCache::open(arg("PATH")).expect("open");
    for (key, value) in state_of(&cache) {
        let value = String::from_utf8(value).expect("test values are text");
        report(format!("entry {key}={value}"));
    }
    let verification = cache.verify().expect("verify");
    report(format!(
        "verify {} {} {}",
        verification.records,
        verification.live,
        verification.damage.len()
    ));
}

/// Runs `child_dump` on `path` and returns its entries and verification.
fn dump(path: &Path) -> (BTreeMap<String, String>, String) {
    let mut child = Running::spawn(
        "dump",
        child_command("child_dump", &[("PATH", path.display().to_string())]),
    );
    let finished = child.finish();
    finished.assert_success();
    let entries = finished
        .reports_of("entry")
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key=value");
            (key.to_string(), value.to_string())
        })
        .collect();
    let verify = finished
        .reports_of("verify")
        .next()
        .unwrap_or_else(|| panic!("no verify line\n{}", finished.diagnostics()))
        .to_string();
    (entries, verify)
}

// ---------------------------------------------------------------------------
// 1. Four processes interleave sets and removes.
// ---------------------------------------------------------------------------

const INTERLEAVERS: u64 = 4;
const INTERLEAVE_OPS: u64 = 2000;
const OWN_KEYS: u64 = 200;
const SHARED_KEYS: u64 = 8;

#[derive(Debug, Clone)]
enum Op {
    Set(String, Vec<u8>),
    Remove(String),
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Set(key, _) | Op::Remove(key) => key,
        }
    }

    fn apply(&self, model: &mut BTreeMap<String, Vec<u8>>) {
        match self {
            Op::Set(key, value) => {
                model.insert(key.clone(), value.clone());
            }
            Op::Remove(key) => {
                model.remove(key);
            }
        }
    }
}

/// Child `child`'s operations: mostly on its own keys `c<child>-<k>`, one
/// in ten on the keys `shared-<k>` that every child writes.
fn interleave_ops(child: u64) -> Vec<Op> {
    let mut rng = Rng::new(0x1_0000 + child);
    (0..INTERLEAVE_OPS)
        .map(|n| {
            let key = if rng.below(10) == 0 {
                format!("shared-{}", rng.below(SHARED_KEYS))
            } else {
                format!("c{child}-{}", rng.below(OWN_KEYS))
            };
            if rng.below(4) == 0 {
                Op::Remove(key)
            } else {
                let pad = "x".repeat(rng.below(300) as usize);
                Op::Set(key, format!("c{child}-op{n}-{pad}").into_bytes())
            }
        })
        .collect()
}

#[test]
fn child_interleaver() {
    if !is_child("child_interleaver") {
        return;
    }
    let id = arg_u64("ID");
    let cache = FileCache::open(arg("PATH")).expect("open");
    let own = format!("c{id}-");
    // This child's keys: nobody else writes them, so every read of them,
    // and what every removal returns, is known exactly.
    let mut mine: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    report("ready");
    wait_for_file(Path::new(&arg("START")));
    for (n, op) in interleave_ops(id).iter().enumerate() {
        let is_mine = op.key().starts_with(&own);
        match op {
            Op::Set(key, value) => cache.set(key.clone(), value.clone()).expect("set"),
            Op::Remove(key) => {
                let old = cache.remove(key).expect("remove");
                if is_mine {
                    assert_eq!(old, mine.get(key).cloned(), "op {n}: remove {key}");
                }
            }
        }
        if is_mine {
            op.apply(&mut mine);
            let key = op.key().to_string();
            assert_eq!(cache.get(&key).expect("get"), mine.get(&key).cloned());
        }
        if n % 500 == 499 {
            for k in 0..OWN_KEYS {
                let key = format!("c{id}-{k}");
                let got = cache.get(&key).expect("get");
                assert_eq!(got, mine.get(&key).cloned(), "after op {n}: {key}");
            }
        }
    }
    report(format!("done {INTERLEAVE_OPS}"));
}

#[test]
fn four_processes_interleave_sets_and_removes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("interleave.lc");
    let start = dir.path().join("start");
    let mut children: Vec<Running> = (0..INTERLEAVERS)
        .map(|id| {
            Running::spawn(
                format!("interleaver {id}"),
                child_command(
                    "child_interleaver",
                    &[
                        ("ID", id.to_string()),
                        ("PATH", path.display().to_string()),
                        ("START", start.display().to_string()),
                    ],
                ),
            )
        })
        .collect();
    for child in &mut children {
        child.wait_for_report("ready", CHILD_DEADLINE);
    }
    std::fs::write(&start, b"go").unwrap();
    for child in &mut children {
        let finished = child.finish();
        finished.assert_success();
        assert_eq!(
            finished.reports_of("done").collect::<Vec<_>>(),
            [INTERLEAVE_OPS.to_string()],
            "{}",
            finished.diagnostics()
        );
    }

    // Own keys: exactly what their owner's sequence leaves. Shared keys:
    // what one child's last operation on the key left (the last writer's).
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    let mut shared: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    for id in 0..INTERLEAVERS {
        let mut model = BTreeMap::new();
        let mut last_shared: BTreeMap<String, Option<String>> = BTreeMap::new();
        for op in interleave_ops(id) {
            op.apply(&mut model);
            if op.key().starts_with("shared-") {
                let left = model
                    .get(op.key())
                    .map(|v| String::from_utf8(v.clone()).unwrap());
                last_shared.insert(op.key().to_string(), left);
            }
        }
        for (key, value) in model {
            if !key.starts_with("shared-") {
                own.insert(key, String::from_utf8(value).unwrap());
            }
        }
        for (key, left) in last_shared {
            shared.entry(key).or_default().insert(left);
        }
    }
    assert!(own.len() > 400, "the sequences leave many live keys");

    let (entries, verify) = dump(&path);
    let (dumped_shared, dumped_own): (BTreeMap<_, _>, BTreeMap<_, _>) = entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("shared-"));
    assert_eq!(dumped_own, own, "the fifth process sees every owned key");
    for k in 0..SHARED_KEYS {
        let key = format!("shared-{k}");
        let got = dumped_shared.get(&key).cloned();
        let allowed = shared.get(&key).cloned().unwrap_or_default();
        if allowed.is_empty() {
            assert_eq!(got, None, "{key}: nobody wrote it");
        } else {
            assert!(
                allowed.contains(&got),
                "{key} is {got:?}, not one child's last word: {allowed:?}"
            );
        }
    }
    assert!(
        dumped_shared.keys().all(|k| shared.contains_key(k)),
        "no unexpected keys: {dumped_shared:?}"
    );
    // No compaction ran (far below 4 MiB of garbage), so the file holds one
    // record per set and per removal that found its key: exactly known for
    // owned keys, at most every removal for shared ones.
    let fields: Vec<u64> = verify.split(' ').map(|f| f.parse().unwrap()).collect();
    let (records, live, damage) = (fields[0], fields[1], fields[2]);
    assert_eq!(
        (live, damage),
        (entries.len() as u64, 0),
        "verify: {verify}"
    );
    let (least, most) = record_bounds();
    assert!(
        (least..=most).contains(&records),
        "{records} records, expected {least}..={most}"
    );

    let cache = FileCache::open(&path).unwrap();
    assert_clean(&cache, "parent");
    let mine: BTreeMap<String, String> = state_of(&cache)
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(mine, entries, "the parent sees what the fifth process saw");
}

/// The fewest and most records the interleavers can have written: every
/// set, every removal of an owned key that was there, and at most every
/// removal of a shared key.
fn record_bounds() -> (u64, u64) {
    let (mut least, mut shared_removes) = (0, 0);
    for id in 0..INTERLEAVERS {
        let mut model = BTreeMap::new();
        for op in interleave_ops(id) {
            match &op {
                Op::Set(..) => least += 1,
                Op::Remove(key) if key.starts_with("shared-") => shared_removes += 1,
                Op::Remove(key) => least += u64::from(model.contains_key(key)),
            }
            op.apply(&mut model);
        }
    }
    (least, least + shared_removes)
}

// ---------------------------------------------------------------------------
// 2. A write in one process is seen by another's next get.
// ---------------------------------------------------------------------------

/// A value long enough to reach past a mapping made with `growth(4096)`.
fn big_text() -> Vec<u8> {
    (0..20_000u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
}

/// Step `STEP` of `a_write_in_one_process_is_seen_by_anothers_next_get`.
#[test]
fn child_poke() {
    if !is_child("child_poke") {
        return;
    }
    let cache = FileCache::open(arg("PATH")).expect("open");
    match arg("STEP").as_str() {
        "write" => {
            cache
                .set("changed".to_string(), b"new".to_vec())
                .expect("set");
            let old = cache.remove(&"removed".to_string()).expect("remove");
            assert_eq!(old, Some(b"bye".to_vec()), "the parent's value");
            cache.set("big".to_string(), big_text()).expect("set big");
        }
        "compact" => {
            cache.compact().expect("compact");
            cache
                .set("after".to_string(), b"compacted".to_vec())
                .expect("set");
        }
        "set" => {
            cache
                .set(arg("KEY"), arg("VALUE").into_bytes())
                .expect("set");
        }
        other => panic!("unknown step {other}"),
    }
    report("done");
}

fn poke(path: &Path, step: &str, extra: &[(&str, String)]) {
    let mut args = vec![
        ("PATH", path.display().to_string()),
        ("STEP", step.to_string()),
    ];
    args.extend(extra.iter().cloned());
    let mut child = Running::spawn(format!("poke {step}"), child_command("child_poke", &args));
    let finished = child.finish();
    finished.assert_success();
    assert_eq!(finished.reports, ["done"], "{}", finished.diagnostics());
}

#[test]
fn a_write_in_one_process_is_seen_by_anothers_next_get() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("seen.lc");
    // A small reach, so the child's big value lies past this mapping and
    // the next get must remap.
    let cache = FileCache::builder(&path).growth(4096).open().unwrap();
    let get = |key: &str| cache.get(&key.to_string()).unwrap();
    cache.set("kept".to_string(), b"1".to_vec()).unwrap();
    cache.set("changed".to_string(), b"old".to_vec()).unwrap();
    cache.set("removed".to_string(), b"bye".to_vec()).unwrap();
    assert_eq!(get("changed"), Some(b"old".to_vec()));
    assert_eq!(get("removed"), Some(b"bye".to_vec()));

    poke(&path, "write", &[]);
    assert_eq!(get("changed"), Some(b"new".to_vec()), "the child's set");
    assert_eq!(get("removed"), None, "the child's remove");
    assert_eq!(get("big"), Some(big_text()), "past the mapping's reach");
    assert_eq!(get("kept"), Some(b"1".to_vec()));
    assert_eq!(cache.len().unwrap(), 3);

    poke(&path, "compact", &[]);
    assert_eq!(get("after"), Some(b"compacted".to_vec()));
    assert_eq!(cache.generation().unwrap(), 1, "followed the compaction");
    assert_eq!(get("changed"), Some(b"new".to_vec()));
    assert_eq!(get("removed"), None);
    assert_eq!(get("big"), Some(big_text()));
    assert_eq!(cache.len().unwrap(), 4);
    assert_eq!(cache.garbage_bytes().unwrap(), 0);

    // And the other way: the parent's write, seen by a new process.
    cache.set("parent".to_string(), b"hello".to_vec()).unwrap();
    let (entries, verify) = dump(&path);
    assert_eq!(entries.get("parent").map(String::as_str), Some("hello"));
    assert_eq!(entries.len(), 5);
    assert_eq!(verify, "5 5 0");
}

// ---------------------------------------------------------------------------
// 3. A writer killed at random moments.
// ---------------------------------------------------------------------------

const KILL_ROUNDS: u64 = 20;
const KILL_KEYS: u64 = 40;

#[derive(Debug, Clone)]
enum KillOp {
    Write(Op),
    Compact,
}

/// The `n`th operation of round `round`'s writer. Values are 0 to 100 KB.
fn kill_op(rng: &mut Rng, round: u64, n: u64) -> KillOp {
    let roll = rng.below(100);
    let key = format!("k{:02}", rng.below(KILL_KEYS));
    if roll < 2 {
        return KillOp::Compact;
    }
    if roll < 17 {
        return KillOp::Write(Op::Remove(key));
    }
    let size = match rng.below(100) {
        0..5 => 20_000 + rng.below(80_000),
        5..25 => 1_000 + rng.below(7_000),
        _ => rng.below(200),
    };
    let mut value = format!("r{round}n{n}:").into_bytes();
    value.extend((0..size).map(|i| i.wrapping_mul(31).wrapping_add(n) as u8));
    KillOp::Write(Op::Set(key, value))
}

fn kill_seed(round: u64) -> u64 {
    0xC0FF_EE00 + round
}

/// What the parent expects the ack of `op` to say; `model` is the state
/// before it (the writer is the only one writing).
fn kill_ack(n: u64, op: &KillOp, model: &BTreeMap<String, Vec<u8>>) -> String {
    match op {
        KillOp::Compact => format!("ack {n} compact"),
        KillOp::Write(Op::Set(key, value)) => {
            format!("ack {n} set {key} {} {:x}", value.len(), fnv(value))
        }
        KillOp::Write(Op::Remove(key)) => {
            format!("ack {n} remove {key} {}", old_word(model.get(key)))
        }
    }
}

fn old_word(old: Option<&Vec<u8>>) -> String {
    match old {
        Some(value) => format!("{}:{:x}", value.len(), fnv(value)),
        None => "none".to_string(),
    }
}

/// Writes until killed, acknowledging each call once it has returned.
#[test]
fn child_writer_until_killed() {
    if !is_child("child_writer_until_killed") {
        return;
    }
    let round = arg_u64("ROUND");
    let durability = if round % 4 == 3 {
        Durability::Sync
    } else {
        Durability::Buffered
    };
    let cache = FileCache::builder(arg("PATH"))
        .durability(durability)
        .open()
        .expect("open");
    report("ready");
    let mut rng = Rng::new(kill_seed(round));
    let started = Instant::now();
    for n in 0.. {
        let ack = match kill_op(&mut rng, round, n) {
            KillOp::Compact => {
                cache.compact().expect("compact");
                format!("ack {n} compact")
            }
            KillOp::Write(Op::Set(key, value)) => {
                let (len, hash) = (value.len(), fnv(&value));
                cache.set(key.clone(), value).expect("set");
                format!("ack {n} set {key} {len} {hash:x}")
            }
            KillOp::Write(Op::Remove(key)) => {
                let old = cache.remove(&key).expect("remove");
                format!("ack {n} remove {key} {}", old_word(old.as_ref()))
            }
        };
        report(ack);
        if started.elapsed() > Duration::from_secs(20) {
            // The parent is gone: do not write forever.
            report("gave up");
            return;
        }
    }
}

#[test]
fn writer_killed_at_random_moments() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("killed.lc");
    let leftover = compact_path(&path);
    // A compaction that died long ago left this: it must bother nobody.
    std::fs::write(&leftover, b"half a compaction from a dead process").unwrap();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (mut total_acks, mut compactions_acked, mut in_flight_landed) = (0, 0, 0);
    let mut leftovers_seen = 0;
    let mut generation = 0;
    let mut timing = Rng::new(0x5EED);
    for round in 0..KILL_ROUNDS {
        let mut child = Running::spawn(
            format!("writer round {round}"),
            child_command(
                "child_writer_until_killed",
                &[
                    ("PATH", path.display().to_string()),
                    ("ROUND", round.to_string()),
                ],
            ),
        );
        // Most rounds time the kill from the writer's first write; every
        // fifth from the spawn, so some kills land while it opens.
        if round % 5 != 4 {
            child.wait_for_report("ready", CHILD_DEADLINE);
        }
        thread::sleep(Duration::from_millis(5 + timing.below(76)));
        child.kill();
        let finished = child.finish();
        assert_eq!(
            finished.status.signal(),
            Some(9),
            "the writer must still be writing when killed\n{}",
            finished.diagnostics()
        );
        let context = format!("round {round}");

        // The acknowledged calls, in order, each saying what the model
        // predicts.
        let acks: Vec<&str> = finished
            .reports
            .iter()
            .map(String::as_str)
            .filter(|r| r.starts_with("ack "))
            .collect();
        let mut rng = Rng::new(kill_seed(round));
        for (n, ack) in acks.iter().enumerate() {
            let op = kill_op(&mut rng, round, n as u64);
            assert_eq!(*ack, kill_ack(n as u64, &op, &model), "{context}");
            match op {
                KillOp::Write(op) => op.apply(&mut model),
                KillOp::Compact => compactions_acked += 1,
            }
        }
        total_acks += acks.len();
        // The call under way when the kill came (two if the kill cut an ack
        // line short) may or may not have taken effect; nothing else may
        // differ from the model.
        let mut candidates = vec![model.clone()];
        for k in 0..if finished.partial { 2 } else { 1 } {
            let op = kill_op(&mut rng, round, (acks.len() + k) as u64);
            let mut next = candidates.last().unwrap().clone();
            if let KillOp::Write(op) = op {
                op.apply(&mut next);
            }
            candidates.push(next);
        }

        if leftover.exists() {
            leftovers_seen += 1;
        }
        let cache = FileCache::open(&path)
            .unwrap_or_else(|e| panic!("{context}: open after the kill: {e}"));
        let actual = state_of(&cache);
        let matched = candidates
            .iter()
            .position(|c| *c == actual)
            .unwrap_or_else(|| {
                let keys: BTreeSet<&String> = actual.keys().chain(model.keys()).collect();
                let differ: Vec<_> = keys
                    .into_iter()
                    .filter(|k| actual.get(*k) != model.get(*k))
                    .map(|k| {
                        let show = |v: Option<&Vec<u8>>| {
                            v.map(|v| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned())
                        };
                        (k, show(model.get(k)), show(actual.get(k)))
                    })
                    .collect();
                panic!(
                    "{context}: after {} acks the file differs from every allowed state \
                     (key, expected, actual): {differ:?}",
                    acks.len()
                )
            });
        if matched > 0 {
            in_flight_landed += 1;
        }
        model = actual;
        assert_clean(&cache, &context);
        assert!(cache.generation().unwrap() >= generation, "{context}");
        generation = cache.generation().unwrap();
        if round % 2 == 1 {
            // Compacting over whatever a killed compaction left works.
            cache.compact().unwrap();
            assert!(
                !leftover.exists(),
                "{context}: compaction leaves no {leftover:?}"
            );
            assert_eq!(
                state_of(&cache),
                model,
                "{context}: compaction keeps it all"
            );
            assert_eq!(cache.generation().unwrap(), generation + 1);
            generation += 1;
            assert_clean(&cache, &context);
        }
    }
    eprintln!(
        "{KILL_ROUNDS} rounds: {total_acks} acknowledged calls, {compactions_acked} \
         compactions, {in_flight_landed} unacknowledged calls landed, \
         {leftovers_seen} rounds with a {leftover:?} left"
    );
    assert!(total_acks >= 200, "the writers wrote: {total_acks} acks");
    assert!(compactions_acked > 0, "some rounds compacted");
}

// ---------------------------------------------------------------------------
// 4. Compaction while other processes read and write.
// ---------------------------------------------------------------------------

const STEADY_WRITERS: u64 = 2;
const STEADY_KEYS: u64 = 30;
const STEADY_COMPACTIONS: u64 = 10;

/// Opens the steady test's cache: automatic upkeep off, or (`segments`)
/// with 8 KiB segments and cleaning as soon as a third of the records are
/// dead, so that every writer seals and cleans while the others read,
/// write and compact.
fn open_steady(path: &Path, segments: bool) -> FileCache {
    if segments {
        FileCache::builder(path)
            .segment_size(8192)
            .compact_when(0.3, 0)
            .open()
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    } else {
        open_manual(path)
    }
}

fn steady_value(key: &str, version: u64, pad: usize) -> String {
    format!("{key}:{version}:{}", ".".repeat(pad))
}

/// The version of a value `steady_value` made for `key`; panics on anything
/// else.
fn steady_version(key: &str, value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).unwrap_or_else(|_| panic!("{key}: not text"));
    let rest = text
        .strip_prefix(key)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{key} holds a value for another key: {text:.40}"));
    let (version, pad) = rest
        .split_once(':')
        .unwrap_or_else(|| panic!("{key}: malformed {text:.40}"));
    assert!(
        pad.bytes().all(|b| b == b'.'),
        "{key}: torn value {text:.60}"
    );
    version
        .parse()
        .unwrap_or_else(|_| panic!("{key}: bad version in {text:.40}"))
}

#[test]
fn child_steady_writer() {
    if !is_child("child_steady_writer") {
        return;
    }
    let id = arg_u64("ID");
    let stop = PathBuf::from(arg("STOP"));
    let cache = open_steady(Path::new(&arg("PATH")), arg_u64("SEGMENTS") == 1);
    let mut rng = Rng::new(0x57EAD + id);
    let mut mine: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    report("ready");
    wait_for_file(Path::new(&arg("START")));
    let started = Instant::now();
    let mut n = 0;
    // With segments, a writer goes on until it has seen cleaning drop a
    // segment, so that the check of it does not depend on how fast this
    // machine let it write while the compactions ran.
    let segments = arg_u64("SEGMENTS") == 1;
    let more = |n: u64| !stop.exists() || (segments && cache.stats().drops == 0 && n < 200_000);
    while more(n) && started.elapsed() < CHILD_DEADLINE {
        let key = format!("w{id}-{:02}", rng.below(STEADY_KEYS));
        if rng.below(8) == 0 {
            let old = cache.remove(&key).expect("remove");
            assert_eq!(old, mine.remove(&key), "op {n}: remove {key}");
            report(format!("ack del {key} {n}"));
        } else {
            let pad = rng.below(1500) as usize;
            let value = steady_value(&key, n, pad).into_bytes();
            cache.set(key.clone(), value.clone()).expect("set");
            mine.insert(key.clone(), value);
            report(format!("ack set {key} {n} {pad}"));
        }
        n += 1;
    }
    for k in 0..STEADY_KEYS {
        let key = format!("w{id}-{k:02}");
        assert_eq!(
            cache.get(&key).expect("get"),
            mine.get(&key).cloned(),
            "{key}"
        );
    }
    let stats = cache.stats();
    report(format!("upkeep {} {}", stats.seals, stats.drops));
    report(format!("done {n}"));
}

#[test]
fn child_steady_reader() {
    if !is_child("child_steady_reader") {
        return;
    }
    let stop = PathBuf::from(arg("STOP"));
    let cache = open_steady(Path::new(&arg("PATH")), arg_u64("SEGMENTS") == 1);
    let keys: Vec<String> = (0..STEADY_WRITERS)
        .flat_map(|w| (0..STEADY_KEYS).map(move |k| format!("w{w}-{k:02}")))
        .collect();
    let mut rng = Rng::new(0x2EAD);
    // The newest version seen per key: a key's versions only grow, so a
    // read must never go back to an older one.
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = |key: &str, value: &[u8]| {
        let version = steady_version(key, value);
        let before = newest.entry(key.to_string()).or_insert(version);
        assert!(
            version >= *before,
            "{key} went back from version {before} to {version}"
        );
        *before = version;
    };
    let mut generations = BTreeSet::new();
    report("ready");
    wait_for_file(Path::new(&arg("START")));
    let started = Instant::now();
    let mut reads = 0u64;
    while !stop.exists() && started.elapsed() < CHILD_DEADLINE {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        if let Some(value) = cache.get(key).expect("get") {
            seen(key, &value);
        }
        reads += 1;
        generations.insert(cache.generation().expect("generation"));
        if reads.is_multiple_of(64) {
            for key in cache.keys().expect("keys") {
                assert!(keys.contains(&key), "unknown key {key}");
            }
            for value in cache.values().expect("values") {
                let text = String::from_utf8_lossy(&value);
                let key = text.split(':').next().unwrap_or_default().to_string();
                assert!(keys.contains(&key), "a value of no key: {text:.40}");
                seen(&key, &value);
            }
        }
    }
    report(format!(
        "done {reads} {} {}",
        generations.len(),
        cache.generation().expect("generation")
    ));
}

#[test]
fn compaction_while_other_processes_read_and_write() {
    steady(false);
}

/// The same with 8 KiB segments: every writer also seals segments and
/// cleans them (copying live records, dropping segments) while the others
/// read, write and compact.
#[test]
fn seals_cleaning_and_compaction_while_other_processes_read_and_write() {
    steady(true);
}

fn steady(segments: bool) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("steady.lc");
    let (start, stop) = (dir.path().join("start"), dir.path().join("stop"));
    let cache = open_steady(&path, segments);
    let common = [
        ("PATH", path.display().to_string()),
        ("START", start.display().to_string()),
        ("STOP", stop.display().to_string()),
        ("SEGMENTS", u64::from(segments).to_string()),
    ];
    let mut writers: Vec<Running> = (0..STEADY_WRITERS)
        .map(|id| {
            let mut args = common.to_vec();
            args.push(("ID", id.to_string()));
            Running::spawn(
                format!("writer {id}"),
                child_command("child_steady_writer", &args),
            )
        })
        .collect();
    let mut reader = Running::spawn("reader", child_command("child_steady_reader", &common));
    for child in writers.iter_mut().chain([&mut reader]) {
        child.wait_for_report("ready", CHILD_DEADLINE);
    }
    std::fs::write(&start, b"go").unwrap();
    thread::sleep(Duration::from_millis(10));
    let before: Vec<usize> = writers
        .iter_mut()
        .map(|w| w.count_reports("ack "))
        .collect();
    for _ in 0..STEADY_COMPACTIONS {
        cache.compact().unwrap();
        thread::sleep(Duration::from_millis(15));
    }
    let after: Vec<usize> = writers
        .iter_mut()
        .map(|w| w.count_reports("ack "))
        .collect();
    std::fs::write(&stop, b"stop").unwrap();

    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (mut seals, mut drops) = (0, 0);
    for (id, writer) in writers.iter_mut().enumerate() {
        let finished = writer.finish();
        finished.assert_success();
        let upkeep: Vec<u64> = finished
            .reports_of("upkeep")
            .next()
            .expect("upkeep")
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        seals += upkeep[0];
        drops += upkeep[1];
        assert!(
            after[id] > before[id],
            "writer {id} wrote while the compactions ran ({} then {})",
            before[id],
            after[id]
        );
        let mut count = 0;
        for ack in finished.reports_of("ack") {
            let words: Vec<&str> = ack.split(' ').collect();
            match words[..] {
                ["set", key, version, pad] => {
                    let value = steady_value(key, version.parse().unwrap(), pad.parse().unwrap());
                    expected.insert(key.to_string(), value.into_bytes());
                }
                ["del", key, _] => {
                    expected.remove(key);
                }
                _ => panic!("bad ack {ack:?}"),
            }
            count += 1;
        }
        assert_eq!(
            finished.reports_of("done").collect::<Vec<_>>(),
            [count.to_string()],
            "{}",
            finished.diagnostics()
        );
    }
    if segments {
        assert!(
            seals > 10 && drops > 0,
            "the writers sealed {seals} segments and dropped {drops}"
        );
    }
    let finished = reader.finish();
    finished.assert_success();
    let done = finished
        .reports_of("done")
        .next()
        .unwrap_or_else(|| panic!("{}", finished.diagnostics()));
    let words: Vec<u64> = done.split(' ').map(|w| w.parse().unwrap()).collect();
    let (reads, generations_seen, last_generation) = (words[0], words[1], words[2]);
    assert!(reads > 0, "the reader read");
    assert!(
        generations_seen >= 2,
        "the reader followed a compaction while reading: {done}"
    );
    assert_eq!(
        last_generation, STEADY_COMPACTIONS,
        "the reader is on the last file"
    );
    eprintln!(
        "{STEADY_COMPACTIONS} compactions: writers acked {after:?} calls by the last, \
         {reads} reads saw {generations_seen} generations"
    );

    assert_eq!(cache.generation().unwrap(), STEADY_COMPACTIONS);
    assert_eq!(state_of(&cache), expected, "the compacting handle");
    assert_clean(&cache, "the compacting handle");
    drop(cache);
    let reopened = FileCache::open(&path).unwrap();
    assert_eq!(state_of(&reopened), expected, "reopened");
    assert_clean(&reopened, "reopened");
    assert!(!compact_path(&path).exists());
}

// ---------------------------------------------------------------------------
// 5. A full disk.
// ---------------------------------------------------------------------------

/// The file size limit the full-disk child runs under, in 1024-byte blocks
/// (bash's `ulimit -f` unit).
const FULL_BLOCKS: u64 = 16;
const PREFILLED: u32 = 20;

fn prefilled(n: u32) -> (String, Vec<u8>) {
    (
        format!("pre-{n:02}"),
        format!("{n:03}-{}", "v".repeat(150)).into_bytes(),
    )
}

/// Runs under `ulimit -f FULL_BLOCKS` with SIGXFSZ ignored: writes past the
/// limit fail with EFBIG, as on a full disk.
#[test]
fn child_full_disk() {
    if !is_child("child_full_disk") {
        return;
    }
    let path = PathBuf::from(arg("PATH"));
    let limit = FULL_BLOCKS * 1024;
    let cache = FileCache::open(&path).expect("open a file below the limit");
    let check_prefilled = |when: &str| {
        for n in 0..PREFILLED {
            let (key, value) = prefilled(n);
            assert_eq!(cache.get(&key).expect("get"), Some(value), "{when}: {key}");
        }
    };
    check_prefilled("before");
    let size = || std::fs::metadata(&path).expect("stat").len();
    let before = size();
    assert!(before < limit, "{before} bytes leave room below {limit}");

    // Larger than the room left: part of it fits, the rest fails.
    let big = vec![0xAB; 2 * limit as usize];
    for attempt in 0..2 {
        let err = cache
            .set("big".to_string(), big.clone())
            .expect_err("a write past the limit must fail");
        report(format!("error {err}"));
        match &err {
            Error::Io {
                path: named,
                source,
            } => {
                assert_eq!(named, &path, "the error names the cache file");
                assert_eq!(source.kind(), ErrorKind::FileTooLarge, "{source:?}");
            }
            other => panic!("attempt {attempt}: expected Error::Io, got {other:?}"),
        }
        assert_eq!(size(), before, "the failed write's bytes are given back");
        assert_eq!(cache.get(&"big".to_string()).expect("get"), None);
        check_prefilled("after the failed write");
        assert_eq!(cache.len().expect("len"), PREFILLED as usize);
    }

    // What still fits is written; removing and compacting still work.
    cache
        .set("small".to_string(), b"fits".to_vec())
        .expect("a small write below the limit");
    assert_eq!(
        cache.get(&"small".to_string()).expect("get"),
        Some(b"fits".to_vec())
    );
    let (gone, gone_value) = prefilled(0);
    assert_eq!(cache.remove(&gone).expect("remove"), Some(gone_value));
    cache.compact().expect("a compaction that fits");
    assert_eq!(cache.generation().expect("generation"), 1);
    assert_eq!(cache.get(&gone).expect("get"), None);
    for n in 1..PREFILLED {
        let (key, value) = prefilled(n);
        assert_eq!(cache.get(&key).expect("get"), Some(value), "{key}");
    }
    assert!(cache.verify().expect("verify").damage.is_empty());
    report("ok");
}

#[test]
fn full_disk_is_an_error_and_the_cache_keeps_serving() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("full.lc");
    {
        let cache = FileCache::open(&path).unwrap();
        for n in 0..PREFILLED {
            let (key, value) = prefilled(n);
            cache.set(key, value).unwrap();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new("bash");
    command.args([
        "-c",
        &format!(r#"trap "" XFSZ; ulimit -f {FULL_BLOCKS}; exec "$0" "$@""#),
    ]);
    command.arg(exe);
    command.args([
        "child_full_disk",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    configure(
        &mut command,
        "child_full_disk",
        &[("PATH", path.display().to_string())],
    );
    let finished = Running::spawn("full disk", command).finish();
    finished.assert_success();
    let errors: Vec<&str> = finished.reports_of("error").collect();
    assert_eq!(errors.len(), 2, "{}", finished.diagnostics());
    for error in errors {
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
    assert_eq!(finished.reports.last().map(String::as_str), Some("ok"));

    let cache = FileCache::open(&path).unwrap();
    let mut expected: BTreeMap<String, Vec<u8>> = (1..PREFILLED).map(prefilled).collect();
    expected.insert("small".to_string(), b"fits".to_vec());
    assert_eq!(state_of(&cache), expected);
    assert_eq!(cache.generation().unwrap(), 1);
    assert_clean(&cache, "after the full disk");
    // Without the limit, the big write goes through.
    cache.set("big".to_string(), vec![0xAB; 32 * 1024]).unwrap();
    assert_eq!(
        cache.get(&"big".to_string()).unwrap(),
        Some(vec![0xAB; 32 * 1024])
    );
}

// ---------------------------------------------------------------------------
// A writer that follows another's compaction must keep the OS lock.
// ---------------------------------------------------------------------------

/// Sets `x-<n>` for n = 0, 1, ... (never the same key twice) until the stop
/// file appears, acknowledging each set once it returned.
#[test]
fn child_appender() {
    if !is_child("child_appender") {
        return;
    }
    let stop = PathBuf::from(arg("STOP"));
    let cache = FileCache::open(arg("PATH")).expect("open");
    report("ready");
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.exists() && started.elapsed() < CHILD_DEADLINE {
        cache
            .set(format!("x-{n}"), format!("{n}").into_bytes())
            .expect("set");
        report(format!("ack {n}"));
        n += 1;
    }
}

/// A process whose file another process compacted, and which then
/// compacts, must do so under the OS lock like any write.
#[test]
fn a_compaction_after_following_anothers_keeps_every_concurrent_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("follow.lc");
    let stop = dir.path().join("stop");
    // Enough live data that a compaction takes a while.
    let compactor = open_manual(&path);
    for n in 0..64u32 {
        compactor
            .set(format!("bulk-{n:02}"), vec![n as u8; 256 * 1024])
            .unwrap();
    }
    // Another handle compacts: `compactor`'s file is superseded, so its
    // next call follows to the new one first.
    open_manual(&path).compact().unwrap();

    let mut appender = Running::spawn(
        "appender",
        child_command(
            "child_appender",
            &[
                ("PATH", path.display().to_string()),
                ("STOP", stop.display().to_string()),
            ],
        ),
    );
    appender.wait_for_report("ready", CHILD_DEADLINE);
    let deadline = Instant::now() + CHILD_DEADLINE;
    while appender.count_reports("ack ") < 20 {
        assert!(Instant::now() < deadline, "the appender never wrote");
        thread::sleep(Duration::from_millis(1));
    }
    // Follows, then compacts; the appender's sets must wait for it (they
    // need the same lock), or land in the new file.
    compactor.compact().unwrap();
    assert_eq!(compactor.generation().unwrap(), 2);
    thread::sleep(Duration::from_millis(20));
    std::fs::write(&stop, b"stop").unwrap();
    let finished = appender.finish();
    finished.assert_success();

    let acked: Vec<u64> = finished
        .reports_of("ack")
        .map(|n| n.parse().unwrap())
        .collect();
    let cache = FileCache::open(&path).unwrap();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| cache.get(&format!("x-{n}")).unwrap() != Some(n.to_string().into_bytes()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sets are gone: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(cache.len().unwrap(), 64 + acked.len());
    assert_clean(&cache, "after");
}
