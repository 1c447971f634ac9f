//! End-to-end tests of the signaling service over loopback gRPC, with fake
//! callers and answerers (SDP strings are opaque to the signaler).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerResponse, CallRequest, CallResponse, OptionalWebRtcConfigRequest, answer_request, call_response,
    call_update_request::Update,
};
use tether_signaling::{Authorizer, HostAllowList, MemoryQueue, Role, TurnRestConfig, ice_server};
use tether_transport::auth::AuthEntity;
use tonic::Code;

const HOST: &str = "robot-main.loc.viam.cloud";

fn init_of(m: &CallResponse) -> &str {
    match &m.stage {
        Some(call_response::Stage::Init(i)) => &i.sdp,
        other => panic!("expected init, got {other:?}"),
    }
}

fn update_of(m: &CallResponse) -> &str {
    match &m.stage {
        Some(call_response::Stage::Update(u)) => &u.candidate.as_ref().unwrap().candidate,
        other => panic!("expected update, got {other:?}"),
    }
}

fn answer_update_of(m: &tether_proto::proto::rpc::webrtc::v1::AnswerRequest) -> &str {
    match &m.stage {
        Some(answer_request::Stage::Update(u)) => &u.candidate.as_ref().unwrap().candidate,
        other => panic!("expected update, got {other:?}"),
    }
}

#[tokio::test]
async fn happy_path_trickle_both_ways() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();

    let before = SystemTime::now();
    let mut call = within(call(&mut c, HOST, "offer-sdp")).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert!(!uuid.is_empty());
    assert_eq!(init.sdp, "offer-sdp");
    let cfg = init.optional_config.expect("optional_config present");
    assert!(!cfg.disable_trickle);
    let deadline: SystemTime = init.deadline.expect("deadline present").try_into().unwrap();
    assert!(deadline > before + Duration::from_secs(9), "deadline {deadline:?} too early");
    assert!(deadline <= SystemTime::now() + Duration::from_secs(10));

    // Answerer: init + two candidates.
    ans.send_init(&uuid, "answer-sdp").await;
    ans.send_candidate(&uuid, candidate("a1")).await;
    ans.send_candidate(&uuid, candidate("a2")).await;

    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!(m.uuid, uuid);
    assert_eq!(init_of(&m), "answer-sdp");
    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!((m.uuid.as_str(), update_of(&m)), (uuid.as_str(), candidate("a1").candidate.as_str()));
    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!(update_of(&m), candidate("a2").candidate);

    // Caller: two candidates, relayed in order.
    update(&mut c, HOST, &uuid, Update::Candidate(candidate("c1"))).await.unwrap();
    update(&mut c, HOST, &uuid, Update::Candidate(candidate("c2"))).await.unwrap();
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!((m.uuid.as_str(), answer_update_of(&m)), (uuid.as_str(), candidate("c1").candidate.as_str()));
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!(answer_update_of(&m), candidate("c2").candidate);

    // Answerer done → the Call stream ends with OK right away.
    ans.send_done(&uuid).await;
    assert!(within(call.message()).await.unwrap().is_none(), "Call must end OK after answerer done");

    // Caller done → answerer gets done, then its Answer RPC ends OK.
    update(&mut c, HOST, &uuid, Update::Done(true)).await.unwrap();
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!(m.uuid, uuid);
    assert!(matches!(m.stage, Some(answer_request::Stage::Done(_))), "{m:?}");
    assert!(ans.next().await.unwrap().is_none(), "Answer must end after both sides are done");

    // Late updates for the finished call are OK.
    update(&mut c, HOST, &uuid, Update::Candidate(candidate("late"))).await.unwrap();
    h.wait_no_offers().await;
}

