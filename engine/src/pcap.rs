//! Classic pcap files (the libpcap format): read all records, write records. Link types
//! Ethernet (1, with one optional 802.1Q tag), raw IP (101, 228, 229) and Linux cooked (113).
//!
//! Contract: a truncated or corrupt file is an error naming the offset; records whose
//! captured length is shorter than the packet (snaplen cut) are returned flagged `truncated`.

use std::io::{self, Write};

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;

/// One record.
#[derive(Clone, Debug)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds or nanoseconds, per [`Pcap::nanos`].
    pub ts_frac: u32,
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// A whole pcap file.
#[derive(Clone, Debug)]
pub struct Pcap {
    pub linktype: u32,
    pub nanos: bool,
    pub snaplen: u32,
    pub records: Vec<Record>,
}

impl Record {
    /// Timestamp in seconds.
    pub fn time(&self, nanos: bool) -> f64 {
        self.ts_sec as f64 + self.ts_frac as f64 / if nanos { 1e9 } else { 1e6 }
    }
}

/// Parses a pcap file image.
pub fn parse(buf: &[u8]) -> Result<Pcap, String> {
    if buf.len() < 24 {
        return Err(format!(
            "not a pcap file: {} bytes, the header needs 24",
            buf.len()
        ));
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let (le, nanos) = match magic {
        0xa1b2c3d4 => (true, false),
        0xa1b23c4d => (true, true),
        0xd4c3b2a1 => (false, false),
        0x4d3cb2a1 => (false, true),
        0x0a0d0d0a => {
            return Err(
                "pcapng files are not supported; convert with `editcap -F pcap IN OUT`".into(),
            );
        }
        m => return Err(format!("not a pcap file (magic {m:#010x})")),
    };
    let rd = |o: usize| -> u32 {
        let b: [u8; 4] = buf[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let snaplen = rd(16);
    let linktype = rd(20) & 0x0fff_ffff;
    let mut records = vec![];
    let mut o = 24;
    while o < buf.len() {
        if o + 16 > buf.len() {
            return Err(format!("truncated record header at offset {o}"));
        }
        let (ts_sec, ts_frac, incl, orig) =
            (rd(o), rd(o + 4), rd(o + 8) as usize, rd(o + 12) as usize);
        o += 16;
        if incl > 262_144 || o + incl > buf.len() {
            return Err(format!(
                "truncated or corrupt record at offset {} (length {incl})",
                o - 16
            ));
        }
        records.push(Record {
            ts_sec,
            ts_frac,
            data: buf[o..o + incl].to_vec(),
            truncated: orig > incl,
        });
        o += incl;
    }
    Ok(Pcap {
        linktype,
        nanos,
        snaplen,
        records,
    })
}

/// Reads a pcap file.
pub fn read(path: &std::path::Path) -> Result<Pcap, String> {
    let buf = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&buf).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes pcap files.
pub struct Writer<W: Write> {
    w: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, linktype: u32, nanos: bool) -> io::Result<Self> {
        let magic: u32 = if nanos { 0xa1b23c4d } else { 0xa1b2c3d4 };
        w.write_all(&magic.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&262_144u32.to_le_bytes())?;
        w.write_all(&linktype.to_le_bytes())?;
        Ok(Writer { w })
    }
    /// Writes one record made of a link-layer prefix and a packet.
    pub fn write(&mut self, ts_sec: u32, ts_frac: u32, link: &[u8], pkt: &[u8]) -> io::Result<()> {
        let n = (link.len() + pkt.len()) as u32;
        self.w.write_all(&ts_sec.to_le_bytes())?;
        self.w.write_all(&ts_frac.to_le_bytes())?;
        self.w.write_all(&n.to_le_bytes())?;
        self.w.write_all(&n.to_le_bytes())?;
        self.w.write_all(link)?;
        self.w.write_all(pkt)
    }
    pub fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Splits a frame into its link-layer prefix and the IP packet. `None` when the frame is
/// not IPv4/IPv6 (ARP, LLDP, ...) or the link type is unsupported.
pub fn split_link(linktype: u32, frame: &[u8]) -> Option<(&[u8], &[u8])> {
    match linktype {
        LINKTYPE_ETHERNET => {
            if frame.len() < 14 {
                return None;
            }
            let mut et = u16::from_be_bytes([frame[12], frame[13]]);
            let mut hl = 14;
            if et == 0x8100 && frame.len() >= 18 {
                et = u16::from_be_bytes([frame[16], frame[17]]);
                hl = 18;
            }
            matches!(et, 0x0800 | 0x86dd).then(|| frame.split_at(hl))
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => {
            matches!(frame.first().map(|b| b >> 4), Some(4) | Some(6))
                .then_some((&frame[..0], frame))
        }
        LINKTYPE_LINUX_SLL => {
            if frame.len() < 16 {
                return None;
            }
            let et = u16::from_be_bytes([frame[14], frame[15]]);
            matches!(et, 0x0800 | 0x86dd).then(|| frame.split_at(16))
        }
        _ => None,
    }
}

/// Rewrites the EtherType (or SLL protocol) of a link prefix to match the IP version of the
/// packet that follows it.
pub fn fix_link(linktype: u32, link: &mut [u8], ip_version: u8) {
    let et: u16 = if ip_version == 6 { 0x86dd } else { 0x0800 };
    let n = link.len();
    if (linktype == LINKTYPE_ETHERNET || linktype == LINKTYPE_LINUX_SLL) && n >= 2 {
        link[n - 2..].copy_from_slice(&et.to_be_bytes());
    }
}

/// Whether we can read and write this link type.
pub fn supported(linktype: u32) -> bool {
    matches!(
        linktype,
        LINKTYPE_ETHERNET | LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 | LINKTYPE_LINUX_SLL
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut w = Writer::new(Vec::new(), LINKTYPE_ETHERNET, false).unwrap();
        let eth = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00];
        w.write(5, 6, &eth, &[0x45, 0, 0, 20]).unwrap();
        let img = w.finish().unwrap();
        let p = parse(&img).unwrap();
        assert_eq!(p.linktype, 1);
        assert_eq!(p.records.len(), 1);
        let (l, ip) = split_link(1, &p.records[0].data).unwrap();
        assert_eq!(l, &eth);
        assert_eq!(ip, &[0x45, 0, 0, 20]);
        assert!(parse(&img[..30]).is_err());
        assert!(parse(b"garbage-garbage-garbage-garbage").is_err());
    }
}
