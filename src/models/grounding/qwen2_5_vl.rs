//! Qwen2.5-VL's grounding answers (Bai et al. 2025, "Qwen2.5-VL Technical Report", section
//! 2.2.1: boxes in **absolute pixels of the resized input**, no normalisation), written as a JSON
//! list of `{"bbox_2d": [x1, y1, x2, y2], "label": "..."}`, usually in a ```` ```json ```` fence.
//!
//! Hugging Face's `Qwen2_5_VLProcessor` (transformers 5.24) has no box post-processing; this
//! follows the Qwen team's recipe, `parse_json` and `plot_bounding_boxes` of the Qwen2.5-VL
//! cookbook `cookbooks/spatial_understanding.ipynb`: the text is split into lines
//! (`str.splitlines`); from the first line that is exactly ```` ```json ````, the following lines
//! joined with `\n` up to the next ```` ``` ```` are the JSON; it is evaluated
//! (`ast.literal_eval`; read here as JSON, the syntax the model writes), and when that fails the
//! text up to the last `"}` plus `]` is evaluated instead (a truncated answer); each item's
//! `bbox_2d` is scaled by `width / input_width` and `height / input_height`, truncated (`int`),
//! and its corners swapped when reversed; `label` names it.
//!
//! `input_width` and `input_height` are the size the processor's `smart_resize` gave the image
//! (the cookbook reads them from `image_grid_thw`); the boxes are wanted in the model input's
//! pixels, and a tessera Qwen2.5-VL package bakes a tile size that `smart_resize` leaves as it is
//! (the exporter refuses others), so the scale is 1 and only the truncation and the swap remain.
//! Special tokens (`<|im_end|>`, kept by the seam's decoding, skipped by the cookbook's) are
//! removed first. Items without a four-number `bbox_2d` are skipped; a single object instead of
//! a list is read as a list of one.

use serde_json::Value;

use super::{BoxParser, ParseInput, ParsedBox};

/// The Qwen2.5-VL parser ([`super::PARSERS`]).
#[derive(Debug)]
pub struct Qwen25Vl;

/// `[grounding] output` of Qwen2.5-VL packages.
pub const OUTPUT: &str = "qwen2_5_vl_json";

const FENCE: &str = "```";
const KEY: &str = "\"bbox_2d\"";