#[tokio::test]
async fn caller_candidates_before_answer_are_buffered() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!(init_of(&m), "answer");
    // Candidates sent concurrently (as the TS SDK does) all arrive.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut c2 = c.clone();
        let uuid = uuid.clone();
        tasks.push(tokio::spawn(async move {
            update(&mut c2, HOST, &uuid, Update::Candidate(candidate(&format!("c{i}")))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(answer_update_of(&ans.next().await.unwrap().unwrap()).to_string());
    }
    got.sort();
    let mut want: Vec<String> = (0..5).map(|i| candidate(&format!("c{i}")).candidate).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn disable_trickle_is_carried_to_the_answerer() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let _call = within(call_with(&mut c, HOST, CallRequest { sdp: "full".into(), disable_trickle: true })).await;
    let (_, init) = ans.expect_init().await;
    assert!(init.optional_config.unwrap().disable_trickle);
}

#[tokio::test]
async fn two_answerers_two_callers_each_offer_answered_once() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut a1 = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut a2 = answerer(&mut c, &[HOST], false).await.unwrap();

    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (call1, call2) = tokio::join!(call(&mut c1, HOST, "offer-1"), call(&mut c2, HOST, "offer-2"));
    let (mut call1, mut call2) = (call1.unwrap(), call2.unwrap());

    let (u1, i1) = a1.expect_init().await;
    let (u2, i2) = a2.expect_init().await;
    assert_ne!(u1, u2);
    let mut offers = vec![i1.sdp.clone(), i2.sdp.clone()];
    offers.sort();
    assert_eq!(offers, vec!["offer-1", "offer-2"]);

    // Each answerer answers with its own name; each caller gets the answer
    // of the answerer that got its offer.
    a1.send_init(&u1, &format!("answer-to-{}", i1.sdp)).await;
    a2.send_init(&u2, &format!("answer-to-{}", i2.sdp)).await;
    a1.send_done(&u1).await;
    a2.send_done(&u2).await;
    let m1 = within(call1.message()).await.unwrap().unwrap();
    let m2 = within(call2.message()).await.unwrap().unwrap();
    assert_eq!(init_of(&m1), "answer-to-offer-1");
    assert_eq!(init_of(&m2), "answer-to-offer-2");
    assert!(within(call1.message()).await.unwrap().is_none());
    assert!(within(call2.message()).await.unwrap().is_none());

    // Callers finish; each answerer sees done and then the end (no second offer).
    update(&mut c, HOST, &m1.uuid, Update::Done(true)).await.unwrap();
    update(&mut c, HOST, &m2.uuid, Update::Done(true)).await.unwrap();
    for a in [&mut a1, &mut a2] {
        assert!(matches!(a.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
        assert!(a.next().await.unwrap().is_none());
    }
    h.wait_no_offers().await;
}

#[tokio::test]
async fn no_answerer_is_not_found_fast() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let start = Instant::now();
    let err = within(call(&mut c, HOST, "offer")).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "host appears to be offline; ensure machine is online and try again");
    assert_eq!(h.queue.stats().offers, 0);
}

#[tokio::test]
async fn answerer_gone_before_answering() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let _ = ans.expect_init().await;
    let start = Instant::now();
    drop(ans);
    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    h.wait_no_offers().await;
}

#[tokio::test]
async fn answerer_gone_after_answering_ends_call_ok() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    ans.send_candidate(&uuid, candidate("a1")).await;
    assert_eq!(init_of(&within(call.message()).await.unwrap().unwrap()), "answer");
    assert_eq!(update_of(&within(call.message()).await.unwrap().unwrap()), candidate("a1").candidate);
    drop(ans);
    assert!(within(call.message()).await.unwrap().is_none());
    // The caller's late updates are still answered OK.
    update(&mut c, HOST, &uuid, Update::Done(true)).await.unwrap();
    h.wait_no_offers().await;
}

#[tokio::test]
async fn answerer_error_is_propagated_with_its_code() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_error(&uuid, rpc_status(Code::ResourceExhausted, "too many active connections")).await;
    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "error from answerer: too many active connections");
    // The answerer's RPC ends OK (it reported the error itself).
    assert!(ans.next().await.unwrap().is_none());
    h.wait_no_offers().await;
}

#[tokio::test]
async fn caller_going_away_is_reported_to_the_answerer() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    drop(call);
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!(m.uuid, uuid);
    match m.stage {
        Some(answer_request::Stage::Error(e)) => assert_eq!(e.status.unwrap().code, Code::Cancelled as i32),
        other => panic!("expected error, got {other:?}"),
    }
    assert!(matches!(ans.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
    assert!(ans.next().await.unwrap().is_none());
    h.wait_no_offers().await;
}

#[tokio::test]
async fn call_update_for_unknown_uuid_is_ok() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;
    update(&mut c, HOST, "no-such-uuid", Update::Candidate(candidate("x"))).await.unwrap();
    update(&mut c, HOST, "no-such-uuid", Update::Done(true)).await.unwrap();
    update(&mut c, HOST, "no-such-uuid", Update::Error(rpc_status(Code::Unknown, "boom"))).await.unwrap();
    update(&mut c, HOST, "", Update::Done(true)).await.unwrap();
}

