//! Viam wire protocol for tether: protobuf messages and tonic services for the
//! robot, component and auth APIs, written by us from the spec and compiled
//! with protox + prost + tonic at build time.
//!
//! The messages are always there; the tonic client and server stubs
//! (`…_service_client`, `…_service_server`) only with the `grpc` feature, so
//! code that needs just the message types (component drivers) does not link
//! tonic or any transport.
//!
//! Beyond the generated code this crate owns the one fact both ends need from
//! the descriptors: which methods are *safety monitored* (option 84260,
//! `viam.common.v1.safety_heartbeat_monitored`).
//!
//! ```
//! let monitored = tether_proto::safety::is_monitored("/viam.component.motor.v1.MotorService/SetPower");
//! assert!(monitored);
//! assert!(!tether_proto::safety::is_monitored("/viam.component.motor.v1.MotorService/Stop"));
//! ```

#![allow(clippy::all, missing_docs)]

/// Includes the code prost (and, with `grpc`, tonic) generated for one
/// protobuf package.
macro_rules! include_proto {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

pub mod safety;

/// The encoded `FileDescriptorSet` of every proto file (imports included),
/// with custom options preserved. Served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tether_descriptor.bin"));

pub mod google {
    /// Well-known types, re-exported from `prost-types`.
    pub use prost_types as protobuf;
    /// `google.rpc.Status`.
    pub mod rpc {
        include_proto!("google.rpc");
    }
}

pub mod opentelemetry {
    pub mod proto {
        pub mod trace {
            pub mod v1 {
                include_proto!("opentelemetry.proto.trace.v1");
            }
        }
    }
}

pub mod proto {
    pub mod rpc {
        pub mod v1 {
            include_proto!("proto.rpc.v1");
        }
        pub mod webrtc {
            pub mod v1 {
                include_proto!("proto.rpc.webrtc.v1");
            }
        }
    }
    pub mod stream {
        pub mod v1 {
            include_proto!("proto.stream.v1");
        }
    }
}

pub mod viam {
    pub mod common {
        pub mod v1 {
            include_proto!("viam.common.v1");
        }
    }
    pub mod robot {
        pub mod v1 {
            include_proto!("viam.robot.v1");
        }
    }
    pub mod app {
        pub mod data {
            pub mod v1 {
                include_proto!("viam.app.data.v1");
            }
        }
        pub mod datasync {
            pub mod v1 {
                include_proto!("viam.app.datasync.v1");
            }
        }
        pub mod packages {
            pub mod v1 {
                include_proto!("viam.app.packages.v1");
            }
        }
    }
    pub mod component {
        pub mod arm {
            pub mod v1 {
                include_proto!("viam.component.arm.v1");
            }
        }
        pub mod base {
            pub mod v1 {
                include_proto!("viam.component.base.v1");
            }
        }
        pub mod button {
            pub mod v1 {
                include_proto!("viam.component.button.v1");
            }
        }
        pub mod camera {
            pub mod v1 {
                include_proto!("viam.component.camera.v1");
            }
        }
        pub mod gantry {
            pub mod v1 {
                include_proto!("viam.component.gantry.v1");
            }
        }
        pub mod generic {
            pub mod v1 {
                include_proto!("viam.component.generic.v1");
            }
        }
        pub mod gripper {
            pub mod v1 {
                include_proto!("viam.component.gripper.v1");
            }
        }
        pub mod motor {
            pub mod v1 {
                include_proto!("viam.component.motor.v1");
            }
        }
        pub mod sensor {
            pub mod v1 {
                include_proto!("viam.component.sensor.v1");
            }
        }
        pub mod servo {
            pub mod v1 {
                include_proto!("viam.component.servo.v1");
            }
        }
        pub mod switch {
            pub mod v1 {
                include_proto!("viam.component.switch.v1");
            }
        }
    }
}
