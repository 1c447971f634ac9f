//! gRPC services of the component APIs: each decodes the request, finds the
//! named component and calls its trait.

use std::sync::Arc;

use tether_proto::viam::common::v1 as common;
use tonic::{Request, Response, Status};

use crate::resource::Resources;

pub mod motor;
pub mod robot;

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

/// Unwraps a request message (kept for symmetry with the generated code).
pub(crate) fn msg<T>(r: Request<T>) -> T {
    r.into_inner()
}
