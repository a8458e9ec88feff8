//! A shadow reading of the client's HTTP/2 header blocks, for the one malformation h2 hides:
//! a pseudo-header in a request's trailers (RFC 9113 §8.1, smuggling case 7.37).
//!
//! h2 decodes a trailer block like any header block and keeps only its regular fields, so a
//! `:path` there vanishes without a reset and hyper hands mast-proxy trailers with no trace of
//! it. Envoy resets such a stream. The name of a field can come from HPACK's dynamic table,
//! filled by earlier blocks of the connection, so the only sound way to see it from the bytes
//! is a second HPACK decoder that follows every header block of the connection, in order,
//! exactly as h2's does. This is that decoder, reduced to what the check needs: for each
//! field, the length of its name and value (a dynamic-table entry's size) and whether the
//! name starts with `:`. Values that do not enter the table are skipped by their length; a
//! Huffman-coded string is walked (not copied) only when its decoded length or first octet
//! matters.
//!
//! A HEADERS frame on a stream id not above the highest one opened so far is not a request
//! head: client stream ids only grow (h2 closes a connection that goes back), so such a block
//! is a request's trailers (or arrives on a closed stream, which a client never sends
//! pseudo-headers to either). A pseudo-header there is refused, and so is a block this
//! decoder cannot read. There is no stream id to reset from under hyper, so the refusal
//! fails the connection's read before hyper sees the frame (RFC 9113 §5.4.1 lets a stream
//! error be treated as a connection error): stricter than Envoy, never looser.
//!
//! Lock-step with h2 (0.4): the table starts at, and size updates are bounded by, 4096 octets
//! — h2's default for `SETTINGS_HEADER_TABLE_SIZE`, which mast-proxy does not change (hyper's
//! `http2().header_table_size` is not set in `http::serve`). A HEADERS frame whose priority
//! names its own stream is reset by h2 without decoding its block, so it is skipped here too.
//! Every other block h2 keeps the connection for is decoded in full by both.

use std::collections::VecDeque;

/// h2's and the RFC's initial `SETTINGS_HEADER_TABLE_SIZE`; mast-proxy advertises no other.
pub const HEADER_TABLE_SIZE: usize = 4096;
/// The connection preface a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's default `SETTINGS_MAX_FRAME_SIZE`, which hyper keeps.
const MAX_FRAME_SIZE: usize = 16 * 1024;
/// Continuation octets of one HPACK integer: h2 refuses more (5 octets in all).
const MAX_INT_OCTETS: usize = 4;

/// Why the client's bytes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("HTTP/2 trailers carry a pseudo-header (RFC 9113 §8.1)")]
    PseudoInTrailers,
    #[error("malformed HTTP/2 header block: {0}")]
    Malformed(&'static str),
}

type Result<T> = std::result::Result<T, Refusal>;

/// One dynamic-table entry, as far as the check needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    name_len: usize,
    pseudo: bool,
    /// name + value + 32 (RFC 7541 §4.1).
    size: usize,
}

/// The HPACK decoding state of one direction of a connection (RFC 7541).
#[derive(Debug)]
pub struct Hpack {
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The most a size update may ask for (the advertised setting).
    limit: usize,
}

/// How far a representation was read.
enum Step {
    /// The representation ended this many octets in.
    Done(usize),
    /// The block's bytes end inside it.
    More,
}

/// The header block being read, which may span CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    trailers: bool,
    /// A field was seen: a table size update may no longer follow (RFC 7541 §4.2).
    fields: bool,
    /// The start of a representation the fragments so far cut off.
    tail: Vec<u8>,
}

#[derive(Debug)]
enum Frame {
    /// Reading a frame header; `have` octets of it are in `head`.
    Head,
    /// Passing over this many payload octets.
    Skip(usize),
    /// Gathering a HEADERS or CONTINUATION payload that a read cut off.
    Gather {
        kind: u8,
        flags: u8,
        stream: u32,
        len: usize,
        buf: Vec<u8>,
    },
}

/// The client-to-proxy side of one HTTP/2 connection, read a second time.
#[derive(Debug)]
pub struct Shadow {
    /// Octets of the connection preface still to pass over.
    preface: usize,
    head: [u8; 9],
    have: usize,
    frame: Frame,
    hpack: Hpack,
    /// The highest stream id a HEADERS frame opened.
    max_stream: u32,
    /// A header block awaiting its CONTINUATION frames.
    block: Option<Block>,
    refused: Option<Refusal>,
}

