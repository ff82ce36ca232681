//! Container and exec ids, validated the way containerd does (`identifiers.Validate`): runs of
//! ASCII letters and digits joined by single `.`, `_` or `-`, at most 76 characters. Ids become
//! file names and cgroup names, so both the shim and the agent refuse anything else.

/// Longest id containerd accepts.
pub const MAX_ID_LEN: usize = 76;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("id must not be empty")]
    Empty,
    /// The id is too long.
    #[error("id {0:?} is longer than {MAX_ID_LEN} characters")]
    TooLong(String),
    /// The id has a character or shape containerd does not allow.
    #[error("id {0:?} must be letters and digits joined by single '.', '_' or '-'")]
    Invalid(String),
}

/// Checks `id` against containerd's rule.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.to_string()));
    }
    let mut prev_sep = true; // no separator first
    for c in id.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(IdError::Invalid(id.to_string()));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(IdError::Invalid(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_shaped_ids_pass_and_others_are_named() {
        for ok in ["a", "abc-123", "k8s.io_x-y", "0d1f"] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate(""), Err(IdError::Empty));
        for bad in ["-a", "a-", "a--b", "a/b", "..", "a b", "é"] {
            assert_eq!(validate(bad), Err(IdError::Invalid(bad.into())), "{bad}");
        }
        assert!(matches!(
            validate(&"a".repeat(77)),
            Err(IdError::TooLong(_))
        ));
        assert_eq!(validate(&"a".repeat(76)), Ok(()));
    }
}
