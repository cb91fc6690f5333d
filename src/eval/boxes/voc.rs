//! Pascal VOC XML detection labels: one `.xml` file per image, `<filename>` naming the image
//! and one `<object>` per box with `<name>` and `<bndbox>` (`xmin`, `ymin`, `xmax`, `ymax`).
//!
//! Coordinates are taken as written, as continuous pixel coordinates (`x0 = xmin`,
//! `x1 = xmax`), as DeepForest and torchvision read them; detectron2 instead subtracts 1 from
//! `xmin` and `ymin` (1-based pixel indices). Objects flagged `<difficult>1</difficult>` are
//! left out, as Ultralytics' VOC conversion does (COCO has no "ignore" flag of its own).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{find_image, ChipLabels, LabelBox, LabelError};

/// Read every `*.xml` file of `dir` (sorted by name); images are looked for under `images_dir`
/// when given, else beside the XML files.
///
/// # Errors
/// A missing or unreadable directory or file, a directory without XML files, XML that is not
/// a VOC annotation (no `<filename>`, an object without `<name>` or with a missing or
/// non-numeric coordinate, `xmax < xmin`), or an image file that is not there.
pub fn read_voc(dir: &Path, images_dir: Option<&Path>) -> Result<ChipLabels, LabelError> {
    let shown = dir.display().to_string();
    if !dir.exists() {
        return Err(LabelError::NotFound { path: shown });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| LabelError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LabelError::Unreadable {
            path: shown,
            reason: "no Pascal VOC .xml files in this directory".into(),
        });
    }
    let mut labels = ChipLabels::default();
    let mut classes = BTreeSet::new();
    for file in &files {
        let (image, boxes) = read_one(file)?;
        let index = labels.images.len();
        labels
            .images
            .push(find_image(&image, images_dir, dir, file)?);
        for b in boxes {
            classes.insert(b.class.clone());
            labels.boxes.push((index, b));
        }
    }
    labels.classes = classes.into_iter().collect();
    Ok(labels)
}

/// One annotation file: the image's file name and its boxes.
fn read_one(file: &Path) -> Result<(String, Vec<LabelBox>), LabelError> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| LabelError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| LabelError::Voc {
        path: shown.clone(),
        reason,
    };
    let doc = roxmltree::Document::parse(&text).map_err(|e| bad(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        return Err(bad(format!(
            "the root element is <{}>, expected <annotation>",
            root.tag_name().name()
        )));
    }
    let child = |n: roxmltree::Node<'_, '_>, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    let Some(image) = child(root, "filename").filter(|f| !f.is_empty()) else {
        return Err(bad("no <filename>".into()));
    };
    let mut boxes = Vec::new();
    for (n, obj) in root
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let Some(name) = child(obj, "name").filter(|s| !s.is_empty()) else {
            return Err(bad(format!("object {n} has no <name>")));
        };
        if child(obj, "difficult").is_some_and(|d| d == "1") {
            continue;
        }
        let Some(bnd) = obj.children().find(|c| c.has_tag_name("bndbox")) else {
            return Err(bad(format!("object {n} ({name}) has no <bndbox>")));
        };
        let mut v = [0.0; 4];
        for (slot, tag) in v.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            let Some(value) = child(bnd, tag).and_then(|t| t.parse::<f64>().ok()) else {
                return Err(bad(format!(
                    "object {n} ({name}): <{tag}> is missing or not a number"
                )));
            };
            *slot = value;
        }
        if !v.iter().all(|x| x.is_finite()) || v[2] < v[0] || v[3] < v[1] {
            return Err(bad(format!(
                "object {n} ({name}): box {v:?} has xmax < xmin or ymax < ymin"
            )));
        }
        boxes.push(LabelBox {
            class: name,
            bbox: [v[0], v[1], v[2] - v[0], v[3] - v[1]],
            crowd: false,
        });
    }
    Ok((image, boxes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_boxes_skips_difficult_and_names_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.png"), b"x").expect("w");
        let xml =
            |objects: &str| format!("<annotation><filename>a.png</filename>{objects}</annotation>");
        let obj = |name: &str, difficult: u8, b: [i32; 4]| {
            format!(
                "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{}</xmin>\
                 <ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0], b[1], b[2], b[3]
            )
        };
        let path = dir.path().join("a.xml");
        let body = obj("tree", 0, [203, 67, 227, 90]) + &obj("car", 1, [0, 0, 5, 5]);
        std::fs::write(&path, xml(&body)).expect("w");
        let l = read_voc(dir.path(), None).expect("voc");
        assert_eq!(l.classes, ["tree"]);
        assert_eq!(l.boxes.len(), 1);
        assert_eq!(l.boxes[0].1.bbox, [203.0, 67.0, 24.0, 23.0]);

        std::fs::write(
            &path,
            xml("<object><name>t</name><bndbox><xmin>1</xmin></bndbox></object>"),
        )
        .expect("w");
        let e = read_voc(dir.path(), None).expect_err("no ymin").to_string();
        assert!(
            e.contains("a.xml: malformed Pascal VOC XML: object 0 (t): <ymin>"),
            "{e}"
        );
        std::fs::write(&path, "<annotation>").expect("w");
        let e = read_voc(dir.path(), None)
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("a.xml: malformed Pascal VOC XML"), "{e}");
    }
}
