//! `tether call`: one call (or a few) against a machine, from the shell.
//!
//! The target is either a machine-level command (`resources`, `status`, …)
//! or a component name; the component's kind is looked up in the machine's
//! `ResourceNames` and decides which actions exist. Failures print
//! `error: <CODE>: <message>` on stderr (the gRPC code as the machine sent
//! it) and exit with status 1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tether_client::{Credentials, DialConf, DirectFallback, Options, ReconnectOptions, ResourceName, RobotClient};

mod components;
mod params;
mod render;
mod watch;

use params::Params;

const AFTER_HELP: &str = "\
Machine commands (TARGET):
  resources                 list resources, one per line
  status                    machine state and resource states
  version                   platform and version
  sessions                  active sessions
  operations                running operations
  cancel-operation ID       cancel a running operation
  stop-all                  stop every actuator
  connection                transport; for WebRTC the selected ICE candidate pair
  watch                     stay connected and print connection events live (with --json
                            one object per line with an `event` field) until Ctrl-C

Component actions (TARGET is a component name, kind found via ResourceNames):
  motor    set-power P | go-for RPM REVS | go-to RPM POS | set-rpm RPM | reset-zero [OFFSET]
           position | is-powered | is-moving | properties | stop
  arm      joints | move-joints J1,J2,... | move-through J1,J2,... J1,J2,... | pose
           move-to X,Y,Z[,OX,OY,OZ,THETA] | is-moving | stop | kinematics
  base     move-straight MM MM_PER_SEC | spin DEG DEG_PER_SEC | set-power LIN ANG
           set-velocity LIN ANG | properties | is-moving | stop
  gripper  open | grab | is-holding | inputs | go-to-inputs V1,V2,... | is-moving | stop | kinematics
  servo    move DEG | position | is-moving | stop
  gantry   position | move P1,P2,... [S1,S2,...] | home | lengths | is-moving | stop | kinematics
  button   push
  switch   set-position N | position | positions
  sensor   readings
  camera   image [--mime M] [--out FILE] | images [--out DIR] | point-cloud [--out FILE] | properties
           stream [--seconds N] [--out FILE.ivf]  (WebRTC: video; prints fps, bitrate, frame delay)
  generic  only the shared actions:
  (every kind) do-command JSON | status | geometries (not button/switch)

  base set-power/set-velocity: LIN drives forward (+Y), ANG turns counter-clockwise (+Z).

Examples:
  tether call 127.0.0.1:8080 resources
  tether call 127.0.0.1:8080 motor1 set-power 0.5 --hold
  tether call 127.0.0.1:8080 sensor1 readings --json
  tether call 127.0.0.1:8080 watch --reconnect-max-attempts 20
  tether call 127.0.0.1:8080 camera1 image --out frame.jpg
  tether call 127.0.0.1:8080 camera1 stream --webrtc --seconds 5 --out camera1.ivf
  tether call 127.0.0.1:8080 generic1 do-command '{\"a\": 1}'";

