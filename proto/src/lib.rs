//! The client <-> server WebSocket protocol: typed, versioned, size-limited.
//!
//! Each frame is one JSON object tagged by `type`. [`decode_client`] is the only way
//! a frame becomes a [`ClientMsg`]; it never panics and maps every bad input to an
//! [`ErrorCode`] the server sends back as `error {code, message}`.
//! The message list with one example each is in docs/protocol.md.
//!
//! A crate of its own so that clients (the native client, the load harness) speak the
//! protocol without linking the server side: it depends on serde, base64 and thiserror only.

pub mod model;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::model::{AppointmentId, ChatId, DeviceId, ParticipantId, Role, Timestamp};

/// Bumped on any incompatible change; `hello` must carry it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Size limits, in bytes. The frame limit also bounds the JSON parser's work.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub frame: usize,
    pub sdp: usize,
    pub candidate: usize,
    /// Decoded size of a chat ciphertext.
    pub chat: usize,
    pub token: usize,
    /// Decoded size of an MLS commit, and of a Welcome.
    pub mls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Room for an `mls_commit` carrying a commit and a Welcome of 64 KiB each
            // (base64 makes each 87 KB).
            frame: 192 * 1024,
            sdp: 64 * 1024,
            candidate: 4 * 1024,
            chat: 16 * 1024,
            token: 512,
            mls: 64 * 1024,
        }
    }
}

/// Client -> server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First frame on every connection.
    Hello {
        version: u32,
        token: String,
    },
    /// Ask to enter the consultation of an appointment, as `device` (a registered,
    /// active device of the caller in the key directory) when the client has one.
    Join {
        consultation: AppointmentId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
    },
    /// Doctor only: let a waiting participant in.
    Admit {
        participant: ParticipantId,
    },
    /// Doctor only: turn a waiting participant away.
    Deny {
        participant: ParticipantId,
    },
    MediaOffer {
        sdp: String,
    },
    MediaAnswer {
        sdp: String,
    },
    IceCandidate {
        candidate: String,
    },
    /// Opaque chat ciphertext, base64; stored and relayed, never read.
    Chat {
        ciphertext: String,
    },
    /// An MLS commit (base64 `MLSMessage`, PublicMessage or PrivateMessage) for the
    /// consultation's group. With `add` (doctor only), the participants it adds, who
    /// get `welcome` (base64 MLS Welcome) and are admitted.
    MlsCommit {
        commit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        welcome: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        add: Vec<ParticipantId>,
    },
    Leave,
    /// Doctor only: end the consultation for everyone.
    End,
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

/// The `type` strings of [`ClientMsg`], to tell "unknown type" from "bad fields".
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "join",
    "admit",
    "deny",
    "media_offer",
    "media_answer",
    "ice_candidate",
    "chat",
    "mls_commit",
    "leave",
    "end",
    "ping",
];

/// What other participants learn about someone: the display label, and the principal
/// (`account:17`, `guest:5`) and device the doctor's client needs to fetch a KeyPackage
/// from the key directory. Participants of one appointment therefore learn each
/// other's principal id; nothing beyond it (no username, no contact).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub role: Role,
    pub label: String,
    pub principal: String,
    /// The device it joined as; absent if it joined without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Disconnected,
    Denied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    EndedByDoctor,
    TimeWindowClosed,
    SessionExpired,
}

/// Server -> client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Reply to a good `hello`.
    Welcome {
        version: u32,
        role: Role,
        idle_timeout_s: u64,
    },
    /// You are in the waiting room of `consultation`; `doctor_online`: whether its
    /// doctor is in the consultation now (`doctor_presence` tells every change after).
    Waiting {
        consultation: AppointmentId,
        you: ParticipantId,
        /// Absent from an older server: read as not online.
        #[serde(default)]
        doctor_online: bool,
    },
    /// To everyone in the waiting room: the doctor came into the consultation
    /// (`online`) or left it.
    DoctorPresence {
        online: bool,
    },
    /// Doctor: you are in the consultation.
    Joined {
        consultation: AppointmentId,
        you: ParticipantId,
        participants: Vec<ParticipantInfo>,
    },
    /// Doctor: who is waiting now (sent on every change).
    WaitingRoom {
        waiting: Vec<ParticipantInfo>,
    },
    /// You were let in.
    Admitted {
        consultation: AppointmentId,
        you: ParticipantId,
        participants: Vec<ParticipantInfo>,
    },
    /// You were turned away; the connection closes after this.
    Denied {
        consultation: AppointmentId,
    },
    /// Doctor: your `deny` took effect.
    ParticipantDenied {
        participant: ParticipantId,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    MediaOffer {
        sdp: String,
    },
    MediaAnswer {
        sdp: String,
    },
    IceCandidate {
        candidate: String,
    },
    Chat {
        id: ChatId,
        from: ParticipantId,
        time: Timestamp,
        ciphertext: String,
    },
    /// Your `mls_commit` was accepted: the group is now at `epoch`.
    MlsAccepted {
        epoch: u64,
    },
    /// A commit another member sent, accepted by the server; `epoch` is the new epoch.
    MlsCommit {
        from: ParticipantId,
        epoch: u64,
        commit: String,
    },
    /// You were added to the consultation's group: an MLS Welcome, base64.
    MlsWelcome {
        from: ParticipantId,
        welcome: String,
    },
    /// Your `leave` took effect.
    Left {
        consultation: AppointmentId,
    },
    /// The consultation is over; the connection closes after this.
    Ended {
        consultation: AppointmentId,
        reason: EndReason,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode) -> Self {
        ServerMsg::Error {
            code,
            message: code.default_message().to_string(),
        }
    }
}

