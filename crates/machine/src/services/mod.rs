//! gRPC services of the component APIs: each decodes the request, finds the
//! named component and calls its trait. A driver's [`Error`] becomes the
//! call's status in one place, [`status`].

use std::sync::Arc;

use tether_components::{Error, ErrorKind};
use tether_proto::viam::common::v1 as common;
use tonic::{Code, Request, Response, Status};

use crate::resource::Resources;

pub mod arm;
pub mod base;
pub mod button;
pub mod camera;
pub mod gantry;
pub mod generic;
pub mod gripper;
pub mod motor;
pub mod robot;
pub mod sensor;
pub mod servo;
pub mod stream;
pub mod switch;

/// Result type of a tonic handler.
pub type Reply<T> = Result<Response<T>, Status>;

/// Shared handle every component service holds.
#[derive(Clone, Debug)]
pub struct ComponentService {
    pub(crate) resources: Arc<Resources>,
}

impl ComponentService {
    /// A service over `resources`.
    pub fn new(resources: Arc<Resources>) -> Self {
        Self { resources }
    }
}

/// The status a driver's error becomes: the code of the same name as its
/// kind, and its message as it is.
pub fn status(e: Error) -> Status {
    let code = match e.kind() {
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Unknown => Code::Unknown,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        // A kind added to tether-components later and not mapped yet.
        _ => Code::Unknown,
    };
    Status::new(code, e.message())
}

/// The driver error a status received from the client becomes (a stream
/// error handed to a driver, e.g. in a streamed arm trajectory): the inverse
/// of [`status`] on code and message.
pub fn driver_error(s: &Status) -> Error {
    let kind = match s.code() {
        Code::Cancelled => ErrorKind::Cancelled,
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::Aborted => ErrorKind::Aborted,
        Code::OutOfRange => ErrorKind::OutOfRange,
        Code::Unimplemented => ErrorKind::Unimplemented,
        Code::Internal => ErrorKind::Internal,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::DataLoss => ErrorKind::DataLoss,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::Ok | Code::Unknown => ErrorKind::Unknown,
    };
    Error::new(kind, s.message())
}

/// The typed lookups of [`ComponentService`], one per kind in
/// [`tether_components::for_each_kind!`]: the component or NOT_FOUND.
macro_rules! lookups {
    ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
        impl ComponentService {
            $(
                #[doc = concat!("The ", $subtype, " called `name`, or NOT_FOUND.")]
                pub(crate) fn $module(&self, name: &str) -> Result<Arc<dyn tether_components::$kind>, Status> {
                    self.resources.$module(name).map_err(status)
                }
            )*
        }
    };
}

tether_components::for_each_kind!(lookups);

pub(crate) fn ok<T>(v: T) -> Reply<T> {
    Ok(Response::new(v))
}

pub(crate) fn do_command_response(result: prost_types::Struct) -> Reply<common::DoCommandResponse> {
    ok(common::DoCommandResponse { result: Some(result) })
}

pub(crate) fn status_response(result: prost_types::Struct) -> Reply<common::GetStatusResponse> {
    ok(common::GetStatusResponse { result: Some(result) })
}

pub(crate) fn geometries_response(geometries: Vec<common::Geometry>) -> Reply<common::GetGeometriesResponse> {
    ok(common::GetGeometriesResponse { geometries })
}

pub(crate) fn kinematics_response(k: crate::components::Kinematics) -> Reply<common::GetKinematicsResponse> {
    ok(common::GetKinematicsResponse {
        format: k.format as i32,
        kinematics_data: k.data,
        meshes_by_urdf_filepath: k.meshes_by_urdf_filepath,
    })
}

/// Unwraps a request message (kept for symmetry with the generated code).
pub(crate) fn msg<T>(r: Request<T>) -> T {
    r.into_inner()
}

#[cfg(test)]
mod tests;
