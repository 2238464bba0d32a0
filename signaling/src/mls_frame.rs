//! The public framing of MLS messages (RFC 9420 section 6), and nothing more.
//!
//! The server is the MLS *delivery service*: to order commits it needs the group id,
//! the epoch and the content type of a handshake message, which MLS sends in the
//! clear. This module reads exactly those header fields; it links no MLS library,
//! holds no key and never sees inside a ciphertext or a signature.
//!
//! ```text
//! MLSMessage     = uint16 version (1 = mls10) || uint16 wire_format || body
//! PublicMessage  = FramedContent { opaque group_id<V>; uint64 epoch; Sender sender;
//!                                  opaque authenticated_data<V>; ContentType content_type; ... } ...
//! PrivateMessage = opaque group_id<V>; uint64 epoch; ContentType content_type;
//!                  opaque authenticated_data<V>; opaque encrypted_sender_data<V>;
//!                  opaque ciphertext<V>
//! Welcome        = uint16 cipher_suite; EncryptedGroupSecrets secrets<V>;
//!                  opaque encrypted_group_info<V>
//! ```
//!
//! `<V>` is the variable-length size prefix of RFC 9420 section 2.1.2; integers are
//! big-endian. Sans-IO and total: every function takes bytes, returns a value or a
//! typed [`FrameError`], and never panics on any input (a property test and the
//! `mls_frame` fuzz target in `signaling/fuzz` hold it to that).

/// `mls10`, the only protocol version there is.
pub const MLS10: u16 = 1;

/// How the rest of an `MLSMessage` is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireFormat {
    PublicMessage,
    PrivateMessage,
    Welcome,
    GroupInfo,
    KeyPackage,
}

impl WireFormat {
    pub fn code(self) -> u16 {
        match self {
            WireFormat::PublicMessage => 1,
            WireFormat::PrivateMessage => 2,
            WireFormat::Welcome => 3,
            WireFormat::GroupInfo => 4,
            WireFormat::KeyPackage => 5,
        }
    }

    pub fn from_code(c: u16) -> Option<Self> {
        Some(match c {
            1 => WireFormat::PublicMessage,
            2 => WireFormat::PrivateMessage,
            3 => WireFormat::Welcome,
            4 => WireFormat::GroupInfo,
            5 => WireFormat::KeyPackage,
            _ => return None,
        })
    }
}

/// What a handshake or application message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentType {
    Application,
    Proposal,
    Commit,
}

impl ContentType {
    pub fn code(self) -> u8 {
        match self {
            ContentType::Application => 1,
            ContentType::Proposal => 2,
            ContentType::Commit => 3,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => ContentType::Application,
            2 => ContentType::Proposal,
            3 => ContentType::Commit,
            _ => return None,
        })
    }
}

/// Who sent a PublicMessage (a PrivateMessage encrypts its sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A member, by leaf index.
    Member(u32),
    /// An external sender configured in the group, by index.
    External(u32),
    NewMemberProposal,
    /// An external commit: someone joining without being added.
    NewMemberCommit,
}

impl Sender {
    pub fn code(self) -> u8 {
        match self {
            Sender::Member(_) => 1,
            Sender::External(_) => 2,
            Sender::NewMemberProposal => 3,
            Sender::NewMemberCommit => 4,
        }
    }
}

/// The clear header of a PublicMessage or PrivateMessage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader<'a> {
    /// [`WireFormat::PublicMessage`] or [`WireFormat::PrivateMessage`].
    pub wire_format: WireFormat,
    pub group_id: &'a [u8],
    pub epoch: u64,
    pub content_type: ContentType,
    /// `Some` for a PublicMessage only.
    pub sender: Option<Sender>,
}

