//! Florence-2's box answers (Xiao et al. 2023), parsed as Hugging Face's
//! `Florence2PostProcessor` does (transformers 5.24, `processing_florence2.py`):
//!
//! - `description_with_bboxes` (`<OD>`, `<DENSE_REGION_CAPTION>`):
//!   `parse_description_with_bboxes_from_text_and_spans`: `<s>`, `</s>`, `<pad>` removed (in that
//!   order), then every match of `([^<]+(?:<loc_\d+>){4,})`: the phrase is the text before the
//!   first `<loc_` (it must hold no line break after its leading white space, as `^\s*(.*?)`
//!   needs), stripped and with non-ASCII characters dropped; the location tokens give one box per
//!   four (`<loc_(\d+)>` x4, left to right, a remainder ignored);
//! - `phrase_grounding` (`<CAPTION_TO_PHRASE_GROUNDING>`): the same, phrases in the banned list
//!   (`[grounding] banned_phrases`) dropped, every box of a phrase kept with that phrase;
//! - `description_with_bboxes_or_polygons` (`<OPEN_VOCABULARY_DETECTION>`): as
//!   `description_with_bboxes` unless the text holds `<poly>`, when the answer is polygons and
//!   has no boxes;
//! - `bboxes` (`<REGION_PROPOSAL>`): every run of four or more location tokens, phrase empty.
//!
//! A location `k` becomes `(k + 0.5) * size / bins` truncated to an integer (the processor's
//! `dequantize(...).int()`), in float32 as torch computes it, `size` the model input's width for
//! x and height for y.

use super::{BoxParser, ParseInput, ParsedBox};

/// The Florence-2 parser ([`super::PARSERS`]).
#[derive(Debug)]
pub struct Florence2;

const DESCRIPTION: &str = "description_with_bboxes";
const GROUNDING: &str = "phrase_grounding";
const OR_POLYGONS: &str = "description_with_bboxes_or_polygons";
const BOXES: &str = "bboxes";

/// Florence-2's quantisation when the manifest has no `[locations]` (the processor's own).
const DEFAULT_BINS: [u32; 2] = [1000, 1000];

impl BoxParser for Florence2 {
    fn outputs(&self) -> &'static [&'static str] {
        &[DESCRIPTION, GROUNDING, OR_POLYGONS, BOXES]
    }

    fn parse(&self, input: &ParseInput<'_>) -> Vec<ParsedBox> {
        if input.output == OR_POLYGONS && input.text.contains("<poly>") {
            return Vec::new();
        }
        let clean = Cleaned::new(input.text);
        let bins = input.bins.unwrap_or(DEFAULT_BINS);
        let allow_empty = input.output == BOXES;
        let mut out = Vec::new();
        for m in phrases(&clean.text, allow_empty) {
            let phrase = if allow_empty {
                String::new()
            } else {
                let Some(p) = phrase_of(&clean.text[m.phrase.clone()]) else {
                    continue;
                };
                if input.output == GROUNDING && input.banned.contains(&p) {
                    continue;
                }
                p.chars().filter(char::is_ascii).collect()
            };
            for (locs, range) in m.boxes {
                let bbox = dequantize(locs, input.image_size, bins);
                out.push(ParsedBox {
                    phrase: phrase.clone(),
                    bbox,
                    coords: clean.original(range),
                });
            }
        }
        out
    }
}

/// The text with `<s>`, `</s>` and `<pad>` removed one after the other (Python's
/// `str.replace`), and the original byte of every byte kept.
struct Cleaned {
    text: String,
    origin: Vec<usize>,
}

impl Cleaned {
    fn new(text: &str) -> Cleaned {
        let mut c = Cleaned {
            text: text.to_string(),
            origin: (0..text.len()).collect(),
        };
        for pat in ["<s>", "</s>", "<pad>"] {
            c.remove(pat);
        }
        c
    }

