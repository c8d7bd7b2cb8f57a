//! The coded form of a payload lane's `long` stream (format 2.1): long
//! digit strings (account, card and routing numbers) as references to the
//! strings met before in the frame, and the new ones packed as binary.
//!
//! The plain form (format 2.0) is each digit string followed by a line
//! feed, compressed by zstd; a number that recurs then costs a zstd match
//! (about three bytes) and a new one about 0.43 bytes a digit. Identifiers
//! in payment systems are often built of parts — a bank or routing code and
//! an account, a card's issuer and its number — that recur on their own.
//! The coded form therefore picks, per frame, a *split*: for the strings of
//! the frame's most common length `L`, the number of leading digits `p`
//! that forms a part on its own (or none). It is chosen on a sample of the
//! frame's strings, from how many distinct heads and tails each `p` leaves
//! (sorted, with their common prefixes and suffixes), for the least bytes.
//! Each string (or each of its two parts) is then a varint: 0 for a part
//! not met before in the frame, whose digits follow, packed in the
//! `literals` region (up to 38 digits in the fewest bytes that hold them);
//! otherwise 1 + the part's number in the order parts were first met.
//!
//! ```text
//! coded    := 0x01 split(u8) split_len(varint) count(varint)
//!             refs_codec(u8) refs_len(varint) refs_stored_len(varint) refs literals
//! refs     := per string: len(varint) ref(varint) [ref(varint) if split and len = split_len]
//! ```
//!
//! A plain stream starts with a digit (or is empty), so readers tell the
//! forms apart by the first byte.
//!
//! Format 2.2: the parts met before are those of the lane's coded long
//! streams in the earlier frames of the frame's dictionary group too
//! (see [`crate::payload`]): part numbers go on counting from frame to
//! frame, and the dictionaries start empty at each group's first frame. A
//! lane whose dictionary holds parts is coded however few strings it has.

use crate::block::put;
use crate::format::Packer;
use crate::payload::{unpack_stream, Cur};
use std::collections::HashMap;

/// A part as a dictionary key: its value and its number of digits (parts
/// of up to [`CHUNK`] digits), or its digits (longer ones, rare).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Short(u128, u8),
    Long(Box<[u8]>),
}

/// The value of up to [`CHUNK`] digits.
#[inline]
fn value(d: &[u8]) -> u128 {
    if d.len() <= 19 {
        d.iter().fold(0u64, |v, &c| v * 10 + (c - b'0') as u64) as u128
    } else {
        d.iter().fold(0u128, |v, &c| v * 10 + (c - b'0') as u128)
    }
}

/// The parts (heads, then tails or whole strings) a lane's coded long
/// streams met so far in the dictionary group, for the encoder.
#[derive(Default)]
pub(crate) struct EncDict {
    ids: [HashMap<Key, u32, foldhash::fast::FixedState>; 2],
}

impl EncDict {
    /// Forgets every part (a group's first frame).
    pub fn clear(&mut self) {
        for d in &mut self.ids {
            d.clear();
        }
    }
    fn is_empty(&self) -> bool {
        self.ids.iter().all(HashMap::is_empty)
    }
}

/// The same for the decoder: the digits of each part, in the order met.
#[derive(Clone, Default)]
pub(crate) struct DecDict {
    digits: [Vec<u8>; 2],
    parts: [Vec<(u32, u32)>; 2],
}

/// First byte of the coded form of format 2.1 (one references region).
pub(crate) const CODED: u8 = 0x01;
/// First byte of the coded form of format 2.2 (three references regions).
pub(crate) const CODED_SPLIT: u8 = 0x02;
/// Strings sampled to choose the split.
const SAMPLE: usize = 128;
/// Fewer strings than this are left plain.
const MIN_STRINGS: usize = 16;
/// Most digits packed into one binary chunk (10^38 < 2^128).
const CHUNK: usize = 38;

/// Bytes that hold any `c`-digit number.
fn packed_len(c: usize) -> usize {
    (1..=16).find(|&b| b == 16 || 10u128.pow(c as u32) <= 1u128 << (8 * b)).unwrap_or(16)
}

/// [`packed_len`] of 0 to [`CHUNK`] digits.
static PACKED: std::sync::LazyLock<[u8; CHUNK + 1]> = std::sync::LazyLock::new(|| std::array::from_fn(|c| packed_len(c) as u8));