/// Why bytes are not the MLS framing we expect. Each variant says what was wrong in
/// words safe to send back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the message ends early (in {0})")]
    Truncated(&'static str),
    #[error("bytes are left after the message")]
    TrailingBytes,
    #[error("protocol version {0} is not mls10")]
    Version(u16),
    #[error("unknown wire format {0}")]
    UnknownWireFormat(u16),
    #[error("wire format is {got}, expected {expected}")]
    WrongWireFormat { got: u16, expected: &'static str },
    #[error("invalid variable-length size prefix (in {0})")]
    BadLength(&'static str),
    #[error("unknown sender type {0}")]
    UnknownSender(u8),
    #[error("unknown content type {0}")]
    UnknownContentType(u8),
}

/// A cursor over borrowed bytes; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// RFC 9420 section 2.1.2: the top two bits of the first byte give the prefix
    /// length (1, 2 or 4 bytes), the rest the value; `11` is invalid, and a value that
    /// fits a shorter prefix must use it.
    fn varint(&mut self, what: &'static str) -> Result<usize, FrameError> {
        let first = self.u8(what)?;
        let (len, min) = match first >> 6 {
            0 => return Ok(usize::from(first & 0x3f)),
            1 => (2, 1 << 6),
            2 => (4, 1 << 14),
            _ => return Err(FrameError::BadLength(what)),
        };
        let more = self.take(len - 1, what)?;
        let value = more
            .iter()
            .fold(u32::from(first & 0x3f), |v, b| (v << 8) | u32::from(*b));
        if value < min {
            return Err(FrameError::BadLength(what));
        }
        usize::try_from(value).map_err(|_| FrameError::BadLength(what))
    }

    fn opaque(&mut self, what: &'static str) -> Result<&'a [u8], FrameError> {
        let n = self.varint(what)?;
        self.take(n, what)
    }

    fn finish(&self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes)
        }
    }
}

fn start(bytes: &[u8]) -> Result<(WireFormat, Reader<'_>), FrameError> {
    let mut r = Reader { rest: bytes };
    let version = r.u16("version")?;
    if version != MLS10 {
        return Err(FrameError::Version(version));
    }
    let code = r.u16("wire format")?;
    let wf = WireFormat::from_code(code).ok_or(FrameError::UnknownWireFormat(code))?;
    Ok((wf, r))
}

/// The version and wire format of any `MLSMessage` (a KeyPackage upload is checked
/// with this: its first four bytes must be `00 01 00 05`).
pub fn wire_format(bytes: &[u8]) -> Result<WireFormat, FrameError> {
    start(bytes).map(|(wf, _)| wf)
}

/// The clear header of a PublicMessage or PrivateMessage. A PrivateMessage is checked
/// to its last byte (its remaining fields are length-prefixed); a PublicMessage up to
/// its content type, since the rest depends on the content.
pub fn parse_message(bytes: &[u8]) -> Result<MessageHeader<'_>, FrameError> {
    let (wire_format, mut r) = start(bytes)?;
    match wire_format {
        WireFormat::PublicMessage => {
            let group_id = r.opaque("group id")?;
            let epoch = r.u64("epoch")?;
            let sender = match r.u8("sender")? {
                1 => Sender::Member(r.u32("sender")?),
                2 => Sender::External(r.u32("sender")?),
                3 => Sender::NewMemberProposal,
                4 => Sender::NewMemberCommit,
                t => return Err(FrameError::UnknownSender(t)),
            };
            r.opaque("authenticated data")?;
            let content_type = content_type(&mut r)?;
            Ok(MessageHeader {
                wire_format,
                group_id,
                epoch,
                content_type,
                sender: Some(sender),
            })
        }
        WireFormat::PrivateMessage => {
            let group_id = r.opaque("group id")?;
            let epoch = r.u64("epoch")?;
            let content_type = content_type(&mut r)?;
            r.opaque("authenticated data")?;
            r.opaque("encrypted sender data")?;
            r.opaque("ciphertext")?;
            r.finish()?;
            Ok(MessageHeader {
                wire_format,
                group_id,
                epoch,
                content_type,
                sender: None,
            })
        }
        other => Err(FrameError::WrongWireFormat {
            got: other.code(),
            expected: "a public or private message",
        }),
    }
}

fn content_type(r: &mut Reader<'_>) -> Result<ContentType, FrameError> {
    let c = r.u8("content type")?;
    ContentType::from_code(c).ok_or(FrameError::UnknownContentType(c))
}

/// Check that `bytes` is a Welcome: the framing, then `cipher_suite`, the list of
/// encrypted group secrets and the encrypted GroupInfo, with nothing after them.
pub fn check_welcome(bytes: &[u8]) -> Result<(), FrameError> {
    let (wf, mut r) = start(bytes)?;
    if wf != WireFormat::Welcome {
        return Err(FrameError::WrongWireFormat {
            got: wf.code(),
            expected: "a welcome",
        });
    }
    r.u16("cipher suite")?;
    r.opaque("group secrets")?;
    r.opaque("encrypted group info")?;
    r.finish()
}

/// Builders of synthetic frames: correct MLS framing around made-up contents, for
/// tests of the delivery service (here and in the server's integration tests) and for
/// fuzz seeds. Nothing built here is a valid MLS message beyond its header.
pub mod synth {
    use super::{ContentType, MLS10, Sender, WireFormat};

