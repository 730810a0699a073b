//! The owner history's layout and rules, shared by the kernel programs that write it and the
//! collector that reads it.
//!
//! The `HISTORY` map is a BPF array of [`HistorySet`]s of [`WAYS`] slots each. A key lives in one
//! set, chosen by its port and a hash of the rest ([`set_of`]), in any of that set's slots. A slot
//! is one owner of the key *and its local address and peer*: the kernel lets connections to
//! different destinations share a source port, and each such connection's TIME-WAIT can block a
//! bind, so each keeps its own owner; and a port's listeners on different addresses (0.0.0.0 and
//! `[::]`, a service's two sockets) each keep theirs — a new server's `[::]` listener does not
//! erase the record of the old one's 0.0.0.0, whose accepted connections' TIME-WAITs still hold
//! the port. A write takes the slot already holding its key, address and peer, else the set's
//! oldest (empty slots are oldest of all).
//!
//! Why not an LRU hash map (what this was until perf said otherwise): every outgoing connection
//! writes a new key, so once the map is full every write evicts. perf put 57 % of a connect()'s
//! exit program in that insert: popping a free node (refilling the CPU's free list under the map's
//! global lock, shrinking the LRU lists), the bucket lock, pushing the replaced node back. Here a
//! write is one array lookup (inlined by the verifier), four slot reads and a 96-byte store, and
//! no CPU ever waits for another. What it gives up: eviction is by age within a set of four rather
//! than across the whole map. A namespace's ports spread evenly over the sets, so that is close to
//! LRU; a port's entry can be evicted a little earlier than in a true LRU of the same size.
//!
//! No lock guards a slot (BPF spin locks are not allowed in tracing programs). Instead each slot
//! carries a [`check`] over its key and owner. A reader that copies a slot while it is being
//! written sees the check fail and reads again ([`Found::torn`]). Two writers racing for one slot
//! — two keys of the same set written in the same instant — can leave it failing its check for
//! good: it then reads as "nothing remembered", the same as an eviction, and the next write of the
//! set replaces it, since its age is as good as any.

#![allow(
    clippy::inline_always,
    reason = "the kernel programs inline these: a map value's pointer stays a known map value"
)]

use crate::{HistoryKey, Owner};

/// Slots per set.
pub const WAYS: usize = 4;

/// One remembered owner. `check` is [`check`]`(key, owner)` when the slot is whole; an empty slot
/// (all zero) never passes, as `check` is never 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HistorySlot {
    pub check: u64,
    pub key: HistoryKey,
    pub owner: Owner,
}

/// One element of the `HISTORY` array.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HistorySet {
    pub slots: [HistorySlot; WAYS],
}

const _: () = assert!(core::mem::size_of::<HistorySlot>() == 96);
const _: () = assert!(core::mem::size_of::<HistorySet>() == 96 * WAYS);

/// What a set remembers of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The owners in the whole slots holding the key (one per peer), in slot order.
    pub owners: [Option<Owner>; WAYS],
    /// A slot holds the key but fails its check: it was being written while copied (read again),
    /// or two writers raced for it.
    pub torn: bool,
}

/// The number of sets for a history of about `entries` owners: a power of two (so that a set is
/// picked with a mask), at least one.
pub const fn sets_for(entries: u32) -> u32 {
    let sets = entries.div_ceil(WAYS as u32);
    if sets <= 1 {
        1
    } else {
        sets.next_power_of_two()
    }
}

/// Multiply-and-fold: spreads every input bit over the high half.
#[inline(always)]
const fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 32)
}

impl HistoryKey {
    /// The key as one word (its in-memory layout on a little-endian machine).
    #[inline(always)]
    pub const fn word(&self) -> u64 {
        self.netns as u64
            | (self.port as u64) << 32
            | (self.protocol as u64) << 48
            | (self.role as u64) << 56
    }
}

/// The set `key` lives in, of `mask + 1` sets: the port plus an offset hashed from the rest of the
/// key. Not a hash of the whole key: the kernel gives a client's successive connections to one
/// destination ports two apart (`__inet_hash_connect()`'s per-destination offset), and with the
/// port as the index their writes land in neighbouring sets, often on a page just used.
/// It also fills the sets evenly: one namespace's 65 536 ports of one protocol and role fall
/// exactly `65 536 / sets` to a set.
#[inline(always)]
pub const fn set_of(key: &HistoryKey, mask: u32) -> u32 {
    let rest = key.netns as u64 | (key.protocol as u64) << 32 | (key.role as u64) << 40;
    (key.port as u32).wrapping_add((mix(rest) >> 32) as u32) & mask
}

/// The check of a slot holding `owner` under `key`: every word of both goes through the mix, so a
/// slot made of parts of two writes fails it. Never 0.
#[inline(always)]
pub fn check(key: &HistoryKey, owner: &Owner) -> u64 {
    // SAFETY: `Owner` is 80 bytes of integers and byte arrays with 8-byte alignment (asserted in
    // the crate root), so it reads as ten words.
    let words = unsafe { &*core::ptr::from_ref(owner).cast::<[u64; 10]>() };
    let mut h = mix(key.word() ^ 0x6269_6e64_7472_6163);
    let mut i = 0;
    while i < words.len() {
        h = mix(h ^ words[i]);
        i += 1;
    }
    h | 1
}

