//! The `espd` commands that work on files: `pcap encrypt`, `pcap decrypt`, `mtu`, `crypto`.
//! This is an I/O shell: it reads files, takes the OS RNG and the capture timestamps as
//! `now`, and drives the sans-IO core.

use crate::static_sa;
use engine::counters::{Counters, DropReason};
use engine::crypto::Backend;
use engine::esp::{self, Outer};
use engine::frag::{ReasmLimits, Reassembler};
use engine::pcap;
use engine::pipeline::{self, OutboundCtx, Protected, Unprotected};
use engine::pkt::{BufPool, PacketBuf};
use engine::sa::{Direction, InboundSa, OutboundSa, SaConfig};
use std::collections::HashMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// A command failure: the message is printed as is and the process exits 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError(s)
    }
}

/// Options of `espd pcap encrypt`.
#[derive(Debug)]
pub struct EncryptOpts {
    pub sa_file: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub sa_name: Option<String>,
    pub icmp_out: Option<PathBuf>,
    pub backend: Backend,
    pub json: bool,
    /// Debug only: write the SA's keys in Wireshark's `esp_sa` format.
    pub export_keys: Option<PathBuf>,
}

/// Options of `espd pcap decrypt`.
#[derive(Debug)]
pub struct DecryptOpts {
    pub sa_file: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub backend: Backend,
    pub outer_reassembly: bool,
    pub reasm_timeout: f64,
    pub json: bool,
    /// Debug only: write the SAs' keys in Wireshark's `esp_sa` format.
    pub export_keys: Option<PathBuf>,
}

/// Writes the `esp_sa` lines of `sas` to `path` and says so on stderr (key export is a
/// debugging aid: it is never on by default and its use is always logged).
fn export_keys(path: &Path, sas: &[&SaConfig]) -> Result<(), CliError> {
    let text: String = sas
        .iter()
        .map(|s| crate::tunnel_log::esp_sa_line(s) + "\n")
        .collect();
    std::fs::write(path, text).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    eprintln!(
        "WARNING: keys of {} SA(s) exported to {} (--export-keys, for debugging with tshark)",
        sas.len(),
        path.display()
    );
    Ok(())
}

fn os_seed() -> Result<[u8; 32], CliError> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s)
        .map_err(|e| CliError(format!("cannot read the OS random generator: {e}")))?;
    Ok(s)
}

fn load(path: &Path) -> Result<Vec<SaConfig>, CliError> {
    static_sa::load_sa_file(path).map_err(|e| CliError(e.to_string()))
}

fn check_backend(b: Backend) -> Result<(), CliError> {
    if b.available() {
        Ok(())
    } else {
        Err(CliError(format!(
            "crypto backend {} is not available here (install libipsec-mb-dev and rebuild); use --backend rustcrypto",
            b.name()
        )))
    }
}

fn check_linktype(path: &Path, linktype: u32) -> Result<(), CliError> {
    if pcap::supported(linktype) {
        return Ok(());
    }
    Err(CliError(format!(
        "{}: link type {linktype} is not supported; allowed: 1 (Ethernet), 101/228/229 (raw IP), 113 (Linux cooked)",
        path.display()
    )))
}

fn create(path: &Path) -> Result<BufWriter<std::fs::File>, CliError> {
    std::fs::File::create(path)
        .map(BufWriter::new)
        .map_err(|e| CliError(format!("{}: cannot create: {e}", path.display())))
}

/// A capture file at `path` in the input's format, link type and timestamp unit.
fn writer_like(
    input: &pcap::Pcap,
    path: &Path,
) -> Result<pcap::Writer<BufWriter<std::fs::File>>, CliError> {
    pcap::Writer::with_format(create(path)?, input.format, input.linktype, input.nanos)
        .map_err(|e| CliError(format!("{}: {e}", path.display())))
}

