//! gRPC services of the component APIs: each decodes the request, finds the
//! named component and calls its trait.

use std::sync::Arc;

use tether_proto::viam::common::v1 as common;
use tonic::{Request, Response, Status};

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
