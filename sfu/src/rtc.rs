//! The one module that talks to str0m.
//!
//! str0m ships breaking releases often (the version is pinned exactly in Cargo.toml).
//! Keeping every str0m call here means an upgrade touches one file. The rest of the crate
//! uses the small vocabulary re-exported below.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind as StrKind, Pt};
use str0m::net::Protocol;
use str0m::rtp::{Extension, ExtensionValues, RtpWrite, Ssrc, VideoOrientation};

pub(crate) use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
pub(crate) use str0m::media::Mid;
pub(crate) use str0m::net::Receive;
pub(crate) use str0m::rtp::RtpPacket;
pub(crate) use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::MediaKind;

/// Runs `f` and turns a panic into `Err(())`. str0m panics on internal bugs by design;
/// the caller drops the one peer whose `Rtc` panicked.
pub(crate) fn guard<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())
}

/// Settings for one participant's `Rtc`.
pub(crate) struct LegConfig {
    pub(crate) bwe_initial_bps: Option<u64>,
}

/// Builds the SFU side of one participant: ICE-lite, RTP mode, VP8 + Opus only.
pub(crate) fn new_leg(now: Instant, cfg: &LegConfig) -> Rtc {
    let mut b = Rtc::builder()
        .set_ice_lite(true)
        // RTP mode: payloads are forwarded as shared bytes, never depacketized, which is
        // what keeps E2EE frames intact.
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        // Only the header extensions we use. Each negotiated one is parsed (and some
        // converted) on every packet: absolute send time alone was 4 % of a forward
        // step, and we estimate bandwidth with TWCC. No simulcast, so no RID/repaired
        // RID. Video orientation is forwarded: phones that negotiate it send unrotated
        // frames and rely on the receiver to turn them.
        .clear_extension_map()
        .set_extension(1, Extension::AudioLevel)
        .set_extension(3, Extension::TransportSequenceNumber)
        .set_extension(4, Extension::RtpMid)
        .set_extension(13, Extension::VideoOrientation)
        .set_stats_interval(Some(Duration::from_secs(1)));
    if let Some(bps) = cfg.bwe_initial_bps {
        b = b.enable_bwe(Some(Bitrate::bps(bps)));
    }
    b.build(now)
}

pub(crate) fn add_host_candidate(rtc: &mut Rtc, addr: std::net::SocketAddr) -> bool {
    match Candidate::host(addr, "udp") {
        Ok(c) => rtc.add_local_candidate(c).is_some(),
        Err(_) => false,
    }
}

/// Our ICE credentials of this leg: `(ufrag, password)`.
pub(crate) fn local_creds(rtc: &mut Rtc) -> (String, String) {
    let c = rtc.direct_api().local_ice_credentials();
    (c.ufrag, c.pass)
}

/// The HMAC-SHA1 of the crypto backend str0m is built with, for STUN integrity checks
/// the core makes before it trusts a new source address.
pub(crate) type StunHmac = &'static dyn str0m::crypto::Sha1HmacProvider;

pub(crate) fn stun_hmac() -> StunHmac {
    str0m::crypto::from_feature_flags().sha1_hmac_provider
}

/// Whether `buf` is a STUN binding request whose MESSAGE-INTEGRITY checks out under our
/// ICE password `pass` (RFC 8445 section 7.2.2: short-term credentials).
pub(crate) fn stun_request_verifies(buf: &[u8], pass: &str, hmac: StunHmac) -> bool {
    match str0m::ice::StunMessage::parse(buf) {
        Ok(m) => {
            m.is_binding_request()
                && m.verify(pass.as_bytes(), |key, parts| hmac.sha1_hmac(key, parts))
        }
        Err(_) => false,
    }
}

pub(crate) fn parse_offer(sdp: &str) -> Result<SdpOffer, String> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())
}

pub(crate) fn parse_answer(sdp: &str) -> Result<SdpAnswer, String> {
    SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())
}

pub(crate) fn accept_offer(rtc: &mut Rtc, offer: SdpOffer) -> Result<String, String> {
    rtc.sdp_api()
        .accept_offer(offer)
        .map(|a| a.to_sdp_string())
        .map_err(|e| e.to_string())
}

pub(crate) fn accept_answer(
    rtc: &mut Rtc,
    pending: SdpPendingOffer,
    answer: SdpAnswer,
) -> Result<(), String> {
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())
}

pub(crate) fn parse_candidate(c: &str) -> Option<Candidate> {
    let c = c.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    Candidate::from_sdp_string(c).ok()
}

pub(crate) fn kind_of(k: StrKind) -> MediaKind {
    if k.is_audio() {
        MediaKind::Audio
    } else {
        MediaKind::Video
    }
}

