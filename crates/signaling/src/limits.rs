//! What one caller may cost a signaling server: [`CallLimits`] (rate,
//! pending offers per host, exchanges in progress per caller address) and the
//! size limits of what the server stores and relays.
//!
//! Everything here is synchronous and takes the time as an argument where it
//! needs one, so that [`crate::core`] (and the fuzz target) can drive it
//! without a runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::IceCandidate;
use tokio::time::Instant;
use tonic::Status;

/// Largest SDP (offer or answer, as encoded on the wire) the server accepts.
///
/// A browser's data-channel offer is about 0.5 KiB of SDP, 1–2 KiB encoded;
/// one without trickle carries its candidates inline (about 150 bytes each,
/// a few dozen on a host with many interfaces); an audio+video offer with
/// every codec is 5–10 KiB. 64 KiB is several times the largest real one and
/// bounds what a pending offer holds (the limit applies before the offer is
/// queued, so nothing larger reaches an answerer whose client would refuse to
/// decode it and lose its stream).
pub const MAX_SDP_SIZE: usize = 64 * 1024;

/// Largest trickled ICE candidate (the encoded `IceCandidate`: line, mid and
/// ufrag) the server relays. A candidate line is about 100–200 bytes; its
/// longest legal parts (a 253-byte host name, a 256-byte ufrag, given in the
/// line and again in its own field) stay under 1 KiB; 2 KiB is twice that.
/// With [`crate::MAX_EVENTS_PER_SIDE`] events per side this bounds the
/// candidates buffered for one offer to 1 MiB per side.
pub const MAX_CANDIDATE_SIZE: usize = 2 * 1024;

/// Error statuses relayed between caller and answerer keep at most this much
/// of their message (cut on a character boundary) ...
pub const MAX_STATUS_MESSAGE: usize = 1024;
/// ... and their details only when these encode to at most this much.
pub const MAX_STATUS_DETAILS: usize = 4 * 1024;

/// Default [`CallLimits::max_pending_per_host`].
///
/// Offers wait for an answer for a fraction of a second when the machine is
/// well; 64 unanswered at once means the machine is not keeping up, and more
/// would only queue behind them.
pub const DEFAULT_MAX_PENDING_PER_HOST: usize = 64;

/// Default [`CallLimits::max_pending_per_address`].
///
/// A client opens one exchange per connection and ends it within a second or
/// two (its `CallUpdate{done}` after gathering); a page or program dialing a
/// fleet through one signaler, or a few users behind one NAT, stay well below
/// 32 at once. It keeps a flood from one address from holding more than 32
/// exchanges (and machine-side peer connections in negotiation) at a time,
/// and below [`DEFAULT_MAX_PENDING_PER_HOST`], so one address cannot fill a
/// host's queue.
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 32;

/// Limits on `Call`, enforced by the signaling server
/// ([`crate::SignalingServerBuilder::call_limits`]). The default caps pending
/// offers per host and exchanges per caller address (see the `DEFAULT_`
/// constants) and does not rate-limit; [`CallLimits::unlimited`] turns every
/// limit off.
///
/// Refusals are RESOURCE_EXHAUSTED with a message that says which limit.
/// The counts are per server instance: signalers sharing a Redis queue each
/// enforce them for the calls they receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallLimits {
    /// Calls per minute per caller (the authenticated entity, else the
    /// caller's address; token bucket with a burst of the same size,
    /// refilled continuously); `None` = unlimited.
    pub rate_per_minute: Option<u32>,
    /// Concurrent unanswered calls per host; `None` = unlimited.
    pub max_pending_per_host: Option<usize>,
    /// Exchanges in progress per caller address (IPv4 address, or IPv6 /64
    /// prefix), from `Call` until the caller is done (its `CallUpdate` with
    /// done or an error, or it hangs up before the answerer is done; a caller
    /// that does not trickle is done when its `Call` stream ends) or the
    /// offer deadline passes; `None` = unlimited.
    pub max_pending_per_address: Option<usize>,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            rate_per_minute: None,
            max_pending_per_host: Some(DEFAULT_MAX_PENDING_PER_HOST),
            max_pending_per_address: Some(DEFAULT_MAX_PENDING_PER_ADDRESS),
        }
    }
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `CallLimits::default()` or `CallLimits::unlimited()`).
impl CallLimits {
    /// No limit at all.
    pub fn unlimited() -> Self {
        CallLimits { rate_per_minute: None, max_pending_per_host: None, max_pending_per_address: None }
    }

