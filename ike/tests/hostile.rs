//! A hostile IKE responder: our own responder's answers, rewritten before our initiator
//! sees them, choose what we never offered (RFC 7296 section 3.3.6: the responder MUST
//! accept a single proposal of the initiator's, one transform of each type, each one we
//! offered). For IKE_SA_INIT, IKE_AUTH, a CHILD_SA rekey and an IKE SA rekey, every
//! rewrite ends that exchange with a log line and no panic; the identity rewrite (the
//! control) goes through, so the tests can fail. The encrypted responses are opened and
//! sealed again with the responder's keys (its debug key-export line).

mod common;

use common::*;
use ike::keys::{Encr, Integ, SkCipher};
use ike::msg::{self, Message, Payload, ProposalWire, Transform, exchange, ptype, transform as tt};
use ike::session::{Config, IkeSa, Output, Phase, State};

/// One rewrite of the chosen proposal(s) of a response.
type Rewrite = (&'static str, fn(&mut Vec<ProposalWire>));

fn first(ps: &mut [ProposalWire]) -> &mut ProposalWire {
    &mut ps[0]
}

fn set_encr(ps: &mut [ProposalWire], id: u16, bits: Option<u16>) {
    for t in &mut first(ps).transforms {
        if t.ttype == tt::ENCR {
            t.id = id;
            t.key_bits = bits;
        }
    }
}

fn drop_type(ps: &mut [ProposalWire], ttype: u8) {
    first(ps).transforms.retain(|t| t.ttype != ttype);
}

fn push(ps: &mut [ProposalWire], ttype: u8, id: u16) {
    first(ps).transforms.push(Transform {
        ttype,
        id,
        key_bits: None,
    });
}

/// Rewrites every proposal may suffer, IKE or ESP.
fn common_rewrites() -> Vec<Rewrite> {
    vec![
        ("CBC with no integrity", |p| drop_type(p, tt::INTEG)),
        ("GCM with an integrity transform", |p| {
            set_encr(p, tt::ENCR_AES_GCM_16, Some(128))
        }),
        ("a key length we did not offer", |p| {
            set_encr(p, tt::ENCR_AES_CBC, Some(192))
        }),
        ("a cipher we did not offer (3DES)", |p| set_encr(p, 3, None)),
        ("no key length attribute", |p| {
            set_encr(p, tt::ENCR_AES_CBC, None)
        }),
        ("two ENCR transforms", |p| {
            let e = first(p).transforms[0];
            first(p).transforms.push(e);
        }),
        ("an integrity algorithm we did not offer (AES-XCBC)", |p| {
            for t in &mut first(p).transforms {
                if t.ttype == tt::INTEG {
                    t.id = 5;
                }
            }
        }),
        ("an unknown transform type", |p| push(p, 77, 1)),
        ("SPI of 3 bytes", |p| first(p).spi = vec![1, 2, 3]),
        ("two proposals", |p| {
            let c = p[0].clone();
            p.push(c);
        }),
        ("no transforms", |p| first(p).transforms.clear()),
        ("protocol AH", |p| first(p).protocol = 2),
    ]
}

fn ike_rewrites() -> Vec<Rewrite> {
    let mut v = common_rewrites();
    v.extend::<Vec<Rewrite>>(vec![
        ("no PRF", |p| drop_type(p, tt::PRF)),
        ("a PRF we did not offer (AES128-XCBC)", |p| {
            for t in &mut first(p).transforms {
                if t.ttype == tt::PRF {
                    t.id = 4;
                }
            }
        }),
        ("a DH group that is not the KE's", |p| {
            for t in &mut first(p).transforms {
                if t.ttype == tt::DH {
                    t.id = 19;
                }
            }
        }),
        ("no DH group", |p| drop_type(p, tt::DH)),
        ("an ESN transform in an IKE proposal", |p| {
            push(p, tt::ESN, 0)
        }),
    ]);
    v
}

fn esp_rewrites() -> Vec<Rewrite> {
    let mut v = common_rewrites();
    v.extend::<Vec<Rewrite>>(vec![
        ("a PRF in an ESP proposal", |p| push(p, tt::PRF, 2)),
        ("a DH group without PFS", |p| push(p, tt::DH, 14)),
        ("no ESN transform", |p| drop_type(p, tt::ESN)),
        ("SPI of 8 bytes", |p| first(p).spi = vec![1; 8]),
    ]);
    v
}

/// The initiator offers every AWS algorithm; the responder allows only AES128 + SHA1
/// (CBC, so dropping the integrity transform is the case that used to abort the daemon).
fn configs(p2_dh: Vec<u16>) -> (Config, Config) {
    let mut a = cfg("192.0.2.1", "192.0.2.2");
    let mut b = cfg("192.0.2.2", "192.0.2.1");
    a.p2_dh = p2_dh.clone();
    b.p2_dh = p2_dh;
    b.p1_enc = v(&["AES128"]);
    b.p1_integ = v(&["SHA1"]);
    b.p1_dh = vec![14];
    b.p2_enc = v(&["AES128"]);
    b.p2_integ = v(&["SHA1"]);
    (a, b)
}

/// The responder's outbound SK cipher, from its key-export line (AES128-CBC + SHA1-96).
fn responder_cipher(b: &IkeSa) -> SkCipher {
    let line = b.wireshark_key_line().unwrap();
    let f: Vec<&str> = line.split(',').collect();
    let hex = |s: &str| hex::decode(s).unwrap();
    SkCipher::new(
        Encr::AesCbc(128),
        Some(Integ::Sha1_96),
        &hex(f[3]),
        &hex(f[6]),
    )
    .unwrap()
}

/// Opens an SK message, lets `f` change its inner payloads and seals it again.
fn reseal(raw: &[u8], c: &SkCipher, f: impl FnOnce(&mut Vec<Payload>)) -> Vec<u8> {
    reseal_with(raw, c, |_| {}, f)
}

/// [`reseal`], letting `fh` change the header first (it is authenticated too).
fn reseal_with(
    raw: &[u8],
    c: &SkCipher,
    fh: impl FnOnce(&mut msg::Header),
    f: impl FnOnce(&mut Vec<Payload>),
) -> Vec<u8> {
    let m = Message::parse(raw).unwrap();
    let Some(Payload::Sk { first, body }) = m.payloads.last() else {
        panic!("not an SK message");
    };
    let head = &raw[..raw.len() - body.len()];
    let mut ps = msg::parse_chain(*first, &c.open(head, body).unwrap()).unwrap();
    f(&mut ps);
    let mut plain = vec![];
    let first = msg::encode_chain(&ps, &mut plain);
    let body_len = c.body_len(plain.len());
    let mut h = m.header;
    fh(&mut h);
    h.next = ptype::SK;
    h.length = (msg::Header::LEN + 4 + body_len) as u32;
    let mut out = Message {
        header: h,
        payloads: vec![],
    }
    .encode();
    out[16] = ptype::SK;
    out[24..28].copy_from_slice(&h.length.to_be_bytes());
    out.extend_from_slice(&[first, 0]);
    out.extend_from_slice(&((4 + body_len) as u16).to_be_bytes());
    let sealed = c.seal(&out, &plain, &[7; 16]).unwrap();
    out.extend_from_slice(&sealed);
    out
}

fn rewrite_sa(ps: &mut [Payload], f: fn(&mut Vec<ProposalWire>)) {
    for p in ps {
        if let Payload::Sa(v) = p {
            f(v);
        }
    }
}

fn ike_up(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::IkeUp))
}

