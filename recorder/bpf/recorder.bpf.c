// SPDX-License-Identifier: GPL-2.0
/* kprobe's eBPF recorder: scheduler, syscall, TCP and page-fault hooks.
 *
 * CO-RE: built against vmlinux.h (generated from /sys/kernel/btf/vmlinux
 * by build.rs) and relocated by the loader (aya) on the running kernel.
 * Every program filters first (own process, pid/comm set, cgroup), then
 * reserves a record in the one ring buffer `events`; a full ring counts a
 * drop for the hook instead of losing the event silently. Consumers are woken
 * only once the ring holds cfg_wakeup_bytes (lazy wakeups: no feedback loop
 * with the sched hook, whose own wakeup of the reader would be recorded). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "recorder.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader (.rodata). */
const volatile __u32 cfg_self_tgid = 0;
const volatile __u32 cfg_filter = 0;
const volatile __u64 cfg_cgroup_id = 0;
const volatile __u32 cfg_cgroup_level = 0;
const volatile __u64 cfg_wakeup_bytes = 0;
const volatile char cfg_comm[16] = {};
const volatile __u32 cfg_comm_set = 0;
const volatile __u32 cfg_emit_syscalls = 1; /* 0: sys_enter/exit only time the tcp hook */
const volatile __u32 cfg_replay = 0;        /* replay-grade: every syscall, with output buffers */
/* The recorder's own stdout and stderr (inode, kernel dev_t): what a recorded
 * program writes there is what the user saw, kept for the replay to show. */
const volatile __u64 cfg_stdout_ino = 0;
const volatile __u32 cfg_stdout_dev = 0;
const volatile __u64 cfg_stderr_ino = 0;
const volatile __u32 cfg_stderr_dev = 0;
/* Replay-grade reads of unchanged regular files by reference (file_ref),
 * and CLOCK_REALTIME minus CLOCK_MONOTONIC at load, ns (the file's age). */
const volatile __u32 cfg_file_refs = 0;
const volatile __s64 cfg_realtime_off = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 1024);
} events SEC(".maps");

/* events at 2*hook, drops at 2*hook+1 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * NHOOKS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* tgids selected by pid or comm, one byte per tgid (1: selected) in 8-byte
 * words: word tgid / 8, byte tgid % 8. The loader sizes it for the kernel's
 * pid_max. An array lookup is inlined by the verifier (an address
 * computation), where a hash lookup hashed the key on every syscall of every
 * process; byte stores need no atomics (a neighbour's byte is untouched).
 * Children are added at fork. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} targets SEC(".maps");

struct task_sched {
	__u64 wake_ts; /* runnable since (0: not waiting) */
	__u64 out_ts;  /* switched out at */
	__u32 slept;   /* switched out sleeping (not preempted) */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct task_sched);
} sched_state SEC(".maps");

/* The fd type of a recently used descriptor (see fd_type_cached). */
#define FDC_SLOTS 4
struct fd_cache {
	__u64 file; /* the struct file it was found for */
	__u64 gen;  /* fd_gen then */
	__s32 fd;
	__u32 type;
};

struct sys_entry {
	struct fd_cache fdc[FDC_SLOTS];
	__u64 ts;
	__u64 args[6];
	__u64 pos; /* a read of a regular file: the file position at entry (file_ref) */
	__u32 nr;
	__u32 fd_type;
	__u32 shown; /* OUT_STDOUT or OUT_STDERR: a write to the recorder's own stdout/stderr */
	__u32 exit_valid; /* the exit_* fields describe the task's last syscall exit */
	/* Where the last syscall returned to user code (replay-grade): a signal
	 * delivered with the task's registers still exactly so was delivered at
	 * that syscall's exit. */
	__u64 exit_ip;
	__u64 exit_sp;
	__u64 exit_ret;
	__u64 exit_nr;
	__u64 exit_hash; /* after rt_sigreturn: a hash of all the registers it restored */
};

/* The syscall in progress, per task (task-local storage: no hashing, no lock). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sys_entry);
} sys_inflight SEC(".maps");

/* Filesystems (kernel dev_t of the superblock) whose files the reader can
 * open by handle, with the handle format (file_ref.fmt): set by the loader
 * from the recorder's mount table. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} ref_devs SEC(".maps");

struct sk_owner {
	__u32 pid;
	__u32 tid;
};

/* Socket -> the task that last sent or received on it, for events that
 * happen in softirq context (retransmits, state changes). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sk_owner);
} sk_owners SEC(".maps");

static __always_inline void count(__u32 hook, __u32 drop)
{
	__u32 k = 2 * hook + drop;
	__u64 *v = bpf_map_lookup_elem(&stats, &k);
	if (v)
		*v += 1;
}

static __always_inline void *reserve(__u32 hook, __u32 size)
{
	void *r = bpf_ringbuf_reserve(&events, size, 0);
	if (!r)
		count(hook, 1);
	return r;
}

/* Submits a record and counts it; every 16th record of a CPU checks the
 * fill level and wakes the reader past cfg_wakeup_bytes (the others skip
 * the query: the reader also polls on a short timer). */
static __always_inline void submit(__u32 hook, void *r)
{
	__u32 k = 2 * hook;
	__u64 *v = bpf_map_lookup_elem(&stats, &k);
	__u64 n = 0;
	if (v)
		n = ++*v;
	__u64 flags = BPF_RB_NO_WAKEUP;
	if ((n & 15) == 0 && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(r, flags);
}

static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

static __always_inline bool comm_matches(const char *comm)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (comm[i] != cfg_comm[i])
			return false;
		if (comm[i] == 0)
			return true;
	}
	return true;
}

static __always_inline bool task_in_cgroup(struct task_struct *t)
{
	__u32 level = cfg_cgroup_level;
	struct cgroup *cg = BPF_CORE_READ(t, cgroups, dfl_cgrp);
	if (!cg)
		return false;
	if (BPF_CORE_READ(cg, level) < (int)level)
		return false;
	struct cgroup *anc = NULL;
	if (level > 255)
		return false;
	bpf_core_read(&anc, sizeof(anc), &cg->ancestors[level]);
	if (!anc)
		return false;
	return BPF_CORE_READ(anc, kn, id) == cfg_cgroup_id;
}