    fn remove(&mut self, pat: &str) {
        let (mut text, mut origin) = (String::new(), Vec::new());
        let mut i = 0;
        while i < self.text.len() {
            if self.text[i..].starts_with(pat) {
                i += pat.len();
                continue;
            }
            let Some(c) = self.text[i..].chars().next() else {
                break;
            };
            text.push(c);
            origin.extend_from_slice(&self.origin[i..i + c.len_utf8()]);
            i += c.len_utf8();
        }
        self.text = text;
        self.origin = origin;
    }

    /// The original bytes of the cleaned bytes `r` (non-empty).
    fn original(&self, r: std::ops::Range<usize>) -> std::ops::Range<usize> {
        match (
            self.origin.get(r.start),
            r.end.checked_sub(1).and_then(|e| self.origin.get(e)),
        ) {
            (Some(&s), Some(&e)) => s..e + 1,
            _ => 0..0,
        }
    }
}

/// One match of the phrase pattern: the phrase's bytes and each box's four locations with their
/// bytes.
struct PhraseMatch {
    phrase: std::ops::Range<usize>,
    boxes: Vec<([u64; 4], std::ops::Range<usize>)>,
}

/// `<loc_(\d+)>` at the start of `s`: the number and the token's length.
fn loc_at(s: &str) -> Option<(u64, usize)> {
    let rest = s.strip_prefix("<loc_")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'>') {
        return None;
    }
    // Numbers beyond u64 do not occur in a tokenizer's location tokens; saturate.
    let k = rest[..digits].parse::<u64>().unwrap_or(u64::MAX);
    Some((k, 5 + digits + 1))
}

/// The consecutive location tokens from byte `at`: their numbers and byte ranges.
fn locs_from(text: &str, mut at: usize) -> Vec<(u64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    while let Some((k, len)) = loc_at(&text[at..]) {
        out.push((k, at..at + len));
        at += len;
    }
    out
}

/// `re.findall(r"([^<]+(?:<loc_\d+>){4,})", text)` (or, `allow_empty`,
/// `(?:(?:<loc_\d+>){4,})`), with `finditer(<loc_(\d+)>{4})` over each match's locations.
fn phrases(text: &str, allow_empty: bool) -> Vec<PhraseMatch> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < text.len() {
        let rest = &text[p..];
        let q = if allow_empty {
            p
        } else if rest.starts_with('<') {
            p += 1;
            continue;
        } else {
            // `[^<]+` is greedy and the next part starts with '<': only the whole run can match.
            rest.find('<').map_or(text.len(), |i| p + i)
        };
        let locs = locs_from(text, q);
        if locs.len() < 4 {
            if allow_empty {
                p += rest.chars().next().map_or(1, char::len_utf8);
            } else {
                p = q;
            }
            continue;
        }
        let end = locs.last().map_or(q, |l| l.1.end);
        let boxes = locs
            .chunks_exact(4)
            .map(|c| ([c[0].0, c[1].0, c[2].0, c[3].0], c[0].1.start..c[3].1.end))
            .collect();
        out.push(PhraseMatch {
            phrase: p..q,
            boxes,
        });
        p = end;
    }
    out
}

/// Python's `str.isspace` (Rust's white space plus the four information separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.search(r"^\s*(.*?)(?=...|<loc_)", phrase_text).group().strip()` for the text before the
/// first location token: `None` when a line break follows the leading white space (`.` does not
/// match it).
fn phrase_of(run: &str) -> Option<String> {
    let body = run.trim_start_matches(py_space);
    if body.contains('\n') {
        return None;
    }
    Some(run.trim_matches(py_space).to_string())
}

