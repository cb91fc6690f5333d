//! Task prompts: models driven by task tokens rather than free text (Florence-2, Xiao et al.
//! 2023, "Florence-2: Advancing a Unified Representation for a Variety of Vision Tasks").
//!
//! The user writes a task token (`--prompt "<CAPTION>"`); the model was trained on a fixed
//! text per task ("What does the image describe?"). The manifest's `[tasks]` table is that
//! mapping as Hugging Face's `Florence2Processor` holds it (tools/export/florence2_export.py
//! writes it from the processor, tools/export/README.md "Florence-2"):
//!
//! ```toml
//! [tasks]
//! default = "<CAPTION>"                       # the prompt when none is given
//! caption = ["<OCR>", "<CAPTION>", ...]       # tasks answered with plain text
//! [tasks.prompts]                             # task token -> prompt text
//! "<CAPTION>" = "What does the image describe?"
//! "<CAPTION_TO_PHRASE_GROUNDING>" = "Locate the phrases in the caption: {input}"
//! [tasks.outputs]                             # task token -> how HF parses the answer
//! "<CAPTION>" = "pure_text"
//! "<OD>" = "description_with_bboxes"
//! ```
//!
//! and `[locations]` the quantised coordinate tokens of the box-producing tasks (`<loc_0>` ..
//! `<loc_999>`, one contiguous id range), which a later detector reads; the caption command
//! only refuses those tasks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The answer type of a task that the caption command can print (HF `pure_text`).
pub const PLAIN_TEXT: &str = "pure_text";

/// The `[tasks]` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TasksSpec {
    /// The prompt used when the user gives none.
    #[serde(default)]
    pub default: Option<String>,
    /// The tasks whose answer is plain text.
    #[serde(default)]
    pub caption: Vec<String>,
    /// Task token -> prompt text; `{input}` stands for the text after the task token.
    pub prompts: BTreeMap<String, String>,
    /// Task token -> answer type (`pure_text`, `description_with_bboxes`, `ocr`, ...).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

/// The `[locations]` table: the coordinate tokens `<loc_0>` .. `<loc_{count-1}>`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocationsSpec {
    /// The id of `<loc_0>`; `<loc_k>` is `first_token_id + k`.
    pub first_token_id: u32,
    pub count: u32,
    /// Quantisation bins along x and y: coordinate = (k + 0.5) * size / bins.
    pub bins: [u32; 2],
}

const INPUT: &str = "{input}";

impl TasksSpec {
    /// The task token a prompt uses, if any (the first in key order that it contains).
    pub fn task_of(&self, prompt: &str) -> Option<&str> {
        self.prompts
            .keys()
            .find(|t| prompt.contains(t.as_str()))
            .map(String::as_str)
    }

    /// The text the model reads for a prompt, `Florence2Processor._construct_prompts`
    /// (transformers 5.24): a task without input must be the whole prompt and becomes its
    /// text; a task with input is removed, the rest trimmed and put in place of `{input}`;
    /// any other prompt is used as it is. The error names the task token.
    pub fn prompt_text(&self, prompt: &str) -> Result<String, String> {
        for (token, text) in self.prompts.iter().filter(|(_, t)| !t.contains(INPUT)) {
            if prompt.contains(token.as_str()) {
                if prompt != token {
                    return Err(format!(
                        "the task token {token} must be the whole prompt (got '{prompt}')"
                    ));
                }
                return Ok(text.clone());
            }
        }
        for (token, text) in self.prompts.iter().filter(|(_, t)| t.contains(INPUT)) {
            if prompt.contains(token.as_str()) {
                let input = prompt.replace(token.as_str(), "");
                return Ok(text.replace(INPUT, input.trim()));
            }
        }
        Ok(prompt.to_string())
    }

    /// The prompt text for the caption command: refuses tasks whose answer is not plain text
    /// (boxes, polygons, OCR regions), naming the caption tasks.
    pub fn caption_prompt(&self, prompt: &str) -> Result<String, String> {
        if let Some(task) = self.task_of(prompt) {
            let plain = self.caption.iter().any(|t| t == task)
                || self.outputs.get(task).is_some_and(|o| o == PLAIN_TEXT);
            if !plain {
                let kind = self
                    .outputs
                    .get(task)
                    .map_or("not plain text", String::as_str);
                return Err(format!(
                    "the task {task} answers with {kind}, not a caption; caption tasks: {}",
                    self.caption.join(", ")
                ));
            }
        }
        self.prompt_text(prompt)
    }