static __always_inline __u8 *target_slot(__u32 tgid)
{
	__u32 k = tgid >> 3;
	__u8 *w = bpf_map_lookup_elem(&targets, &k);
	return w ? w + (tgid & 7) : NULL;
}

static __always_inline bool is_target(__u32 tgid)
{
	__u8 *t = target_slot(tgid);
	return t && *t;
}

/* Selects (1) or forgets (0) a tgid; one the map cannot hold (pid_max was
 * raised after load) is counted as a dropped process event. */
static __always_inline void set_target(__u32 tgid, __u8 v)
{
	__u8 *t = target_slot(tgid);
	if (t)
		*t = v;
	else if (v)
		count(HOOK_PROC, 1);
}

static __always_inline bool wanted_tgid_task(__u32 tgid, struct task_struct *t, bool current)
{
	if (tgid == cfg_self_tgid)
		return false;
	__u32 f = cfg_filter;
	if (!f)
		return true;
	if ((f & FILTER_SET) && is_target(tgid))
		return true;
	if (f & FILTER_CGROUP) {
		if (current)
			return bpf_get_current_ancestor_cgroup_id(cfg_cgroup_level) == cfg_cgroup_id;
		return task_in_cgroup(t);
	}
	return false;
}

static __always_inline bool wanted_current(void)
{
	return wanted_tgid_task(bpf_get_current_pid_tgid() >> 32, NULL, true);
}

static __always_inline bool wanted_task(struct task_struct *t)
{
	return wanted_tgid_task(BPF_CORE_READ(t, tgid), t, false);
}

/* bpf_get_current_cgroup_id() as plain loads through the task's BTF (the
 * helper call cost a syscall record about 25 ns here): the id of the
 * task's cgroup v2 kernfs node (BTF loads of a NULL pointer read 0). Only
 * the short syscall record (the daemon's hot path) uses it: in every header
 * it took the sys_exit program's verification from 60 to 320 ms, in every
 * syscall record to 130-180 ms. */
static __always_inline __u64 current_cgroup_id(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	return t->cgroups->dfl_cgrp->kn->id;
}

static __always_inline void hdr_current_in(struct rec_hdr *h, __u16 kind, __u32 size, __u64 ts, __u64 cgroup)
{
	__u64 pt = bpf_get_current_pid_tgid();
	h->ts = ts;
	h->cgroup = cgroup;
	h->pid = pt >> 32;
	h->tid = (__u32)pt;
	h->kind = kind;
	h->cpu = bpf_get_smp_processor_id();
	h->size = size;
}

static __always_inline void hdr_current(struct rec_hdr *h, __u16 kind, __u32 size, __u64 ts)
{
	hdr_current_in(h, kind, size, ts, bpf_get_current_cgroup_id());
}

static __always_inline void hdr_task(struct rec_hdr *h, struct task_struct *t, __u16 kind, __u32 size, __u64 ts)
{
	h->ts = ts;
	h->cgroup = task_cgroup(t);
	h->pid = BPF_CORE_READ(t, tgid);
	h->tid = BPF_CORE_READ(t, pid);
	h->kind = kind;
	h->cpu = bpf_get_smp_processor_id();
	h->size = size;
}

/* ---------------------------------------------------------------- sched */

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	bool wp = wanted_task(prev), wn = wanted_task(next);
	if (!wp && !wn)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u32 prev_tid = BPF_CORE_READ(prev, pid);
	__u32 next_tid = BPF_CORE_READ(next, pid);

	if (wp && prev_tid) {
		struct task_sched s = {};
		s.out_ts = now;
		if (preempt || prev_state == 0) {
			s.wake_ts = now; /* still runnable: waits on the run queue from now */
		} else {
			s.slept = 1;
		}
		bpf_map_update_elem(&sched_state, &prev_tid, &s, BPF_ANY);
	}
	if (wn && next_tid) {
		struct task_sched *s = bpf_map_lookup_elem(&sched_state, &next_tid);
		if (s && s->wake_ts && now > s->wake_ts) {
			struct rec_delay *d = reserve(HOOK_SCHED, sizeof(*d));
			if (d) {
				hdr_task(&d->h, next, R_DELAY, sizeof(*d), now);
				d->delay_ns = now - s->wake_ts;
				d->off_cpu_ns = (s->slept && s->wake_ts > s->out_ts) ? s->wake_ts - s->out_ts : 0;
				d->culprit_pid = BPF_CORE_READ(prev, tgid);
				d->culprit_tid = prev_tid;
				BPF_CORE_READ_STR_INTO(&d->culprit_comm, prev, comm);
				submit(HOOK_SCHED, d);
			}
			s->wake_ts = 0;
		}
	}

	struct rec_switch *r = reserve(HOOK_SCHED, sizeof(*r));
	if (!r)
		return 0;
	hdr_task(&r->h, prev, R_SWITCH, sizeof(*r), now);
	BPF_CORE_READ_STR_INTO(&r->prev_comm, prev, comm);
	BPF_CORE_READ_STR_INTO(&r->next_comm, next, comm);
	r->next_pid = BPF_CORE_READ(next, tgid);
	r->next_tid = next_tid;
	r->prev_state = prev_state;
	r->preempt = preempt;
	submit(HOOK_SCHED, r);
	return 0;
}

