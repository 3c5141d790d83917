//! IKEv1 (RFC 2409) between two peers of ours in one process with a fake clock: every AWS
//! algorithm for IKEv1 in each phase, phase 1 and phase 2 rekeys, lost and duplicated
//! messages, DPD, PSK and proposal mismatches, aggressive mode, hostile datagrams.

mod common;

use common::*;
use ike::session::{ChildSa, Config, Output, Phase, State};
use ike::v1::{Isakmp, Lifetimes};

const LIFE: Lifetimes = Lifetimes {
    phase1_s: 28800,
    phase2_s: 3600,
};

fn v1cfg(local: &str, peer: &str) -> Config {
    let mut c = cfg(local, peer);
    c.p1_dh = vec![14];
    c.p2_dh = vec![14];
    c
}

/// Both peers; `b` is made by the first datagram that reaches it.
struct Pair {
    a: Isakmp,
    b: Option<Isakmp>,
    cb: Config,
    a_out: Vec<Output>,
    b_out: Vec<Output>,
    ra: ike::seeded::Fill,
    rb: ike::seeded::Fill,
    now: f64,
}

impl Pair {
    fn new(ca: Config, cb: Config) -> (Pair, Vec<Vec<u8>>) {
        let mut ra = Box::new(rng(11));
        let (a, first) = Isakmp::initiate(ca, LIFE, 0.0, &mut *ra).unwrap();
        let to_b = sends(&first);
        let p = Pair {
            a,
            b: None,
            cb,
            a_out: first,
            b_out: vec![],
            ra,
            rb: Box::new(rng(12)),
            now: 0.0,
        };
        (p, to_b)
    }

    /// Delivers to B, then A, ... until quiet; `drop` says which datagrams are lost
    /// (by running count) on the way.
    fn pump(&mut self, mut to_b: Vec<Vec<u8>>, drop: &mut dyn FnMut(usize) -> bool) {
        let mut n = 0;
        for _ in 0..16 {
            let mut to_a = vec![];
            for d in to_b.drain(..) {
                n += 1;
                if drop(n) {
                    continue;
                }
                let out = match self.b.as_mut() {
                    Some(b) => b.handle(&d, self.now, &mut *self.rb),
                    None => {
                        let (sa, out) =
                            Isakmp::respond(self.cb.clone(), LIFE, &d, self.now, &mut *self.rb);
                        self.b = sa;
                        out
                    }
                };
                to_a.extend(sends(&out));
                self.b_out.extend(out);
            }
            if to_a.is_empty() {
                return;
            }
            for d in to_a {
                n += 1;
                if drop(n) {
                    continue;
                }
                let out = self.a.handle(&d, self.now, &mut *self.ra);
                to_b.extend(sends(&out));
                self.a_out.extend(out);
            }
        }
    }

    fn b(&mut self) -> &mut Isakmp {
        self.b.as_mut().expect("B exists")
    }

    /// Runs both sides' timers from `self.now` to `until` in 0.5 s steps.
    fn run_until(&mut self, until: f64) {
        while self.now < until {
            self.now += 0.5;
            let oa = self.a.handle_timeout(self.now, &mut *self.ra);
            let to_b = sends(&oa);
            self.a_out.extend(oa);
            self.pump(to_b, &mut |_| false);
            if let Some(b) = self.b.as_mut() {
                let ob = b.handle_timeout(self.now, &mut *self.rb);
                let to_a = sends(&ob);
                self.b_out.extend(ob);
                for d in to_a {
                    let o = self.a.handle(&d, self.now, &mut *self.ra);
                    let back = sends(&o);
                    self.a_out.extend(o);
                    self.pump(back, &mut |_| false);
                }
            }
        }
    }
}

/// Takes the CHILD_SAs out of `out`, leaving the rest.
fn take_children(out: &mut Vec<Output>) -> Vec<ChildSa> {
    let (c, rest): (Vec<Output>, Vec<Output>) = std::mem::take(out)
        .into_iter()
        .partition(|o| matches!(o, Output::ChildUp(_)));
    *out = rest;
    childs(c)
}

/// Keys and SPIs of the two ends of one SA pair match.
fn check_pair(a: &ChildSa, b: &ChildSa) {
    assert_eq!(a.spi_out, b.spi_in);
    assert_eq!(a.spi_in, b.spi_out);
    assert_eq!(a.enc_out, b.enc_in);
    assert_eq!(a.int_out, b.int_in);
    assert_eq!(a.enc_in, b.enc_out);
    assert_eq!(a.int_in, b.int_out);
    assert_ne!(a.enc_out, a.enc_in);
    assert_eq!(a.encryption, b.encryption);
    assert_eq!(a.integrity, b.integrity);
}