/// Arguments of `tether call`.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct CallArgs {
    /// Machine address: host:port, http://host:port or https://host:port.
    pub address: String,
    /// A machine command (resources, status, version, sessions, operations,
    /// cancel-operation, stop-all, connection) or a component name.
    pub target: String,
    /// The component action and its arguments, e.g. `set-power 0.5`.
    /// Arguments may be negative (`-0.5`, `-10,20,30`); the options below
    /// may also follow them.
    #[arg(value_name = "ACTION [ARGS]", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Print one JSON object instead of human-readable text.
    #[arg(long)]
    pub json: bool,
    /// API key id to authenticate with (needs --api-key).
    #[arg(long, value_name = "ID")]
    pub api_key_id: Option<String>,
    /// API key secret (needs --api-key-id).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Start no session: the machine will not stop what this call started
    /// when the client goes away.
    #[arg(long)]
    pub disable_sessions: bool,
    /// Give up (DeadlineExceeded) if connecting plus the call take longer.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// After success, keep running (and heartbeating the session) until
    /// killed; prints `holding session <id>`.
    #[arg(long)]
    pub hold: bool,
    /// Where to write image or point-cloud data (`-` for stdout; a directory
    /// for `images`).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// MIME type to ask a camera for (default image/jpeg, or pointcloud/pcd).
    #[arg(long, value_name = "MIME")]
    pub mime: Option<String>,
    /// How long `camera stream` receives video (default 5).
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,
    /// Connect over WebRTC, using ADDRESS as the signaling service and the
    /// machine's host name (unless --host or --signaling say otherwise).
    #[arg(long)]
    pub webrtc: bool,
    /// Signaling service for a WebRTC dial (implies --webrtc); ADDRESS is
    /// then the machine's host name unless --host is given.
    #[arg(long, value_name = "URL")]
    pub signaling: Option<String>,
    /// The machine's host name for WebRTC signaling.
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// WebRTC: STUN/TURN server URL to use (repeatable; replaces the default
    /// public STUN server). Use `turn:user:pass@host:port` for credentials.
    #[arg(long = "ice-server", value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// WebRTC: use no STUN server of our own (only what signaling offers).
    #[arg(long)]
    pub no_stun: bool,
    /// WebRTC: only relay (TURN) candidates (`--relay-only` is its old name).
    #[arg(long, alias = "relay-only")]
    pub force_relay: bool,
    /// WebRTC: never relay (every TURN server is dropped).
    #[arg(long)]
    pub force_p2p: bool,
    /// WebRTC: keep only this TURN server, e.g. `turn:turn.example.com:3478`
    /// (matched by scheme, host, port and transport).
    #[arg(long, value_name = "URL")]
    pub turn_uri: Option<String>,
    /// WebRTC: rewrite every TURN URL to this scheme (turn or turns).
    #[arg(long, value_name = "SCHEME")]
    pub turn_scheme: Option<tether_client::TurnScheme>,
    /// WebRTC: rewrite every TURN URL to this transport (udp or tcp).
    #[arg(long, value_name = "TRANSPORT")]
    pub turn_transport: Option<tether_client::TurnTransport>,
    /// WebRTC: rewrite every TURN URL to this port.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub turn_port: Option<u16>,
    /// WebRTC: our priority (sent as `a=x-priority:N`); a machine at its
    /// connection limit may close an idle, sessionless lower-priority one.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// WebRTC: when the first WebRTC dial fails, dial this address directly
    /// (`never` for no fallback; default: the machine's host when it names
    /// a local one, as the TypeScript SDK does).
    #[arg(long, value_name = "ADDRESS")]
    pub direct_fallback: Option<String>,
    /// Dial once, and do not reconnect when the connection drops (the client
    /// ends). Without it the first dial is retried too (a machine that is
    /// starting, or offline at its signaling service, is waited for).
    #[arg(long)]
    pub no_reconnect: bool,
    /// Dial attempts, for the first dial and per outage (default 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reconnect_max_attempts: Option<u32>,
    /// Cap on each delay between reconnection attempts, in milliseconds
    /// (default: none; delays double from 100 ms).
    #[arg(long, value_name = "MS")]
    pub reconnect_max_wait_ms: Option<u64>,
}

/// The dial configuration the arguments describe.
fn dial_conf(args: &CallArgs) -> DialConf {
    if !args.webrtc && args.signaling.is_none() {
        return DialConf::direct(args.address.clone());
    }
    let (signaling, host) = match &args.signaling {
        Some(s) => (s.clone(), args.host.clone().unwrap_or_else(|| args.address.clone())),
        None => (args.address.clone(), args.host.clone().unwrap_or_else(|| args.address.clone())),
    };
    DialConf::webrtc(host, signaling).with_webrtc(|c| {
        if args.no_stun {
            c.ice_servers.clear();
        }
        if !args.ice_servers.is_empty() {
            c.ice_servers = args.ice_servers.iter().map(|u| tether_client::IceServer::parse(u)).collect();
        }
        c.force_relay = args.force_relay;
        c.force_p2p = args.force_p2p;
        c.turn_uri = args.turn_uri.clone();
        c.turn_scheme = args.turn_scheme;
        c.turn_transport = args.turn_transport;
        c.turn_port = args.turn_port;
        c.priority = args.priority;
        c.direct_fallback = match args.direct_fallback.as_deref() {
            None => DirectFallback::Auto,
            Some("never") => DirectFallback::Never,
            Some(address) => DirectFallback::To(address.to_owned()),
        };
    })
}