// === impl Shadow ===

impl Shadow {
    /// `preface`: whether the client's preface is still to come (false when the caller read
    /// it already).
    pub fn new(preface: bool) -> Self {
        Self {
            preface: if preface { PREFACE.len() } else { 0 },
            head: [0; 9],
            have: 0,
            frame: Frame::Head,
            hpack: Hpack::new(HEADER_TABLE_SIZE),
            max_stream: 0,
            block: None,
            refused: None,
        }
    }

    /// Read the next bytes from the client. Once refused, every later call is refused too.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(r) = self.refused {
            return Err(r);
        }
        let res = self.read(data);
        if let Err(r) = res {
            self.refused = Some(r);
            // Nothing more is read: the connection is failed.
            self.block = None;
            self.frame = Frame::Skip(usize::MAX);
        }
        res
    }

    fn read(&mut self, mut data: &[u8]) -> Result<()> {
        if self.preface > 0 {
            let n = self.preface.min(data.len());
            let at = PREFACE.len() - self.preface;
            if data[..n] != PREFACE[at..at + n] {
                // h2 closes the connection; nothing here to follow.
                return Err(Refusal::Malformed("connection preface"));
            }
            self.preface -= n;
            data = &data[n..];
        }
        while !data.is_empty() {
            match &mut self.frame {
                Frame::Head => {
                    let n = (9 - self.have).min(data.len());
                    self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have < 9 {
                        return Ok(());
                    }
                    self.have = 0;
                    let h = self.head;
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if self.block.is_some() && kind != CONTINUATION {
                        return Err(Refusal::Malformed("expected CONTINUATION"));
                    }
                    match kind {
                        HEADERS | CONTINUATION => {
                            if data.len() >= len {
                                // The usual case: the whole frame is in this read.
                                self.frame_done(kind, flags, stream, &data[..len])?;
                                data = &data[len..];
                            } else {
                                self.frame = Frame::Gather {
                                    kind,
                                    flags,
                                    stream,
                                    len,
                                    // Grown as the bytes come: the length is the
                                    // client's word (h2 refuses above 16 KiB).
                                    buf: Vec::with_capacity(len.min(MAX_FRAME_SIZE)),
                                };
                            }
                        }
                        PUSH_PROMISE => {
                            return Err(Refusal::Malformed("PUSH_PROMISE from a client"));
                        }
                        _ => self.frame = Frame::Skip(len),
                    }
                }
                Frame::Skip(n) => {
                    let take = (*n).min(data.len());
                    *n -= take;
                    data = &data[take..];
                    if *n == 0 {
                        self.frame = Frame::Head;
                    }
                }
                Frame::Gather { len, buf, .. } => {
                    let take = (*len - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() < *len {
                        return Ok(());
                    }
                    if let Frame::Gather {
                        kind,
                        flags,
                        stream,
                        buf,
                        ..
                    } = std::mem::replace(&mut self.frame, Frame::Head)
                    {
                        self.frame_done(kind, flags, stream, &buf)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION payload.
    fn frame_done(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<()> {
        self.frame = Frame::Head;
        let end = flags & END_HEADERS != 0;
        let block = if kind == HEADERS {
            if stream == 0 {
                return Err(Refusal::Malformed("HEADERS on stream 0"));
            }
            let mut frag = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&p, rest) = frag
                    .split_first()
                    .ok_or(Refusal::Malformed("HEADERS padding"))?;
                pad = usize::from(p);
                frag = rest;
            }
            if flags & PRIORITY != 0 {
                let Some((dep, rest)) = frag.split_first_chunk::<5>() else {
                    return Err(Refusal::Malformed("HEADERS priority"));
                };
                let dep = u32::from_be_bytes([dep[0], dep[1], dep[2], dep[3]]) & 0x7fff_ffff;
                if dep == stream {
                    // h2 resets the stream without decoding the block (and closes the
                    // connection on a CONTINUATION of it): so does this reading.
                    return Ok(());
                }
                frag = rest;
            }
            let frag = frag
                .len()
                .checked_sub(pad)
                .map(|n| &frag[..n])
                .ok_or(Refusal::Malformed("HEADERS padding"))?;
            let trailers = stream <= self.max_stream;
            self.max_stream = self.max_stream.max(stream);
            let mut block = Block {
                stream,
                trailers,
                fields: false,
                tail: Vec::new(),
            };
            let used = self.hpack.decode(frag, &mut block)?;
            block.tail.extend_from_slice(&frag[used..]);
            block
        } else {
            let mut block = self
                .block
                .take()
                .ok_or(Refusal::Malformed("unexpected CONTINUATION"))?;
            if block.stream != stream {
                return Err(Refusal::Malformed("CONTINUATION on another stream"));
            }
            if block.tail.is_empty() {
                let used = self.hpack.decode(payload, &mut block)?;
                block.tail.extend_from_slice(&payload[used..]);
            } else {
                let mut joined = std::mem::take(&mut block.tail);
                joined.extend_from_slice(payload);
                let used = self.hpack.decode(&joined, &mut block)?;
                joined.drain(..used);
                block.tail = joined;
            }
            block
        };
        if end {
            if !block.tail.is_empty() {
                return Err(Refusal::Malformed("header block ends inside a field"));
            }
        } else {
            self.block = Some(block);
        }
        Ok(())
    }
}

// === impl Hpack ===

impl Hpack {
    pub fn new(limit: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Read the complete representations at the start of `buf`; how many octets they took.
    fn decode(&mut self, buf: &[u8], block: &mut Block) -> Result<usize> {
        let mut at = 0;
        while at < buf.len() {
            match self.representation(&buf[at..], block)? {
                Step::Done(n) => at += n,
                Step::More => break,
            }
        }
        Ok(at)
    }

    /// One representation (RFC 7541 §6); the table changes only once it is complete.
    fn representation(&mut self, buf: &[u8], block: &mut Block) -> Result<Step> {
        let b = buf[0];
        if b & 0xe0 == 0x20 {
            // Dynamic table size update: only before the block's first field.
            let Some((size, n)) = integer(buf, 5)? else {
                return Ok(Step::More);
            };
            if block.fields {
                return Err(Refusal::Malformed("table size update after a field"));
            }
            if size > self.limit {
                return Err(Refusal::Malformed("table size update above the setting"));
            }
            self.max_size = size;
            self.evict(0);
            return Ok(Step::Done(n));
        }
        block.fields = true;
        if b & 0x80 != 0 {
            let Some((index, n)) = integer(buf, 7)? else {
                return Ok(Step::More);
            };
            let (_, pseudo) = self.name(index)?;
            if pseudo && block.trailers {
                return Err(Refusal::PseudoInTrailers);
            }
            return Ok(Step::Done(n));
        }
        let (insert, prefix) = if b & 0xc0 == 0x40 {
            (true, 6)
        } else {
            // Without indexing (0000) or never indexed (0001).
            (false, 4)
        };
        let Some((index, mut at)) = integer(buf, prefix)? else {
            return Ok(Step::More);
        };
        let (name_len, pseudo) = if index == 0 {
            let Some(s) = string(&buf[at..])? else {
                return Ok(Step::More);
            };
            at += s.end;
            let (len, first) = if !s.huffman {
                (s.raw.len(), s.raw.first().copied())
            } else if insert {
                huffman(s.raw, usize::MAX)?
            } else if block.trailers {
                huffman(s.raw, 1)?
            } else {
                (0, None)
            };
            (len, first == Some(b':'))
        } else {
            self.name(index)?
        };
        if pseudo && block.trailers {
            return Err(Refusal::PseudoInTrailers);
        }
        let Some(v) = string(&buf[at..])? else {
            return Ok(Step::More);
        };
        at += v.end;
        if insert {
            let value_len = if v.huffman {
                huffman(v.raw, usize::MAX)?.0
            } else {
                v.raw.len()
            };
            self.insert(Entry {
                name_len,
                pseudo,
                size: name_len + value_len + 32,
            });
        }
        Ok(Step::Done(at))
    }

    /// A name's length and whether it is a pseudo-header, by index (RFC 7541 §2.3.3).
    fn name(&self, index: usize) -> Result<(usize, bool)> {
        if index == 0 {
            return Err(Refusal::Malformed("table index 0"));
        }
        if let Some(name) = STATIC_NAMES.get(index - 1) {
            return Ok((name.len(), name.starts_with(':')));
        }
        self.table
            .get(index - 1 - STATIC_NAMES.len())
            .map(|e| (e.name_len, e.pseudo))
            .ok_or(Refusal::Malformed("table index out of range"))
    }

    fn insert(&mut self, e: Entry) {
        if e.size > self.max_size {
            // RFC 7541 §4.4: the table empties and the entry is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(e.size);
        self.size += e.size;
        self.table.push_front(e);
    }

    /// Drop the oldest entries until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size,
                None => break,
            }
        }
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1): its value and length, or `None`
/// when `buf` ends inside it.
fn integer(buf: &[u8], n: u32) -> Result<Option<(usize, usize)>> {
    let mask = (1u8 << n) - 1;
    let first = buf[0] & mask;
    if first < mask {
        return Ok(Some((usize::from(first), 1)));
    }
    let mut value = usize::from(mask);
    for (i, b) in buf[1..].iter().enumerate() {
        if i >= MAX_INT_OCTETS {
            return Err(Refusal::Malformed("integer too long"));
        }
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 2)));
        }
    }
    Ok(None)
}

