/* Records the BPF programs put into the ring buffer. Mirrored in
 * recorder/src/raw.rs: change both together. Little-endian, C layout. */
#ifndef KPROBE_RECORDER_H
#define KPROBE_RECORDER_H

/* Hooks (indexes into the stats map: events at 2*hook, drops at 2*hook+1). */
#define HOOK_SCHED 0
#define HOOK_SYSCALL 1
#define HOOK_TCP 2
#define HOOK_FAULT 3
#define HOOK_PROC 4
#define NHOOKS 5

/* Record kinds. */
#define R_SWITCH 1
#define R_WAKEUP 2
#define R_DELAY 3
#define R_MIGRATE 4
#define R_SYSCALL 5
#define R_TCP_SEND 6
#define R_TCP_RECV 7
#define R_TCP_RETRANS 8
#define R_TCP_STATE 9
#define R_FAULT 10
#define R_EXEC 11
#define R_FORK 12
#define R_EXIT 13
#define R_DATA 14
#define R_SIGNAL 15

/* Replay-grade capture: an output buffer of at most DATA_SMALL bytes goes
 * out inline in its syscall record (struct rec_syscall_out: one ring
 * reservation); longer ones in chunks that follow: DATA_BIG bytes while at
 * least that much is left, then DATA_CHUNK bytes; at most OUT_MAX bytes a
 * syscall (DATA_MAX_CHUNKS chunks). */
#define DATA_CHUNK 4096
#define DATA_BIG 32768
#define OUT_MAX (1 << 20)
#define DATA_MAX_CHUNKS (OUT_MAX / DATA_BIG + DATA_BIG / DATA_CHUNK)

/* Filter modes (cfg_filter bits). */
#define FILTER_SET 1    /* tgid in the `targets` map (pid / comm, followed across fork) */
#define FILTER_CGROUP 2 /* under the cgroup (v2) cfg_cgroup_id at cfg_cgroup_level */

struct rec_hdr {
	__u64 ts;     /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 cgroup; /* cgroup v2 id of the task the record is about */
	__u32 pid;    /* tgid */
	__u32 tid;
	__u16 kind;
	__u16 cpu;
	__u32 size; /* whole record, bytes */
};

struct rec_switch {
	struct rec_hdr h; /* pid/tid: the task switched out */
	char prev_comm[16];
	char next_comm[16];
	__u32 next_pid;
	__u32 next_tid;
	__u32 prev_state;
	__u32 preempt;
};

struct rec_wakeup {
	struct rec_hdr h; /* pid/tid: the woken task */
	__u32 waker_pid;
	__u32 waker_tid;
	__u16 target_cpu;
	__u16 new_task;
	__u32 pad;
};

struct rec_delay {
	struct rec_hdr h; /* pid/tid: the task that waited */
	__u64 delay_ns;
	__u64 off_cpu_ns;
	__u32 culprit_pid;
	__u32 culprit_tid;
	char culprit_comm[16];
};

struct rec_migrate {
	struct rec_hdr h;
	__u32 from_cpu;
	__u32 to_cpu;
};

struct rec_syscall {
	struct rec_hdr h; /* ts: entry */
	__u64 args[6];
	__s64 ret;
	__u64 duration_ns;
	__u32 nr;
	__u32 fd_type; /* kpl FdType order: 0 unknown 1 file 2 pipe 3 tcp 4 udp 5 unix 6 char 7 other */
	__u64 out_addr; /* replay-grade: the buffer the kernel wrote */
	__u64 out_len;  /* its length */
	__u32 chunks;   /* R_DATA records of the output buffer that follow (same task) */
	__u32 flags;    /* OUT_TRUNCATED, OUT_PATH, OUT_STDOUT, OUT_STDERR */
};
/* Outside replay-grade capture a syscall record ends before out_addr (no
 * output buffer): h.size is then SYSCALL_SHORT. */
#define SYSCALL_SHORT 104

/* A chunk of at most DATA_SMALL bytes goes out in a small record (same
 * layout, shorter data[]), so small buffers do not reserve 4 KiB each. */
#define DATA_SMALL 256
struct rec_data_small {
	struct rec_hdr h;
	__u64 addr;
	__u32 len;
	__u32 index;
	__u8 data[DATA_SMALL];
};

#define OUT_TRUNCATED 1 /* the buffer was longer than OUT_MAX, or could not be read */
#define OUT_PATH 2      /* an R_DATA record with index PATH_INDEX follows: the opened path */
#define OUT_STDOUT 4     /* a write to the recorder's own stdout (its bytes follow: write, pwrite64, writev, pwritev(2)) */
#define OUT_STDERR 8     /* the same for stderr */
#define OUT_INLINE 16   /* struct rec_syscall_out: the out_len bytes follow the record */
#define OUT_FILEREF 32  /* struct rec_syscall_ref: the out_len bytes are the file's at ref.pos (not copied) */
#define OUT_PATH_INLINE 64 /* struct rec_syscall_out: the opened path (out_len bytes) is its data; no record follows */
#define PATH_INDEX 0xffff

