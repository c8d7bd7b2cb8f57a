//! The Kafka sink's disk spool: every message is appended here first and
//! read back in order by the sender, so a broker outage (or a recorder
//! restart) loses nothing and the backlog drains in order.
//!
//! Layout: a directory of segment files `<first id, 20 digits>.spool`, each a
//! sequence of records `[u32 len][u32 crc32c(body)][body]`, body =
//! `[u8 topic][u16 key len][key][payload]`. A segment is deleted once every
//! message in it was acknowledged by the broker (acks=all). After a crash the
//! unacknowledged segments are sent again at the next start (at least once).

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One spooled message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Index into the sink's topic list.
    pub topic: u8,
    /// Message key.
    pub key: Vec<u8>,
    /// Message value.
    pub payload: Vec<u8>,
}

struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

/// See the module documentation.
pub struct Spool {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    next_id: u64,
    reader: Option<(usize, BufReader<File>)>,
    read_id: u64,
    segment_max: u64,
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.spool"))
}

fn read_record(r: &mut impl Read, path: &Path) -> Result<Option<(Message, u64)>> {
    let mut hdr = [0u8; 8];
    match r.read_exact(&mut hdr[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading spool {}", path.display())),
    }
    r.read_exact(&mut hdr[1..]).with_context(|| format!("spool {}: truncated record header", path.display()))?;
    let len = u32::from_le_bytes(hdr[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(hdr[4..].try_into().unwrap());
    if len < 3 || len > 64 << 20 {
        bail!("spool {}: bad record length {len}", path.display());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).with_context(|| format!("spool {}: truncated record", path.display()))?;
    if crc32c::crc32c(&body) != crc {
        bail!("spool {}: record checksum mismatch", path.display());
    }
    let klen = u16::from_le_bytes([body[1], body[2]]) as usize;
    if 3 + klen > len {
        bail!("spool {}: bad key length", path.display());
    }
    Ok(Some((Message { topic: body[0], key: body[3..3 + klen].to_vec(), payload: body[3 + klen..].to_vec() }, 8 + len as u64)))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`; messages left by an earlier run
    /// are read first. A torn record at the end of the last segment (a crash
    /// mid-write) is cut off.
    pub fn open(dir: &Path) -> Result<Spool> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating spool {}", dir.display()))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .with_context(|| format!("reading spool {}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_suffix(".spool")?.parse().ok()
            })
            .collect();
        firsts.sort();
        let mut segments = VecDeque::new();
        let mut next_id = 0;
        for (i, &first) in firsts.iter().enumerate() {
            let path = seg_path(dir, first);
            let mut count = 0u64;
            let mut good = 0u64;
            let mut r = BufReader::new(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
            loop {
                match read_record(&mut r, &path) {
                    Ok(Some((_, n))) => {
                        good += n;
                        count += 1;
                    }
                    Ok(None) => break,
                    Err(e) if i + 1 == firsts.len() => {
                        tracing::warn!("{e:#}: cutting the spool's last segment at byte {good}");
                        OpenOptions::new().write(true).open(&path)?.set_len(good)?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            next_id = first + count;
            segments.push_back(Segment { first, path, bytes: good });
        }
        let read_id = segments.front().map(|s| s.first).unwrap_or(next_id);
        if segments.is_empty() {
            segments.push_back(Segment { first: next_id, path: seg_path(dir, next_id), bytes: 0 });
        }
        let last = segments.back().unwrap();
        let f =
            OpenOptions::new().create(true).append(true).open(&last.path).with_context(|| format!("opening {}", last.path.display()))?;
        Ok(Spool {
            dir: dir.to_owned(),
            segments,
            writer: BufWriter::with_capacity(1 << 16, f),
            next_id,
            reader: None,
            read_id,
            segment_max: 16 << 20,
        })
    }

    /// Appends a message; returns its id.
    pub fn append(&mut self, topic: u8, key: &[u8], payload: &[u8]) -> Result<u64> {
        if self.segments.back().unwrap().bytes >= self.segment_max {
            self.rotate()?;
        }
        let len = 3 + key.len() + payload.len();
        let mut body = Vec::with_capacity(len);
        body.push(topic);
        body.extend_from_slice(&(key.len() as u16).to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(payload);
        let w = &mut self.writer;
        let res = (|| {
            w.write_all(&(len as u32).to_le_bytes())?;
            w.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
            w.write_all(&body)
        })();
        res.with_context(|| format!("writing spool {}", self.dir.display()))?;
        self.segments.back_mut().unwrap().bytes += 8 + len as u64;
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    fn rotate(&mut self) -> Result<()> {
        self.writer.flush()?;
        let path = seg_path(&self.dir, self.next_id);
        let f = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
        self.writer = BufWriter::with_capacity(1 << 16, f);
        self.segments.push_back(Segment { first: self.next_id, path, bytes: 0 });
        Ok(())
    }

    /// Writes buffered messages to the file (and, with `sync`, to the disk).
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        self.writer.flush().with_context(|| format!("writing spool {}", self.dir.display()))?;
        if sync {
            self.writer.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// The next message not read yet, in order (call [`Spool::flush`] first).
    pub fn read_next(&mut self) -> Result<Option<(u64, Message)>> {
        if self.read_id >= self.next_id {
            return Ok(None);
        }
        loop {
            let si = match self.segments.iter().rposition(|s| s.first <= self.read_id) {
                Some(i) => i,
                None => bail!("spool {}: message {} is missing", self.dir.display(), self.read_id),
            };
            if self.reader.as_ref().map(|(i, _)| *i) != Some(si) || self.reader.is_none() {
                let seg = &self.segments[si];
                let mut f = File::open(&seg.path).with_context(|| format!("opening {}", seg.path.display()))?;
                // skip to read_id
                let mut r = BufReader::with_capacity(1 << 16, {
                    f.seek(SeekFrom::Start(0))?;
                    f
                });
                for _ in seg.first..self.read_id {
                    read_record(&mut r, &seg.path)?;
                }
                self.reader = Some((si, r));
            }
            let (si, r) = self.reader.as_mut().unwrap();
            let si = *si;
            let path = self.segments[si].path.clone();
            match read_record(r, &path)? {
                Some((m, _)) => {
                    let id = self.read_id;
                    self.read_id += 1;
                    return Ok(Some((id, m)));
                }
                None => {
                    // end of this segment: the next one starts at read_id
                    if si + 1 >= self.segments.len() {
                        return Ok(None);
                    }
                    self.reader = None;
                    if self.segments[si + 1].first > self.read_id {
                        bail!("spool {}: messages {}.. are missing", self.dir.display(), self.read_id);
                    }
                }
            }
        }
    }

    /// Every message with an id below `id` was delivered: deletes the
    /// segments that hold only such messages.
    pub fn ack_below(&mut self, id: u64) -> Result<()> {
        while self.segments.len() > 1 && self.segments[1].first <= id {
            let s = self.segments.pop_front().unwrap();
            std::fs::remove_file(&s.path).with_context(|| format!("removing {}", s.path.display()))?;
            if let Some((i, _)) = &mut self.reader {
                if *i == 0 {
                    self.reader = None;
                } else {
                    *i -= 1;
                }
            }
        }
        Ok(())
    }

    /// Every message was delivered: starts an empty segment and deletes the
    /// others, so a later start sends nothing again.
    pub fn clear_delivered(&mut self) -> Result<()> {
        self.flush(true)?;
        if self.segments.len() == 1 && self.segments[0].bytes == 0 {
            return Ok(());
        }
        if self.segments.back().map(|s| s.first) != Some(self.next_id) {
            self.rotate()?;
        }
        self.read_id = self.next_id;
        self.ack_below(self.next_id)
    }

    /// Bytes in the spool's segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    /// Id of the next message [`Spool::read_next`] returns.
    pub fn read_id(&self) -> u64 {
        self.read_id
    }
    /// Id the next appended message gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }
    /// Rewinds reading to `id` (messages from `id` on are read again).
    pub fn rewind(&mut self, id: u64) {
        if id < self.read_id {
            self.read_id = id;
            self.reader = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        s.segment_max = 200;
        for i in 0..50u32 {
            assert_eq!(s.append((i % 4) as u8, b"k", &i.to_le_bytes()).unwrap(), i as u64);
        }
        s.flush(false).unwrap();
        for i in 0..20u32 {
            let (id, m) = s.read_next().unwrap().unwrap();
            assert_eq!(id, i as u64);
            assert_eq!(m.payload, i.to_le_bytes());
        }
        s.ack_below(20).unwrap();
        drop(s);
        // a torn record at the end is cut off
        let last = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).max().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path()).unwrap();
        let (first, _) = s.read_next().unwrap().unwrap();
        assert!(first <= 20, "acknowledged segments are gone, the rest is read again");
        let mut last_id = first;
        while let Some((id, m)) = s.read_next().unwrap() {
            assert_eq!(id, last_id + 1);
            assert_eq!(m.payload, (id as u32).to_le_bytes());
            last_id = id;
        }
        assert_eq!(last_id, 49);
        assert_eq!(s.append(0, b"", b"x").unwrap(), 50);
        s.rewind(45);
        s.flush(false).unwrap();
        let ids: Vec<u64> = std::iter::from_fn(|| s.read_next().unwrap().map(|(i, _)| i)).collect();
        assert_eq!(ids, vec![45, 46, 47, 48, 49, 50]);
    }
}
