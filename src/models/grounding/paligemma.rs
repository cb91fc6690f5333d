//! PaliGemma's `detect` answers (Beyer et al. 2024, "PaliGemma: A versatile 3B VLM for
//! transfer"): `detect ship ; storage tank` is answered with one
//! `<locYYYY><locYYYY><locYYYY><locYYYY> label` per object, `" ; "` between objects, the four
//! locations being `y0, x0, y1, x1` in 1024 bins of the model input's height and width.
//!
//! Hugging Face's `PaliGemmaProcessor` (transformers 5.24, `processing_paligemma.py`) adds the
//! `<locYYYY>` tokens but has no box post-processing, so this follows the official recipe, the
//! `extract_objs` of Google's `big-vision/paligemma-hf` demo (Hugging Face space, `app.py`, the
//! parser the model card's detection examples use): while the text is not empty,
//! `re.match(r'(.*?)' + r'<loc(\d{4})>' * 4 + r'\s*' + '(?:%s)?' % (r'<seg(\d{3})>' * 16) +
//! r'\s*([^;<>]+)? ?(?:; )?', text)`; no match ends the loop; each match is one object named by
//! its last group, with `y1, x1, y2, x2 = [int(x) / 1024 for x in locs]` scaled by the image's
//! height and width and rounded (`round`, half to even) to whole pixels; the text continues after
//! the match. Here the image is the model input (the tile as the model sees it). The name is
//! stripped of surrounding white space (the demo keeps the space before `" ; "`).
//!
//! The demo decodes with `skip_special_tokens=True`; the seam's text keeps them, which changes
//! nothing here: a special token (`<eos>`) can only follow a name, which `[^;<>]` ends there.

use std::sync::LazyLock;

use regex::Regex;

use super::{BoxParser, ParseInput, ParsedBox};

/// The PaliGemma parser ([`super::PARSERS`]).
#[derive(Debug)]
pub struct PaliGemma;

/// `[grounding] output` of PaliGemma packages.
pub const OUTPUT: &str = "paligemma_detect";

/// The location bins of every PaliGemma checkpoint (`<loc0000>` .. `<loc1023>`), unless
/// `[grounding] bins` says otherwise.
const BINS: [u32; 2] = [1024, 1024];

/// The demo's `_SEGMENT_DETECT_RE`, anchored as `re.match` is.
static DETECT: LazyLock<Regex> = LazyLock::new(|| {
    let pattern = format!(
        r"^(.*?){}\s*(?:{})?\s*([^;<>]+)? ?(?:; )?",
        r"<loc(\d{4})>".repeat(4),
        r"<seg(\d{3})>".repeat(16)
    );
    // A constant pattern: a failure here is a bug caught by the unit tests.
    Regex::new(&pattern).unwrap_or_else(|e| panic!("PaliGemma pattern: {e}"))
});

impl BoxParser for PaliGemma {
    fn outputs(&self) -> &'static [&'static str] {
        &[OUTPUT]
    }

    fn parse(&self, input: &ParseInput<'_>) -> Vec<ParsedBox> {
        let (w, h) = (f64::from(input.image_size.0), f64::from(input.image_size.1));
        let [bx, by] = input.bins.unwrap_or(BINS).map(f64::from);
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.text.len() {
            let Some(c) = DETECT.captures(&input.text[at..]) else {
                break;
            };
            let (Some(whole), Some(first), Some(last)) = (c.get(0), c.get(2), c.get(5)) else {
                break;
            };
            let loc = |i: usize, bins: f64| {
                c.get(i)
                    .and_then(|m| m.as_str().parse::<u32>().ok())
                    .map(|k| f64::from(k) / bins)
            };
            let (Some(y0), Some(x0), Some(y1), Some(x1)) =
                (loc(2, by), loc(3, bx), loc(4, by), loc(5, bx))
            else {
                break;
            };
            let name = c.get(22).map_or("", |m| m.as_str());
            out.push(ParsedBox {
                phrase: name.trim().to_string(),
                bbox: [
                    (x0 * w).round_ties_even() as f32,
                    (y0 * h).round_ties_even() as f32,
                    (x1 * w).round_ties_even() as f32,
                    (y1 * h).round_ties_even() as f32,
                ],
                // the four tokens: `<loc` before the first digits, `>` after the last
                coords: at + first.start() - 4..at + last.end() + 1,
            });
            // A match holds four location tokens, so it is never empty.
            at += whole.end();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, size: u32) -> Vec<ParsedBox> {
        PaliGemma.parse(&ParseInput {
            text,
            output: OUTPUT,
            image_size: (size, size),
            bins: None,
            banned: &[],
        })
    }

    #[test]
    fn objects_are_y0_x0_y1_x1_in_1024_bins_rounded_half_to_even() {
        let text = "<loc0256><loc0384><loc0640><loc0896> ship ; <loc0100><loc0050><loc0300><loc0200> storage tank<eos>";
        let b = parse(text, 32);
        assert_eq!(b.len(), 2, "{b:?}");
        // 384/1024*32 = 12, 256/1024*32 = 8, 896/1024*32 = 28, 640/1024*32 = 20
        assert_eq!(b[0].bbox, [12.0, 8.0, 28.0, 20.0]);
        assert_eq!(b[0].phrase, "ship");
        assert_eq!(
            &text[b[0].coords.clone()],
            "<loc0256><loc0384><loc0640><loc0896>"
        );
        // 50/1024*32 = 1.5625 -> 2, 100/1024*32 = 3.125 -> 3, 200 -> 6.25 -> 6, 300 -> 9.375 -> 9
        assert_eq!(b[1].bbox, [2.0, 3.0, 6.0, 9.0]);
        assert_eq!(b[1].phrase, "storage tank");
        // 16/1024*32 = 0.5 and 48/1024*32 = 1.5: Python's round goes to the even neighbour
        let b = parse("<loc0016><loc0048><loc0016><loc0048>", 32);
        assert_eq!(b[0].bbox, [2.0, 0.0, 2.0, 0.0]);
        assert_eq!(b[0].phrase, "");
    }

    #[test]
    fn text_before_segments_and_what_does_not_match() {
        // Text before the first object is skipped, <seg> tokens are read over; a line break
        // cannot be part of the text before an object (`.`), so nothing after it is read.
        let text = "found <loc0000><loc0000><loc1023><loc1023><seg001><seg002><seg003><seg004><seg005><seg006><seg007><seg008><seg009><seg010><seg011><seg012><seg013><seg014><seg015><seg016> a field";
        let b = parse(text, 448);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].phrase, "a field");
        assert_eq!(b[0].bbox, [0.0, 0.0, 448.0, 448.0]); // 1023/1024*448 = 447.5625
        assert!(parse("no\n<loc0000><loc0000><loc0010><loc0010> x", 32).is_empty());
        assert!(parse("<loc0001><loc0002><loc0003> three", 32).is_empty());
        // a name ends at '<': the next object follows without a separator
        let b = parse(
            "<loc0000><loc0000><loc0512><loc0512> a<loc0512><loc0512><loc1023><loc1023> b",
            64,
        );
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].phrase.as_str(), b[1].phrase.as_str()), ("a", "b"));
        assert_eq!(b[1].bbox, [32.0, 32.0, 64.0, 64.0]); // 1023/1024*64 = 63.94 -> 64
        assert!(parse("", 32).is_empty());
    }
}