fn summary_line(cfg: &SaConfig, backend: &str, c: &Counters) -> String {
    format!(
        "sa \"{}\" {} spi {:#010x} {}{} [{}]: packets {} inner_bytes {} outer_bytes {} fragmented {} ({} fragments) mss_clamped {} reassembled {} icmp_sent {} {}",
        cfg.name,
        if cfg.direction == Direction::Out {
            "out"
        } else {
            "in"
        },
        cfg.spi,
        cfg.suite,
        if cfg.nat_t { " nat-t" } else { "" },
        backend,
        c.packets,
        c.inner_bytes,
        c.outer_bytes,
        c.frag_before_encrypt_packets,
        c.frag_before_encrypt_fragments,
        c.mss_clamped,
        c.reassembled,
        c.icmp_sent,
        c.drops_summary()
    )
}

fn counters_json(cfg: &SaConfig, c: &Counters) -> serde_json::Value {
    let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .filter(|r| c.dropped(**r) > 0)
        .map(|r| (r.name().to_string(), c.dropped(*r).into()))
        .collect();
    serde_json::json!({
        "name": cfg.name, "spi": cfg.spi, "direction": if cfg.direction == Direction::Out {"out"} else {"in"},
        "suite": cfg.suite.to_string(), "packets": c.packets, "inner_bytes": c.inner_bytes, "outer_bytes": c.outer_bytes,
        "frag_before_encrypt_packets": c.frag_before_encrypt_packets,
        "frag_before_encrypt_fragments": c.frag_before_encrypt_fragments,
        "df_cleared": c.df_cleared, "mss_clamped": c.mss_clamped, "reassembled": c.reassembled, "icmp_sent": c.icmp_sent,
        "drops": drops, "drops_total": c.total_drops(),
    })
}

/// `espd pcap encrypt`.
pub fn pcap_encrypt(o: &EncryptOpts) -> Result<(), CliError> {
    check_backend(o.backend)?;
    let sas = load(&o.sa_file)?;
    let cfg = match &o.sa_name {
        Some(n) => sas.into_iter().find(|s| &s.name == n).ok_or_else(|| {
            CliError(format!(
                "{}: --sa-name {n:?}: no SA with that name",
                o.sa_file.display()
            ))
        })?,
        None => sas
            .into_iter()
            .find(|s| s.direction == Direction::Out)
            .ok_or_else(|| {
                CliError(format!(
                    "{}: no SA with direction = \"out\" to encrypt with",
                    o.sa_file.display()
                ))
            })?,
    };
    if cfg.direction != Direction::Out {
        return Err(CliError(format!(
            "{}: sa \"{}\": direction is \"in\"; encrypt needs an \"out\" SA",
            o.sa_file.display(),
            cfg.name
        )));
    }
    let input = pcap::read(&o.input)?;
    check_linktype(&o.input, input.linktype)?;
    if let Some(p) = &o.export_keys {
        export_keys(p, &[&cfg])?;
    }
    let mut sa = OutboundSa::new(cfg, o.backend, &os_seed()?)
        .map_err(|e| CliError(format!("{}: {e}", o.sa_file.display())))?;
    let backend = sa.transform.backend().describe();
    let mut w = writer_like(&input, &o.output)?;
    let mut iw = match &o.icmp_out {
        Some(p) => Some(writer_like(&input, p)?),
        None => None,
    };
    let mut pool = BufPool::new(64, 2048);
    let mut ctx = OutboundCtx::default();
    let (mut out, mut icmp) = (Vec::new(), Vec::new());
    let mut not_ip = 0u64;
    let mut link_buf = Vec::new();
    for rec in &input.records {
        let Some((link, ip)) = pcap::split_link(input.linktype, &rec.data) else {
            not_ip += 1;
            continue;
        };
        let mut pkt = pool.get();
        if pkt.set(ip).is_err() {
            pkt = PacketBuf::from_slice(ip);
        }
        let now = rec.time(input.nanos);
        let r = pipeline::protect(&mut sa, &mut ctx, now, pkt, &mut pool, &mut out, &mut icmp);
        if let Protected::Sent {
            soft_limit: true, ..
        } = r
        {
            eprintln!(
                "sa \"{}\": soft sequence-number limit reached: rekey this SA",
                sa.cfg.name
            );
        }
        link_buf.clear();
        link_buf.extend_from_slice(link);
        let v = if sa.cfg.tunnel_src.is_ipv4() { 4 } else { 6 };
        pcap::fix_link(input.linktype, &mut link_buf, v);
        for p in out.drain(..) {
            w.write(rec.ts_sec, rec.ts_frac, &link_buf, p.bytes())
                .map_err(|e| CliError(format!("{}: {e}", o.output.display())))?;
            pool.put(p);
        }
        for p in icmp.drain(..) {
            if let Some(iw) = iw.as_mut() {
                // The error goes back towards the sender: swap the MAC addresses.
                let mut l = link.to_vec();
                if input.linktype == pcap::LINKTYPE_ETHERNET && l.len() >= 12 {
                    let (a, b) = l.split_at_mut(6);
                    a.swap_with_slice(&mut b[..6]);
                }
                pcap::fix_link(input.linktype, &mut l, p.bytes()[0] >> 4);
                iw.write(rec.ts_sec, rec.ts_frac, &l, p.bytes())
                    .map_err(|e| CliError(e.to_string()))?;
            }
            pool.put(p);
        }
    }
    w.finish()
        .map_err(|e| CliError(format!("{}: {e}", o.output.display())))?;
    if let Some(iw) = iw {
        iw.finish().map_err(|e| CliError(e.to_string()))?;
    }
    eprintln!("{}", summary_line(&sa.cfg, &backend, &sa.counters));
    if not_ip > 0 {
        eprintln!("skipped {not_ip} frames that are not IPv4/IPv6");
    }
    if o.json {
        let v = serde_json::json!({"backend": backend, "sas": [counters_json(&sa.cfg, &sa.counters)], "skipped_not_ip": not_ip});
        println!("{v}");
    }
    Ok(())
}

