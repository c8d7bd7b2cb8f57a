//! Asynchronous events in user code: where they land and how replay finds
//! that point again without a performance counter.
//!
//! Without a PMU nothing counts instructions or branches, so a point in a
//! thread's execution is identified by its instruction pointer and its
//! registers. At record time an asynchronous signal or a preemption that
//! stops a thread in user code is moved forward, by single-stepping, to the
//! next instruction at least 5 bytes long (a few instructions at most; the
//! signal is merely delivered a little later, which the kernel could have
//! done too). At replay that instruction is replaced by a jump to a small
//! trampoline mapped next to it: the trampoline compares the 15 general
//! registers with the recorded ones *inside the tracee* and traps to the
//! tracer only when they all match; the tracer then checks the full
//! fingerprint (instruction and stack pointers, flags, fs base). A hot loop
//! passing the point millions of times therefore costs a few instructions
//! per pass instead of a ptrace round trip.
//!
//! Registers alone do not tell apart the passes of a loop that keeps its
//! state in memory (`while (!flag) counter++` with `counter` volatile, most
//! loops of unoptimised code): the landing also records the memory operand
//! of the landing instruction, read just before it runs (address, size,
//! value), and the trampoline compares it too.
//!
//! What remains impossible without a PMU: two passes through the same
//! instruction with identical registers and the same value in that operand
//! but different memory elsewhere cannot be told apart. kprobe stops at the
//! first such pass; if memory differed, the program's next syscall differs
//! from the log and replay reports the divergence there.

use crate::os::{self, Mem, Pid, Regs};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Where a landing's memory check starts in its register vector (after the
/// 27 registers): address, size in bytes (1, 2, 4 or 8), value.
pub const MEM_CHECK: usize = 27;

/// The value of a register used in an address.
fn reg_value(r: &Regs, reg: Register) -> Option<u64> {
    use Register::*;
    let full = reg.full_register();
    let v = match full {
        RAX => r.rax,
        RBX => r.rbx,
        RCX => r.rcx,
        RDX => r.rdx,
        RSI => r.rsi,
        RDI => r.rdi,
        RBP => r.rbp,
        RSP => r.rsp,
        R8 => r.r8,
        R9 => r.r9,
        R10 => r.r10,
        R11 => r.r11,
        R12 => r.r12,
        R13 => r.r13,
        R14 => r.r14,
        R15 => r.r15,
        RIP => r.rip,
        FS => return Some(r.fs_base),
        GS => return Some(r.gs_base),
        ES | CS | SS | DS => return Some(0),
        _ => return Option::None,
    };
    Some(match reg.size() {
        8 => v,
        4 => v as u32 as u64,
        2 => v as u16 as u64,
        _ => return Option::None,
    })
}

/// The memory operand of the instruction at `regs.rip`, read now: (address,
/// size, value) for the landing's memory check, or `None` if it has none
/// (or it cannot be read).
pub fn memory_check(mem: &Mem, regs: &Regs) -> Option<[u64; 3]> {
    let i = decode_at(mem, regs.rip)?;
    if matches!(i.mnemonic(), Mnemonic::Lea | Mnemonic::Nop) || i.is_vsib() {
        return None;
    }
    let op = (0..i.op_count()).find(|n| i.op_kind(*n) == OpKind::Memory)?;
    let size = match i.memory_size().size() {
        n @ (1 | 2 | 4) => n,
        n if n >= 8 => 8,
        _ => return None,
    };
    let addr = i.virtual_address(op, 0, |reg, _, _| reg_value(regs, reg))?;
    let b = mem.read(addr, size).ok()?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(&b);
    Some([addr, size as u64, u64::from_le_bytes(v)])
}

/// True when `l`'s memory check (if any) holds in `mem` now.
pub fn memory_matches(mem: &Mem, l: &kpl::event::Landing) -> bool {
    let Some([addr, size, value]) = l.regs.get(MEM_CHECK..MEM_CHECK + 3).map(|m| [m[0], m[1], m[2]]) else {
        return true;
    };
    let mut v = [0u8; 8];
    match mem.read(addr, size.min(8) as usize) {
        Ok(b) => v[..b.len()].copy_from_slice(&b),
        Err(_) => return false,
    }
    u64::from_le_bytes(v) == value
}

/// The register values of `r` in `user_regs_struct` order.
pub fn regs_vec(r: &Regs) -> Vec<u64> {
    vec![
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi, r.orig_rax, r.rip, r.cs,
        r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
    ]
}

