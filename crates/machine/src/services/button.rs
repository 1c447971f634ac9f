//! `viam.component.button.v1.ButtonService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::button::v1::{self as pb, button_service_server::ButtonService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl ButtonService for ComponentService {
    async fn push(&self, r: Request<pb::PushRequest>) -> Reply<pb::PushResponse> {
        let r = msg(r);
        self.button(&r.name)?.push(r.extra).await.map_err(status)?;
        ok(pb::PushResponse {})
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.button(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.button(&r.name)?.status().await.map_err(status)?)
    }
}
