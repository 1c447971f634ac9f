//! A machine served in the bench process on a loopback port, with the
//! bench's own camera model: `bench-blob` answers GetImage with exactly
//! `size_bytes` bytes, so a "large unary message" has a known size and
//! costs no encoding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tether_client::{DialConf, Options, RobotClient};
use tether_machine::Machine;
use tether_machine::components::camera::{Camera, CameraProperties, Image, Images};
use tether_machine::components::{Extra, Result as ComponentResult};
use tether_machine::config::Config;
use tether_machine::models::Models;
use tether_machine::resource::Component;
use tokio_util::sync::CancellationToken;

/// The WebRTC host name of in-process machines.
pub(crate) const HOST: &str = "bench";
/// The model of [`BlobCamera`].
pub(crate) const BLOB_MODEL: &str = "bench-blob";

/// A camera whose every image is the same `size` bytes.
struct BlobCamera {
    blob: Arc<Vec<u8>>,
}

#[async_trait::async_trait]
impl Camera for BlobCamera {
    async fn images(&self, _filter: Vec<String>, _extra: Extra) -> ComponentResult<Images> {
        Ok(Images { images: vec![self.image_now()], captured_at: None })
    }

    async fn image(&self, _mime_type: String, _extra: Extra) -> ComponentResult<Image> {
        Ok(self.image_now())
    }

    async fn properties(&self) -> ComponentResult<CameraProperties> {
        Ok(CameraProperties { mime_types: vec!["image/jpeg".into()], ..Default::default() })
    }
}

impl BlobCamera {
    fn image_now(&self) -> Image {
        // A real camera hands over a fresh buffer per frame: so does this one.
        Image { source_name: String::new(), mime_type: "image/jpeg".into(), data: self.blob.to_vec() }
    }
}

/// The built-in models plus `bench-blob` cameras.
pub(crate) fn models() -> Models {
    let mut m = Models::builtin();
    m.register("camera", BLOB_MODEL, |a| {
        let size = a.get("size_bytes").and_then(|v| v.as_u64()).ok_or("size_bytes is required")? as usize;
        // Pseudo-random bytes: nothing on the path compresses, but be honest anyway.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let blob = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Ok(Component::Camera(Arc::new(BlobCamera { blob: Arc::new(blob) })))
    });
    m
}

/// A machine served on 127.0.0.1 by this process.
pub(crate) struct InProcess {
    pub machine: Machine,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl InProcess {
    /// Serves `config` (Viam JSON) and waits until its WebRTC answerer is
    /// registered with the embedded signaler.
    pub(crate) async fn start(config: &str) -> anyhow::Result<Self> {
        let cfg = Config::from_json(config).context("bench machine config")?;
        let machine = Machine::from_config(&cfg, &models())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        {
            let (m, token) = (machine.clone(), shutdown.clone());
            tokio::spawn(async move { m.serve(listener, Default::default(), token).await });
        }
        let online = async {
            while !machine.signaling().queue().is_answerer_online(HOST).await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), online)
            .await
            .map_err(|_| anyhow!("the bench machine's answerer did not come online"))?;
        Ok(Self { machine, addr, shutdown })
    }

    /// Direct HTTP/2.
    pub(crate) fn direct(&self) -> DialConf {
        DialConf::direct(self.addr.to_string())
    }

    /// WebRTC through the embedded signaler, host candidates only.
    pub(crate) fn webrtc(&self) -> DialConf {
        webrtc_conf(HOST, &self.addr.to_string())
    }

    /// Connects a client.
    pub(crate) async fn connect(&self, conf: DialConf) -> anyhow::Result<RobotClient> {
        Ok(RobotClient::connect(conf, Options::default()).await?)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects, retrying while the machine's answerer is not registered yet
/// (a machine process that just printed `listening on` registers with its
/// embedded signaler a moment later: until then WebRTC dials are told the
/// host is offline).
pub(crate) async fn connect_when_online(conf: DialConf) -> anyhow::Result<RobotClient> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match RobotClient::connect(conf.clone(), Options::default()).await {
            Ok(r) => return Ok(r),
            Err(e) if e.code() == tonic::Code::NotFound && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A WebRTC dial of `host` through `signaling` without STUN (one host, or
/// a private namespace: host candidates are all there is).
pub(crate) fn webrtc_conf(host: &str, signaling: &str) -> DialConf {
    DialConf::webrtc(host, signaling).with_webrtc(|c| c.ice_servers.clear())
}

/// A config with `components` (name, subtype) plus blob cameras
/// (name, size), the given window, host [`HOST`].
pub(crate) fn config(components: &[(&str, &str)], blobs: &[(&str, usize)], window: &str) -> String {
    let mut config = super::procs::machine_config_json(components, window, &[HOST]);
    if let Some(comps) = config["components"].as_array_mut() {
        comps.extend(blobs.iter().map(|(name, size)| {
            serde_json::json!({"name": name, "api": "rdk:component:camera", "model": BLOB_MODEL,
                               "attributes": {"size_bytes": size}})
        }));
    }
    config.to_string()
}
