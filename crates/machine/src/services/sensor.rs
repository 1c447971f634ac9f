//! `viam.component.sensor.v1.SensorService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::sensor::v1::sensor_service_server::SensorService;
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl SensorService for ComponentService {
    async fn get_readings(&self, r: Request<common::GetReadingsRequest>) -> Reply<common::GetReadingsResponse> {
        let r = msg(r);
        let readings = self.sensor(&r.name)?.readings(r.extra).await.map_err(status)?;
        ok(common::GetReadingsResponse { readings })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.sensor(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.sensor(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.sensor(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
