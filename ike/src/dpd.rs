//! Dead Peer Detection timing with the AWS meaning of the timeout (shared/spec/
//! tunnel-options.md 4.5): after 10 s without anything from the peer, send a liveness check
//! (IKEv2 empty INFORMATIONAL / IKEv1 R-U-THERE), repeat every 10 s, and declare the peer
//! dead `timeout` seconds after the last packet received from it. Sans-IO: the caller feeds
//! receive times and asks what to do at `now`.

/// Seconds of silence before the first check, and between checks.
pub const INTERVAL_S: f64 = 10.0;

/// What the caller should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Send a liveness check (the n-th since the peer went quiet, from 1).
    SendCheck(u32),
    /// The peer is dead: apply the tunnel's DPD action. `retransmits` for the AWS log line
    /// "AWS tunnel DPD timed out after {retry_count} retransmits".
    Dead {
        retransmits: u32,
    },
}

/// DPD state of one IKE SA.
#[derive(Clone, Debug)]
pub struct Dpd {
    timeout_s: f64,
    last_rx: f64,
    checks: u32,
    next_check: f64,
    dead: bool,
}

impl Dpd {
    pub fn new(now: f64, timeout_s: u32) -> Self {
        Dpd {
            timeout_s: timeout_s as f64,
            last_rx: now,
            checks: 0,
            next_check: now + INTERVAL_S,
            dead: false,
        }
    }
    /// Anything authenticated arrived from the peer.
    pub fn on_receive(&mut self, now: f64) {
        self.last_rx = now;
        self.checks = 0;
        self.next_check = now + INTERVAL_S;
    }
    /// When the caller should next call [`Dpd::poll`].
    pub fn next_deadline(&self) -> f64 {
        self.next_check.min(self.last_rx + self.timeout_s)
    }
    pub fn poll(&mut self, now: f64) -> Action {
        if self.dead {
            return Action::Nothing;
        }
        if now >= self.last_rx + self.timeout_s {
            self.dead = true;
            return Action::Dead {
                retransmits: self.checks.saturating_sub(1),
            };
        }
        if now >= self.next_check {
            self.checks += 1;
            self.next_check = now + INTERVAL_S;
            return Action::SendCheck(self.checks);
        }
        Action::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a silent peer second by second; returns (check times, death time).
    fn silent(timeout: u32) -> (Vec<f64>, f64, u32) {
        let mut d = Dpd::new(0.0, timeout);
        let mut checks = vec![];
        let mut t = 0.0;
        loop {
            t += 1.0;
            match d.poll(t) {
                Action::SendCheck(_) => checks.push(t),
                Action::Dead { retransmits } => return (checks, t, retransmits),
                Action::Nothing => {}
            }
        }
    }

    #[test]
    fn fact_4_default_timeout() {
        // Dead 40 s after the last packet, i.e. 30 s after the first unanswered check.
        let (checks, dead, retransmits) = silent(40);
        assert_eq!(checks, vec![10.0, 20.0, 30.0]);
        assert_eq!(dead, 40.0);
        assert_eq!(dead - checks[0], 30.0);
        assert_eq!(retransmits, 2);
        // The minimum of 30 s: dead at 30.
        assert_eq!(silent(30).1, 30.0);
    }

    #[test]
    fn traffic_resets_the_clock() {
        let mut d = Dpd::new(0.0, 40);
        assert_eq!(d.poll(10.0), Action::SendCheck(1));
        d.on_receive(15.0);
        assert_eq!(d.poll(24.0), Action::Nothing);
        assert_eq!(d.poll(25.0), Action::SendCheck(1));
        assert_eq!(d.next_deadline(), 35.0);
        assert_eq!(d.poll(55.0), Action::Dead { retransmits: 0 });
        assert_eq!(d.poll(60.0), Action::Nothing);
    }
}