/// `dequantize`: `(k + 0.5) * (size / bins)` in float32, truncated (torch's `.int()`).
fn dequantize(locs: [u64; 4], (w, h): (u32, u32), [bx, by]: [u32; 2]) -> [f32; 4] {
    let per_x = (f64::from(w) / f64::from(bx)) as f32;
    let per_y = (f64::from(h) / f64::from(by)) as f32;
    let one = |k: u64, per: f32| ((k as f32 + 0.5) * per).trunc();
    [
        one(locs[0], per_x),
        one(locs[1], per_y),
        one(locs[2], per_x),
        one(locs[3], per_y),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, output: &str, banned: &[String]) -> Vec<ParsedBox> {
        Florence2.parse(&ParseInput {
            text,
            output,
            image_size: (64, 48),
            bins: Some([1000, 1000]),
            banned,
        })
    }

    #[test]
    fn od_boxes_and_phrases() {
        let t = "</s><s>car<loc_100><loc_200><loc_300><loc_400> ship<loc_0><loc_1><loc_999><loc_998><loc_5><loc_6><loc_7><loc_8><loc_9></s>";
        let b = parse(t, DESCRIPTION, &[]);
        assert_eq!(b.len(), 3);
        // (100.5 * 0.064) = 6.43 -> 6; (200.5 * 0.048) = 9.62 -> 9; 300.5*0.064 = 19.2 -> 19;
        // 400.5 * 0.048 = 19.2 -> 19.
        assert_eq!(b[0].phrase, "car");
        assert_eq!(b[0].bbox, [6.0, 9.0, 19.0, 19.0]);
        assert_eq!(
            &t[b[0].coords.clone()],
            "<loc_100><loc_200><loc_300><loc_400>"
        );
        assert_eq!(b[1].phrase, "ship");
        assert_eq!(b[1].bbox, [0.0, 0.0, 63.0, 47.0]);
        assert_eq!(b[2].phrase, "ship");
        assert_eq!(&t[b[2].coords.clone()], "<loc_5><loc_6><loc_7><loc_8>");
    }

    #[test]
    fn fewer_than_four_locations_or_no_text_is_no_box() {
        assert!(parse("car<loc_1><loc_2><loc_3>", DESCRIPTION, &[]).is_empty());
        assert!(parse("<loc_1><loc_2><loc_3><loc_4>", DESCRIPTION, &[]).is_empty());
        // `bboxes` (region proposals) takes runs without text.
        let b = parse("<loc_1><loc_2><loc_3><loc_4>", BOXES, &[]);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].phrase, "");
        // A tag's tail is text to the pattern: "od>car" is the phrase.
        let b = parse("<od>car<loc_1><loc_2><loc_3><loc_4>", DESCRIPTION, &[]);
        assert_eq!(b[0].phrase, "od>car");
    }

    #[test]
    fn grounding_bans_phrases_and_polygons_have_no_boxes() {
        let banned = vec!["the image".to_string()];
        let t = "the image<loc_1><loc_2><loc_3><loc_4>a boat<loc_1><loc_2><loc_3><loc_4>";
        let b = parse(t, GROUNDING, &banned);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].phrase, "a boat");
        assert_eq!(parse(t, DESCRIPTION, &banned).len(), 2);
        let poly = "ship<poly><loc_1><loc_2><loc_3><loc_4></poly>";
        assert!(parse(poly, OR_POLYGONS, &[]).is_empty());
    }

    #[test]
    fn line_breaks_and_non_ascii() {
        assert!(parse("a\nb<loc_1><loc_2><loc_3><loc_4>", DESCRIPTION, &[]).is_empty());
        let b = parse(
            "\n  bo\u{e9}at <loc_1><loc_2><loc_3><loc_4>",
            DESCRIPTION,
            &[],
        );
        assert_eq!(b[0].phrase, "boat");
    }

    #[test]
    fn removed_tokens_keep_original_offsets() {
        let t = "<s>x<loc_1><pad><loc_2><loc_3><loc_4>";
        let b = parse(t, DESCRIPTION, &[]);
        assert_eq!(b.len(), 1);
        assert_eq!(&t[b[0].coords.clone()], "<loc_1><pad><loc_2><loc_3><loc_4>");
    }
}