/// The identity rewrite (the control: the exchange must succeed) and then `v`.
fn with_control(v: Vec<Rewrite>) -> impl Iterator<Item = Rewrite> {
    std::iter::once(("control", (|_| {}) as fn(&mut Vec<ProposalWire>))).chain(v)
}

/// Our initiator's IKE_SA_INIT answered by our responder: (initiator, responder, the
/// response). Later steps draw from fresh seeded RNGs.
fn init_exchange() -> (IkeSa, IkeSa, Vec<u8>) {
    let (ca, cb) = configs(vec![]);
    let (a, req) = IkeSa::initiate(ca, 0.0, &mut rng(1)).unwrap();
    let (b, resp) = IkeSa::respond(cb, &sends(&req)[0], 0.0, &mut rng(2));
    (a, b.unwrap(), sends(&resp).remove(0))
}

/// IKE_SA_INIT: the response is plaintext; a rewritten choice closes the half-open SA.
#[test]
fn ike_sa_init_response_with_an_unoffered_choice_ends_the_exchange() {
    let mut control = true;
    for (why, f) in with_control(ike_rewrites()) {
        let (mut a, _, resp) = init_exchange();
        let mut ra = rng(11);
        let mut m = Message::parse(&resp).unwrap();
        rewrite_sa(&mut m.payloads, f);
        let out = a.handle(&m.encode(), 0.0, &mut ra);
        if control {
            assert_eq!(a.state, State::AuthSent, "{why}: {}", logs(&out));
            control = false;
            continue;
        }
        assert_eq!(a.state, State::Closed, "{why}: {}", logs(&out));
        assert!(sends(&out).is_empty(), "{why}: nothing more is sent");
        assert!(!ike_up(&out), "{why}");
        assert!(
            logs(&out).contains("IKE_SA_INIT:") || a.dropped > 0,
            "{why}: {}",
            logs(&out)
        );
    }
}