/// Which socket of the key an owner is: its local address, peer (remote address and port),
/// family and IPV6_V6ONLY (`[::]` with it and without it cover different addresses: a dual-stack
/// server's and its successor's IPv6-only listener), as words compared without a `memcmp` the
/// kernel programs cannot call.
#[inline(always)]
fn endpoints(owner: &Owner) -> [u64; 5] {
    const SOCKET: u64 = 0xffff_ffff | (crate::flags::V6ONLY as u64) << 32;
    // SAFETY: as in `check`; words 5 and 6 are `local_addr`, 7 and 8 `remote_addr`, word 9
    // starts with `remote_port`, `family` and `flags`.
    let words = unsafe { &*core::ptr::from_ref(owner).cast::<[u64; 10]>() };
    [words[5], words[6], words[7], words[8], words[9] & SOCKET]
}

const _: () = assert!(core::mem::offset_of!(Owner, local_addr) == 5 * 8);
const _: () = assert!(core::mem::offset_of!(Owner, remote_addr) == 7 * 8);
const _: () = assert!(core::mem::offset_of!(Owner, remote_port) == 9 * 8);
const _: () = assert!(core::mem::offset_of!(Owner, family) == 9 * 8 + 2);
const _: () = assert!(core::mem::offset_of!(Owner, flags) == 9 * 8 + 4);

impl HistorySet {
    /// Where a write of `owner` under the key `word` goes: the slot holding that key, address
    /// and peer, else the oldest (an empty slot's age is 0).
    #[inline(always)]
    fn slot_for(&self, word: u64, owner: &Owner) -> usize {
        let ends = endpoints(owner);
        let mut oldest = u64::MAX;
        let mut best = 0;
        let mut i = 0;
        while i < WAYS {
            let slot = &self.slots[i];
            if slot.key.word() == word && endpoints(&slot.owner) == ends {
                return i;
            }
            if slot.owner.ts_ns < oldest {
                oldest = slot.owner.ts_ns;
                best = i;
            }
            i += 1;
        }
        best
    }

    /// Remembers `owner` as the last holder of `key` (the kernel programs' write).
    #[inline(always)]
    pub fn write(&mut self, key: &HistoryKey, owner: &Owner) {
        let i = self.slot_for(key.word(), owner);
        if let Some(slot) = self.slots.get_mut(i) {
            slot.key = *key;
            slot.owner = *owner;
            slot.check = check(key, owner);
        }
    }

