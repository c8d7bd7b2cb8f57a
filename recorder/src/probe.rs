//! Loading and attaching the BPF programs with aya; the ring buffer and the
//! per-hook counters.

use crate::config::{Config, Filter, Hooks};
use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use std::time::Duration;

static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/recorder.bpf.o"));

const FILTER_SET: u32 = 1;
const FILTER_CGROUP: u32 = 2;

// Hook indices (`raw::HOOK_NAMES` order).
const H_SCHED: usize = 0;
const H_SYSCALL: usize = 1;
const H_TCP: usize = 2;
const H_FAULT: usize = 3;
const H_PROC: usize = 4;

/// Events and drops of one hook, as counted in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounts {
    /// Records written to the ring buffer.
    pub events: u64,
    /// Records lost because the ring buffer (or a tracking map) was full,
    /// and runs of the hook's programs the kernel skipped (recursion).
    pub drops: u64,
}

/// The loaded and attached programs.
pub struct Probe {
    ebpf: Option<Ebpf>,
    /// The ring buffer (taken out while the reader hands its records on in place).
    pub(crate) ring: Option<crate::ring::Ring>,
    stats: PerCpuArray<MapData, u64>,
    /// The attached programs and their hooks.
    attached: Vec<(&'static str, usize)>,
    /// Per hook: runs of its programs the kernel skipped (recursion), as
    /// last read while they were loaded.
    misses: [u64; 5],
    /// Ring-buffer size in bytes.
    pub ring_bytes: usize,
}

/// Loads and attaches `prog` to `tracepoint`, noting it under `hook` (`raw::HOOK_NAMES` order).
fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attached: &mut Vec<(&'static str, usize)>,
    hook: usize,
    prog: &'static str,
    tracepoint: &str,
) -> Result<()> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("BPF object has no program {prog}"))?
        .try_into()
        .with_context(|| format!("{prog} is not a tp_btf program"))?;
    p.load(tracepoint, btf).with_context(|| format!("loading {prog} (tp_btf/{tracepoint}) into the kernel"))?;
    p.attach().with_context(|| format!("attaching {prog} to tracepoint {tracepoint}"))?;
    attached.push((prog, hook));
    Ok(())
}

/// cgroup v2 id (the directory's inode) and depth of a cgroup path.
pub fn cgroup_id_level(path: &str) -> Result<(u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let root = crate::cgroup::v2_root()?;
    let full = if path.starts_with(&root) {
        std::path::PathBuf::from(path)
    } else {
        std::path::Path::new(&root).join(path.trim_start_matches('/'))
    };
    let md = std::fs::metadata(&full).with_context(|| format!("--cgroup {path}: {} is not a cgroup v2 directory", full.display()))?;
    if !md.is_dir() {
        bail!("--cgroup {path}: {} is not a directory", full.display());
    }
    let rel = full.strip_prefix(&root).unwrap_or(&full);
    let level = rel.components().count() as u32;
    Ok((md.ino(), level))
}