/// IKE_AUTH: the IKE SA is authenticated, the CHILD_SA choice is not ours: no CHILD_SA,
/// the AWS phase 2 line, the IKE SA stays and keeps answering.
#[test]
fn ike_auth_response_with_an_unoffered_child_choice_installs_nothing() {
    let mut control = true;
    for (why, f) in with_control(esp_rewrites()) {
        let (mut a, mut b, resp) = init_exchange();
        let (mut ra, mut rb) = (rng(11), rng(12));
        let auth = sends(&a.handle(&resp, 0.0, &mut ra)).remove(0);
        let auth_resp = sends(&b.handle(&auth, 0.0, &mut rb)).remove(0);
        let bad = reseal(&auth_resp, &responder_cipher(&b), |ps| rewrite_sa(ps, f));
        let out = a.handle(&bad, 0.0, &mut ra);
        assert!(ike_up(&out), "{why}: the IKE SA itself is fine");
        assert_eq!(a.state, State::Established, "{why}");
        let children = childs(out.into_iter().collect());
        if control {
            assert_eq!(children.len(), 1, "{why}");
            control = false;
            continue;
        }
        assert!(children.is_empty(), "{why}");
        // The IKE SA still works: a liveness check is answered.
        let dpd = sends(&a.send_dpd(1.0, &mut ra)).remove(0);
        let reply = sends(&b.handle(&dpd, 1.0, &mut rb)).remove(0);
        assert!(a.handle(&reply, 1.0, &mut ra).is_empty(), "{why}");
    }
}

/// IKE_AUTH with selectors wider than ours: refused as TS_UNACCEPTABLE on our side.
#[test]
fn ike_auth_response_with_wider_selectors_installs_nothing() {
    let (mut ca, mut cb) = configs(vec![]);
    ca.local_ts = net("10.0.0.0", "10.0.0.255");
    ca.remote_ts = net("10.1.0.0", "10.1.0.255");
    cb.local_ts = ca.remote_ts;
    cb.remote_ts = ca.local_ts;
    let (mut ra, mut rb) = (rng(1), rng(2));
    let (mut a, req) = IkeSa::initiate(ca, 0.0, &mut ra).unwrap();
    let (b, resp) = IkeSa::respond(cb, &sends(&req)[0], 0.0, &mut rb);
    let mut b = b.unwrap();
    let auth = sends(&a.handle(&sends(&resp)[0], 0.0, &mut ra)).remove(0);
    let auth_resp = sends(&b.handle(&auth, 0.0, &mut rb)).remove(0);
    let bad = reseal(&auth_resp, &responder_cipher(&b), |ps| {
        for p in ps {
            if let Payload::TsR(v) = p {
                v[0] = net("0.0.0.0", "255.255.255.255");
            }
        }
    });
    let out = a.handle(&bad, 0.0, &mut ra);
    assert!(ike_up(&out));
    assert!(childs(out.into_iter().collect()).is_empty());
}

/// CHILD_SA rekey (with PFS): a rewritten choice leaves the old CHILD_SA in place and the
/// IKE SA established; the next rekey, untouched, works.
#[test]
fn child_rekey_response_with_an_unoffered_choice_keeps_the_old_sa() {
    let mut rewrites = esp_rewrites();
    rewrites.push(("a DH group that is not the KE's", |p| {
        for t in &mut first(p).transforms {
            if t.ttype == tt::DH {
                t.id = 19;
            }
        }
    }));
    rewrites.push(("no DH group with PFS", |p| drop_type(p, tt::DH)));
    for (k, (why, f)) in rewrites.into_iter().enumerate() {
        let (ca, cb) = configs(vec![14]);
        let mut run = establish(ca, cb);
        let (a, b) = (&mut run.a, run.b.as_mut().unwrap());
        let old = a.children();
        let seed = 100 + k as u64;
        let req = a.rekey_child(old[0], None, 1.0, &mut rng(seed));
        let c = responder_cipher(b);
        let resp = sends(&b.handle(&sends(&req)[0], 1.0, &mut rng(seed + 1))).remove(0);
        let bad = reseal(&resp, &c, |ps| rewrite_sa(ps, f));
        let out = a.handle(&bad, 1.0, &mut rng(seed + 2));
        assert!(childs(out).is_empty(), "{why}");
        assert_eq!(a.children(), old, "{why}: the old CHILD_SA stays");
        assert_eq!(a.state, State::Established, "{why}");
        // The next rekey, untouched, goes through.
        let req = a.rekey_child(old[0], None, 2.0, &mut rng(seed + 3));
        let (a_out, _) = pump(a, b, sends(&req), 2.0, seed + 4);
        assert_eq!(childs(a_out).len(), 1, "{why}: a clean rekey still works");
    }
}

