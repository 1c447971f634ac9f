//! `viam.component.switch.v1.SwitchService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::switch::v1::{self as pb, switch_service_server::SwitchService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl SwitchService for ComponentService {
    async fn set_position(&self, r: Request<pb::SetPositionRequest>) -> Reply<pb::SetPositionResponse> {
        let r = msg(r);
        self.switch(&r.name)?.set_position(r.position, r.extra).await.map_err(status)?;
        ok(pb::SetPositionResponse {})
    }

    async fn get_position(&self, r: Request<pb::GetPositionRequest>) -> Reply<pb::GetPositionResponse> {
        let r = msg(r);
        let position = self.switch(&r.name)?.position(r.extra).await.map_err(status)?;
        ok(pb::GetPositionResponse { position })
    }

    async fn get_number_of_positions(
        &self,
        r: Request<pb::GetNumberOfPositionsRequest>,
    ) -> Reply<pb::GetNumberOfPositionsResponse> {
        let r = msg(r);
        let p = self.switch(&r.name)?.positions(r.extra).await.map_err(status)?;
        ok(pb::GetNumberOfPositionsResponse { number_of_positions: p.count, labels: p.labels })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.switch(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.switch(&r.name)?.status().await.map_err(status)?)
    }
}