static __always_inline int wakeup(struct task_struct *p, __u16 new_task)
{
	if (!wanted_task(p))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u32 tid = BPF_CORE_READ(p, pid);
	struct task_sched *s = bpf_map_lookup_elem(&sched_state, &tid);
	if (s) {
		if (!s->wake_ts)
			s->wake_ts = now;
	} else {
		struct task_sched n = {};
		n.wake_ts = now;
		n.out_ts = now;
		bpf_map_update_elem(&sched_state, &tid, &n, BPF_ANY);
	}
	struct rec_wakeup *r = reserve(HOOK_SCHED, sizeof(*r));
	if (!r)
		return 0;
	hdr_task(&r->h, p, R_WAKEUP, sizeof(*r), now);
	__u64 pt = bpf_get_current_pid_tgid();
	r->waker_pid = pt >> 32;
	r->waker_tid = (__u32)pt;
	r->target_cpu = BPF_CORE_READ(p, thread_info.cpu);
	r->new_task = new_task;
	r->pad = 0;
	submit(HOOK_SCHED, r);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *p)
{
	return wakeup(p, 0);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_sched_wakeup_new, struct task_struct *p)
{
	return wakeup(p, 1);
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(on_sched_migrate, struct task_struct *p, int dest_cpu)
{
	if (!wanted_task(p))
		return 0;
	struct rec_migrate *r = reserve(HOOK_SCHED, sizeof(*r));
	if (!r)
		return 0;
	hdr_task(&r->h, p, R_MIGRATE, sizeof(*r), bpf_ktime_get_ns());
	r->from_cpu = BPF_CORE_READ(p, thread_info.cpu);
	r->to_cpu = dest_cpu;
	submit(HOOK_SCHED, r);
	return 0;
}

/* -------------------------------------------------------------- syscall */

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define S_IFCHR 0020000
#define S_IFIFO 0010000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

static __always_inline bool rw_family(long nr)
{
	switch (nr) {
	case 0:  /* read */
	case 1:  /* write */
	case 17: /* pread64 */
	case 18: /* pwrite64 */
	case 19: /* readv */
	case 20: /* writev */
	case 44: /* sendto */
	case 45: /* recvfrom */
	case 46: /* sendmsg */
	case 47: /* recvmsg */
	case 74: /* fsync */
	case 75: /* fdatasync */
		return true;
	}
	return false;
}

/* The open file behind descriptor fd of the current task (NULL: none). */
static __always_inline struct file *fd_file(long fd)
{
	/* tp_btf: trusted BTF pointers are read directly (no helper calls) */
	struct task_struct *t = bpf_get_current_task_btf();
	struct files_struct *files = t->files;
	if (!files)
		return NULL;
	struct fdtable *fdt = files->fdt;
	if (!fdt || fd < 0 || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	bpf_core_read(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The kpl FdType of an open file. */
static __always_inline __u32 file_type(struct file *f)
{
	__u16 mode = BPF_CORE_READ(f, f_inode, i_mode);
	switch (mode & S_IFMT) {
	case S_IFREG:
		return 1;
	case S_IFIFO:
		return 2;
	case S_IFCHR:
		return 6;
	case S_IFSOCK: {
		struct socket *sock = BPF_CORE_READ(f, private_data);
		struct sock *sk = BPF_CORE_READ(sock, sk);
		if (!sk)
			return 7;
		__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
		if (fam == AF_UNIX)
			return 5;
		if (fam == AF_INET || fam == AF_INET6) {
			__u16 proto = BPF_CORE_READ(sk, sk_protocol);
			if (proto == IPPROTO_TCP)
				return 3;
			if (proto == IPPROTO_UDP)
				return 4;
		}
		return 7;
	}
	}
	return 7;
}

/* Bumped when a selected task's descriptor table may have lost an entry
 * (close, dup2/dup3 onto a descriptor, close_range, exec with close-on-exec
 * descriptors, io_uring_enter), at the exit of that call: a descriptor
 * number can only name another file after one of them. */
__u64 fd_gen = 0;

static __always_inline bool closes_fds(long nr)
{
	switch (nr) {
	case 3:   /* close */
	case 33:  /* dup2 */
	case 292: /* dup3 */
	case 436: /* close_range */
	case 59:  /* execve */
	case 322: /* execveat */
	case 426: /* io_uring_enter */
		return true;
	}
	return false;
}

/* The type of descriptor fd's file, remembered per task for FDC_SLOTS descriptors: a cached type
 * is used while the descriptor still holds the same struct file and no
 * call of closes_fds() returned since (the generation is read before the
 * table, so a close racing with the lookup makes the entry stale, never
 * wrong). Saves the two to four probe reads of the inode and socket. */
static __always_inline __u32 fd_type_cached(struct sys_entry *e, long fd)
{
	__u64 gen = *(volatile __u64 *)&fd_gen;
	struct file *f = fd_file(fd);
	if (!f)
		return 0;
	struct fd_cache *c = &e->fdc[fd & (FDC_SLOTS - 1)];
	if (c->fd == fd && c->file == (__u64)f && c->gen == gen)
		return c->type;
	__u32 t = file_type(f);
	c->fd = fd;
	c->file = (__u64)f;
	c->gen = gen;
	c->type = t;
	return t;
}

/* OUT_STDOUT/OUT_STDERR when descriptor fd is the recorder's own stdout/stderr. */
static __always_inline __u32 shown_fd(long fd)
{
	struct file *f = fd_file(fd);
	if (!f)
		return 0;
	__u64 ino = BPF_CORE_READ(f, f_inode, i_ino);
	__u32 dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	if (cfg_stdout_ino && ino == cfg_stdout_ino && dev == cfg_stdout_dev)
		return OUT_STDOUT;
	if (cfg_stderr_ino && ino == cfg_stderr_ino && dev == cfg_stderr_dev)
		return OUT_STDERR;
	return 0;
}

/* write, pwrite64, writev, pwritev, pwritev2: calls whose bytes are kept
 * when they go to the recorder's own stdout/stderr. */
static __always_inline bool is_write_out(long nr)
{
	return nr == 1 || nr == 18 || nr == 20 || nr == 296 || nr == 328;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	if (!(cfg_replay || rw_family(id)) || !wanted_current())
		return 0;
	struct sys_entry *e = bpf_task_storage_get(&sys_inflight, bpf_get_current_task_btf(), 0,
						   BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!e) {
		count(HOOK_SYSCALL, 1);
		return 0;
	}
	e->ts = bpf_ktime_get_ns();
	e->nr = id;
	e->args[0] = regs->di;
	e->args[1] = regs->si;
	e->args[2] = regs->dx;
	e->args[3] = regs->r10;
	e->args[4] = regs->r8;
	e->args[5] = regs->r9;
	e->fd_type = cfg_emit_syscalls && rw_family(id) ? fd_type_cached(e, e->args[0]) : 0;
	if (cfg_file_refs && id == 0 && e->fd_type == 1) {
		struct file *f = (struct file *)e->fdc[e->args[0] & (FDC_SLOTS - 1)].file;
		e->pos = BPF_CORE_READ(f, f_pos);
	}
	e->shown = 0;
	e->exit_valid = 0;
	if (cfg_replay && is_write_out(id) && (e->args[0] == 1 || e->args[0] == 2))
		e->shown = shown_fd(e->args[0]);
	return 0;
}

/* A hash of the 21 words of a pt_regs but orig_ax (rt_sigreturn sets it to -1). */
static __always_inline __u64 regs_hash(const __u64 *r)
{
	__u64 h = 0;
#pragma unroll
	for (int i = 0; i < 21; i++) {
		if (i != 15)
			h = h * 1000003 + r[i];
	}
	return h;
}

/* The buffer at `where` of `len` bytes (none when `where` is NULL). */
static __always_inline __u64 buf(__u64 *addr, __u64 where, __u64 len)
{
	*addr = where;
	return where ? len : 0;
}

/* Replay-grade: the user buffer a syscall's result was written to. */
static __always_inline __u64 out_buffer(struct sys_entry *e, long ret, __u64 sp, __u64 *addr)
{
	__u64 *a = e->args;
	__u64 len = 0;
	*addr = 0;
	if (ret < 0)
		return 0;
	switch (e->nr) {
	case 1:  /* write */
	case 18: /* pwrite64: the bytes shown on the recorder's stdout/stderr */
		if (e->shown) {
			*addr = a[1];
			len = ret;
		}
		break;
	case 0:   /* read */
	case 17:  /* pread64 */
	case 45:  /* recvfrom */
	case 217: /* getdents64 */
	case 89:  /* readlink */
		return buf(addr, a[1], ret);
	case 267: /* readlinkat */
		return buf(addr, a[2], ret);
	case 318: /* getrandom */
	case 79:  /* getcwd */
		return buf(addr, a[0], ret);
	case 228: /* clock_gettime */
		return buf(addr, a[1], 16);
	case 14: /* rt_sigprocmask: old set */
		return buf(addr, a[2], 8);
	case 96:  /* gettimeofday */
		return buf(addr, a[0], 16);
	case 201: /* time */
	case 22:  /* pipe */
	case 293: /* pipe2 */
		return buf(addr, a[0], 8);
	case 4: /* stat */
	case 5: /* fstat */
	case 6: /* lstat */
		return buf(addr, a[1], 144);
	case 262: /* newfstatat */
		return buf(addr, a[2], 144);
	case 332: /* statx */
		return buf(addr, a[4], 256);
	case 53: /* socketpair */
		return buf(addr, a[3], 8);
	case 63: /* uname */
		return buf(addr, a[0], 390);
	case 232: /* epoll_wait */
	case 281: /* epoll_pwait */
		return buf(addr, a[1], ret * 12);
	case 7: /* poll */
		return buf(addr, a[0], a[1] * 8);
	case 61: /* wait4: status */
		return buf(addr, a[1], 4);
	case 99: /* sysinfo */
		return buf(addr, a[0], 112);
	case 97: /* getrlimit */
		return buf(addr, a[1], 16);
	case 302: /* prlimit64: old limit */
		return buf(addr, a[3], 16);
	case 98: /* getrusage */
		return buf(addr, a[1], 144);
	case 13: /* rt_sigaction: old action */
		return buf(addr, a[2], 32);
	case 204: /* sched_getaffinity: the CPU mask (ret bytes) */
		return buf(addr, a[2], ret);
	case 137: /* statfs */
	case 138: /* fstatfs */
		return buf(addr, a[1], 120);
	case 191: /* getxattr */
	case 192: /* lgetxattr */
	case 193: /* fgetxattr */
		return buf(addr, a[2], ret);
	case 194: /* listxattr */
	case 195: /* llistxattr */
	case 196: /* flistxattr */
		return buf(addr, a[1], ret);
	case 115: /* getgroups: ret gids of 4 bytes */
		return buf(addr, a[1], ret * 4);
	case 36: /* getitimer */
		return buf(addr, a[1], 32);
	case 38: /* setitimer: old value */
		return buf(addr, a[2], 32);
	case 100: /* times */
		return buf(addr, a[0], 32);
	case 127: /* rt_sigpending */
		return buf(addr, a[0], 8);
	case 128: /* rt_sigtimedwait: siginfo */
		return buf(addr, a[1], 128);
	case 247: /* waitid: siginfo */
		return buf(addr, a[2], 128);
	case 59:  /* execve */
	case 322: /* execveat */
		if (ret == 0) {
			/* The new image's initial stack, from its stack pointer to the
			 * top of the stack mapping: argv, env, auxv, AT_RANDOM bytes and
			 * the exec file name, which the kernel put above env_end. */
			struct task_struct *t = bpf_get_current_task_btf();
			struct mm_struct *mm = t->mm;
			if (!mm)
				break;
			__u64 top = (mm->env_end + 4095) & ~4095ULL;
			char probe;
			if (!bpf_probe_read_user(&probe, 1, (void *)top))
				top += 4096; /* the exec file name spilled into the next page */
			*addr = sp;
			len = top > sp ? top - sp : 0;
		}
		break;
	}
	if (!*addr)
		return 0;
	return len;
}

/* Reserves a chunk record of type T (struct rec_data or rec_data_big) and
 * sends in it the n bytes at user address `at` (len 0: unreadable). */
#define SEND_CHUNK(T, at, idx, n, mask, now)                                        \
	do {                                                                         \
		T *d_ = reserve(HOOK_SYSCALL, sizeof(T));                            \
		if (d_) {                                                            \
			hdr_current(&d_->h, R_DATA, sizeof(T), (now));               \
			d_->addr = (at);                                             \
			d_->index = (idx);                                           \
			d_->len = (n);                                               \
			if (bpf_probe_read_user(d_->data, (n) & (mask), (void *)(at))) \
				d_->len = 0;                                         \
			submit(HOOK_SYSCALL, d_);                                    \
		}                                                                    \
	} while (0)

/* The writev family: bytes of the first IOV_MAX_CAPTURE iovecs, at most
 * DATA_MAX_CHUNKS chunks in all. */
#define IOV_MAX_CAPTURE 16

struct iov {
	__u64 base;
	__u64 len;
};

/* Chunks the first `total` bytes of the iovec array take (*cut: more than
 * the capture limits carry). */
static __always_inline __u32 iov_chunks(__u64 iov, __u64 cnt, __u64 total, bool *cut)
{
	__u32 chunks = 0;
	for (__u32 i = 0; i < IOV_MAX_CAPTURE; i++) {
		if (i >= cnt || !total)
			break;
		struct iov v;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(iov + i * sizeof(v)))) {
			*cut = true;
			return chunks;
		}
		__u64 n = v.len < total ? v.len : total;
		total -= n;
		chunks += (n + DATA_CHUNK - 1) / DATA_CHUNK;
	}
	if (total)
		*cut = true;
	if (chunks > DATA_MAX_CHUNKS) {
		*cut = true;
		chunks = DATA_MAX_CHUNKS;
	}
	return chunks;
}

/* Sends the chunks iov_chunks counted, in order (index 0, 1, ...): one
 * bpf_loop step either moves to the next iovec or sends one chunk (the
 * verifier checks the step once, not every path through nested loops). */
struct iov_walk {
	__u64 iov;    /* the iovec array */
	__u64 cnt;    /* its entries */
	__u64 total;  /* bytes written not yet walked */
	__u64 now;    /* timestamp of the chunks */
	__u64 base;   /* the current iovec */
	__u64 n;      /* its bytes that were written */
	__u64 off;    /* bytes of it sent */
	__u32 iv;     /* index of the next iovec to read */
	__u32 index;  /* next chunk index */
	__u32 chunks; /* chunks to send */
	__u32 pad;
};

static long iov_step(__u64 step, void *ctx)
{
	struct iov_walk *w = ctx;
	if (w->index >= w->chunks)
		return 1;
	if (w->off >= w->n) {
		if (w->iv >= w->cnt || w->iv >= IOV_MAX_CAPTURE || !w->total)
			return 1;
		struct iov v;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->iov + (__u64)w->iv * sizeof(v))))
			return 1;
		w->iv++;
		w->base = v.base;
		w->n = v.len < w->total ? v.len : w->total;
		w->total -= w->n;
		w->off = 0;
		return 0;
	}
	__u64 m = w->n - w->off;
	if (m > DATA_CHUNK)
		m = DATA_CHUNK;
	SEND_CHUNK(struct rec_data, w->base + w->off, w->index, m, 2 * DATA_CHUNK - 1, w->now);
	w->off += m;
	w->index++;
	return 0;
}

