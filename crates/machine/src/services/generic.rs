//! `viam.component.generic.v1.GenericService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::generic::v1::generic_service_server::GenericService;
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, status, status_response};

#[tonic::async_trait]
impl GenericService for ComponentService {
    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.generic(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.generic(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.generic(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