    /// Problems of the table itself: a default or caption task without a prompt text, an
    /// answer type for an unknown task.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.prompts.is_empty() {
            problems.push("[tasks] prompts is empty".to_string());
        }
        if let Some(d) = &self.default {
            if let Err(e) = self.prompt_text(d) {
                problems.push(format!("[tasks] default: {e}"));
            }
        }
        for t in &self.caption {
            if !self.prompts.contains_key(t) {
                problems.push(format!(
                    "[tasks] caption names {t}, which has no prompt text"
                ));
            }
        }
        for t in self.outputs.keys() {
            if !self.prompts.contains_key(t) {
                problems.push(format!(
                    "[tasks] outputs names {t}, which has no prompt text"
                ));
            }
        }
        problems
    }
}

impl LocationsSpec {
    /// The location index of a token id, `None` outside `<loc_0>` .. `<loc_{count-1}>`.
    pub fn index(&self, id: u32) -> Option<u32> {
        id.checked_sub(self.first_token_id)
            .filter(|k| *k < self.count)
    }

    /// Checks the range against the tokenizer: `<loc_k>` is `first_token_id + k` for every k.
    pub fn check(&self, tokenizer: &tokenizers::Tokenizer) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bins.contains(&0) {
            problems.push("[locations] bins must be positive".to_string());
        }
        for k in 0..self.count {
            let name = format!("<loc_{k}>");
            let want = self.first_token_id + k;
            match tokenizer.token_to_id(&name) {
                Some(id) if id == want => {}
                Some(id) => {
                    problems.push(format!(
                        "[locations] {name} is token {id} in the tokenizer, not {want}"
                    ));
                    break;
                }
                None => {
                    problems.push(format!("[locations] the tokenizer has no {name}"));
                    break;
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TasksSpec {
        let mut prompts = BTreeMap::new();
        prompts.insert("<CAPTION>".into(), "What does the image describe?".into());
        prompts.insert(
            "<OD>".into(),
            "Locate the objects with category name in the image.".into(),
        );
        prompts.insert(
            "<CAPTION_TO_PHRASE_GROUNDING>".into(),
            "Locate the phrases in the caption: {input}".into(),
        );
        let mut outputs = BTreeMap::new();
        outputs.insert("<CAPTION>".into(), "pure_text".into());
        outputs.insert("<OD>".into(), "description_with_bboxes".into());
        outputs.insert(
            "<CAPTION_TO_PHRASE_GROUNDING>".into(),
            "phrase_grounding".into(),
        );
        TasksSpec {
            default: Some("<CAPTION>".into()),
            caption: vec!["<CAPTION>".into()],
            prompts,
            outputs,
        }
    }

    #[test]
    fn task_tokens_become_their_text() {
        let s = spec();
        assert_eq!(
            s.prompt_text("<CAPTION>").unwrap(),
            "What does the image describe?"
        );
        assert_eq!(
            s.prompt_text("<CAPTION_TO_PHRASE_GROUNDING>  a red car ")
                .unwrap(),
            "Locate the phrases in the caption: a red car"
        );
        assert_eq!(
            s.prompt_text("a satellite image of").unwrap(),
            "a satellite image of"
        );
        assert_eq!(s.prompt_text("").unwrap(), "");
        assert!(s
            .prompt_text("<CAPTION> of a farm")
            .unwrap_err()
            .contains("<CAPTION>"));
        assert!(s.check().is_empty());
    }

    #[test]
    fn caption_refuses_box_tasks() {
        let s = spec();
        assert!(s.caption_prompt("<CAPTION>").is_ok());
        let e = s.caption_prompt("<OD>").unwrap_err();
        assert!(
            e.contains("<OD>") && e.contains("description_with_bboxes") && e.contains("<CAPTION>")
        );
        assert!(s
            .caption_prompt("<CAPTION_TO_PHRASE_GROUNDING> a car")
            .is_err());
        assert!(s.caption_prompt("free text").is_ok());
    }

    #[test]
    fn check_finds_dangling_names() {
        let mut s = spec();
        s.caption.push("<OCR>".into());
        s.default = Some("<OD> extra".into());
        let p = s.check();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn location_index() {
        let l = LocationsSpec {
            first_token_id: 100,
            count: 1000,
            bins: [1000, 1000],
        };
        assert_eq!(l.index(99), None);
        assert_eq!(l.index(100), Some(0));
        assert_eq!(l.index(1099), Some(999));
        assert_eq!(l.index(1100), None);
    }
}
