//! Two IKE peers of ours in one process with a fake clock: the initial exchanges for every
//! algorithm combination AWS allows (a table), PSK / proposal / selector mismatches, a lost
//! and a duplicated message, INVALID_KE_PAYLOAD, liveness checks, DELETE.

mod common;

use common::*;
use ike::session::{ChildSa, IkeSa, Output, Phase, State};
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use zeroize::Zeroizing;

fn check_pair(a: &ChildSa, b: &ChildSa) {
    assert_eq!(a.spi_out, b.spi_in);
    assert_eq!(a.spi_in, b.spi_out);
    assert_eq!(*a.enc_out, *b.enc_in);
    assert_eq!(*a.enc_in, *b.enc_out);
    assert_eq!(*a.int_out, *b.int_in);
    assert_eq!(*a.int_in, *b.int_out);
    assert_ne!(*a.enc_out, *a.enc_in);
    assert_eq!(a.encryption, b.encryption);
    assert_eq!(a.integrity, b.integrity);
}

#[test]
fn every_aws_algorithm_combination_establishes() {
    let encs = ["AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16"];
    let integs = ["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"];
    let groups = [2u16, 5, 14, 15, 16, 19, 20, 21, 22, 23, 24];
    let mut n = 0;
    for (k, e1) in encs.iter().enumerate() {
        for (j, i1) in integs.iter().enumerate() {
            let g = groups[(k * 4 + j) % groups.len()];
            let e2 = encs[(k + j) % 4];
            let i2 = integs[(k + 2 * j) % 4];
            let mut ca = cfg("192.0.2.1", "192.0.2.2");
            ca.p1_enc = v(&[e1]);
            ca.p1_integ = v(&[i1]);
            ca.p1_dh = vec![g];
            ca.p2_enc = v(&[e2]);
            ca.p2_integ = v(&[i2]);
            let mut cb = cfg("192.0.2.2", "192.0.2.1");
            cb.p1_dh = groups.to_vec();
            let r = establish(ca, cb);
            let b = r.b.expect("responder SA");
            assert_eq!(
                r.a.state,
                State::Established,
                "{e1}/{i1}/{g}: {}",
                logs(&r.a_out)
            );
            assert_eq!(b.state, State::Established);
            let (ca_, cb_) = (childs(r.a_out), childs(r.b_out));
            assert_eq!((ca_.len(), cb_.len()), (1, 1), "{e1}/{i1}/{g} -> {e2}/{i2}");
            check_pair(&ca_[0], &cb_[0]);
            assert_eq!(ca_[0].encryption, e2);
            let want_integ = if e2.contains("GCM") {
                None
            } else {
                Some(i2.to_string())
            };
            assert_eq!(ca_[0].integrity, want_integ);
            assert!(!ca_[0].nat_t);
            n += 1;
        }
    }
    // Every ECP and the big MODP groups once more, with the default lists.
    for g in [17u16, 18] {
        let mut ca = cfg("192.0.2.1", "192.0.2.2");
        ca.p1_dh = vec![g];
        let mut cb = cfg("192.0.2.2", "192.0.2.1");
        cb.p1_dh = vec![g];
        let r = establish(ca, cb);
        assert_eq!(r.a.state, State::Established, "group {g}");
        n += 1;
    }
    assert_eq!(n, 18);
}

#[test]
fn responder_picks_its_lowest_values_whatever_the_initiator_order() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.p2_enc = v(&["AES256-GCM-16", "AES256", "AES128"]);
    ca.p2_integ = v(&["SHA2-512", "SHA2-256"]);
    let cb = cfg("192.0.2.2", "192.0.2.1");
    let r = establish(ca, cb);
    let c = childs(r.a_out);
    assert_eq!(
        (c[0].encryption.as_str(), c[0].integrity.as_deref()),
        ("AES128", Some("SHA2-256"))
    );
}

#[test]
fn invalid_ke_payload_retries_with_the_responders_group() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.p1_dh = vec![20, 14];
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.p1_dh = vec![14, 20];
    let r = establish(ca, cb);
    assert_eq!(r.a.state, State::Established);
    assert!(logs(&r.a_out).contains("asked for DH group 14 (INVALID_KE_PAYLOAD)"));
    assert!(logs(&r.b_out).contains("INVALID_KE_PAYLOAD sent"));
}

#[test]
fn psk_mismatch_gives_authentication_failed_and_no_tunnel() {
    let ca = cfg("192.0.2.1", "192.0.2.2");
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.psk = Zeroizing::new(b"lab.tunnel_two".to_vec());
    let r = establish(ca, cb);
    assert_eq!(r.a.state, State::Closed);
    assert_eq!(r.b.unwrap().state, State::Closed);
    let (la, lb) = (logs(&r.a_out), logs(&r.b_out));
    assert!(
        la.contains("AWS tunnel detected a pre-shared key mismatch with cgw: 192.0.2.2"),
        "{la}"
    );
    assert!(
        lb.contains("AWS tunnel is sending AUTHENTICATION_FAILED as the response"),
        "{lb}"
    );
    assert!(
        lb.contains("AWS tunnel detected a pre-shared key mismatch with cgw: 192.0.2.1"),
        "{lb}"
    );
    assert!(childs(r.a_out).is_empty() && childs(r.b_out).is_empty());
}

