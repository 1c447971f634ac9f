//! Button client.

use tether_proto::viam::component::button::v1::{self as pb, button_service_client::ButtonServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A push button on a machine.
    Button,
    ButtonServiceClient<SessionChannel>,
    ButtonServiceClient::new
);

impl Button {
    /// Pushes the button.
    pub async fn push(&self) -> Result<()> {
        let req = pb::PushRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().push(req).await).map(drop)
    }

    shared_rpcs!(do_command, status);
}
