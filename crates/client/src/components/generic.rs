//! Generic component client: only the shared RPCs.

use tether_proto::viam::component::generic::v1::generic_service_client::GenericServiceClient;

use super::{component_client, shared_rpcs};
use crate::SessionChannel;

component_client!(
    /// A generic component on a machine, driven through `DoCommand`.
    Generic,
    GenericServiceClient<SessionChannel>,
    GenericServiceClient::new
);

impl Generic {
    shared_rpcs!(do_command, status, geometries);
}