/// Python's `str.splitlines`: the lines without their ends.
fn splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let end = match c {
            '\r' => {
                if let Some(&(_, '\n')) = it.peek() {
                    it.next();
                    i + 2
                } else {
                    i + 1
                }
            }
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        out.push(&text[start..i]);
        start = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The cookbook's `parse_json`.
fn parse_json(text: &str) -> String {
    let lines = splitlines(text);
    match lines.iter().position(|l| *l == "```json") {
        Some(i) => {
            let joined = lines[i + 1..].join("\n");
            joined.split(FENCE).next().unwrap_or("").to_string()
        }
        None => text.to_string(),
    }
}

/// `text` without Qwen's special tokens (`<|name|>`).
fn without_special_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<|") {
        let tail = &rest[i + 2..];
        let name = tail.find("|>").filter(|&j| {
            tail[..j]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        });
        out.push_str(&rest[..i]);
        match name {
            Some(j) => rest = &tail[j + 2..],
            None => {
                out.push_str("<|");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The evaluation, with the cookbook's fallback for a truncated answer.
fn evaluate(json: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(json) {
        return Some(v);
    }
    // Python: text[:text.rfind('"}') + 2] + "]" (rfind's -1 keeps one character)
    let end = json.rfind("\"}").map_or(1.min(json.len()), |i| i + 2);
    let end = (0..=end)
        .rev()
        .find(|&e| json.is_char_boundary(e))
        .unwrap_or(0);
    serde_json::from_str::<Value>(&format!("{}]", &json[..end])).ok()
}

/// The byte ranges of the `[...]` after each `"bbox_2d":` of `text`, from byte `from` on.
fn bbox_ranges(text: &str, from: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = from;
    while let Some(i) = text[at..].find(KEY) {
        let k = at + i + KEY.len();
        let open = text[k..].find('[').map(|j| k + j);
        let close = open.and_then(|o| text[o..].find(']').map(|j| o + j + 1));
        match (open, close) {
            (Some(o), Some(c)) => {
                out.push(o..c);
                at = c;
            }
            _ => {
                out.push(k..k);
                at = k;
            }
        }
    }
    out
}

impl BoxParser for Qwen25Vl {
    fn outputs(&self) -> &'static [&'static str] {
        &[OUTPUT]
    }

    fn parse(&self, input: &ParseInput<'_>) -> Vec<ParsedBox> {
        let clean = without_special_tokens(input.text);
        let Some(value) = evaluate(&parse_json(&clean)) else {
            return Vec::new();
        };
        let items = match value {
            Value::Array(items) => items,
            v @ Value::Object(_) => vec![v],
            _ => return Vec::new(),
        };
        // The coordinates' bytes in the original text: the k-th "bbox_2d" from the fence on.
        let from = input.text.find("```json").unwrap_or(0);
        let ranges = bbox_ranges(input.text, from);
        let mut out = Vec::new();
        let mut k = 0;
        for item in &items {
            let Some(b) = item.get("bbox_2d") else {
                continue;
            };
            let range = ranges.get(k).cloned().unwrap_or(0..0);
            k += 1;
            let nums: Option<Vec<f64>> = b
                .as_array()
                .map(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .unwrap_or(None);
            let Some([x0, y0, x1, y1]) = nums.and_then(|n| <[f64; 4]>::try_from(n).ok()) else {
                continue;
            };
            let (x0, x1) = (x0.trunc().min(x1.trunc()), x0.trunc().max(x1.trunc()));
            let (y0, y1) = (y0.trunc().min(y1.trunc()), y0.trunc().max(y1.trunc()));
            let phrase = match item.get("label") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            out.push(ParsedBox {
                phrase,
                bbox: [x0 as f32, y0 as f32, x1 as f32, y1 as f32],
                coords: range,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<ParsedBox> {
        Qwen25Vl.parse(&ParseInput {
            text,
            output: OUTPUT,
            image_size: (448, 448),
            bins: None,
            banned: &[],
        })
    }

    #[test]
    fn fenced_json_in_input_pixels() {
        let text = "```json\n[\n\t{\"bbox_2d\": [4, 8, 18, 26], \"label\": \"ship\"},\n\t{\"bbox_2d\": [30, 12, 20.7, 3], \"label\": \"storage tank\"}\n]\n```<|im_end|>";
        let b = parse(text);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].bbox, [4.0, 8.0, 18.0, 26.0]);
        assert_eq!(b[0].phrase, "ship");
        assert_eq!(&text[b[0].coords.clone()], "[4, 8, 18, 26]");
        // reversed corners swapped, int() truncates
        assert_eq!(b[1].bbox, [20.0, 3.0, 30.0, 12.0]);
        assert_eq!(&text[b[1].coords.clone()], "[30, 12, 20.7, 3]");
    }

    #[test]
    fn unfenced_truncated_and_malformed_answers() {
        // no fence: the whole text; a truncated list: up to the last "} plus ]
        let b = parse("[{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"a\"}, {\"bbox_2d\": [5, 6");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].bbox, [1.0, 2.0, 3.0, 4.0]);
        // a fence that is not on its own line is not one (the cookbook compares whole lines)
        assert!(parse("see ```json\n[{\"bbox_2d\": [1, 2, 3, 4]}]\n```").is_empty());
        // items without a four-number bbox_2d are skipped; a lone object is a list of one
        let b = parse("```json\n[{\"label\": \"x\"}, {\"bbox_2d\": [1, 2, 3]}, {\"bbox_2d\": [1, 2, 3, 4]}]\n```");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].phrase, "");
        assert_eq!(
            parse("{\"bbox_2d\": [9, 9, 10, 10], \"label\": 3}")[0].phrase,
            "3"
        );
        for text in ["", "no boxes here", "```json\n\n```", "[1, 2]"] {
            assert!(parse(text).is_empty(), "{text}");
        }
        // \r\n line ends and a fence after text lines
        let b = parse("Here:\r\n```json\r\n[{\"bbox_2d\": [0, 1, 2, 3], \"label\": \"l\"}]\r\n```");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].bbox, [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn splitlines_as_python() {
        assert_eq!(
            splitlines("a\nb\r\nc\rd\x0be\u{2028}f\n"),
            ["a", "b", "c", "d", "e", "f"]
        );
        assert_eq!(splitlines(""), Vec::<&str>::new());
        assert_eq!(splitlines("\n\n"), ["", ""]);
        assert_eq!(without_special_tokens("x<|im_end|>y<|a b|>"), "xy<|a b|>");
    }
}
