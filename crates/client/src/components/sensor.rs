//! Sensor client.

use std::collections::HashMap;

use prost_types::Value;
use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::sensor::v1::sensor_service_client::SensorServiceClient;

use super::{component_client, convert, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A sensor on a machine: named readings of any JSON-like value.
    Sensor,
    SensorServiceClient<SessionChannel>,
    SensorServiceClient::new
);

impl Sensor {
    /// The current readings.
    pub async fn readings(&self) -> Result<HashMap<String, Value>> {
        let req = common::GetReadingsRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_readings(req).await)?.readings)
    }

    /// The current readings as a JSON object with sorted keys.
    pub async fn readings_json(&self) -> Result<serde_json::Value> {
        Ok(convert::map_to_json(&self.readings().await?))
    }

    shared_rpcs!(do_command, status, geometries);
}
