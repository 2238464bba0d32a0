//! QR codes drawn as text, for `serve --demo`: a newcomer scans the demo clinicians'
//! TOTP enrolment (`otpauth://` URL) from the terminal with an authenticator app.
//!
//! Each character cell holds two modules, one above the other (Unicode half blocks), so
//! an enrolment URL's code, quiet zone included, fits an 80-column terminal.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use qrcode::types::QrError;

/// Black text on a bright white background, and back to the terminal's colours.
const ANSI_ON: &str = "\x1b[30;107m";
const ANSI_OFF: &str = "\x1b[0m";

/// `text` as a QR code of Unicode half blocks, one line per two rows of modules, with
/// the standard 4-module quiet zone.
///
/// With `ansi`, every line is drawn black on white with colour codes: scanners want dark
/// modules on a light ground, and a terminal's own background is often dark. Without it
/// (output that is not a terminal) dark modules are the drawn blocks, which reads right
/// on a light page.
pub fn render(text: &str, ansi: bool) -> Result<String, QrError> {
    let code = QrCode::new(text.as_bytes())?;
    let plain = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Dark)
        .light_color(Dense1x2::Light)
        .quiet_zone(true)
        .build();
    if !ansi {
        return Ok(plain);
    }
    Ok(plain
        .lines()
        .map(|l| format!("{ANSI_ON}{l}{ANSI_OFF}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module grid a rendering shows (true: dark), colour codes ignored.
    fn modules(drawn: &str) -> Vec<Vec<bool>> {
        let mut rows = Vec::new();
        for line in drawn.lines() {
            let line = line.replace(ANSI_ON, "").replace(ANSI_OFF, "");
            let (mut top, mut bottom) = (Vec::new(), Vec::new());
            for c in line.chars() {
                let (t, b) = match c {
                    ' ' => (false, false),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    '\u{2588}' => (true, true),
                    other => panic!("unexpected character {other:?} in a QR rendering"),
                };
                top.push(t);
                bottom.push(b);
            }
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    /// Decodes a rendering as a phone would read it off the screen (each module drawn
    /// as a 4x4 block of pixels).
    fn decode(drawn: &str) -> String {
        let grid = modules(drawn);
        let scale = 4;
        let (h, w) = (grid.len() * scale, grid[0].len() * scale);
        let mut img =
            rqrr::PreparedImage::prepare_from_bitmap(w, h, |x, y| grid[y / scale][x / scale]);
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the rendering");
        grids[0].decode().expect("the QR code decodes").1
    }

    const URL: &str = "otpauth://totp/Confide%20demo:doctor?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\
                       &issuer=Confide%20demo&algorithm=SHA1&digits=6&period=30";

    #[test]
    fn decodes_back_to_the_enrolment_url() {
        assert_eq!(decode(&render(URL, false).unwrap()), URL);
        assert_eq!(decode(&render(URL, true).unwrap()), URL);
    }

    #[test]
    fn fits_an_80_column_terminal() {
        let drawn = render(URL, false).unwrap();
        let widest = drawn.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(widest <= 80, "{widest} columns");
        // Two module rows per line: about half as many lines as columns.
        assert!(drawn.lines().count() <= widest / 2 + 1);
        // Every line of the coloured form starts and ends its colours (nothing bleeds
        // into the text printed after it).
        for l in render(URL, true).unwrap().lines() {
            assert!(l.starts_with(ANSI_ON) && l.ends_with(ANSI_OFF));
        }
    }
}