static __always_inline void iov_emit(__u64 iov, __u64 cnt, __u64 total, __u32 chunks, __u64 now)
{
	struct iov_walk w = { .iov = iov, .cnt = cnt, .total = total, .now = now, .chunks = chunks };
	bpf_loop(IOV_MAX_CAPTURE + DATA_MAX_CHUNKS + 1, iov_step, &w, 0);
}

/* Chunks of the first `len` bytes of a buffer: DATA_BIG ones, then DATA_CHUNK ones. */
static __always_inline __u32 chunks_of(__u64 len)
{
	return len / DATA_BIG + ((len % DATA_BIG) + DATA_CHUNK - 1) / DATA_CHUNK;
}

/* Sends the path an open call opened (capture policy, mmap snapshots): in a
 * small record when it fits. */
static __always_inline void send_path(__u64 path, __u64 now)
{
	struct rec_data_small *s = reserve(HOOK_SYSCALL, sizeof(*s));
	if (s) {
		long n = bpf_probe_read_user_str(s->data, DATA_SMALL, (void *)path);
		if (n < DATA_SMALL) {
			hdr_current(&s->h, R_DATA, sizeof(*s), now);
			s->addr = path;
			s->index = PATH_INDEX;
			s->len = n > 0 ? n - 1 : 0;
			submit(HOOK_SYSCALL, s);
			return;
		}
		bpf_ringbuf_discard(s, BPF_RB_NO_WAKEUP);
	}
	struct rec_data *d = reserve(HOOK_SYSCALL, sizeof(*d));
	if (d) {
		hdr_current(&d->h, R_DATA, sizeof(*d), now);
		d->addr = path;
		d->index = PATH_INDEX;
		long n = bpf_probe_read_user_str(d->data, DATA_CHUNK, (void *)path);
		d->len = n > 0 ? n - 1 : 0;
		submit(HOOK_SYSCALL, d);
	}
}