#[tokio::test]
async fn bad_rpc_host() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;

    let check = |r: Result<(), tonic::Status>, msg: &str| {
        let e = r.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, msg));
    };
    let req = || CallRequest { sdp: "x".into(), disable_trickle: false };

    // Call: missing, empty, two (repeated), two (comma-separated).
    check(c.call(with_hosts(req(), &[])).await.map(|_| ()), "expected rpc-host to be set in metadata");
    check(c.call(with_hosts(req(), &[""])).await.map(|_| ()), "expected non-empty rpc-host");
    check(c.call(with_hosts(req(), &["a", "b"])).await.map(|_| ()), "expected 1 rpc-host");
    check(c.call(with_hosts(req(), &["a,b"])).await.map(|_| ()), "expected 1 rpc-host");

    // CallUpdate: same rules.
    let upd = || tether_proto::proto::rpc::webrtc::v1::CallUpdateRequest {
        uuid: "u".into(),
        update: Some(Update::Done(true)),
    };
    check(c.call_update(with_hosts(upd(), &[])).await.map(|_| ()), "expected rpc-host to be set in metadata");
    check(c.call_update(with_hosts(upd(), &["a", "b"])).await.map(|_| ()), "expected 1 rpc-host");

    // Answer: 1-5 values, repeated or comma-separated.
    check(answerer(&mut c, &[], false).await.map(|_| ()), "expected rpc-host to be set in metadata");
    check(answerer(&mut c, &["1", "2", "3", "4", "5", "6"], false).await.map(|_| ()), "too many rpc-host");
    check(answerer(&mut c, &["1,2,3", "4,5,6"], false).await.map(|_| ()), "too many rpc-host");
    check(answerer(&mut c, &["a", ""], false).await.map(|_| ()), "expected non-empty rpc-host");

    // OptionalWebRTCConfig: same as Answer.
    let cfg = |hosts: &[&str]| with_hosts(OptionalWebRtcConfigRequest {}, hosts);
    check(c.optional_web_rtc_config(cfg(&[])).await.map(|_| ()), "expected rpc-host to be set in metadata");
    check(c.optional_web_rtc_config(cfg(&["1,2,3,4,5,6"])).await.map(|_| ()), "too many rpc-host");
    c.optional_web_rtc_config(cfg(&["1", "2", "3", "4", "5"])).await.unwrap();

    // An answerer serving two hosts via one comma-separated value gets calls for both.
    let mut ans = answerer(&mut c, &["h1, h2"], false).await.unwrap();
    let _call = within(call(&mut c, "h2", "offer-h2")).await.unwrap();
    assert_eq!(ans.expect_init().await.1.sdp, "offer-h2");
}

#[tokio::test]
async fn host_allow_list() {
    let hosts = HostAllowList::new([HOST]);
    let list = hosts.clone();
    let h = Harness::start(move |b| b.allowed_hosts(list)).await;
    let mut c = h.client().await;
    let not_pre = |e: tonic::Status| {
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "host not preconfigured"));
    };
    not_pre(call(&mut c, "other", "x").await.unwrap_err());
    not_pre(update(&mut c, "other", "u", Update::Done(true)).await.unwrap_err());
    not_pre(answerer(&mut c, &[HOST, "other"], false).await.err().unwrap());
    not_pre(c.optional_web_rtc_config(with_hosts(OptionalWebRtcConfigRequest {}, &["other"])).await.unwrap_err());

    // Allowed host works.
    c.optional_web_rtc_config(with_hosts(OptionalWebRtcConfigRequest {}, &[HOST])).await.unwrap();
    // Learned at runtime.
    hosts.insert("127.0.0.1:8080");
    c.optional_web_rtc_config(with_hosts(OptionalWebRtcConfigRequest {}, &["127.0.0.1:8080"])).await.unwrap();
    let mut ans = answerer(&mut c, &["127.0.0.1:8080"], false).await.unwrap();
    let _call = within(call(&mut c, "127.0.0.1:8080", "offer")).await.unwrap();
    assert_eq!(ans.expect_init().await.1.sdp, "offer");
}

