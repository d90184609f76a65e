//! The change sequence (`scim.change_seq`) and the lock that makes its values safe to read
//! up to: every write takes its value under a shared application lock held to the end of its
//! transaction ([`next_seq`]); the sync engine reads the upper bound under the same lock taken
//! exclusively ([`high_seq`]), which waits for the writers in flight. So every value at or
//! below the bound belongs to a transaction that has ended.

use tiberius::Query;

use super::pool::Client;
use super::rows::{SqlError, scalar};

/// The next change sequence value for a write transaction. The lock waits (here and in
/// [`HIGH_SEQ`]) end before the default command timeout (30 s): the server's THROW then fails
/// the statement cleanly, where a client-side timeout would leave the connection out of step
/// with the server and its transaction open.
pub const NEXT_SEQ: &str = "EXEC sp_getapplock @Resource = N'scim.change_seq', \
     @LockMode = N'Shared', @LockOwner = N'Transaction', @LockTimeout = 20000; \
     IF APPLOCK_MODE(N'public', N'scim.change_seq', N'Transaction') = N'NoLock' \
     THROW 51000, N'the change sequence lock was not granted', 1; \
     SELECT NEXT VALUE FOR scim.change_seq";

/// The highest change sequence value all of whose transactions have ended: taking the lock
/// exclusively waits for the writers holding it shared; writers that come later take later
/// values. Values of rolled-back transactions are gaps.
const HIGH_SEQ: &str = "EXEC sp_getapplock @Resource = N'scim.change_seq', \
     @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 20000; \
     IF APPLOCK_MODE(N'public', N'scim.change_seq', N'Transaction') = N'NoLock' \
     THROW 51000, N'the change sequence lock was not granted', 1; \
     SELECT CAST(current_value AS BIGINT) FROM sys.sequences WHERE object_id = OBJECT_ID(N'scim.change_seq')";

/// [`HIGH_SEQ`] in a transaction of its own (the lock goes with it).
pub fn high_seq_in_transaction() -> String {
    format!("BEGIN TRANSACTION; {HIGH_SEQ}; COMMIT TRANSACTION")
}

/// The next value, inside the caller's transaction.
pub async fn next_seq(c: &mut Client) -> Result<i64, SqlError> {
    scalar(c, Query::new(NEXT_SEQ)).await
}

/// The upper bound, in a transaction of its own on `c`.
pub async fn high_seq(c: &mut Client) -> Result<i64, SqlError> {
    scalar(c, Query::new(high_seq_in_transaction())).await
}

#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    vec![
        ("NEXT_SEQ".into(), NEXT_SEQ.into()),
        ("HIGH_SEQ".into(), HIGH_SEQ.into()),
        ("high_seq_in_transaction".into(), high_seq_in_transaction()),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The milliseconds of a statement's `@LockTimeout`.
    fn lock_timeout(sql: &str) -> Duration {
        let rest = sql.split("@LockTimeout = ").nth(1).unwrap();
        let ms: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Duration::from_millis(ms.parse().unwrap())
    }

    /// Both run without parameters.
    #[test]
    fn the_sequence_statements_take_no_parameters() {
        use crate::db::mssql::tsql::param_numbers;
        assert!(param_numbers(NEXT_SEQ).is_empty());
        assert!(param_numbers(&high_seq_in_transaction()).is_empty());
    }

    /// A change sequence lock not granted in time fails on the server (THROW), leaving the
    /// connection usable, before the default command timeout gives up on the client side.
    #[test]
    fn change_sequence_lock_waits_end_before_the_default_command_timeout() {
        let config =
            crate::config::MssqlConfig::parse("Server=h;Database=d;User Id=u;Password=p").unwrap();
        let command = config.command_timeout.unwrap();
        for sql in [NEXT_SEQ, HIGH_SEQ, high_seq_in_transaction().as_str()] {
            let wait = lock_timeout(sql);
            assert!(
                wait + Duration::from_secs(5) <= command,
                "{wait:?} vs {command:?}"
            );
        }
    }
}
