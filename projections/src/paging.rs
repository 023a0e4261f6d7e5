//! Opaque page tokens for keyset paging (AIP-158): a token names the last row
//! of the page it ends and the query it belongs to, so a token used with other
//! filters is refused instead of silently paging through something else.

use std::hash::{Hash, Hasher};

use crate::ViewError;

/// The largest page a query returns; bigger requests are capped.
pub const MAX_PAGE_SIZE: u32 = 500;
/// The page size when a request does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The page size to use for a requested size (0 means the default).
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Where the next page starts: after the row with this sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub sort_key: i64,
    pub id: String,
}

/// A fingerprint of a query's filters and order, stored in its tokens. It is
/// FNV-1a, not std's `DefaultHasher`, whose algorithm may change with any Rust
/// release: a token must stay good when the engine that issued it is
/// replaced by a newer build (a restart, or another instance on the same views).
pub fn fingerprint(query: &impl Hash) -> u64 {
    let mut hasher = Fnv1a::default();
    query.hash(&mut hasher);
    hasher.finish()
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub fn encode(cursor: &Cursor, query: u64) -> String {
    let text = format!("1|{query:x}|{}|{}", cursor.sort_key, cursor.id);
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode(token: &str, query: u64) -> Result<Option<Cursor>, ViewError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ViewError::InvalidArgument {
        field: "page_token",
        reason: "the page token is not one this engine issued".into(),
    };
    if !token.len().is_multiple_of(2) || token.len() > 1024 {
        return Err(invalid());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(4, '|');
    let (Some("1"), Some(hash), Some(sort_key), Some(id)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if u64::from_str_radix(hash, 16).map_err(|_| invalid())? != query {
        return Err(ViewError::InvalidArgument {
            field: "page_token",
            reason: "the page token belongs to a query with other filters or another order".into(),
        });
    }
    Ok(Some(Cursor { sort_key: sort_key.parse().map_err(|_| invalid())?, id: id.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_for_its_own_query() {
        let cursor = Cursor { sort_key: -42, id: "r|1".into() };
        let token = encode(&cursor, 7);
        assert_eq!(decode(&token, 7).unwrap(), Some(cursor));
        assert_eq!(decode("", 7).unwrap(), None);
    }

    #[test]
    fn fingerprints_are_fnv_1a_and_tell_queries_apart() {
        // Published FNV-1a 64 test vectors.
        for (input, expected) in [(&b""[..], 0xcbf2_9ce4_8422_2325), (b"a", 0xaf63_dc4c_8601_ec8c)] {
            let mut hasher = Fnv1a::default();
            hasher.write(input);
            assert_eq!(hasher.finish(), expected, "{input:?}");
        }
        assert_eq!(fingerprint(&("timeline", "r-1")), fingerprint(&("timeline", "r-1")));
        assert_ne!(fingerprint(&("timeline", "r-1")), fingerprint(&("timeline", "r-2")));
        assert_ne!(fingerprint(&("ab", "c")), fingerprint(&("a", "bc")));
    }

    #[test]
    fn a_token_for_another_query_or_garbage_is_refused() {
        let token = encode(&Cursor { sort_key: 1, id: "x".into() }, 7);
        assert!(matches!(decode(&token, 8), Err(ViewError::InvalidArgument { field: "page_token", .. })));
        for bad in ["zz", "abc", "00", &"31".repeat(10)] {
            assert!(matches!(decode(bad, 7), Err(ViewError::InvalidArgument { .. })), "{bad}");
        }
    }
}
