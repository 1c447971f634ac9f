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

    /// The status message.
    pub fn message(&self) -> String {
        match self {
            Error::Status(s) => s.message().to_owned(),
            Error::Dial(d) => d.to_string(),
        }
    }
}