/// A string literal's octets, as sent.
struct Str<'a> {
    huffman: bool,
    raw: &'a [u8],
    /// Where the literal ends in the buffer it was read from.
    end: usize,
}

/// A string literal (RFC 7541 §5.2), or `None` when `buf` ends inside it.
fn string(buf: &[u8]) -> Result<Option<Str<'_>>> {
    let Some(&b) = buf.first() else {
        return Ok(None);
    };
    let Some((len, n)) = integer(buf, 7)? else {
        return Ok(None);
    };
    let Some(raw) = buf.get(n..).and_then(|r| r.get(..len)) else {
        return Ok(None);
    };
    Ok(Some(Str {
        huffman: b & 0x80 != 0,
        raw,
        end: n + len,
    }))
}

/// Walk a Huffman-coded string (RFC 7541 §5.2, Appendix B) for up to `max` symbols: how many
/// it holds (all of them when `max` is not reached) and its first octet. The padding must be
/// at most 7 bits of the EOS code's prefix, and EOS itself may not appear.
fn huffman(s: &[u8], max: usize) -> Result<(usize, Option<u8>)> {
    // Bits not yet decoded, aligned to bit 63; `bits` of them are real.
    let mut acc = 0u64;
    let mut bits = 0u32;
    let mut next = 0;
    let mut count = 0;
    let mut first = None;
    while count < max {
        while bits <= 56 && next < s.len() {
            acc |= u64::from(s[next]) << (56 - bits);
            bits += 8;
            next += 1;
        }
        if bits == 0 {
            break;
        }
        // The next 32 bits, padded with ones past the end (the EOS prefix).
        let pad = u32::MAX.checked_shr(bits).unwrap_or(0);
        let window = (acc >> 32) as u32 | pad;
        // The common short codes by table; the rest (and the first symbol, whose value
        // matters) by search.
        let short = u32::from(CANON.short[(window >> 24) as usize]);
        let (len, sym) = if short != 0 && count != 0 {
            (short, 0)
        } else {
            CANON.symbol(window)
        };
        if len > bits {
            // What is left is padding.
            if bits > 7 || window != u32::MAX {
                return Err(Refusal::Malformed("Huffman padding"));
            }
            break;
        }
        if sym == 256 {
            return Err(Refusal::Malformed("Huffman EOS"));
        }
        if count == 0 {
            first = u8::try_from(sym).ok();
        }
        count += 1;
        acc <<= len;
        bits -= len;
    }
    Ok((count, first))
}