/// Why a call failed: a gRPC code (as the machine sent it, or the closest
/// one for a local problem) and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    code: Option<tonic::Code>,
    message: String,
}

impl Failure {
    /// A failure with a gRPC code.
    pub(crate) fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self { code: Some(code), message: message.into() }
    }

    /// A bad command line (InvalidArgument).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(tonic::Code::InvalidArgument, message)
    }

    /// A local problem with no gRPC equivalent (e.g. writing a file).
    pub(crate) fn local(message: impl Into<String>) -> Self {
        Self { code: None, message: message.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            // `Code`'s Debug form is the canonical name (`NotFound`), its
            // Display form a sentence.
            Some(code) => write!(f, "{code:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<tether_client::Error> for Failure {
    fn from(e: tether_client::Error) -> Self {
        let message = match &e {
            tether_client::Error::Status(s) => s.message().to_owned(),
            tether_client::Error::Dial(tether_transport::dial::DialError::Status(s)) => s.message().to_owned(),
            other => other.message(),
        };
        Self::new(e.code(), message)
    }
}

/// The result of one command, in both renderings.
pub(crate) struct Output {
    /// Text for people; printed as is (nothing when empty).
    pub human: String,
    /// The `--json` object.
    pub json: serde_json::Value,
}

impl Output {
    /// An output with both renderings.
    pub(crate) fn new(human: impl Into<String>, json: serde_json::Value) -> Self {
        Self { human: human.into(), json }
    }

    /// A command with no result: `human` for people, `{"ok": true}` as JSON.
    pub(crate) fn done(human: impl Into<String>) -> Self {
        Self::new(human, serde_json::json!({"ok": true}))
    }
}

/// Everything an action needs besides its own arguments.
pub(crate) struct Ctx<'a> {
    pub robot: &'a RobotClient,
    pub name: &'a str,
    pub out: Option<&'a std::path::Path>,
    pub mime: Option<&'a str>,
    pub seconds: Option<f64>,
}

/// Runs `tether call`.
pub(crate) async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let result = match take_trailing_options(args) {
        Ok(args) => call(&args).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(failure) => {
            // Output already printed stays; the error goes to stderr.
            let _ = std::io::stdout().flush();
            eprintln!("error: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Moves options that follow the action's arguments (which clap takes as
/// values, so that negative numbers such as `-10,20` pass) into their fields.
/// After a literal `--` everything is an argument.
fn take_trailing_options(mut args: CallArgs) -> Result<CallArgs, Failure> {
    let mut rest = Vec::with_capacity(args.args.len());
    let mut tokens = std::mem::take(&mut args.args).into_iter();
    while let Some(token) = tokens.next() {
        if token == "--" {
            rest.extend(tokens.by_ref());
            break;
        }
        let Some(option) = token.strip_prefix("--").filter(|o| o.starts_with(|c: char| c.is_ascii_alphabetic())) else {
            rest.push(token);
            continue;
        };
        let (name, inline) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (option, None),
        };
        let mut value = |what: &str| match inline.clone().or_else(|| tokens.next()) {
            Some(v) => Ok(v),
            None => Err(Failure::invalid(format!("--{name} needs a value ({what})"))),
        };
        match name {
            "json" | "hold" | "disable-sessions" | "webrtc" | "no-stun" | "relay-only" | "force-relay"
            | "force-p2p" | "no-reconnect"
                if inline.is_some() =>
            {
                return Err(Failure::invalid(format!("--{name} takes no value")));
            }
            "webrtc" => args.webrtc = true,
            "no-stun" => args.no_stun = true,
            "relay-only" | "force-relay" => args.force_relay = true,
            "force-p2p" => args.force_p2p = true,
            "turn-uri" => args.turn_uri = Some(value("URL")?),
            "turn-scheme" => args.turn_scheme = Some(value("SCHEME")?.parse().map_err(Failure::invalid)?),
            "turn-transport" => args.turn_transport = Some(value("TRANSPORT")?.parse().map_err(Failure::invalid)?),
            "turn-port" => {
                let v = value("PORT")?;
                let port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Failure::invalid(format!("--turn-port must be a port (1-65535), got {v:?}")))?;
                args.turn_port = Some(port);
            }
            "priority" => {
                let v = value("N")?;
                let n = v
                    .parse::<i32>()
                    .map_err(|_| Failure::invalid(format!("--priority must be a whole number, got {v:?}")))?;
                args.priority = Some(n);
            }
            "direct-fallback" => args.direct_fallback = Some(value("ADDRESS")?),
            "signaling" => args.signaling = Some(value("URL")?),
            "host" => args.host = Some(value("NAME")?),
            "ice-server" => args.ice_servers.push(value("URL")?),
            "json" => args.json = true,
            "hold" => args.hold = true,
            "disable-sessions" => args.disable_sessions = true,
            "no-reconnect" => args.no_reconnect = true,
            "reconnect-max-attempts" => {
                let v = value("N")?;
                let n = v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    Failure::invalid(format!("--reconnect-max-attempts must be a whole number >= 1, got {v:?}"))
                })?;
                args.reconnect_max_attempts = Some(n);
            }
            "reconnect-max-wait-ms" => {
                let v = value("MS")?;
                let ms = v.parse::<u64>().map_err(|_| {
                    Failure::invalid(format!(
                        "--reconnect-max-wait-ms must be a whole number of milliseconds, got {v:?}"
                    ))
                })?;
                args.reconnect_max_wait_ms = Some(ms);
            }
            "timeout" => {
                let v = value("SECS")?;
                let secs = v
                    .parse::<f64>()
                    .map_err(|_| Failure::invalid(format!("--timeout must be a number of seconds, got {v:?}")))?;
                args.timeout = Some(secs);
            }
            "api-key-id" => args.api_key_id = Some(value("ID")?),
            "api-key" => args.api_key = Some(value("KEY")?),
            "out" => args.out = Some(PathBuf::from(value("PATH")?)),
            "mime" => args.mime = Some(value("MIME")?),
            "seconds" => {
                let v = value("SECS")?;
                let secs = v.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0);
                args.seconds = Some(secs.ok_or_else(|| {
                    Failure::invalid(format!("--seconds must be a number of seconds in (0, 86400], got {v:?}"))
                })?);
            }
            "help" => {
                return Err(Failure::invalid(
                    "--help goes before the target: tether call --help, or name just the component to list its actions",
                ));
            }
            _ => return Err(Failure::invalid(format!("unknown option --{name} (see tether call --help)"))),
        }
    }
    args.args = rest;
    if args.api_key_id.is_some() != args.api_key.is_some() {
        return Err(Failure::invalid("--api-key-id and --api-key go together"));
    }
    Ok(args)
}