    /// Sets [`Self::rate_per_minute`].
    pub fn with_rate_per_minute(mut self, rate_per_minute: Option<u32>) -> Self {
        self.rate_per_minute = rate_per_minute;
        self
    }

    /// Sets [`Self::max_pending_per_host`].
    pub fn with_max_pending_per_host(mut self, max_pending_per_host: Option<usize>) -> Self {
        self.max_pending_per_host = max_pending_per_host;
        self
    }

    /// Sets [`Self::max_pending_per_address`].
    pub fn with_max_pending_per_address(mut self, max_pending_per_address: Option<usize>) -> Self {
        self.max_pending_per_address = max_pending_per_address;
        self
    }
}

/// Who placed a call, as far as the limits are concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated entity (API key id), if the request carried one.
    pub entity: Option<String>,
    /// The peer's IP address, when the transport knows it.
    pub address: Option<IpAddr>,
}

impl Caller {
    /// What the rate limit counts against: the entity, else the address.
    pub fn rate_key(&self) -> String {
        match (&self.entity, self.address) {
            (Some(e), _) => format!("entity:{e}"),
            (None, Some(ip)) => format!("ip:{}", address_key(ip)),
            (None, None) => "anonymous".to_owned(),
        }
    }

    /// What the per-address cap counts against (`unknown` when the
    /// transport has no address, e.g. signaling over a data channel).
    pub fn address_key(&self) -> String {
        self.address.map(address_key).unwrap_or_else(|| "unknown".to_owned())
    }
}

/// The address a caller is counted as: an IPv4 address as is (also when
/// mapped into IPv6), an IPv6 address by its /64 prefix (one subscriber's
/// network; anyone holding one has all of it). The same key throttles
/// failed `Authenticate`s.
pub use tether_transport::auth::address_key;

/// Checks the size of an SDP about to be queued or relayed.
pub(crate) fn check_sdp(sdp: &str, what: &str) -> Result<(), Status> {
    if sdp.len() > MAX_SDP_SIZE {
        return Err(Status::invalid_argument(format!(
            "{what} SDP is {} bytes; the signaling service relays at most {MAX_SDP_SIZE}",
            sdp.len()
        )));
    }
    Ok(())
}

/// Checks the size of a trickled candidate about to be relayed.
pub(crate) fn check_candidate(c: &IceCandidate, what: &str) -> Result<(), Status> {
    let len = c.encoded_len();
    if len > MAX_CANDIDATE_SIZE {
        return Err(Status::invalid_argument(format!(
            "{what} ICE candidate is {len} bytes; the signaling service relays at most {MAX_CANDIDATE_SIZE}"
        )));
    }
    Ok(())
}

/// An error status cut to [`MAX_STATUS_MESSAGE`] and [`MAX_STATUS_DETAILS`].
pub(crate) fn bounded_status(mut st: RpcStatus) -> RpcStatus {
    if st.message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        while !st.message.is_char_boundary(cut) {
            cut -= 1;
        }
        st.message.truncate(cut);
        st.message.push('…');
    }
    if st.details.iter().map(|d| d.encoded_len()).sum::<usize>() > MAX_STATUS_DETAILS {
        st.details.clear();
    }
    st
}

/// Buckets kept before idle (full) ones are pruned.
const PRUNE_AT: usize = 4096;

