//! Qwen2-VL's grounding answers (Wang et al. 2024, "Qwen2-VL", section 2.2 "Visual grounding":
//! boxes are `(X_top_left,Y_top_left),(X_bottom_right,Y_bottom_right)` normalised to
//! `[0, 1000)`, written between `<|box_start|>` and `<|box_end|>`, the phrase they ground between
//! `<|object_ref_start|>` and `<|object_ref_end|>`). These are special tokens: the answer is
//! read with them kept (`batch_decode(..., skip_special_tokens=False)`), as the seam decodes.
//!
//! Hugging Face's `Qwen2VLProcessor` (transformers 5.24) has no box post-processing; this follows
//! the Qwen team's own parser of the format, Qwen-VL's `QWenTokenizer._fetch_all_box_with_ref`
//! and `draw_bbox_on_latest_picture` (`tokenization_qwen.py`, with Qwen2-VL's tokens for
//! `<ref>`/`<box>`): the text is split into phrase (`ref`) and box elements; a box's content has
//! its `(` and `)` removed and is split at `,` into integers (`int`, which allows surrounding
//! white space and a sign), exactly four or the box is skipped; a box takes the phrase of the
//! element right before it when that is a phrase (stripped), else none; then `x = int(x / 1000
//! * width)` and `y = int(y / 1000 * height)` (truncation) with the image being the model input.

use super::{BoxParser, ParseInput, ParsedBox};

/// The Qwen2-VL parser ([`super::PARSERS`]).
#[derive(Debug)]
pub struct Qwen2Vl;

/// `[grounding] output` of Qwen2-VL packages.
pub const OUTPUT: &str = "qwen2_vl_boxes";

const REF_START: &str = "<|object_ref_start|>";
const REF_END: &str = "<|object_ref_end|>";
const BOX_START: &str = "<|box_start|>";
const BOX_END: &str = "<|box_end|>";

/// The normalisation of Qwen2-VL's coordinates.
const SCALE: f64 = 1000.0;

/// One element of the answer: a phrase, a box (its content's byte range) or other text.
#[derive(Debug, PartialEq)]
enum Element<'a> {
    Ref(&'a str),
    Box(std::ops::Range<usize>),
    Text,
}

/// Qwen-VL's `to_list_format` for the phrase and box tags: a tag opened and not closed
/// leaves the rest as text.
fn elements(text: &str) -> Vec<Element<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let next = [(REF_START, REF_END), (BOX_START, BOX_END)]
            .iter()
            .filter_map(|&(open, close)| text[at..].find(open).map(|i| (at + i, open, close)))
            .min_by_key(|&(i, _, _)| i);
        let Some((i, open, close)) = next else {
            out.push(Element::Text);
            break;
        };
        if i > at {
            out.push(Element::Text);
        }
        let body = i + open.len();
        let Some(j) = text[body..].find(close).map(|j| body + j) else {
            out.push(Element::Text);
            break;
        };
        out.push(if open == REF_START {
            Element::Ref(&text[body..j])
        } else {
            Element::Box(body..j)
        });
        at = j + close.len();
    }
    out
}

/// `tuple(map(int, content.replace("(", "").replace(")", "").split(",")))` when it has four.
fn numbers(content: &str) -> Option<[i64; 4]> {
    let cleaned: String = content.chars().filter(|&c| c != '(' && c != ')').collect();
    let v: Vec<i64> = cleaned
        .split(',')
        .map(|s| s.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

impl BoxParser for Qwen2Vl {
    fn outputs(&self) -> &'static [&'static str] {
        &[OUTPUT]
    }

    fn parse(&self, input: &ParseInput<'_>) -> Vec<ParsedBox> {
        let (w, h) = (f64::from(input.image_size.0), f64::from(input.image_size.1));
        let els = elements(input.text);
        let mut out = Vec::new();
        for (k, e) in els.iter().enumerate() {
            let Element::Box(range) = e else { continue };
            let Some([x0, y0, x1, y1]) = numbers(&input.text[range.clone()]) else {
                continue;
            };
            let phrase = match k.checked_sub(1).map(|p| &els[p]) {
                Some(Element::Ref(r)) => r.trim().to_string(),
                _ => String::new(),
            };
            let sx = |v: i64| (v as f64 / SCALE * w).trunc() as f32;
            let sy = |v: i64| (v as f64 / SCALE * h).trunc() as f32;
            out.push(ParsedBox {
                phrase,
                bbox: [sx(x0), sy(y0), sx(x1), sy(y1)],
                coords: range.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, size: u32) -> Vec<ParsedBox> {
        Qwen2Vl.parse(&ParseInput {
            text,
            output: OUTPUT,
            image_size: (size, size),
            bins: None,
            banned: &[],
        })
    }

    #[test]
    fn boxes_are_thousandths_of_the_input_truncated() {
        let text = "<|object_ref_start|> the ship<|object_ref_end|><|box_start|>(120,250),(560,810)<|box_end|><|box_start|>(0,0),(999,1000)<|box_end|><|im_end|>";
        let b = parse(text, 448);
        assert_eq!(b.len(), 2, "{b:?}");
        // 120/1000*448 = 53.76, 250 -> 112, 560 -> 250.88, 810 -> 362.88
        assert_eq!(b[0].bbox, [53.0, 112.0, 250.0, 362.0]);
        assert_eq!(b[0].phrase, "the ship");
        assert_eq!(&text[b[0].coords.clone()], "(120,250),(560,810)");
        // a second box of the same phrase has none (Qwen-VL: only the element right before)
        assert_eq!(b[1].phrase, "");
        assert_eq!(b[1].bbox, [0.0, 0.0, 447.0, 448.0]); // 999/1000*448 = 447.552
    }

    #[test]
    fn malformed_boxes_are_skipped() {
        for text in [
            "<|box_start|>(1,2),(3)<|box_end|>",
            "<|box_start|>(1,2),(3,x)<|box_end|>",
            "<|box_start|>(1,2),(3,4)",
            "(1,2),(3,4)<|box_end|>",
            "",
        ] {
            assert!(parse(text, 32).is_empty(), "{text}");
        }
        // int() takes white space and signs; text between a phrase and its box unlinks them
        let b = parse(
            "<|object_ref_start|>a<|object_ref_end|> and <|box_start|>( 100, -5),(+500,500 )<|box_end|>",
            100,
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].bbox, [10.0, 0.0, 50.0, 50.0]); // -0.5 truncates to 0
        assert_eq!(b[0].phrase, "");
    }
}
