//! Switch client.

use tether_proto::viam::component::switch::v1::{self as pb, switch_service_client::SwitchServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A multi-position switch on a machine. Positions are numbered from 0.
    Switch,
    SwitchServiceClient<SessionChannel>,
    SwitchServiceClient::new
);

impl Switch {
    /// Sets the switch to `position`.
    pub async fn set_position(&self, position: u32) -> Result<()> {
        let req = pb::SetPositionRequest { name: self.name.clone(), position, extra: None };
        reply(self.client.clone().set_position(req).await).map(drop)
    }

    /// The current position.
    pub async fn position(&self) -> Result<u32> {
        let req = pb::GetPositionRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_position(req).await)?.position)
    }

    /// How many positions the switch has, and their labels (possibly empty).
    pub async fn number_of_positions(&self) -> Result<(u32, Vec<String>)> {
        let req = pb::GetNumberOfPositionsRequest { name: self.name.clone(), extra: None };
        let r = reply(self.client.clone().get_number_of_positions(req).await)?;
        Ok((r.number_of_positions, r.labels))
    }

    shared_rpcs!(do_command, status);
}
