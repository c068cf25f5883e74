//! Socket ids that name their shard and their node.
//!
//! An id is 128 bits: the owning shard's index in the top 16 bits, the
//! node's tag in the next 32 (see [`node_tag`]), 80 random bits below (from
//! the OS, so ids cannot be guessed). Any thread — and, in cluster mode, any
//! node — can route to a socket from its id alone, without a global table.
//! On the wire an id is 22 characters of URL-safe base64.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Two `u64`s, high half first (so the derived order is the 128-bit
/// number's), rather than a `u128`: a `u128` is 16-byte aligned, and an id
/// sits in every connection's future and table entry, where that alignment
/// cost padding (the session future alone carried 54 bytes of it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId([u64; 2]);

const SHARD_SHIFT: u32 = 112;
const NODE_SHIFT: u32 = 80;

/// This process's node tag, in every socket id it makes. Random at start
/// (0 is never drawn), so two nodes of a cluster tell their sockets apart.
static NODE_TAG: AtomicU32 = AtomicU32::new(0);

/// This process's node tag (drawn on first use).
pub fn node_tag() -> u32 {
    let tag = NODE_TAG.load(Ordering::Relaxed);
    if tag != 0 {
        return tag;
    }
    let drawn = loop {
        let bytes = random_16();
        let tag = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if tag != 0 {
            break tag;
        }
    };
    // Another thread may have drawn first: everyone keeps the first.
    match NODE_TAG.compare_exchange(0, drawn, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => drawn,
        Err(first) => first,
    }
}

impl SocketId {
    fn from_u128(value: u128) -> SocketId {
        SocketId([(value >> 64) as u64, value as u64])
    }

    fn as_u128(self) -> u128 {
        ((self.0[0] as u128) << 64) | self.0[1] as u128
    }

    pub fn generate(shard: usize) -> SocketId {
        let bytes = random_16();
        let random = u128::from_be_bytes(bytes) & ((1u128 << NODE_SHIFT) - 1);
        SocketId::from_u128(((shard as u128) << SHARD_SHIFT) | ((node_tag() as u128) << NODE_SHIFT) | random)
    }

    pub fn shard(self) -> usize {
        (self.as_u128() >> SHARD_SHIFT) as usize
    }

    /// The tag of the node that made it ([`node_tag`]).
    pub fn node(self) -> u32 {
        (self.as_u128() >> NODE_SHIFT) as u32
    }

    /// Parses the wire form; `None` for anything that is not an id.
    pub fn parse(text: &str) -> Option<SocketId> {
        if text.len() != 22 {
            return None;
        }
        let mut bytes = [0u8; 16];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).ok()?;
        (n == 16).then(|| SocketId::from_u128(u128::from_be_bytes(bytes)))
    }
}

/// 16 bytes from the OS's random source, taken from a per-thread buffer
/// refilled 32 ids at a time: a connection needs two ids (Engine.IO and
/// Socket.IO), and one `getrandom` call per id was 1 % of a handshake's CPU.
/// The bytes are the OS's own, each used once.
fn random_16() -> [u8; 16] {
    use std::cell::RefCell;
    const IDS_PER_FILL: usize = 32;
    thread_local! {
        static POOL: RefCell<([u8; 16 * IDS_PER_FILL], usize)> = const { RefCell::new(([0; 16 * IDS_PER_FILL], IDS_PER_FILL)) };
    }
    POOL.with_borrow_mut(|(pool, next)| {
        if *next == IDS_PER_FILL {
            getrandom::fill(pool).expect("the OS random source is available");
            *next = 0;
        }
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&pool[*next * 16..][..16]);
        *next += 1;
        bytes
    })
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 22];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.as_u128().to_be_bytes(), &mut out)
            .expect("16 bytes encode to 22 characters");
        f.write_str(std::str::from_utf8(&out[..n]).expect("base64 is ASCII"))
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SocketId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_its_shard() {
        for shard in [0, 1, 7, 255, 65535] {
            let id = SocketId::generate(shard);
            let text = id.to_string();
            assert_eq!(text.len(), 22);
            assert_eq!(SocketId::parse(&text), Some(id));
            assert_eq!(id.shard(), shard);
            assert_eq!(id.node(), node_tag());
        }
        assert_ne!(SocketId::generate(0), SocketId::generate(0));
    }

    #[test]
    fn ids_stay_distinct_across_refills_of_the_random_pool() {
        let ids: std::collections::HashSet<SocketId> = (0..1000).map(|_| SocketId::generate(3)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            !ids.contains(&SocketId::from_u128((3u128 << SHARD_SHIFT) | ((node_tag() as u128) << NODE_SHIFT))),
            "an id with no random bits"
        );
    }

    #[test]
    fn orders_as_the_128_bit_number_and_is_8_byte_aligned() {
        let ids = [0u128, 1, u64::MAX as u128, 1 << 64, (1 << 64) + 1, u128::MAX];
        for pair in ids.windows(2) {
            assert!(SocketId::from_u128(pair[0]) < SocketId::from_u128(pair[1]));
            assert_eq!(SocketId::from_u128(pair[1]).as_u128(), pair[1]);
        }
        assert_eq!(std::mem::align_of::<SocketId>(), 8);
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        assert_eq!(SocketId::parse(""), None);
        assert_eq!(SocketId::parse("short"), None);
        assert_eq!(SocketId::parse("!!!!!!!!!!!!!!!!!!!!!!"), None);
        assert_eq!(SocketId::parse("AAAAAAAAAAAAAAAAAAAAAAAA"), None);
    }
}