#[test]
fn proposal_mismatch_gives_no_proposal_chosen() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.p1_enc = v(&["AES256-GCM-16"]);
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.p1_enc = v(&["AES128"]);
    let r = establish(ca, cb);
    assert!(r.b.is_none());
    assert_eq!(r.a.state, State::Closed);
    assert!(
        logs(&r.a_out).contains("No Proposal Match Found. Notifying with \"No proposal chosen\"")
    );
    assert!(logs(&r.b_out).contains("No Proposal Match Found by AWS"));
    // Phase 2 mismatch: the IKE SA comes up, the CHILD_SA does not.
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.p2_enc = v(&["AES256-GCM-16"]);
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.p2_enc = v(&["AES128"]);
    let r = establish(ca, cb);
    assert_eq!(r.a.state, State::Established);
    assert!(
        logs(&r.a_out).contains("AWS tunnel Phase 2 was unable to establish while keeping Phase 1")
    );
    assert!(childs(r.a_out).is_empty());
    assert!(
        logs(&r.b_out).contains("No Proposal Match Found. Notifying with \"No proposal chosen\"")
    );
}

#[test]
fn selectors_outside_the_tunnel_cidrs_are_ts_unacceptable_and_inside_ones_narrow() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.local_ts = net("10.9.0.0", "10.9.0.255");
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.remote_ts = net("10.1.0.0", "10.1.0.255");
    let r = establish(ca, cb);
    assert!(logs(&r.b_out).contains("TS_UNACCEPTABLE"));
    assert!(
        logs(&r.a_out).contains("AWS: Traffic Selector: TS_UNACCEPTABLE: received from responder")
    );
    assert!(childs(r.a_out).is_empty());
    // 0.0.0.0/0 offered, the responder narrows to its CIDRs.
    let ca = cfg("192.0.2.1", "192.0.2.2");
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.remote_ts = net("10.1.0.0", "10.1.0.255");
    cb.local_ts = net("10.2.0.0", "10.2.0.255");
    let r = establish(ca, cb);
    let a = childs(r.a_out);
    assert_eq!(a[0].local_ts, net("10.1.0.0", "10.1.0.255"));
    assert_eq!(a[0].remote_ts, net("10.2.0.0", "10.2.0.255"));
}

#[test]
fn lost_request_is_retransmitted_duplicate_gets_the_cached_response() {
    let mut ra = rng(3);
    let mut rb = rng(4);
    let (mut a, out) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    let init = sends(&out).remove(0);
    // IKE_SA_INIT lost: retransmitted after 1 s, then 2 s more.
    assert_eq!(a.poll_timeout(), Some(1.0));
    assert!(a.handle_timeout(0.5).is_empty());
    let re = sends(&a.handle_timeout(1.0));
    assert_eq!(re, vec![init.clone()]);
    assert_eq!(a.poll_timeout(), Some(3.0));
    let (b, out) = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1"), &init, 1.0, &mut rb);
    let mut b = b.unwrap();
    let resp = sends(&out).remove(0);
    let auth = sends(&a.handle(&resp, 1.1, &mut ra)).remove(0);
    // IKE_AUTH delivered twice: the second gets the same bytes back, no second CHILD_SA.
    let r1 = b.handle(&auth, 1.2, &mut rb);
    let r2 = b.handle(&auth, 1.3, &mut rb);
    assert_eq!(sends(&r1), sends(&r2));
    assert_eq!(childs(r2).len(), 0);
    assert_eq!(childs(r1).len(), 1);
    let resp = sends(&[])
        .into_iter()
        .chain(sends(&b.handle(&auth, 1.4, &mut rb)))
        .next()
        .unwrap();
    let done = a.handle(&resp, 1.5, &mut ra);
    assert_eq!(childs(done).len(), 1);
    assert_eq!(a.state, State::Established);
    // A duplicate response afterwards is dropped and counted.
    let before = a.dropped;
    assert!(a.handle(&resp, 1.6, &mut ra).is_empty());
    assert_eq!(a.dropped, before + 1);
}

#[test]
fn gives_up_after_the_retransmits() {
    let mut ra = rng(5);
    let (mut a, _) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    let mut t = 0.0;
    let mut sent = 0;
    while let Some(due) = a.poll_timeout() {
        t = due;
        let out = a.handle_timeout(t);
        sent += sends(&out).len();
        if a.state == State::Closed {
            assert!(
                logs(&out).contains("IKE_SA_INIT timed out after 3 retransmits"),
                "{}",
                logs(&out)
            );
        }
    }
    assert_eq!((sent, a.state), (3, State::Closed));
    assert_eq!(t, 1.0 + 2.0 + 4.0 + 8.0);
}