/// `espd pcap decrypt`.
pub fn pcap_decrypt(o: &DecryptOpts) -> Result<(), CliError> {
    check_backend(o.backend)?;
    let sas = load(&o.sa_file)?;
    let mut table: HashMap<u32, InboundSa> = HashMap::new();
    let mut order = vec![];
    for cfg in sas.into_iter().filter(|s| s.direction == Direction::In) {
        order.push(cfg.spi);
        let spi = cfg.spi;
        let sa = InboundSa::new(cfg, o.backend)
            .map_err(|e| CliError(format!("{}: {e}", o.sa_file.display())))?;
        table.insert(spi, sa);
    }
    if table.is_empty() {
        return Err(CliError(format!(
            "{}: no SA with direction = \"in\" to decrypt with",
            o.sa_file.display()
        )));
    }
    if let Some(p) = &o.export_keys {
        let cfgs: Vec<&SaConfig> = order.iter().map(|spi| &table[spi].cfg).collect();
        export_keys(p, &cfgs)?;
    }
    let input = pcap::read(&o.input)?;
    check_linktype(&o.input, input.linktype)?;
    let mut w = writer_like(&input, &o.output)?;
    let limits = ReasmLimits {
        timeout: o.reasm_timeout,
        ..Default::default()
    };
    let mut outer_reasm = Reassembler::new(limits);
    let mut inner_reasm = Reassembler::new(limits);
    let mut global = Counters::default();
    let mut not_esp = 0u64;
    let mut last_now = 0.0;
    for rec in &input.records {
        let now = rec.time(input.nanos);
        last_now = now;
        let expired = outer_reasm.expire(now);
        global.drops[DropReason::ReassemblyTimeout as usize] += expired;
        global.drops[DropReason::ReassemblyTimeout as usize] += inner_reasm.expire(now);
        global.drops[DropReason::ReassemblyOverflow as usize] +=
            outer_reasm.take_evicted() + inner_reasm.take_evicted();
        let Some((link, ip)) = pcap::split_link(input.linktype, &rec.data) else {
            not_esp += 1;
            continue;
        };
        let mut pkt = PacketBuf::from_slice(ip);
        let mut class = esp::classify_outer(pkt.bytes());
        if class == Ok(Outer::Fragment) {
            if !o.outer_reassembly {
                global.drop(DropReason::OuterFragment);
                continue;
            }
            let mut whole = PacketBuf::with_capacity(0);
            match outer_reasm.insert(now, pkt.bytes(), &mut whole) {
                Ok(true) => {
                    global.reassembled += 1;
                    pkt = whole;
                    class = esp::classify_outer(pkt.bytes());
                }
                Ok(false) => continue,
                Err(r) => {
                    global.drop(r);
                    continue;
                }
            }
        }
        let (esp_off, spi) = match class {
            Ok(Outer::Esp { esp_off, spi, .. }) => (esp_off, spi),
            Ok(Outer::Ike) => {
                global.ike_passed += 1;
                continue;
            }
            Ok(Outer::NatKeepalive) => {
                global.nat_keepalives += 1;
                continue;
            }
            Ok(_) => {
                not_esp += 1;
                continue;
            }
            Err(r) => {
                global.drop(r);
                continue;
            }
        };
        let Some(sa) = table.get_mut(&spi) else {
            global.drop(DropReason::UnknownSpi);
            continue;
        };
        // Trim link padding, then strip the outer headers.
        if let Some(info) = engine::wire::parse_ip(pkt.bytes()) {
            pkt.truncate(info.total_len);
        }
        pkt.pull_front(esp_off)
            .expect("classify_outer checked the length");
        match pipeline::unprotect(sa, &mut inner_reasm, now, &mut pkt) {
            Ok(Unprotected::Inner) => {
                let mut l = link.to_vec();
                pcap::fix_link(input.linktype, &mut l, pkt.bytes()[0] >> 4);
                w.write(rec.ts_sec, rec.ts_frac, &l, pkt.bytes())
                    .map_err(|e| CliError(format!("{}: {e}", o.output.display())))?;
            }
            Ok(Unprotected::Held) | Err(_) => {}
        }
    }
    // Whatever is still waiting at the end of the file never completed.
    let end = last_now + o.reasm_timeout.max(0.0) + 1.0;
    global.drops[DropReason::ReassemblyTimeout as usize] +=
        outer_reasm.expire(end) + inner_reasm.expire(end);
    w.finish()
        .map_err(|e| CliError(format!("{}: {e}", o.output.display())))?;
    let backend = o.backend.describe();
    let mut js = vec![];
    for spi in &order {
        let sa = &table[spi];
        eprintln!("{}", summary_line(&sa.cfg, &backend, &sa.counters));
        js.push(counters_json(&sa.cfg, &sa.counters));
    }
    eprintln!(
        "not for any SA: {} ike {} nat_keepalives {} outer_reassembled {} other {}",
        global.drops_summary(),
        global.ike_passed,
        global.nat_keepalives,
        global.reassembled,
        not_esp
    );
    if o.json {
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .filter(|r| global.dropped(**r) > 0)
            .map(|r| (r.name().to_string(), global.dropped(*r).into()))
            .collect();
        let v = serde_json::json!({"backend": backend, "sas": js, "global_drops": drops,
            "ike": global.ike_passed, "nat_keepalives": global.nat_keepalives,
            "outer_reassembled": global.reassembled, "not_esp": not_esp});
        println!("{v}");
    }
    Ok(())
}

/// `espd mtu`.
pub fn mtu_table(json: bool) -> String {
    let rows = engine::mtu::table();
    if json {
        return serde_json::to_string_pretty(&rows).expect("plain data");
    }
    let mut s = format!(
        "{:<14} {:<11} {:<6} {:>5} {:>9} {:>17}\n",
        "encryption", "integrity", "nat_t", "mtu", "mss_ipv4", "mss_ipv6_in_ipv4"
    );
    for r in rows {
        s += &format!(
            "{:<14} {:<11} {:<6} {:>5} {:>9} {:>17}\n",
            r.encryption,
            r.integrity,
            if r.nat_t { "on" } else { "off" },
            r.mtu,
            r.mss_ipv4,
            r.mss_ipv6_in_ipv4
        );
    }
    s
}
