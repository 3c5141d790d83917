//! A set of workers driven as one: which worker owns each tunnel's SAs, and the fan-out of
//! the control plane's [`Command`]s so that every worker can route or hand over what it
//! receives (one writer per SA whatever queue a packet lands on; see [`crate::handoff`]).
//!
//! Contract: tunnel `t` is owned by worker `t % n` (spread when installed; a tunnel never
//! moves, so its sequence counter and replay window have one writer for life). The owner
//! gets the SA commands (`SetOutbound`, `AddInbound`, `SetSeqLimit`); every other worker gets
//! `RemoteOutbound` / `RemoteInbound` for them, so it hands such packets to the owner.
//! Commands that change routes or tunnel state, deletions, `ResetReplay` and `Stop` go to
//! every worker, in the order sent. [`WorkerSet::barrier`] returns once every worker has
//! applied everything sent before it.

use crate::runtime::{Command, Event, WorkerHandle, WorkerReport};

/// The control thread's handles of every worker.
#[derive(Debug, Clone)]
pub struct WorkerSet {
    handles: Vec<WorkerHandle>,
}

impl WorkerSet {
    /// A set over these handles (worker `i` is `handles[i]`).
    pub fn new(handles: Vec<WorkerHandle>) -> Self {
        assert!(!handles.is_empty(), "a worker set needs a worker");
        WorkerSet { handles }
    }

    /// Workers in the set.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: a set has at least one worker.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The worker that owns a tunnel's SAs.
    pub fn owner(&self, tunnel: u32) -> usize {
        tunnel as usize % self.handles.len()
    }

    /// Sends a command where it belongs (see the module contract). False if a worker it
    /// went to is gone. `Barrier` and `Report` go to worker 0 only: use
    /// [`WorkerSet::barrier`] and [`WorkerSet::reports`].
    pub fn send(&self, c: Command) -> bool {
        let n = self.handles.len();
        if n == 1 {
            return self.handles[0].send(c);
        }
        let others = |owner: usize| (0..n).filter(move |w| *w != owner);
        match c {
            Command::SetOutbound {
                tunnel,
                sa,
                selectors,
            } => {
                let owner = self.owner(tunnel);
                let mut ok = true;
                for w in others(owner) {
                    ok &= self.handles[w].send(Command::RemoteOutbound {
                        tunnel,
                        owner,
                        selectors: selectors.clone(),
                    });
                }
                ok & self.handles[owner].send(Command::SetOutbound {
                    tunnel,
                    sa,
                    selectors,
                })
            }
            Command::AddInbound { tunnel, sa } => {
                let owner = self.owner(tunnel);
                let spi = sa.cfg.spi;
                let mut ok = true;
                for w in others(owner) {
                    ok &= self.handles[w].send(Command::RemoteInbound { tunnel, spi, owner });
                }
                ok & self.handles[owner].send(Command::AddInbound { tunnel, sa })
            }
            Command::SetSeqLimit { tunnel, spi, limit } => {
                self.handles[self.owner(tunnel)].send(Command::SetSeqLimit { tunnel, spi, limit })
            }
            Command::SetRoute { selectors, tunnels } => self.all(|| Command::SetRoute {
                selectors: selectors.clone(),
                tunnels: tunnels.clone(),
            }),
            Command::SetTunnelState { tunnel, up } => {
                self.all(|| Command::SetTunnelState { tunnel, up })
            }
            Command::DelInbound { spi } => self.all(|| Command::DelInbound { spi }),
            Command::DelTunnel { tunnel } => self.all(|| Command::DelTunnel { tunnel }),
            Command::ResetReplay { spi } => self.all(|| Command::ResetReplay { spi }),
            Command::Stop => self.all(|| Command::Stop),
            Command::SetLocalAddr { tunnel, addr } => {
                self.all(|| Command::SetLocalAddr { tunnel, addr })
            }
            Command::SetDynamicRoutes { routes } => self.all(|| Command::SetDynamicRoutes {
                routes: routes.clone(),
            }),
            Command::Transmit { tunnel, packet } => {
                self.handles[self.owner(tunnel)].send(Command::Transmit { tunnel, packet })
            }
            c @ (Command::Barrier(_)
            | Command::Report { .. }
            | Command::RemoteOutbound { .. }
            | Command::RemoteInbound { .. }) => self.handles[0].send(c),
        }
    }

    fn all(&self, mut c: impl FnMut() -> Command) -> bool {
        let mut ok = true;
        for h in &self.handles {
            ok &= h.send(c());
        }
        ok
    }

    /// Waits until every worker has applied every command sent so far.
    pub fn barrier(&self) -> bool {
        let waits: Vec<_> = self
            .handles
            .iter()
            .map(|h| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                (h.send(Command::Barrier(tx)), rx)
            })
            .collect();
        waits
            .into_iter()
            .all(|(sent, rx)| sent && rx.recv().is_ok())
    }

    /// Every worker's report, in worker order (None for a worker that is gone).
    pub fn reports(&self, per_tunnel: bool) -> Vec<Option<WorkerReport>> {
        let asks: Vec<_> = self
            .handles
            .iter()
            .map(|h| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let sent = h.send(Command::Report {
                    per_tunnel,
                    reply: tx,
                });
                (sent, rx)
            })
            .collect();
        asks.into_iter()
            .map(|(sent, rx)| if sent { rx.recv().ok() } else { None })
            .collect()
    }

    /// The workers' reports added up (the gateway as a whole); None if any worker is gone.
    pub fn report(&self, per_tunnel: bool) -> Option<WorkerReport> {
        let mut all = self.reports(per_tunnel).into_iter();
        let mut r = all.next()??;
        for o in all {
            r.merge(&o?);
        }
        Some(r)
    }

    /// Frees the SAs the workers retired. Returns how many.
    pub fn reap(&self) -> usize {
        self.handles.iter().map(|h| h.reap()).sum()
    }

    /// The next event of any worker, if one is waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.handles.iter().find_map(|h| h.events.try_recv().ok())
    }

    /// The handle of worker `i`.
    pub fn handle(&self, i: usize) -> &WorkerHandle {
        &self.handles[i]
    }
}