/// Decodes the instruction at `ip`.
pub fn decode_at(mem: &Mem, ip: u64) -> Option<Instruction> {
    let bytes = mem.read_partial(ip, 15);
    if bytes.is_empty() {
        return None;
    }
    let mut d = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid()).then_some(i)
}

/// True when the instruction can be replaced by a 5-byte jump.
pub fn patchable(i: &Instruction) -> bool {
    i.len() >= 5
        && !matches!(
            i.mnemonic(),
            Mnemonic::Syscall | Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Rdtsc | Mnemonic::Rdtscp | Mnemonic::Cpuid | Mnemonic::Sysenter
        )
}

/// True when single-stepping over the instruction is safe for positioning
/// (it traps into the tracer or the kernel otherwise).
fn steppable(i: &Instruction) -> bool {
    !matches!(
        i.mnemonic(),
        Mnemonic::Syscall
            | Mnemonic::Int
            | Mnemonic::Int3
            | Mnemonic::Int1
            | Mnemonic::Rdtsc
            | Mnemonic::Rdtscp
            | Mnemonic::Cpuid
            | Mnemonic::Sysenter
            | Mnemonic::Ud2
            | Mnemonic::Hlt
    )
}

/// At record time: single-steps a thread stopped in user code forward to a
/// patchable instruction (at most 64 steps). Returns the registers there,
/// and the siginfo of signals that arrived on the way: they were held back
/// (a signal-delivery-stop resumed without its signal) and the caller sends
/// them again ([`crate::os::tgkill`]) once the thread goes on. The caller
/// resumes it (delivering the held signal, if any).
pub fn advance(pid: Pid, mem: &Mem) -> Result<(Regs, Vec<[u8; 128]>), String> {
    let mut regs = os::getregs(pid).map_err(|e| format!("getregs: {e}"))?;
    let mut held = Vec::new();
    let mut steps = 0;
    while steps < 64 {
        let Some(i) = decode_at(mem, regs.rip) else {
            break;
        };
        if patchable(&i) || !steppable(&i) {
            break;
        }
        os::step(pid, 0).map_err(|e| format!("single-step: {e}"))?;
        match os::wait(Some(pid), false) {
            Ok(Some(nix::sys::wait::WaitStatus::Stopped(_, nix::sys::signal::Signal::SIGTRAP))) => steps += 1,
            Ok(Some(nix::sys::wait::WaitStatus::Stopped(_, sig))) => {
                // Another signal came in (a timer): keep it for later; the
                // step did not happen, the next one suppresses it here.
                // (Its siginfo starts with the signal number.)
                held.push(os::getsiginfo(pid).map_err(|e| format!("siginfo of {sig:?}: {e}"))?);
            }
            other => return Err(format!("positioning an asynchronous event: unexpected stop {other:?}")),
        }
        regs = os::getregs(pid).map_err(|e| format!("getregs: {e}"))?;
    }
    Ok((regs, held))
}

/// A trampoline installed in the tracee for one landing.
pub struct Trampoline {
    /// Where the jump was written.
    pub ip: u64,
    /// The original instruction bytes.
    pub saved: Vec<u8>,
    /// The trampoline page.
    pub page: u64,
    /// Address just after its `int3`.
    pub hit: u64,
}

const PAGE: u64 = 4096;

/// Finds a free page within ±1 GiB of `near` in the tracee's address space.
fn free_page_near(pid: Pid, near: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    ranges.sort();
    let lo = near.saturating_sub(1 << 30).max(0x10000);
    let hi = near.saturating_add(1 << 30);
    // Gaps between mappings, closest to `near` first.
    let mut cands = Vec::new();
    let mut prev_end = 0x10000u64;
    for (a, b) in &ranges {
        if *a > prev_end + PAGE {
            cands.push((prev_end, *a));
        }
        prev_end = prev_end.max(*b);
    }
    cands.push((prev_end, 0x7fff_ffff_f000));
    let mut best: Option<u64> = None;
    for (s, e) in cands {
        // The page just below the next mapping or just above the previous one.
        for p in [e.saturating_sub(2 * PAGE), s + PAGE] {
            if p < s + PAGE || p + PAGE > e.saturating_sub(PAGE) || p < lo || p > hi {
                continue;
            }
            if best.is_none_or(|b| p.abs_diff(near) < b.abs_diff(near)) {
                best = Some(p);
            }
        }
    }
    best
}

