//! Capture files: classic pcap (the libpcap format, micro- or nanosecond timestamps, either
//! byte order) and pcapng (what Wireshark, tshark and dumpcap write by default), read and
//! written through the `pcap-file` crate. Link types Ethernet (1, with one optional 802.1Q
//! tag), raw IP (101, 228, 229) and Linux cooked (113).
//!
//! Contract: a truncated or corrupt file is an error naming what is wrong and where; records
//! whose captured length is shorter than the packet (snaplen cut) are returned flagged
//! `truncated`. A pcapng file must use one link type for all its interfaces; its timestamps
//! are converted with each interface's `if_tsresol` and held in nanoseconds. [`Writer`]
//! writes the format it is asked for, so a tool can answer pcapng with pcapng.

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser, PcapNgWriter};
use pcap_file::{Endianness, PcapError, TsResolution};
use std::borrow::Cow;
use std::io::{self, Write};
use std::time::Duration;

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;

/// Largest record we accept (libpcap's own maximum snaplen).
pub const MAX_RECORD: usize = 262_144;

/// The container format of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap.
    Pcap,
    /// pcapng (one section, one link type).
    PcapNg,
}

/// One record.
#[derive(Clone, Debug)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds or nanoseconds, per [`Pcap::nanos`].
    pub ts_frac: u32,
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// A whole capture file.
#[derive(Clone, Debug)]
pub struct Pcap {
    pub format: Format,
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

fn err(e: PcapError, what: &str, offset: usize) -> String {
    match e {
        PcapError::IncompleteBuffer => format!("truncated {what} at offset {offset}"),
        e => format!("corrupt {what} at offset {offset}: {e}"),
    }
}

/// Parses a pcap or pcapng file image.
pub fn parse(buf: &[u8]) -> Result<Pcap, String> {
    if buf.len() < 4 {
        return Err(format!(
            "not a capture file: {} bytes, a header needs 24",
            buf.len()
        ));
    }
    match u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) {
        0x0a0d_0d0a => parse_ng(buf),
        0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => parse_classic(buf),
        m => Err(format!("not a pcap or pcapng file (magic {m:#010x})")),
    }
}

fn parse_classic(buf: &[u8]) -> Result<Pcap, String> {
    let (mut rest, parser) = PcapParser::new(buf).map_err(|e| err(e, "pcap header", 0))?;
    let h = parser.header();
    let nanos = h.ts_resolution == TsResolution::NanoSecond;
    let mut records = vec![];
    while !rest.is_empty() {
        let off = buf.len() - rest.len();
        let (r, p) = parser
            .next_raw_packet(rest)
            .map_err(|e| err(e, "record", off))?;
        if p.data.len() > MAX_RECORD {
            return Err(format!(
                "corrupt record at offset {off}: {} bytes, more than {MAX_RECORD}",
                p.data.len()
            ));
        }
        records.push(Record {
            ts_sec: p.ts_sec,
            ts_frac: p.ts_frac,
            truncated: p.orig_len as usize > p.data.len(),
            data: p.data.into_owned(),
        });
        rest = r;
    }
    Ok(Pcap {
        format: Format::Pcap,
        linktype: u32::from(h.datalink) & 0x0fff_ffff,
        nanos,
        snaplen: h.snaplen,
        records,
    })
}

/// Ticks per second of an interface (`if_tsresol`, RFC-draft pcapng section 4.2: a power
/// of 10, or of 2 when the top bit is set; microseconds when absent).
fn ticks_per_sec(idb: &InterfaceDescriptionBlock) -> Option<u128> {
    let r = idb
        .options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
            _ => None,
        })
        .unwrap_or(6);
    if r & 0x80 != 0 {
        1u128.checked_shl(u32::from(r & 0x7f)).filter(|&t| t > 0)
    } else {
        10u128.checked_pow(u32::from(r))
    }
}

