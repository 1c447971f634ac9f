//! Client SDK for Viam-compatible machines.
//!
//! [`RobotClient`] dials a machine, keeps a session alive automatically (it
//! starts one lazily on the first safety-monitored call, heartbeats at
//! window/5 and attaches `viam-sid` to monitored calls only), and hands out
//! typed component clients that use the tonic-generated stubs unchanged.
//!
//! ```no_run
//! # async fn run() -> Result<(), tether_client::Error> {
//! use tether_client::{DialConf, Options, RobotClient, components::Motor};
//! let robot = RobotClient::connect(DialConf::direct("127.0.0.1:8080"), Options::default()).await?;
//! for name in robot.resource_names().await? {
//!     println!("{}:{}:{}/{}", name.namespace, name.r#type, name.subtype, name.name);
//! }
//! let motor = Motor::from_robot(&robot, "motor1");
//! motor.set_power(0.5).await?; // starts a session; the machine stops the motor if we vanish
//! assert!(motor.is_powered().await?.0);
//! motor.stop().await?;
//! robot.close().await;
//! # Ok(()) }
//! ```

use std::time::Duration;

pub mod components;
mod error;
mod robot;
mod session;

pub use error::Error;
pub use robot::RobotClient;
pub use session::SessionChannel;
pub use tether_proto::viam::common::v1::ResourceName;
pub use tether_rpc::dial::Credentials;

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach a machine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DialConf {
    /// Direct gRPC over HTTP/2 to the machine's address.
    Direct {
        /// `host:port`, or a URL (`http://…`).
        address: String,
        /// Credentials to authenticate with (`Authenticate`, then a bearer token).
        credentials: Option<Credentials>,
        /// Limit on connecting and authenticating.
        dial_timeout: Duration,
        /// Extra CA certificate (PEM) to trust for `https://` addresses.
        tls_ca_pem: Option<Vec<u8>>,
    },
}

impl DialConf {
    /// A direct, unauthenticated dial with the default 10 s timeout.
    pub fn direct(address: impl Into<String>) -> Self {
        DialConf::Direct {
            address: address.into(),
            credentials: None,
            dial_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }

    /// Adds credentials.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        match &mut self {
            DialConf::Direct { credentials, .. } => *credentials = Some(creds),
        }
        self
    }

    /// Trusts an extra CA certificate (PEM) for TLS, e.g. a machine's
    /// self-signed certificate.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        match &mut self {
            DialConf::Direct { tls_ca_pem, .. } => *tls_ca_pem = Some(pem.into()),
        }
        self
    }

    /// Sets the dial timeout.
    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        match &mut self {
            DialConf::Direct { dial_timeout, .. } => *dial_timeout = timeout,
        }
        self
    }
}

/// Client behaviour.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Never start sessions. The machine then cannot stop this client's
    /// actuators when it disappears: only use this when something else
    /// guarantees safety.
    pub disable_sessions: bool,
}
