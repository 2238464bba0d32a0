//! Policy knobs the edge reads; defaults are the documented ones.

use crate::proto::Limits;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Automatic logoff after this long without activity (an active call counts).
    pub idle_timeout_s: i64,
    /// Absolute session lifetime, whatever the activity.
    pub session_lifetime_s: i64,
    /// A consultation is joinable from `start - grace` to `start + duration + grace`.
    pub join_grace_s: i64,
    pub invite_ttl_s: i64,
    /// How long an activation link (new account, reset) stays usable.
    pub activation_ttl_s: i64,
    pub break_glass_ttl_s: i64,
    pub terms_version: String,
    pub terms_text: String,
    pub issuer: String,
    pub limits: Limits,
    /// Client frames per second per connection before `rate_limited`.
    pub ws_msgs_per_s: u32,
    /// Whether the browser client may turn on its end-to-end test hooks (`?test=1`),
    /// which read plaintext frame samples inside the page. Off unless a test build's
    /// server is started with `--test-hooks`; a production binary has no such flag.
    pub client_test_hooks: bool,
    /// Reverse proxies whose `X-Forwarded-For` is believed (empty: none, the peer
    /// address is the client's).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// WebSocket connections one address (IPv6: one /64) may hold open before its
    /// `hello` is accepted; more are refused with 429.
    pub ws_unauth_per_addr: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            idle_timeout_s: 15 * 60,
            session_lifetime_s: 12 * 3600,
            join_grace_s: 15 * 60,
            invite_ttl_s: 24 * 3600,
            activation_ttl_s: 72 * 3600,
            break_glass_ttl_s: 3600,
            terms_version: "2026-01".into(),
            terms_text: DEFAULT_TERMS.into(),
            issuer: "Confide".into(),
            limits: Limits::default(),
            ws_msgs_per_s: 200,
            client_test_hooks: false,
            trusted_proxies: Vec::new(),
            ws_unauth_per_addr: 32,
        }
    }
}

pub const DEFAULT_TERMS: &str = "Telehealth consultation terms (version 2026-01). \
A video consultation is not suitable for emergencies. Audio, video and chat are \
end-to-end encrypted; the service keeps only the metadata needed to run it (who \
met whom and when) and an audit log. You may revoke this consent at any time; \
revoking stops future consultations but does not erase past records.";