/// IKE SA rekey: a rewritten choice keeps the old IKE SA on our side.
#[test]
fn ike_rekey_response_with_an_unoffered_choice_keeps_the_old_ike_sa() {
    let mut rewrites = ike_rewrites();
    rewrites.retain(|(why, _)| *why != "SPI of 3 bytes");
    rewrites.push(("SPI of 3 bytes", |p| first(p).spi = vec![1, 2, 3]));
    rewrites.push(("SPI of 0 bytes", |p| first(p).spi.clear()));
    for (k, (why, f)) in rewrites.into_iter().enumerate() {
        let (ca, cb) = configs(vec![]);
        let mut run = establish(ca, cb);
        let (a, b) = (&mut run.a, run.b.as_mut().unwrap());
        let spis = (a.spi_i, a.spi_r);
        let seed = 200 + k as u64;
        let req = a.rekey_ike(1.0, &mut rng(seed));
        let c = responder_cipher(b);
        let resp = sends(&b.handle(&sends(&req)[0], 1.0, &mut rng(seed + 1))).remove(0);
        let bad = reseal(&resp, &c, |ps| rewrite_sa(ps, f));
        let out = a.handle(&bad, 1.0, &mut rng(seed + 2));
        assert!(
            logs(&out).contains("IKE SA rekey:"),
            "{why}: {}",
            logs(&out)
        );
        assert_eq!((a.spi_i, a.spi_r), spis, "{why}: the old IKE SA stays");
        assert_eq!(a.state, State::Established, "{why}");
        assert_eq!(a.ike_rekeys, 0, "{why}");
    }
}

/// An SA payload with no proposal does not parse: the response is dropped and counted,
/// nothing else changes (the request is still retransmitted).
#[test]
fn an_empty_sa_payload_is_malformed_and_dropped() {
    let (mut a, _, resp) = init_exchange();
    let mut ra = rng(11);
    let mut m = Message::parse(&resp).unwrap();
    rewrite_sa(&mut m.payloads, |p| p.clear());
    assert!(a.handle(&m.encode(), 0.0, &mut ra).is_empty());
    assert_eq!((a.state, a.dropped), (State::InitSent, 1));
    assert_eq!(sends(&a.handle_timeout(1.5)).len(), 1, "retransmitted");
}

/// A response whose exchange type is not our outstanding request's (a liveness check
/// answered as CREATE_CHILD_SA, a CHILD_SA rekey answered as INFORMATIONAL) is dropped and
/// counted; the request stays outstanding and the genuine response still completes it.
#[test]
fn a_response_of_another_exchange_is_dropped_and_the_request_stays() {
    let (ca, cb) = configs(vec![]);
    let mut run = establish(ca, cb);
    let (a, b) = (&mut run.a, run.b.as_mut().unwrap());
    let c = responder_cipher(b);
    let req = sends(&a.send_dpd(1.0, &mut rng(1))).remove(0);
    let resp = sends(&b.handle(&req, 1.0, &mut rng(2))).remove(0);
    let bad = reseal_with(
        &resp,
        &c,
        |h| h.exchange = exchange::CREATE_CHILD_SA,
        |_| {},
    );
    let dropped = a.dropped;
    assert!(a.handle(&bad, 1.1, &mut rng(3)).is_empty());
    assert_eq!(a.dropped, dropped + 1);
    assert!(
        a.poll_timeout().is_some(),
        "the liveness check is still outstanding"
    );
    assert!(a.handle(&resp, 1.2, &mut rng(4)).is_empty());
    assert_eq!(a.poll_timeout(), None);
    let old = a.children();
    let req = sends(&a.rekey_child(old[0], None, 2.0, &mut rng(5))).remove(0);
    let resp = sends(&b.handle(&req, 2.0, &mut rng(6))).remove(0);
    let bad = reseal_with(&resp, &c, |h| h.exchange = exchange::INFORMATIONAL, |_| {});
    assert!(a.handle(&bad, 2.1, &mut rng(7)).is_empty());
    assert_eq!(a.dropped, dropped + 2);
    assert_eq!(
        a.phases().1,
        Phase::Rekeying,
        "the rekey is still outstanding"
    );
    let out = a.handle(&resp, 2.2, &mut rng(8));
    assert_eq!(childs(out).len(), 1, "the genuine response completes it");
}