/// Stable machine-readable error codes. Messages are generic on purpose: they
/// never reveal whether an account or appointment exists to someone not entitled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    InvalidMessage,
    TooLarge,
    UnsupportedVersion,
    NotAuthenticated,
    AlreadyAuthenticated,
    AuthFailed,
    SessionExpired,
    Forbidden,
    WrongConsultation,
    NotInConsultation,
    NotAdmitted,
    AlreadyJoined,
    OutsideWindow,
    ConsultationEnded,
    ConsultationFull,
    ConsentRequired,
    UnknownParticipant,
    RateLimited,
    MediaError,
    StaleCommit,
    WrongGroup,
    UnknownDevice,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::WrongConsultation => "wrong_consultation",
            ErrorCode::NotInConsultation => "not_in_consultation",
            ErrorCode::NotAdmitted => "not_admitted",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::OutsideWindow => "outside_window",
            ErrorCode::ConsultationEnded => "consultation_ended",
            ErrorCode::ConsultationFull => "consultation_full",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::UnknownParticipant => "unknown_participant",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MediaError => "media_error",
            ErrorCode::StaleCommit => "stale_commit",
            ErrorCode::WrongGroup => "wrong_group",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "frame is not a JSON object",
            ErrorCode::UnknownType => "unknown message type",
            ErrorCode::InvalidMessage => "message fields are missing or invalid",
            ErrorCode::TooLarge => "message exceeds the size limit",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::NotAuthenticated => "send hello with a session token first",
            ErrorCode::AlreadyAuthenticated => "this connection is already authenticated",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::SessionExpired => "session expired or revoked; log in again",
            ErrorCode::Forbidden => "your role may not do this",
            ErrorCode::WrongConsultation => "you are not a participant of this consultation",
            ErrorCode::NotInConsultation => "join a consultation first",
            ErrorCode::NotAdmitted => "wait until the doctor admits you",
            ErrorCode::AlreadyJoined => "this connection already joined a consultation",
            ErrorCode::OutsideWindow => "the consultation is not open at this time",
            ErrorCode::ConsultationEnded => "the consultation has ended",
            ErrorCode::ConsultationFull => {
                "the consultation is full (8 participants); someone must leave first"
            }
            ErrorCode::ConsentRequired => "accept the telehealth terms before joining",
            ErrorCode::UnknownParticipant => "no such participant",
            ErrorCode::RateLimited => "too many messages; slow down",
            ErrorCode::MediaError => "the media plane refused the request",
            ErrorCode::StaleCommit => {
                "the commit is not for the group's current epoch; process the commits you \
                 received and commit again"
            }
            ErrorCode::WrongGroup => "the commit is not for this consultation's group",
            ErrorCode::UnknownDevice => {
                "that device is not an active registered device of yours; register it first"
            }
            ErrorCode::Internal => "internal error",
        }
    }
}

/// A rejected frame: the code to send back and a short, safe message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
        }
    }
    fn code(code: ErrorCode) -> Self {
        Self::new(code, code.default_message())
    }
}

impl From<ProtoError> for ServerMsg {
    fn from(e: ProtoError) -> Self {
        ServerMsg::Error {
            code: e.code,
            message: e.message,
        }
    }
}

#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type")]
    ty: Option<serde_json::Value>,
}

