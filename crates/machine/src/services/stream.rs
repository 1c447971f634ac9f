//! `proto.stream.v1.StreamService`: camera video on the caller's own WebRTC
//! connection ([`crate::video`]).
//!
//! Stream names are camera names with `:` written `+`; a name is looked up
//! as given and with `+` turned back into `:`. Every error says what went
//! wrong in its message: the TypeScript SDK shows its users only that.

use std::sync::Arc;

use tether_components::{Camera, Component};
use tether_proto::proto::stream::v1::{self as pb, stream_service_server::StreamService};
use tether_transport::server::ConnectionInfo;
use tether_transport::webrtc::{CallPeer, RtcPeer};
use tonic::{Request, Status};

use super::{Reply, ok, status};
use crate::resource::Resources;
use crate::video::VideoHub;

/// The stream service over a machine's cameras.
#[derive(Clone, Debug)]
pub struct StreamServer {
    pub(crate) resources: Arc<Resources>,
    pub(crate) hub: Arc<VideoHub>,
}

impl StreamServer {
    /// The camera a stream name names: (its resource name, the camera).
    fn camera(&self, name: &str) -> Result<(String, Arc<dyn Camera>), Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("a stream name is required (the camera's name)"));
        }
        let shown = tether_components::resource::quoted_name(name);
        for candidate in [name.to_owned(), name.replace('+', ":")] {
            match self.resources.get(&candidate) {
                Some(Component::Camera(_)) => {
                    let cam = self.resources.camera(&candidate).map_err(status)?;
                    return Ok((candidate, cam));
                }
                Some(other) => {
                    return Err(Status::invalid_argument(format!(
                        "{shown:?} is a {}, not a camera: only cameras have video streams",
                        other.subtype()
                    )));
                }
                None => {}
            }
        }
        Err(Status::not_found(format!("no camera named {shown:?} (ListStreams names the cameras that can stream)")))
    }
}

/// The caller's peer connection and connection id, or why there is none.
fn caller<T>(r: &Request<T>, method: &str) -> Result<(RtcPeer, u64), Status> {
    let peer = r.extensions().get::<CallPeer>().and_then(CallPeer::peer).ok_or_else(|| {
        Status::failed_precondition(format!(
            "{method} needs a WebRTC connection: video rides on the caller's peer connection, and this call \
             came over gRPC or gRPC-Web (connect over WebRTC, or use the camera's GetImages for stills)"
        ))
    })?;
    let conn = r.extensions().get::<ConnectionInfo>().map(|i| i.id).unwrap_or_default();
    Ok((peer, conn))
}

#[tonic::async_trait]
impl StreamService for StreamServer {
    async fn list_streams(&self, _r: Request<pb::ListStreamsRequest>) -> Reply<pb::ListStreamsResponse> {
        ok(pb::ListStreamsResponse { names: self.hub.names() })
    }

    async fn add_stream(&self, r: Request<pb::AddStreamRequest>) -> Reply<pb::AddStreamResponse> {
        let (camera, cam) = self.camera(&r.get_ref().name)?;
        let (peer, conn) = caller(&r, "AddStream")?;
        self.hub.add(&peer, conn, &camera, cam).map_err(|e| Status::internal(e.to_string()))?;
        ok(pb::AddStreamResponse {})
    }

    async fn remove_stream(&self, r: Request<pb::RemoveStreamRequest>) -> Reply<pb::RemoveStreamResponse> {
        let (camera, _) = self.camera(&r.get_ref().name)?;
        let (_, conn) = caller(&r, "RemoveStream")?;
        if !self.hub.remove(conn, &camera) {
            return Err(Status::not_found(format!("this connection has no stream of {camera:?} to remove")));
        }
        ok(pb::RemoveStreamResponse {})
    }

    async fn get_stream_options(&self, r: Request<pb::GetStreamOptionsRequest>) -> Reply<pb::GetStreamOptionsResponse> {
        let (camera, cam) = self.camera(&r.get_ref().name)?;
        let frame = cam.video_frame().await.map_err(status)?;
        let (w, h) = (frame.width & !1, frame.height & !1);
        let mut resolutions = Vec::new();
        // The camera's own size, then halves down to about 160 pixels wide.
        let (mut sw, mut sh) = (w, h);
        while sw >= 2 && sh >= 2 && (resolutions.is_empty() || sw >= 160) {
            resolutions.push(pb::Resolution { width: sw as i32, height: sh as i32 });
            (sw, sh) = ((sw / 2) & !1, (sh / 2) & !1);
        }
        tracing::trace!(%camera, ?resolutions, "stream options");
        ok(pb::GetStreamOptionsResponse { resolutions })
    }

    async fn set_stream_options(&self, r: Request<pb::SetStreamOptionsRequest>) -> Reply<pb::SetStreamOptionsResponse> {
        let (camera, cam) = self.camera(&r.get_ref().name)?;
        let (_, conn) = caller(&r, "SetStreamOptions")?;
        let size = match &r.get_ref().resolution {
            None => None,
            Some(res) => {
                let ok_side = |v: i32| (2..=8192).contains(&v);
                if !ok_side(res.width) || !ok_side(res.height) {
                    return Err(Status::invalid_argument(format!(
                        "resolution {}x{} is out of range (2..=8192 each way)",
                        res.width, res.height
                    )));
                }
                Some((res.width as u32, res.height as u32))
            }
        };
        self.hub.set_size(conn, &camera, size, cam);
        ok(pb::SetStreamOptionsResponse {})
    }
}
