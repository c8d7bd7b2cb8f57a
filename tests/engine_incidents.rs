//! The causal engine on real incidents caused on purpose on this machine
//! (root: eBPF, SCHED_FIFO, network namespaces, nftables, cgroup v1 memory):
//! `kprobe why` names the injected cause first and its culprit in at least
//! 19 of 20 runs of each incident, a healthy run shows no cause, the cause
//! index in the `.kpl` answers as the analysis does, and `kprobe replay
//! --break-at-cause` stops where the cause struck.
//!
//! Incidents are run by `fixtures/incidents/run.sh` (one at a time on the
//! machine: it takes a lock). No timing assertions: the incident runs 12
//! payments and the engine must explain the one the fault hit.

mod engine_common;

use engine_common::*;
use serde_json::Value;
use std::collections::HashMap;

/// Runs `kind` 20 times; each time `why TXN` must rank the injected cause
/// first and name the culprit. At least 19 of 20 must.
fn accuracy(kind: &str, expect_kind: &str, check: impl Fn(&HashMap<String, String>, &(String, u64, String, String)) -> bool) {
    root();
    let mut ok = 0;
    let mut report = Vec::new();
    for run in 0..20 {
        let d = tmp(&format!("{kind}{run}"));
        let env = incident(kind, &d, &[]);
        let g = why_json(&d, &env["TXN"], &["kernel.kpl"]);
        let rc = root_cause(&g);
        let good = rc.as_ref().is_some_and(|rc| rc.0 == expect_kind && check(&env, rc));
        if good {
            ok += 1;
            let _ = std::fs::remove_dir_all(&d);
        } else {
            report.push(format!("run {run} ({}): root cause {rc:?}", d.display()));
        }
    }
    eprintln!("{kind}: injected cause ranked first with its culprit in {ok} of 20 runs");
    assert!(ok >= 19, "{kind}: only {ok} of 20 runs named the injected cause:\n{}", report.join("\n"));
}

#[test]
fn scheduler_delay_names_the_hog_in_19_of_20_runs() {
    accuracy("sched", "sched_delay", |env, rc| rc.1.to_string() == env["CULPRIT_PID"] && rc.2 == "incident_hog");
}

#[test]
fn tcp_retransmits_name_the_lossy_connection_in_19_of_20_runs() {
    accuracy("tcp", "tcp_retransmit", |env, rc| rc.1.to_string() == env["GATEWAY_PID"] && rc.3.contains(":7000"));
}

#[test]
fn memory_pressure_names_the_batch_job_in_19_of_20_runs() {
    accuracy("mem", "page_faults", |env, rc| rc.1.to_string() == env["CULPRIT_PID"] && rc.2 == "incident_batch");
}

/// Nothing injected: no cause may name a process of the incident. The
/// machine is shared, so another tenant can really hold a CPU past the
/// threshold while a payment waits (seen: 101 µs, once in 20 runs, by
/// another test's process); `why` then rightly names it. So: every run
/// blames nothing of the incident, and at least one of five shows no cause at all
/// (a run in which the machine itself made a payment miss its deadline does not count).
#[test]
fn a_healthy_run_shows_no_cause_above_threshold() {
    root();
    let mut clean = false;
    let mut seen = Vec::new();
    for run in 0..5 {
        let d = tmp(&format!("healthy{run}"));
        let env = incident("healthy", &d, &[]);
        let gw = std::fs::read_to_string(d.join("gateway.out")).unwrap();
        if !gw.contains("0 missed the deadline") {
            // Nothing was injected, so a missed deadline is the shared machine stalling the
            // run (seen once: 22 ms against the 20 ms deadline in CI); that run proves nothing.
            seen.push(format!("run {run}: the machine made a payment miss its deadline: {gw}"));
            let _ = std::fs::remove_dir_all(&d);
            continue;
        }
        let g = why_json(&d, &env["TXN"], &["kernel.kpl"]);
        let causes = g["causes"].as_array().unwrap();
        for i in causes {
            let n = &g["nodes"][i.as_u64().unwrap() as usize];
            let culprit = n["culprit"]["pid"].as_u64().unwrap_or(0).to_string();
            assert!(
                culprit != env["LEDGER_PID"] && culprit != env["GATEWAY_PID"],
                "healthy run {run} ({}): a cause blames the incident's own services: {}",
                d.display(),
                serde_json::to_string_pretty(n).unwrap()
            );
        }
        if causes.is_empty() {
            let out = kprobe()
                .args(["why", &env["TXN"], "--log"])
                .arg(d.join("kernel.kpl"))
                .arg("--spans")
                .arg(d.join("spans.json"))
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("no cause above the threshold"));
            clean = true;
        } else {
            seen.push(format!("run {run}: {}", g["nodes"][causes[0].as_u64().unwrap() as usize]["label"]));
        }
        let _ = std::fs::remove_dir_all(&d);
        if clean {
            break;
        }
    }
    assert!(clean, "no healthy run without a cause above threshold:\n{}", seen.join("\n"));
}