/* Sending the first `len` bytes at `addr` as `chunks` chunks (chunks_of),
 * one bpf_loop step a chunk. */
struct chunk_walk {
	__u64 addr;
	__u64 len;
	__u64 off;
	__u64 now;
	__u32 chunks;
	__u32 pad;
};

static long chunk_step(__u64 i, void *ctx)
{
	struct chunk_walk *w = ctx;
	if (i >= w->chunks || w->off >= w->len)
		return 1;
	__u64 left = w->len - w->off, at = w->addr + w->off;
	if (left >= DATA_BIG) {
		SEND_CHUNK(struct rec_data_big, at, i, DATA_BIG, 2 * DATA_BIG - 1, w->now);
		w->off += DATA_BIG;
		return 0;
	}
	__u64 n = left > DATA_CHUNK ? DATA_CHUNK : left;
	SEND_CHUNK(struct rec_data, at, i, n, 2 * DATA_CHUNK - 1, w->now);
	w->off += n;
	return 0;
}

static __always_inline void send_chunks(__u64 addr, __u64 len, __u32 chunks, __u64 now)
{
	struct chunk_walk w = { .addr = addr, .len = len, .now = now, .chunks = chunks };
	bpf_loop(DATA_MAX_CHUNKS, chunk_step, &w, 0);
}

/* The syscall record of the call that entered at `ts` and returned `ret` now. */
static __always_inline void fill_syscall_in(struct rec_syscall *r, struct sys_entry *e, __u64 ts, long ret, __u64 now, __u32 size,
					    __u64 cgroup)
{
	hdr_current_in(&r->h, R_SYSCALL, size, ts, cgroup);
	__builtin_memcpy(r->args, e->args, sizeof(r->args));
	r->ret = ret;
	r->duration_ns = now - ts;
	r->nr = e->nr;
	r->fd_type = e->fd_type;
}

static __always_inline void fill_syscall(struct rec_syscall *r, struct sys_entry *e, __u64 ts, long ret, __u64 now, __u32 size)
{
	fill_syscall_in(r, e, ts, ret, now, size, bpf_get_current_cgroup_id());
}

/* A read or pread64 of `ret` (> DATA_SMALL, <= FILEREF_MAX) bytes into `addr` from a regular
 * file nobody has open for writing, unchanged for a second, on a filesystem
 * the reader can open by handle: sent as a reference to the file's bytes
 * (struct rec_syscall_ref) instead of the bytes. False: send the bytes. */
