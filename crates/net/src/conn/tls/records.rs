//! Records out: plaintext encrypted into TLS records, taken out of rustls at once into a
//! per-thread vector (nothing per connection), and the most bytes on the wire a send of
//! some plaintext can make, for the output limit.

use std::cell::Cell;
use std::io::{IoSlice, Write};

use rustls::{Connection, ProtocolVersion};

/// Capacity of the per-thread ciphertext vector kept between sends.
const CIPHER_OUT_KEEP: usize = 256 << 10;

thread_local! {
    /// This thread's vector for the records of one send, taken for one send.
    static CIPHER_OUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

pub(super) fn take_out_vec() -> Vec<u8> {
    CIPHER_OUT.try_with(Cell::take).unwrap_or_default()
}

pub(super) fn put_out_vec(mut v: Vec<u8>) {
    v.clear();
    v.shrink_to(CIPHER_OUT_KEEP);
    let _ = CIPHER_OUT.try_with(move |c| c.set(v));
}

/// Writes every record rustls holds to `out`.
pub(super) fn drain_records(conn: &mut Connection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        // Writing into a vector cannot fail.
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// Encrypts `parts` into records appended to `out`; false if rustls took not all of it
/// (its buffer of plaintext waiting for the handshake is full, or the session failed).
pub(super) fn encrypt(conn: &mut Connection, parts: &[&[u8]], out: &mut Vec<u8>) -> bool {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    if (2..=8).contains(&parts.len()) {
        // Several pieces (a header and a payload) in one record.
        let mut slices = [IoSlice::new(&[]); 8];
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
        }
        done = conn
            .writer()
            .write_vectored(&slices[..parts.len()])
            .unwrap_or(0);
        drain_records(conn, out);
    }
    while done < total {
        let (i, off) = locate(parts, done);
        let n = conn.writer().write(&parts[i][off..]).unwrap_or(0);
        let before = out.len();
        drain_records(conn, out);
        if n == 0 && out.len() == before {
            return false;
        }
        done += n;
    }
    true
}

/// Where byte `at` of `parts` lies: (part index, offset in it).
fn locate(parts: &[&[u8]], mut at: usize) -> (usize, usize) {
    for (i, p) in parts.iter().enumerate() {
        if at < p.len() {
            return (i, at);
        }
        at -= p.len();
    }
    (
        parts.len().saturating_sub(1),
        parts.last().map_or(0, |p| p.len()),
    )
}

/// rustls' bound on the plaintext it takes into its send buffer in one write (its default
/// buffer limit, which duo does not change): a longer send is encrypted in several
/// writes, each of which may end with a short record.
const WRITE_CHUNK: usize = 64 << 10;

/// The most bytes on the wire the records of `total` bytes of plaintext in `parts` take,
/// as [`encrypt`] makes them with `conn` (after its handshake): the plaintext, and each
/// record's header, authentication tag and (TLS 1.3) inner content type, or (TLS 1.2)
/// explicit nonce. `max_fragment`: the configuration's `max_fragment_size` (a record's
/// size with its header), if it sets one. (Not counted: the key update rustls owes a peer
/// that asked for one, a record of a few dozen bytes put before the next send's.)
pub(super) fn wire_len(
    conn: &Connection,
    max_fragment: Option<usize>,
    parts: &[&[u8]],
    total: usize,
) -> usize {
    const HEADER: usize = 5;
    // TLS 1.3: the inner content type and a 16-byte tag (rustls adds no padding); TLS
    // 1.2: an 8-byte explicit nonce (AES-GCM) and the tag, at most.
    let per_record = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => HEADER + 1 + 16,
        _ => HEADER + 8 + 16,
    };
    let fragment = max_fragment.map_or(16 << 10, |size| size.saturating_sub(HEADER).max(1));
    let mut records = total.div_ceil(fragment).max(1);
    if total > WRITE_CHUNK || parts.len() > 8 {
        // Each further write (a chunk, a piece) may begin a record of its own.
        records += total / WRITE_CHUNK + parts.len();
    }
    total + records * per_record
}