#[test]
fn liveness_check_and_delete() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let (mut ra, mut rb) = (rng(6), rng(7));
    let dpd = sends(&a.send_dpd(10.0, &mut ra)).remove(0);
    let reply = sends(&b.handle(&dpd, 10.1, &mut rb)).remove(0);
    assert!(a.handle(&reply, 10.2, &mut ra).is_empty());
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(b.last_rx, 10.1);
    // A tampered message is dropped and counted, never answered.
    let mut bad = sends(&a.send_dpd(11.0, &mut ra)).remove(0);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(b.handle(&bad, 11.1, &mut rb).is_empty());
    assert_eq!(b.dropped, 1);
    // DELETE of the IKE SA closes both sides.
    let mut a2 = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let del = sends(&a2.a.delete(&mut ra)).remove(0);
    let mut b2 = a2.b.take().unwrap();
    let out = b2.handle(&del, 1.0, &mut rb);
    assert_eq!(b2.state, State::Closed);
    assert_eq!(b2.phases(), (Phase::Down, Phase::Down));
    assert!(logs(&out).contains("AWS tunnel received DELETE for IKE_SA from CGW"));
    let (fresh, _) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    assert_eq!(fresh.phases(), (Phase::Negotiating, Phase::Negotiating));
}

#[test]
fn forced_nat_t_marks_the_child_sas_udp_encapsulated() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.force_nat_t = true;
    let r = establish(ca, cfg("192.0.2.2", "192.0.2.1"));
    assert!(r.a.nat_detected && r.b.as_ref().unwrap().nat_detected);
    assert!(childs(r.b_out)[0].nat_t);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let mut b = r.b.unwrap();
    let mut rb = rng(8);
    let mut ra = rng(9);
    let mut a = r.a;
    let good = sends(&a.send_dpd(1.0, &mut ra)).remove(0);
    let mut x = rng(10);
    for n in 0..2000 {
        let mut m = good.clone();
        let mut pick = [0u8; 4];
        x(&mut pick);
        let at = (u16::from_be_bytes([pick[0], pick[1]]) as usize) % m.len();
        m[at] ^= pick[2] | 1;
        if n % 7 == 0 {
            m.truncate(at);
        }
        let _ = b.handle(&m, 2.0, &mut rb);
        let _ = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1"), &m, 2.0, &mut rb);
    }
    assert!(b.dropped > 1000);
}

fn rekey_once(a: &mut IkeSa, b: &mut IkeSa, now: f64, seed: u64) -> (ChildSa, ChildSa) {
    let old = a.children()[0];
    let mut r = rng(seed);
    let req = a.rekey_child(old, None, now, &mut r);
    assert!(
        logs(&req).contains("is sending request (id="),
        "{}",
        logs(&req)
    );
    let (a_out, b_out) = pump(a, b, sends(&req), now, seed + 7);
    assert!(logs(&b_out).contains("AWS tunnel processed request (id="));
    assert!(logs(&b_out).contains("AWS tunnel is sending response (id="));
    assert!(logs(&a_out).contains("AWS tunnel processed response (id="));
    assert_eq!(downs(&a_out), vec![old], "{}", logs(&a_out));
    assert_eq!(downs(&b_out).len(), 1);
    let (mut ca, mut cb) = (childs(a_out), childs(b_out));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    (ca.remove(0), cb.remove(0))
}

#[test]
fn child_sa_rekey_with_and_without_pfs_from_either_side() {
    for pfs in [vec![], vec![14u16], vec![19]] {
        let mut ca = cfg("192.0.2.1", "192.0.2.2");
        ca.p2_dh = pfs.clone();
        let mut cb = cfg("192.0.2.2", "192.0.2.1");
        cb.p2_dh = if pfs.is_empty() { vec![] } else { vec![14, 19] };
        let r = establish(ca, cb);
        let (mut a, mut b) = (r.a, r.b.unwrap());
        let first = childs(r.a_out).remove(0);
        let (na, nb) = rekey_once(&mut a, &mut b, 100.0, 11);
        check_pair(&na, &nb);
        assert_ne!(*na.enc_out, *first.enc_out);
        assert_eq!(a.children(), vec![na.spi_in]);
        assert_eq!(b.children(), vec![nb.spi_in]);
        // The responder of the IKE SA rekeys too.
        let (nb2, na2) = rekey_once(&mut b, &mut a, 200.0, 21);
        check_pair(&na2, &nb2);
        assert_eq!(a.children(), vec![na2.spi_in]);
    }
}