#[tokio::test]
async fn heartbeats_with_empty_uuid_idle_and_during_exchange() {
    let h = Harness::start(|b| b.heartbeat_interval(Duration::from_millis(40))).await;
    let mut c = h.client().await;

    // Without the header: nothing arrives while idle.
    let mut quiet = answerer(&mut c, &["quiet"], false).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), quiet.rx.message()).await.is_err());

    let mut ans = answerer(&mut c, &[HOST], true).await.unwrap();
    for _ in 0..3 {
        let m = within(ans.rx.message()).await.unwrap().unwrap();
        assert_eq!(m.uuid, "");
        assert!(is_heartbeat(&m), "{m:?}");
    }

    // During an exchange heartbeats keep coming, interleaved with the offer's messages.
    let _call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let mut saw_init = false;
    let mut beats_after_init = 0;
    while beats_after_init < 3 {
        let m = within(ans.rx.message()).await.unwrap().unwrap();
        if is_heartbeat(&m) {
            assert_eq!(m.uuid, "");
            beats_after_init += usize::from(saw_init);
        } else {
            assert!(matches!(m.stage, Some(answer_request::Stage::Init(_))));
            assert!(!m.uuid.is_empty());
            saw_init = true;
        }
    }
}

#[test]
fn heartbeat_interval_is_clamped_below_30s() {
    let s = tether_signaling::SignalingServer::builder(Arc::new(MemoryQueue::new()))
        .heartbeat_interval(Duration::from_secs(60))
        .build();
    assert!(s.config().heartbeat_interval < Duration::from_secs(30));
    let s = tether_signaling::SignalingServer::builder(Arc::new(MemoryQueue::new()))
        .heartbeat_interval(Duration::ZERO)
        .build();
    assert!(s.config().heartbeat_interval > Duration::ZERO);
}

#[tokio::test]
async fn turn_rest_credentials_verify() {
    let secret = "turn-shared-secret";
    let h = Harness::start(|b| {
        b.ice_server(ice_server(["stun:stun.example.com:3478"], "", "")).turn(
            TurnRestConfig::new(["turn:turn.example.com:3478?transport=udp"], secret).ttl(Duration::from_secs(3600)),
        )
    })
    .await;
    let mut c = h.client().await;
    let resp =
        c.optional_web_rtc_config(with_hosts(OptionalWebRtcConfigRequest {}, &[HOST])).await.unwrap().into_inner();
    let cfg = resp.config.unwrap();
    assert!(!cfg.disable_trickle);
    assert_eq!(cfg.additional_ice_servers.len(), 2);
    let stun = &cfg.additional_ice_servers[0];
    assert_eq!(stun.urls, vec!["stun:stun.example.com:3478"]);
    assert_eq!((stun.username.as_str(), stun.credential.as_str()), ("", ""));

    let verify = |turn: &tether_proto::proto::rpc::webrtc::v1::IceServer| {
        // The UDP URL and its TCP copy (for networks that let only TCP out).
        assert_eq!(
            turn.urls,
            vec!["turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp"]
        );
        let (ts, user) = turn.username.split_once(':').unwrap();
        assert_eq!(user, HOST);
        let ts: u64 = ts.parse().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(ts >= now + 3590 && ts <= now + 3610, "expiry {ts} vs now {now}");
        let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(turn.username.as_bytes());
        let expect = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(turn.credential, expect);
    };
    verify(&cfg.additional_ice_servers[1]);

    // The answerer's init carries the same servers.
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let _call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let servers = ans.expect_init().await.1.optional_config.unwrap().additional_ice_servers;
    assert_eq!(servers.len(), 2);
    verify(&servers[1]);
}

