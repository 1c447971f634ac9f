//! Camera client.

use tether_proto::viam::component::camera::v1::{self as pb, camera_service_client::CameraServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A camera on a machine. Messages up to
    /// [`tether_transport::MAX_MESSAGE_SIZE`] are accepted, so large frames fit.
    Camera,
    CameraServiceClient<SessionChannel>,
    CameraServiceClient::new
);

impl Camera {
    /// One image from every source of the camera (`GetImages`), with the
    /// capture time in `response_metadata`.
    pub async fn images(&self) -> Result<pb::GetImagesResponse> {
        self.images_of(&[]).await
    }

    /// Images from the named sources only (all sources when empty).
    pub async fn images_of(&self, sources: &[&str]) -> Result<pb::GetImagesResponse> {
        let req = pb::GetImagesRequest {
            name: self.name.clone(),
            filter_source_names: sources.iter().map(|s| (*s).to_owned()).collect(),
            extra: None,
        };
        reply(self.client.clone().get_images(req).await)
    }

    /// One image in `mime_type` (e.g. `image/jpeg`; empty lets the camera
    /// choose) through the legacy `GetImage` RPC. Newer machines may answer
    /// `UNIMPLEMENTED`; [`images`](Self::images) works everywhere.
    pub async fn image(&self, mime_type: &str) -> Result<pb::GetImageResponse> {
        let req = pb::GetImageRequest { name: self.name.clone(), mime_type: mime_type.to_owned(), extra: None };
        reply(self.client.clone().get_image(req).await)
    }

    /// A point cloud, usually `pointcloud/pcd`.
    pub async fn point_cloud(&self, mime_type: &str) -> Result<pb::GetPointCloudResponse> {
        let req = pb::GetPointCloudRequest { name: self.name.clone(), mime_type: mime_type.to_owned(), extra: None };
        reply(self.client.clone().get_point_cloud(req).await)
    }

    /// Intrinsics, distortion, supported MIME types and frame rate.
    pub async fn properties(&self) -> Result<pb::GetPropertiesResponse> {
        let req = pb::GetPropertiesRequest { name: self.name.clone() };
        reply(self.client.clone().get_properties(req).await)
    }

    shared_rpcs!(do_command, status, geometries);
}
