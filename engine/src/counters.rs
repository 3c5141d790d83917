//! Named drop reasons and plain (non-atomic) counters. Each worker owns its counters; readers
//! aggregate copies. Every dropped packet is counted under exactly one [`DropReason`].

use std::fmt;

macro_rules! reasons {
    ($($v:ident => $name:literal, $doc:literal;)*) => {
        /// Why a packet was dropped. The names are the counter names in logs and JSON.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $v,)* }
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$v,)*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$v => $name,)* }
            }
        }
    };
}

reasons! {
    Malformed => "malformed", "Truncated or inconsistent headers, lengths or alignment.";
    NotIp => "not_ip", "Neither IPv4 nor IPv6 where an IP packet was expected.";
    UnknownSpi => "unknown_spi", "No inbound SA has this SPI.";
    Replay => "replay", "Sequence number already received inside the window.";
    TooOld => "too_old", "Sequence number left of the replay window.";
    IcvFailure => "icv_failure", "Integrity check failed (GCM tag or HMAC).";
    BadPadding => "bad_padding", "ESP padding bytes are not 1, 2, 3, ... (RFC 4303 section 2.4).";
    BadNextHeader => "bad_next_header", "Next header is not IPv4 (4) or IPv6 (41), or disagrees with the inner packet.";
    Dummy => "dummy_packet", "Next header 59: a dummy (TFC) packet, discarded as RFC 4303 section 2.6 says.";
    TooBig => "too_big", "Inner packet above the SA's inner MTU that may not be fragmented (DF honoured, IPv6).";
    SeqExhausted => "seq_exhausted", "The outbound SA reached its sequence-number limit and refuses to wrap.";
    SeqNotPersisted => "seq_not_persisted", "The outbound SA used every sequence number written ahead to the state directory; the next block is not on disk yet (a restart must never send a number twice).";
    ReassemblyTimeout => "reassembly_timeout", "Fragments of a datagram that never completed in time.";
    ReassemblyOverflow => "reassembly_overflow", "Fragment dropped because the reassembly table or its memory cap was full.";
    ReassemblyInvalid => "reassembly_invalid", "Overlapping, oversized or inconsistent fragments.";
    ReassemblyLimit => "reassembly_limit", "Fragment dropped: its datagram has more fragments than allowed, or its source more datagrams in progress.";
    OuterFragment => "outer_fragment", "Outer ESP fragment while outer reassembly is off.";
    NoSa => "no_sa", "No outbound SA selected for the packet.";
    PolicyMismatch => "policy_mismatch", "Decrypted inner packet whose source or destination lies outside the SA's traffic selectors (RFC 4301 section 5.2).";
    TtlExceeded => "ttl_exceeded", "Inner TTL / hop limit ran out at this hop (forwarding gateway; ICMP Time Exceeded sent).";
    IcmpRateLimited => "icmp_rate_limited", "An ICMP error that would have been sent was rate limited.";
    CryptoError => "crypto_error", "The crypto backend reported an error.";
    HandoffFull => "handoff_full", "The handoff lane to the worker owning the packet's SA was full.";
    LocalFull => "local_full", "A decrypted packet for the gateway's own tunnel address found the queue to the control thread full.";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counters of one SA (or one worker): traffic, drops by reason, and the MTU-related events
/// of shared/spec/mtu.md section 4.8.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// Inner bytes (before encryption / after decryption), as AWS TunnelDataOut/In count them.
    pub inner_bytes: u64,
    /// Bytes on the wire (outer packets).
    pub outer_bytes: u64,
    pub drops: [u64; DropReason::COUNT],
    pub frag_before_encrypt_packets: u64,
    pub frag_before_encrypt_fragments: u64,
    pub df_cleared: u64,
    pub icmp_sent: u64,
    pub mss_clamped: u64,
    pub reassembled: u64,
    pub nat_keepalives: u64,
    pub ike_passed: u64,
    pub soft_limit_events: u64,
    /// TCP/UDP checksums finished on the inside path (left for the NIC by a veth or tap
    /// sender: `wire::complete_checksum`).
    pub checksums_completed: u64,
    /// Decrypted packets for the gateway's own inside (tunnel interface) addresses, handed
    /// to the control thread; packets it sent into tunnels.
    pub local_in: u64,
    pub local_out: u64,
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Adds another set of counters into this one (aggregation across workers).
    pub fn merge(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.inner_bytes += o.inner_bytes;
        self.outer_bytes += o.outer_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.frag_before_encrypt_packets += o.frag_before_encrypt_packets;
        self.frag_before_encrypt_fragments += o.frag_before_encrypt_fragments;
        self.df_cleared += o.df_cleared;
        self.icmp_sent += o.icmp_sent;
        self.mss_clamped += o.mss_clamped;
        self.reassembled += o.reassembled;
        self.nat_keepalives += o.nat_keepalives;
        self.ike_passed += o.ike_passed;
        self.soft_limit_events += o.soft_limit_events;
        self.checksums_completed += o.checksums_completed;
        self.local_in += o.local_in;
        self.local_out += o.local_out;
    }
    /// `drops: replay=2 icv_failure=1` (only non-zero reasons), or `drops: 0`.
    pub fn drops_summary(&self) -> String {
        let parts: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| self.dropped(**r) > 0)
            .map(|r| format!("{}={}", r.name(), self.dropped(*r)))
            .collect();
        if parts.is_empty() {
            "drops: 0".into()
        } else {
            format!("drops: {}", parts.join(" "))
        }
    }
}