/// Parse and validate one client frame.
pub fn decode_client(frame: &str, limits: &Limits) -> Result<ClientMsg, ProtoError> {
    if frame.len() > limits.frame {
        return Err(ProtoError::code(ErrorCode::TooLarge));
    }
    let msg = match serde_json::from_str::<ClientMsg>(frame) {
        Ok(m) => m,
        Err(e) => return Err(classify(frame, &e)),
    };
    validate(&msg, limits)?;
    Ok(msg)
}

fn classify(frame: &str, err: &serde_json::Error) -> ProtoError {
    let probe = match serde_json::from_str::<TypeProbe>(frame) {
        Ok(p) => p,
        Err(_) => return ProtoError::code(ErrorCode::BadJson),
    };
    match probe.ty {
        Some(serde_json::Value::String(t)) if CLIENT_TYPES.contains(&t.as_str()) => {
            // serde's text names the field and expectation; cut it so a hostile frame
            // cannot make us echo large amounts of its own content back.
            let mut detail = err.to_string();
            truncate_utf8(&mut detail, 160);
            ProtoError::new(
                ErrorCode::InvalidMessage,
                format!("invalid {t} message: {detail}"),
            )
        }
        Some(serde_json::Value::String(_)) => ProtoError::code(ErrorCode::UnknownType),
        Some(_) => ProtoError::new(ErrorCode::InvalidMessage, "type must be a string"),
        None => ProtoError::new(ErrorCode::InvalidMessage, "missing type"),
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Longest `mls_commit.add` list.
pub const MAX_MLS_ADD: usize = 16;

fn too_large(what: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::TooLarge,
        format!("{what} exceeds the size limit"),
    )
}

fn validate(msg: &ClientMsg, limits: &Limits) -> Result<(), ProtoError> {
    match msg {
        ClientMsg::Hello { token, .. } if token.len() > limits.token => Err(too_large("token")),
        ClientMsg::MediaOffer { sdp } | ClientMsg::MediaAnswer { sdp } => {
            if sdp.len() > limits.sdp {
                Err(too_large("sdp"))
            } else if sdp.is_empty() {
                Err(ProtoError::new(ErrorCode::InvalidMessage, "empty sdp"))
            } else {
                Ok(())
            }
        }
        ClientMsg::IceCandidate { candidate } if candidate.len() > limits.candidate => {
            Err(too_large("candidate"))
        }
        ClientMsg::Chat { ciphertext } => {
            decode_b64(ciphertext, limits.chat, "ciphertext").map(|_| ())
        }
        ClientMsg::MlsCommit {
            commit,
            welcome,
            add,
        } => {
            decode_b64(commit, limits.mls, "commit")?;
            if let Some(w) = welcome {
                decode_b64(w, limits.mls, "welcome")?;
            }
            // A consultation holds at most 8; a longer list cannot be right.
            if add.len() > MAX_MLS_ADD {
                return Err(too_large("add"));
            }
            let mut seen = add.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != add.len() {
                return Err(ProtoError::new(
                    ErrorCode::InvalidMessage,
                    "add lists a participant twice",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Decode standard base64 with a cap on the decoded size, checked before decoding.
pub fn decode_b64(s: &str, max: usize, what: &str) -> Result<Vec<u8>, ProtoError> {
    // 4 chars carry 3 bytes; checking the encoded length first bounds the work.
    if s.len() / 4 * 3 > max + 3 {
        return Err(too_large(what));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| ProtoError::new(ErrorCode::InvalidMessage, format!("{what} is not base64")))?;
    if bytes.len() > max {
        return Err(too_large(what));
    }
    if bytes.is_empty() {
        return Err(ProtoError::new(
            ErrorCode::InvalidMessage,
            format!("empty {what}"),
        ));
    }
    Ok(bytes)
}

pub fn encode_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<ClientMsg, ErrorCode> {
        decode_client(s, &Limits::default()).map_err(|e| e.code)
    }

    #[test]
    fn good_messages_decode() {
        assert_eq!(
            dec(r#"{"type":"hello","version":1,"token":"t"}"#),
            Ok(ClientMsg::Hello {
                version: 1,
                token: "t".into()
            })
        );
        assert_eq!(dec(r#"{"type":"leave"}"#), Ok(ClientMsg::Leave));
        assert_eq!(
            dec(r#"{"type":"ping"}"#),
            Ok(ClientMsg::Ping { nonce: None })
        );
    }

    #[test]
    fn bad_input_is_classified() {
        assert_eq!(dec("not json"), Err(ErrorCode::BadJson));
        assert_eq!(dec("[1,2]"), Err(ErrorCode::BadJson));
        assert_eq!(dec(r#"{"type":"launch"}"#), Err(ErrorCode::UnknownType));
        // The pre-MLS key exchange is gone: its frames are an unknown type like any other.
        assert_eq!(
            dec(r#"{"type":"e2ee","to":3,"blob":"AAEC"}"#),
            Err(ErrorCode::UnknownType)
        );
        assert_eq!(dec(r#"{"type":7}"#), Err(ErrorCode::InvalidMessage));
        assert_eq!(dec(r#"{"x":1}"#), Err(ErrorCode::InvalidMessage));
        assert_eq!(dec(r#"{"type":"join"}"#), Err(ErrorCode::InvalidMessage));
        assert_eq!(
            dec(r#"{"type":"join","consultation":"x"}"#),
            Err(ErrorCode::InvalidMessage)
        );
        assert_eq!(
            dec(r#"{"type":"chat","ciphertext":"***"}"#),
            Err(ErrorCode::InvalidMessage)
        );
        assert_eq!(
            dec(r#"{"type":"media_offer","sdp":""}"#),
            Err(ErrorCode::InvalidMessage)
        );
    }

    #[test]
    fn limits_are_enforced() {
        let l = Limits::default();
        let big = "a".repeat(l.frame + 1);
        assert_eq!(dec(&big), Err(ErrorCode::TooLarge));
        let sdp = "v".repeat(l.sdp + 1);
        assert_eq!(
            dec(&format!(r#"{{"type":"media_offer","sdp":"{sdp}"}}"#)),
            Err(ErrorCode::TooLarge)
        );
        let chat = encode_b64(&vec![7u8; l.chat + 1]);
        assert_eq!(
            dec(&format!(r#"{{"type":"chat","ciphertext":"{chat}"}}"#)),
            Err(ErrorCode::TooLarge)
        );
        let ok = encode_b64(&vec![7u8; l.chat]);
        assert!(dec(&format!(r#"{{"type":"chat","ciphertext":"{ok}"}}"#)).is_ok());
    }

    #[test]
    fn mls_commit_and_join_with_a_device_decode() {
        assert_eq!(
            dec(r#"{"type":"join","consultation":4,"device":"00112233445566778899aabbccddeeff"}"#),
            Ok(ClientMsg::Join {
                consultation: AppointmentId(4),
                device: DeviceId::parse("00112233445566778899aabbccddeeff"),
            })
        );
        for bad in ["0011", "00112233445566778899AABBCCDDEEFF", ""] {
            assert_eq!(
                dec(&format!(
                    r#"{{"type":"join","consultation":4,"device":"{bad}"}}"#
                )),
                Err(ErrorCode::InvalidMessage),
                "{bad}"
            );
        }
        assert_eq!(
            dec(r#"{"type":"mls_commit","commit":"AAEC","welcome":"AAED","add":[3,4]}"#),
            Ok(ClientMsg::MlsCommit {
                commit: "AAEC".into(),
                welcome: Some("AAED".into()),
                add: vec![ParticipantId(3), ParticipantId(4)],
            })
        );
        assert_eq!(
            dec(r#"{"type":"mls_commit","commit":"AAEC","add":[3,3]}"#),
            Err(ErrorCode::InvalidMessage)
        );
        assert_eq!(
            dec(r#"{"type":"mls_commit","commit":""}"#),
            Err(ErrorCode::InvalidMessage)
        );
        let l = Limits::default();
        let big = encode_b64(&vec![1u8; l.mls + 1]);
        assert_eq!(
            dec(&format!(r#"{{"type":"mls_commit","commit":"{big}"}}"#)),
            Err(ErrorCode::TooLarge)
        );
        let ok = encode_b64(&vec![1u8; l.mls]);
        assert!(
            dec(&format!(
                r#"{{"type":"mls_commit","commit":"{ok}","welcome":"{ok}","add":[1]}}"#
            ))
            .is_ok(),
            "a largest commit and Welcome fit in one frame"
        );
        let many: Vec<u64> = (0..=MAX_MLS_ADD as u64).collect();
        assert_eq!(
            dec(&format!(
                r#"{{"type":"mls_commit","commit":"AAEC","add":{many:?}}}"#
            )),
            Err(ErrorCode::TooLarge)
        );
    }

    #[test]
    fn server_messages_are_tagged() {
        let m = ServerMsg::error(ErrorCode::Forbidden);
        let s = serde_json::to_string(&m).unwrap();
        assert!(
            s.starts_with(r#"{"type":"error","code":"forbidden""#),
            "{s}"
        );
    }
}
