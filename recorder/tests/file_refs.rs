//! Reads by reference (`recorder::fileref`): the recorder fills the bytes of
//! a read from the file itself, and refuses to when the file is no longer
//! what the program read. Real ext4 files, real `open_by_handle_at` (root).

use recorder::fileref::{kernel_dev, ref_mounts, FileRead, Filler, Miss, HEAD};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inode generation of `p`, from `lsattr -v` (e2fsprogs).
fn generation(p: &Path) -> u32 {
    let out = std::process::Command::new("lsattr").arg("-v").arg(p).output().expect("lsattr (e2fsprogs)");
    assert!(out.status.success(), "lsattr -v {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

/// What the BPF program would send for a read of `len` bytes at `pos` of `p`.
fn read_of(p: &Path, pos: usize, len: usize) -> FileRead {
    let m = std::fs::metadata(p).unwrap();
    let bytes = std::fs::read(p).unwrap();
    let got = &bytes[pos..pos + len];
    let mut head = [0u8; HEAD];
    let mut tail = [0u8; HEAD];
    head.copy_from_slice(&got[..HEAD]);
    tail.copy_from_slice(&got[len - HEAD..]);
    FileRead {
        ino: m.ino(),
        pos: pos as u64,
        ctime_sec: m.ctime(),
        ctime_nsec: m.ctime_nsec() as u32,
        gen: generation(p),
        dev: kernel_dev(m.dev()),
        fmt: recorder::fileref::FMT_INO32_GEN,
        head,
        tail,
    }
}

fn filler() -> Filler {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    Filler::new(&ref_mounts(&table))
}

/// A scratch directory on an ext4 filesystem the filler can open handles on.
fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("kprobe-fileref-").tempdir_in("/var/tmp").unwrap();
    let dev = kernel_dev(std::fs::metadata(d.path()).unwrap().dev());
    assert!(filler().devices().contains(&dev), "/var/tmp is not on an ext4 filesystem of this mount table: the test needs one");
    d
}

#[test]
fn fills_a_read_from_the_file_and_checks_it() {
    let d = scratch();
    let p = d.path().join("ledger.dat");
    let content: Vec<u8> = (0..200_000u32).flat_map(|i| format!("entry {i:08} amount {}\n", i * 7 % 1000).into_bytes()).collect();
    std::fs::write(&p, &content).unwrap();
    let mut f = filler();

    let r = read_of(&p, 4096, 100_000);
    assert_eq!(f.fill(&r, 100_000).unwrap(), &content[4096..104_096]);
    // a second read of the same file uses the descriptor already open
    let r2 = read_of(&p, 0, 300);
    assert_eq!(f.fill(&r2, 300).unwrap(), &content[..300]);
    assert_eq!((f.filled, f.bytes, f.missed()), (2, 100_300, 0));

    // bytes that do not begin as the program's (a wrong position): refused
    let mut wrong = r.clone();
    wrong.pos += 1;
    assert_eq!(f.fill(&wrong, 100_000), Err(Miss::Mismatch));
    // past the end
    let mut past = r2.clone();
    past.pos = content.len() as u64;
    assert_eq!(f.fill(&past, 300), Err(Miss::Short));
    // another generation of the inode number: not that file
    let mut other = r2.clone();
    other.gen = other.gen.wrapping_add(1);
    assert_eq!(f.fill(&other, 300), Err(Miss::Open));
    // longer than a read by reference carries
    assert_eq!(f.fill(&r2, recorder::fileref::MAX + 1), Err(Miss::TooLong));
    // a filesystem it has no mount of
    let mut nomount = r2.clone();
    nomount.dev = 0xfff00ff;
    assert_eq!(f.fill(&nomount, 300), Err(Miss::NoMount));

    // the file changes after the read: its ctime moves, the read is refused
    std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"late entry\n").unwrap();
    assert_eq!(f.fill(&r, 100_000), Err(Miss::Changed));
    assert_eq!(f.missed(), 6);
    assert_eq!(f.misses[&Miss::Changed], 1);

    // replaced by another file of the same name: another inode, refused
    let r3 = read_of(&p, 0, 300);
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &content).unwrap();
    assert!(matches!(f.fill(&r3, 300), Err(Miss::Open) | Err(Miss::Changed)));
}