static __always_inline bool send_file_ref(struct sys_entry *e, __u64 ts, long ret, __u64 now, __u64 addr)
{
	struct file *f = fd_file(e->args[0]);
	if (!f)
		return false;
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	if (!ino || (BPF_CORE_READ(ino, i_mode) & S_IFMT) != S_IFREG)
		return false;
	__u32 dev = BPF_CORE_READ(ino, i_sb, s_dev);
	__u32 *fmt = bpf_map_lookup_elem(&ref_devs, &dev);
	if (!fmt)
		return false;
	if (BPF_CORE_READ(ino, i_writecount.counter) > 0)
		return false; /* open for writing: it may change before the reader reads it */
	__s64 csec = BPF_CORE_READ(ino, i_ctime_sec);
	__u32 cns = BPF_CORE_READ(ino, i_ctime_nsec) & ((1U << 30) - 1); /* without I_CTIME_QUERIED */
	__s64 real = (__s64)now + cfg_realtime_off;
	if (csec * 1000000000LL + cns > real - 1000000000LL)
		return false; /* changed in the last second: a change in the same clock tick would not show */
	__u64 pos;
	if (e->nr == 17) {
		pos = e->args[3];
	} else {
		__s64 at = BPF_CORE_READ(f, f_pos);
		if (at - ret != (__s64)e->pos)
			return false; /* the position moved by more than this read: shared with another reader */
		pos = e->pos;
	}
	if (BPF_CORE_READ(ino, i_size) < (__s64)(pos + ret))
		return false;
	struct rec_syscall_ref *r = reserve(HOOK_SYSCALL, sizeof(*r));
	if (!r)
		return true; /* counted as a drop, like any record */
	fill_syscall(&r->s, e, ts, ret, now, sizeof(*r));
	r->s.out_addr = addr;
	r->s.out_len = ret;
	r->s.chunks = 0;
	r->s.flags = OUT_FILEREF;
	r->f.ino = BPF_CORE_READ(ino, i_ino);
	r->f.pos = pos;
	r->f.ctime_sec = csec;
	r->f.ctime_nsec = cns;
	r->f.gen = BPF_CORE_READ(ino, i_generation);
	r->f.dev = dev;
	r->f.fmt = *fmt;
	if (bpf_probe_read_user(r->f.head, FILEREF_HEAD, (void *)addr) ||
	    bpf_probe_read_user(r->f.tail, FILEREF_HEAD, (void *)(addr + ret - FILEREF_HEAD))) {
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
		return false;
	}
	submit(HOOK_SYSCALL, r);
	return true;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (cfg_emit_syscalls && closes_fds(nr) && wanted_current()) /* close frees the descriptor even when it fails */
		__sync_fetch_and_add(&fd_gen, 1);
	/* Not replay-grade: only the read/write family has an entry (no lookup for the rest). */
	if (!cfg_replay && !rw_family(nr))
		return 0;
	/* With --pid/--comm only: an unselected task (most of the node) leaves
	 * on the inlined array lookup instead of a task-storage call. A task
	 * selected at its syscall's entry stays selected until its process exits. */
	if (cfg_filter == FILTER_SET && !is_target(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct sys_entry *e = bpf_task_storage_get(&sys_inflight, bpf_get_current_task_btf(), 0, 0);
	if (!e || !e->ts)
		return 0;
	__u64 now = bpf_ktime_get_ns(), ts = e->ts;
	e->ts = 0;
	if (!cfg_replay) {
		/* the syscall hook (not replay-grade): one record without the
		 * output-buffer tail (SYSCALL_SHORT bytes), nothing else */
		struct rec_syscall *r = cfg_emit_syscalls ? reserve(HOOK_SYSCALL, SYSCALL_SHORT) : NULL;
		if (r) {
			fill_syscall_in(r, e, ts, ret, now, SYSCALL_SHORT, current_cgroup_id());
			submit(HOOK_SYSCALL, r);
		}
		return 0;
	}
	e->exit_ip = regs->ip;
	e->exit_sp = regs->sp;
	e->exit_ret = ret;
	e->exit_nr = e->nr;
	e->exit_valid = 1;
	if (e->nr == 15)
		e->exit_hash = regs_hash((__u64 *)regs);
	__u64 addr = 0, len = out_buffer(e, ret, regs->sp, &addr);
	__u32 flags = e->shown, chunks = 0;
	/* readv family (what the kernel wrote), writev family to the recorder's
	 * stdout/stderr (what the user saw): the bytes of each iovec */
	bool vec = ret > 0 && ((e->shown && (e->nr == 20 || e->nr == 296 || e->nr == 328)) || e->nr == 19 || e->nr == 295 ||
			       e->nr == 327);
	__u64 cap = len > OUT_MAX ? OUT_MAX : len;
	if (len > OUT_MAX)
		flags |= OUT_TRUNCATED;
	if (vec) {
		bool cut = false;
		chunks = iov_chunks(e->args[1], e->args[2], ret, &cut);
		addr = 0;
		len = ret;
		if (cut)
			flags |= OUT_TRUNCATED;
	} else if (len > DATA_SMALL) {
		chunks = chunks_of(cap);
	}
	/* open/openat/openat2 that returned an fd: send the path (for the capture policy) */
	__u64 path = 0;
	if (ret >= 0 && (e->nr == 2 || e->nr == 257 || e->nr == 437))
		path = e->nr == 2 ? e->args[0] : e->args[1];
	if (path) {
		/* the path inline in the syscall record (one reservation) when it fits */
		struct rec_syscall_out *o = reserve(HOOK_SYSCALL, sizeof(*o));
		if (!o)
			return 0;
		long n = bpf_probe_read_user_str(o->data, DATA_SMALL, (void *)path);
		if (n > 0 && n < DATA_SMALL) {
			fill_syscall(&o->s, e, ts, ret, now, sizeof(*o));
			o->s.out_addr = path;
			o->s.out_len = n - 1;
			o->s.chunks = 0;
			o->s.flags = flags | OUT_PATH_INLINE;
			submit(HOOK_SYSCALL, o);
			return 0;
		}
		bpf_ringbuf_discard(o, BPF_RB_NO_WAKEUP);
		flags |= OUT_PATH;
	}
	/* a read of a regular file, of any length (OUT_MAX does not apply) */
	if (cfg_file_refs && ret > DATA_SMALL && ret <= FILEREF_MAX && (e->nr == 0 || e->nr == 17) && e->fd_type == 1 && !e->shown &&
	    send_file_ref(e, ts, ret, now, addr))
		return 0;
	if (!vec && len && len <= DATA_SMALL) {
		/* a small buffer: inline, one reservation */
		struct rec_syscall_out *o = reserve(HOOK_SYSCALL, sizeof(*o));
		if (!o)
			return 0;
		fill_syscall(&o->s, e, ts, ret, now, sizeof(*o));
		o->s.out_addr = addr;
		o->s.out_len = len;
		o->s.chunks = 0;
		if (bpf_probe_read_user(o->data, len & (2 * DATA_SMALL - 1), (void *)addr))
			flags |= OUT_TRUNCATED;
		o->s.flags = flags | OUT_INLINE;
		submit(HOOK_SYSCALL, o);
		if (path)
			send_path(path, now);
		return 0;
	}
	struct rec_syscall *r = reserve(HOOK_SYSCALL, sizeof(*r));
	if (!r)
		return 0;
	fill_syscall(r, e, ts, ret, now, sizeof(*r));
	r->out_addr = addr;
	r->out_len = len;
	r->chunks = chunks;
	r->flags = flags;
	submit(HOOK_SYSCALL, r);
	if (vec) {
		iov_emit(e->args[1], e->args[2], ret, chunks, now);
		return 0;
	}
	if (path)
		send_path(path, now);
	send_chunks(addr, cap, chunks, now);
	return 0;
}

/* ------------------------------------------------------------------ tcp */

static __always_inline void tcp_fill(struct rec_tcp *r, const struct sock *sk)
{
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	r->family = fam;
	__builtin_memset(r->saddr, 0, 16);
	__builtin_memset(r->daddr, 0, 16);
	if (fam == AF_INET6) {
		BPF_CORE_READ_INTO(&r->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)r->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)r->daddr, sk, __sk_common.skc_daddr);
	}
	r->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	r->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	r->srtt_us = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	r->new_state = BPF_CORE_READ(sk, __sk_common.skc_state);
	r->old_state = 0;
	r->bytes = 0;
	r->latency_ns = 0;
	r->segs = 0;
}