/// Per-caller token buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `caller` at `now`, or RESOURCE_EXHAUSTED.
    pub(crate) fn check(&self, caller: &str, now: Instant) -> Result<(), Status> {
        let capacity = f64::from(self.per_minute.max(1));
        let per_sec = f64::from(self.per_minute) / 60.0;
        let refill = |tokens: f64, at: Instant| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * per_sec).min(capacity)
        };
        let mut buckets = self.buckets.lock();
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, (tokens, at)| refill(*tokens, *at) < capacity);
        }
        let (tokens, at) = buckets.entry(caller.to_owned()).or_insert((capacity, now));
        let available = refill(*tokens, *at);
        *at = now;
        if self.per_minute == 0 || available < 1.0 {
            *tokens = available;
            return Err(Status::resource_exhausted(format!(
                "request exceeds rate limit ({} calls per minute) for {caller:?}",
                self.per_minute
            )));
        }
        *tokens = available - 1.0;
        Ok(())
    }
}

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Counts slots per key (host, caller address).
#[derive(Debug, Default)]
pub(crate) struct SlotCounter {
    counts: Counts,
}

/// One counted slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    counts: Counts,
    key: String,
    /// Released with this one.
    also: Option<Box<Slot>>,
}

impl SlotCounter {
    /// A slot for `key`, or `None` when `max` are taken.
    pub(crate) fn acquire(&self, key: &str, max: usize) -> Option<Slot> {
        let mut map = self.counts.lock();
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(Slot { counts: self.counts.clone(), key: key.to_owned(), also: None })
    }

    /// Slots taken for `key`.
    pub(crate) fn count(&self, key: &str) -> usize {
        self.counts.lock().get(key).copied().unwrap_or(0)
    }

    /// Slots taken over all keys.
    pub(crate) fn total(&self) -> usize {
        self.counts.lock().values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The slots a `Call` took when it was admitted (see
/// [`SignalingCore::admit_call`](crate::core::SignalingCore::admit_call)).
#[derive(Debug, Default)]
pub struct Admitted {
    /// Released once the offer is answered (or the call ends).
    pub(crate) host: Option<Slot>,
    /// Held until the caller is done with the exchange or its deadline.
    pub(crate) address: Option<Slot>,
}

/// An exchange whose caller-address slot is held.
#[derive(Debug)]
struct Exchange {
    host: String,
    deadline: Instant,
    /// Key in [`Exchanges::by_deadline`].
    seq: u64,
    /// The caller's Call stream is still served.
    call_open: bool,
    /// The caller sent done or an error.
    caller_done: bool,
    _slot: Option<Slot>,
}

/// Exchanges in progress by uuid, each holding its caller-address slot.
#[derive(Debug, Default)]
struct Exchanges {
    by_uuid: HashMap<String, Exchange>,
    by_deadline: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
}

impl Exchanges {
    /// Drops the exchanges whose deadline has passed.
    fn sweep(&mut self, now: Instant) {
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let uuid = entry.remove();
            self.by_uuid.remove(&uuid);
        }
    }

    fn remove(&mut self, uuid: &str) {
        if let Some(x) = self.by_uuid.remove(uuid) {
            self.by_deadline.remove(&(x.deadline, x.seq));
        }
    }
}

/// Counters of a server's limits, for diagnostics and leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStats {
    /// Unanswered calls counted against their host's cap.
    pub pending_offers: usize,
    /// Exchanges counted against their caller's address (Call stream open,
    /// or answered and waiting for the caller's done until the deadline).
    pub exchanges: usize,
}

/// The limits of one server: the configuration and what it counts.
#[derive(Debug)]
pub(crate) struct Limits {
    config: CallLimits,
    rate: Option<RateLimiter>,
    per_host: SlotCounter,
    /// Per-host slots by caller address (`host` NUL `address`).
    per_host_address: SlotCounter,
    per_address: SlotCounter,
    exchanges: Mutex<Exchanges>,
}

impl Limits {
    pub(crate) fn new(config: CallLimits) -> Self {
        Limits {
            config,
            rate: config.rate_per_minute.map(RateLimiter::new),
            per_host: SlotCounter::default(),
            per_host_address: SlotCounter::default(),
            per_address: SlotCounter::default(),
            exchanges: Mutex::default(),
        }
    }