#[test]
fn child_rekey_invalid_ke_payload_retries_with_the_responders_group() {
    let mut ca = cfg("192.0.2.1", "192.0.2.2");
    ca.p2_dh = vec![20, 14];
    let mut cb = cfg("192.0.2.2", "192.0.2.1");
    cb.p2_dh = vec![14, 20];
    let r = establish(ca, cb);
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let old = a.children()[0];
    let req = a.rekey_child(old, None, 10.0, &mut rng(3));
    let (a_out, b_out) = pump(&mut a, &mut b, sends(&req), 10.0, 4);
    assert!(
        logs(&a_out).contains("asked for DH group 14"),
        "{}",
        logs(&a_out)
    );
    let (ca_, cb_) = (childs(a_out), childs(b_out));
    assert_eq!((ca_.len(), cb_.len()), (1, 1));
    check_pair(&ca_[0], &cb_[0]);
}

#[test]
fn simultaneous_rekeys_leave_one_new_sa_and_delete_the_redundant_one() {
    for seed in 0..8u64 {
        let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
        let (mut a, mut b) = (r.a, r.b.unwrap());
        let (oa, ob) = (a.children()[0], b.children()[0]);
        let (mut ra, mut rb) = (rng(100 + seed), rng(200 + seed));
        let req_a = sends(&a.rekey_child(oa, None, 5.0, &mut ra));
        let req_b = sends(&b.rekey_child(ob, None, 5.0, &mut rb));
        // Both requests cross on the wire.
        let resp_b = b.handle(&req_a[0], 5.0, &mut rb);
        let resp_a = a.handle(&req_b[0], 5.0, &mut ra);
        let mut all_a = vec![];
        let mut all_b = vec![];
        all_b.extend(resp_b);
        all_a.extend(resp_a);
        let out_a = a.handle(&sends(&all_b)[0], 5.0, &mut ra);
        let out_b = b.handle(&sends(&all_a)[0], 5.0, &mut rb);
        let (dels_a, dels_b) = (sends(&out_a), sends(&out_b));
        all_a.extend(out_a);
        all_b.extend(out_b);
        // The DELETE exchanges.
        for d in dels_a {
            let o = b.handle(&d, 5.0, &mut rb);
            let back = sends(&o);
            all_b.extend(o);
            for x in back {
                all_a.extend(a.handle(&x, 5.0, &mut ra));
            }
        }
        for d in dels_b {
            let o = a.handle(&d, 5.0, &mut ra);
            let back = sends(&o);
            all_a.extend(o);
            for x in back {
                all_b.extend(b.handle(&x, 5.0, &mut rb));
            }
        }
        let la = logs(&all_a) + &logs(&all_b);
        assert!(
            la.contains("redundant SA is being deleted due to detected collision"),
            "seed {seed}: {la}"
        );
        // One CHILD_SA left, the same pair on both sides, not the old one.
        assert_eq!(a.children().len(), 1, "seed {seed}: {la}");
        assert_eq!(b.children().len(), 1, "seed {seed}");
        assert!(a.children()[0] != oa && b.children()[0] != ob);
        let ups_a = childs(all_a);
        let ups_b = childs(all_b);
        let keep_a = ups_a.iter().find(|c| c.spi_in == a.children()[0]).unwrap();
        let keep_b = ups_b.iter().find(|c| c.spi_in == b.children()[0]).unwrap();
        check_pair(keep_a, keep_b);
    }
}