impl Probe {
    /// Loads the programs of the configured hooks and attaches them.
    /// `ref_devs`: filesystems (kernel dev_t, handle format) whose reads go
    /// by reference in replay-grade capture ([`crate::fileref`]); none: every
    /// byte is copied. `realtime_off`: CLOCK_REALTIME minus CLOCK_MONOTONIC, ns.
    pub fn load(cfg: &Config, ref_devs: &[(u32, u32)], realtime_off: i64) -> Result<Probe> {
        let ring_bytes = cfg.ring_buffer_kb as usize * 1024;
        if ring_bytes < 4096 || !ring_bytes.is_power_of_two() {
            bail!("ring buffer size {} KiB: must be a power of two of at least 4 KiB (probe.ebpf.ringBufferSizeKb)", cfg.ring_buffer_kb);
        }
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux): the recorder needs a kernel with BTF")?;
        let self_tgid = std::process::id();
        let mut filter = 0u32;
        let mut comm = [0u8; 16];
        let mut comm_set = 0u32;
        let (mut cg_id, mut cg_level) = (0u64, 0u32);
        match &cfg.filter {
            Filter::All => {}
            Filter::Pid(_) => filter = FILTER_SET,
            Filter::Comm(c) => {
                filter = FILTER_SET;
                let b = c.as_bytes();
                if b.len() > 15 {
                    bail!("--comm {c}: a command name has at most 15 bytes (the kernel's TASK_COMM_LEN)");
                }
                comm[..b.len()].copy_from_slice(b);
                comm_set = 1;
            }
            Filter::Cgroup(p) => {
                filter = FILTER_CGROUP;
                (cg_id, cg_level) = cgroup_id_level(p)?;
            }
        }
        let emit_syscalls: u32 = cfg.hooks.syscall as u32;
        let replay: u32 = cfg.replay_grade as u32;
        if cfg.replay_grade && filter == 0 {
            bail!("replay-grade capture needs the processes to capture: a pid, comm or cgroup filter");
        }
        let wakeup_bytes: u64 = (ring_bytes as u64 * cfg.wakeup_fill_percent as u64 / 100).max(1);
        // The recorder's own stdout and stderr (inode, kernel dev_t): writes
        // of recorded programs there are kept for the replay to show.
        let stdio = |fd: i32| crate::sys::fd_ino_dev(fd).unwrap_or((0, 0));
        let (out_ino, out_dev) = stdio(1);
        let (err_ino, err_dev) = stdio(2);
        let file_refs: u32 = (cfg.replay_grade && !ref_devs.is_empty()) as u32;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            // sys_inflight is task-local storage, which aya has no typed wrapper for (it is only used in the kernel)
            .allow_unsupported_maps()
            .map_max_entries("events", ring_bytes as u32)
            .map_max_entries("targets", target_words())
            .override_global("cfg_self_tgid", &self_tgid, true)
            .override_global("cfg_filter", &filter, true)
            .override_global("cfg_cgroup_id", &cg_id, true)
            .override_global("cfg_cgroup_level", &cg_level, true)
            .override_global("cfg_wakeup_bytes", &wakeup_bytes, true)
            .override_global("cfg_comm", &comm, true)
            .override_global("cfg_comm_set", &comm_set, true)
            .override_global("cfg_emit_syscalls", &emit_syscalls, true)
            .override_global("cfg_replay", &replay, true)
            .override_global("cfg_stdout_ino", &out_ino, true)
            .override_global("cfg_stdout_dev", &out_dev, true)
            .override_global("cfg_stderr_ino", &err_ino, true)
            .override_global("cfg_stderr_dev", &err_dev, true)
            .override_global("cfg_file_refs", &file_refs, true)
            .override_global("cfg_realtime_off", &realtime_off, true);
        let mut ebpf = loader.load(BPF_OBJECT).context("loading the BPF object")?;

        // Selected processes first, so nothing they do is missed once attached.
        let selected: Vec<u32> = match &cfg.filter {
            Filter::Pid(pids) => pids.clone(),
            Filter::Comm(c) => crate::procs_with_comm(c),
            _ => Vec::new(),
        };
        if !selected.is_empty() {
            let mut targets: Array<_, u64> = Array::try_from(ebpf.map_mut("targets").context("map targets")?)?;
            for p in selected {
                // byte p % 8 of word p / 8 (see `targets` in recorder.bpf.c)
                let w = targets.get(&(p / 8), 0).with_context(|| format!("selecting pid {p}: above pid_max"))?;
                let mut b = w.to_le_bytes();
                b[(p % 8) as usize] = 1;
                targets.set(p / 8, u64::from_le_bytes(b), 0).with_context(|| format!("selecting pid {p}"))?;
            }
        }

        if file_refs != 0 {
            let mut devs: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(ebpf.map_mut("ref_devs").context("map ref_devs")?)?;
            for &(dev, fmt) in ref_devs {
                devs.insert(dev, fmt, 0).with_context(|| format!("ref_devs: device {dev:#x}"))?;
            }
        }