    /// Admits a `Call` for `host` from `caller` at `now`: the rate, then
    /// the caller address's cap, then the host's.
    pub(crate) fn admit(&self, host: &str, caller: &Caller, now: Instant) -> Result<Admitted, Status> {
        if let Some(rate) = &self.rate {
            rate.check(&caller.rate_key(), now)?;
        }
        let address = match self.config.max_pending_per_address {
            Some(max) => {
                self.exchanges.lock().sweep(now);
                let key = caller.address_key();
                let slot = self.per_address.acquire(&key, max).ok_or_else(|| {
                    Status::resource_exhausted(format!(
                        "too many calls in progress from {key} (max {max}); retry when one of them is over"
                    ))
                })?;
                Some(slot)
            }
            None => None,
        };
        let host = match self.config.max_pending_per_host {
            Some(max) => {
                // A host's cap never refuses an address with no pending call
                // for it: a flood from other addresses cannot lock out a
                // real caller (the per-address cap bounds what those extra
                // admissions hold).
                let pair = format!("{host}\0{}", caller.address_key());
                let first_of_address = self.per_host_address.count(&pair) == 0;
                let limit = if first_of_address { usize::MAX } else { max };
                let mut slot = self.per_host.acquire(host, limit).ok_or_else(|| {
                    Status::resource_exhausted(format!("too many pending calls for host {host:?} (max {max})"))
                })?;
                slot.also = self.per_host_address.acquire(&pair, usize::MAX).map(Box::new);
                Some(slot)
            }
            None => None,
        };
        Ok(Admitted { host, address })
    }

    /// Registers the exchange `uuid` of an admitted call: its caller-address
    /// slot is held until [`Self::caller_done`] after [`Self::call_ended`],
    /// or `deadline`; `caller_done` when the caller has nothing more to send
    /// (it does not trickle).
    pub(crate) fn started(&self, uuid: &str, host: &str, deadline: Instant, caller_done: bool, slot: Option<Slot>) {
        if slot.is_none() {
            return;
        }
        let mut x = self.exchanges.lock();
        x.remove(uuid);
        x.next_seq += 1;
        let seq = x.next_seq;
        x.by_deadline.insert((deadline, seq), uuid.to_owned());
        let exchange = Exchange { host: host.to_owned(), deadline, seq, call_open: true, caller_done, _slot: slot };
        x.by_uuid.insert(uuid.to_owned(), exchange);
    }

    /// The Call stream of `uuid` ended; `keep` when the caller may still
    /// finish the exchange (it was answered and has not hung up).
    pub(crate) fn call_ended(&self, uuid: &str, keep: bool) {
        let mut x = self.exchanges.lock();
        match x.by_uuid.get_mut(uuid) {
            Some(e) if keep && !e.caller_done => e.call_open = false,
            Some(_) => x.remove(uuid),
            None => {}
        }
    }

    /// The caller of `uuid` for `host` sent done or an error.
    pub(crate) fn caller_done(&self, host: &str, uuid: &str) {
        let mut x = self.exchanges.lock();
        match x.by_uuid.get_mut(uuid) {
            Some(e) if e.host != host => {}
            Some(e) if e.call_open => e.caller_done = true,
            Some(_) => x.remove(uuid),
            None => {}
        }
    }