/// Ten simulated days at the AWS defaults (phase 1 28800 s, phase 2 3600 s, margin 270 s,
/// fuzz 100 %), both sides taking turns: each CHILD_SA and IKE SA is rekeyed at lifetime -
/// margin - uniform(0, margin * fuzz / 100) after it was made, the observed ages stay in that
/// window and spread over it as the formula says (mean and lower-half share), and the
/// tunnel keeps one CHILD_SA pair and working keys throughout.
#[test]
fn rekeys_for_ten_simulated_days_follow_the_fuzz_formula_in_both_phases() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let (p1, p2, margin, fuzz) = (28800u32, 3600u32, 270u32, 100u32);
    let mut u = rng(77);
    let mut draw = |life: u32| {
        let mut b8 = [0u8; 8];
        u(&mut b8);
        let x = (u64::from_be_bytes(b8) >> 11) as f64 / (1u64 << 53) as f64;
        ike::rekey::rekey_at(life, margin, fuzz, x)
    };
    let (mut next_c, mut next_i) = (draw(p2), draw(p1));
    let (mut made_c, mut made_i) = (0.0, 0.0);
    let (mut ages_c, mut ages_i) = (vec![], vec![]);
    let end = 10.0 * 24.0 * 3600.0;
    let mut n = 0u64;
    loop {
        let now = f64::min(next_c, next_i);
        if now > end {
            break;
        }
        n += 1;
        assert!(a.handle_timeout(now).is_empty() && b.handle_timeout(now).is_empty());
        let (x, y) = if n.is_multiple_of(2) {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        if next_i <= next_c {
            let req = x.rekey_ike(now, &mut rng(n));
            let (xo, yo) = pump(x, y, sends(&req), now, 1000 + n);
            assert!(logs(&xo).contains("IKE SA rekeyed") && logs(&yo).contains("IKE SA rekeyed"));
            ages_i.push(now - made_i);
            made_i = now;
            next_i = now + draw(p1);
        } else {
            rekey_once(x, y, now, 1000 + n);
            ages_c.push(now - made_c);
            made_c = now;
            next_c = now + draw(p2);
        }
    }
    for (what, life, ages) in [("CHILD_SA", p2, &ages_c), ("IKE SA", p1, &ages_i)] {
        // The window written out, not taken from the code under test.
        let hi = f64::from(life - margin);
        let lo = hi - f64::from(margin * fuzz / 100);
        assert!(
            ages.iter().all(|a| (lo - 1e-6..=hi + 1e-6).contains(a)),
            "{what}: {lo}..{hi}"
        );
        let mean = ages.iter().sum::<f64>() / ages.len() as f64;
        let want = (lo + hi) / 2.0;
        assert!(
            (mean - want).abs() < (hi - lo) * 0.15,
            "{what}: mean {mean}, formula mean {want}"
        );
        let low = ages.iter().filter(|a| **a < want).count() as f64 / ages.len() as f64;
        assert!(
            (0.25..=0.75).contains(&low),
            "{what}: {low} in the lower half"
        );
    }
    assert!(
        (240..=280).contains(&ages_c.len()),
        "{} CHILD_SA rekeys",
        ages_c.len()
    );
    assert!(
        (29..=31).contains(&ages_i.len()),
        "{} IKE SA rekeys",
        ages_i.len()
    );
    assert_eq!(
        (a.ike_rekeys, b.ike_rekeys),
        (ages_i.len() as u32, ages_i.len() as u32)
    );
    assert_eq!((a.children().len(), b.children().len()), (1, 1));
    let (na, nb) = rekey_once(&mut a, &mut b, end + 1.0, 5);
    check_pair(&na, &nb);
}

#[test]
fn ike_sa_rekey_from_either_side_keeps_the_child_sas_and_keeps_working() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let children = (a.children(), b.children());
    let old = (a.spi_i, a.spi_r);
    for round in 0..4u64 {
        let (x, y) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let req = x.rekey_ike(10.0 * round as f64, &mut rng(50 + round));
        let (xo, yo) = pump(x, y, sends(&req), 10.0, 60 + round);
        assert!(logs(&xo).contains("IKE SA rekeyed"), "{}", logs(&xo));
        assert!(logs(&yo).contains("IKE SA rekeyed"), "{}", logs(&yo));
        assert!(childs(xo).is_empty() && downs(&yo).is_empty());
        assert_eq!((x.spi_i, x.spi_r), (y.spi_i, y.spi_r));
        assert_eq!(x.state, State::Established);
    }
    assert_ne!((a.spi_i, a.spi_r), old);
    assert_eq!((a.children(), b.children()), children);
    assert_eq!((a.ike_rekeys, b.ike_rekeys), (4, 4));
    // The replaced IKE SAs are forgotten once their time is over.
    assert!(a.poll_timeout().is_some());
    assert!(a.handle_timeout(100.0).is_empty());
    assert!(b.handle_timeout(100.0).is_empty());
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None));
    // The new IKE SA carries liveness checks and CHILD_SA rekeys (keys from the new SK_d).
    let dpd = sends(&a.send_dpd(100.0, &mut rng(90))).remove(0);
    let reply = sends(&b.handle(&dpd, 100.0, &mut rng(91))).remove(0);
    assert!(a.handle(&reply, 100.0, &mut rng(92)).is_empty());
    assert_eq!(a.poll_timeout(), None);
    let (na, nb) = rekey_once(&mut a, &mut b, 101.0, 93);
    check_pair(&na, &nb);
}

#[test]
fn unknown_critical_payloads_are_rejected_with_unsupported_critical_payload() {
    use ike::msg::{Message, Payload};
    let mut ra = rng(40);
    let (_a, out) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    let mut m = Message::parse(&sends(&out)[0]).unwrap();
    m.payloads.push(Payload::Other {
        ptype: 200,
        body: vec![1, 2, 3],
    });
    let mut b = m.encode();
    let off = b.len() - 7; // generic header of the last payload
    b[off + 1] |= 0x80;
    let (sa, out) = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1"), &b, 0.0, &mut rng(41));
    assert!(sa.is_none());
    let reply = Message::parse(&sends(&out)[0]).unwrap();
    assert!(matches!(
        reply.payloads[0],
        Payload::Notify { ntype: 1, ref data, .. } if data == &vec![200u8]
    ));
}

