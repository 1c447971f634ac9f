//! The machine config parser: `Config::from_json` must return a value or an
//! error naming a field, never panic; and everything the machine derives
//! from a config it accepted (heartbeat window, WebRTC settings, TURN
//! credentials, ICE server URLs, signaling addresses, components built from
//! their attributes) must work too.
//!
//! Two input shapes: the document text itself (byte-level mutations of the
//! seed configs), or, after a leading NUL byte, bytes driving a
//! structure-aware generator (valid JSON in the config's shape, with
//! edge-case values in every field).
#![no_main]

use std::time::SystemTime;

use arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tether_machine::config::{Config, parse_go_duration};
use tether_machine::models::Models;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => {
            let mut u = Unstructured::new(rest);
            if let Ok(doc) = config(&mut u) {
                let text = if u.arbitrary().unwrap_or(false) { format!("{doc:#}") } else { doc.to_string() };
                check(&text);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(data);
            check(&text);
            let _ = parse_go_duration(&text);
        }
    }
});

fn check(text: &str) {
    // from_json validates; an accepted config must then survive everything
    // derived from it.
    let Ok(cfg) = Config::from_json(text) else { return };
    let _ = cfg.heartbeat_window();
    let _ = cfg.api_keys();
    let settings = cfg.webrtc_settings();
    if let Some(turn) = &settings.turn {
        let _ = turn.ice_server("robot-main.abc.viam.cloud", SystemTime::now());
    }
    for server in settings.ice_servers.iter().chain(&settings.caller_ice_servers) {
        for url in &server.urls {
            let _ = rtc::ice::url::Url::parse_url(url);
        }
    }
    for addr in &settings.signaling {
        // DirectConnection parses signaling addresses as URIs.
        let _ = tether_transport::dial::normalize_address(addr).parse::<http::Uri>();
    }
    let _ = cfg.build(&Models::builtin());
}

// ---- the structure-aware generator ----

/// Every component subtype (from the one list of kinds), and `board`, which
/// is none.
macro_rules! kinds {
    ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
        [$( $subtype, )* "board"]
    };
}
const KINDS: &[&str] = &tether_machine::components::for_each_kind!(kinds);
const ATTRIBUTES: [&str; 21] = [
    "max_rpm",
    "speed_degs_per_sec",
    "turning_radius_mm",
    "width_mm",
    "wheel_circumference_mm",
    "max_speed_mm_per_sec",
    "max_angular_degs_per_sec",
    "width_px",
    "height_px",
    "frame_rate",
    "lengths_mm",
    "speed_mm_per_sec",
    "max_opening_mm",
    "travel_time_ms",
    "object_width_mm",
    "period_secs",
    "min_angle_deg",
    "max_angle_deg",
    "starting_position_deg",
    "labels",
    "position_count",
];

/// Sometimes replaces a well-shaped value with anything at all.
fn or_junk(u: &mut Unstructured, good: impl FnOnce(&mut Unstructured) -> AResult<Value>) -> AResult<Value> {
    if u.ratio(1, 12)? { any(u, 2) } else { good(u) }
}