    pub(crate) fn stats(&self, now: Instant) -> LimitStats {
        let mut x = self.exchanges.lock();
        x.sweep(now);
        LimitStats { pending_offers: self.per_host.total(), exchanges: x.by_uuid.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills() {
        let r = RateLimiter::new(60);
        for _ in 0..60 {
            r.check("a", Instant::now()).unwrap();
        }
        assert_eq!(r.check("a", Instant::now()).unwrap_err().code(), Code::ResourceExhausted);
        r.check("b", Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(1100)).await;
        r.check("a", Instant::now()).unwrap();
        assert!(r.check("a", Instant::now()).is_err());
        let zero = RateLimiter::new(0);
        assert!(zero.check("a", Instant::now()).is_err());
    }

    #[test]
    fn slots_release() {
        let p = SlotCounter::default();
        let a = p.acquire("h", 1).unwrap();
        assert!(p.acquire("h", 1).is_none());
        let g = p.acquire("g", 1).unwrap();
        assert_eq!(p.total(), 2);
        drop((a, g));
        p.acquire("h", 1).unwrap();
        assert!(p.acquire("z", 0).is_none());
        assert!(p.counts.lock().is_empty());
    }

    #[test]
    fn addresses_are_keyed_by_ipv4_or_ipv6_slash_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        let c = Caller { entity: Some("k".into()), address: Some("192.0.2.7".parse().unwrap()) };
        assert_eq!((c.rate_key().as_str(), c.address_key().as_str()), ("entity:k", "192.0.2.7"));
        assert_eq!(Caller::default().address_key(), "unknown");
    }

    #[test]
    fn statuses_are_bounded() {
        let long = RpcStatus { code: 2, message: "é".repeat(MAX_STATUS_MESSAGE), details: Vec::new() };
        let cut = bounded_status(long);
        assert!(cut.message.len() <= MAX_STATUS_MESSAGE + '…'.len_utf8(), "{}", cut.message.len());
        assert!(cut.message.ends_with('…'));
        let short = RpcStatus { code: 2, message: "short".into(), details: Vec::new() };
        assert_eq!(bounded_status(short.clone()), short);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_host_still_admits_an_address_with_no_pending_call_for_it() {
        let l = Limits::new(CallLimits::unlimited().with_max_pending_per_host(Some(2)));
        let now = Instant::now();
        // One address fills the host.
        let a1 = l.admit("h", &from("192.0.2.1"), now).unwrap();
        let a2 = l.admit("h", &from("192.0.2.1"), now).unwrap();
        let err = l.admit("h", &from("192.0.2.1"), now).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        // Another address gets one call past the cap, not two.
        let b1 = l.admit("h", &from("192.0.2.2"), now).unwrap();
        assert!(l.admit("h", &from("192.0.2.2"), now).is_err());
        assert_eq!(l.stats(now).pending_offers, 3);
        // Other hosts are unaffected; answered offers free their slots.
        l.admit("g", &from("192.0.2.1"), now).unwrap();
        drop((a1, a2, b1));
        assert_eq!(l.stats(now).pending_offers, 0);
        assert!(l.per_host_address.counts.lock().is_empty());
        l.admit("h", &from("192.0.2.2"), now).unwrap();
    }

    fn limits(per_address: usize) -> Limits {
        Limits::new(CallLimits::unlimited().with_max_pending_per_address(Some(per_address)))
    }

    fn from(ip: &str) -> Caller {
        Caller { entity: None, address: Some(ip.parse().unwrap()) }
    }

    #[tokio::test(start_paused = true)]
    async fn address_slots_last_until_the_caller_is_done_or_the_deadline() {
        let l = limits(1);
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        let a = l.admit("h", &from("192.0.2.1"), now).unwrap();
        assert_eq!(l.admit("h", &from("192.0.2.1"), now).unwrap_err().code(), Code::ResourceExhausted);
        l.admit("h", &from("192.0.2.2"), now).unwrap();
        l.started("u1", "h", deadline, false, a.address);
        // Answered and done on the answerer's side: held for the caller's done.
        l.call_ended("u1", true);
        assert!(l.admit("h", &from("192.0.2.1"), now).is_err());
        l.caller_done("other-host", "u1");
        assert!(l.admit("h", &from("192.0.2.1"), now).is_err());
        l.caller_done("h", "u1");
        let b = l.admit("h", &from("192.0.2.1"), now).unwrap();
        // Done before the stream ended: released when it ends.
        l.started("u2", "h", deadline, false, b.address);
        l.caller_done("h", "u2");
        assert_eq!(l.stats(now).exchanges, 1);
        l.call_ended("u2", true);
        let c = l.admit("h", &from("192.0.2.1"), now).unwrap();
        // Abandoned: released at the deadline.
        l.started("u3", "h", deadline, false, c.address);
        l.call_ended("u3", true);
        assert!(l.admit("h", &from("192.0.2.1"), deadline - Duration::from_millis(1)).is_err());
        assert_eq!(l.stats(deadline).exchanges, 0);
        let d = l.admit("h", &from("192.0.2.1"), deadline).unwrap();
        // Without trickle the caller is done once its stream ends.
        l.started("u4", "h", deadline + Duration::from_secs(10), true, d.address);
        assert_eq!(l.stats(deadline).exchanges, 1);
        l.call_ended("u4", true);
        assert_eq!(l.stats(deadline).exchanges, 0);
    }
}