#[test]
fn cookie_round_trip_under_load() {
    use ike::cookie::Cookies;
    let from: IpAddr = "192.0.2.1".parse().unwrap();
    let mut ra = rng(70);
    let mut c = Cookies::new(&mut rng(71));
    let (mut a, out) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    let first = sends(&out).remove(0);
    // No cookie yet: the responder answers with N(COOKIE) and keeps no state.
    let reply = c.check(&first, from).unwrap_err().expect("a COOKIE reply");
    // The initiator repeats IKE_SA_INIT with the cookie, which now passes.
    let again = sends(&a.handle(&reply, 0.1, &mut ra)).remove(0);
    assert!(c.check(&again, from).is_ok());
    // From another address, or after two secret rotations, it does not.
    assert!(c.check(&again, "198.51.100.9".parse().unwrap()).is_err());
    c.rotate(&mut rng(72));
    assert!(
        c.check(&again, from).is_ok(),
        "the previous secret is still accepted"
    );
    c.rotate(&mut rng(73));
    assert!(c.check(&again, from).is_err());
    // The exchange completes with the cookie-carrying request.
    let (b, out) = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1"), &again, 0.2, &mut rng(74));
    let mut b = b.unwrap();
    let auth = sends(&a.handle(&sends(&out)[0], 0.3, &mut ra)).remove(0);
    let done = sends(&b.handle(&auth, 0.4, &mut rng(75))).remove(0);
    a.handle(&done, 0.5, &mut ra);
    assert_eq!((a.state, b.state), (State::Established, State::Established));
}

/// An RNG that also keeps a copy of every 32-byte draw (the nonces).
fn recording(
    mut inner: impl FnMut(&mut [u8]),
    seen: Rc<RefCell<Vec<Vec<u8>>>>,
) -> impl FnMut(&mut [u8]) {
    move |b: &mut [u8]| {
        inner(b);
        if b.len() == 32 {
            seen.borrow_mut().push(b.to_vec());
        }
    }
}

/// Hands datagrams to one peer; returns its outputs and what it sends back.
fn deliver(
    x: &mut IkeSa,
    msgs: &[Vec<u8>],
    now: f64,
    r: &mut impl FnMut(&mut [u8]),
) -> Vec<Output> {
    let mut out = vec![];
    for d in msgs {
        out.extend(x.handle(d, now, r));
    }
    out
}

/// After an IKE SA rekey of any kind: both peers on the same new IKE SA with the same
/// CHILD_SAs, which carries a liveness check and a CHILD_SA rekey; every replaced IKE SA is
/// gone once its time is over and nothing is left outstanding.
fn check_after_ike_rekey(
    a: &mut IkeSa,
    b: &mut IkeSa,
    children: (Vec<u32>, Vec<u32>),
    old: (u64, u64),
    why: &str,
) {
    assert_eq!((a.spi_i, a.spi_r), (b.spi_i, b.spi_r), "{why}");
    assert_ne!((a.spi_i, a.spi_r), old, "{why}");
    assert_eq!(
        (a.state, b.state),
        (State::Established, State::Established),
        "{why}"
    );
    assert_eq!(a.initiator, !b.initiator, "{why}");
    assert_eq!((a.children(), b.children()), children, "{why}");
    assert_eq!((a.ike_rekeys, b.ike_rekeys), (1, 1), "{why}");
    let t = 10.0 + ike::session::RETIRED_LINGER_S;
    assert!(
        a.handle_timeout(t).is_empty() && b.handle_timeout(t).is_empty(),
        "{why}"
    );
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None), "{why}");
    let dpd = sends(&a.send_dpd(t, &mut rng(90))).remove(0);
    let reply = sends(&b.handle(&dpd, t, &mut rng(91))).remove(0);
    assert!(a.handle(&reply, t, &mut rng(92)).is_empty(), "{why}");
    let (na, nb) = rekey_once(b, a, t, 93);
    check_pair(&na, &nb);
}

fn ike_deletes(out: &[Output]) -> usize {
    logs(out)
        .matches("AWS tunnel received DELETE for IKE_SA from CGW")
        .count()
}