async fn call(args: &CallArgs) -> Result<(), Failure> {
    let timeout = match args.timeout {
        None => None,
        Some(secs) => match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => return Err(Failure::invalid(format!("--timeout must be a positive number of seconds, got {secs}"))),
        },
    };
    if args.json && args.out.as_deref() == Some(std::path::Path::new("-")) {
        return Err(Failure::invalid("--out - writes raw data to stdout and cannot be combined with --json"));
    }
    let mut conf = dial_conf(args);
    if let Some(t) = timeout {
        conf = conf.with_dial_timeout(t);
    }
    if let (Some(id), Some(key)) = (&args.api_key_id, &args.api_key) {
        conf = conf.with_credentials(Credentials::api_key(id.clone(), key.clone()));
    }
    let options =
        Options::default().with_disable_sessions(args.disable_sessions).with_reconnect(reconnect_options(args));
    if args.target == "watch" && args.args.is_empty() {
        return watch::run(args, conf, options).await;
    }

    let work = async {
        let robot = RobotClient::connect(conf, options).await?;
        let output = execute(&robot, args).await?;
        Ok::<_, Failure>((robot, output))
    };
    let (robot, output) = match timeout {
        None => work.await?,
        Some(t) => tokio::time::timeout(t, work).await.map_err(|_| {
            Failure::new(tonic::Code::DeadlineExceeded, format!("no answer from {} within {t:?}", args.address))
        })??,
    };
    print_output(&output, args.json)?;

    if args.hold {
        hold(&robot, args.disable_sessions).await?;
    } else if let Some(id) = robot.session_id()
        && !args.json
    {
        eprintln!(
            "note: session {id} ends with this process; the machine will stop what this call started \
             (use --hold to keep it running)"
        );
    }
    robot.close().await;
    Ok(())
}