    /// What this set remembers of `key`.
    pub fn find(&self, key: &HistoryKey) -> Found {
        let mut found = Found {
            owners: [None; WAYS],
            torn: false,
        };
        for (slot, out) in self.slots.iter().zip(&mut found.owners) {
            if slot.key != *key {
                continue;
            }
            if slot.check == check(&slot.key, &slot.owner) {
                *out = Some(slot.owner);
            } else {
                found.torn = true;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    const EMPTY: HistorySet = HistorySet {
        slots: [HistorySlot {
            check: 0,
            key: HistoryKey::ZERO,
            owner: Owner::ZERO,
        }; WAYS],
    };

    fn key(port: u16) -> HistoryKey {
        HistoryKey {
            netns: 4_026_531_840,
            port,
            protocol: 6,
            role: 3,
        }
    }

    fn owner(pid: u32, ts_ns: u64) -> Owner {
        Owner {
            ts_ns,
            pid,
            ..Owner::ZERO
        }
    }

    fn write(set: &mut HistorySet, key: HistoryKey, owner: Owner) {
        set.write(&key, &owner);
    }

    /// The pids of the owners `set` remembers of `key`, sorted; and whether a slot was torn.
    fn pids(set: &HistorySet, key: HistoryKey) -> (Vec<u32>, bool) {
        let found = set.find(&key);
        let mut pids: Vec<u32> = found.owners.iter().flatten().map(|o| o.pid).collect();
        pids.sort_unstable();
        (pids, found.torn)
    }

    #[test]
    fn sets_are_a_power_of_two_covering_the_entries() {
        assert_eq!(sets_for(0), 1);
        assert_eq!(sets_for(4), 1);
        assert_eq!(sets_for(5), 2);
        assert_eq!(sets_for(32_768), 8_192);
        assert_eq!(sets_for(40_000), 16_384);
    }

    #[test]
    fn the_key_word_is_its_memory_layout() {
        let k = key(8080);
        // SAFETY: 8 bytes of integers.
        let raw: u64 = unsafe { core::mem::transmute(k) };
        assert_eq!(k.word(), raw);
    }

    #[test]
    fn ports_of_one_namespace_fill_the_sets_evenly() {
        let mask = sets_for(32_768) - 1;
        let mut per_set = [0u16; 8_192];
        for port in 0..=u16::MAX {
            per_set[set_of(&key(port), mask) as usize] += 1;
        }
        // 65 536 ports into 8 192 sets: 8 each, exactly.
        assert!(per_set.iter().all(|&n| n == 8));
        // The ephemeral range of one namespace's outgoing connections fits without eviction.
        let mut ephemeral = [0u16; 8_192];
        for port in 32_768..=60_999 {
            ephemeral[set_of(&key(port), mask) as usize] += 1;
        }
        assert!(ephemeral.iter().all(|&n| n as usize <= WAYS));
        // Another namespace's ports of the same role go to other sets.
        let other = HistoryKey {
            netns: 4_026_532_000,
            ..key(8080)
        };
        assert_ne!(set_of(&other, mask), set_of(&key(8080), mask));
    }

    #[test]
    fn a_rewrite_replaces_the_key_and_a_new_key_takes_the_oldest_slot() {
        let mut set = EMPTY;
        for (i, port) in [1, 2, 3, 4].into_iter().enumerate() {
            write(&mut set, key(port), owner(100 + port as u32, 10 + i as u64));
        }
        write(&mut set, key(2), owner(202, 20));
        assert_eq!(pids(&set, key(2)), (vec![202], false));
        // Port 1 is now the oldest: port 5 evicts it, and nothing else.
        write(&mut set, key(5), owner(105, 21));
        assert_eq!(pids(&set, key(1)), (vec![], false));
        for port in [2, 3, 4, 5] {
            assert_eq!(pids(&set, key(port)).0.len(), 1, "port {port}");
        }
    }

    #[test]
    fn connections_from_one_port_to_different_peers_each_keep_their_owner() {
        let to = |pid: u32, ts_ns: u64, peer_port: u16| Owner {
            remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_port: peer_port,
            ..owner(pid, ts_ns)
        };
        let mut set = EMPTY;
        write(&mut set, key(40_000), to(1, 1, 80));
        write(&mut set, key(40_000), to(2, 2, 443));
        assert_eq!(pids(&set, key(40_000)), (vec![1, 2], false));
        // A later connection to the same peer from the same port replaces only that peer's owner.
        write(&mut set, key(40_000), to(3, 3, 80));
        assert_eq!(pids(&set, key(40_000)), (vec![2, 3], false));
        let found = set.find(&key(40_000));
        assert!(
            found
                .owners
                .iter()
                .flatten()
                .any(|o| o.pid == 3 && o.remote_port == 80)
        );
    }

    #[test]
    fn listeners_on_different_addresses_each_keep_their_owner() {
        let on = |pid: u32, ts_ns: u64, family: u16, local: u8| Owner {
            local_addr: [local, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family,
            ..owner(pid, ts_ns)
        };
        let mut set = EMPTY;
        // An old server on 0.0.0.0, then a new one's [::] (all zero too, another family).
        write(&mut set, key(80), on(1, 1, 2, 0));
        write(&mut set, key(80), on(2, 2, 10, 0));
        assert_eq!(pids(&set, key(80)), (vec![1, 2], false));
        // The same address again replaces only its own record.
        write(&mut set, key(80), on(3, 3, 2, 0));
        assert_eq!(pids(&set, key(80)), (vec![2, 3], false));
        write(&mut set, key(80), on(4, 4, 2, 127));
        assert_eq!(pids(&set, key(80)), (vec![2, 3, 4], false));
        // [::] with IPV6_V6ONLY is another socket than [::] without (which covers IPv4 too).
        let v6only = Owner {
            flags: crate::flags::V6ONLY | crate::flags::REUSEADDR,
            ..on(5, 5, 10, 0)
        };
        write(&mut set, key(80), v6only);
        assert_eq!(pids(&set, key(80)), (vec![2, 3, 4, 5], false));
        // Other flags (the options) do not make another socket.
        let reuse = Owner {
            flags: crate::flags::REUSEADDR,
            ..on(6, 6, 2, 0)
        };
        write(&mut set, key(80), reuse);
        assert_eq!(pids(&set, key(80)), (vec![2, 4, 5, 6], false));
    }

    #[test]
    fn a_slot_made_of_two_writes_is_torn_not_a_wrong_owner() {
        let mut set = EMPTY;
        write(&mut set, key(7), owner(1, 5));
        let whole = set.slots[0];
        write(&mut set, key(7), owner(2, 6));
        // A copy taken half-way through the second write: its check and pid, the first's time.
        set.slots[0].owner.ts_ns = whole.owner.ts_ns;
        assert_eq!(pids(&set, key(7)), (vec![], true));
        assert_eq!(pids(&set, key(8)), (vec![], false));
        // The next write of the key repairs it.
        write(&mut set, key(7), owner(3, 7));
        assert_eq!(pids(&set, key(7)), (vec![3], false));
    }

    #[test]
    fn an_empty_slot_never_passes_its_check() {
        let slot = EMPTY.slots[0];
        assert_ne!(slot.check, check(&slot.key, &slot.owner));
    }
}