/// RFC 7296 section 2.8.2, both peers notice: the two IKE SA rekey requests cross, both are
/// answered, and of the two new IKE SAs the one holding the lowest of the four nonces is
/// deleted by its creator while the creator of the other deletes the old one. Both peers end
/// on the same IKE SA with the CHILD_SAs, and over the seeds either side's SA survives.
#[test]
fn simultaneous_ike_sa_rekeys_keep_the_sa_without_the_lowest_nonce() {
    let mut survivors = [0; 2];
    for seed in 0..12u64 {
        let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
        let (mut a, mut b) = (r.a, r.b.unwrap());
        let (children, old) = ((a.children(), b.children()), (a.spi_i, a.spi_r));
        // Nonces are the only 32-byte draws (MODP-2048 exponents are 64 bytes, SPIs 8, IVs
        // 16): record them to check the rule itself, not just that both sides agree.
        let (na, nb) = (Rc::new(RefCell::new(vec![])), Rc::new(RefCell::new(vec![])));
        let (mut ra, mut rb) = (
            recording(rng(300 + seed), na.clone()),
            recording(rng(400 + seed), nb.clone()),
        );
        let req_a = sends(&a.rekey_ike(5.0, &mut ra));
        let req_b = sends(&b.rekey_ike(5.0, &mut rb));
        let (mut all_a, mut all_b) = (vec![], vec![]);
        all_b.extend(deliver(&mut b, &req_a, 5.0, &mut rb));
        all_a.extend(deliver(&mut a, &req_b, 5.0, &mut ra));
        assert!(
            logs(&all_a).contains("(IKE_REKEY) collision"),
            "{}",
            logs(&all_a)
        );
        let (resp_to_a, resp_to_b) = (sends(&all_b), sends(&all_a));
        let out_a = deliver(&mut a, &resp_to_a, 5.0, &mut ra);
        let out_b = deliver(&mut b, &resp_to_b, 5.0, &mut rb);
        // One DELETE of the old IKE SA and one of the redundant one, between them.
        let (del_a, del_b) = (sends(&out_a), sends(&out_b));
        assert_eq!(
            del_a.len() + del_b.len(),
            2,
            "seed {seed}: {}",
            logs(&out_a) + &logs(&out_b)
        );
        all_a.extend(out_a);
        all_b.extend(out_b);
        let got_b = deliver(&mut b, &del_a, 5.0, &mut rb);
        let got_a = deliver(&mut a, &del_b, 5.0, &mut ra);
        assert_eq!(
            ike_deletes(&got_a) + ike_deletes(&got_b),
            0,
            "answered by the replaced SAs, not the live one"
        );
        assert!(downs(&got_a).is_empty() && downs(&got_b).is_empty());
        assert!(deliver(&mut a, &sends(&got_b), 5.0, &mut ra).is_empty());
        assert!(deliver(&mut b, &sends(&got_a), 5.0, &mut rb).is_empty());
        let l = logs(&all_a) + &logs(&all_b);
        assert!(
            l.contains(
                "AWS tunnel (IKE_SA) redundant SA is being deleted due to detected collision"
            ),
            "{l}"
        );
        assert_eq!((a.collisions, b.collisions), (1, 1));
        let (na, nb) = (na.borrow().clone(), nb.borrow().clone());
        assert_eq!(
            (na.len(), nb.len()),
            (2, 2),
            "a request and a response nonce each"
        );
        // A's SA: A's request nonce, B's response nonce; B's SA likewise.
        let low_a = (&na[0]).min(&nb[1]);
        let low_b = (&nb[0]).min(&na[1]);
        assert_eq!(
            a.initiator,
            low_b < low_a,
            "seed {seed}: the SA with the lowest nonce goes"
        );
        survivors[usize::from(a.initiator)] += 1;
        check_after_ike_rekey(&mut a, &mut b, children, old, &format!("seed {seed}"));
    }
    assert!(survivors[0] > 0 && survivors[1] > 0, "{survivors:?}");
}

/// Section 2.8.2, only one peer notices: B answers A's rekey while its own is out, A finishes
/// first and answers B's request on the replaced SA with TEMPORARY_FAILURE; B keeps A's new
/// SA whichever of A's DELETE and the TEMPORARY_FAILURE reaches it first.
#[test]
fn ike_sa_rekey_collision_seen_by_one_side_keeps_the_first_finished_sa() {
    for delete_first in [false, true] {
        let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
        let (mut a, mut b) = (r.a, r.b.unwrap());
        let (children, old) = ((a.children(), b.children()), (a.spi_i, a.spi_r));
        let (mut ra, mut rb) = (rng(7), rng(8));
        let req_a = sends(&a.rekey_ike(5.0, &mut ra));
        let req_b = sends(&b.rekey_ike(5.0, &mut rb));
        let resp_b = sends(&deliver(&mut b, &req_a, 5.0, &mut rb));
        let out_a = deliver(&mut a, &resp_b, 5.0, &mut ra);
        assert!(logs(&out_a).contains("IKE SA rekeyed"));
        let delete_old = sends(&out_a);
        assert_eq!(delete_old.len(), 1);
        let refused = deliver(&mut a, &req_b, 5.0, &mut ra);
        assert!(
            logs(&refused).is_empty(),
            "the replaced SA logs nothing of its own"
        );
        let (first, second) = if delete_first {
            (delete_old, sends(&refused))
        } else {
            (sends(&refused), delete_old)
        };
        let mut back = deliver(&mut b, &first, 5.0, &mut rb);
        back.extend(deliver(&mut b, &second, 5.0, &mut rb));
        assert!(logs(&back).contains("IKE SA rekeyed"), "{}", logs(&back));
        assert!(downs(&back).is_empty());
        assert!(deliver(&mut a, &sends(&back), 5.0, &mut ra).is_empty());
        check_after_ike_rekey(
            &mut a,
            &mut b,
            children,
            old,
            &format!("delete first: {delete_first}"),
        );
    }
}

