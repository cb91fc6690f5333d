//! COCO JSON detection labels (the `instances_*.json` layout): `images` (`id`, `file_name`),
//! `categories` (`id`, `name`) and `annotations` (`image_id`, `category_id`, `bbox` as
//! `[x, y, w, h]` in pixels, optional `iscrowd`). Other keys (`info`, `licenses`,
//! `segmentation`, `area`...) are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{find_image, ChipLabels, LabelBox, LabelError};

#[derive(Deserialize)]
struct Dataset {
    images: Vec<Image>,
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct Image {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct Category {
    id: i64,
    name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: i64,
    category_id: i64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

/// Read COCO JSON at `path`; image files are looked for under `images_dir` when given, else
/// beside `path`. Images come in image-id order, classes in category-id order.
///
/// # Errors
/// A missing or unreadable file, JSON that is not a COCO dataset (with the line and column),
/// an annotation of an unknown image or category, a box with a negative or non-finite size,
/// duplicate ids, or an image file that is not there.
pub fn read_coco(path: &Path, images_dir: Option<&Path>) -> Result<ChipLabels, LabelError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(LabelError::NotFound { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(|e| LabelError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| LabelError::Coco {
        path: shown.clone(),
        reason,
    };
    let data: Dataset = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut images: Vec<&Image> = data.images.iter().collect();
    images.sort_by_key(|i| i.id);
    let mut categories: Vec<&Category> = data.categories.iter().collect();
    categories.sort_by_key(|c| c.id);
    let mut image_index = BTreeMap::new();
    for (n, i) in images.iter().enumerate() {
        if image_index.insert(i.id, n).is_some() {
            return Err(bad(format!("image id {} appears twice", i.id)));
        }
    }
    let mut category = BTreeMap::new();
    for c in &categories {
        if category.insert(c.id, c.name.clone()).is_some() {
            return Err(bad(format!("category id {} appears twice", c.id)));
        }
    }
    let mut boxes = Vec::with_capacity(data.annotations.len());
    for (n, a) in data.annotations.iter().enumerate() {
        let Some(&image) = image_index.get(&a.image_id) else {
            return Err(bad(format!(
                "annotation {n} names image id {}, which is not in 'images'",
                a.image_id
            )));
        };
        let Some(class) = category.get(&a.category_id) else {
            return Err(bad(format!(
                "annotation {n} names category id {}, which is not in 'categories'",
                a.category_id
            )));
        };
        if a.bbox.iter().any(|v| !v.is_finite()) || a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
            return Err(bad(format!(
                "annotation {n} has bbox {:?}: expected [x, y, w, h] with w, h >= 0",
                a.bbox
            )));
        }
        boxes.push((
            image,
            LabelBox {
                class: class.clone(),
                bbox: a.bbox,
                crowd: a.iscrowd != 0,
            },
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let files = images
        .iter()
        .map(|i| find_image(&i.file_name, images_dir, dir, path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChipLabels {
        images: files,
        boxes,
        classes: categories.iter().map(|c| c.name.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_dataset_and_names_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("b.png"), b"x").expect("w");
        std::fs::write(dir.path().join("a.png"), b"x").expect("w");
        let path = dir.path().join("labels.json");
        std::fs::write(
            &path,
            r#"{"images": [{"id": 7, "file_name": "b.png"}, {"id": 3, "file_name": "a.png"}],
                "categories": [{"id": 2, "name": "car"}, {"id": 1, "name": "tree"}],
                "annotations": [{"image_id": 7, "category_id": 2, "bbox": [1, 2, 3, 4]},
                                {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}"#,
        )
        .expect("w");
        let l = read_coco(&path, None).expect("coco");
        assert_eq!(l.classes, ["tree", "car"]);
        assert_eq!(l.images[0], dir.path().join("a.png"));
        assert_eq!(l.boxes[0].0, 1);
        assert_eq!(l.boxes[0].1.bbox, [1.0, 2.0, 3.0, 4.0]);
        assert!(l.boxes[1].1.crowd);

        std::fs::write(&path, r#"{"images": [], "annotations": []}"#).expect("w");
        let e = read_coco(&path, None)
            .expect_err("no categories")
            .to_string();
        assert!(
            e.contains("labels.json: malformed COCO JSON: missing field `categories`"),
            "{e}"
        );
        std::fs::write(
            &path,
            r#"{"images": [], "categories": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0,0,1,1]}]}"#,
        )
        .expect("w");
        let e = read_coco(&path, None)
            .expect_err("unknown image")
            .to_string();
        assert!(e.contains("image id 1, which is not in 'images'"), "{e}");
    }
}