fn str_kind(k: MediaKind) -> StrKind {
    match k {
        MediaKind::Audio => StrKind::Audio,
        MediaKind::Video => StrKind::Video,
    }
}

pub(crate) fn is_receiving(d: Direction) -> bool {
    d.is_receiving()
}

/// A batch of SDP changes for one subscriber: add send-only tracks, stop old ones.
/// Returns the offer and the pending handle, or `None` when nothing changed.
pub(crate) fn renegotiate(
    rtc: &mut Rtc,
    add: &[(MediaKind, String)],
    stop: &[Mid],
    mut on_added: impl FnMut(usize, Mid),
) -> Option<(String, SdpPendingOffer)> {
    let mut api = rtc.sdp_api();
    for (i, (kind, stream_id)) in add.iter().enumerate() {
        let mid = api.add_media(
            str_kind(*kind),
            Direction::SendOnly,
            Some(stream_id.clone()),
            None,
            None,
        );
        on_added(i, mid);
    }
    for mid in stop {
        api.stop_media(*mid);
    }
    api.apply().map(|(o, p)| (o.to_sdp_string(), p))
}

/// Maps a publisher's payload type to the subscriber's PT for the same codec.
pub(crate) fn map_pt(publisher: &Rtc, subscriber: &Rtc, pt: Pt) -> Option<Pt> {
    let p = publisher.codec_config().find(|p| p.pt() == pt)?;
    let spec = p.spec();
    subscriber
        .codec_config()
        .find(|s| s.spec().codec == spec.codec && s.spec().clock_rate == spec.clock_rate)
        .map(|s| s.pt())
}

/// The part of an incoming packet that is forwarded, minus the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forward {
    pub(crate) pt: Pt,
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    pub(crate) marker: bool,
    pub(crate) wallclock: Instant,
    pub(crate) nackable: bool,
    pub(crate) audio_level: Option<i8>,
    pub(crate) voice_activity: Option<bool>,
    pub(crate) video_orientation: Option<VideoOrientation>,
}

/// Writes one forwarded packet to a subscriber's send stream. Only the extensions we
/// negotiate and understand are carried over; str0m adds its own (mid, TWCC).
pub(crate) fn write_forward(
    rtc: &mut Rtc,
    mid: Mid,
    f: &Forward,
    payload: &std::sync::Arc<[u8]>,
) -> bool {
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    let ext = ExtensionValues {
        audio_level: f.audio_level,
        voice_activity: f.voice_activity,
        video_orientation: f.video_orientation,
        ..Default::default()
    };
    tx.write_rtp(
        RtpWrite::new(f.pt, f.seq.into(), f.ts, f.wallclock, payload.clone())
            .marker(f.marker)
            .ext_vals(ext)
            .nackable(f.nackable),
    );
    true
}

/// Asks a publisher for a keyframe on one of its incoming video tracks.
pub(crate) fn request_keyframe(rtc: &mut Rtc, mid: Mid, fir: bool) -> bool {
    let kind = if fir {
        KeyframeRequestKind::Fir
    } else {
        KeyframeRequestKind::Pli
    };
    match rtc.direct_api().stream_rx_by_mid(mid, None) {
        Some(rx) => {
            rx.request_keyframe(kind);
            true
        }
        None => false,
    }
}

/// The mid of an incoming SSRC, if str0m knows the stream.
pub(crate) fn mid_of_ssrc(rtc: &mut Rtc, ssrc: Ssrc) -> Option<Mid> {
    rtc.direct_api().stream_rx(&ssrc).map(|rx| rx.mid())
}

pub(crate) fn is_fir(k: KeyframeRequestKind) -> bool {
    matches!(k, KeyframeRequestKind::Fir)
}

pub(crate) fn receive<'a>(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    buf: &'a [u8],
) -> Option<Receive<'a>> {
    Receive::new(Protocol::Udp, src, dst, buf).ok()
}

pub(crate) fn bitrate_bps(b: Bitrate) -> u64 {
    b.as_u64()
}

pub(crate) use str0m::bwe::BweKind;
pub(crate) use str0m::media::KeyframeRequest;

/// An offer like a client's (send-only Opus + VP8), for the fuzz harness.
#[cfg(feature = "_fuzzing")]
pub(crate) fn sample_offer(now: Instant, addr: std::net::SocketAddr) -> String {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    add_host_candidate(&mut rtc, addr);
    let mut api = rtc.sdp_api();
    api.add_media(StrKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(StrKind::Video, Direction::SendOnly, None, None, None);
    // Invariant: two added media always make an offer.
    let (offer, _) = api.apply().expect("changes pending");
    offer.to_sdp_string()
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn guard_turns_a_panic_into_an_error() {
        assert_eq!(guard(|| 7), Ok(7));
        assert_eq!(guard(|| -> u8 { panic!("str0m internal bug") }), Err(()));
    }
}
