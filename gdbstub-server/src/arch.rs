//! The target description: x86-64 Linux as gdbserver describes it (core,
//! SSE, `orig_rax`, `fs_base`/`gs_base`), so gdb and lldb see the same
//! registers as with a native gdbserver.

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::{id::X86_64CoreRegId, X86_64CoreRegs};

/// x86-64 Linux with the registers gdbserver shows.
pub enum X86_64Linux {}

/// The registers of one thread, in the order of [`TARGET_XML`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinuxRegs {
    /// rax..r15, rip, eflags, segments, x87, SSE (gdb regnums 0..=56).
    pub core: X86_64CoreRegs,
    /// The syscall number at a syscall stop (57).
    pub orig_rax: u64,
    /// FS segment base (58).
    pub fs_base: u64,
    /// GS segment base (59).
    pub gs_base: u64,
}

impl Registers for LinuxRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for v in [self.orig_rax, self.fs_base, self.gs_base] {
            for b in v.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        const CORE: usize = 0x218;
        if bytes.len() < CORE + 24 {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE])?;
        let u = |i: usize| u64::from_le_bytes(bytes[CORE + 8 * i..CORE + 8 * i + 8].try_into().unwrap());
        self.orig_rax = u(0);
        self.fs_base = u(1);
        self.gs_base = u(2);
        Ok(())
    }
}

impl Arch for X86_64Linux {
    type Usize = u64;
    type Registers = LinuxRegs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// `target.xml`: the features of gdb's `amd64-linux` description, inline.
pub const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<osabi>GNU/Linux</osabi>
<feature name="org.gnu.gdb.i386.core">
<flags id="i386_eflags" size="4">
<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
<field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
<field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
<field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
</flags>
<reg name="rax" bitsize="64" type="int64" regnum="0"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="i386_eflags"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>
<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<flags id="i386_mxcsr" size="4">
<field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/>
<field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
<field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/>
<field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
<field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
</flags>
<reg name="xmm0" bitsize="128" type="vec128" regnum="40"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
<reg name="xmm8" bitsize="128" type="vec128"/>
<reg name="xmm9" bitsize="128" type="vec128"/>
<reg name="xmm10" bitsize="128" type="vec128"/>
<reg name="xmm11" bitsize="128" type="vec128"/>
<reg name="xmm12" bitsize="128" type="vec128"/>
<reg name="xmm13" bitsize="128" type="vec128"/>
<reg name="xmm14" bitsize="128" type="vec128"/>
<reg name="xmm15" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.linux">
<reg name="orig_rax" bitsize="64" type="int" regnum="57"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
</target>
"#;

/// Registers from ptrace's general and FP register sets.
pub fn from_ptrace(r: &libc::user_regs_struct, f: &libc::user_fpregs_struct) -> LinuxRegs {
    let mut c = X86_64CoreRegs {
        regs: [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15],
        rip: r.rip,
        eflags: r.eflags as u32,
        ..Default::default()
    };
    c.segments.cs = r.cs as u32;
    c.segments.ss = r.ss as u32;
    c.segments.ds = r.ds as u32;
    c.segments.es = r.es as u32;
    c.segments.fs = r.fs as u32;
    c.segments.gs = r.gs as u32;
    for (i, st) in c.st.iter_mut().enumerate() {
        let words = &f.st_space[i * 4..i * 4 + 4];
        let mut b = [0u8; 16];
        for (j, w) in words.iter().enumerate() {
            b[j * 4..j * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        st.copy_from_slice(&b[..10]);
    }
    c.fpu.fctrl = f.cwd as u32;
    c.fpu.fstat = f.swd as u32;
    c.fpu.ftag = full_tag_word(f.ftw as u8);
    c.fpu.fioff = f.rip as u32;
    c.fpu.fiseg = (f.rip >> 32) as u32;
    c.fpu.fooff = f.rdp as u32;
    c.fpu.foseg = (f.rdp >> 32) as u32;
    c.fpu.fop = f.fop as u32;
    for (i, x) in c.xmm.iter_mut().enumerate() {
        let w = &f.xmm_space[i * 4..i * 4 + 4];
        *x = w.iter().enumerate().fold(0u128, |acc, (j, v)| acc | ((*v as u128) << (32 * j)));
    }
    c.mxcsr = f.mxcsr;
    LinuxRegs { core: c, orig_rax: r.orig_rax, fs_base: r.fs_base, gs_base: r.gs_base }
}

/// The FXSAVE abridged tag (a bit per register: in use) as the full x87
/// tag word gdb shows (2 bits per register: 0 valid, 3 empty).
fn full_tag_word(abridged: u8) -> u32 {
    (0..8).map(|i| if abridged >> i & 1 == 1 { 0 } else { 3u32 << (2 * i) }).sum()
}

/// Applies the general registers of `g` to a ptrace register set.
pub fn to_ptrace(g: &LinuxRegs, r: &mut libc::user_regs_struct) {
    let c = &g.core;
    [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15] = c.regs;
    r.rip = c.rip;
    r.eflags = c.eflags as u64;
    r.orig_rax = g.orig_rax;
    r.fs_base = g.fs_base;
    r.gs_base = g.gs_base;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_in_the_described_order() {
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.rax = 1;
        r.r15 = 16;
        r.rip = 0x401000;
        r.orig_rax = 231;
        r.fs_base = 0x7fff_0000;
        r.gs_base = 7;
        let f: libc::user_fpregs_struct = unsafe { std::mem::zeroed() };
        let g = from_ptrace(&r, &f);
        let mut bytes = Vec::new();
        g.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        // 57 registers of the core and SSE features, then orig_rax, fs_base, gs_base.
        assert_eq!(bytes.len(), 0x218 + 24);
        assert_eq!(&bytes[0x80..0x88], &0x401000u64.to_le_bytes());
        assert_eq!(&bytes[0x218..0x220], &231u64.to_le_bytes());
        assert_eq!(&bytes[0x220..0x228], &0x7fff_0000u64.to_le_bytes());
        let mut back = LinuxRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, g);
        let mut r2: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        to_ptrace(&back, &mut r2);
        assert_eq!((r2.rax, r2.r15, r2.rip, r2.orig_rax, r2.fs_base), (1, 16, 0x401000, 231, 0x7fff_0000));
        assert_eq!(full_tag_word(0b0000_0001), 0xfffc);
    }
}
