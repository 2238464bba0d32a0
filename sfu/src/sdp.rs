//! A first look at a peer's SDP, before str0m parses it.
//!
//! Parsing and applying an offer runs on the media worker thread that forwards every
//! other room on it, and its cost grows with the number of media sections. Counting the
//! sections is a single pass over the lines, so an oversized offer is refused for the
//! price of reading it once. Total over arbitrary text.

/// What the caps look at in an SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Shape {
    /// Media sections (`m=` lines), including stopped ones (port 0).
    pub(crate) sections: usize,
    /// Live sections in which the peer sends to us (`sendrecv`, `sendonly`, or no
    /// direction attribute, which means `sendrecv`): the tracks it would publish.
    pub(crate) sending: usize,
}

pub(crate) fn shape(sdp: &str) -> Shape {
    let mut s = Shape::default();
    // Per section: live (port not 0) and whether it sends.
    let mut current: Option<(bool, bool)> = None;
    let close = |s: &mut Shape, cur: Option<(bool, bool)>| {
        if let Some((true, true)) = cur {
            s.sending += 1;
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            close(&mut s, current);
            s.sections += 1;
            let port = rest.split_whitespace().nth(1).unwrap_or("0");
            // `port/count` is allowed by RFC 8866; only the port matters here.
            let live = port.split('/').next().is_some_and(|p| p != "0");
            current = Some((live, true));
        } else if let Some((_, sends)) = current.as_mut() {
            match line {
                "a=recvonly" | "a=inactive" => *sends = false,
                "a=sendrecv" | "a=sendonly" => *sends = true,
                _ => {}
            }
        }
    }
    close(&mut s, current);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sections_and_sending_tracks() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=inactive\r\n";
        assert_eq!(
            shape(sdp),
            Shape {
                sections: 5,
                sending: 2
            }
        );
    }

    #[test]
    fn odd_input_counts_what_it_can() {
        assert_eq!(shape(""), Shape::default());
        assert_eq!(
            shape("m="),
            Shape {
                sections: 1,
                sending: 0
            }
        );
        assert_eq!(
            shape("m=audio 9/2 RTP 0\na=sendonly"),
            Shape {
                sections: 1,
                sending: 1
            }
        );
        assert_eq!(
            shape("a=sendonly\nm=video"),
            Shape {
                sections: 1,
                sending: 0
            }
        );
    }
}