struct rec_data {
	struct rec_hdr h;
	__u64 addr;
	__u32 len; /* bytes of data[] used; 0: the memory could not be read */
	__u32 index;
	__u8 data[DATA_CHUNK];
};

/* The same with DATA_BIG bytes. */
struct rec_data_big {
	struct rec_hdr h;
	__u64 addr;
	__u32 len;
	__u32 index;
	__u8 data[DATA_BIG];
};

/* A syscall with a small output buffer inline (flags OUT_INLINE). */
struct rec_syscall_out {
	struct rec_syscall s;
	__u8 data[DATA_SMALL];
};

/* A read of an unchanged regular file, by reference: its bytes are not
 * copied into the ring; the reader fills them from the file itself (open by
 * handle), after checking the file is still the same (inode, generation,
 * ctime) and that the bytes it finds begin and end as the program's did. */
#define FILEREF_HEAD 16
#define FILEREF_MAX (64 << 20) /* longer reads are copied (and cut at OUT_MAX) */
struct file_ref {
	__u64 ino;
	__u64 pos;       /* file offset of the first byte read */
	__s64 ctime_sec; /* the inode's ctime at the read */
	__u32 ctime_nsec;
	__u32 gen;       /* i_generation */
	__u32 dev;       /* kernel dev_t of the inode's superblock */
	__u32 fmt;       /* file handle format (ref_devs map): 1 = FILEID_INO32_GEN */
	__u8 head[FILEREF_HEAD]; /* the first and last bytes of the buffer the program got */
	__u8 tail[FILEREF_HEAD];
};

struct rec_syscall_ref {
	struct rec_syscall s;
	struct file_ref f;
};

struct rec_tcp {
	struct rec_hdr h;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 old_state;
	__u8 new_state;
	__u64 bytes;
	__u64 latency_ns;
	__u32 srtt_us;
	__u32 segs;
};

struct rec_fault {
	struct rec_hdr h; /* ts: fault entry */
	__u64 addr;
	__u64 ip;
	__u64 error_code;
	__u64 latency_ns;
	__u32 major; /* 0 minor, 1 major, 2 unknown */
	__u32 pad;
};

struct rec_fork {
	struct rec_hdr h; /* pid/tid: parent */
	__u32 child_pid;
	__u32 child_tid;
};

struct rec_exit {
	struct rec_hdr h;
	__s32 code; /* task->exit_code (wait status) */
	__u32 group_dead;
};

/* A signal delivered to a selected task with a handler of its own
 * (replay-grade). */
#define SIG_IN_SYSCALL 1 /* delivered at the exit of the task's last syscall */
#define SIG_SYNC 2       /* caused by the instruction itself (fault, trap) */
struct rec_signal {
	struct rec_hdr h;
	__s32 signo;
	__u32 flags;    /* SIG_IN_SYSCALL, SIG_SYNC */
	__u64 regs[27]; /* the task's user registers, user_regs_struct order */
	__u8 info[48];  /* struct kernel_siginfo */
};

struct rec_exec {
	struct rec_hdr h;
	char comm[16];
	char filename[256];
};

_Static_assert(sizeof(struct rec_hdr) == 32, "rec_hdr");
_Static_assert(sizeof(struct rec_switch) == 80, "rec_switch");
_Static_assert(sizeof(struct rec_wakeup) == 48, "rec_wakeup");
_Static_assert(sizeof(struct rec_delay) == 72, "rec_delay");
_Static_assert(sizeof(struct rec_migrate) == 40, "rec_migrate");
_Static_assert(sizeof(struct rec_syscall) == 128, "rec_syscall");
_Static_assert(__builtin_offsetof(struct rec_syscall, out_addr) == SYSCALL_SHORT, "SYSCALL_SHORT");
_Static_assert(sizeof(struct rec_data) == 32 + 16 + DATA_CHUNK, "rec_data");
_Static_assert(sizeof(struct rec_tcp) == 96, "rec_tcp");
_Static_assert(sizeof(struct rec_syscall_ref) == 200, "rec_syscall_ref");
_Static_assert(sizeof(struct rec_fault) == 72, "rec_fault");
_Static_assert(sizeof(struct rec_fork) == 40, "rec_fork");
_Static_assert(sizeof(struct rec_exit) == 40, "rec_exit");
_Static_assert(sizeof(struct rec_exec) == 304, "rec_exec");
_Static_assert(sizeof(struct rec_signal) == 304, "rec_signal");

#endif
