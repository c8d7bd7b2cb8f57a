//! Compiles the eBPF programs (C, CO-RE) with clang's BPF target.
//!
//! `vmlinux.h` is generated from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, or `$KPROBE_VMLINUX_BTF`) with bpftool. The
//! object is relocated at load time (CO-RE), so it runs on other kernels with
//! BTF. Compiler: `$KPROBE_BPF_CLANG`, else `clang-19`, else `clang`.
use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e} (scripts/setup.sh installs it)", cmd.get_program()));
    if !out.status.success() {
        panic!("{what} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out.stdout
}

fn find(candidates: &[&str]) -> String {
    for c in candidates {
        if Command::new(c).arg("--version").output().is_ok() {
            return (*c).to_owned();
        }
    }
    candidates[0].to_owned()
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let btf = std::env::var("KPROBE_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    println!("cargo:rerun-if-changed=bpf/recorder.bpf.c");
    println!("cargo:rerun-if-changed=bpf/recorder.h");
    println!("cargo:rerun-if-env-changed=KPROBE_VMLINUX_BTF");
    println!("cargo:rerun-if-env-changed=KPROBE_BPF_CLANG");

    let bpftool = find(&["bpftool", "/usr/sbin/bpftool"]);
    let header = run(Command::new(&bpftool).args(["btf", "dump", "file", &btf, "format", "c"]), "generating vmlinux.h with bpftool");
    std::fs::write(out.join("vmlinux.h"), header).unwrap();

    let clang = std::env::var("KPROBE_BPF_CLANG").unwrap_or_else(|_| find(&["clang-19", "clang"]));
    let obj = out.join("recorder.bpf.o");
    run(
        Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-D__TARGET_ARCH_x86"])
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg("bpf")
            .arg("-c")
            .arg("bpf/recorder.bpf.c")
            .arg("-o")
            .arg(&obj),
        "compiling bpf/recorder.bpf.c with clang -target bpf",
    );
}