fn any(u: &mut Unstructured, depth: u32) -> AResult<Value> {
    let max = if depth == 0 { 4 } else { 6 };
    Ok(match u.int_in_range(0..=max)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 | 4 => Value::String(u.arbitrary()?),
        5 => Value::Array((0..u.int_in_range(0..=4)?).map(|_| any(u, depth - 1)).collect::<AResult<_>>()?),
        _ => {
            let mut m = Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                m.insert(u.arbitrary()?, any(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

fn number(u: &mut Unstructured) -> AResult<Value> {
    let f = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match u.int_in_range(0..=12)? {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u32::MAX),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => f(-0.0),
        6 => f(f64::MAX),
        7 => f(f64::MIN_POSITIVE),
        8 => f(1e-300),
        9 => json!(u.int_in_range(0..=10_000)?),
        10 => f(u.arbitrary()?),
        11 => json!(u.arbitrary::<i64>()?),
        _ => f(f64::from(u.int_in_range(-1000..=1000)?) / 7.0),
    })
}

fn pick_or_any(u: &mut Unstructured, pool: &[&str]) -> AResult<String> {
    Ok(if u.ratio(3, 4)? { (*u.choose(pool)?).to_owned() } else { u.arbitrary()? })
}

/// A Go duration: number–unit pairs with odd numbers and units.
fn duration(u: &mut Unstructured) -> AResult<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let mut s = String::new();
    if u.ratio(1, 16)? {
        s.push(' ');
    }
    for _ in 0..u.int_in_range(1..=4)? {
        let n = match u.int_in_range(0..=9)? {
            0 => "0".to_owned(),
            1 => "1.5".to_owned(),
            2 => ".5".to_owned(),
            3 => "5.".to_owned(),
            4 => ".".to_owned(),
            5 => "1.2.3".to_owned(),
            6 => "9".repeat(u.int_in_range(10..=400)?),
            7 => format!("0.{}", "0".repeat(u.int_in_range(0..=40)?)) + "1",
            8 => u.arbitrary::<u64>()?.to_string(),
            _ => u.int_in_range(0u64..=100_000)?.to_string(),
        };
        s.push_str(&n);
        s.push_str(&pick_or_any(u, &["ns", "us", "µs", "μs", "ms", "s", "m", "h", "", "d", "S"])?);
    }
    Ok(s)
}

fn strings(u: &mut Unstructured, pool: &[&str], max: usize) -> AResult<Value> {
    or_junk(u, |u| {
        let n = u.int_in_range(0..=max)?;
        Ok(Value::Array((0..n).map(|_| pick_or_any(u, pool).map(Value::String)).collect::<AResult<_>>()?))
    })
}

fn config(u: &mut Unstructured) -> AResult<Value> {
    let mut root = Map::new();
    if u.ratio(3, 4)? {
        let v = or_junk(u, |u| {
            let n = u.int_in_range(0..=6)?;
            Ok(Value::Array((0..n).map(|_| component(u)).collect::<AResult<_>>()?))
        })?;
        root.insert("components".into(), v);
    }
    if u.ratio(3, 4)? {
        let v = or_junk(u, network)?;
        root.insert("network".into(), v);
    }
    if u.ratio(1, 2)? {
        let v = or_junk(u, auth)?;
        root.insert("auth".into(), v);
    }
    if u.ratio(1, 8)? {
        root.insert(u.arbitrary()?, any(u, 2)?);
    }
    Ok(Value::Object(root))
}

fn component(u: &mut Unstructured) -> AResult<Value> {
    let mut c = Map::new();
    if u.ratio(7, 8)? {
        c.insert("name".into(), Value::String(pick_or_any(u, &["m", "a", "b", ""])?));
    }
    if u.ratio(3, 4)? {
        let api = match u.int_in_range(0..=5)? {
            0 => format!("rdk:service:{}", u.choose(KINDS)?),
            1 => (*u.choose(KINDS)?).to_owned(),
            2 => u.arbitrary()?,
            _ => format!("rdk:component:{}", u.choose(KINDS)?),
        };
        c.insert("api".into(), Value::String(api));
    }
    if u.ratio(1, 4)? {
        c.insert("type".into(), Value::String(pick_or_any(u, KINDS)?));
    }
    if u.ratio(7, 8)? {
        c.insert("model".into(), Value::String(pick_or_any(u, &["rdk:builtin:fake", "fake", "acme:x:y", ""])?));
    }
    if u.ratio(3, 4)? {
        let attrs = or_junk(u, |u| {
            let mut a = Map::new();
            for _ in 0..u.int_in_range(0..=5)? {
                let key = pick_or_any(u, &ATTRIBUTES)?;
                let value = match u.int_in_range(0..=5)? {
                    0 => {
                        let n = if u.ratio(1, 16)? { u.int_in_range(0..=100)? } else { u.int_in_range(0..=4)? };
                        Value::Array((0..n).map(|_| number(u)).collect::<AResult<_>>()?)
                    }
                    1 => strings(u, &["a", "b", ""], 5)?,
                    2 => any(u, 1)?,
                    _ => number(u)?,
                };
                a.insert(key, value);
            }
            Ok(Value::Object(a))
        })?;
        c.insert("attributes".into(), attrs);
    }
    Ok(Value::Object(c))
}

fn ice_servers(u: &mut Unstructured) -> AResult<Value> {
    const URLS: [&str; 8] = [
        "stun:global.stun.twilio.com:3478",
        "turn:10.0.0.1:3478?transport=udp",
        "turns:turn.example.com:5349?transport=tcp",
        "stun:",
        "turn:[::1]:3478",
        "stun:host:99999",
        "turn:host:3478?transport=",
        "http://x",
    ];
    or_junk(u, |u| {
        let n = u.int_in_range(0..=3)?;
        let mut list = Vec::new();
        for _ in 0..n {
            let mut s = Map::new();
            s.insert("urls".into(), strings(u, &URLS, 3)?);
            if u.ratio(1, 2)? {
                s.insert("username".into(), Value::String(u.arbitrary()?));
                s.insert("credential".into(), Value::String(u.arbitrary()?));
            }
            list.push(Value::Object(s));
        }
        Ok(Value::Array(list))
    })
}

fn network(u: &mut Unstructured) -> AResult<Value> {
    let mut n = Map::new();
    if u.ratio(1, 2)? {
        let addr = pick_or_any(u, &["127.0.0.1:0", "0.0.0.0:8080", "[::1]:8080", "nowhere", "1.2.3.4:99999", ""])?;
        n.insert("bind_address".into(), Value::String(addr));
    }
    if u.ratio(1, 8)? {
        n.insert("tls_cert_file".into(), Value::String(u.arbitrary()?));
    }
    if u.ratio(1, 8)? {
        n.insert("tls_key_file".into(), Value::String(u.arbitrary()?));
    }
    if u.ratio(1, 2)? {
        let s = or_junk(u, |u| Ok(json!({ "heartbeat_window": duration(u)? })))?;
        n.insert("sessions".into(), s);
    }
    if u.ratio(1, 3)? {
        n.insert("hosts".into(), strings(u, &["robot.local", "", "192.168.1.5:8080"], 6)?);
    }
    if u.ratio(1, 4)? {
        let pool = ["app.viam.com:443", "https://app.viam.com", "http://[::1]:8080", "", "http://", "a b"];
        n.insert("signaling".into(), strings(u, &pool, 3)?);
    }
    if u.ratio(1, 3)? {
        n.insert("ice_servers".into(), ice_servers(u)?);
    }
    if u.ratio(1, 4)? {
        n.insert("caller_ice_servers".into(), ice_servers(u)?);
    }
    if u.ratio(1, 3)? {
        let t = or_junk(u, |u| {
            let mut t = Map::new();
            t.insert("urls".into(), strings(u, &["turn:10.0.0.1:3478", ""], 2)?);
            t.insert("secret".into(), Value::String(pick_or_any(u, &["s3cret", ""])?));
            if u.ratio(3, 4)? {
                t.insert("ttl".into(), Value::String(duration(u)?));
            }
            Ok(Value::Object(t))
        })?;
        n.insert("turn".into(), t);
    }
    if u.ratio(1, 4)? {
        n.insert("disable_webrtc".into(), Value::Bool(u.arbitrary()?));
    }
    Ok(Value::Object(n))
}

fn auth(u: &mut Unstructured) -> AResult<Value> {
    let mut handlers = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let keys = or_junk(u, |u| {
            let n = u.int_in_range(0..=3)?;
            let mut keys = Vec::new();
            for _ in 0..n {
                keys.push(json!({ "id": pick_or_any(u, &["key-id", ""])?, "key": pick_or_any(u, &["secret", ""])? }));
            }
            Ok(Value::Array(keys))
        })?;
        let kind = pick_or_any(u, &["api-key", "robot-secret"])?;
        handlers.push(json!({ "type": kind, "config": { "keys": keys } }));
    }
    Ok(json!({ "handlers": handlers }))
}
