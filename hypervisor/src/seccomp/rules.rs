//! The small vocabulary the allow-lists are written in: a syscall always allowed, or allowed
//! when its arguments match.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// A malformed rule (an argument index past the sixth, say): a bug in a list.
#[derive(Debug, thiserror::Error)]
#[error("syscall {nr}: {source}")]
pub struct RuleError {
    nr: i64,
    #[source]
    source: seccompiler::BackendError,
}

/// Syscalls allowed always, with the reason each is needed.
pub type Always = &'static [(i64, &'static str)];

/// A condition on one argument, compared as the 32-bit value the C prototypes pass (`int`
/// request numbers, flags and families).
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// Argument `index` equals the value.
    Eq(u8, u64),
    /// Argument `index` has none of the mask's bits set.
    NoneOf(u8, u64),
}

/// The rules being collected for one thread kind.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// `None`: allowed whatever the arguments.
    rules: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

impl RuleSet {
    /// Allows every syscall of `list`, whatever its arguments.
    pub fn always(&mut self, list: Always) {
        for &(nr, _why) in list {
            self.rules.insert(nr, None);
        }
    }

    /// Allows `nr` when all of `args` hold (one more alternative if `nr` already has some).
    pub fn when(&mut self, nr: i64, args: &[Arg]) -> Result<(), RuleError> {
        let err = |source| RuleError { nr, source };
        let conditions = args
            .iter()
            .map(|&a| {
                let (index, op, value) = match a {
                    Arg::Eq(i, v) => (i, SeccompCmpOp::Eq, v),
                    Arg::NoneOf(i, mask) => (i, SeccompCmpOp::MaskedEq(mask), 0),
                };
                SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let rule = SeccompRule::new(conditions).map_err(err)?;
        // `None`: already allowed unconditionally, and a narrower alternative adds nothing.
        if let Some(alternatives) = self.rules.entry(nr).or_insert_with(|| Some(Vec::new())) {
            alternatives.push(rule);
        }
        Ok(())
    }

    /// Allows `nr` for each of `values` of argument `index` (`ioctl` requests, say).
    pub fn when_one_of(&mut self, nr: i64, index: u8, values: &[u64]) -> Result<(), RuleError> {
        values
            .iter()
            .try_for_each(|&v| self.when(nr, &[Arg::Eq(index, v)]))
    }

    /// The map seccompiler compiles.
    pub fn into_map(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.rules
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect()
    }
}