        let Hooks { sched, syscall, tcp, fault } = cfg.hooks;
        let mut attached = Vec::new();
        if filter & FILTER_SET != 0 || cfg.replay_grade {
            attach(&mut ebpf, &btf, &mut attached, H_PROC, "on_process_fork", "sched_process_fork")?;
            attach(&mut ebpf, &btf, &mut attached, H_PROC, "on_process_exec", "sched_process_exec")?;
            attach(&mut ebpf, &btf, &mut attached, H_PROC, "on_process_exit", "sched_process_exit")?;
        }
        if sched {
            attach(&mut ebpf, &btf, &mut attached, H_SCHED, "on_sched_switch", "sched_switch")?;
            attach(&mut ebpf, &btf, &mut attached, H_SCHED, "on_sched_wakeup", "sched_wakeup")?;
            attach(&mut ebpf, &btf, &mut attached, H_SCHED, "on_sched_wakeup_new", "sched_wakeup_new")?;
            attach(&mut ebpf, &btf, &mut attached, H_SCHED, "on_sched_migrate", "sched_migrate_task")?;
        }
        if cfg.replay_grade {
            attach(&mut ebpf, &btf, &mut attached, H_PROC, "on_signal_deliver", "signal_deliver")?;
        }
        if syscall || tcp || cfg.replay_grade {
            attach(&mut ebpf, &btf, &mut attached, H_SYSCALL, "on_sys_enter", "sys_enter")?;
            attach(&mut ebpf, &btf, &mut attached, H_SYSCALL, "on_sys_exit", "sys_exit")?;
        }
        if tcp {
            attach(&mut ebpf, &btf, &mut attached, H_TCP, "on_sock_send_length", "sock_send_length")?;
            attach(&mut ebpf, &btf, &mut attached, H_TCP, "on_sock_recv_length", "sock_recv_length")?;
            attach(&mut ebpf, &btf, &mut attached, H_TCP, "on_tcp_retransmit", "tcp_retransmit_skb")?;
            attach(&mut ebpf, &btf, &mut attached, H_TCP, "on_inet_sock_set_state", "inet_sock_set_state")?;
        }
        if fault {
            attach(&mut ebpf, &btf, &mut attached, H_FAULT, "on_page_fault_user", "page_fault_user")?;
        }
        let Map::RingBuf(events) = ebpf.take_map("events").context("map events")? else {
            bail!("map events is not a ring buffer");
        };
        let ring = Some(crate::ring::Ring::new(events, ring_bytes)?);
        let stats = PerCpuArray::try_from(ebpf.take_map("stats").context("map stats")?)?;
        Ok(Probe { ebpf: Some(ebpf), ring, stats, attached, misses: [0; 5], ring_bytes })
    }

    /// Detaches and unloads the programs; the ring buffer and counters stay
    /// readable, so what was captured until now can be read out.
    pub fn detach(&mut self) {
        self.read_misses();
        self.ebpf = None;
    }

    /// Reads the attached programs' recursion misses ([`crate::sys::prog_recursion_misses`]).
    fn read_misses(&mut self) {
        let Some(ebpf) = &self.ebpf else { return };
        let mut m = [0u64; 5];
        for &(name, hook) in &self.attached {
            match ebpf
                .program(name)
                .and_then(|p| p.fd().ok())
                .and_then(|fd| crate::sys::prog_recursion_misses(std::os::fd::AsFd::as_fd(fd)))
            {
                Some(n) => m[hook] += n,
                None => tracing::debug!("program {name}: no bpf_prog_info"),
            }
        }
        self.misses = m;
    }

    /// Waits until the programs wake the reader (the ring buffer's fill
    /// threshold) or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        if let Some(r) = &self.ring {
            r.wait(timeout);
        }
    }

    /// Waits `d`, or less if the programs wake the reader ([`crate::ring::Ring::pause`]).
    pub fn pause(&self, d: Duration) {
        if let Some(r) = &self.ring {
            r.pause(d);
        }
    }

    /// Hands every record now in the ring buffer to `f`; returns the bytes read.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.ring
            .as_mut()
            .map(|r| {
                r.drain(|rec| {
                    f(rec);
                    true
                })
            })
            .unwrap_or(0)
    }

    /// Per-hook counters, summed over CPUs.
    /// Drops include the runs the kernel skipped (recursion misses).
    pub fn counts(&mut self) -> Result<[HookCounts; 5]> {
        self.read_misses();
        let mut out = [HookCounts::default(); 5];
        for (h, c) in out.iter_mut().enumerate() {
            let ev = self.stats.get(&(2 * h as u32), 0)?;
            let dr = self.stats.get(&(2 * h as u32 + 1), 0)?;
            c.events = ev.iter().sum();
            c.drops = dr.iter().sum::<u64>() + self.misses[h];
        }
        Ok(out)
    }
}

/// Words of the `targets` map: one byte per possible tgid, for the kernel's
/// `pid_max` (4 Mi, the kernel's limit, when it cannot be read).
fn target_words() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(1 << 22);
    pid_max.div_ceil(8).max(1)
}