/// The reconnection policy the `--no-reconnect` / `--reconnect-*` options ask for.
fn reconnect_options(args: &CallArgs) -> ReconnectOptions {
    let defaults = ReconnectOptions::default();
    ReconnectOptions::default()
        .with_no_reconnect(args.no_reconnect)
        .with_max_attempts(args.reconnect_max_attempts.unwrap_or(defaults.max_attempts))
        .with_max_wait(args.reconnect_max_wait_ms.map(Duration::from_millis).or(defaults.max_wait))
}

fn print_output(output: &Output, json: bool) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    let result = if json {
        writeln!(stdout, "{}", output.json)
    } else if output.human.is_empty() {
        Ok(())
    } else {
        writeln!(stdout, "{}", output.human.trim_end_matches('\n'))
    };
    result.and_then(|()| stdout.flush()).map_err(|e| Failure::local(format!("cannot write to stdout: {e}")))
}

/// Keeps the process, and so the session's heartbeats, alive until killed
/// (or interrupted with Ctrl-C).
async fn hold(robot: &RobotClient, sessions_disabled: bool) -> Result<(), Failure> {
    let id = match robot.session_id() {
        Some(id) => Some(id),
        None if sessions_disabled => None,
        None => robot.start_session().await?,
    };
    let line = match &id {
        Some(id) => format!("holding session {id}"),
        None if sessions_disabled => "holding session none (sessions disabled)".to_owned(),
        None => "holding session none (the machine does not support sessions)".to_owned(),
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::local(format!("cannot write to stdout: {e}")))?;
    }
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Some(id) = &id
            && !warned
            && robot.session_id().as_deref() != Some(id.as_str())
        {
            eprintln!("warning: session {id} was lost (heartbeats failed); still holding");
            warned = true;
        }
    }
}

/// The machine-level commands, by name.
const ROBOT_COMMANDS: &[&str] =
    &["resources", "status", "version", "sessions", "operations", "cancel-operation", "stop-all", "connection"];

async fn execute(robot: &RobotClient, args: &CallArgs) -> Result<Output, Failure> {
    let target = args.target.as_str();
    let mut resources = None;
    if ROBOT_COMMANDS.contains(&target) {
        // A component may share a command's name: `status readings` then
        // means the component called "status".
        let shadowed = !args.args.is_empty() && target != "cancel-operation" && {
            let names = robot.resource_names().await?;
            let found = names.iter().any(|r| r.name == target);
            resources = Some(names);
            found
        };
        if !shadowed {
            let mut params = Params::new(target, "", &args.args);
            return robot_command(robot, target, &mut params).await;
        }
    }
    let resources = match resources {
        Some(r) => r,
        None => robot.resource_names().await?,
    };
    let resource = find_resource(&resources, target)?;
    let Some((action, rest)) = args.args.split_first() else {
        return Err(Failure::invalid(format!(
            "{} is a {}; say what to do: {}",
            resource.name,
            resource.subtype,
            components::actions(&resource.subtype).join(", ")
        )));
    };
    let ctx = Ctx {
        robot,
        name: &resource.name,
        out: args.out.as_deref(),
        mime: args.mime.as_deref(),
        seconds: args.seconds,
    };
    components::run(&ctx, &resource.subtype, action, rest).await
}

