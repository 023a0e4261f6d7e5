//! Opaque page tokens for keyset paging (AIP-158): a token names the last row
//! of the page it ends and the query it belongs to, so a token used with other
//! filters is refused instead of silently paging through something else.

use std::hash::{DefaultHasher, Hash, Hasher};

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

/// A fingerprint of a query's filters and order, stored in its tokens.
pub fn fingerprint(query: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    query.hash(&mut hasher);
    hasher.finish()
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
    fn a_token_for_another_query_or_garbage_is_refused() {
        let token = encode(&Cursor { sort_key: 1, id: "x".into() }, 7);
        assert!(matches!(decode(&token, 8), Err(ViewError::InvalidArgument { field: "page_token", .. })));
        for bad in ["zz", "abc", "00", &"31".repeat(10)] {
            assert!(matches!(decode(bad, 7), Err(ViewError::InvalidArgument { .. })), "{bad}");
        }
    }
}
