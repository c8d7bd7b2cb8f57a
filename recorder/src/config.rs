//! Recorder configuration: the Helm values file (`probe.ebpf.*`, `kafka.*`)
//! and command-line overrides.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Which hooks are attached (`probe.ebpf.hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// sched_switch / sched_wakeup(_new) / sched_migrate_task: run-queue delay, culprit, migrations.
    pub sched: bool,
    /// The read/write syscall family with latency, bytes and fd type.
    pub syscall: bool,
    /// TCP bytes and latency per socket, retransmits, state changes, RTT.
    pub tcp: bool,
    /// User page faults.
    pub fault: bool,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { sched: true, syscall: true, tcp: true, fault: true }
    }
}

impl Hooks {
    /// Parses `tcp,sched,syscall,fault` (any subset, any order).
    pub fn parse(list: &str) -> Result<Hooks> {
        let mut h = Hooks { sched: false, syscall: false, tcp: false, fault: false };
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "sched" => h.sched = true,
                "syscall" => h.syscall = true,
                "tcp" => h.tcp = true,
                "fault" => h.fault = true,
                _ => bail!("--hooks: unknown hook `{w}` (known: tcp, sched, syscall, fault)"),
            }
        }
        Ok(h)
    }
}

/// Which processes are recorded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Filter {
    /// Every process but the recorder itself.
    #[default]
    All,
    /// These processes and the processes they fork.
    Pid(Vec<u32>),
    /// Processes with this command name (running now or exec'ed later) and their children.
    Comm(String),
    /// Processes in this cgroup v2 (a pod's cgroup) or below it.
    Cgroup(String),
}

/// What a redaction rule does with the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactAction {
    /// Drop the bytes, keep their length.
    Drop,
    /// Replace the bytes by their BLAKE3 hash.
    Hash,
}

/// One capture-policy rule (`probe.capture.redact[]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RedactRule {
    /// Glob on the path of the file (`*` matches any run of characters).
    #[serde(default)]
    pub path: Option<String>,
    /// A file descriptor number.
    #[serde(default)]
    pub fd: Option<u64>,
    /// What to do.
    pub action: RedactAction,
}

