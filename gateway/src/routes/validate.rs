//! Field checks shared by the handlers; each error names its field.

use crate::error::ApiError;

/// A user id: 1-256 characters, no control characters (the same rule as token subjects).
pub fn uid(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            "must be 1-256 characters without control characters",
        ));
    }
    Ok(())
}

/// Non-empty text of at most `max` characters.
pub fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}
