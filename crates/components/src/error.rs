//! The error a driver returns: a kind the client sees as a status code, and
//! a message.
//!
//! The kinds are gRPC's canonical status codes (less `OK`), so whatever a
//! driver chooses reaches the client unchanged: the machine maps each kind
//! to the status code of the same name and passes the message on as it is.
//!
//! ```
//! use tether_components::{Error, ErrorKind};
//! let e = Error::invalid_argument("rpm must not be 0");
//! assert_eq!(e.kind(), ErrorKind::InvalidArgument);
//! assert_eq!(e.message(), "rpm must not be 0");
//! assert_eq!(e.to_string(), "INVALID_ARGUMENT: rpm must not be 0");
//! ```

use std::fmt;

/// What kind of failure an [`Error`] is; each is the gRPC status code of the
/// same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call was cancelled, e.g. a move superseded by a newer command or
    /// a stop.
    Cancelled,
    /// An error with no better kind.
    Unknown,
    /// An argument is malformed or out of the model's limits, whatever the
    /// component's state.
    InvalidArgument,
    /// The call did not finish in time.
    DeadlineExceeded,
    /// Something the call names does not exist.
    NotFound,
    /// Something the call would create exists already.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// A limit (memory, a quota, a message size) ran out.
    ResourceExhausted,
    /// The component is not in a state that allows the call (e.g. not
    /// homed).
    FailedPrecondition,
    /// The call was aborted, e.g. by a concurrent conflicting one.
    Aborted,
    /// An argument is past a range the component is in now (e.g. a
    /// position past the end of travel).
    OutOfRange,
    /// The model does not support the call.
    Unimplemented,
    /// A bug or broken invariant in the driver.
    Internal,
    /// The hardware cannot be reached now; trying again may work.
    Unavailable,
    /// Data was lost or corrupted.
    DataLoss,
    /// The caller is not authenticated.
    Unauthenticated,
}

impl ErrorKind {
    /// Every kind, in the order of the gRPC status codes (1 to 16).
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Cancelled,
        ErrorKind::Unknown,
        ErrorKind::InvalidArgument,
        ErrorKind::DeadlineExceeded,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::ResourceExhausted,
        ErrorKind::FailedPrecondition,
        ErrorKind::Aborted,
        ErrorKind::OutOfRange,
        ErrorKind::Unimplemented,
        ErrorKind::Internal,
        ErrorKind::Unavailable,
        ErrorKind::DataLoss,
        ErrorKind::Unauthenticated,
    ];

    /// The status code's name as gRPC spells it, e.g. `INVALID_ARGUMENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Unknown => "UNKNOWN",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorKind::Aborted => "ABORTED",
            ErrorKind::OutOfRange => "OUT_OF_RANGE",
            ErrorKind::Unimplemented => "UNIMPLEMENTED",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::DataLoss => "DATA_LOSS",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A driver call's failure: its [`ErrorKind`] and a message for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Result of a driver call.
pub type Result<T> = std::result::Result<T, Error>;

/// One constructor per kind, e.g. `Error::not_found(message)`.
macro_rules! constructors {
    ($( $name:ident => $kind:ident; )*) => {
        $(
            #[doc = concat!("An error of kind [`ErrorKind::", stringify!($kind), "`].")]
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(ErrorKind::$kind, message)
            }
        )*
    };
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The kind, which the client sees as the status code.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, which the client sees as it is.
    pub fn message(&self) -> &str {
        &self.message
    }

    constructors! {
        cancelled => Cancelled;
        unknown => Unknown;
        invalid_argument => InvalidArgument;
        deadline_exceeded => DeadlineExceeded;
        not_found => NotFound;
        already_exists => AlreadyExists;
        permission_denied => PermissionDenied;
        resource_exhausted => ResourceExhausted;
        failed_precondition => FailedPrecondition;
        aborted => Aborted;
        out_of_range => OutOfRange;
        unimplemented => Unimplemented;
        internal => Internal;
        unavailable => Unavailable;
        data_loss => DataLoss;
        unauthenticated => Unauthenticated;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_kind_and_message() {
        let made = [
            Error::cancelled("m"),
            Error::unknown("m"),
            Error::invalid_argument("m"),
            Error::deadline_exceeded("m"),
            Error::not_found("m"),
            Error::already_exists("m"),
            Error::permission_denied("m"),
            Error::resource_exhausted("m"),
            Error::failed_precondition("m"),
            Error::aborted("m"),
            Error::out_of_range("m"),
            Error::unimplemented("m"),
            Error::internal("m"),
            Error::unavailable("m"),
            Error::data_loss("m"),
            Error::unauthenticated("m"),
        ];
        for (e, kind) in made.iter().zip(ErrorKind::ALL) {
            assert_eq!(e.kind(), kind);
            assert_eq!(e.message(), "m");
            assert_eq!(e.to_string(), format!("{}: m", kind.as_str()));
        }
    }
}