    /// The variable-length size prefix of `n` (minimal form). `n` must be below 2^30.
    pub fn varint(n: usize, out: &mut Vec<u8>) {
        if n < 1 << 6 {
            out.push(n as u8);
        } else if n < 1 << 14 {
            out.extend_from_slice(&((n as u16) | 0x4000).to_be_bytes());
        } else {
            out.extend_from_slice(&((n as u32 & 0x3fff_ffff) | 0x8000_0000).to_be_bytes());
        }
    }

    fn opaque(data: &[u8], out: &mut Vec<u8>) {
        varint(data.len(), out);
        out.extend_from_slice(data);
    }

    fn head(wf: WireFormat) -> Vec<u8> {
        let mut out = MLS10.to_be_bytes().to_vec();
        out.extend_from_slice(&wf.code().to_be_bytes());
        out
    }

    /// A PrivateMessage with `body` standing in for the ciphertext.
    pub fn private_message(group: &[u8], epoch: u64, ct: ContentType, body: &[u8]) -> Vec<u8> {
        let mut out = head(WireFormat::PrivateMessage);
        opaque(group, &mut out);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.push(ct.code());
        opaque(b"", &mut out);
        opaque(&[0x5a; 16], &mut out);
        opaque(body, &mut out);
        out
    }

    /// A PublicMessage header followed by `rest` (standing in for the content,
    /// signature and tags).
    pub fn public_message(
        group: &[u8],
        epoch: u64,
        sender: Sender,
        ct: ContentType,
        rest: &[u8],
    ) -> Vec<u8> {
        let mut out = head(WireFormat::PublicMessage);
        opaque(group, &mut out);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.push(sender.code());
        if let Sender::Member(i) | Sender::External(i) = sender {
            out.extend_from_slice(&i.to_be_bytes());
        }
        opaque(b"", &mut out);
        out.push(ct.code());
        out.extend_from_slice(rest);
        out
    }

    /// A Welcome with `secrets` and `group_info` standing in for the encrypted parts.
    pub fn welcome(secrets: &[u8], group_info: &[u8]) -> Vec<u8> {
        let mut out = head(WireFormat::Welcome);
        out.extend_from_slice(&3u16.to_be_bytes());
        opaque(secrets, &mut out);
        opaque(group_info, &mut out);
        out
    }

