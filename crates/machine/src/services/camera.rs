//! `viam.component.camera.v1.CameraService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::camera::v1::{self as pb, camera_service_server::CameraService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl CameraService for ComponentService {
    /// The legacy single-image call (removed from the API in 2026 but still
    /// used by older clients).
    async fn get_image(&self, r: Request<pb::GetImageRequest>) -> Reply<pb::GetImageResponse> {
        let r = msg(r);
        let image = self.camera(&r.name)?.image(r.mime_type, r.extra).await.map_err(status)?;
        ok(pb::GetImageResponse { mime_type: image.mime_type, image: image.data })
    }

    /// Images with an empty source name are named after the camera; when the
    /// request filters by source, images of other sources are dropped.
    async fn get_images(&self, r: Request<pb::GetImagesRequest>) -> Reply<pb::GetImagesResponse> {
        let r = msg(r);
        let filter = r.filter_source_names.clone();
        let got = self.camera(&r.name)?.images(r.filter_source_names, r.extra).await.map_err(status)?;
        let images = got
            .images
            .into_iter()
            .map(|i| pb::Image {
                source_name: if i.source_name.is_empty() { r.name.clone() } else { i.source_name },
                image: i.data,
                mime_type: i.mime_type,
                annotations: None,
            })
            .filter(|i| filter.is_empty() || filter.contains(&i.source_name))
            .collect();
        ok(pb::GetImagesResponse {
            images,
            response_metadata: Some(common::ResponseMetadata {
                captured_at: got.captured_at.map(prost_types::Timestamp::from),
            }),
        })
    }

    async fn get_point_cloud(&self, r: Request<pb::GetPointCloudRequest>) -> Reply<pb::GetPointCloudResponse> {
        let r = msg(r);
        let (mime_type, point_cloud) = self.camera(&r.name)?.point_cloud(r.mime_type, r.extra).await.map_err(status)?;
        ok(pb::GetPointCloudResponse { mime_type, point_cloud })
    }

    async fn get_properties(&self, r: Request<pb::GetPropertiesRequest>) -> Reply<pb::GetPropertiesResponse> {
        let r = msg(r);
        let p = self.camera(&r.name)?.properties().await.map_err(status)?;
        ok(pb::GetPropertiesResponse {
            supports_pcd: p.supports_pcd,
            intrinsic_parameters: p.intrinsics,
            distortion_parameters: p.distortion,
            mime_types: p.mime_types,
            frame_rate: p.frame_rate,
            extrinsic_parameters: p.extrinsics,
        })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.camera(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.camera(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.camera(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