/// Installs a trampoline for landing at `ip` with registers `want` (in
/// `user_regs_struct` order). `syscall_insn` is the address of a `syscall`
/// instruction in the tracee (for the injected mmap).
pub fn install(pid: Pid, mem: &Mem, syscall_insn: u64, ip: u64, want: &[u64]) -> Result<Trampoline, String> {
    let insn = decode_at(mem, ip).ok_or("undecodable instruction at the landing point")?;
    if !patchable(&insn) {
        return Err("the landing instruction is too short to patch".into());
    }
    if want.len() < 15 {
        return Err("the log has no registers for this landing".into());
    }
    let page = free_page_near(pid, ip).ok_or("no free address near the landing point for a trampoline")?;
    let r = crate::inject::syscall(
        pid,
        syscall_insn,
        libc::SYS_mmap as u64,
        [
            page,
            PAGE,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if r as u64 != page {
        return Err(format!("mapping the trampoline at {page:#x} failed ({r})"));
    }
    let check = want.get(MEM_CHECK..MEM_CHECK + 3).map(|m| [m[0], m[1], m[2]]);
    let (code, hit) = assemble(page, &insn, want, check).map_err(|e| format!("assembling the trampoline: {e}"))?;
    mem.write(page, &code).map_err(|e| format!("writing the trampoline: {e}"))?;
    let saved = mem.read(ip, 5).map_err(|e| format!("reading the landing instruction: {e}"))?;
    let rel = (page as i64 - (ip as i64 + 5)) as i32;
    let mut jmp = vec![0xe9];
    jmp.extend_from_slice(&rel.to_le_bytes());
    mem.write(ip, &jmp).map_err(|e| format!("patching the landing instruction: {e}"))?;
    Ok(Trampoline { ip, saved, page, hit })
}

/// Removes a trampoline (restores the instruction, unmaps the page).
pub fn remove(pid: Pid, mem: &Mem, syscall_insn: u64, t: &Trampoline) -> Result<(), String> {
    mem.write(t.ip, &t.saved).map_err(|e| format!("restoring the landing instruction: {e}"))?;
    crate::inject::syscall(pid, syscall_insn, libc::SYS_munmap as u64, [t.page, PAGE, 0, 0, 0, 0])?;
    Ok(())
}

fn assemble(page: u64, orig: &Instruction, want: &[u64], check: Option<[u64; 3]>) -> Result<(Vec<u8>, u64), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut miss = a.create_label();
    let mut cont = a.create_label();
    // user_regs_struct order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
    let regs = [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi];
    let mut slots: Vec<CodeLabel> = (0..regs.len()).map(|_| a.create_label()).collect();
    // Keep clear of the red zone, save the flags the comparisons change.
    a.lea(rsp, ptr(rsp - 128))?;
    a.pushfq()?;
    for (i, r) in regs.iter().enumerate() {
        a.cmp(*r, qword_ptr(slots[i]))?;
        a.jne(miss)?;
    }
    let mut mem_slot = a.create_label();
    if let Some([addr, size, _]) = check {
        // The memory operand too (rax is saved around it; pop keeps the flags).
        a.push(rax)?;
        a.mov(rax, addr)?;
        match size {
            1 => a.movzx(eax, byte_ptr(rax))?,
            2 => a.movzx(eax, word_ptr(rax))?,
            4 => a.mov(eax, dword_ptr(rax))?,
            _ => a.mov(rax, qword_ptr(rax))?,
        }
        a.cmp(rax, qword_ptr(mem_slot))?;
        a.pop(rax)?;
        a.jne(miss)?;
    }
    a.popfq()?;
    a.lea(rsp, ptr(rsp + 128))?;
    a.int3()?;
    a.set_label(&mut cont)?;
    a.add_instruction(*orig)?;
    a.jmp(orig.next_ip())?;
    a.set_label(&mut miss)?;
    a.popfq()?;
    a.lea(rsp, ptr(rsp + 128))?;
    a.jmp(cont)?;
    for (i, slot) in slots.iter_mut().enumerate() {
        a.set_label(slot)?;
        a.dq(&[want[i]])?;
    }
    a.set_label(&mut mem_slot)?;
    a.dq(&[check.map(|c| c[2]).unwrap_or(0)])?;
    let res = a.assemble_options(page, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let hit = res.label_ip(&cont)?;
    Ok((res.inner.code_buffer, hit))
}
