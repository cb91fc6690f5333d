//! Styles QGIS loads by itself: a layer opens categorised by its label, in the colours of the
//! class raster, without the analyst building a legend.
//!
//! - Vector layers: a QGIS style document (QML) stored in the GeoPackage's `layer_styles`
//!   table as the layer's default style (the table QGIS itself writes, and reads when it opens
//!   a layer); for Shapefile, GeoJSON, FlatGeobuf and GeoParquet, a `.qml` file beside the
//!   data with the same stem, which QGIS loads as the default style.
//! - Class rasters: a `.qml` beside the GeoTIFF with a paletted renderer: one entry per class,
//!   its colour and name.
//!
//! The documents follow the QML of QGIS 3.22 (the version in Debian 12): a `categorizedSymbol`
//! renderer over one attribute with a `SimpleFill` symbol per category (filled areas, or
//! outlines only for detections), simple labelling on the label field, and for rasters a
//! `paletted` renderer on band 1.

use std::fmt::Write as _;

/// How a category is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symbol {
    /// Filled in the category's colour, with a thin dark outline (land cover, segments).
    Fill,
    /// The outline only, in the category's colour (detection boxes), so the scene shows.
    Outline,
}

/// A categorised style for a vector layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStyle {
    /// The attribute the categories are values of (`label`).
    pub field: String,
    /// Category value (and legend text) and RGB colour, in legend order.
    pub categories: Vec<(String, [u8; 3])>,
    pub symbol: Symbol,
    /// Draw the value of this attribute as a label on each feature.
    pub label_field: Option<String>,
}

/// The QGIS version the documents are written for.
const QGIS_VERSION: &str = "3.22.16-Białowieża";

/// The name the style is stored under in a GeoPackage's `layer_styles`.
pub const STYLE_NAME: &str = "tessera";

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn rgba(c: [u8; 3]) -> String {
    format!("{},{},{},255", c[0], c[1], c[2])
}

fn option(name: &str, value: &str) -> String {
    format!(
        "<Option type=\"QString\" name=\"{}\" value=\"{}\"/>",
        xml_escape(name),
        xml_escape(value)
    )
}

impl LayerStyle {
    /// The QML document.
    pub fn qml(&self) -> String {
        let mut categories = String::new();
        let mut symbols = String::new();
        for (i, (value, color)) in self.categories.iter().enumerate() {
            let v = xml_escape(value);
            let _ = writeln!(
                categories,
                "      <category symbol=\"{i}\" value=\"{v}\" label=\"{v}\" render=\"true\"/>"
            );
            let (fill, style, outline, width) = match self.symbol {
                Symbol::Fill => (rgba(*color), "solid", "35,35,35,255".to_string(), "0.26"),
                Symbol::Outline => ("0,0,0,0".to_string(), "no", rgba(*color), "0.6"),
            };
            let opts = [
                option("color", &fill),
                option("style", style),
                option("outline_color", &outline),
                option("outline_style", "solid"),
                option("outline_width", width),
                option("outline_width_unit", "MM"),
                option("joinstyle", "miter"),
            ]
            .join("\n            ");
            let _ = writeln!(
                symbols,
                "      <symbol type=\"fill\" name=\"{i}\" alpha=\"1\" clip_to_extent=\"1\" force_rhr=\"0\">\n        \
                 <layer class=\"SimpleFill\" enabled=\"1\" locked=\"0\" pass=\"0\">\n          \
                 <Option type=\"Map\">\n            {opts}\n          </Option>\n        </layer>\n      </symbol>"
            );
        }
        let labeling = match &self.label_field {
            None => String::new(),
            Some(f) => format!(
                "  <labeling type=\"simple\">\n    <settings calloutType=\"simple\">\n      \
                 <text-style fieldName=\"{}\" isExpression=\"0\" fontSize=\"9\" fontSizeUnit=\"Point\" textColor=\"20,20,20,255\" textOpacity=\"1\">\n        \
                 <text-buffer bufferDraw=\"1\" bufferSize=\"1\" bufferSizeUnits=\"MM\" bufferColor=\"255,255,255,255\" bufferOpacity=\"1\"/>\n      \
                 </text-style>\n      <placement placement=\"1\" offsetType=\"0\"/>\n      <rendering obstacle=\"1\" drawLabels=\"1\"/>\n    \
                 </settings>\n  </labeling>\n",
                xml_escape(f)
            ),
        };
        format!(
            "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n\
             <qgis version=\"{QGIS_VERSION}\" styleCategories=\"Symbology|Labeling\" labelsEnabled=\"{}\">\n  \
             <renderer-v2 type=\"categorizedSymbol\" attr=\"{}\" symbollevels=\"0\" enableorderby=\"0\" forceraster=\"0\" referencescale=\"-1\">\n    \
             <categories>\n{categories}    </categories>\n    <symbols>\n{symbols}    </symbols>\n  \
             </renderer-v2>\n{labeling}</qgis>\n",
            u8::from(self.label_field.is_some()),
            xml_escape(&self.field),
        )
    }
}