#[tokio::test]
async fn offer_deadline_while_answerer_is_silent() {
    let deadline = Duration::from_millis(300);
    let h = Harness::start(|b| b.offer_deadline(deadline)).await;
    let mut c = h.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let start = Instant::now();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    let d: SystemTime = init.deadline.unwrap().try_into().unwrap();
    assert!(d <= SystemTime::now() + deadline);

    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "took {took:?}");

    // The answerer learns about it (error and/or done) and its RPC ends.
    let mut saw_done = false;
    while let Some(m) = ans.next().await.unwrap() {
        assert_eq!(m.uuid, uuid);
        saw_done |= matches!(m.stage, Some(answer_request::Stage::Done(_)));
    }
    assert!(saw_done);
    h.wait_no_offers().await;
}

#[tokio::test]
async fn offer_deadline_when_answerer_recently_left() {
    // The host stays "online" for the grace period after its answerer left;
    // a call in that window waits for a new answerer until the deadline.
    let h = Harness::start_with(MemoryQueue::with_online_grace(Duration::from_secs(5)), |b| {
        b.offer_deadline(Duration::from_millis(200))
    })
    .await;
    let mut c = h.client().await;
    let ans = answerer(&mut c, &[HOST], false).await.unwrap();
    drop(ans);
    // Wait until the server has seen the answerer go away.
    within(async {
        while h.queue.stats().sessions != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let start = Instant::now();
    let mut call = within(call(&mut c, HOST, "offer")).await.unwrap();
    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(start.elapsed() >= Duration::from_millis(150));
    h.wait_no_offers().await;

    // After the grace period the host is offline again.
    let h = Harness::start_with(MemoryQueue::with_online_grace(Duration::from_millis(50)), |b| b).await;
    let mut c = h.client().await;
    drop(answerer(&mut c, &[HOST], false).await.unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(common::call(&mut c, HOST, "offer").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn answerer_protocol_errors_fail_the_rpc() {
    let h = Harness::start(|b| b).await;
    let mut c = h.client().await;

    // uuid mismatch
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call1 = within(call(&mut c, HOST, "offer")).await.unwrap();
    let _ = ans.expect_init().await;
    ans.send_init("wrong-uuid", "answer").await;
    let err = ans.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("uuid mismatch"), "{err:?}");
    let err = within(call1.message()).await.unwrap_err();
    assert!(err.message().starts_with("error from answerer: "), "{err:?}");

    // unknown stage (no oneof set)
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let _call2 = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.tx.send(AnswerResponse { uuid: uuid.clone(), stage: None }).await.unwrap();
    let err = ans.next().await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "unknown answer stage"));

    // update before init
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let _call3 = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_candidate(&uuid, candidate("early")).await;
    assert_eq!(ans.next().await.unwrap_err().code(), Code::InvalidArgument);

    // message before any offer
    let mut ans = answerer(&mut c, &["idle-host"], false).await.unwrap();
    ans.send_done("x").await;
    assert_eq!(ans.next().await.unwrap_err().code(), Code::InvalidArgument);

    // The server still works.
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut call4 = within(call(&mut c, HOST, "offer-ok")).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert_eq!(init.sdp, "offer-ok");
    ans.send_init(&uuid, "answer-ok").await;
    ans.send_done(&uuid).await;
    assert_eq!(init_of(&within(call4.message()).await.unwrap().unwrap()), "answer-ok");
    assert!(within(call4.message()).await.unwrap().is_none());
}

struct DenyHost(&'static str);

#[tonic::async_trait]
impl Authorizer for DenyHost {
    async fn authorize(&self, entity: Option<&AuthEntity>, host: &str, role: Role) -> Result<(), tonic::Status> {
        assert!(entity.is_none(), "no auth layer in this test");
        if host == self.0 && role == Role::Caller {
            return Err(tonic::Status::permission_denied("not yours"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn authorizer_hook_is_consulted() {
    let h = Harness::start(|b| b.authorizer(Arc::new(DenyHost("secret-robot")))).await;
    let mut c = h.client().await;
    let _ans = answerer(&mut c, &["secret-robot"], false).await.unwrap(); // answerer role allowed
    let err = call(&mut c, "secret-robot", "offer").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = update(&mut c, "secret-robot", "u", Update::Done(true)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    c.optional_web_rtc_config(with_hosts(OptionalWebRtcConfigRequest {}, &["secret-robot"])).await.unwrap();
}
