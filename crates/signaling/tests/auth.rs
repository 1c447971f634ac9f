//! Authorized signaling: API-key authentication (AuthServer + AuthLayer in
//! front of the signaling routes), [`KeyGrants`] host grants and call limits,
//! over loopback with fake callers and answerers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tether_proto::proto::rpc::v1::{AuthenticateRequest, Credentials, auth_service_client::AuthServiceClient};
use tether_proto::proto::rpc::webrtc::v1::{
    CallRequest, CallResponse, CallUpdateRequest, OptionalWebRtcConfigRequest, call_response, call_update_request,
    signaling_service_client::SignalingServiceClient,
};
use tether_signaling::{CallLimits, KeyGrants, MemoryQueue, SignalingServer};
use tether_transport::auth::{API_KEY, ApiKey, AuthLayer, AuthServer, Authority};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const BOT: &str = "bot.loc.viam.cloud";
const OTHER: &str = "other.loc.viam.cloud";

struct AuthHarness {
    addr: SocketAddr,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// user: calls BOT; bot-machine: answers BOT; other-machine: answers OTHER, calls nothing.
async fn start(limits: CallLimits) -> AuthHarness {
    let keys = vec![
        ApiKey { id: "user".into(), key: "user-secret".into() },
        ApiKey { id: "bot-machine".into(), key: "bot-secret".into() },
        ApiKey { id: "other-machine".into(), key: "other-secret".into() },
    ];
    let authority = Arc::new(Authority::new("tether-signaling", keys));
    let grants = KeyGrants::new()
        .grant_call("user", [BOT])
        .grant_answer("bot-machine", [BOT])
        .grant_answer("other-machine", [OTHER]);
    let signaling =
        SignalingServer::builder(Arc::new(MemoryQueue::new())).authorizer(Arc::new(grants)).call_limits(limits).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(AuthLayer::new(Some(authority.clone())))
            .add_service(signaling.into_service())
            .add_service(AuthServer::new(authority).into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    AuthHarness { addr, _shutdown: tx }
}

impl AuthHarness {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn client(&self) -> Client {
        SignalingServiceClient::new(self.channel().await)
    }

    async fn authenticate(&self, id: &str, key: &str) -> Result<String, Status> {
        let mut auth = AuthServiceClient::new(self.channel().await);
        let req = AuthenticateRequest {
            entity: id.into(),
            credentials: Some(Credentials { r#type: API_KEY.into(), payload: key.into() }),
        };
        Ok(within(auth.authenticate(req)).await?.into_inner().access_token)
    }
}

fn authed<T>(msg: T, host: &str, token: Option<&str>) -> Request<T> {
    let mut req = with_hosts(msg, &[host]);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn call_as(c: &mut Client, host: &str, token: Option<&str>) -> Result<Streaming<CallResponse>, Status> {
    within(c.call(authed(CallRequest { sdp: "offer".into(), disable_trickle: false }, host, token)))
        .await
        .map(|r| r.into_inner())
}

async fn update_as(
    c: &mut Client,
    host: &str,
    token: Option<&str>,
    uuid: &str,
    update: call_update_request::Update,
) -> Result<(), Status> {
    let req = CallUpdateRequest { uuid: uuid.into(), update: Some(update) };
    within(c.call_update(authed(req, host, token))).await.map(|_| ())
}

async fn config_as(c: &mut Client, host: &str, token: Option<&str>) -> Result<(), Status> {
    within(c.optional_web_rtc_config(authed(OptionalWebRtcConfigRequest {}, host, token))).await.map(|_| ())
}

async fn answer_as(c: &mut Client, host: &str, token: Option<&str>) -> Result<FakeAnswerer, Status> {
    let (tx, rx) = mpsc::channel(16);
    let req = authed(ReceiverStream::new(rx), host, token);
    let rx = within(c.answer(req)).await?.into_inner();
    Ok(FakeAnswerer { tx, rx })
}

#[tokio::test]
async fn no_token_is_unauthenticated() {
    let h = start(CallLimits::default()).await;
    let mut c = h.client().await;
    assert_eq!(call_as(&mut c, BOT, None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(answer_as(&mut c, BOT, None).await.err().unwrap().code(), Code::Unauthenticated);
    assert_eq!(config_as(&mut c, BOT, None).await.unwrap_err().code(), Code::Unauthenticated);
    let st = update_as(&mut c, BOT, None, "x", call_update_request::Update::Done(true)).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    // A token that is not ours.
    let st = call_as(&mut c, BOT, Some("not-a-jwt")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn wrong_key_is_unauthenticated_at_authenticate() {
    let h = start(CallLimits::default()).await;
    assert_eq!(h.authenticate("user", "wrong").await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(h.authenticate("nobody", "user-secret").await.unwrap_err().code(), Code::Unauthenticated);
    assert!(h.authenticate("user", "user-secret").await.is_ok());
}

#[tokio::test]
async fn caller_not_granted_host_is_permission_denied() {
    let h = start(CallLimits::default()).await;
    let user = h.authenticate("user", "user-secret").await.unwrap();
    let other = h.authenticate("other-machine", "other-secret").await.unwrap();
    let mut c = h.client().await;
    // OTHER is online, but `user` may only call BOT.
    let _ans = answer_as(&mut c, OTHER, Some(&other)).await.unwrap();
    assert_eq!(call_as(&mut c, OTHER, Some(&user)).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(config_as(&mut c, OTHER, Some(&user)).await.unwrap_err().code(), Code::PermissionDenied);
    let st = update_as(&mut c, OTHER, Some(&user), "x", call_update_request::Update::Done(true)).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    // A machine key may not call (even its own host).
    assert_eq!(call_as(&mut c, OTHER, Some(&other)).await.unwrap_err().code(), Code::PermissionDenied);
    // Granted host, but offline: past authorization.
    assert_eq!(call_as(&mut c, BOT, Some(&user)).await.unwrap_err().code(), Code::NotFound);
    config_as(&mut c, BOT, Some(&user)).await.unwrap();
}

#[tokio::test]
async fn answerer_for_foreign_host_is_permission_denied() {
    let h = start(CallLimits::default()).await;
    let other = h.authenticate("other-machine", "other-secret").await.unwrap();
    let user = h.authenticate("user", "user-secret").await.unwrap();
    let mut c = h.client().await;
    assert_eq!(answer_as(&mut c, BOT, Some(&other)).await.err().unwrap().code(), Code::PermissionDenied);
    assert_eq!(answer_as(&mut c, BOT, Some(&user)).await.err().unwrap().code(), Code::PermissionDenied);
    // Answering for its own host plus a foreign one is refused as a whole.
    let (_tx, rx) = mpsc::channel(1);
    let mut req = with_hosts(ReceiverStream::new(rx), &[OTHER, BOT]);
    req.metadata_mut().insert("authorization", format!("Bearer {other}").parse().unwrap());
    assert_eq!(within(c.answer(req)).await.err().unwrap().code(), Code::PermissionDenied);
    // Nobody answers for BOT.
    assert_eq!(call_as(&mut c, BOT, Some(&user)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn granted_caller_and_answerer_exchange() {
    let h = start(CallLimits::default()).await;
    let user = h.authenticate("user", "user-secret").await.unwrap();
    let bot = h.authenticate("bot-machine", "bot-secret").await.unwrap();
    let mut c = h.client().await;
    let mut ans = answer_as(&mut c, BOT, Some(&bot)).await.unwrap();
    config_as(&mut c, BOT, Some(&user)).await.unwrap();
    let mut call = call_as(&mut c, BOT, Some(&user)).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert_eq!(init.sdp, "offer");
    ans.send_init(&uuid, "answer").await;
    let m = within(call.message()).await.unwrap().unwrap();
    assert!(matches!(&m.stage, Some(call_response::Stage::Init(i)) if i.sdp == "answer"), "{m:?}");
    update_as(&mut c, BOT, Some(&user), &uuid, call_update_request::Update::Candidate(candidate("c1"))).await.unwrap();
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!(m.uuid, uuid);
    ans.send_done(&uuid).await;
    assert!(within(call.message()).await.unwrap().is_none());
    update_as(&mut c, BOT, Some(&user), &uuid, call_update_request::Update::Done(true)).await.unwrap();
}

#[tokio::test]
async fn call_rate_limit_is_resource_exhausted() {
    let h = start(CallLimits::default().with_rate_per_minute(Some(2)).with_max_pending_per_host(None)).await;
    let user = h.authenticate("user", "user-secret").await.unwrap();
    let mut c = h.client().await;
    // Offline host: the calls still count.
    assert_eq!(call_as(&mut c, BOT, Some(&user)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(call_as(&mut c, BOT, Some(&user)).await.unwrap_err().code(), Code::NotFound);
    let st = call_as(&mut c, BOT, Some(&user)).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().starts_with("request exceeds rate limit"), "{st:?}");
    // Denied calls are refused before they reach the limiter.
    let other = h.authenticate("other-machine", "other-secret").await.unwrap();
    assert_eq!(call_as(&mut c, BOT, Some(&other)).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn pending_calls_per_host_are_capped() {
    let h = start(CallLimits::default().with_rate_per_minute(None).with_max_pending_per_host(Some(2))).await;
    let user = h.authenticate("user", "user-secret").await.unwrap();
    let bot = h.authenticate("bot-machine", "bot-secret").await.unwrap();
    let mut c = h.client().await;
    let mut ans = answer_as(&mut c, BOT, Some(&bot)).await.unwrap();
    let mut first = call_as(&mut c, BOT, Some(&user)).await.unwrap();
    let second = call_as(&mut c, BOT, Some(&user)).await.unwrap();
    let st = call_as(&mut c, BOT, Some(&user)).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    // Answering one frees its slot.
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    let m = within(first.message()).await.unwrap().unwrap();
    assert!(matches!(m.stage, Some(call_response::Stage::Init(_))));
    let third = call_as(&mut c, BOT, Some(&user)).await.unwrap();
    // Hanging up frees a slot too.
    drop(second);
    drop(third);
    within(async {
        loop {
            match call_as(&mut c, BOT, Some(&user)).await {
                Ok(_) => break,
                Err(st) if st.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(st) => panic!("{st:?}"),
            }
        }
    })
    .await;
}
