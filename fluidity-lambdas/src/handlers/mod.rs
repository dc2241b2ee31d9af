//! The five functions as plain async handlers over [`crate::backend`].

pub mod ca;
pub mod kill;
pub mod query;
pub mod sleep;
pub mod wake;

#[cfg(test)]
pub(crate) mod fake;

/// RFC 3339 of a time, for response fields.
pub(crate) fn rfc3339(time: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