fn parse_ng(buf: &[u8]) -> Result<Pcap, String> {
    let (mut rest, mut parser) =
        PcapNgParser::new(buf).map_err(|e| err(e, "pcapng section header", 0))?;
    let mut linktype: Option<u32> = None;
    let mut snaplen = 0u32;
    let mut records = vec![];
    while !rest.is_empty() {
        let off = buf.len() - rest.len();
        let (r, block) = parser
            .next_block(rest)
            .map_err(|e| err(e, "pcapng block", off))?;
        rest = r;
        let (iface, ticks, orig, data) = match block {
            Block::InterfaceDescription(idb) => {
                let lt = u32::from(idb.linktype);
                if linktype.is_some_and(|l| l != lt) {
                    return Err(format!(
                        "pcapng block at offset {off}: a second link type ({lt}, the first is \
                         {}); split the file per interface (editcap, tshark -i)",
                        linktype.unwrap_or(0)
                    ));
                }
                linktype = Some(lt);
                snaplen = snaplen.max(idb.snaplen);
                continue;
            }
            Block::EnhancedPacket(p) => (
                p.interface_id,
                p.timestamp.as_nanos(),
                p.original_len,
                p.data,
            ),
            Block::SimplePacket(p) => (0, 0, p.original_len, p.data),
            Block::Packet(p) => (
                u32::from(p.interface_id),
                u128::from(p.timestamp),
                p.original_len,
                p.data,
            ),
            // Name resolution, statistics, journal and unknown blocks carry no packet.
            _ => continue,
        };
        let idb = parser
            .interfaces()
            .get(iface as usize)
            .ok_or_else(|| format!("pcapng packet at offset {off}: no interface {iface}"))?;
        let tps = ticks_per_sec(idb)
            .ok_or_else(|| format!("pcapng interface {iface}: unusable if_tsresol"))?;
        if data.len() > MAX_RECORD {
            return Err(format!(
                "corrupt pcapng packet at offset {off}: {} bytes, more than {MAX_RECORD}",
                data.len()
            ));
        }
        // The crate hands the raw 64-bit tick count back as "nanoseconds"; scale by the
        // interface's resolution.
        let secs = ticks / tps;
        let frac = (ticks % tps) * 1_000_000_000 / tps;
        records.push(Record {
            ts_sec: u32::try_from(secs).unwrap_or(u32::MAX),
            ts_frac: frac as u32,
            truncated: orig as usize > data.len(),
            data: data.into_owned(),
        });
    }
    Ok(Pcap {
        format: Format::PcapNg,
        linktype: linktype.unwrap_or(LINKTYPE_ETHERNET),
        nanos: true,
        snaplen,
        records,
    })
}

/// Reads a pcap or pcapng file.
pub fn read(path: &std::path::Path) -> Result<Pcap, String> {
    let buf = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&buf).map_err(|e| format!("{}: {e}", path.display()))
}

enum Sink<W: Write> {
    Pcap(PcapWriter<W>),
    Ng(PcapNgWriter<W>),
}

/// Writes capture files, record by record.
pub struct Writer<W: Write> {
    sink: Sink<W>,
    nanos: bool,
    scratch: Vec<u8>,
}

fn io_err(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
    }
}

impl<W: Write> Writer<W> {
    /// A classic pcap file (little-endian, micro- or nanosecond timestamps).
    pub fn new(w: W, linktype: u32, nanos: bool) -> io::Result<Self> {
        Self::with_format(w, Format::Pcap, linktype, nanos)
    }