    /// The first bytes of a KeyPackage, then `rest`.
    pub fn key_package(rest: &[u8]) -> Vec<u8> {
        let mut out = head(WireFormat::KeyPackage);
        out.extend_from_slice(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real output of the clients' MLS library (mls-rs, suite 0x0003), all of
    /// consultation 1: a commit adding a member, one updating, an application message,
    /// a Welcome and a KeyPackage (the seeds of the `mls_frame` fuzz target, copied
    /// from confide-mls's).
    const COMMIT_ADD: &[u8] = include_bytes!("../fuzz/corpus/mls_frame/commit_add");
    const COMMIT_UPDATE: &[u8] = include_bytes!("../fuzz/corpus/mls_frame/commit_update");
    const APPLICATION: &[u8] = include_bytes!("../fuzz/corpus/mls_frame/application");
    const WELCOME: &[u8] = include_bytes!("../fuzz/corpus/mls_frame/welcome");
    const KEY_PACKAGE: &[u8] = include_bytes!("../fuzz/corpus/mls_frame/key_package");

    #[test]
    fn real_client_messages_parse() {
        for (bytes, epoch, ct) in [
            (COMMIT_ADD, 0, ContentType::Commit),
            (COMMIT_UPDATE, 1, ContentType::Commit),
            (APPLICATION, 2, ContentType::Application),
        ] {
            let h = parse_message(bytes).unwrap();
            assert_eq!(h.wire_format, WireFormat::PrivateMessage);
            assert!(h.group_id.starts_with(b"confide/c/1/"), "{h:?}");
            assert_eq!((h.epoch, h.content_type, h.sender), (epoch, ct, None));
        }
        assert_eq!(check_welcome(WELCOME), Ok(()));
        assert_eq!(wire_format(KEY_PACKAGE), Ok(WireFormat::KeyPackage));
        assert!(parse_message(WELCOME).is_err());
        assert!(check_welcome(COMMIT_ADD).is_err());
    }

    #[test]
    fn varints_follow_rfc9420() {
        let read = |b: &[u8]| Reader { rest: b }.varint("x");
        assert_eq!(read(&[0x25]), Ok(0x25));
        assert_eq!(read(&[0x7b, 0xbd]), Ok(15_293));
        assert_eq!(read(&[0x9d, 0x7f, 0x3e, 0x7d]), Ok(494_878_333));
        // The top bits 11 are invalid; non-minimal forms are refused.
        assert_eq!(
            read(&[0xc0, 0, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::BadLength("x"))
        );
        assert_eq!(read(&[0x40, 0x25]), Err(FrameError::BadLength("x")));
        assert_eq!(
            read(&[0x80, 0, 0x3f, 0xff]),
            Err(FrameError::BadLength("x"))
        );
        assert_eq!(read(&[0x40]), Err(FrameError::Truncated("x")));
        for n in [0usize, 63, 64, 16_383, 16_384, (1 << 30) - 1] {
            let mut b = Vec::new();
            synth::varint(n, &mut b);
            assert_eq!(read(&b), Ok(n), "{n}");
        }
    }

    #[test]
    fn bad_framing_is_named() {
        let good = synth::private_message(b"g", 4, ContentType::Commit, b"ct");
        let mut v = good.clone();
        v[1] = 2;
        assert_eq!(parse_message(&v), Err(FrameError::Version(2)));
        let mut v = good.clone();
        v[3] = 9;
        assert_eq!(parse_message(&v), Err(FrameError::UnknownWireFormat(9)));
        let mut v = good.clone();
        v.push(0);
        assert_eq!(parse_message(&v), Err(FrameError::TrailingBytes));
        for cut in 0..good.len() {
            assert!(parse_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        let kp = synth::key_package(b"rest");
        assert!(matches!(
            parse_message(&kp),
            Err(FrameError::WrongWireFormat { got: 5, .. })
        ));
        let p = synth::public_message(b"g", 1, Sender::Member(0), ContentType::Commit, b"");
        let mut v = p.clone();
        v[4 + 2 + 8] = 7; // sender type
        assert_eq!(parse_message(&v), Err(FrameError::UnknownSender(7)));
        let mut v = p;
        let last = v.len() - 1;
        v[last] = 0;
        assert_eq!(parse_message(&v), Err(FrameError::UnknownContentType(0)));
    }

    fn content_type() -> impl Strategy<Value = ContentType> {
        prop_oneof![
            Just(ContentType::Application),
            Just(ContentType::Proposal),
            Just(ContentType::Commit)
        ]
    }

    fn sender() -> impl Strategy<Value = Sender> {
        prop_oneof![
            any::<u32>().prop_map(Sender::Member),
            any::<u32>().prop_map(Sender::External),
            Just(Sender::NewMemberProposal),
            Just(Sender::NewMemberCommit),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_message(&bytes);
            let _ = check_welcome(&bytes);
            let _ = wire_format(&bytes);
        }

        #[test]
        fn never_panics_behind_a_valid_prefix(
            wf in 1u16..=5,
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![0, 1];
            bytes.extend_from_slice(&wf.to_be_bytes());
            bytes.extend_from_slice(&tail);
            let _ = parse_message(&bytes);
            let _ = check_welcome(&bytes);
        }

        #[test]
        fn private_headers_round_trip(
            group in proptest::collection::vec(any::<u8>(), 0..20_000),
            epoch in any::<u64>(),
            ct in content_type(),
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let bytes = synth::private_message(&group, epoch, ct, &body);
            let h = parse_message(&bytes).unwrap();
            prop_assert_eq!(h, MessageHeader {
                wire_format: WireFormat::PrivateMessage,
                group_id: &group,
                epoch,
                content_type: ct,
                sender: None,
            });
        }

        #[test]
        fn public_headers_round_trip(
            group in proptest::collection::vec(any::<u8>(), 0..100),
            epoch in any::<u64>(),
            sender in sender(),
            ct in content_type(),
            rest in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let bytes = synth::public_message(&group, epoch, sender, ct, &rest);
            let h = parse_message(&bytes).unwrap();
            prop_assert_eq!(h, MessageHeader {
                wire_format: WireFormat::PublicMessage,
                group_id: &group,
                epoch,
                content_type: ct,
                sender: Some(sender),
            });
        }

        #[test]
        fn welcomes_round_trip(
            secrets in proptest::collection::vec(any::<u8>(), 0..100),
            info in proptest::collection::vec(any::<u8>(), 0..20_000),
        ) {
            prop_assert_eq!(check_welcome(&synth::welcome(&secrets, &info)), Ok(()));
        }
    }
}
