//! [`ChannelSlab`]: the loop's slab of channels, addressed by versioned [`Token`]s.
//!
//! An entry is *taken out* of its slot while its handler runs and put back afterwards.
//! While it is out, the slot remembers whether someone asked to remove it, so removal from
//! inside any handler is safe and takes effect when the entry comes back.
//!
//! An entry is one allocation holding the channel and its handler side by side, so that
//! taking it out and putting it back (twice per event) moves a pointer, not the channel.

use crate::channel::{Channel, Handler, Token};

/// A channel and its handler, as stored (boxed: [`Entry`]) in a slot of the
/// [`ChannelSlab`]; built with a concrete handler type `H` and used as `dyn Handler`.
pub(crate) struct ChannelEntry<H: ?Sized = dyn Handler> {
    /// The descriptor and its interest.
    pub(crate) channel: Channel,
    /// What reacts to the channel's events.
    pub(crate) handler: H,
}

/// A boxed [`ChannelEntry`]: what moves in and out of a slot.
pub(crate) type Entry = Box<ChannelEntry>;

/// What a slot holds.
enum SlotState {
    /// Free; `next_free` links the free list.
    Vacant { next_free: Option<u32> },
    /// A live channel.
    Occupied {
        /// `None` while the entry is taken out (reserved but not filled yet, or in dispatch).
        entry: Option<Entry>,
        /// Removal was asked for while the entry was taken out: drop it when it comes back.
        removal_pending: bool,
    },
}

/// One slot of the slab: its state and the generation every token for it must carry.
struct Slot {
    /// Bumped each time the slot is freed, so old tokens no longer match.
    generation: u32,
    state: SlotState,
}

/// What [`ChannelSlab::take_out`] found.
pub(crate) enum TakeOutcome {
    /// The entry, now out of its slot; put it back with [`ChannelSlab::fill`] or free it.
    Taken(Entry),
    /// The token is live but its entry is already out (a nested call, further up the
    /// stack, holds it).
    AlreadyTaken,
    /// No such channel (never existed, removed, or an older generation).
    Gone,
}

/// What [`ChannelSlab::remove`] did.
pub(crate) enum Removal {
    /// The entry was in its slot: the slot is freed and the entry handed over, for the
    /// caller to deregister and drop.
    Now(Entry),
    /// The entry is taken out (its handler is running): it is marked, and dropped when it
    /// comes back.
    Deferred,
    /// No such channel.
    Gone,
}

/// The channels of one loop in a slab of versioned slots, so a stale [`Token`] (an event in
/// flight for a removed channel, a token kept by mistake) is not found instead of reaching
/// a newer channel in the same slot.
#[derive(Default)]
pub(crate) struct ChannelSlab {
    slots: Vec<Slot>,
    /// The first vacant slot; the others are linked through `SlotState::Vacant`.
    free_head: Option<u32>,
    /// Occupied slots.
    len: usize,
}

/// Indices stop below this so that a token can never equal the loop's reserved tokens.
const MAX_INDEX: u32 = u32::MAX - 2;

impl ChannelSlab {
    /// Number of live channels (in their slot or taken out).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Reserves a slot and returns its token; [`ChannelSlab::fill`] stores the entry.
    pub(crate) fn reserve(&mut self) -> Option<Token> {
        let index = match self.free_head {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i < MAX_INDEX)?;
                self.slots.push(Slot {
                    generation: 0,
                    state: SlotState::Vacant { next_free: None },
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        let SlotState::Vacant { next_free } = slot.state else {
            unreachable!("free list points at an occupied slot");
        };
        self.free_head = next_free;
        slot.state = SlotState::Occupied {
            entry: None,
            removal_pending: false,
        };
        self.len += 1;
        Some(Token::new(index, slot.generation))
    }

    /// The occupied slot `token` names, if its generation matches.
    fn slot_mut(&mut self, token: Token) -> Option<&mut Slot> {
        self.slots.get_mut(token.index()).filter(|s| {
            s.generation == token.generation() && matches!(s.state, SlotState::Occupied { .. })
        })
    }

    /// Takes the entry of `token` out of its slot.
    pub(crate) fn take_out(&mut self, token: Token) -> TakeOutcome {
        match self.slot_mut(token) {
            Some(Slot {
                state: SlotState::Occupied { entry, .. },
                ..
            }) => entry
                .take()
                .map_or(TakeOutcome::AlreadyTaken, TakeOutcome::Taken),
            _ => TakeOutcome::Gone,
        }
    }

    /// Whether removal of `token` was asked for while its entry was taken out.
    pub(crate) fn removal_pending(&self, token: Token) -> bool {
        match self.slots.get(token.index()) {
            Some(Slot {
                generation,
                state:
                    SlotState::Occupied {
                        removal_pending, ..
                    },
            }) => *generation == token.generation() && *removal_pending,
            _ => false,
        }
    }

    /// Puts a taken-out (or freshly reserved) entry back into its slot.
    pub(crate) fn fill(&mut self, token: Token, new: Entry) {
        if let Some(Slot {
            state: SlotState::Occupied { entry, .. },
            ..
        }) = self.slot_mut(token)
        {
            debug_assert!(entry.is_none());
            *entry = Some(new);
        }
    }

    /// Removes `token`: at once if its entry is in its slot, or when the entry comes back
    /// if it is taken out. See [`Removal`].
    pub(crate) fn remove(&mut self, token: Token) -> Removal {
        let Some(Slot {
            state:
                SlotState::Occupied {
                    entry,
                    removal_pending,
                },
            ..
        }) = self.slot_mut(token)
        else {
            return Removal::Gone;
        };
        match entry.take() {
            Some(entry) => {
                self.free(token);
                Removal::Now(entry)
            }
            None => {
                *removal_pending = true;
                Removal::Deferred
            }
        }
    }

    /// Frees the slot of `token` (whose entry is out), bumping its generation.
    pub(crate) fn free(&mut self, token: Token) {
        let head = self.free_head;
        if let Some(slot) = self.slot_mut(token) {
            slot.generation = slot.generation.wrapping_add(1);
            slot.state = SlotState::Vacant { next_free: head };
            self.free_head = Some(token.index() as u32);
            self.len -= 1;
        }
    }

    /// The tokens of every live channel (in its slot or taken out), in slot order.
    pub(crate) fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SlotState::Occupied { .. } => Some(Token::new(i as u32, s.generation)),
                SlotState::Vacant { .. } => None,
            })
    }

    /// Takes every entry out, leaving the slab empty (used on drop).
    pub(crate) fn drain(&mut self) -> Vec<Entry> {
        let out = self
            .slots
            .drain(..)
            .filter_map(|s| match s.state {
                SlotState::Occupied { entry, .. } => entry,
                SlotState::Vacant { .. } => None,
            })
            .collect();
        self.free_head = None;
        self.len = 0;
        out
    }
}