/// The Huffman code in canonical form: it is canonical (codes of one length are consecutive,
/// in symbol order, each length following on from the shorter ones), so the code lengths
/// alone define it.
struct Canon {
    /// Symbols by code length, then by value.
    syms: [u16; 257],
    /// Per length: the first code, how many codes, and where their symbols start in `syms`.
    first: [u32; 31],
    count: [u32; 31],
    base: [u16; 31],
    /// By the next 8 bits: the length of the code they start with when it is at most 8
    /// bits long (0 when longer). No such code is EOS.
    short: [u8; 256],
}

impl Canon {
    const fn new() -> Self {
        let mut count = [0u32; 31];
        let mut s = 0;
        while s < 257 {
            count[HUFFMAN_LENGTHS[s] as usize] += 1;
            s += 1;
        }
        let mut first = [0u32; 31];
        let mut base = [0u16; 31];
        let mut syms = [0u16; 257];
        let mut code = 0u32;
        let mut placed = 0usize;
        let mut len = 1;
        while len <= 30 {
            code = (code + count[len - 1]) << 1;
            first[len] = code;
            base[len] = placed as u16;
            let mut s = 0;
            while s < 257 {
                if HUFFMAN_LENGTHS[s] as usize == len {
                    syms[placed] = s as u16;
                    placed += 1;
                }
                s += 1;
            }
            len += 1;
        }
        let mut short = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            let mut len = 5;
            while len <= 8 {
                let code = (b >> (8 - len)) as u32;
                if code >= first[len] && code - first[len] < count[len] {
                    short[b] = len as u8;
                    break;
                }
                len += 1;
            }
            b += 1;
        }
        Self {
            syms,
            first,
            count,
            base,
            short,
        }
    }

    /// The code at the top of `window`: its length and symbol. Every 30-bit prefix is a
    /// code or starts with one, so this always finds one.
    fn symbol(&self, window: u32) -> (u32, u16) {
        let mut len = 5;
        while len < 30 {
            let code = window >> (32 - len);
            let i = code.wrapping_sub(self.first[len as usize]);
            if i < self.count[len as usize] {
                return (
                    len,
                    self.syms[usize::from(self.base[len as usize]) + i as usize],
                );
            }
            len += 1;
        }
        let code = window >> 2;
        let i = code.wrapping_sub(self.first[30]).min(self.count[30] - 1);
        (30, self.syms[usize::from(self.base[30]) + i as usize])
    }
}

