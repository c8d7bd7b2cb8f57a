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

/* tgids selected by pid or comm; children are added at fork. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
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

struct sys_entry {
	__u64 ts;
	__u64 args[6];
	__u32 nr;
	__u32 fd_type;
	__u32 shown; /* OUT_STDOUT or OUT_STDERR: a write to the recorder's own stdout/stderr */
	__u32 pad;
};

/* The syscall in progress, per task (task-local storage: no hashing, no lock). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sys_entry);
} sys_inflight SEC(".maps");

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

static __always_inline void submit(__u32 hook, void *r)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(r, avail >= cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	count(hook, 0);
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

static __always_inline bool wanted_tgid_task(__u32 tgid, struct task_struct *t, bool current)
{
	if (tgid == cfg_self_tgid)
		return false;
	__u32 f = cfg_filter;
	if (!f)
		return true;
	if ((f & FILTER_SET) && bpf_map_lookup_elem(&targets, &tgid))
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

static __always_inline void hdr_current(struct rec_hdr *h, __u16 kind, __u32 size, __u64 ts)
{
	__u64 pt = bpf_get_current_pid_tgid();
	h->ts = ts;
	h->cgroup = bpf_get_current_cgroup_id();
	h->pid = pt >> 32;
	h->tid = (__u32)pt;
	h->kind = kind;
	h->cpu = bpf_get_smp_processor_id();
	h->size = size;
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

static __always_inline __u32 fd_type_of(long fd)
{
	struct file *f = fd_file(fd);
	if (!f)
		return 0;
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
	e->fd_type = cfg_emit_syscalls ? fd_type_of(e->args[0]) : 0;
	e->shown = 0;
	if (cfg_replay && (id == 1 || id == 18 || id == 20) && (e->args[0] == 1 || e->args[0] == 2))
		e->shown = shown_fd(e->args[0]);
	return 0;
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
		*addr = a[1];
		len = ret;
		break;
	case 267: /* readlinkat */
		*addr = a[2];
		len = ret;
		break;
	case 318: /* getrandom */
	case 79:  /* getcwd */
		*addr = a[0];
		len = ret;
		break;
	case 228: /* clock_gettime */
	case 14:  /* rt_sigprocmask: old set */
		*addr = e->nr == 14 ? a[2] : a[1];
		len = e->nr == 14 ? 8 : 16;
		break;
	case 96:  /* gettimeofday */
		*addr = a[0];
		len = 16;
		break;
	case 201: /* time */
	case 22:  /* pipe */
	case 293: /* pipe2 */
		*addr = a[0];
		len = 8;
		break;
	case 4: /* stat */
	case 5: /* fstat */
	case 6: /* lstat */
		*addr = a[1];
		len = 144;
		break;
	case 262: /* newfstatat */
		*addr = a[2];
		len = 144;
		break;
	case 332: /* statx */
		*addr = a[4];
		len = 256;
		break;
	case 53: /* socketpair */
		*addr = a[3];
		len = 8;
		break;
	case 63: /* uname */
		*addr = a[0];
		len = 390;
		break;
	case 232: /* epoll_wait */
	case 281: /* epoll_pwait */
		*addr = a[1];
		len = ret * 12;
		break;
	case 7: /* poll */
		*addr = a[0];
		len = a[1] * 8;
		break;
	case 61: /* wait4: status */
		*addr = a[1];
		len = 4;
		break;
	case 99: /* sysinfo */
		*addr = a[0];
		len = 112;
		break;
	case 97: /* getrlimit */
		*addr = a[1];
		len = 16;
		break;
	case 302: /* prlimit64: old limit */
		*addr = a[3];
		len = 16;
		break;
	case 98: /* getrusage */
		*addr = a[1];
		len = 144;
		break;
	case 13: /* rt_sigaction: old action */
		*addr = a[2];
		len = 32;
		break;
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

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	struct sys_entry *e = bpf_task_storage_get(&sys_inflight, bpf_get_current_task_btf(), 0, 0);
	if (!e || !e->ts)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct rec_syscall *r = (cfg_emit_syscalls || cfg_replay) ? reserve(HOOK_SYSCALL, sizeof(*r)) : NULL;
	if (!r) {
		e->ts = 0;
		return 0;
	}
	hdr_current(&r->h, R_SYSCALL, sizeof(*r), e->ts);
	__builtin_memcpy(r->args, e->args, sizeof(r->args));
	r->ret = ret;
	r->duration_ns = now - e->ts;
	r->nr = e->nr;
	r->fd_type = e->fd_type;
	__u64 addr = 0, len = cfg_replay ? out_buffer(e, ret, regs->sp, &addr) : 0;
	__u32 chunks = (len + DATA_CHUNK - 1) / DATA_CHUNK;
	r->flags = chunks > DATA_MAX_CHUNKS ? OUT_TRUNCATED : 0;
	if (chunks > DATA_MAX_CHUNKS)
		chunks = DATA_MAX_CHUNKS;
	/* open/openat/openat2 that returned an fd: send the path (for the capture policy) */
	__u64 path = 0;
	if (cfg_replay && ret >= 0 && (e->nr == 2 || e->nr == 257 || e->nr == 437))
		path = e->nr == 2 ? e->args[0] : e->args[1];
	if (path)
		r->flags |= OUT_PATH;
	r->flags |= e->shown;
	r->out_addr = addr;
	r->out_len = len;
	r->chunks = chunks;
	e->ts = 0;
	submit(HOOK_SYSCALL, r);
	if (path) {
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
	if (chunks == 1 && len <= DATA_SMALL) {
		/* a small buffer: a small record, not 4 KiB of ring */
		struct rec_data_small *d = reserve(HOOK_SYSCALL, sizeof(*d));
		if (d) {
			hdr_current(&d->h, R_DATA, sizeof(*d), now);
			d->addr = addr;
			d->index = 0;
			d->len = len;
			if (bpf_probe_read_user(d->data, len & (2 * DATA_SMALL - 1), (void *)addr))
				d->len = 0;
			submit(HOOK_SYSCALL, d);
		}
		return 0;
	}
	for (__u32 i = 0; i < DATA_MAX_CHUNKS; i++) {
		if (i >= chunks)
			break;
		__u64 off = (__u64)i * DATA_CHUNK;
		__u64 n = len - off;
		if (n > DATA_CHUNK)
			n = DATA_CHUNK;
		struct rec_data *d = reserve(HOOK_SYSCALL, sizeof(*d));
		if (!d)
			continue;
		hdr_current(&d->h, R_DATA, sizeof(*d), now);
		d->addr = addr + off;
		d->index = i;
		d->len = n;
		if (bpf_probe_read_user(d->data, n & (2 * DATA_CHUNK - 1), (void *)(addr + off)))
			d->len = 0;
		submit(HOOK_SYSCALL, d);
	}
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
	if ((cfg_filter & FILTER_SET) && bpf_map_lookup_elem(&targets, &out->pid))
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

/* ------------------------------------------------------- process tracking */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if ((cfg_filter & FILTER_SET) && ptgid != ctgid && bpf_map_lookup_elem(&targets, &ptgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&targets, &ctgid, &one, BPF_ANY);
	}
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
		if (comm_matches(comm)) {
			__u8 one = 1;
			bpf_map_update_elem(&targets, &tgid, &one, BPF_ANY);
		}
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
		bpf_map_delete_elem(&targets, &tgid);
	return 0;
}