/// Everything the recorder needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Attached hooks.
    pub hooks: Hooks,
    /// Ring-buffer size in KiB (`probe.ebpf.ringBufferSizeKb`).
    pub ring_buffer_kb: u32,
    /// Selected processes.
    pub filter: Filter,
    /// Replay-grade capture of the selected processes.
    pub replay_grade: bool,
    /// The consumer is woken when the ring holds this share of its size (lazy wakeups).
    pub wakeup_fill_percent: u32,
    /// Reader timer: the ring buffer is read at least this often (ms).
    pub poll_ms: u64,
    /// Reader pacing (µs): after a drain of less than a sixteenth of the
    /// ring, the reader waits this long before it reads again, so records
    /// gather and are read in batches instead of one by one as they are
    /// committed (which costs the traced tasks cross-CPU cache misses on
    /// the ring); the pause ends early when the ring passes its wakeup
    /// threshold. 0: read again at once. At 2 M events/s a 4 MiB ring fills
    /// about 2% in 1 ms.
    pub drain_pace_us: u64,
    /// Capture-policy rules.
    pub redact: Vec<RedactRule>,
    /// Replay-grade: reads of unchanged regular files by reference, their
    /// bytes read from the file by the recorder ([`crate::fileref`];
    /// `probe.capture.fileRefs`, default on). Off: every byte goes through
    /// the ring buffer.
    pub file_refs: bool,
    /// `kafka.retentionMs` for the topics the recorder creates.
    pub kafka_retention_ms: u64,
    /// `kafka.replicationFactor` for the topics the recorder creates.
    pub kafka_replication_factor: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hooks: Hooks::default(),
            ring_buffer_kb: 4096,
            filter: Filter::All,
            replay_grade: false,
            wakeup_fill_percent: 25,
            poll_ms: 10,
            drain_pace_us: 1000,
            redact: Vec::new(),
            file_refs: true,
            kafka_retention_ms: 86_400_000,
            kafka_replication_factor: 3,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Values {
    #[serde(default)]
    probe: Option<Probe>,
    #[serde(default)]
    kafka: Option<Kafka>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    ebpf: Option<Ebpf>,
    #[serde(default)]
    capture: Option<Capture>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Ebpf {
    #[serde(default)]
    hooks: Option<HookValues>,
    #[serde(default)]
    ring_buffer_size_kb: Option<u32>,
}

#[derive(Deserialize)]
struct HookValues {
    #[serde(default = "yes")]
    tcp: bool,
    #[serde(default = "yes")]
    syscall: bool,
    #[serde(default = "yes")]
    sched: bool,
    #[serde(default = "yes")]
    fault: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Capture {
    #[serde(default)]
    redact: Vec<RedactRule>,
    #[serde(default)]
    file_refs: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Kafka {
    #[serde(default)]
    retention_ms: Option<u64>,
    #[serde(default)]
    replication_factor: Option<i32>,
}

impl Config {
    /// Reads a Helm values file (as in the chart's `values.yaml`); keys the
    /// recorder does not use are ignored, keys it uses are type-checked.
    pub fn from_values_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading values file {}", path.display()))?;
        Self::from_values_str(&text).with_context(|| format!("values file {}", path.display()))
    }

    /// As [`Config::from_values_file`], from text.
    pub fn from_values_str(text: &str) -> Result<Config> {
        let v: Values = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column())).unwrap_or_default();
            anyhow::anyhow!("{e}{at}")
        })?;
        let mut c = Config::default();
        if let Some(p) = v.probe {
            if let Some(e) = p.ebpf {
                if let Some(h) = e.hooks {
                    c.hooks = Hooks { sched: h.sched, syscall: h.syscall, tcp: h.tcp, fault: h.fault };
                }
                if let Some(kb) = e.ring_buffer_size_kb {
                    c.ring_buffer_kb = kb;
                }
            }
            if let Some(cap) = p.capture {
                c.redact = cap.redact;
                if let Some(f) = cap.file_refs {
                    c.file_refs = f;
                }
            }
        }
        if let Some(k) = v.kafka {
            if let Some(r) = k.retention_ms {
                c.kafka_retention_ms = r;
            }
            if let Some(r) = k.replication_factor {
                c.kafka_replication_factor = r;
            }
        }
        for (i, r) in c.redact.iter().enumerate() {
            if r.path.is_none() == r.fd.is_none() {
                bail!("probe.capture.redact[{i}]: give exactly one of `path` or `fd`");
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_values() {
        let c = Config::from_values_str(
            "probe:\n  ebpf:\n    hooks:\n      tcp: true\n      syscall: true\n      sched: true\n      fault: false\n    ringBufferSizeKb: 4096\nkafka:\n  retentionMs: 86400000\n  replicationFactor: 3\nclickhouse:\n  retentionDays: 30\n",
        )
        .unwrap();
        assert!(!c.hooks.fault && c.hooks.tcp);
        assert_eq!(c.ring_buffer_kb, 4096);
        assert_eq!(c.kafka_replication_factor, 3);
    }

    #[test]
    fn file_refs_from_values() {
        assert!(Config::from_values_str("probe:\n  capture:\n    redact: []\n").unwrap().file_refs, "on by default");
        let c = Config::from_values_str("probe:\n  capture:\n    fileRefs: false\n").unwrap();
        assert!(!c.file_refs);
        let e = Config::from_values_str("probe:\n  capture:\n    fileRefs: sometimes\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_name_the_place() {
        let e = Config::from_values_str("probe:\n  ebpf:\n    ringBufferSizeKb: lots\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = Hooks::parse("sched,disk").unwrap_err().to_string();
        assert!(e.contains("disk"), "{e}");
    }
}