    /// A file of `format`. `nanos` says what unit the `ts_frac` given to [`Writer::write`]
    /// is in; pcapng files are written with nanosecond timestamps (`if_tsresol` 9).
    pub fn with_format(w: W, format: Format, linktype: u32, nanos: bool) -> io::Result<Self> {
        let sink = match format {
            Format::Pcap => Sink::Pcap(
                PcapWriter::with_header(
                    w,
                    PcapHeader {
                        snaplen: MAX_RECORD as u32,
                        datalink: DataLink::from(linktype),
                        ts_resolution: if nanos {
                            TsResolution::NanoSecond
                        } else {
                            TsResolution::MicroSecond
                        },
                        endianness: Endianness::Little,
                        ..PcapHeader::default()
                    },
                )
                .map_err(io_err)?,
            ),
            Format::PcapNg => {
                let mut ng =
                    PcapNgWriter::with_endianness(w, Endianness::Little).map_err(io_err)?;
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::from(linktype),
                    snaplen: MAX_RECORD as u32,
                    options: vec![InterfaceDescriptionOption::IfTsResol(9)],
                };
                ng.write_pcapng_block(idb).map_err(io_err)?;
                Sink::Ng(ng)
            }
        };
        Ok(Writer {
            sink,
            nanos,
            scratch: Vec::with_capacity(2048),
        })
    }

    /// Writes one record made of a link-layer prefix and a packet.
    pub fn write(&mut self, ts_sec: u32, ts_frac: u32, link: &[u8], pkt: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(link);
        self.scratch.extend_from_slice(pkt);
        let ns = if self.nanos {
            ts_frac
        } else {
            ts_frac.saturating_mul(1000)
        };
        let ts = Duration::new(u64::from(ts_sec), ns.min(999_999_999));
        let n = self.scratch.len() as u32;
        match &mut self.sink {
            Sink::Pcap(p) => p
                .write_packet(&PcapPacket::new(ts, n, &self.scratch))
                .map_err(io_err)?,
            Sink::Ng(p) => p
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: ts,
                    original_len: n,
                    data: Cow::Borrowed(&self.scratch),
                    options: vec![],
                })
                .map_err(io_err)?,
        };
        Ok(())
    }

    pub fn finish(self) -> io::Result<W> {
        let mut w = match self.sink {
            Sink::Pcap(p) => p.into_writer(),
            Sink::Ng(p) => p.into_inner(),
        };
        w.flush()?;
        Ok(w)
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

    const ETH: [u8; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00];

    fn roundtrip(format: Format, nanos: bool) {
        let mut w = Writer::with_format(Vec::new(), format, LINKTYPE_ETHERNET, nanos).unwrap();
        w.write(5, 6, &ETH, &[0x45, 0, 0, 20]).unwrap();
        w.write(7, 999, &ETH, &[0x45, 0, 0, 21, 1]).unwrap();
        let img = w.finish().unwrap();
        let p = parse(&img).unwrap();
        assert_eq!((p.format, p.linktype, p.records.len()), (format, 1, 2));
        let (l, ip) = split_link(1, &p.records[0].data).unwrap();
        assert_eq!(l, &ETH);
        assert_eq!(ip, &[0x45, 0, 0, 20]);
        assert_eq!(p.records[1].data.len(), 19);
        let t = p.records[1].time(p.nanos);
        let want = 7.0 + 999.0 / if nanos { 1e9 } else { 1e6 };
        assert!((t - want).abs() < 1e-9, "{t} != {want}");
        assert!(!p.records[0].truncated);
        for cut in [3, 10, img.len() - 1] {
            assert!(parse(&img[..cut]).is_err(), "{format:?} cut at {cut}");
        }
    }

    #[test]
    fn pcap_roundtrip() {
        roundtrip(Format::Pcap, false);
        roundtrip(Format::Pcap, true);
    }

    #[test]
    fn pcapng_roundtrip() {
        roundtrip(Format::PcapNg, false);
        roundtrip(Format::PcapNg, true);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"garbage-garbage-garbage-garbage").is_err());
        assert!(parse(b"").is_err());
    }

    /// A pcapng file as Wireshark writes it: no `if_tsresol` option (microseconds), two
    /// interfaces of the same link type, a statistics-free tail.
    #[test]
    fn pcapng_microsecond_default_and_interfaces() {
        let mut ng = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
        for _ in 0..2 {
            ng.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::RAW, 65535))
                .unwrap();
        }
        ng.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 1,
            // 12.5 s in microsecond ticks (the crate calls the raw ticks nanoseconds).
            timestamp: Duration::from_nanos(12_500_000),
            original_len: 100,
            data: Cow::Borrowed(&[0x45, 0, 0, 100]),
            options: vec![],
        })
        .unwrap();
        let p = parse(&ng.into_inner()).unwrap();
        assert_eq!((p.format, p.linktype), (Format::PcapNg, LINKTYPE_RAW));
        assert_eq!(p.records.len(), 1);
        assert!((p.records[0].time(p.nanos) - 12.5).abs() < 1e-9);
        assert!(p.records[0].truncated, "4 of 100 bytes captured");
    }

    #[test]
    fn pcapng_mixed_link_types_are_refused() {
        let mut ng = PcapNgWriter::new(Vec::new()).unwrap();
        ng.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535))
            .unwrap();
        ng.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::LINUX_SLL, 65535))
            .unwrap();
        let e = parse(&ng.into_inner()).unwrap_err();
        assert!(
            e.contains("a second link type (113, the first is 1)"),
            "{e}"
        );
    }

    #[test]
    fn packet_on_an_undeclared_interface_is_an_error() {
        let mut ng = PcapNgWriter::new(Vec::new()).unwrap();
        ng.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::RAW, 65535))
            .unwrap();
        let mut img = ng.into_inner();
        // An EPB for interface 3, written by hand (the crate's writer refuses it).
        let data = [0x45u8, 0, 0, 4];
        let mut epb = vec![];
        for v in [6u32, 32 + 4, 3, 0, 0, 4, 4] {
            epb.extend_from_slice(&v.to_ne_bytes());
        }
        epb.extend_from_slice(&data);
        epb.extend_from_slice(&36u32.to_ne_bytes());
        img.extend_from_slice(&epb);
        let e = parse(&img).unwrap_err();
        assert!(e.contains("no interface 3"), "{e}");
    }
}
