use tether_transport::dial::DialError;

/// A client error: the gRPC status of a failed call (code and message as the
/// machine sent them), or a dialing failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call failed with this status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// Dialing failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

impl Error {
    /// The gRPC code of the failure.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Dial(d) => d.to_status().code(),
        }
    }

    /// Whether another attempt could succeed: false for errors that cannot
    /// heal by waiting — CANCELLED (an aborted dial), INVALID_ARGUMENT (a bad
    /// address or setting, `host not preconfigured`), UNAUTHENTICATED,
    /// PERMISSION_DENIED, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE,
    /// UNIMPLEMENTED (the TypeScript SDK's list, except NOT_FOUND: a
    /// signaler answers NOT_FOUND for a machine that is not online *yet*).
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        if let Error::Dial(DialError::Address(..)) = self {
            return false;
        }
        !matches!(
            self.code(),
            Code::Cancelled
                | Code::InvalidArgument
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Unimplemented
        )
    }

    /// The status message.
    pub fn message(&self) -> String {
        match self {
            Error::Status(s) => s.message().to_owned(),
            Error::Dial(d) => d.to_string(),
        }
    }
}