static CANON: Canon = Canon::new();

/// The length in bits of each symbol's code, 0–255 and EOS (RFC 7541 Appendix B).
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// The static table's names (RFC 7541 Appendix A); its values do not matter here.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

#[cfg(test)]
mod tests {
    use super::*;

    // --- frames and HPACK by hand ---

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn headers(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | u8::from(end_stream), stream, block)
    }

    fn data(stream: u32, body: &[u8]) -> Vec<u8> {
        frame(0x0, 0, stream, body)
    }

    /// A raw (not Huffman) string literal.
    fn lit(s: &[u8]) -> Vec<u8> {
        assert!(s.len() < 127);
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }

    /// The Huffman code of one symbol, from the canonical table.
    fn code(sym: u16) -> (u32, u32) {
        let len = u32::from(HUFFMAN_LENGTHS[usize::from(sym)]);
        let base = usize::from(CANON.base[len as usize]);
        let rank = CANON.syms[base..].iter().position(|s| *s == sym).unwrap();
        (CANON.first[len as usize] + rank as u32, len)
    }

    /// A Huffman-coded string literal.
    pub(super) fn huff(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for b in s {
            let (c, l) = code(u16::from(*b));
            acc = acc << l | u64::from(c);
            bits += l;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        let mut v = vec![0x80 | out.len() as u8];
        v.extend_from_slice(&out);
        v
    }

    /// A request head: GET-less POST /public, fields given as raw representations.
    fn request_block(extra: &[u8]) -> Vec<u8> {
        // :method POST (3), :scheme http (6), :path / (4), :authority literal.
        let mut b = vec![0x83, 0x86, 0x84, 0x01];
        b.extend(lit(b"user"));
        b.extend_from_slice(extra);
        b
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    /// Feed `raw` whole and one octet at a time: both readings must agree.
    fn judge(raw: &[u8]) -> Result<()> {
        let whole = Shadow::new(true).feed(raw);
        let mut s = Shadow::new(true);
        let mut bytewise = Ok(());
        for b in raw {
            bytewise = s.feed(std::slice::from_ref(b));
            if bytewise.is_err() {
                break;
            }
        }
        assert_eq!(whole, bytewise, "whole vs octet by octet");
        whole
    }

    fn with_trailers(request_extra: &[u8], trailers: &[u8]) -> Result<()> {
        request_then_trailers(&request_block(request_extra), trailers)
    }

    fn request_then_trailers(request: &[u8], trailers: &[u8]) -> Result<()> {
        judge(&connection(&[
            headers(1, false, request),
            data(1, b"hello"),
            headers(1, true, trailers),
        ]))
    }

    // --- cases ---

    #[test]
    fn ordinary_trailers_and_requests_pass() {
        // grpc-status: 0, literal without indexing, then a name inserted and reused.
        let mut t = vec![0x00];
        t.extend(lit(b"grpc-status"));
        t.extend(lit(b"0"));
        t.push(0x40);
        t.extend(huff(b"grpc-message"));
        t.extend(huff(b"fine"));
        assert_eq!(with_trailers(&[], &t), Ok(()));
        // Requests on new streams carry pseudo-headers, indexed and literal, and may reuse
        // dynamic entries: none of that is trailers.
        let mut first = vec![0x44];
        first.extend(lit(b"/admin"));
        assert_eq!(
            judge(&connection(&[
                headers(1, true, &request_block(&first)),
                headers(3, true, &request_block(&[0xbe])),
                headers(5, true, &request_block(&[0xbe])),
            ])),
            Ok(())
        );
    }

    #[test]
    fn a_literal_path_in_trailers_is_refused() {
        let mut t = vec![0x00];
        t.extend(lit(b":path"));
        t.extend(lit(b"/admin"));
        assert_eq!(with_trailers(&[], &t), Err(Refusal::PseudoInTrailers));
        // Huffman-coded, and with incremental indexing.
        let mut t = vec![0x40];
        t.extend(huff(b":path"));
        t.extend(huff(b"/admin"));
        assert_eq!(with_trailers(&[], &t), Err(Refusal::PseudoInTrailers));
        // Never indexed, after a regular field.
        let mut t = vec![0x00];
        t.extend(lit(b"x-t"));
        t.extend(lit(b"1"));
        t.push(0x10);
        t.extend(lit(b":authority"));
        t.extend(lit(b"evil"));
        assert_eq!(with_trailers(&[], &t), Err(Refusal::PseudoInTrailers));
    }

    #[test]
    fn a_path_from_the_static_table_in_trailers_is_refused() {
        // Indexed `:path /` (4), `:method GET` (2), `:status 200` (8).
        for idx in [0x84u8, 0x82, 0x88] {
            assert_eq!(with_trailers(&[], &[idx]), Err(Refusal::PseudoInTrailers));
        }
        // Its name only (literal value), without indexing.
        let mut t = vec![0x04];
        t.extend(lit(b"/admin"));
        assert_eq!(with_trailers(&[], &t), Err(Refusal::PseudoInTrailers));
        // `accept-charset` (15), the first regular name, passes.
        assert_eq!(with_trailers(&[], &[0x8f]), Ok(()));
    }

    #[test]
    fn a_path_from_the_dynamic_table_in_trailers_is_refused() {
        // The request inserts `:path: /admin` (62), then `x-a: 1` (62; `:path` moves to 63).
        let mut req = vec![0x44];
        req.extend(lit(b"/admin"));
        assert_eq!(with_trailers(&req, &[0xbe]), Err(Refusal::PseudoInTrailers));
        let mut t = vec![0x0f, 0x2f]; // literal without indexing, name index 62
        t.extend(lit(b"/x"));
        assert_eq!(with_trailers(&req, &t), Err(Refusal::PseudoInTrailers));
        req.push(0x40);
        req.extend(lit(b"x-a"));
        req.extend(lit(b"1"));
        assert_eq!(with_trailers(&req, &[0xbe]), Ok(()));
        assert_eq!(with_trailers(&req, &[0xbf]), Err(Refusal::PseudoInTrailers));
        // An entry from an earlier stream's block counts as well.
        let mut first = vec![0x44];
        first.extend(lit(b"/admin"));
        assert_eq!(
            judge(&connection(&[
                headers(1, true, &request_block(&first)),
                headers(3, false, &request_block(&[])),
                headers(3, true, &[0xbe]),
            ])),
            Err(Refusal::PseudoInTrailers)
        );
    }

    #[test]
    fn continuation_splits_are_followed() {
        let mut t = vec![0x00];
        t.extend(lit(b"x-t"));
        t.extend(lit(b"1"));
        t.push(0x00);
        t.extend(lit(b":path"));
        t.extend(lit(b"/admin"));
        // Cut inside the `:path` literal's name, and at each point in turn.
        for cut in 1..t.len() {
            let frames = connection(&[
                headers(1, false, &request_block(&[])),
                frame(HEADERS, 0x1, 1, &t[..cut]),
                frame(CONTINUATION, END_HEADERS, 1, &t[cut..]),
            ]);
            assert_eq!(judge(&frames), Err(Refusal::PseudoInTrailers), "cut {cut}");
        }
        // A clean block across three frames passes; the request head itself split too.
        let req = request_block(&[]);
        let frames = connection(&[
            frame(HEADERS, 0, 1, &req[..3]),
            frame(CONTINUATION, 0, 1, &req[3..5]),
            frame(CONTINUATION, END_HEADERS, 1, &req[5..]),
            data(1, b"x"),
            frame(HEADERS, 0x1, 1, &t[..3]),
            frame(CONTINUATION, END_HEADERS, 1, &t[3..7]),
        ]);
        assert_eq!(judge(&frames), Ok(()));
        // A block that ends inside a field, or is interrupted, is malformed.
        let frames = connection(&[headers(1, true, &req[..req.len() - 1])]);
        assert!(matches!(judge(&frames), Err(Refusal::Malformed(_))));
        let frames = connection(&[frame(HEADERS, 0, 1, &req[..3]), data(1, b"x")]);
        assert!(matches!(judge(&frames), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn padding_and_priority_are_skipped() {
        let mut path = vec![0x00];
        path.extend(lit(b":path"));
        path.extend(lit(b"/admin"));
        for (t, want) in [(path, Err(Refusal::PseudoInTrailers)), (vec![0x8f], Ok(()))] {
            // PADDED | PRIORITY: pad length, dependency (stream 0) and weight, then padding
            // that looks like a `:path` field.
            let mut p = vec![4, 0, 0, 0, 0, 16];
            p.extend_from_slice(&t);
            p.extend_from_slice(&[0x84; 4]);
            let frames = connection(&[
                headers(1, false, &request_block(&[])),
                frame(HEADERS, END_HEADERS | 0x1 | PADDED | PRIORITY, 1, &p),
            ]);
            assert_eq!(judge(&frames), want);
        }
        // Padding longer than the frame.
        let frames = connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x84])]);
        assert!(matches!(judge(&frames), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn a_self_dependent_block_is_skipped_as_h2_does() {
        // h2 resets the stream without decoding: the `:path` inserted there never enters its
        // table, so index 62 stays unknown here too.
        let mut req = vec![0x44];
        req.extend(lit(b"/admin"));
        let mut p = vec![0, 0, 0, 1, 16];
        p.extend(request_block(&req));
        let frames = connection(&[
            frame(HEADERS, END_HEADERS | PRIORITY, 1, &p),
            headers(3, false, &request_block(&[])),
            headers(3, true, &[0xbe]),
        ]);
        assert!(matches!(judge(&frames), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn table_size_updates_are_followed() {
        // Size 64 (first in the block): `:path: /a` (39 octets), then `x-b: 1` (36) evicts it.
        let mut req = vec![0x3f, 0x21];
        req.extend(request_block(&[0x44]));
        req.extend(lit(b"/a"));
        assert_eq!(
            request_then_trailers(&req, &[0xbe]),
            Err(Refusal::PseudoInTrailers)
        );
        req.push(0x40);
        req.extend(lit(b"x-b"));
        req.extend(lit(b"1"));
        assert_eq!(request_then_trailers(&req, &[0xbe]), Ok(()));
        assert!(matches!(
            request_then_trailers(&req, &[0xbf]),
            Err(Refusal::Malformed("table index out of range"))
        ));
        // Size 0 empties the table; an entry larger than the table is not added.
        let mut req = vec![0x44];
        req.extend(lit(b"/admin"));
        req.extend([0x40]);
        req.extend(lit(&[b'x'; 100]));
        req.extend(lit(b"1"));
        let mut trailers = vec![0x20, 0x3f, 0xe1, 0x1f]; // 0, then back to 4096
        trailers.push(0xbe);
        assert!(matches!(
            with_trailers(&req, &trailers),
            Err(Refusal::Malformed("table index out of range"))
        ));
        // Above the advertised 4096, or after a field: malformed.
        assert!(matches!(
            with_trailers(&[], &[0x3f, 0xe2, 0x1f]),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            with_trailers(&[], &[0x8f, 0x20]),
            Err(Refusal::Malformed(_))
        ));
        // At the end of a block (h2 allows it).
        assert_eq!(with_trailers(&[], &[0x8f]), Ok(()));
        assert_eq!(judge(&connection(&[headers(1, true, &[0x20])])), Ok(()));
        // An oversized entry with a small table: 4096 fits exactly, then evicts all.
        let mut h = Hpack::new(HEADER_TABLE_SIZE);
        h.insert(Entry {
            name_len: 1,
            pseudo: true,
            size: 4096,
        });
        assert_eq!((h.table.len(), h.size), (1, 4096));
        h.insert(Entry {
            name_len: 1,
            pseudo: false,
            size: 33,
        });
        assert_eq!((h.table.len(), h.size), (1, 33));
    }

    #[test]
    fn huffman_follows_rfc_7541() {
        // Appendix B, a few codes, and EOS.
        for (sym, want) in [
            (0u16, (0x1ff8, 13)),
            (1, (0x7f_ffd8, 23)),
            (9, (0xff_ffea, 24)),
            (10, (0x3fff_fffc, 30)),
            (u16::from(b' '), (0x14, 6)),
            (u16::from(b'0'), (0x0, 5)),
            (u16::from(b'a'), (0x3, 5)),
            (u16::from(b':'), (0x5c, 7)),
            (256, (0x3fff_ffff, 30)),
        ] {
            assert_eq!(code(sym), want, "symbol {sym}");
        }
        // C.4.1: "www.example.com".
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman(&www, usize::MAX), Ok((15, Some(b'w'))));
        assert_eq!(huffman(&www, 1), Ok((1, Some(b'w'))));
        // C.6.1: "Mon, 21 Oct 2013 20:13:21 GMT".
        let date = [
            0xd0, 0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b,
            0x81, 0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff,
        ];
        assert_eq!(huffman(&date, usize::MAX), Ok((29, Some(b'M'))));
        let every: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for s in [
            &b""[..],
            b"a",
            b":path",
            b"\x00\xff\x80 ~",
            b"custom-key",
            &every,
        ] {
            let h = huff(s);
            assert_eq!(
                huffman(&h[1..], usize::MAX),
                Ok((s.len(), s.first().copied()))
            );
        }
        // Padding that is not ones, longer than 7 bits, or EOS itself.
        for bad in [
            &[0x00][..],
            &[0xff],
            &[0x1f, 0xff],
            &[0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(huffman(bad, usize::MAX).is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn other_frames_and_refusals() {
        // A big DATA frame fed in pieces, a PING, an unknown frame type: skipped.
        let mut c = connection(&[headers(1, false, &request_block(&[]))]);
        c.extend(data(1, &[0x84; 3000]));
        c.extend(frame(0x6, 0, 0, &[0; 8]));
        c.extend(frame(0xfa, 0, 1, &[0x84; 7]));
        c.extend(headers(1, true, &[0x8f]));
        assert_eq!(judge(&c), Ok(()));
        // Not the preface; PUSH_PROMISE from a client.
        assert!(Shadow::new(true).feed(b"GET / HTTP/1.1\r\n").is_err());
        assert!(
            judge(&connection(&[frame(
                PUSH_PROMISE,
                END_HEADERS,
                1,
                &[0, 0, 0, 2]
            )]))
            .is_err()
        );
        // Once refused, always refused.
        let mut s = Shadow::new(false);
        assert!(s.feed(&frame(CONTINUATION, END_HEADERS, 1, &[])).is_err());
        assert!(s.feed(&frame(0x6, 0, 0, &[0; 8])).is_err());
    }
}

/// What the shadow reading costs, in release (`cargo test --release -p mast-proxy --lib
/// h2_trailers_cost -- --ignored --nocapture`): a benchmark, not a test.
#[cfg(test)]
mod cost {
    use super::tests::huff;
    use super::*;

    #[test]
    #[ignore = "a measurement; run it in release"]
    fn h2_trailers_cost() {
        // What a client that indexes everything sends after its first request: indexed
        // fields (`:method POST`, `:scheme http`, four dynamic entries), a `:path` with a new
        // value and no indexing, and a new request id that enters the table (both Huffman;
        // the id is walked for its length).
        let mut block = vec![0x83, 0x86, 0xbe, 0xbf, 0xc0, 0xc1, 0x04];
        block.extend(huff(b"/api/users/42/todos"));
        block.push(0x40);
        block.extend(huff(b"x-request-id"));
        block.extend(huff(b"9f1c2b4e-8d7a-4c1b-a2e3-5f6d7c8b9a0e"));
        let mut f = vec![0, 0, block.len() as u8, HEADERS, END_HEADERS | 0x1];
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&block);
        let mut s = Shadow::new(false);
        for _ in 0..4 {
            s.hpack.insert(Entry {
                name_len: 10,
                pseudo: false,
                size: 60,
            });
        }
        let n = 1_000_000u32;
        let t = std::time::Instant::now();
        for i in 0..n {
            f[5..9].copy_from_slice(&(2 * i + 1).to_be_bytes());
            assert!(s.feed(std::hint::black_box(&f)).is_ok());
        }
        let per = t.elapsed() / n;
        eprintln!("h2 shadow: {per:?} per {}-byte HEADERS frame", f.len());
    }
}