#[test]
fn without_spans_a_process_slowest_syscalls_are_explained() {
    root();
    let d = tmp("pid");
    let env = incident("sched", &d, &[]);
    let out = kprobe()
        .args(["why", "--pid", &env["LEDGER_PID"], "--slowest", "3", "--format", "json", "--log"])
        .arg(d.join("kernel.kpl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rc = root_cause(&g).expect("a cause");
    assert_eq!((rc.0.as_str(), rc.1.to_string()), ("sched_delay", env["CULPRIT_PID"].clone()), "{rc:?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Incident (a) with the ledger under `kprobe record`, and its cause index: (dir, incident.env, index).
fn indexed_sched_incident(tag: &str) -> (std::path::PathBuf, HashMap<String, String>, std::path::PathBuf) {
    root();
    let d = tmp(tag);
    let env = incident("sched", &d, &["--ptrace"]);
    let idx = d.join("incident.kpl");
    save_index(&d, &idx);
    (d, env, idx)
}

/// Where `--break-at-cause` stops: the event where the best-ranked cause
/// that struck a task of the ptrace recording struck (a cause that struck
/// only the gateway, which eBPF alone recorded, has no event to stop at).
fn replay_stop(g: &Value) -> u64 {
    let strike = g["causes"].as_array().unwrap().iter().find_map(|i| g["nodes"][i.as_u64().unwrap() as usize]["strike"]["seq"].as_u64());
    strike.unwrap_or_else(|| panic!("no cause struck a replayable task: {}", serde_json::to_string_pretty(g).unwrap()))
}

#[test]
fn cause_index_answers_like_the_analysis_and_replay_breaks_at_the_cause() {
    // Analysis of the ptrace + eBPF recordings, index saved into a .kpl.
    let (d, env, idx) = indexed_sched_incident("break");
    let txn = &env["TXN"];
    let analysed = why_json(&d, txn, &["ledger.kpl", "kernel.kpl"]);
    let rc = root_cause(&analysed).expect("a root cause");
    assert_eq!((rc.0.as_str(), rc.2.as_str()), ("sched_delay", "incident_hog"), "{rc:?}");
    // The index alone (no spans, no eBPF log) gives the same graph.
    let out = kprobe().args(["why", txn, "--format", "json", "--log"]).arg(&idx).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let indexed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(indexed["nodes"], analysed["nodes"]);
    assert_eq!(indexed["causes"], analysed["causes"]);
    // The strike: the ledger's syscall the delay hit, in the ptrace recording.
    let strike = replay_stop(&analysed);
    // The index still replays like the recording, and stops there.
    let out = kprobe().args(["replay", "--quiet"]).arg(&idx).output().unwrap();
    assert!(out.status.success(), "full replay of the indexed log: {}", String::from_utf8_lossy(&out.stderr));
    let out = kprobe().args(["replay", "--quiet", "--break-at-cause", txn]).arg(&idx).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("stopped before event {strike} (task {})", env["LEDGER_PID"])), "{err}");
    assert!(err.contains("incident_hog"), "the chain is printed: {err}");
    // A transaction without a cause, and a log without an index: clear errors.
    // (Which payments had none depends on the run: under --ptrace the tracer
    // itself can delay the ledger above the threshold, and is then named.)
    // When every payment of this run had one, an index saved with a threshold
    // no delay reaches gives the payment without a cause.
    let calm_in = |idx: &std::path::Path| {
        (0..12)
            .map(|i| format!("txn-{i:04}"))
            .find(|t| t != txn && why(t, &["--log".as_ref(), idx.as_os_str()])["causes"].as_array().is_some_and(|c| c.is_empty()))
    };
    let (calm, calm_idx) = match calm_in(&idx) {
        Some(t) => (t, idx.clone()),
        None => {
            let high = d.join("incident-high-threshold.kpl");
            save_index_with(&d, &high, &["--threshold-ns", "1000000000000"]);
            (calm_in(&high).expect("a payment without a cause above a threshold of 1000 s"), high)
        }
    };
    let out = kprobe().args(["replay", "--quiet", "--break-at-cause", &calm]).arg(&calm_idx).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&calm), "{out:?}");
    let out = kprobe().args(["replay", "--quiet", "--break-at-cause", txn]).arg(d.join("ledger.kpl")).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no cause index"));
    let _ = std::fs::remove_dir_all(&d);
}

/// `kprobe replay --break-at-cause TXN --debugger gdb`: gdb starts where the
/// root cause struck — `monitor when` names that event, the program is in
/// the ledger's `recv` the hog delayed — and `monitor cause` prints the chain.
#[test]
fn gdb_starts_at_the_cause_and_monitor_cause_prints_the_chain() {
    let (d, env, idx) = indexed_sched_incident("gdbcause");
    let txn = &env["TXN"];
    let g = why(txn, &["--log".as_ref(), idx.as_os_str()]);
    let strike = replay_stop(&g);
    let script = d.join("cause.gdb");
    std::fs::write(&script, "monitor when\nbt 1\nmonitor cause\n").unwrap();
    let mut c = kprobe();
    c.args(["replay", "--quiet", "--break-at-cause", txn, "--debugger", "gdb"]).arg(&idx).args(["--", "-batch", "-x"]).arg(&script);
    let out = c.stdin(std::process::Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("kprobe: error"), "{text}");
    assert!(text.contains(&format!("event {strike} of")), "monitor when is not at the strike (event {strike}):\n{text}");
    assert!(text.contains("recv"), "not in the ledger's recv:\n{text}");
    assert!(text.contains(&format!("the root cause struck at event {strike}")), "{text}");
    assert!(text.contains(&format!("culprit: incident_hog (pid {}", env["CULPRIT_PID"])), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}