/// The rekey responder switches at once; when its response is lost, the initiator's
/// retransmission is answered from the replaced SA's cached response, and a lost DELETE of
/// the old IKE SA is retransmitted and answered.
#[test]
fn ike_sa_rekey_survives_a_lost_response_and_a_lost_delete() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let (children, old) = ((a.children(), b.children()), (a.spi_i, a.spi_r));
    let (mut ra, mut rb) = (rng(17), rng(18));
    assert_eq!(a.phases(), (Phase::Established, Phase::Established));
    let req = sends(&a.rekey_ike(5.0, &mut ra));
    assert_eq!(a.phases(), (Phase::Rekeying, Phase::Established));
    let lost = deliver(&mut b, &req, 5.0, &mut rb);
    assert!(logs(&lost).contains("IKE SA rekeyed"));
    let again = sends(&a.handle_timeout(6.5));
    assert_eq!(again, req, "retransmitted as is");
    let resp = sends(&deliver(&mut b, &again, 6.5, &mut rb));
    assert_eq!(resp, sends(&lost), "the cached response");
    let out = deliver(&mut a, &resp, 6.5, &mut ra);
    assert!(logs(&out).contains("IKE SA rekeyed"));
    assert_eq!(sends(&out).len(), 1, "the DELETE of the old IKE SA (lost)");
    let delete = sends(&a.handle_timeout(8.0));
    assert_eq!(delete, sends(&out));
    let answer = sends(&deliver(&mut b, &delete, 8.0, &mut rb));
    assert!(deliver(&mut a, &answer, 8.0, &mut ra).is_empty());
    check_after_ike_rekey(&mut a, &mut b, children, old, "lost response");
}

/// Section 2.25: a peer's IKE SA rekey while our CHILD_SA rekey is out gets TEMPORARY_FAILURE;
/// both finish, and the IKE SA rekey works when retried.
#[test]
fn ike_sa_rekey_during_a_child_rekey_is_refused_then_retried() {
    let r = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let (mut a, mut b) = (r.a, r.b.unwrap());
    let old = (a.spi_i, a.spi_r);
    let (mut ra, mut rb) = (rng(27), rng(28));
    let child_req = sends(&b.rekey_child(b.children()[0], None, 5.0, &mut rb));
    assert_eq!(b.phases(), (Phase::Established, Phase::Rekeying));
    let ike_req = sends(&a.rekey_ike(5.0, &mut ra));
    let refused = sends(&deliver(&mut b, &ike_req, 5.0, &mut rb));
    let out = deliver(&mut a, &refused, 5.0, &mut ra);
    assert!(
        logs(&out).contains("refused by the peer (notify 43)"),
        "{}",
        logs(&out)
    );
    assert_eq!((a.spi_i, a.spi_r), old);
    let (a_out, b_out) = pump(&mut b, &mut a, child_req, 5.0, 29);
    assert_eq!((childs(a_out).len(), childs(b_out).len()), (1, 1));
    let children = (a.children(), b.children());
    let req = a.rekey_ike(5.0, &mut ra);
    let (xo, yo) = pump(&mut a, &mut b, sends(&req), 5.0, 31);
    assert!(logs(&xo).contains("IKE SA rekeyed") && logs(&yo).contains("IKE SA rekeyed"));
    check_after_ike_rekey(&mut a, &mut b, children, old, "after a refusal");
}

/// The CHILD_SA SPIs an IKE SA draws avoid those the gateway has installed elsewhere (a
/// new SA must never replace another tunnel's): the same draws with the first SPI marked
/// taken give another SPI, for the first CHILD_SA and for a rekey.
#[test]
fn child_spis_avoid_those_installed_elsewhere() {
    let run = establish(cfg("192.0.2.1", "192.0.2.2"), cfg("192.0.2.2", "192.0.2.1"));
    let first = run.a.children()[0];
    let taken: ike::session::SpiTaken = std::sync::Arc::new(move |s| s == first);
    let mut ra = rng(1);
    let (mut a, req) = IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2"), 0.0, &mut ra).unwrap();
    a.set_spi_taken(taken);
    let mut rb = rng(2);
    let (b, resp) = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1"), &sends(&req)[0], 0.0, &mut rb);
    let mut b = b.unwrap();
    let auth = sends(&a.handle(&sends(&resp)[0], 0.0, &mut ra));
    pump(&mut a, &mut b, auth, 0.0, 3);
    assert_eq!(a.children().len(), 1);
    assert_ne!(a.children()[0], first);
    let old = a.children()[0];
    let taken_now: ike::session::SpiTaken = std::sync::Arc::new(move |s| s == old || s == first);
    a.set_spi_taken(taken_now);
    let (na, _) = rekey_once(&mut a, &mut b, 1.0, 40);
    assert!(na.spi_in != old && na.spi_in != first);
}
