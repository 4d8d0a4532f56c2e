//! Database errors, classified by what the caller should do about them.

/// SQLSTATE codes the service reacts to (see the PostgreSQL "Errcodes" appendix).
mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// Class 08: connection exceptions.
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
}

use std::sync::Arc;

/// A failed database call.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached, is shutting down, refuses connections, is read-only
    /// or full (an SQLite file locked by another process past the busy timeout too), or no
    /// pooled connection became free in time. Nothing was changed; retrying later is safe.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The transaction lost a race with another one (a deadlock or a serialization failure)
    /// and was rolled back whole; running it again may succeed.
    #[error("transaction aborted by contention")]
    Contention(#[source] sqlx::Error),
    /// A unique or foreign-key constraint refused the write.
    #[error("constraint {constraint} violated")]
    Constraint {
        /// The constraint's name.
        constraint: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The configured URL does not parse.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// A secret could not be sealed for storage; nothing was written.
    #[error("could not seal a secret: {0}")]
    Crypto(#[from] shared::crypto::CryptoError),
    /// Anything else: a bug or a schema mismatch.
    #[error("database error")]
    Other(#[source] sqlx::Error),
    /// A query built with sea-orm failed outside the driver (a value that does not decode
    /// into its column's type): a bug or a schema mismatch.
    #[error("database error")]
    Orm(#[source] sea_orm::DbErr),
}

impl From<sea_orm::DbErr> for DbError {
    fn from(error: sea_orm::DbErr) -> Self {
        use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};
        match error {
            // sea-orm shares the driver's error behind an `Arc`; it is the only owner once
            // the statement has failed, so the driver's error is classified as everywhere else
            DbErr::Conn(RuntimeErr::SqlxError(shared))
            | DbErr::Exec(RuntimeErr::SqlxError(shared))
            | DbErr::Query(RuntimeErr::SqlxError(shared)) => match Arc::try_unwrap(shared) {
                Ok(error) => error.into(),
                Err(shared) => Self::Orm(DbErr::Query(RuntimeErr::SqlxError(shared))),
            },
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => {
                Self::Unavailable(sqlx::Error::PoolTimedOut)
            }
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => {
                Self::Unavailable(sqlx::Error::PoolClosed)
            }
            other => Self::Orm(other),
        }
    }
}

impl DbError {
    /// A stored value that is not one its column may hold (a state outside its enum).
    pub(crate) fn undecodable(what: impl std::fmt::Display) -> Self {
        Self::Orm(sea_orm::DbErr::Type(what.to_string()))
    }
}

/// Whether a SQLite result code (primary or extended) means "try again later": the file is
/// locked by another process past the busy timeout, read-only, full, or unreadable.
fn sqlite_unavailable(code: &str) -> bool {
    const BUSY: i64 = 5;
    const LOCKED: i64 = 6;
    const READONLY: i64 = 8;
    const IOERR: i64 = 10;
    const FULL: i64 = 13;
    const CANTOPEN: i64 = 14;
    code.parse::<i64>().is_ok_and(|code| {
        matches!(
            code & 0xff,
            BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN
        )
    })
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            sqlx::Error::Database(database_error)
                if database_error
                    .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                    .is_some() =>
            {
                let code = database_error
                    .code()
                    .map(|code| code.into_owned())
                    .unwrap_or_default();
                if sqlite_unavailable(&code) {
                    return Self::Unavailable(error);
                }
                if matches!(
                    database_error.kind(),
                    sqlx::error::ErrorKind::UniqueViolation
                        | sqlx::error::ErrorKind::ForeignKeyViolation
                ) {
                    // SQLite names the columns in its message, not the constraint
                    let constraint = database_error.message().to_owned();
                    return Self::Constraint {
                        constraint,
                        source: error,
                    };
                }
                Self::Other(error)
            }
            sqlx::Error::Database(database_error) => {
                let code = database_error
                    .code()
                    .map(|code| code.into_owned())
                    .unwrap_or_default();
                let unavailable = code.starts_with(sqlstate::CONNECTION_EXCEPTION_CLASS)
                    || matches!(
                        code.as_str(),
                        sqlstate::READ_ONLY_SQL_TRANSACTION
                            | sqlstate::TOO_MANY_CONNECTIONS
                            | sqlstate::ADMIN_SHUTDOWN
                            | sqlstate::CRASH_SHUTDOWN
                            | sqlstate::CANNOT_CONNECT_NOW
                            | sqlstate::QUERY_CANCELED
                    );
                if unavailable {
                    return Self::Unavailable(error);
                }
                if matches!(
                    code.as_str(),
                    sqlstate::SERIALIZATION_FAILURE | sqlstate::DEADLOCK_DETECTED
                ) {
                    return Self::Contention(error);
                }
                if matches!(
                    code.as_str(),
                    sqlstate::UNIQUE_VIOLATION | sqlstate::FOREIGN_KEY_VIOLATION
                ) {
                    let constraint = database_error.constraint().unwrap_or_default().to_owned();
                    return Self::Constraint {
                        constraint,
                        source: error,
                    };
                }
                Self::Other(error)
            }
            // A protocol error mid-stream is what a connection cut by a restart looks like.
            sqlx::Error::Protocol(_) => Self::Unavailable(error),
            _ => Self::Other(error),
        }
    }
}

impl DbError {
    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the same statement may succeed when run again: the database was unavailable,
    /// or the transaction lost a race. Any other error is about the data and would repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Contention(_))
    }
}
