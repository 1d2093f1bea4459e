//! The loop's slab of channels, addressed by versioned [`Token`]s.
//!
//! A registration is *taken out* of its slot while its handler runs and put back
//! afterwards. While it is out, the slot remembers whether someone asked to remove it, so
//! removal from inside any handler is safe and takes effect when the registration comes
//! back.

use crate::channel::{Channel, Handler, Token};

/// A channel and its handler, as stored in the registry.
pub(crate) struct Registration {
    pub(crate) channel: Channel,
    pub(crate) handler: Box<dyn Handler>,
}

enum State {
    Vacant {
        next_free: Option<u32>,
    },
    /// `None` while the registration is taken out for dispatch.
    Occupied {
        registration: Option<Registration>,
        remove_requested: bool,
    },
}

struct Slot {
    generation: u32,
    state: State,
}

/// What [`Registry::take`] found.
pub(crate) enum Taken {
    /// The registration, now out of its slot.
    Present(Registration),
    /// The token is live but its registration is already out (a nested call).
    Busy,
    /// No such registration (never existed, removed, or an older generation).
    Gone,
}

#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Slot>,
    free_head: Option<u32>,
    len: usize,
}

/// Indices stop below this so that a token can never equal the loop's reserved tokens.
const MAX_INDEX: u32 = u32::MAX - 2;

impl Registry {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Reserves a slot and returns its token; [`Registry::fill`] stores the registration.
    pub(crate) fn reserve(&mut self) -> Option<Token> {
        let index = match self.free_head {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i < MAX_INDEX)?;
                self.slots.push(Slot {
                    generation: 0,
                    state: State::Vacant { next_free: None },
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        let State::Vacant { next_free } = slot.state else {
            unreachable!("free list points at an occupied slot");
        };
        self.free_head = next_free;
        slot.state = State::Occupied {
            registration: None,
            remove_requested: false,
        };
        self.len += 1;
        Some(Token::new(index, slot.generation))
    }

    fn slot_mut(&mut self, token: Token) -> Option<&mut Slot> {
        self.slots.get_mut(token.index()).filter(|s| {
            s.generation == token.generation() && matches!(s.state, State::Occupied { .. })
        })
    }

    /// Takes the registration of `token` out of its slot.
    pub(crate) fn take(&mut self, token: Token) -> Taken {
        match self.slot_mut(token) {
            Some(Slot {
                state: State::Occupied { registration, .. },
                ..
            }) => registration.take().map_or(Taken::Busy, Taken::Present),
            _ => Taken::Gone,
        }
    }

    /// Whether removal of `token` was requested while it was taken out.
    pub(crate) fn remove_requested(&self, token: Token) -> bool {
        match self.slots.get(token.index()) {
            Some(Slot {
                generation,
                state: State::Occupied {
                    remove_requested, ..
                },
            }) => *generation == token.generation() && *remove_requested,
            _ => false,
        }
    }

    /// Puts a taken (or freshly reserved) registration back into its slot.
    pub(crate) fn fill(&mut self, token: Token, reg: Registration) {
        if let Some(Slot {
            state: State::Occupied { registration, .. },
            ..
        }) = self.slot_mut(token)
        {
            debug_assert!(registration.is_none());
            *registration = Some(reg);
        }
    }

    /// Asks for `token` to be removed. Returns the registration if it was in its slot (the
    /// caller deregisters and drops it); if it is taken out, marks it so it is dropped when
    /// it comes back and returns `None`.
    pub(crate) fn request_remove(&mut self, token: Token) -> Option<Option<Registration>> {
        let slot = self.slot_mut(token)?;
        let State::Occupied {
            registration,
            remove_requested,
        } = &mut slot.state
        else {
            return None;
        };
        match registration.take() {
            Some(reg) => {
                self.free(token);
                Some(Some(reg))
            }
            None => {
                *remove_requested = true;
                Some(None)
            }
        }
    }

    /// Frees the slot of `token` (whose registration is out), bumping its generation.
    pub(crate) fn free(&mut self, token: Token) {
        let head = self.free_head;
        if let Some(slot) = self.slot_mut(token) {
            slot.generation = slot.generation.wrapping_add(1);
            slot.state = State::Vacant { next_free: head };
            self.free_head = Some(token.index() as u32);
            self.len -= 1;
        }
    }

    /// The tokens of every registration (in its slot or taken out), in slot order.
    pub(crate) fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                State::Occupied { .. } => Some(Token::new(i as u32, s.generation)),
                State::Vacant { .. } => None,
            })
    }

    /// Takes every registration out, leaving the registry empty (used on drop).
    pub(crate) fn drain(&mut self) -> Vec<Registration> {
        let out = self
            .slots
            .drain(..)
            .filter_map(|s| match s.state {
                State::Occupied { registration, .. } => registration,
                State::Vacant { .. } => None,
            })
            .collect();
        self.free_head = None;
        self.len = 0;
        out
    }
}