fn established(ca: Config, cb: Config) -> (Pair, ChildSa, ChildSa) {
    let (mut p, to_b) = Pair::new(ca, cb);
    p.pump(to_b, &mut |_| false);
    let la = logs(&p.a_out);
    let lb = logs(&p.b_out);
    assert_eq!(p.a.state(), State::Established, "A: {la}\nB: {lb}");
    assert_eq!(p.b().state(), State::Established, "B: {lb}");
    let mut ca = take_children(&mut p.a_out);
    let mut cb = take_children(&mut p.b_out);
    assert_eq!((ca.len(), cb.len()), (1, 1), "A: {la}\nB: {lb}");
    let (x, y) = (ca.remove(0), cb.remove(0));
    check_pair(&x, &y);
    (p, x, y)
}

#[test]
fn main_mode_and_quick_mode_with_defaults() {
    let (p, a, b) = established(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    // The responder took the lowest of its lists (AWS rule).
    let s = p.a.suite.unwrap();
    assert_eq!(
        (s.cipher.name(), s.hash.name(), s.group),
        ("AES128", "SHA1", 14)
    );
    assert_eq!(
        (a.encryption.as_str(), a.integrity.as_deref()),
        ("AES128", Some("SHA1"))
    );
    assert!(a.switch_now && b.switch_now);
    assert!(!a.nat_t);
    assert_eq!(b.lifetime_s, Some(3600));
    assert_eq!(p.a.phases(), (Phase::Established, Phase::Established));
    assert!(logs(&p.b_out).contains("IKEv1 Main Mode complete"));
    assert!(
        p.a.wireshark_key_line()
            .unwrap()
            .starts_with(&format!("{:016x},", p.a.ci))
    );
}

#[test]
fn every_aws_algorithm_for_ikev1() {
    // Phase 1: AES-CBC only (IKEv1 has no GCM for its own messages) x every hash, groups
    // in turn; phase 2: every cipher x integrity, PFS groups in turn.
    let groups = [2u16, 14, 15, 19, 20, 21, 22, 23, 24];
    let mut k = 0;
    for enc in ["AES128", "AES256"] {
        for h in ["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"] {
            let g = groups[k % groups.len()];
            k += 1;
            let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
            ca.p1_dh = vec![g];
            let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
            cb.p1_enc = v(&[enc]);
            cb.p1_integ = v(&[h]);
            cb.p1_dh = groups.to_vec();
            let (p, _, _) = established(ca, cb);
            let s = p.a.suite.unwrap();
            assert_eq!((s.cipher.name(), s.hash.name(), s.group), (enc, h, g));
        }
    }
    for enc in ["AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16"] {
        for h in ["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"] {
            if enc.contains("GCM") && h != "SHA1" {
                continue;
            }
            let g = [2u16, 5, 14, 19, 24][k % 5];
            k += 1;
            let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
            ca.p2_dh = vec![g];
            let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
            cb.p2_enc = v(&[enc]);
            cb.p2_integ = v(&[h]);
            cb.p2_dh = vec![2, 5, 14, 19, 24];
            let (_, a, _) = established(ca, cb);
            assert_eq!(a.encryption, enc);
            let want = if enc.contains("GCM") { None } else { Some(h) };
            assert_eq!(a.integrity.as_deref(), want);
            let key =
                if enc.contains("128") { 16 } else { 32 } + if enc.contains("GCM") { 4 } else { 0 };
            assert_eq!(a.enc_out.len(), key);
        }
    }
}

#[test]
fn proposal_mismatch_in_each_phase() {
    // Phase 1: nothing in common.
    let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
    ca.p1_integ = v(&["SHA2-512"]);
    let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
    cb.p1_integ = v(&["SHA1"]);
    let (mut p, to_b) = Pair::new(ca, cb);
    p.pump(to_b, &mut |_| false);
    assert!(p.b.is_none());
    assert!(logs(&p.b_out).contains("No Proposal Match Found by AWS"));
    assert!(
        logs(&p.a_out).contains("NO-PROPOSAL-CHOSEN"),
        "{}",
        logs(&p.a_out)
    );
    assert_ne!(p.a.state(), State::Established);
    // Phase 2: phase 1 comes up, the quick mode is refused, no IPsec SA.
    let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
    ca.p2_enc = v(&["AES256"]);
    let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
    cb.p2_enc = v(&["AES128"]);
    let (mut p, to_b) = Pair::new(ca, cb);
    p.pump(to_b, &mut |_| false);
    assert_eq!(p.a.state(), State::Established);
    assert!(take_children(&mut p.a_out).is_empty());
    assert!(take_children(&mut p.b_out).is_empty());
    assert!(
        logs(&p.b_out).contains("No Proposal Match Found. Notifying with \"No proposal chosen\"")
    );
    assert!(logs(&p.a_out).contains("No Proposal Match Found"));
    // Phase 2 IDs outside the responder's networks.
    let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
    ca.local_ts = net("10.9.0.0", "10.9.255.255");
    let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
    cb.remote_ts = net("10.1.0.0", "10.1.255.255");
    let (mut p, to_b) = Pair::new(ca, cb);
    p.pump(to_b, &mut |_| false);
    assert!(take_children(&mut p.b_out).is_empty());
    assert!(logs(&p.b_out).contains("INVALID-ID-INFORMATION"));
}

#[test]
fn psk_mismatch_gives_the_aws_line_and_no_sa() {
    let ca = v1cfg("192.0.2.1", "192.0.2.2");
    let mut cb = v1cfg("192.0.2.2", "192.0.2.1");
    cb.psk = zeroize::Zeroizing::new(b"another.key".to_vec());
    let (mut p, to_b) = Pair::new(ca, cb);
    p.pump(to_b, &mut |_| false);
    assert_eq!(p.b().state(), State::InitDone);
    assert!(
        logs(&p.b_out).contains(
            "AWS tunnel payload decryption was unsuccessful due to invalid Pre-shared Key"
        )
    );
    // B tells A in the clear; A logs it and changes nothing for it (anyone can send one).
    assert!(
        logs(&p.a_out).contains("the peer notified AUTHENTICATION-FAILED in the clear"),
        "{}",
        logs(&p.a_out)
    );
    assert_eq!(p.a.state(), State::AuthSent);
    // A retransmits message 5, then gives up; B logs the line once.
    p.run_until(40.0);
    assert_eq!(p.a.state(), State::Closed);
    assert_eq!(logs(&p.b_out).matches("invalid Pre-shared Key").count(), 1);
}

#[test]
fn lost_and_duplicated_messages() {
    // Every single loss of the nine messages is recovered by retransmission.
    for lost in 1..=9 {
        let (mut p, to_b) = Pair::new(
            v1cfg("192.0.2.1", "192.0.2.2"),
            v1cfg("192.0.2.2", "192.0.2.1"),
        );
        p.pump(to_b, &mut |n| n == lost);
        p.run_until(20.0);
        let (la, lb) = (logs(&p.a_out), logs(&p.b_out));
        assert_eq!(p.a.state(), State::Established, "lost {lost}: {la}");
        let ca = take_children(&mut p.a_out);
        let cb = take_children(&mut p.b_out);
        assert_eq!((ca.len(), cb.len()), (1, 1), "lost {lost}: A {la}\nB {lb}");
        check_pair(&ca[0], &cb[0]);
    }
    // Duplicates get the same answer and change nothing.
    let (mut p, to_b) = Pair::new(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let mut seen = vec![];
    p.pump(to_b, &mut |_| false);
    for o in &p.a_out {
        if let Output::Send { data, .. } = o {
            seen.push(data.clone());
        }
    }
    let before = p.b_out.len();
    for d in &seen {
        let o = p.b.as_mut().unwrap().handle(d, 1.0, &mut rng(5));
        assert!(
            o.iter().all(|x| matches!(x, Output::Send { .. })),
            "a duplicate only gets its answer again: {o:?}"
        );
    }
    assert!(p.b_out.len() == before);
    assert_eq!(p.b().children().len(), 1);
}

#[test]
fn phase2_and_phase1_rekeys_over_days() {
    let (mut p, a0, _) = established(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let mut cur = a0.spi_in;
    // When the next rekey of each phase is due: the AWS formula (lifetime - margin -
    // uniform(0, margin * fuzz)) at the default lifetimes, margin 270 s, fuzz 100 %.
    let draw = |p: &mut Pair, life: u32, from: f64| {
        let mut b = [0u8; 8];
        (p.ra)(&mut b);
        let u = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        let wait = ike::rekey::rekey_at(life, 270, 100, u);
        let (lo, hi) = ike::rekey::window(life, 270, 100);
        assert!((lo..=hi).contains(&wait), "{wait} outside {lo}..{hi}");
        from + wait
    };
    let mut ike_due = draw(&mut p, 28800, 0.0);
    let mut child_due = draw(&mut p, 3600, 0.0);
    let mut t;
    // About three days: nine phase 1 rekeys, the phase 2 rekeys in between.
    for day in 0..9 {
        while child_due < ike_due {
            t = child_due;
            p.run_until(t);
            let out = p.a.rekey_child(cur, p.now, &mut *p.ra);
            let to_b = sends(&out);
            p.a_out.extend(out);
            p.pump(to_b, &mut |_| false);
            let ca = take_children(&mut p.a_out);
            let cb = take_children(&mut p.b_out);
            assert_eq!(
                (ca.len(), cb.len()),
                (1, 1),
                "day {day}: {}",
                logs(&p.a_out)
            );
            check_pair(&ca[0], &cb[0]);
            assert!(
                !cb[0].switch_now,
                "the responder of a rekey keeps the old SA for sending"
            );
            assert_eq!(p.a.phases().1, Phase::Rekeying);
            // The old pair lingers, then is deleted by its rekey's initiator.
            p.run_until(t + 15.0);
            assert_eq!(p.a.children(), vec![ca[0].spi_in]);
            assert_eq!(p.b().children(), vec![cb[0].spi_in]);
            assert!(downs(&p.a_out).contains(&cur));
            cur = ca[0].spi_in;
            child_due = draw(&mut p, 3600, t);
        }
        p.run_until(ike_due);
        // Phase 1 rekey by B (a new main mode from the responder's side, adopted by A's
        // ISAKMP SA) and by A.
        let old_ci = p.a.ci;
        let out = p.a.rekey_ike(p.now, &mut *p.ra);
        let to_b = sends(&out);
        p.a_out.extend(out);
        // B learns of A's new main mode the way the shell does: a new responder SA that
        // takes over when it is established.
        let mut rb = rng(99 + day);
        let (nb, ob) = Isakmp::respond(p.cb.clone(), LIFE, &to_b[0], p.now, &mut rb);
        let mut nb = nb.expect("B answers the new main mode");
        let mut to_a = sends(&ob);
        for _ in 0..4 {
            let mut to_nb = vec![];
            for d in to_a.drain(..) {
                let o = p.a.handle(&d, p.now, &mut *p.ra);
                to_nb.extend(sends(&o));
                p.a_out.extend(o);
            }
            for d in to_nb {
                let o = nb.handle(&d, p.now, &mut rb);
                to_a.extend(sends(&o));
            }
        }
        assert_eq!(nb.state(), State::Established);
        assert_ne!(p.a.ci, old_ci, "A moved to its new ISAKMP SA");
        assert_eq!(p.a.ike_rekeys, day as u32 + 1);
        let old_b = p.b.take().unwrap();
        let stale = nb.adopt(old_b, p.now);
        assert!(stale.is_empty());
        p.b = Some(nb);
        assert_eq!(
            p.a.children(),
            vec![cur],
            "the IPsec SAs survive the phase 1 rekey"
        );
        // The old ISAKMP SA's DELETE (sent by A) reaches B through the adopted old SA.
        let dels = sends(&p.a_out.split_off(p.a_out.len().saturating_sub(1)));
        for d in dels {
            let now = p.now;
            let o = p.b().handle(&d, now, &mut rb);
            assert!(!o.iter().any(|x| matches!(x, Output::Closed(_))));
        }
        assert_eq!(p.b().state(), State::Established);
        // DPD on the new SA works.
        let v0 = p.a.verified;
        let out = p.a.send_dpd(p.now, &mut *p.ra);
        let to_b = sends(&out);
        p.pump(to_b, &mut |_| false);
        assert_eq!(p.a.verified, v0 + 1, "R-U-THERE-ACK received");
        let now = p.now;
        ike_due = draw(&mut p, 28800, now);
    }
}

#[test]
fn dpd_and_delete() {
    let (mut p, a, _) = established(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let v0 = p.a.verified;
    let out = p.a.send_dpd(1.0, &mut *p.ra);
    assert_eq!(sends(&out).len(), 1);
    p.pump(sends(&out), &mut |_| false);
    assert_eq!(p.a.verified, v0 + 1);
    // The peer deletes everything: the IPsec SA goes, then the ISAKMP SA.
    let out = p.b().delete(&mut rng(3));
    let mut a_out = vec![];
    for d in sends(&out) {
        a_out.extend(p.a.handle(&d, 2.0, &mut rng(4)));
    }
    let l = logs(&a_out);
    assert!(l.contains(&format!(
        "AWS tunnel received DELETE for Phase 2 SA with SPI: {:08x}",
        a.spi_out
    )));
    assert!(l.contains("AWS tunnel received DELETE for IKE_SA from CGW"));
    assert_eq!(downs(&a_out), vec![a.spi_in]);
    assert_eq!(p.a.state(), State::Closed);
}

#[test]
fn nat_t_floats_and_encapsulates_when_forced() {
    let mut ca = v1cfg("192.0.2.1", "192.0.2.2");
    ca.force_nat_t = true;
    let (mut p, to_b) = Pair::new(ca, v1cfg("192.0.2.2", "192.0.2.1"));
    p.pump(to_b, &mut |_| false);
    let a = take_children(&mut p.a_out);
    let b = take_children(&mut p.b_out);
    assert!(a[0].nat_t && b[0].nat_t);
    assert!(p.a.nat_detected && p.b().nat_detected);
    // Messages from 5 on go to 4500.
    let floated: Vec<bool> = p
        .a_out
        .iter()
        .filter_map(|o| match o {
            Output::Send { nat_t, .. } => Some(*nat_t),
            _ => None,
        })
        .collect();
    assert_eq!(floated, vec![false, false, true, true, true]);
}

#[test]
fn aggressive_mode_is_refused() {
    let (mut p, to_b) = Pair::new(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let mut m = to_b[0].clone();
    m[18] = 4;
    let (sa, out) = Isakmp::respond(p.cb.clone(), LIFE, &m, 0.0, &mut *p.rb);
    assert!(sa.is_none());
    assert!(sends(&out).is_empty());
    assert!(logs(&out).contains("Aggressive Mode refused"));
}

#[test]
fn hostile_datagrams_never_panic_or_change_state() {
    let (mut p, _, _) = established(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let mut r = rng(77);
    let sample: Vec<Vec<u8>> = sends(&p.a_out);
    let (ci, cr) = (p.b().ci, p.b().cr);
    for i in 0..20000 {
        let mut d = sample[i % sample.len()].clone();
        let mut b = [0u8; 4];
        r(&mut b);
        let pos = usize::from(u16::from_be_bytes([b[0], b[1]])) % d.len();
        match b[2] % 4 {
            0 => d[pos] ^= b[3] | 1,
            1 => d.truncate(pos.max(1)),
            2 => d.extend_from_slice(&b),
            _ => {
                d[pos] = b[3];
                if d.len() >= 28 {
                    let l = d.len() as u32;
                    d[24..28].copy_from_slice(&l.to_be_bytes());
                }
            }
        }
        if d.len() >= 16 && i % 3 == 0 {
            d[..8].copy_from_slice(&ci.to_be_bytes());
            d[8..16].copy_from_slice(&cr.to_be_bytes());
        }
        let out = p.b().handle(&d, 5.0, &mut r);
        assert!(
            !out.iter().any(|o| matches!(
                o,
                Output::Closed(_) | Output::ChildUp(_) | Output::ChildDown { .. }
            )),
            "{out:?}"
        );
        let _ = Isakmp::respond(p.cb.clone(), LIFE, &d, 5.0, &mut r);
    }
    assert_eq!(p.b().state(), State::Established);
    assert_eq!(p.b().children().len(), 1);
}

/// The initiator takes only one of its own transforms back, unchanged: a main mode message 2
/// choosing a group we did not offer, or changing the lifetime (a responder must use
/// RESPONDER-LIFETIME for that), is dropped and changes nothing; the real answer then works.
#[test]
fn only_offered_transforms_are_accepted() {
    let (mut p, to_b) = Pair::new(
        v1cfg("192.0.2.1", "192.0.2.2"),
        v1cfg("192.0.2.2", "192.0.2.1"),
    );
    let (b, out) = Isakmp::respond(p.cb.clone(), LIFE, &to_b[0], 0.0, &mut *p.rb);
    assert!(b.is_some());
    let mm2 = sends(&out).remove(0);
    let patch = |from: [u8; 4], to: [u8; 4]| {
        let mut m = mm2.clone();
        let k = m
            .windows(4)
            .position(|w| w == from)
            .expect("attribute present");
        m[k..k + 4].copy_from_slice(&to);
        m
    };
    for bad in [
        patch([0x80, 0x04, 0x00, 14], [0x80, 0x04, 0x00, 5]),
        patch([0x80, 0x0c, 0x70, 0x80], [0x80, 0x0c, 0x70, 0x81]),
        patch([0x80, 0x0e, 0x00, 0x80], [0x80, 0x0e, 0x00, 0xc0]),
    ] {
        let d0 = p.a.dropped;
        let out = p.a.handle(&bad, 0.1, &mut *p.ra);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(p.a.dropped, d0 + 1);
        assert_eq!(p.a.state(), State::InitSent);
    }
    let out = p.a.handle(&mm2, 0.2, &mut *p.ra);
    assert_eq!(sends(&out).len(), 1, "the real message 2 still works");
}