/// `namespace:type:subtype/name`.
pub(crate) fn fqname(n: &ResourceName) -> String {
    format!("{}:{}:{}/{}", n.namespace, n.r#type, n.subtype, n.name)
}

/// Finds the resource `target` names: a plain name, `subtype/name`, or a
/// full `namespace:type:subtype/name`. Components win over services of the
/// same name.
fn find_resource<'a>(resources: &'a [ResourceName], target: &str) -> Result<&'a ResourceName, Failure> {
    let (api, name) = match target.rsplit_once('/') {
        Some((api, name)) => (Some(api), name),
        None => (None, target),
    };
    let api_matches = |r: &ResourceName| match api {
        None => true,
        Some(api) => {
            let full = format!("{}:{}:{}", r.namespace, r.r#type, r.subtype);
            full == api || r.subtype == api
        }
    };
    let mut matches: Vec<&ResourceName> = resources.iter().filter(|r| r.name == name && api_matches(r)).collect();
    matches.sort_by_key(|r| r.r#type != "component");
    if let Some(found) = matches.first() {
        return Ok(found);
    }
    let mut known: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    let known = if known.is_empty() { "it has none".to_owned() } else { format!("it has: {}", known.join(", ")) };
    Err(Failure::new(tonic::Code::NotFound, format!("no resource named {target:?} on the machine ({known})")))
}

/// The transport and, over WebRTC, the selected ICE candidate pair.
async fn connection(robot: &RobotClient) -> Output {
    let Some(webrtc) = robot.webrtc() else {
        return Output::new("transport: direct", serde_json::json!({"transport": "direct"}));
    };
    let Some(pair) = webrtc.selected_pair().await else {
        return Output::new(
            "transport: webrtc\nselected pair: none",
            serde_json::json!({"transport": "webrtc", "selected_pair": false}),
        );
    };
    let addr = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
    let (local, remote) = (addr(pair.local), addr(pair.remote));
    Output::new(
        format!("transport: webrtc\nlocal: {} {local}\nremote: {} {remote}", pair.local_type, pair.remote_type),
        serde_json::json!({
            "transport": "webrtc", "selected_pair": true,
            "local_type": pair.local_type, "local": pair.local.map(|a| a.to_string()),
            "remote_type": pair.remote_type, "remote": pair.remote.map(|a| a.to_string()),
        }),
    )
}

async fn robot_command(robot: &RobotClient, command: &str, params: &mut Params<'_>) -> Result<Output, Failure> {
    let output = match command {
        "resources" => {
            params.finish()?;
            let mut names = robot.resource_names().await?;
            names.sort_by_key(fqname);
            let human = names.iter().map(fqname).collect::<Vec<_>>().join("\n");
            let json = names
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "namespace": n.namespace, "type": n.r#type, "subtype": n.subtype, "name": n.name,
                        "fqname": fqname(n),
                    })
                })
                .collect::<Vec<_>>();
            Output::new(human, serde_json::json!({ "resources": json }))
        }
        "status" => {
            params.finish()?;
            render::machine_status(&robot.machine_status().await?)
        }
        "version" => {
            params.finish()?;
            let v = robot.version().await?;
            Output::new(
                format!("platform: {}\nversion: {}\napi version: {}", v.platform, v.version, v.api_version),
                serde_json::json!({"platform": v.platform, "version": v.version, "api_version": v.api_version}),
            )
        }
        "sessions" => {
            params.finish()?;
            render::sessions(&robot.sessions().await?, robot.session_id().as_deref())
        }
        "operations" => {
            params.finish()?;
            render::operations(&robot.operations().await?)
        }
        "cancel-operation" => {
            let id = params.string("ID")?;
            params.finish()?;
            robot.cancel_operation(&id).await?;
            Output::done(format!("cancelled operation {id}"))
        }
        "stop-all" => {
            params.finish()?;
            robot.stop_all().await?;
            Output::done("stopped all actuators")
        }
        "connection" => {
            params.finish()?;
            connection(robot).await
        }
        other => return Err(Failure::invalid(format!("unknown machine command {other:?}"))),
    };
    Ok(output)
}