/* Bytes through a TCP socket, from the sock tracepoints (this kernel has no
 * kprobes or BPF trampolines, so tcp_sendmsg cannot be hooked); latency is
 * measured from the entry of the read/write-family syscall that carried them. */
static __always_inline int tcp_io(struct sock *sk, int ret, __u16 kind)
{
	if (ret <= 0 || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	if (!wanted_current())
		return 0;
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pt;
	__u64 key = (__u64)sk;
	struct sk_owner o = { .pid = pt >> 32, .tid = tid };
	bpf_map_update_elem(&sk_owners, &key, &o, BPF_ANY);
	struct rec_tcp *r = reserve(HOOK_TCP, sizeof(*r));
	if (!r)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct sys_entry *e = bpf_task_storage_get(&sys_inflight, bpf_get_current_task_btf(), 0, 0);
	__u64 start = (e && e->ts && e->ts < now) ? e->ts : now;
	hdr_current(&r->h, kind, sizeof(*r), start);
	tcp_fill(r, sk);
	r->bytes = ret;
	r->latency_ns = now - start;
	submit(HOOK_TCP, r);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_sock_send_length, struct sock *sk, int ret, int flags)
{
	return tcp_io(sk, ret, R_TCP_SEND);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_recv_length, struct sock *sk, int ret, int flags)
{
	return tcp_io(sk, ret, R_TCP_RECV);
}

/* Events in softirq context: attribute them to the socket's owner. */
static __always_inline bool sk_owner_of(const struct sock *sk, struct sk_owner *out, bool process_ctx)
{
	__u64 key = (__u64)sk;
	struct sk_owner *o = bpf_map_lookup_elem(&sk_owners, &key);
	if (o) {
		*out = *o;
	} else if (process_ctx) {
		__u64 pt = bpf_get_current_pid_tgid();
		out->pid = pt >> 32;
		out->tid = (__u32)pt;
	} else {
		out->pid = out->tid = 0;
	}
	if (out->pid && out->pid == cfg_self_tgid)
		return false;
	if (!cfg_filter)
		return true;
	if (!out->pid)
		return false;
	if ((cfg_filter & FILTER_SET) && is_target(out->pid))
		return true;
	/* An owner is only ever stored for a selected task (tcp_io). */
	if (cfg_filter & FILTER_CGROUP)
		return o != NULL || (process_ctx && bpf_get_current_ancestor_cgroup_id(cfg_cgroup_level) == cfg_cgroup_id);
	return false;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb, int err)
{
	/* Every attempt, as the kernel's TcpRetransSegs counts them (it is
	 * incremented before the segment is handed to the IP layer). */
	struct sk_owner o;
	if (!sk_owner_of(sk, &o, false))
		return 0;
	struct rec_tcp *r = reserve(HOOK_TCP, sizeof(*r));
	if (!r)
		return 0;
	hdr_current(&r->h, R_TCP_RETRANS, sizeof(*r), bpf_ktime_get_ns());
	r->h.pid = o.pid;
	r->h.tid = o.tid;
	tcp_fill(r, sk);
	r->bytes = BPF_CORE_READ(skb, len);
	/* segments: skb_shinfo(skb)->gso_segs, at least 1 */
	unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned int end = BPF_CORE_READ(skb, end);
	struct skb_shared_info *shinfo = (struct skb_shared_info *)(head + end);
	__u16 segs = BPF_CORE_READ(shinfo, gso_segs);
	r->segs = segs ? segs : 1;
	submit(HOOK_TCP, r);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	struct sk_owner o;
	if (!sk_owner_of(sk, &o, oldstate == 7 /* CLOSE */ && newstate == 2 /* SYN_SENT */))
		return 0;
	struct rec_tcp *r = reserve(HOOK_TCP, sizeof(*r));
	if (!r)
		return 0;
	hdr_current(&r->h, R_TCP_STATE, sizeof(*r), bpf_ktime_get_ns());
	r->h.pid = o.pid;
	r->h.tid = o.tid;
	tcp_fill(r, sk);
	r->old_state = oldstate;
	r->new_state = newstate;
	if (newstate == 7 /* TCP_CLOSE */) {
		__u64 key = (__u64)sk;
		bpf_map_delete_elem(&sk_owners, &key);
	} else if (o.pid) {
		__u64 key = (__u64)sk;
		bpf_map_update_elem(&sk_owners, &key, &o, BPF_NOEXIST);
	}
	submit(HOOK_TCP, r);
	return 0;
}

/* ---------------------------------------------------------------- fault */

/* User page faults at entry (exceptions/page_fault_user). This kernel has
 * neither kprobes nor trampolines, so handle_mm_fault's result (major or
 * minor) and the handling time are not seen: major is reported unknown. */
SEC("tp_btf/page_fault_user")
int BPF_PROG(on_page_fault_user, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	if (!wanted_current())
		return 0;
	struct rec_fault *r = reserve(HOOK_FAULT, sizeof(*r));
	if (!r)
		return 0;
	hdr_current(&r->h, R_FAULT, sizeof(*r), bpf_ktime_get_ns());
	r->addr = address;
	r->ip = BPF_CORE_READ(regs, ip);
	r->error_code = error_code;
	r->latency_ns = 0;
	r->major = 2;
	r->pad = 0;
	submit(HOOK_FAULT, r);
	return 0;
}

/* --------------------------------------------------------------- signals */

#define SIGILL 4
#define SIGTRAP 5
#define SIGBUS 7
#define SIGFPE 8
#define SIGSEGV 11

/* Replay-grade: a signal delivered to a selected task that has a handler
 * for it (default actions and ignored signals change nothing the replay
 * must reproduce: the exit, if any, is an event of its own). Fires in
 * get_signal(), before the kernel sets up the handler's frame or adjusts a
 * restarted syscall, so the task's user registers are still those it
 * entered the kernel with. */
SEC("tp_btf/signal_deliver")
int BPF_PROG(on_signal_deliver, int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
{
	if (!cfg_replay || !wanted_current())
		return 0;
	if (!ka || (unsigned long)ka->sa.sa_handler <= 1 /* SIG_DFL, SIG_IGN */)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (!regs)
		return 0;
	struct rec_signal *r = reserve(HOOK_PROC, sizeof(*r));
	if (!r)
		return 0;
	hdr_current(&r->h, R_SIGNAL, sizeof(*r), bpf_ktime_get_ns());
	r->signo = sig;
	r->flags = 0;
	__builtin_memset(r->regs, 0, sizeof(r->regs));
	bpf_probe_read_kernel(r->regs, 21 * 8, regs);
	r->regs[21] = BPF_CORE_READ(t, thread.fsbase);
	r->regs[22] = BPF_CORE_READ(t, thread.gsbase);
	r->regs[23] = BPF_CORE_READ(t, thread.ds);
	r->regs[24] = BPF_CORE_READ(t, thread.es);
	r->regs[25] = BPF_CORE_READ(t, thread.fsindex);
	r->regs[26] = BPF_CORE_READ(t, thread.gsindex);
	__builtin_memset(r->info, 0, sizeof(r->info));
	if (info)
		bpf_probe_read_kernel(r->info, sizeof(r->info), info);
	int code = *(int *)&r->info[8];
	if ((sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE || sig == SIGTRAP) && code > 0 && code != 0x80)
		r->flags |= SIG_SYNC;
	/* At its last syscall's exit: the registers are exactly as the syscall
	 * left them (the syscall number still in orig_ax: an interrupt or
	 * exception taken in user code since would have replaced it). */
	struct sys_entry *e = bpf_task_storage_get(&sys_inflight, t, 0, 0);
	if (e && e->exit_valid && r->regs[16] == e->exit_ip && r->regs[19] == e->exit_sp && r->regs[10] == e->exit_ret) {
		/* After rt_sigreturn (a second signal pending when the first
		 * handler returned) orig_ax is -1 and rcx whatever the restored
		 * context held: all the registers must be those it restored. */
		if (e->exit_nr == 15 ? r->regs[15] == (__u64)-1 && regs_hash(r->regs) == e->exit_hash
				     : r->regs[15] == e->exit_nr && r->regs[11] == e->exit_ip)
			r->flags |= SIG_IN_SYSCALL;
	}
	submit(HOOK_PROC, r);
	return 0;
}

/* ------------------------------------------------------- process tracking */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if ((cfg_filter & FILTER_SET) && ptgid != ctgid && is_target(ptgid))
		set_target(ctgid, 1);
	if (!wanted_task(parent))
		return 0;
	struct rec_fork *r = reserve(HOOK_PROC, sizeof(*r));
	if (!r)
		return 0;
	hdr_task(&r->h, parent, R_FORK, sizeof(*r), bpf_ktime_get_ns());
	r->child_pid = ctgid;
	r->child_tid = BPF_CORE_READ(child, pid);
	submit(HOOK_PROC, r);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if ((cfg_filter & FILTER_SET) && cfg_comm_set) {
		char comm[16];
		BPF_CORE_READ_STR_INTO(&comm, p, comm);
		if (comm_matches(comm))
			set_target(tgid, 1);
	}
	if (!wanted_task(p))
		return 0;
	struct rec_exec *r = reserve(HOOK_PROC, sizeof(*r));
	if (!r)
		return 0;
	hdr_task(&r->h, p, R_EXEC, sizeof(*r), bpf_ktime_get_ns());
	BPF_CORE_READ_STR_INTO(&r->comm, p, comm);
	const char *fname = BPF_CORE_READ(bprm, filename);
	bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), fname);
	submit(HOOK_PROC, r);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_process_exit, struct task_struct *p, bool group_dead)
{
	bool w = wanted_task(p);
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if (w) {
		struct rec_exit *r = reserve(HOOK_PROC, sizeof(*r));
		if (r) {
			hdr_task(&r->h, p, R_EXIT, sizeof(*r), bpf_ktime_get_ns());
			r->code = BPF_CORE_READ(p, exit_code);
			r->group_dead = group_dead;
			submit(HOOK_PROC, r);
		}
	}
	__u32 tid = BPF_CORE_READ(p, pid);
	bpf_map_delete_elem(&sched_state, &tid);
	if (group_dead && (cfg_filter & FILTER_SET))
		set_target(tgid, 0);
	return 0;
}
