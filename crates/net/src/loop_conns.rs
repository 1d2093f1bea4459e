//! The connections each server has on one loop, as a loop-local value: what a broadcast or
//! a "for each connection" visits on that loop, without a lock and without a hop to the
//! main loop.

use std::collections::{HashMap, HashSet};

use duo_reactor::{EventLoop, Token};

/// Tokens of the open connections on this loop, by server.
#[derive(Default)]
pub(crate) struct LoopConns {
    by_server: HashMap<u64, HashSet<Token>>,
}

impl LoopConns {
    /// Records that `token` on this loop belongs to `server`.
    pub(crate) fn insert(lp: &mut EventLoop, server: u64, token: Token) {
        if lp.local::<LoopConns>().is_none() {
            lp.insert_local(LoopConns::default());
        }
        lp.with_local::<LoopConns, _>(|_, c| {
            c.by_server.entry(server).or_default().insert(token);
        });
    }

    /// Forgets `token` (its connection closed).
    pub(crate) fn remove(lp: &mut EventLoop, server: u64, token: Token) {
        lp.with_local::<LoopConns, _>(|_, c| {
            if let Some(set) = c.by_server.get_mut(&server) {
                set.remove(&token);
                if set.is_empty() {
                    c.by_server.remove(&server);
                }
            }
        });
    }

    /// The tokens of `server`'s connections on this loop, in no particular order.
    pub(crate) fn tokens(lp: &EventLoop, server: u64) -> Vec<Token> {
        lp.local::<LoopConns>()
            .and_then(|c| c.by_server.get(&server))
            .map_or_else(Vec::new, |set| set.iter().copied().collect())
    }
}