/// The QML of a paletted class raster: `(value, name, RGB)` per class, in value order.
pub fn raster_qml(classes: &[(u32, String, [u8; 3])]) -> String {
    let mut entries = String::new();
    for (value, name, c) in classes {
        let _ = writeln!(
            entries,
            "        <paletteEntry value=\"{value}\" color=\"#{:02x}{:02x}{:02x}\" alpha=\"255\" label=\"{}\"/>",
            c[0],
            c[1],
            c[2],
            xml_escape(name)
        );
    }
    format!(
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n\
         <qgis version=\"{QGIS_VERSION}\" styleCategories=\"Symbology\">\n  <pipe>\n    \
         <rasterrenderer type=\"paletted\" band=\"1\" opacity=\"1\" alphaBand=\"-1\" nodataColor=\"\">\n      \
         <rasterTransparency/>\n      <colorPalette>\n{entries}      </colorPalette>\n    \
         </rasterrenderer>\n  </pipe>\n</qgis>\n"
    )
}

/// The SQL that creates QGIS's `layer_styles` table if missing (the columns QGIS 3.22 creates)
/// and stores `qml` as the default style of `table`'s geometry column `geometry_column`.
/// Values are single-quoted SQL literals.
pub fn gpkg_style_sql(table: &str, geometry_column: &str, qml: &str) -> [String; 2] {
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    [
        "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256), \
         f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT, \
         useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), \
         update_time DATETIME DEFAULT CURRENT_TIMESTAMP)"
            .to_string(),
        format!(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, \
             f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner) \
             VALUES ('', '', {}, {}, {}, {}, '', 1, {}, '')",
            q(table),
            q(geometry_column),
            q(STYLE_NAME),
            q(qml),
            q("written by tessera"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_symbols_pair_up_and_names_are_escaped() {
        let style = LayerStyle {
            field: "label".into(),
            categories: vec![
                ("forest".into(), [10, 200, 10]),
                ("roads & \"rail\"".into(), [200, 10, 10]),
            ],
            symbol: Symbol::Outline,
            label_field: Some("label".into()),
        };
        let qml = style.qml();
        assert!(qml.contains("attr=\"label\""));
        assert!(qml.contains("<category symbol=\"1\" value=\"roads &amp; &quot;rail&quot;\""));
        assert!(qml.contains("<symbol type=\"fill\" name=\"1\""));
        assert!(qml.contains("name=\"outline_color\" value=\"200,10,10,255\""));
        assert!(qml.contains("name=\"style\" value=\"no\""));
        assert!(qml.contains("labelsEnabled=\"1\""));
        assert_eq!(qml.matches("<category ").count(), 2);
        assert_eq!(qml.matches("<symbol ").count(), 2);
    }

    #[test]
    fn palette_entries_are_hex_colours() {
        let qml = raster_qml(&[
            (0, "water".into(), [0, 16, 255]),
            (3, "a<b".into(), [1, 2, 3]),
        ]);
        assert!(qml.contains("value=\"0\" color=\"#0010ff\""));
        assert!(qml.contains("value=\"3\" color=\"#010203\" alpha=\"255\" label=\"a&lt;b\""));
    }

    #[test]
    fn sql_quotes_are_doubled() {
        let [_, insert] = gpkg_style_sql("polygons", "geom", "<a b='c'/>");
        assert!(insert.contains("'<a b=''c''/>'"), "{insert}");
        assert!(insert.contains("'polygons', 'geom', 'tessera'"), "{insert}");
    }
}