fn pack(digits: &[u8], out: &mut Vec<u8>) {
    for ch in digits.chunks(CHUNK) {
        let nb = PACKED[ch.len()] as usize;
        out.extend_from_slice(&value(ch).to_le_bytes()[..nb]);
    }
}

fn unpack(lits: &mut Cur<'_>, n: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let c = left.min(CHUNK);
        let nb = PACKED[c] as usize;
        let bytes = lits.take(nb as u64)?;
        let mut le = [0u8; 16];
        le[..nb].copy_from_slice(bytes);
        let mut v = u128::from_le_bytes(le);
        if v >= 10u128.pow(c as u32) {
            return Err(format!("long stream: packed number {v} has more than {c} digits"));
        }
        let start = out.len();
        out.resize(start + c, b'0');
        for k in (start..start + c).rev() {
            out[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        left -= c;
    }
    Ok(())
}

/// Common leading (`rev` false) or trailing digits of two strings.
fn common(a: &[u8], b: &[u8], rev: bool) -> usize {
    if rev {
        a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
    } else {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }
}

/// The split (digits of the head, 0 for none) for strings of length `len`
/// in `sample`, and whether splitting beats coding whole strings.
fn choose_split(sample: &[&[u8]], len: usize) -> usize {
    let s = sample.len();
    // distinct heads of p digits = 1 + adjacent pairs (sorted) sharing fewer than p leading digits.
    let mut v = sample.to_vec();
    v.sort_unstable();
    let lcp: Vec<usize> = v.windows(2).map(|w| common(w[0], w[1], false)).collect();
    v.sort_unstable_by(|a, b| a.iter().rev().cmp(b.iter().rev()));
    let lcs: Vec<usize> = v.windows(2).map(|w| common(w[0], w[1], true)).collect();
    let heads = |p: usize| 1 + lcp.iter().filter(|&&c| c < p).count();
    let tails = |t: usize| 1 + lcs.iter().filter(|&&c| c < t).count();
    let digit_bytes = |k: usize| k as f64 * std::f64::consts::LOG2_10 / 8.0;
    let id_bytes = |d: usize| ((d as f64).log2() + 1.0) / 8.0;
    let whole = heads(len) as f64 * digit_bytes(len) + s as f64 * id_bytes(heads(len));
    let mut best = (whole, 0);
    for p in 1..len {
        let (h, t) = (heads(p), tails(len - p));
        let cost = h as f64 * digit_bytes(p) + t as f64 * digit_bytes(len - p) + s as f64 * (id_bytes(h) + id_bytes(t));
        if cost < best.0 * 0.95 {
            best = (cost, p);
        }
    }
    best.1
}

/// Codes a plain `long` stream (digit strings, each followed by a line
/// feed) into `out`; false (and `out` untouched) when it is too short to
/// be worth it. `p` compresses the references region; `dict` holds the
/// parts of the group's earlier frames and learns this frame's.
pub(crate) fn encode(plain: &[u8], out: &mut Vec<u8>, p: &mut Packer, dict: &mut EncDict) -> bool {
    let mut strings: Vec<&[u8]> = Vec::with_capacity(plain.len() / 20);
    let mut from = 0;
    for nl in memchr::memchr_iter(b'\n', plain) {
        if nl > from {
            strings.push(&plain[from..nl]);
        }
        from = nl + 1;
    }
    if from < plain.len() {
        strings.push(&plain[from..]);
    }
    if strings.is_empty() || (strings.len() < MIN_STRINGS && dict.is_empty()) {
        return false;
    }
    // The most common length among the first strings, and its split.
    let mut lens: HashMap<usize, usize> = HashMap::new();
    for s in strings.iter().take(SAMPLE) {
        *lens.entry(s.len()).or_default() += 1;
    }
    let (split_len, n) = lens.into_iter().max_by_key(|&(l, n)| (n, l)).unwrap_or((0, 0));
    let sample: Vec<&[u8]> = strings.iter().filter(|s| s.len() == split_len).take(SAMPLE).copied().collect();
    // The split is stored in a byte.
    let split = if n >= MIN_STRINGS && split_len <= u8::MAX as usize { choose_split(&sample, split_len) } else { 0 };
    // References in three regions (format 2.2): string lengths, head (or whole string) parts, tail parts.
    let mut refs: [Vec<u8>; 3] = std::array::from_fn(|_| Vec::with_capacity(strings.len() * 2));
    let mut literals = Vec::new();
    for s in &strings {
        put(&mut refs[0], s.len() as u64);
        let parts: [&[u8]; 2] = if split > 0 && s.len() == split_len { [&s[..split], &s[split..]] } else { [s, &[]] };
        for (k, part) in parts.into_iter().enumerate() {
            if k == 1 && part.is_empty() {
                break;
            }
            let key = if part.len() <= CHUNK { Key::Short(value(part), part.len() as u8) } else { Key::Long(part.into()) };
            let d = &mut dict.ids[k];
            let next = d.len() as u32;
            let id = *d.entry(key).or_insert(next);
            if id == next {
                put(&mut refs[1 + k], 0u64);
                pack(part, &mut literals);
            } else {
                put(&mut refs[1 + k], id as u64 + 1);
            }
        }
    }
    out.push(CODED_SPLIT);
    out.push(split as u8);
    put(out, split_len as u64);
    put(out, strings.len() as u64);
    let mut packed = Vec::new();
    for r in &refs {
        let at = packed.len();
        let (codec, _) = p.pack(r, &mut packed);
        out.push(codec);
        put(out, r.len() as u64);
        put(out, (packed.len() - at) as u64);
    }
    out.extend_from_slice(&packed);
    out.extend_from_slice(&literals);
    true
}

/// Decodes a coded `long` stream back into its plain form, which may not
/// exceed `max` bytes; `dict` holds the parts of the group's earlier
/// frames and learns this frame's.
pub(crate) fn decode(coded: &[u8], max: usize, dict: &mut DecDict) -> Result<Vec<u8>, String> {
    let mut c = Cur { name: "long", b: coded, at: 0 };
    let regions = if c.byte()? == CODED_SPLIT { 3 } else { 1 };
    let split = c.byte()? as usize;
    let split_len: u64 = c.get()?;
    let count: u64 = c.get()?;
    let mut table = [(0u8, 0u64, 0u64); 3];
    for t in &mut table[..regions] {
        *t = (c.byte()?, c.get()?, c.get()?);
    }
    let rlen: u64 = table.iter().map(|t| t.1).fold(0, u64::saturating_add);
    if rlen > (max as u64).saturating_mul(4) + 16 || count > max as u64 {
        return Err(format!("long stream: {count} strings in {rlen} bytes of references, out of range for {max} bytes"));
    }
    const NAMES: [&str; 3] = ["long lengths", "long head references", "long tail references"];
    let mut refs: Vec<Vec<u8>> = Vec::with_capacity(regions);
    for (k, &(codec, rlen, slen)) in table[..regions].iter().enumerate() {
        let name = if regions == 1 { "long references" } else { NAMES[k] };
        refs.push(unpack_stream(name, codec, c.take(slen)?, rlen as usize)?);
    }
    let mut lits = Cur { name: "long literals", b: &coded[c.at..], at: 0 };
    let split_len = split_len as usize;
    let mut rs: Vec<Cur<'_>> =
        refs.iter().enumerate().map(|(k, b)| Cur { name: if regions == 1 { "long references" } else { NAMES[k] }, b, at: 0 }).collect();
    // The cursor of each region: all three are the one region of format 2.1.
    let which = |k: usize| if regions == 1 { 0 } else { k };
    let mut out = Vec::new();
    for i in 0..count {
        let len = rs[which(0)].get::<u64>()? as usize;
        if out.len() + len + 1 > max {
            return Err(format!("long stream: string {i} of {len} digits overruns the {max}-byte stream"));
        }
        let lens: [usize; 2] = if split > 0 && len == split_len { [split, len - split] } else { [len, 0] };
        for (k, plen) in lens.into_iter().enumerate() {
            if k == 1 && plen == 0 {
                break;
            }
            let x = rs[which(1 + k)].get::<u64>()? as usize;
            let (digits, parts) = (&mut dict.digits[k], &mut dict.parts[k]);
            if x == 0 {
                let start = out.len();
                unpack(&mut lits, plen, &mut out)?;
                parts.push((digits.len() as u32, plen as u32));
                digits.extend_from_slice(&out[start..]);
            } else {
                let id = x - 1;
                let &(s, l) = parts.get(id).ok_or_else(|| format!("long stream: string {i} names part {id} of {}", parts.len()))?;
                if l as usize != plen {
                    return Err(format!("long stream: string {i} names a {l}-digit part for {plen} digits"));
                }
                out.extend_from_slice(&digits[s as usize..(s + l) as usize]);
            }
        }
        out.push(b'\n');
    }
    let left: usize = rs.iter().map(|r| r.b.len() - r.at).sum();
    if left > 0 || lits.at != lits.b.len() {
        return Err(format!("long stream: {left} bytes of references and {} of digits left over", lits.b.len() - lits.at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn round(plain: &[u8]) -> Option<Vec<u8>> {
        let mut coded = Vec::new();
        if !encode(plain, &mut coded, &mut Packer::new(1).unwrap(), &mut EncDict::default()) {
            return None;
        }
        let back = decode(&coded, plain.len(), &mut DecDict::default()).unwrap();
        assert_eq!(back, plain);
        Some(coded)
    }

    #[test]
    fn packing_holds_every_digit_count() {
        for c in 1..=CHUNK {
            assert!(packed_len(c) as f64 >= c as f64 * std::f64::consts::LOG2_10 / 8.0);
            let nines = vec![b'9'; c];
            let mut out = Vec::new();
            pack(&nines, &mut out);
            let mut back = Vec::new();
            unpack(&mut Cur { name: "test", b: &out, at: 0 }, c, &mut back).unwrap();
            assert_eq!(back, nines);
        }
        assert_eq!(packed_len(12), 5);
        assert_eq!(packed_len(19), 8);
    }

    #[test]
    fn routing_and_account_numbers_split() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let accounts: Vec<String> = (0..300).map(|_| format!("{:012}", rng.gen_range(0..1_000_000_000_000u64))).collect();
        let mut plain = Vec::new();
        for _ in 0..2000 {
            let route = ["621021000021", "627026009593", "632011000138", "637121000358"][rng.gen_range(0..4)];
            let a = &accounts[(300.0 * rng.gen::<f64>().powi(3)) as usize];
            plain.extend_from_slice(format!("{route}{a}\n").as_bytes());
        }
        // Odd ones: other lengths, longer than a chunk, leading zeros.
        plain.extend_from_slice(b"0000000000000000000000000000000000000000000000000001\n00000000000000000001\n");
        let coded = round(&plain).unwrap();
        assert_eq!(coded[1], 12, "split after the routing code");
        assert!(coded.len() < plain.len() / 4, "{} coded bytes for {}", coded.len(), plain.len());
    }

    #[test]
    fn strings_longer_than_a_split_byte() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let heads: Vec<String> = (0..3).map(|_| (0..280).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect()).collect();
        let plain: Vec<u8> = (0..40).flat_map(|i| format!("{}{:020}\n", heads[i % 3], rng.gen_range(0..u64::MAX)).into_bytes()).collect();
        let coded = round(&plain).unwrap();
        assert_eq!(coded[1], 0, "no split for 300-digit strings");
    }

    #[test]
    fn few_or_unrelated_strings() {
        assert!(round(b"1234567890123456789\n").is_none());
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let plain: Vec<u8> =
            (0..500).flat_map(|_| format!("{:020}{:05}\n", rng.gen_range(0..u64::MAX), rng.gen_range(0..99999)).into_bytes()).collect();
        round(&plain).unwrap();
    }

    #[test]
    fn damaged_coded_streams_are_errors() {
        let plain: Vec<u8> = (0..40u64).flat_map(|i| format!("{:020}\n", i % 7 * 1_000_003).into_bytes()).collect();
        let coded = round(&plain).unwrap();
        for i in 0..coded.len() {
            for bit in 0..8 {
                let mut b = coded.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b, plain.len(), &mut DecDict::default());
            }
            let _ = decode(&coded[..i], plain.len(), &mut DecDict::default());
        }
        assert!(decode(&coded, plain.len() - 1, &mut DecDict::default()).is_err());
    }
}
